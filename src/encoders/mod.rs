//! Encoders over ONNX Runtime: all-MiniLM-L6-v2 sentence embeddings, CLIP image and text towers (with
//! CLIPScore), a RoBERTa cross-encoder, and a throughput benchmark.
//!
//! Every model is an ONNX file the user has on disk (`scripts/export_onnx.py` makes them from Hugging Face
//! folders); all sessions share one ONNX Runtime environment ([`runtime`]). Plain values in, plain values out.
pub mod batching;
pub mod bench;
pub mod clip;
pub mod cross_encoder;
pub mod jpeg;
pub mod llava_next_image;
pub mod minilm;
pub mod qwen2_vl_image;
pub mod runtime;
pub mod text;

use std::path::PathBuf;

/// The one error type of the encoders module. Messages name the file or the item they are about.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("ONNX Runtime could not be loaded from {path}: {reason} (run scripts/setup.sh, or set ORT_DYLIB_PATH to a libonnxruntime.so)")]
    RuntimeLoad { path: String, reason: String },
    #[error("{what} {path} not found{hint}")]
    MissingFile { what: &'static str, path: PathBuf, hint: String },
    #[error("execution provider {ep} could not be registered for {model}: {reason}. ONNX Runtime would otherwise silently run on the CPU; pass allow_cpu_fallback (--allow-cpu-fallback) to accept that")]
    ProviderUnavailable { ep: String, model: PathBuf, reason: String },
    #[error("{path}: not a {encoder} model: {detail}")]
    ModelSignature { path: PathBuf, encoder: &'static str, detail: String },
    #[error("{path}: ONNX Runtime failed while {during}: {reason}")]
    Ort { path: PathBuf, during: &'static str, reason: String },
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("image {item}: {reason}")]
    Image { item: String, reason: String },
    #[error("{item}: {reason}")]
    BadInput { item: String, reason: String },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, EncoderError>;

/// Cosine similarity of two vectors (0 when either has zero norm).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += x as f64 * y as f64;
        na += x as f64 * x as f64;
        nb += y as f64 * y as f64;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

/// Row-major matrix of embeddings: `rows × dim`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Embeddings {
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Embeddings {
    pub fn len(&self) -> usize {
        if self.dim == 0 {
            0
        } else {
            self.data.len() / self.dim
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Rejects NaN/inf in a model's output: a silent NaN vector is worse than an error.
pub(crate) fn check_finite(values: &[f32], path: &std::path::Path, what: &str) -> Result<()> {
    if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
        return Err(EncoderError::Ort {
            path: path.to_path_buf(),
            during: "checking the outputs",
            reason: format!("{what} has a non-finite value ({}) at flat index {pos}", values[pos]),
        });
    }
    Ok(())
}
