//! Qwen2-VL (`Qwen2VLForConditionalGeneration`): its vision transformer in tch, the 3-axis M-RoPE
//! position ids of a multimodal prompt, and the full forward pass of one prompt (image features spliced in
//! at the image tokens, the Qwen2 decoder with M-RoPE: `mrope_section` splits the rotary frequencies
//! between the temporal, height and width positions). In the shared generation loop and the trainers through
//! [`EmbedInputs`]: an image enters as two tensors (its merged vision features, [`Qwen2Vl::image_inputs`],
//! and its grid), and [`EmbedInputs::rotary`] gives each padded row its M-RoPE tables and rope delta.
//!
//! Vision transformer (`Qwen2VisionTransformerPretrainedModel`): the patch rows of
//! `encoders::qwen2_vl_image` (`C · temporal · patch · patch` values each, in merge-window order) go
//! through the patch embedding (a Conv3d with stride = kernel, i.e. one matmul), pre-norm blocks with a
//! fused `qkv`, 2-D rotary embeddings (half the rotary frequencies follow the patch row, half the column)
//! and bidirectional attention within each image only (block-diagonal), then the merger: LayerNorm, every
//! 2×2 window of patches concatenated, and a GELU MLP to the text width.
use super::llama::CausalLm;
use super::{MllmError, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// `Qwen2VLVisionConfig` (the `vision_config` block). The hub spells `in_channels` as `in_chans`.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2VlVisionConfig {
    #[serde(default = "d_depth")]
    pub depth: i64,
    #[serde(default = "d_embed")]
    pub embed_dim: i64,
    #[serde(default = "d_heads")]
    pub num_heads: i64,
    #[serde(default = "d_ratio")]
    pub mlp_ratio: f64,
    /// The merger's output width (the text tower's hidden size).
    pub hidden_size: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_channels", alias = "in_chans")]
    pub in_channels: i64,
    #[serde(default = "d_patch")]
    pub patch_size: i64,
    #[serde(default = "d_merge")]
    pub spatial_merge_size: i64,
    #[serde(default = "d_temporal")]
    pub temporal_patch_size: i64,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
}

fn d_depth() -> i64 {
    32
}
fn d_embed() -> i64 {
    1280
}
fn d_heads() -> i64 {
    16
}
fn d_ratio() -> f64 {
    4.0
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_channels() -> i64 {
    3
}
fn d_patch() -> i64 {
    14
}
fn d_merge() -> i64 {
    2
}
fn d_temporal() -> i64 {
    2
}

impl Qwen2VlVisionConfig {
    pub fn validate(&self, at: &str) -> Result<()> {
        let bad = |msg: String| Err(MllmError::Config { path: at.to_string(), msg });
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return bad(format!("vision_config.hidden_act: expected quick_gelu or gelu, found {:?}", self.hidden_act));
        }
        if self.num_heads <= 0 || self.embed_dim % self.num_heads != 0 || (self.embed_dim / self.num_heads) % 4 != 0 {
            return bad(format!(
                "vision_config: embed_dim {} / num_heads {} must be a head width divisible by 4 (2-D rotary)",
                self.embed_dim, self.num_heads
            ));
        }
        if self.in_channels != 3 || self.spatial_merge_size <= 0 || self.temporal_patch_size <= 0 {
            return bad(format!(
                "vision_config: in_channels must be 3 and spatial_merge_size, temporal_patch_size positive, found {} {} {}",
                self.in_channels, self.spatial_merge_size, self.temporal_patch_size
            ));
        }
        self.rope_theta(at)?;
        Ok(())
    }
    fn rope_theta(&self, at: &str) -> Result<f64> {
        match &self.rope_parameters {
            None => Ok(10000.0),
            Some(v) => v.get("rope_theta").and_then(|t| t.as_f64()).map(Ok).unwrap_or_else(|| {
                Err(MllmError::Config { path: at.to_string(), msg: "vision_config.rope_parameters: expected a rope_theta".into() })
            }),
        }
    }
    fn head_dim(&self) -> i64 {
        self.embed_dim / self.num_heads
    }
    /// Values per patch row.
    pub fn patch_dim(&self) -> i64 {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

#[derive(Debug)]
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(p: &nn::Path, i: i64, o: i64) -> Self {
        Self { weight: p.var("weight", &[o, i], nn::Init::Const(0.)), bias: p.var("bias", &[o], nn::Init::Const(0.)) }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

#[derive(Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(p: &nn::Path, d: i64) -> Self {
        Self { weight: p.var("weight", &[d], nn::Init::Const(1.)), bias: p.var("bias", &[d], nn::Init::Const(0.)) }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.weight.size()[0]], Some(&self.weight), Some(&self.bias), 1e-6, false)
    }
}

