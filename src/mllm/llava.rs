//! LLaVA (`LlavaForConditionalGeneration`): frozen vision-tower features → 2-layer GELU MLP projector
//! (`multi_modal_projector.linear_1/2`) → spliced into the token embeddings at the image-token positions,
//! in order, then the text tower. The vision tower itself is not run here: callers hand in its cached
//! penultimate-layer patch features (CLS dropped: `vision_feature_select_strategy = "default"`), one
//! tensor [n_patches_i, vision_hidden] per image. Images of different lengths are allowed. LLaVA-NeXT (tiles,
//! unpadding, `image_newline`) is `llava_next.rs`; Qwen2-VL (its own vision tower, M-RoPE) is `qwen2_vl.rs`.
//!
//! Key layouts accepted: the llava-hf one (`language_model.model.*`, `language_model.lm_head.*`,
//! `multi_modal_projector.*`, `vision_tower.*`) and transformers 5's in-memory one (`model.language_model.*`,
//! `lm_head.*`, `model.multi_modal_projector.*`, `model.vision_tower.*`). Vision-tower weights are skipped.
use super::config::{LlavaConfig, ModelConfig};
use super::llama::{CausalLm, Linear};
use super::weights::{load_safetensors_dir, KeyPolicy};
use super::{DType, MllmError, Result};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug)]
pub struct Llava {
    pub cfg: LlavaConfig,
    pub lm: CausalLm,
    pub linear_1: Linear,
    pub linear_2: Linear,
}

/// Maps a checkpoint key to our (llava-hf) variable name; None drops it (vision tower, rotary buffers).
pub fn llava_key_rename(k: &str, tied: bool) -> Option<String> {
    let k = if let Some(r) = k.strip_prefix("model.language_model.") {
        format!("language_model.model.{r}")
    } else if let Some(r) = k.strip_prefix("model.multi_modal_projector.") {
        format!("multi_modal_projector.{r}")
    } else if let Some(r) = k.strip_prefix("model.vision_tower.") {
        format!("vision_tower.{r}")
    } else if let Some(r) = k.strip_prefix("lm_head.") {
        format!("language_model.lm_head.{r}")
    } else {
        k.to_string()
    };
    if k.starts_with("vision_tower.") || k.ends_with("rotary_emb.inv_freq") || (tied && k == "language_model.lm_head.weight") {
        return None;
    }
    Some(k)
}

/// The image features this crate splices are the `features` stage's: the CLIP tower's penultimate layer
/// with the CLS token dropped, i.e. `vision_feature_layer = -2` and `vision_feature_select_strategy =
/// "default"` (the llava-hf defaults, also what an absent key means). Any other setting would splice
/// features the model was not trained on: refused, naming the key.
pub fn check_vision_features(cfg: &LlavaConfig) -> std::result::Result<(), String> {
    match &cfg.vision_feature_layer {
        None => {}
        Some(v) if v.as_i64() == Some(-2) => {}
        Some(v) => {
            return Err(format!(
                "vision_feature_layer = {v}: only -2 (the penultimate layer, which the features stage computes) is supported"
            ))
        }
    }
    match cfg.vision_feature_select_strategy.as_deref() {
        None | Some("default") => Ok(()),
        Some(other) => Err(format!(
            "vision_feature_select_strategy = {other:?}: only \"default\" (CLS dropped, as the features stage does) is supported"
        )),
    }
}

impl Llava {
    pub fn new(vs: &nn::VarStore, cfg: &LlavaConfig) -> Result<Self> {
        let root = vs.root();
        let lm = CausalLm::new(&(&root / "language_model"), &cfg.text_config)?;
        let p = &root / "multi_modal_projector";
        let (v, h) = (cfg.vision_config.hidden_size, cfg.text_config.hidden_size);
        let bias = cfg.multimodal_projector_bias;
        let lin = |name: &str, i: i64, o: i64| {
            let sub = &p / name;
            Linear {
                name: format!("multi_modal_projector.{name}"),
                weight: sub.var("weight", &[o, i], nn::Init::Const(0.)),
                bias: bias.then(|| sub.var("bias", &[o], nn::Init::Const(0.))),
                lora: None,
                lora_on: lm.lora_on.clone(),
            }
        };
        let (linear_1, linear_2) = (lin("linear_1", v, h), lin("linear_2", h, h));
        Ok(Self { cfg: cfg.clone(), lm, linear_1, linear_2 })
    }

