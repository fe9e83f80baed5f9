//! Hugging Face `config.json` as serde structs.
//!
//! Text: `model_type` llama, mistral or qwen2 (`LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM`). Multimodal: `llava` (`LlavaForConditionalGeneration`) with one of those text
//! towers. Rope: `default`, `linear` and `llama3` scaling, read from transformers 5's `rope_parameters`
//! or transformers 4's `rope_theta` + `rope_scaling`. Anything else is refused by name.
use super::{MllmError, Result};
use serde::Deserialize;
use std::path::Path;

pub const SUPPORTED_TEXT: &str = "llama (LlamaForCausalLM), mistral (MistralForCausalLM), qwen2 (Qwen2ForCausalLM)";
pub const SUPPORTED_ALL: &str =
    "llama (LlamaForCausalLM), mistral (MistralForCausalLM), qwen2 (Qwen2ForCausalLM), llava (LlavaForConditionalGeneration)";

/// Rope settings; the same struct reads `rope_parameters` (transformers 5) and `rope_scaling` (4.x).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct RopeParameters {
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

/// Rope frequency scaling we implement.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (inv_freq / factor).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's band-wise scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// A Llama-family decoder config (Llama, Mistral, Qwen2).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Bias on q/k/v projections; Qwen2 has it without saying so in its config.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<serde_json::Value>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_eps() -> f64 {
    1e-6
}

fn ids(v: &Option<serde_json::Value>) -> Vec<i64> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_i64()).collect(),
        _ => vec![],
    }
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(super::io_err(path))?;
        let cfg: Self =
            serde_json::from_str(&text).map_err(|e| MllmError::Config { path: path.display().to_string(), msg: e.to_string() })?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    pub fn validate(&self, at: &str) -> Result<()> {
        let bad = |msg: String| Err(MllmError::Config { path: at.to_string(), msg });
        if !matches!(self.model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(MllmError::UnsupportedArchitecture {
                found: format!("model_type {} {:?}", self.model_type, self.architectures),
                path: at.to_string(),
                supported: SUPPORTED_TEXT,
            });
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return bad(format!("hidden_act: expected silu (SwiGLU), found {act:?}"));
            }
        }
        if self.use_sliding_window == Some(true) {
            return bad("use_sliding_window = true is not supported (full attention only)".into());
        }
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 || self.num_hidden_layers <= 0 || self.vocab_size <= 0 {
            return bad("hidden_size, num_attention_heads, num_hidden_layers and vocab_size must be positive".into());
        }
        if self.num_attention_heads % self.num_kv_heads() != 0 {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!("hidden_size {} not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads));
        }
        self.rope()?;
        Ok(())
    }

    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias.unwrap_or(self.model_type == "qwen2")
    }
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters.as_ref().and_then(|r| r.rope_theta).or(self.rope_theta).unwrap_or(10000.0)
    }
    /// Attention window past which Mistral-style sliding attention would differ from full attention.
    pub fn attention_window(&self) -> Option<i64> {
        if self.model_type == "mistral" {
            self.sliding_window
        } else {
            None
        }
    }
    pub fn eos_token_ids(&self) -> Vec<i64> {
        ids(&self.eos_token_id)
    }
    pub fn bos_token_id(&self) -> Option<i64> {
        ids(&self.bos_token_id).first().copied()
    }

    /// The rope scaling in use, or an error naming an unsupported `rope_type`.
    pub fn rope(&self) -> Result<RopeScaling> {
        let p = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let Some(p) = p else { return Ok(RopeScaling::None) };
        let need = |v: Option<f64>, name: &str| {
            v.ok_or_else(|| MllmError::Config { path: "config.json".into(), msg: format!("rope scaling needs {name}") })
        };
        match p.rope_type.as_deref().unwrap_or("default") {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: need(p.factor, "factor")? }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: need(p.factor, "factor")?,
                low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: need(p.original_max_position_embeddings, "original_max_position_embeddings")?,
            }),
            other => Err(MllmError::Config {
                path: "config.json".into(),
                msg: format!("rope_type {other:?} is not supported (supported: default, linear, llama3)"),
            }),
        }
    }
}

/// `LlavaForConditionalGeneration`'s config. The vision tower's own settings are kept only for
/// checking the width of the features handed in.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaConfig {
    pub model_type: String,
    pub text_config: LlamaConfig,
    pub vision_config: VisionConfig,
    #[serde(alias = "image_token_id")]
    pub image_token_index: i64,
    #[serde(default = "default_proj_act")]
    pub projector_hidden_act: String,
    #[serde(default = "default_true")]
    pub multimodal_projector_bias: bool,
    #[serde(default)]
    pub vision_feature_layer: Option<serde_json::Value>,
    #[serde(default)]
    pub vision_feature_select_strategy: Option<String>,
    #[serde(default)]
    pub image_seq_length: Option<i64>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: i64,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_proj_act() -> String {
    "gelu".into()
}
fn default_true() -> bool {
    true
}

/// A model folder's config: text-only or LLaVA.
#[derive(Debug, Clone)]
pub enum ModelConfig {
    Text(LlamaConfig),
    Llava(LlavaConfig),
}

impl ModelConfig {
    /// Reads `dir/config.json` and refuses architectures we do not implement, naming those we do.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(super::io_err(&path))?;
        let at = path.display().to_string();
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| MllmError::Config { path: at.clone(), msg: e.to_string() })?;
        let mt = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("").to_string();
        let parse_err = |e: serde_json::Error| MllmError::Config { path: at.clone(), msg: e.to_string() };
        match mt.as_str() {
            "llama" | "mistral" | "qwen2" => {
                let c: LlamaConfig = serde_json::from_value(v).map_err(parse_err)?;
                c.validate(&at)?;
                Ok(Self::Text(c))
            }
            "llava" => {
                let mut c: LlavaConfig = serde_json::from_value(v).map_err(parse_err)?;
                if let Some(t) = c.tie_word_embeddings {
                    c.text_config.tie_word_embeddings |= t;
                }
                c.text_config.validate(&format!("{at} (text_config)"))?;
                if !matches!(c.projector_hidden_act.as_str(), "gelu" | "gelu_pytorch_tanh") {
                    return Err(MllmError::Config {
                        path: at,
                        msg: format!("projector_hidden_act: expected gelu or gelu_pytorch_tanh, found {:?}", c.projector_hidden_act),
                    });
                }
                Ok(Self::Llava(c))
            }
            _ => {
                let arch = v.get("architectures").map(|a| a.to_string()).unwrap_or_default();
                Err(MllmError::UnsupportedArchitecture { found: format!("model_type {mt:?} {arch}"), path: at, supported: SUPPORTED_ALL })
            }
        }
    }
}