#[derive(Debug)]
struct Block {
    norm1: Norm,
    norm2: Norm,
    qkv: Dense,
    proj: Dense,
    fc1: Dense,
    fc2: Dense,
}

/// `Qwen2VisionTransformerPretrainedModel` (variables named as below the checkpoint's `visual.`).
#[derive(Debug)]
pub struct Qwen2VlVision {
    pub cfg: Qwen2VlVisionConfig,
    patch_embed: Tensor,
    blocks: Vec<Block>,
    ln_q: Norm,
    mlp0: Dense,
    mlp2: Dense,
    inv_freq: Tensor,
}

impl Qwen2VlVision {
    pub fn new(p: &nn::Path, cfg: &Qwen2VlVisionConfig) -> Result<Self> {
        cfg.validate("vision_config")?;
        let d = cfg.embed_dim;
        let hidden = (d as f64 * cfg.mlp_ratio) as i64;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = p / "blocks" / i;
                Block {
                    norm1: Norm::new(&(&b / "norm1"), d),
                    norm2: Norm::new(&(&b / "norm2"), d),
                    qkv: Dense::new(&(&b / "attn" / "qkv"), d, 3 * d),
                    proj: Dense::new(&(&b / "attn" / "proj"), d, d),
                    fc1: Dense::new(&(&b / "mlp" / "fc1"), d, hidden),
                    fc2: Dense::new(&(&b / "mlp" / "fc2"), hidden, d),
                }
            })
            .collect();
        let m = cfg.spatial_merge_size * cfg.spatial_merge_size * d;
        let merger = p / "merger";
        // inv_freq over half the head width (f32, as transformers computes it)
        let spatial = cfg.head_dim() / 2;
        let theta = cfg.rope_theta("vision_config")? as f32;
        let inv: Vec<f32> = (0..spatial / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / spatial as f32)).collect();
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: (p / "patch_embed" / "proj").var(
                "weight",
                &[d, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size],
                nn::Init::Const(0.),
            ),
            blocks,
            ln_q: Norm::new(&(&merger / "ln_q"), d),
            mlp0: Dense::new(&(&merger / "mlp" / 0), m, m),
            mlp2: Dense::new(&(&merger / "mlp" / 2), m, cfg.hidden_size),
            inv_freq: Tensor::from_slice(&inv).to_device(p.device()),
        })
    }

    /// Loads only the vision tower of a Qwen2-VL folder (`visual.*` or `model.visual.*` keys; the rest of
    /// the checkpoint is skipped).
    pub fn load(dir: &Path, device: tch::Device) -> Result<(nn::VarStore, Self)> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(super::io_err(&path))?;
        let at = path.display().to_string();
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| MllmError::Config { path: at.clone(), msg: e.to_string() })?;
        let mt = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
        if mt != "qwen2_vl" {
            return Err(MllmError::UnsupportedArchitecture {
                found: format!("model_type {mt:?}"),
                path: at,
                supported: "qwen2_vl (Qwen2VLForConditionalGeneration)",
            });
        }
        let vc =
            v.get("vision_config").cloned().ok_or_else(|| MllmError::Config { path: at.clone(), msg: "missing vision_config".into() })?;
        let cfg: Qwen2VlVisionConfig =
            serde_json::from_value(vc).map_err(|e| MllmError::Config { path: at.clone(), msg: format!("vision_config: {e}") })?;
        cfg.validate(&at)?;
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs.root(), &cfg)?;
        let rename = |k: &str| k.strip_prefix("model.visual.").or_else(|| k.strip_prefix("visual.")).map(String::from);
        super::weights::load_safetensors_dir(&vs.variables(), dir, &super::weights::KeyPolicy { rename: &rename, optional: &|_| false })?;
        Ok((vs, model))
    }

    /// Rotary cos/sin [n, head_dim] for the patches of `grids` in merge-window order.
    fn rotary(&self, grids: &[[i64; 3]]) -> (Tensor, Tensor) {
        let m = self.cfg.spatial_merge_size;
        let (mut hs, mut ws) = (vec![], vec![]);
        for &[t, h, w] in grids {
            for _ in 0..t {
                for bh in 0..h / m {
                    for bw in 0..w / m {
                        for ih in 0..m {
                            for iw in 0..m {
                                hs.push((bh * m + ih) as f32);
                                ws.push((bw * m + iw) as f32);
                            }
                        }
                    }
                }
            }
        }
        let dev = self.inv_freq.device();
        let f = |p: Vec<f32>| Tensor::from_slice(&p).to_device(dev).unsqueeze(-1) * self.inv_freq.unsqueeze(0);
        let hw = Tensor::cat(&[f(hs), f(ws)], -1);
        let emb = Tensor::cat(&[&hw, &hw], -1);
        (emb.cos(), emb.sin())
    }

    /// Merged image features [Σ t·h·w / merge², hidden_size] for patch rows [Σ t·h·w, patch_dim] and the
    /// images' (t, h, w) grids, in order.
    pub fn forward(&self, patches: &Tensor, grids: &[[i64; 3]]) -> Result<Tensor> {
        let n: i64 = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let m = self.cfg.spatial_merge_size;
        if let Some(g) = grids.iter().find(|g| g.iter().any(|&x| x <= 0) || g[1] % m != 0 || g[2] % m != 0) {
            return Err(MllmError::Input(format!("image grid {g:?}: h and w must be positive multiples of spatial_merge_size {m}")));
        }
        if patches.size() != [n, self.cfg.patch_dim()] {
            return Err(MllmError::Input(format!(
                "Qwen2-VL vision: expected patch rows [{n}, {}] for grids {grids:?}, found {:?}",
                self.cfg.patch_dim(),
                patches.size()
            )));
        }
        let d = self.cfg.embed_dim;
        let x = patches.to_kind(self.patch_embed.kind()).matmul(&self.patch_embed.view([d, -1]).tr());
        let (cos, sin) = self.rotary(grids);
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let lens: Vec<i64> = grids.iter().flat_map(|&[t, h, w]| std::iter::repeat_n(h * w, t as usize)).collect();
        let (heads, hd) = (self.cfg.num_heads, self.cfg.head_dim());
        let mut x = x;
        for b in &self.blocks {
            let h = b.norm1.forward(&x);
            let qkv = b.qkv.forward(&h).view([n, 3, heads, hd]);
            let rot = |t: Tensor| {
                let t = t.to_kind(Kind::Float);
                let half = hd / 2;
                let rh = Tensor::cat(&[t.narrow(-1, half, half).neg(), t.narrow(-1, 0, half)], -1);
                (&t * &cos + rh * &sin).to_kind(x.kind())
            };
            let (q, k, v) = (rot(qkv.select(1, 0)), rot(qkv.select(1, 1)), qkv.select(1, 2));
            let mut outs = Vec::with_capacity(lens.len());
            let mut start = 0;
            for &len in &lens {
                let part = |t: &Tensor| t.narrow(0, start, len).transpose(0, 1).unsqueeze(0);
                let o = Tensor::scaled_dot_product_attention(&part(&q), &part(&k), &part(&v), None::<&Tensor>, 0.0, false, None, false);
                outs.push(o.squeeze_dim(0).transpose(0, 1).reshape([len, d]));
                start += len;
            }
            x = &x + b.proj.forward(&Tensor::cat(&outs, 0));
            let h = b.fc1.forward(&b.norm2.forward(&x));
            let h = match self.cfg.hidden_act.as_str() {
                "quick_gelu" => &h * (&h * 1.702).sigmoid(),
                _ => h.gelu("none"),
            };
            x = &x + b.fc2.forward(&h);
        }
        let merged = self.ln_q.forward(&x).view([-1, m * m * d]);
        Ok(self.mlp2.forward(&self.mlp0.forward(&merged).gelu("none")))
    }
}

