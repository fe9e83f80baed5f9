//! The Llama-family decoder (Llama, Mistral, Qwen2): RMSNorm, RoPE (θ and scaling from the config),
//! grouped-query attention, SwiGLU, optional QKV bias, tied embeddings, and a KV cache.
//! Variable names equal the Hugging Face keys (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`).
use super::config::{LlamaConfig, RopeScaling};
use super::lora::LoraAdapter;
use super::{MllmError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tch::{nn, Device, Kind, Tensor};

/// A linear layer `y = x Wᵀ + b`, optionally with a LoRA adapter that a shared switch turns on and off.
#[derive(Debug)]
pub struct Linear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    pub(crate) lora_on: Arc<AtomicBool>,
}

impl Linear {
    fn new(p: &nn::Path, name: &str, in_dim: i64, out_dim: i64, bias: bool, lora_on: &Arc<AtomicBool>) -> Self {
        let sub = p / name;
        let weight = sub.var("weight", &[out_dim, in_dim], nn::Init::Const(0.));
        let bias = bias.then(|| sub.var("bias", &[out_dim], nn::Init::Const(0.)));
        let full = format!("{}.{name}", p.components().collect::<Vec<_>>().join("."));
        Self { name: full.trim_start_matches('.').to_string(), weight, bias, lora: None, lora_on: lora_on.clone() }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.linear(&self.weight, self.bias.as_ref());
        if let Some(l) = &self.lora {
            if self.lora_on.load(Ordering::Relaxed) {
                y = y + l.delta(x);
            }
        }
        y
    }
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    // As transformers: normalise in f32, cast back, then scale.
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let y = (xf * (var + eps).rsqrt()).to_kind(x.kind());
    w * y
}

/// Rotary embedding with the config's θ and scaling.
#[derive(Debug)]
struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    fn new(cfg: &LlamaConfig, device: Device) -> Result<Self> {
        let d = cfg.head_dim();
        let theta = cfg.rope_theta();
        // In f32, as transformers computes it.
        let base: Vec<f32> = (0..d / 2).map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / d as f32)).collect();
        let inv: Vec<f32> = match cfg.rope()? {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (factor, lo, hi, old) =
                    (factor as f32, low_freq_factor as f32, high_freq_factor as f32, original_max_position_embeddings as f32);
                let low_wavelen = old / lo;
                let high_wavelen = old / hi;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                        if medium {
                            let s = (old / wavelen - lo) / (hi - lo);
                            (1.0 - s) * scaled / factor + s * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        };
        Ok(Self { inv_freq: Tensor::from_slice(&inv).to_device(device) })
    }

    /// cos, sin of shape [b, 1, t, head_dim] for integer positions [b, t].
    fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_kind(kind).unsqueeze(1), emb.sin().to_kind(kind).unsqueeze(1))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[&x.narrow(3, half, half).neg(), &x.narrow(3, 0, half)], 3)
}

/// Keys and values of one layer in buffers [b, kv_heads, capacity, head_dim] of which the first `len`
/// positions are filled; capacity doubles when full, so appending a token copies only that token.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: i64,
}

impl LayerCache {
    /// Appends k, v [b, kv, t, hd] and returns views of everything cached so far.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let cap = self.k.size()[2];
        if self.len + t > cap {
            let new_cap = (2 * cap).max(self.len + t).max(64);
            let grow = |buf: &Tensor| {
                let mut size = buf.size();
                size[2] = new_cap;
                let fresh = Tensor::zeros(size, (buf.kind(), buf.device()));
                fresh.narrow(2, 0, self.len).copy_(&buf.narrow(2, 0, self.len));
                fresh
            };
            self.k = grow(&self.k);
            self.v = grow(&self.v);
        }
        self.k.narrow(2, self.len, t).copy_(k);
        self.v.narrow(2, self.len, t).copy_(v);
        self.len += t;
        (self.k.narrow(2, 0, self.len), self.v.narrow(2, 0, self.len))
    }
}

/// Per-layer cached keys and values for incremental decoding (used under `no_grad`).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of positions already cached.
    pub fn len(&self) -> i64 {
        self.layers.first().and_then(|l| l.as_ref()).map(|c| c.len).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Keeps only the given batch rows (for dropping finished sequences).
    pub fn select_rows(&mut self, rows: &Tensor) {
        for c in self.layers.iter_mut().flatten() {
            c.k = c.k.index_select(0, rows);
            c.v = c.v.index_select(0, rows);
        }
    }
}

