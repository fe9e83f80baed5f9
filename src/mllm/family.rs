//! The multimodal families a stage can be pointed at (`model = DIR`), told apart by the folder's
//! `config.json` (`architectures`, else `model_type`), behind one type the generation loop and the
//! trainers take: LLaVA-1.5 style ([`Llava`], the vision tower's features come from the `features`
//! stage), LLaVA-NeXT ([`LlavaNext`], loaded with its CLIP tower, which turns the processor's tiles into
//! (base features, unpadded grid)) and Qwen2-VL ([`Qwen2Vl`], whose vision transformer turns the
//! processor's patches into merged features). The vision towers are frozen: their weights never train.
use super::llama::CausalLm;
use super::llava::{EmbedInputs, Llava, Rotary};
use super::llava_next::LlavaNext;
use super::qwen2_vl::Qwen2Vl;
use super::{DType, MllmError, Result};
use std::path::Path;
use tch::{nn, Device, Tensor};

/// Which family a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llava,
    LlavaNext,
    Qwen2Vl,
}

const SUPPORTED: &str =
    "LlavaForConditionalGeneration (llava), LlavaNextForConditionalGeneration (llava_next), Qwen2VLForConditionalGeneration (qwen2_vl)";

impl Family {
    /// From `config.json`'s first `architectures` entry, or its `model_type` when that is absent.
    pub fn of_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(super::io_err(&path))?;
        let at = path.display().to_string();
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| MllmError::Config { path: at.clone(), msg: e.to_string() })?;
        let arch = v.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str());
        let by_arch = match arch {
            Some("LlavaForConditionalGeneration") => Some(Self::Llava),
            Some("LlavaNextForConditionalGeneration") => Some(Self::LlavaNext),
            Some("Qwen2VLForConditionalGeneration") => Some(Self::Qwen2Vl),
            Some(other) => {
                return Err(MllmError::UnsupportedArchitecture { found: other.to_string(), path: at, supported: SUPPORTED });
            }
            None => None,
        };
        if let Some(f) = by_arch {
            return Ok(f);
        }
        match v.get("model_type").and_then(|m| m.as_str()) {
            Some("llava") => Ok(Self::Llava),
            Some("llava_next") => Ok(Self::LlavaNext),
            Some("qwen2_vl") => Ok(Self::Qwen2Vl),
            other => Err(MllmError::UnsupportedArchitecture {
                found: format!("no architectures, model_type {}", other.unwrap_or("missing")),
                path: at,
                supported: SUPPORTED,
            }),
        }
    }
}

/// A loaded multimodal model of any supported family.
#[derive(Debug)]
pub enum Mllm {
    Llava(Llava),
    LlavaNext(LlavaNext),
    Qwen2Vl(Qwen2Vl),
}