/// `Qwen2VLForConditionalGeneration`: the Qwen2 text tower and the vision transformer.
#[derive(Debug)]
pub struct Qwen2Vl {
    pub lm: CausalLm,
    pub vision: Qwen2VlVision,
    /// Rotary frequencies per axis (t, h, w); sums to head_dim / 2.
    pub mrope_section: Vec<i64>,
    pub image_token_id: i64,
    /// `<|vision_start|>` and `<|vision_end|>`, which the processor's prompts put around an image's tokens.
    pub vision_start_token_id: Option<i64>,
    pub vision_end_token_id: Option<i64>,
}

/// The text keys of a Qwen2-VL config as a Qwen2 decoder config: `text_config` (transformers 5) or the
/// top level (hub files), with the M-RoPE section taken out of `rope_parameters` / `rope_scaling`.
fn text_config(v: &serde_json::Value, at: &str) -> Result<(super::config::LlamaConfig, Vec<i64>)> {
    let bad = |msg: String| MllmError::Config { path: at.to_string(), msg };
    let mut t = v.get("text_config").cloned().unwrap_or_else(|| v.clone());
    let obj = t.as_object_mut().ok_or_else(|| bad("text_config: expected an object".into()))?;
    let rope = obj.get("rope_parameters").or_else(|| obj.get("rope_scaling")).or_else(|| v.get("rope_scaling")).cloned();
    let rope = rope.ok_or_else(|| bad("rope_parameters / rope_scaling: missing (Qwen2-VL needs mrope_section)".into()))?;
    let section: Vec<i64> = rope
        .get("mrope_section")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .ok_or_else(|| bad("rope_parameters.mrope_section: expected a list of three integers".into()))?;
    let theta = rope.get("rope_theta").and_then(|x| x.as_f64()).or_else(|| obj.get("rope_theta").and_then(|x| x.as_f64())).unwrap_or(1e6);
    obj.remove("rope_scaling");
    obj.insert("rope_parameters".into(), serde_json::json!({"rope_type": "default", "rope_theta": theta}));
    obj.insert("model_type".into(), "qwen2".into());
    if let Some(tie) = v.get("tie_word_embeddings").and_then(|x| x.as_bool()) {
        obj.insert("tie_word_embeddings".into(), (tie || obj.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false)).into());
    }
    let cfg: super::config::LlamaConfig = serde_json::from_value(t).map_err(|e| bad(format!("text_config: {e}")))?;
    cfg.validate(&format!("{at} (text_config)"))?;
    if section.len() != 3 || section.iter().sum::<i64>() != cfg.head_dim() / 2 {
        return Err(bad(format!("mrope_section {section:?}: expected three sizes summing to head_dim / 2 = {}", cfg.head_dim() / 2)));
    }
    Ok((cfg, section))
}