#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_heads: i64,
    n_kv: i64,
    head_dim: i64,
}

#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Debug)]
pub struct Layer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
}

/// `LlamaForCausalLM` (and Mistral / Qwen2): the decoder body under `model.` and the head `lm_head`.
#[derive(Debug)]
pub struct CausalLm {
    pub cfg: LlamaConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<Layer>,
    norm: Tensor,
    /// None when embeddings are tied.
    pub lm_head: Option<Linear>,
    rope: Rope,
    /// Switch shared by every LoRA adapter of this model (off: the frozen base model).
    pub lora_on: Arc<AtomicBool>,
}

impl CausalLm {
    /// Creates the variables (zero-initialised) under `root`: `root.model.*` and `root.lm_head.*`.
    pub fn new(root: &nn::Path, cfg: &LlamaConfig) -> Result<Self> {
        cfg.validate("config")?;
        let lora_on = Arc::new(AtomicBool::new(true));
        let m = root / "model";
        let (h, hd, nh, nkv) = (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads, cfg.num_kv_heads());
        let qkv_bias = cfg.qkv_bias();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = &m / "layers" / i;
                let a = &l / "self_attn";
                let f = &l / "mlp";
                Layer {
                    self_attn: Attention {
                        q_proj: Linear::new(&a, "q_proj", h, nh * hd, qkv_bias, &lora_on),
                        k_proj: Linear::new(&a, "k_proj", h, nkv * hd, qkv_bias, &lora_on),
                        v_proj: Linear::new(&a, "v_proj", h, nkv * hd, qkv_bias, &lora_on),
                        o_proj: Linear::new(&a, "o_proj", nh * hd, h, false, &lora_on),
                        n_heads: nh,
                        n_kv: nkv,
                        head_dim: hd,
                    },
                    mlp: Mlp {
                        gate_proj: Linear::new(&f, "gate_proj", h, cfg.intermediate_size, cfg.mlp_bias, &lora_on),
                        up_proj: Linear::new(&f, "up_proj", h, cfg.intermediate_size, cfg.mlp_bias, &lora_on),
                        down_proj: Linear::new(&f, "down_proj", cfg.intermediate_size, h, cfg.mlp_bias, &lora_on),
                    },
                    input_layernorm: (&l / "input_layernorm").var("weight", &[h], nn::Init::Const(1.)),
                    post_attention_layernorm: (&l / "post_attention_layernorm").var("weight", &[h], nn::Init::Const(1.)),
                }
            })
            .collect();
        let embed_tokens = (&m / "embed_tokens").var("weight", &[cfg.vocab_size, h], nn::Init::Const(0.));
        let norm = (&m / "norm").var("weight", &[h], nn::Init::Const(1.));
        let lm_head = (!cfg.tie_word_embeddings).then(|| Linear::new(root, "lm_head", h, cfg.vocab_size, false, &lora_on));
        Ok(Self { cfg: cfg.clone(), embed_tokens, layers, norm, lm_head, rope: Rope::new(cfg, root.device())?, lora_on })
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }
    /// The rotary inverse frequencies [head_dim / 2] (f32, after the config's scaling).
    pub fn rope_inv_freq(&self) -> &Tensor {
        &self.rope.inv_freq
    }
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Every linear layer with its full variable-name prefix (for LoRA targeting).
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for l in &mut self.layers {
            let a = &mut l.self_attn;
            out.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            let f = &mut l.mlp;
            out.extend([&mut f.gate_proj, &mut f.up_proj, &mut f.down_proj]);
        }
        out
    }

    /// True when any layer carries a LoRA adapter.
    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(|l| {
            let (a, f) = (&l.self_attn, &l.mlp);
            [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &f.gate_proj, &f.up_proj, &f.down_proj].iter().any(|x| x.lora.is_some())
        })
    }

    pub fn set_lora_enabled(&self, on: bool) {
        self.lora_on.store(on, Ordering::Relaxed);
    }

    /// Token embeddings for ids [b, t]; ids outside the vocabulary are an error.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        if ids.numel() > 0 {
            let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if lo < 0 || hi >= self.cfg.vocab_size {
                return Err(MllmError::Input(format!("token ids must lie in [0, {}), found range [{lo}, {hi}]", self.cfg.vocab_size)));
            }
        }
        Ok(Tensor::embedding(&self.embed_tokens, &ids.to_device(self.device()), -1, false, false))
    }

    /// Runs the decoder on embeddings [b, t, h]. `attention_mask` [b, past + t] marks real tokens with 1
    /// (left padding with 0); positions follow the mask as transformers does. With a cache, the new keys
    /// and values are appended. Returns the final-norm hidden states [b, t, h].
    pub fn forward_embeds(&self, embeds: &Tensor, attention_mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.forward_embeds_rotary(embeds, attention_mask, cache, None)
    }

    /// [`Self::forward_embeds`] with the rotary tables given by the caller (cos, sin [b, 1, t, head_dim])
    /// instead of computed from 1-D positions: Qwen2-VL's 3-axis M-RoPE.
    pub fn forward_embeds_rotary(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        rotary: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let t = embeds.size()[1];
        let mut cache = cache;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let total = past + t;
        if let Some(w) = self.cfg.attention_window() {
            if total > w {
                return Err(MllmError::Input(format!(
                    "sequence length {total} exceeds the sliding window {w}; only full attention is implemented"
                )));
            }
        }
        let (cos, sin, allowed) = self.attention_inputs(embeds, attention_mask, past)?;
        let (cos, sin) = match rotary {
            Some((c, s)) => (c.to_kind(embeds.kind()), s.to_kind(embeds.kind())),
            None => (cos, sin),
        };
        if let Some(c) = cache.as_deref_mut() {
            if c.layers.len() != self.layers.len() {
                c.layers = (0..self.layers.len()).map(|_| None).collect();
            }
        }
        let mut x = embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = self.layer_forward(layer, &x, &cos, &sin, &allowed, slot);
        }
        Ok(rms_norm(&x, &self.norm, self.cfg.rms_norm_eps))
    }

    /// The text tower's own rotary tables (cos, sin [b, 1, t, head_dim]) at 1-D positions [b, t].
    pub fn rope_tables(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        self.rope.cos_sin(&positions.to_device(self.device()), kind)
    }

    /// Rotary tables and the boolean attention pattern [b, 1, t, past + t] for `embeds` [b, t, h].
    fn attention_inputs(&self, embeds: &Tensor, attention_mask: Option<&Tensor>, past: i64) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t) = (embeds.size()[0], embeds.size()[1]);
        let total = past + t;
        let dev = embeds.device();
        let mask = match attention_mask {
            Some(m) => {
                if m.size() != [b, total] {
                    return Err(MllmError::Input(format!(
                        "attention_mask: expected shape [{b}, {total}] (batch, past + new), found {:?}",
                        m.size()
                    )));
                }
                m.to_kind(Kind::Int64).to_device(dev)
            }
            None => Tensor::ones([b, total], (Kind::Int64, dev)),
        };
        let positions = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0).narrow(1, past, t);
        let (cos, sin) = self.rope.cos_sin(&positions, embeds.kind());
        // Allowed: causal and a real key, plus the diagonal so padded queries never see an empty row (NaN).
        let q_pos = Tensor::arange_start(past, total, (Kind::Int64, dev)).view([t, 1]);
        let k_pos = Tensor::arange(total, (Kind::Int64, dev)).view([1, total]);
        let causal = k_pos.le_tensor(&q_pos);
        let diag = k_pos.eq_tensor(&q_pos);
        let allowed = causal.unsqueeze(0).logical_and(&mask.ne(0).unsqueeze(1)).logical_or(&diag.unsqueeze(0)).unsqueeze(1);
        Ok((cos, sin, allowed))
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        allowed: &Tensor,
        slot: Option<&mut Option<LayerCache>>,
    ) -> Tensor {
        let h = rms_norm(x, &layer.input_layernorm, self.cfg.rms_norm_eps);
        let x = x + layer.self_attn.forward(&h, cos, sin, allowed, slot);
        let h = rms_norm(&x, &layer.post_attention_layernorm, self.cfg.rms_norm_eps);
        &x + layer.mlp.forward(&h)
    }

    /// Forward and backward with gradient checkpointing: each decoder layer runs once without autograd,
    /// keeping only its input, and is recomputed with autograd during the backward pass, layer by layer
    /// from the last (activation memory of one layer instead of all). `loss` maps the final-norm hidden
    /// states [b, t, h] to a scalar. Gradients accumulate as `loss.backward()` would leave them, into the
    /// decoder's parameters and through `embeds` into whatever produced it (embedding, projector).
    /// Returns the loss value. No dropout here, so the recomputation is exact.
    /// `rotary`: caller-supplied rotary tables, as in [`Self::forward_embeds_rotary`] (Qwen2-VL's M-RoPE).
    pub fn backward_checkpointed(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        rotary: Option<(&Tensor, &Tensor)>,
        loss: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<f64> {
        let (cos, sin, allowed) = self.attention_inputs(embeds, attention_mask, 0)?;
        let (cos, sin) = match rotary {
            Some((c, s)) => (c.to_kind(embeds.kind()), s.to_kind(embeds.kind())),
            None => (cos, sin),
        };
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = embeds.detach();
        tch::no_grad(|| {
            for layer in &self.layers {
                let next = self.layer_forward(layer, &x, &cos, &sin, &allowed, None);
                inputs.push(std::mem::replace(&mut x, next));
            }
        });
        let last = x.detach().set_requires_grad(true);
        let l = loss(&rms_norm(&last, &self.norm, self.cfg.rms_norm_eps))?;
        let value = l.double_value(&[]);
        l.backward();
        let mut grad = last.grad();
        for (layer, input) in self.layers.iter().zip(inputs).rev() {
            let x = input.set_requires_grad(true);
            // Σ y·∂L/∂y has the same gradient with respect to x and the layer's weights as L itself.
            (self.layer_forward(layer, &x, &cos, &sin, &allowed, None) * &grad).sum(Kind::Float).backward();
            grad = x.grad();
        }
        if embeds.requires_grad() {
            (embeds * &grad).sum(Kind::Float).backward();
        }
        Ok(value)
    }

    /// Vocabulary logits for hidden states [.., h].
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(&self.embed_tokens.tr()),
        }
    }

    /// Full forward on token ids [b, t] → logits [b, t, vocab].
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let e = self.embed(ids)?;
        Ok(self.logits(&self.forward_embeds(&e, attention_mask, None)?))
    }
}