impl Mllm {
    /// Loads the folder as its family, in `dtype`, with the vision tower's variables frozen.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> Result<(nn::VarStore, Self)> {
        let (mut vs, model) = match Family::of_dir(dir)? {
            Family::Llava => {
                let (vs, m) = Llava::load(dir, device, dtype)?;
                (vs, Self::Llava(m))
            }
            Family::LlavaNext => {
                let (vs, m) = LlavaNext::load(dir, device, dtype, true)?;
                (vs, Self::LlavaNext(m))
            }
            Family::Qwen2Vl => {
                let (vs, m) = Qwen2Vl::load(dir, device)?;
                (vs, Self::Qwen2Vl(m))
            }
        };
        vs.set_kind(dtype.kind());
        for (name, t) in vs.variables() {
            if name.starts_with("vision_tower.") || name.starts_with("visual.") {
                let _ = t.set_requires_grad(false);
            }
        }
        Ok((vs, model))
    }

    pub fn family(&self) -> Family {
        match self {
            Self::Llava(_) => Family::Llava,
            Self::LlavaNext(_) => Family::LlavaNext,
            Self::Qwen2Vl(_) => Family::Qwen2Vl,
        }
    }

    /// The token id whose positions take image features.
    pub fn image_token_id(&self) -> i64 {
        match self {
            Self::Llava(m) => m.cfg.image_token_index,
            Self::LlavaNext(m) => m.cfg.image_token_index,
            Self::Qwen2Vl(m) => m.image_token_id,
        }
    }

    /// Token ids the processor puts right before and right after an image's run of image tokens
    /// (Qwen2-VL: `<|vision_start|>`, `<|vision_end|>`; none for the LLaVA families).
    pub fn image_delimiters(&self) -> (Option<i64>, Option<i64>) {
        match self {
            Self::Qwen2Vl(m) => (m.vision_start_token_id, m.vision_end_token_id),
            _ => (None, None),
        }
    }

    /// The images' input tensors hold this many image tokens: LLaVA one per feature row, LLaVA-NeXT the
    /// base rows plus each grid row and its `image_newline`, Qwen2-VL one per merged feature row.
    pub fn image_token_count(&self, images: &[Tensor]) -> Result<i64> {
        let rows = |t: &Tensor| t.size().first().copied().unwrap_or(0);
        Ok(match self {
            Self::Llava(_) => images.iter().map(rows).sum(),
            Self::LlavaNext(_) => images
                .chunks(2)
                .map(|p| match p {
                    [base, grid] if grid.dim() == 3 => Ok(rows(base) + grid.size()[0] * (grid.size()[1] + 1)),
                    _ => Err(MllmError::Input("LLaVA-NeXT images are (base features, grid [rows, cols, dim]) pairs".into())),
                })
                .sum::<Result<i64>>()?,
            Self::Qwen2Vl(_) => images.chunks(2).map(|p| rows(&p[0])).sum(),
        })
    }
}

impl EmbedInputs for Mllm {
    fn text_model(&self) -> &CausalLm {
        match self {
            Self::Llava(m) => m.text_model(),
            Self::LlavaNext(m) => m.text_model(),
            Self::Qwen2Vl(m) => m.text_model(),
        }
    }
    fn embed_inputs(&self, ids: &Tensor, images: &[Tensor]) -> Result<Tensor> {
        match self {
            Self::Llava(m) => m.embed_inputs(ids, images),
            Self::LlavaNext(m) => m.embed_inputs(ids, images),
            Self::Qwen2Vl(m) => m.embed_inputs(ids, images),
        }
    }
    fn rotary(&self, ids: &Tensor, mask: &Tensor, images: &[Tensor]) -> Result<Option<Rotary>> {
        match self {
            Self::Llava(m) => m.rotary(ids, mask, images),
            Self::LlavaNext(m) => m.rotary(ids, mask, images),
            Self::Qwen2Vl(m) => m.rotary(ids, mask, images),
        }
    }
}

impl super::sft::AsMutLm for Mllm {
    fn lm_mut(&mut self) -> &mut CausalLm {
        match self {
            Self::Llava(m) => m.lm_mut(),
            Self::LlavaNext(m) => m.lm_mut(),
            Self::Qwen2Vl(m) => m.lm_mut(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);
    impl Dir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir_with(config: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("mmb-family-{}-{}", std::process::id(), blake3::hash(config.as_bytes()).to_hex()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), config).unwrap();
        Dir(d)
    }

    #[test]
    fn family_from_architectures_then_model_type() {
        let d = dir_with(r#"{"architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava"}"#);
        assert_eq!(Family::of_dir(d.path()).unwrap(), Family::LlavaNext);
        let d = dir_with(r#"{"model_type": "qwen2_vl"}"#);
        assert_eq!(Family::of_dir(d.path()).unwrap(), Family::Qwen2Vl);
        let d = dir_with(r#"{"architectures": ["LlavaForConditionalGeneration"]}"#);
        assert_eq!(Family::of_dir(d.path()).unwrap(), Family::Llava);
        let d = dir_with(r#"{"architectures": ["Idefics2ForConditionalGeneration"]}"#);
        let e = Family::of_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("Idefics2ForConditionalGeneration") && e.contains("config.json") && e.contains("qwen2_vl"), "{e}");
        let d = dir_with(r#"{"model_type": "blip"}"#);
        let e = Family::of_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("model_type blip"), "{e}");
    }
}