impl Qwen2Vl {
    /// Loads a Qwen2-VL folder (either key layout: hub `model.*` / `visual.*`, or transformers 5's
    /// `model.language_model.*` / `model.visual.*`; `lm_head.*` in both).
    pub fn load(dir: &Path, device: tch::Device) -> Result<(nn::VarStore, Self)> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(super::io_err(&path))?;
        let at = path.display().to_string();
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| MllmError::Config { path: at.clone(), msg: e.to_string() })?;
        let mt = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
        if mt != "qwen2_vl" {
            return Err(MllmError::UnsupportedArchitecture {
                found: format!("model_type {mt:?}"),
                path: at,
                supported: "qwen2_vl (Qwen2VLForConditionalGeneration)",
            });
        }
        let (tc, mrope_section) = text_config(&v, &at)?;
        let vc =
            v.get("vision_config").cloned().ok_or_else(|| MllmError::Config { path: at.clone(), msg: "missing vision_config".into() })?;
        let vcfg: Qwen2VlVisionConfig =
            serde_json::from_value(vc).map_err(|e| MllmError::Config { path: at.clone(), msg: format!("vision_config: {e}") })?;
        vcfg.validate(&at)?;
        if vcfg.hidden_size != tc.hidden_size {
            return Err(MllmError::Config {
                path: at,
                msg: format!("vision_config.hidden_size {} must equal the text hidden_size {}", vcfg.hidden_size, tc.hidden_size),
            });
        }
        let image_token_id = v
            .get("image_token_id")
            .and_then(|x| x.as_i64())
            .ok_or_else(|| MllmError::Config { path: at.clone(), msg: "image_token_id: missing".into() })?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let lm = CausalLm::new(&root, &tc)?;
        let vision = Qwen2VlVision::new(&(&root / "visual"), &vcfg)?;
        let tied = tc.tie_word_embeddings;
        let rename = move |k: &str| {
            let k = if let Some(r) = k.strip_prefix("model.visual.") {
                format!("visual.{r}")
            } else if let Some(r) = k.strip_prefix("model.language_model.") {
                format!("model.{r}")
            } else {
                k.to_string()
            };
            (!(k.ends_with("rotary_emb.inv_freq") || (tied && k == "lm_head.weight"))).then_some(k)
        };
        super::weights::load_safetensors_dir(&vs.variables(), dir, &super::weights::KeyPolicy { rename: &rename, optional: &|_| false })?;
        let vision_start_token_id = v.get("vision_start_token_id").and_then(|x| x.as_i64());
        let vision_end_token_id = v.get("vision_end_token_id").and_then(|x| x.as_i64());
        Ok((vs, Self { lm, vision, mrope_section, image_token_id, vision_start_token_id, vision_end_token_id }))
    }

    /// cos, sin [1, 1, t, head_dim] for 3-axis positions: half-dimension j uses the axis of the
    /// `mrope_section` chunk it falls in, and the second half repeats the first.
    pub fn mrope_tables(&self, positions: &[[i64; 3]]) -> (Tensor, Tensor) {
        let inv = self.lm.rope_inv_freq();
        let half = inv.size()[0];
        let axis_of: Vec<usize> =
            self.mrope_section.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i % 3, n as usize)).collect();
        let t = positions.len() as i64;
        let pos: Vec<f32> = positions.iter().flat_map(|p| axis_of.iter().map(move |&a| p[a] as f32)).collect();
        let freqs = Tensor::from_slice(&pos).to_device(inv.device()).view([t, half]) * inv.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).view([1, 1, t, 2 * half]);
        (emb.cos(), emb.sin())
    }

    /// Logits [1, t, vocab] of one prompt `ids` whose image tokens are filled, in order, by the images of
    /// `patches` [Σ t·h·w, patch_dim] with grids `grids`.
    pub fn forward(&self, ids: &[i64], patches: Option<&Tensor>, grids: &[[i64; 3]]) -> Result<Tensor> {
        let n = ids.len() as i64;
        let ids_t = Tensor::from_slice(ids).view([1, n]).to_device(self.lm.device());
        let feats = match patches {
            Some(p) => Some(self.vision.forward(p, grids)?),
            None => None,
        };
        let embeds = super::llava_next::splice_rows(&self.lm, &ids_t, self.image_token_id, feats.as_ref())?;
        let (pos, _) = rope_index(ids, self.image_token_id, grids, self.vision.cfg.spatial_merge_size)?;
        let (cos, sin) = self.mrope_tables(&pos);
        let hidden = self.lm.forward_embeds_rotary(&embeds, None, None, Some((&cos, &sin)))?;
        Ok(self.lm.logits(&hidden))
    }

    /// Greedy decoding of one prompt with a KV cache: the prompt runs with its M-RoPE positions, then
    /// token k (0-based) after it sits at position `len + k + rope delta` on all three axes, as
    /// transformers decodes. Returns the `max_new_tokens` chosen ids (no end-of-sequence stop).
    pub fn greedy(&self, ids: &[i64], patches: Option<&Tensor>, grids: &[[i64; 3]], max_new_tokens: usize) -> Result<Vec<i64>> {
        tch::no_grad(|| {
            let n = ids.len() as i64;
            let ids_t = Tensor::from_slice(ids).view([1, n]).to_device(self.lm.device());
            let feats = match patches {
                Some(p) => Some(self.vision.forward(p, grids)?),
                None => None,
            };
            let embeds = super::llava_next::splice_rows(&self.lm, &ids_t, self.image_token_id, feats.as_ref())?;
            let (pos, delta) = rope_index(ids, self.image_token_id, grids, self.vision.cfg.spatial_merge_size)?;
            let (cos, sin) = self.mrope_tables(&pos);
            let mut cache = super::llama::KvCache::new();
            let mut hidden = self.lm.forward_embeds_rotary(&embeds, None, Some(&mut cache), Some((&cos, &sin)))?;
            let mut out = Vec::with_capacity(max_new_tokens);
            for k in 0..max_new_tokens {
                let last = hidden.narrow(1, hidden.size()[1] - 1, 1);
                let next = self.lm.logits(&last).argmax(-1, false).int64_value(&[0, 0]);
                out.push(next);
                if k + 1 == max_new_tokens {
                    break;
                }
                let p = n + k as i64 + delta;
                let (cos, sin) = self.mrope_tables(&[[p; 3]]);
                let e = self.lm.embed(&Tensor::from_slice(&[next]).view([1, 1]))?;
                hidden = self.lm.forward_embeds_rotary(&e, None, Some(&mut cache), Some((&cos, &sin)))?;
            }
            Ok(out)
        })
    }
}

