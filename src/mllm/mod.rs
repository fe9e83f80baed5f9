//! The multimodal LLM in libtorch (tch): a Llama-family decoder (Llama, Mistral, Qwen2) built from a
//! Hugging Face `config.json`, weights from `*.safetensors` (or a llama.cpp GGUF file) under their Hugging
//! Face key names, a LLaVA-style wrapper that splices projected vision features in at the image token,
//! KV-cache generation with per-token log-probs and entropy, LoRA, and SFT / PPO / DPO trainers.
//!
//! Supported architectures: `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` (text) and
//! `LlavaForConditionalGeneration` with one of those as its text tower (multimodal). The vision tower is
//! frozen and runs elsewhere: this module takes its (cached) penultimate-layer patch features as tensors.
//! Also read: llama.cpp GGUF files with `general.architecture = llama` (F32/F16/Q4_0/Q4_1/Q8_0 tensors).
//!
//! The paper's backbones: `LlavaNextForConditionalGeneration` ([`llava_next`], with the CLIP tower in tch,
//! [`clip_vision`]) and `Qwen2VLForConditionalGeneration` ([`qwen2_vl`]: vision transformer, M-RoPE,
//! in the batched generation loop and the trainers through M-RoPE rotary tables). [`family`] tells the three
//! multimodal families apart by `config.json` and loads any of them as one type for the stages.
//!
//! Not yet here: Mistral's sliding
//! window past its length (refused), rope types other than default/linear/llama3 (refused), gradient
//! checkpointing and bf16 autocast for GPU training (bf16 weights work on CPU and GPU), PPO checkpoints.
pub mod chat;
pub mod checkpoint;
pub mod clip_vision;
pub mod config;
pub mod demo;
pub mod dpo;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod llava;
pub mod llava_next;
pub mod lora;
pub mod optim;
pub mod ppo;
pub mod qwen2_vl;
pub mod sft;
pub mod weights;

use std::str::FromStr;
use tch::{Device, Kind};

/// Everything that can go wrong in `mllm`; messages say what was expected, what was found and where.
#[derive(Debug, thiserror::Error)]
pub enum MllmError {
    #[error("config {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("unsupported architecture {found:?} in {path}; supported: {supported}")]
    UnsupportedArchitecture { found: String, path: String, supported: &'static str },
    #[error("weights {path}: {msg}")]
    Weights { path: String, msg: String },
    #[error("weights in {dir}: {} missing key(s) [{}]{}{}", missing.len(), missing.join(", "),
        if unexpected.is_empty() { "" } else { "; unexpected key(s): " }, unexpected.join(", "))]
    KeyMismatch { dir: String, missing: Vec<String>, unexpected: Vec<String> },
    #[error("weight {key} in {file}: expected shape {expected:?}, found {found:?}")]
    Shape { key: String, file: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("gguf {path}: {msg}")]
    Gguf { path: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("device: {0}")]
    Device(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("non-finite loss ({loss}) at optimizer step {step}; training stopped, last good checkpoint: {last_good}")]
    NonFiniteLoss { step: usize, loss: f64, last_good: String },
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    #[error("io error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, MllmError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> MllmError + '_ {
    move |source| MllmError::Io { path: path.display().to_string(), source }
}

/// `--device auto|cpu|cuda|cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch sees one, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = MllmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| MllmError::Device(format!("expected auto, cpu, cuda or cuda:N, found {s:?}"))),
        }
    }
}

impl DeviceChoice {
    /// Resolves to a tch device; asking for CUDA where libtorch sees none is an error, never a silent CPU run.
    pub fn resolve(self) -> Result<Device> {
        let n = tch::Cuda::device_count() as usize;
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(if n > 0 { Device::Cuda(0) } else { Device::Cpu }),
            Self::Cuda(i) if i < n => Ok(Device::Cuda(i)),
            Self::Cuda(i) => Err(MllmError::Device(format!(
                "CUDA device {i} was requested but libtorch sees {n} CUDA device(s) \
                 (CPU-only libtorch, no driver, or CUDA_VISIBLE_DEVICES); use --device cpu or auto"
            ))),
        }
    }
}

/// Floating-point type of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    Bf16,
    F16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::F16 => Kind::Half,
        }
    }
}

impl FromStr for DType {
    type Err = MllmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" => Ok(Self::F16),
            _ => Err(MllmError::Input(format!("expected dtype f32, bf16 or f16, found {s:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choice_parses_and_cuda_fails_clearly_without_gpu() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("cuda:1".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(1));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        if tch::Cuda::device_count() == 0 {
            let e = DeviceChoice::Cuda(0).resolve().unwrap_err().to_string();
            assert!(e.contains("CUDA device 0 was requested"), "{e}");
            assert_eq!(DeviceChoice::Auto.resolve().unwrap(), Device::Cpu);
        }
    }
}
