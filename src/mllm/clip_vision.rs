//! CLIP's vision tower (`CLIPVisionModel`) in tch, for models whose image features are computed inside the
//! model from pixel values (LLaVA-NeXT's tiles): patch embedding (a stride-`patch` convolution written as a
//! matmul), class token, learned positions, `pre_layrnorm`, pre-norm encoder layers (bidirectional
//! attention, `quick_gelu` or `gelu` MLP). `post_layernorm` is never used by the LLaVA family, so it is not
//! built. Variable names are the Hugging Face keys below the given root
//! (`embeddings.patch_embedding.weight`, `encoder.layers.N.self_attn.q_proj.weight`, ...).
//!
//! `hidden_states(k)` follows transformers' `output_hidden_states`: index 0 is the embeddings after
//! `pre_layrnorm`, index k the output of encoder layer k; negative indices count from the end (−1 = the
//! last layer). Only the layers up to the deepest requested index are run.
use super::{MllmError, Result};
use serde::Deserialize;
use tch::{nn, Tensor};

/// `CLIPVisionConfig` (the `vision_config` block of a LLaVA / LLaVA-NeXT `config.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "default_vision_type")]
    pub model_type: String,
    pub hidden_size: i64,
    #[serde(default = "default_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "default_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "default_image_size")]
    pub image_size: i64,
    #[serde(default = "default_patch")]
    pub patch_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_channels")]
    pub num_channels: i64,
}