impl Qwen2Vl {
    /// The two input tensors of one image for [`EmbedInputs`]: its merged vision features
    /// [t·h·w / merge², hidden] (the frozen tower, run without gradient) and its grid (t, h, w) as int64 [3].
    pub fn image_inputs(&self, patches: &Tensor, grid: [i64; 3]) -> Result<[Tensor; 2]> {
        let f = tch::no_grad(|| self.vision.forward(&patches.to_device(self.lm.device()), &[grid]))?;
        Ok([f, Tensor::from_slice(&grid)])
    }

    /// The image tokens one image of grid (t, h, w) takes.
    pub fn image_tokens(&self, grid: [i64; 3]) -> i64 {
        let m = self.vision.cfg.spatial_merge_size;
        grid[0] * grid[1] * grid[2] / (m * m)
    }

    /// Splits (features, grid) pairs.
    fn split_images(images: &[Tensor]) -> Result<(Vec<&Tensor>, Vec<[i64; 3]>)> {
        if images.len() % 2 != 0 {
            return Err(MllmError::Input(format!(
                "Qwen2-VL takes two tensors per image (merged features, grid t/h/w), found {} tensors",
                images.len()
            )));
        }
        let mut feats = Vec::new();
        let mut grids = Vec::new();
        for (i, p) in images.chunks(2).enumerate() {
            let g = Vec::<i64>::try_from(p[1].to_device(tch::Device::Cpu).to_kind(Kind::Int64).reshape([-1]))?;
            let [t, h, w] = g[..] else {
                return Err(MllmError::Input(format!("image {i}: expected a grid of three integers (t, h, w), found {g:?}")));
            };
            feats.push(&p[0]);
            grids.push([t, h, w]);
        }
        Ok((feats, grids))
    }
}