    /// Loads a LLaVA Hugging Face folder.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> Result<(nn::VarStore, Self)> {
        let cfg = match ModelConfig::from_dir(dir)? {
            ModelConfig::Llava(c) => c,
            ModelConfig::Text(_) => {
                return Err(MllmError::Input(format!("{} holds a text-only model: load it with llama::load_causal_lm", dir.display())))
            }
        };
        check_vision_features(&cfg).map_err(|msg| MllmError::Config { path: dir.join("config.json").display().to_string(), msg })?;
        let mut vs = nn::VarStore::new(device);
        let model = Self::new(&vs, &cfg)?;
        let tied = cfg.text_config.tie_word_embeddings;
        let rename = move |k: &str| llava_key_rename(k, tied);
        load_safetensors_dir(&vs.variables(), dir, &KeyPolicy { rename: &rename, optional: &|_| false })?;
        vs.set_kind(dtype.kind());
        Ok((vs, model))
    }

    /// Projector: linear_2(gelu(linear_1(features))).
    pub fn project(&self, features: &Tensor) -> Tensor {
        let approx = if self.cfg.projector_hidden_act == "gelu_pytorch_tanh" { "tanh" } else { "none" };
        self.linear_2.forward(&self.linear_1.forward(features).gelu(approx))
    }

    /// Embeddings for `ids` [b, t] with the projected features of `images` (all images of the batch, in
    /// row-major order of their image tokens) written over the image-token positions.
    pub fn embed_multimodal(&self, ids: &Tensor, images: &[Tensor]) -> Result<Tensor> {
        let image_tok = self.cfg.image_token_index;
        let is_image = ids.eq(image_tok);
        let n_slots = is_image.sum(Kind::Int64).int64_value(&[]);
        let vis = self.cfg.vision_config.hidden_size;
        let mut n_feats = 0;
        for (i, f) in images.iter().enumerate() {
            let s = f.size();
            if s.len() != 2 || s[1] != vis {
                return Err(MllmError::Input(format!(
                    "image {i}: expected features [n_patches, {vis}] (vision_config.hidden_size), found {s:?}"
                )));
            }
            if f.isfinite().logical_not().any().int64_value(&[]) != 0 {
                return Err(MllmError::Input(format!("image {i}: features contain NaN or infinity")));
            }
            n_feats += s[0];
        }
        if n_slots != n_feats {
            return Err(MllmError::Input(format!(
                "{n_slots} image-token positions (id {image_tok}) but {n_feats} image feature rows from {} image(s)",
                images.len()
            )));
        }
        let safe_ids = ids.masked_fill(&is_image, 0);
        let embeds = self.lm.embed(&safe_ids)?;
        if images.is_empty() {
            return Ok(embeds);
        }
        let dev = embeds.device();
        let feats = Tensor::cat(&images.iter().map(|f| f.to_device(dev).to_kind(embeds.kind())).collect::<Vec<_>>(), 0);
        let projected = self.project(&feats).to_kind(embeds.kind());
        let mask = is_image.to_device(dev).unsqueeze(-1).expand_as(&embeds);
        Ok(embeds.masked_scatter(&mask, &projected.reshape([-1])))
    }

    /// Logits [b, t, vocab] for ids with image features spliced in.
    pub fn forward(&self, ids: &Tensor, images: &[Tensor], attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let e = self.embed_multimodal(ids, images)?;
        Ok(self.lm.logits(&self.lm.forward_embeds(&e, attention_mask, None)?))
    }
}

/// A model that turns token ids (plus, for multimodal models, image features) into input embeddings
/// for its text tower; the trainers and generation work on anything that implements it.
pub trait EmbedInputs {
    fn text_model(&self) -> &CausalLm;
    /// Embeddings [b, t, h] for ids [b, t] and the images of the batch in image-token order.
    fn embed_inputs(&self, ids: &Tensor, images: &[Tensor]) -> Result<Tensor>;
    /// Rotary tables for ids [b, t] whose real tokens `mask` [b, t] marks (padding on either side), when the
    /// model positions its tokens otherwise than its text tower counts them (Qwen2-VL's M-RoPE); None (the
    /// default): the text tower's own 1-D positions.
    fn rotary(&self, _ids: &Tensor, _mask: &Tensor, _images: &[Tensor]) -> Result<Option<Rotary>> {
        Ok(None)
    }
}

/// Rotary tables a model supplies for its prompts: cos and sin [b, 1, t, head_dim], and each row's rope
/// delta, which decoding adds to the 1-D position of every token generated after the prompt (all axes
/// of a generated token are equal, so its table is the text tower's own at that shifted position).
#[derive(Debug)]
pub struct Rotary {
    pub cos: Tensor,
    pub sin: Tensor,
    pub deltas: Vec<i64>,
}

impl Rotary {
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }
}

impl EmbedInputs for CausalLm {
    fn text_model(&self) -> &CausalLm {
        self
    }
    fn embed_inputs(&self, ids: &Tensor, images: &[Tensor]) -> Result<Tensor> {
        if !images.is_empty() {
            return Err(MllmError::Input(format!("a text-only model was given {} image(s)", images.len())));
        }
        self.embed(ids)
    }
}

impl EmbedInputs for Llava {
    fn text_model(&self) -> &CausalLm {
        &self.lm
    }
    fn embed_inputs(&self, ids: &Tensor, images: &[Tensor]) -> Result<Tensor> {
        self.embed_multimodal(ids, images)
    }
}