fn default_vision_type() -> String {
    "clip_vision_model".into()
}
fn default_intermediate() -> i64 {
    3072
}
fn default_layers() -> i64 {
    12
}
fn default_heads() -> i64 {
    12
}
fn default_image_size() -> i64 {
    224
}
fn default_patch() -> i64 {
    32
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_channels() -> i64 {
    3
}

impl ClipVisionConfig {
    /// Refuses what the tower does not implement, naming `at` (the config file) and the field.
    pub fn validate(&self, at: &str) -> Result<()> {
        let bad = |msg: String| Err(MllmError::Config { path: at.to_string(), msg });
        if self.model_type != "clip_vision_model" {
            return bad(format!(
                "vision_config.model_type: expected clip_vision_model (the CLIP tower is the one implemented), found {:?}",
                self.model_type
            ));
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return bad(format!("vision_config.hidden_act: expected quick_gelu or gelu, found {:?}", self.hidden_act));
        }
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "vision_config: hidden_size {} must be a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.patch_size <= 0 || self.image_size <= 0 || self.image_size % self.patch_size != 0 {
            return bad(format!(
                "vision_config: image_size {} must be a positive multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.num_channels != 3 {
            return bad(format!("vision_config.num_channels: expected 3 (RGB), found {}", self.num_channels));
        }
        Ok(())
    }
    /// Patches per side (`image_size / patch_size`).
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }
}

#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(p: &nn::Path, dim: i64) -> Self {
        Self { weight: p.var("weight", &[dim], nn::Init::Const(1.)), bias: p.var("bias", &[dim], nn::Init::Const(0.)) }
    }
    fn forward(&self, x: &Tensor, eps: f64) -> Tensor {
        x.layer_norm([self.weight.size()[0]], Some(&self.weight), Some(&self.bias), eps, false)
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
struct EncoderLayer {
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
    ln1: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    ln2: LayerNorm,
}

/// `CLIPVisionModel` without `post_layernorm`.
#[derive(Debug)]
pub struct ClipVision {
    pub cfg: ClipVisionConfig,
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
}

impl ClipVision {
    /// Creates the variables under `p` (the `vision_model` path of the checkpoint).
    pub fn new(p: &nn::Path, cfg: &ClipVisionConfig) -> Result<Self> {
        cfg.validate("vision_config")?;
        let d = cfg.hidden_size;
        let e = p / "embeddings";
        let n_pos = cfg.grid() * cfg.grid() + 1;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = p / "encoder" / "layers" / i;
                let a = &l / "self_attn";
                let m = &l / "mlp";
                EncoderLayer {
                    q: Dense::new(&(&a / "q_proj"), d, d),
                    k: Dense::new(&(&a / "k_proj"), d, d),
                    v: Dense::new(&(&a / "v_proj"), d, d),
                    out: Dense::new(&(&a / "out_proj"), d, d),
                    ln1: LayerNorm::new(&(&l / "layer_norm1"), d),
                    fc1: Dense::new(&(&m / "fc1"), d, cfg.intermediate_size),
                    fc2: Dense::new(&(&m / "fc2"), cfg.intermediate_size, d),
                    ln2: LayerNorm::new(&(&l / "layer_norm2"), d),
                }
            })
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            class_embedding: e.var("class_embedding", &[d], nn::Init::Const(0.)),
            patch_embedding: (&e / "patch_embedding").var(
                "weight",
                &[d, cfg.num_channels, cfg.patch_size, cfg.patch_size],
                nn::Init::Const(0.),
            ),
            position_embedding: (&e / "position_embedding").var("weight", &[n_pos, d], nn::Init::Const(0.)),
            pre_layrnorm: LayerNorm::new(&(p / "pre_layrnorm"), d),
            layers,
        })
    }

    /// Resolves a `vision_feature_layer` index (transformers' `hidden_states[k]`, negative from the end)
    /// to the number of encoder layers to run, or an error naming the valid range.
    pub fn resolve_layer(&self, k: i64) -> Result<usize> {
        resolve_layer(k, self.cfg.num_hidden_layers)
    }

    /// The hidden states at the given (transformers-style) indices, each [n, 1 + patches, hidden], for
    /// pixel values [n, 3, image_size, image_size].
    pub fn hidden_states(&self, pixel_values: &Tensor, indices: &[i64]) -> Result<Vec<Tensor>> {
        let s = pixel_values.size();
        let size = self.cfg.image_size;
        if s.len() != 4 || s[1] != self.cfg.num_channels || s[2] != size || s[3] != size {
            return Err(MllmError::Input(format!(
                "vision tower: expected pixel values [n, {}, {size}, {size}], found {s:?}",
                self.cfg.num_channels
            )));
        }
        let depth: Vec<usize> = indices.iter().map(|&k| self.resolve_layer(k)).collect::<Result<_>>()?;
        let deepest = depth.iter().copied().max().unwrap_or(0);
        let (n, d, p, g) = (s[0], self.cfg.hidden_size, self.cfg.patch_size, self.cfg.grid());
        let x = pixel_values.to_kind(self.patch_embedding.kind());
        // Conv2d with stride = kernel = patch, as a matmul over (c, py, px) patches in row-major patch order.
        let patches = x.view([n, 3, g, p, g, p]).permute([0, 2, 4, 1, 3, 5]).reshape([n, g * g, 3 * p * p]);
        let emb = patches.matmul(&self.patch_embedding.view([d, 3 * p * p]).tr());
        let cls = self.class_embedding.view([1, 1, d]).expand([n, 1, d], false);
        let h0 = Tensor::cat(&[cls, emb], 1) + self.position_embedding.unsqueeze(0);
        let mut h = self.pre_layrnorm.forward(&h0, self.cfg.layer_norm_eps);
        let mut states = vec![h.shallow_clone()];
        for layer in &self.layers[..deepest] {
            h = self.layer_forward(layer, &h);
            states.push(h.shallow_clone());
        }
        Ok(depth.iter().map(|&i| states[i].shallow_clone()).collect())
    }

    fn layer_forward(&self, l: &EncoderLayer, x: &Tensor) -> Tensor {
        let (n, t, d) = (x.size()[0], x.size()[1], self.cfg.hidden_size);
        let heads = self.cfg.num_attention_heads;
        let hd = d / heads;
        let eps = self.cfg.layer_norm_eps;
        let h = l.ln1.forward(x, eps);
        let split = |y: Tensor| y.view([n, t, heads, hd]).transpose(1, 2);
        let (q, k, v) = (split(l.q.forward(&h)), split(l.k.forward(&h)), split(l.v.forward(&h)));
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false);
        let x = x + l.out.forward(&o.transpose(1, 2).reshape([n, t, d]));
        let h = l.fc1.forward(&l.ln2.forward(&x, eps));
        let h = match self.cfg.hidden_act.as_str() {
            "quick_gelu" => &h * (&h * 1.702).sigmoid(),
            _ => h.gelu("none"),
        };
        &x + l.fc2.forward(&h)
    }
}

/// transformers' `hidden_states[k]` for a tower of `layers` encoder layers: the number of layers to run.
pub fn resolve_layer(k: i64, layers: i64) -> Result<usize> {
    let idx = if k < 0 { layers + 1 + k } else { k };
    if !(0..=layers).contains(&idx) {
        return Err(MllmError::Input(format!(
            "vision_feature_layer {k} is out of range for a vision tower with {layers} layers (valid: {} ..= {layers})",
            -(layers + 1)
        )));
    }
    Ok(idx as usize)
}