impl super::llava::EmbedInputs for Qwen2Vl {
    fn text_model(&self) -> &CausalLm {
        &self.lm
    }

    fn embed_inputs(&self, ids: &Tensor, images: &[Tensor]) -> Result<Tensor> {
        let (feats, grids) = Self::split_images(images)?;
        for (i, (f, g)) in feats.iter().zip(&grids).enumerate() {
            if f.size() != [self.image_tokens(*g), self.lm.cfg.hidden_size] {
                return Err(MllmError::Input(format!(
                    "image {i}: grid {g:?} needs merged features [{}, {}], found {:?}",
                    self.image_tokens(*g),
                    self.lm.cfg.hidden_size,
                    f.size()
                )));
            }
        }
        let dev = self.lm.device();
        let rows = (!feats.is_empty()).then(|| Tensor::cat(&feats.iter().map(|f| f.to_device(dev)).collect::<Vec<_>>(), 0));
        super::llava_next::splice_rows(&self.lm, ids, self.image_token_id, rows.as_ref())
    }

    /// Each row's real tokens (where `mask` is 1) get [`rope_index`]'s positions with the grids of the images
    /// whose tokens they hold (the images are the batch's, in row order); padding gets (1, 1, 1), as
    /// transformers' `get_rope_index` fills it.
    fn rotary(&self, ids: &Tensor, mask: &Tensor, images: &[Tensor]) -> Result<Option<super::llava::Rotary>> {
        let (_, grids) = Self::split_images(images)?;
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let cpu = |x: &Tensor| Vec::<i64>::try_from(x.to_device(tch::Device::Cpu).to_kind(Kind::Int64).reshape([-1]));
        let (ids_v, mask_v) = (cpu(ids)?, cpu(mask)?);
        if mask_v.len() != ids_v.len() {
            return Err(MllmError::Input(format!("rotary: mask {:?} does not match ids {:?}", mask.size(), ids.size())));
        }
        let merge = self.vision.cfg.spatial_merge_size;
        let (mut next, mut cos, mut sin, mut deltas) = (0usize, vec![], vec![], vec![]);
        for r in 0..b as usize {
            let row = r * t as usize..(r + 1) * t as usize;
            let real: Vec<i64> = row.clone().filter(|&j| mask_v[j] != 0).map(|j| ids_v[j]).collect();
            let wanted = real.iter().filter(|&&x| x == self.image_token_id).count() as i64;
            let (mut have, start) = (0, next);
            while have < wanted {
                let g = grids.get(next).ok_or_else(|| {
                    MllmError::Input(format!("row {r}: {wanted} image tokens but the batch's {} image(s) run out", grids.len()))
                })?;
                have += self.image_tokens(*g);
                next += 1;
            }
            let (pos, delta) = rope_index(&real, self.image_token_id, &grids[start..next], merge)
                .map_err(|e| MllmError::Input(format!("row {r}: {e}")))?;
            let mut pos = pos.into_iter();
            let full: Vec<[i64; 3]> = row.map(|j| if mask_v[j] != 0 { pos.next().unwrap_or([1; 3]) } else { [1; 3] }).collect();
            let (c, s) = self.mrope_tables(&full);
            cos.push(c);
            sin.push(s);
            deltas.push(delta);
        }
        if next != grids.len() {
            return Err(MllmError::Input(format!("{} image(s) given but the prompts' image tokens take {next}", grids.len())));
        }
        Ok(Some(super::llava::Rotary { cos: Tensor::cat(&cos, 0), sin: Tensor::cat(&sin, 0), deltas }))
    }
}