impl Attention {
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, allowed: &Tensor, slot: Option<&mut Option<LayerCache>>) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let q = self.q_proj.forward(x).view([b, t, self.n_heads, self.head_dim]).transpose(1, 2);
        let k = self.k_proj.forward(x).view([b, t, self.n_kv, self.head_dim]).transpose(1, 2);
        let v = self.v_proj.forward(x).view([b, t, self.n_kv, self.head_dim]).transpose(1, 2);
        let q = &q * cos + rotate_half(&q) * sin;
        let k = &k * cos + rotate_half(&k) * sin;
        let (k, v) = match slot {
            Some(slot) => {
                let c =
                    slot.get_or_insert_with(|| LayerCache { k: k.zeros_like().narrow(2, 0, 0), v: v.zeros_like().narrow(2, 0, 0), len: 0 });
                c.append(&k, &v)
            }
            None => (k, v),
        };
        // Grouped-query attention without materialising repeated K/V heads (SDPA's enable_gqa).
        let gqa = self.n_heads != self.n_kv;
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(allowed), 0.0, false, None, gqa);
        self.o_proj.forward(&o.transpose(1, 2).reshape([b, t, self.n_heads * self.head_dim]))
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

/// Drops checkpoint keys a causal LM legitimately carries but does not use.
pub fn text_key_rename(cfg: &LlamaConfig) -> impl Fn(&str) -> Option<String> + '_ {
    move |k: &str| {
        if k.ends_with("rotary_emb.inv_freq") || (cfg.tie_word_embeddings && k == "lm_head.weight") {
            None
        } else {
            Some(k.to_string())
        }
    }
}

/// Loads a Hugging Face text model folder (`config.json` + safetensors) onto `device` in `dtype`.
pub fn load_causal_lm(dir: &std::path::Path, device: Device, dtype: super::DType) -> Result<(nn::VarStore, CausalLm)> {
    let cfg = match super::config::ModelConfig::from_dir(dir)? {
        super::config::ModelConfig::Text(c) => c,
        super::config::ModelConfig::Llava(_) => {
            return Err(MllmError::Input(format!("{} holds a LLaVA model: load it with llava::Llava::load", dir.display())))
        }
    };
    let mut vs = nn::VarStore::new(device);
    let lm = CausalLm::new(&vs.root(), &cfg)?;
    let rename = text_key_rename(&cfg);
    super::weights::load_safetensors_dir(&vs.variables(), dir, &super::weights::KeyPolicy { rename: &rename, optional: &|_| false })?;
    vs.set_kind(dtype.kind());
    Ok((vs, lm))
}