impl super::sft::AsMutLm for Qwen2Vl {
    fn lm_mut(&mut self) -> &mut CausalLm {
        &mut self.lm
    }
}

/// M-RoPE position ids (t, h, w) of one unpadded prompt and its rope delta, as transformers'
/// `get_rope_index`: text tokens count up on all three axes; the `tokens` image tokens of an image
/// (a run of `image_token`) take `start + (t, row, column)` over its merged grid, and the text after it
/// continues at `start + max(h, w) / merge`. The delta is `max position + 1 − length`, which decoding adds
/// to the cache position.
pub fn rope_index(ids: &[i64], image_token: i64, grids: &[[i64; 3]], merge: i64) -> Result<(Vec<[i64; 3]>, i64)> {
    let mut out = Vec::with_capacity(ids.len());
    let mut grids_iter = grids.iter();
    let (mut pos, mut i) = (0i64, 0usize);
    while i < ids.len() {
        if ids[i] != image_token {
            out.push([pos; 3]);
            pos += 1;
            i += 1;
            continue;
        }
        let &[t, h, w] = grids_iter
            .next()
            .ok_or_else(|| MllmError::Input(format!("image tokens at position {i} but only {} image grid(s) were given", grids.len())))?;
        let (gh, gw) = (h / merge, w / merge);
        let n = (t * gh * gw) as usize;
        if i + n > ids.len() || ids[i..i + n].iter().any(|&x| x != image_token) {
            return Err(MllmError::Input(format!(
                "image at position {i} with grid ({t}, {h}, {w}) needs {n} consecutive image tokens (id {image_token})"
            )));
        }
        for ti in 0..t {
            for r in 0..gh {
                for c in 0..gw {
                    out.push([pos + ti, pos + r, pos + c]);
                }
            }
        }
        pos += gh.max(gw);
        i += n;
    }
    if grids_iter.next().is_some() {
        return Err(MllmError::Input(format!("{} image grid(s) given but fewer images in the prompt", grids.len())));
    }
    let max = out.iter().flat_map(|p| p.iter().copied()).max().unwrap_or(-1);
    Ok((out, max + 1 - ids.len() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the notes: 3 text, vision start, a 1x4x6 grid (6 tokens), vision end, 2 text.
    #[test]
    fn rope_index_by_hand() {
        let ids = [1, 2, 3, 9, 7, 7, 7, 7, 7, 7, 8, 4, 5];
        let (pos, delta) = rope_index(&ids, 7, &[[1, 4, 6]], 2).unwrap();
        let axis = |a: usize| pos.iter().map(|p| p[a]).collect::<Vec<_>>();
        assert_eq!(axis(0), [0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 7, 8, 9]);
        assert_eq!(axis(1), [0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 7, 8, 9]);
        assert_eq!(axis(2), [0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9]);
        assert_eq!(delta, -3);
    }
}
