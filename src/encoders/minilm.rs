//! Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2 (and any BERT-style
//! bi-encoder with mean pooling): token embeddings from the ONNX graph, mean over the attention mask, L2
//! normalization. The paper (footnote 2) maps generated confidence statements back to scores with it.
use std::path::{Path, PathBuf};

use ort::value::TensorElementType;
use serde::{Deserialize, Serialize};

use super::batching::{self, BatchPolicy};
use super::runtime::{i64_input, OnnxModel, Port, SessionOptions};
use super::text::TextTokenizer;
use super::{check_finite, Embeddings, EncoderError, Result};

/// Where `scripts/setup.sh` puts all-MiniLM-L6-v2 (relative to the crate root).
pub const DEFAULT_MODEL_DIR: &str = ".deps/models/all-MiniLM-L6-v2";

/// The model folder under this checkout (`CARGO_MANIFEST_DIR/.deps/models/all-MiniLM-L6-v2`).
pub fn default_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR)
}

/// Choices for the sentence encoder. The paper only names the model; the rest is sentence-transformers'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SentenceEncoderParams {
    /// ONNX file; relative paths are inside the model folder. Default `onnx/model.onnx` (fp32 export);
    /// `onnx/model_int8.onnx` is the fast path.
    pub onnx_file: PathBuf,
    /// Token limit (special tokens included); `None` = `max_seq_length` of `sentence_bert_config.json`, else 256.
    pub max_seq_length: Option<usize>,
    /// L2-normalize the pooled vector (sentence-transformers' `Normalize` module; on for all-MiniLM-L6-v2).
    pub normalize: bool,
    pub batch: BatchPolicy,
}

impl Default for SentenceEncoderParams {
    fn default() -> Self {
        Self { onnx_file: PathBuf::from("onnx/model.onnx"), max_seq_length: None, normalize: true, batch: BatchPolicy::default() }
    }
}

/// Embeddings plus what happened on the way: which items were truncated and how many tokens ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentenceEmbeddings {
    pub embeddings: Embeddings,
    /// Input indices cut to the model's maximum length.
    pub truncated: Vec<usize>,
    /// Tokens that were not padding (special tokens included).
    pub non_pad_tokens: usize,
    /// Tokens the model computed, padding included.
    pub padded_tokens: usize,
}

/// all-MiniLM-L6-v2 (or another mean-pooled BERT bi-encoder) over ONNX Runtime.
pub struct SentenceEncoder {
    model: OnnxModel,
    tokenizer: TextTokenizer,
    params: SentenceEncoderParams,
    output: &'static str,
}

const ID_INPUTS: [Port; 3] = [
    Port { name: "input_ids", elem: TensorElementType::Int64, rank: 2, required: true },
    Port { name: "attention_mask", elem: TensorElementType::Int64, rank: 2, required: true },
    Port { name: "token_type_ids", elem: TensorElementType::Int64, rank: 2, required: false },
];

impl SentenceEncoder {
    /// Loads `model_dir/tokenizer.json` and the ONNX file of `params`. A missing folder or file says how
    /// to make it.
    pub fn load(model_dir: &Path, params: SentenceEncoderParams, options: &SessionOptions) -> Result<Self> {
        let hint = format!(
            " (run scripts/setup.sh: it fetches all-MiniLM-L6-v2 into {DEFAULT_MODEL_DIR} and exports onnx/model.onnx with scripts/export_onnx.py minilm)"
        );
        if !model_dir.is_dir() {
            return Err(EncoderError::MissingFile { what: "sentence-encoder folder", path: model_dir.to_path_buf(), hint });
        }
        let onnx = model_dir.join(&params.onnx_file);
        if !onnx.is_file() {
            return Err(EncoderError::MissingFile { what: "ONNX model", path: onnx, hint });
        }
        let max_len = match params.max_seq_length {
            Some(n) => n,
            None => read_max_seq_length(&model_dir.join("sentence_bert_config.json"))?.unwrap_or(256),
        };
        let tokenizer = TextTokenizer::load(&model_dir.join("tokenizer.json"), max_len, "[PAD]")?;
        let model = OnnxModel::load(&onnx, options)?;
        let output =
            ["last_hidden_state", "token_embeddings"].into_iter().find(|n| model.output_names().contains(n)).unwrap_or("last_hidden_state");
        model.expect_signature(
            "sentence-encoder (BERT token embeddings)",
            &ID_INPUTS,
            &[Port { name: output, elem: TensorElementType::Float32, rank: 3, required: true }],
        )?;
        Ok(Self { model, tokenizer, params, output })
    }

    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    pub fn params(&self) -> &SentenceEncoderParams {
        &self.params
    }

    pub fn max_seq_length(&self) -> usize {
        self.tokenizer.max_len()
    }

    /// Embeds `texts`; row `i` belongs to `texts[i]`.
    pub fn encode(&self, texts: &[&str]) -> Result<SentenceEmbeddings> {
        let tokens = self.tokenizer.encode_texts(texts)?;
        let lengths = tokens.lengths();
        let plan = batching::plan(&lengths, &self.params.batch)?;
        let (non_pad_tokens, padded_tokens) = batching::token_counts(&lengths, &plan);
        let with_types = self.model.has_input("token_type_ids");
        let rows = batching::run_in_batches(&lengths, &self.params.batch, |batch| {
            let padded = tokens.pad_batch(batch, self.tokenizer.pad_id());
            let shape = [padded.rows, padded.len];
            let ort_err = self.model.ort_error("building inputs");
            let mask = padded.attention_mask.clone();
            let mut inputs = vec![
                ("input_ids", i64_input(shape, padded.input_ids).map_err(ort_err)?),
                ("attention_mask", i64_input(shape, padded.attention_mask).map_err(ort_err)?),
            ];
            if with_types {
                inputs.push(("token_type_ids", i64_input(shape, padded.token_type_ids).map_err(ort_err)?));
            }
            let normalize = self.params.normalize;
            self.model.run_with(inputs, &[self.output], |outs| {
                let (out_shape, hidden) = &outs[0];
                if out_shape.len() != 3 || out_shape[0] != padded.rows || out_shape[1] != padded.len {
                    return Err(EncoderError::ModelSignature {
                        path: self.model.path().to_path_buf(),
                        encoder: "sentence-encoder (BERT token embeddings)",
                        detail: format!("{} has shape {out_shape:?}, expected [{}, {}, hidden]", self.output, padded.rows, padded.len),
                    });
                }
                let pooled = mean_pool(hidden, &mask, padded.rows, padded.len, out_shape[2], normalize);
                // a NaN/inf in any unmasked token reaches its pooled vector
                for row in &pooled {
                    check_finite(row, self.model.path(), self.output)?;
                }
                Ok(pooled)
            })
        })?;
        let dim = rows.first().map_or(0, Vec::len);
        Ok(SentenceEmbeddings {
            embeddings: Embeddings { dim, data: rows.into_iter().flatten().collect() },
            truncated: tokens.truncated,
            non_pad_tokens,
            padded_tokens,
        })
    }
}

/// sentence-transformers' mean pooling (sum over unmasked tokens / max(count, 1e-9)) and, optionally,
/// `F.normalize` (divide by max(norm, 1e-12)).
pub fn mean_pool(hidden: &[f32], mask: &[i64], rows: usize, len: usize, dim: usize, normalize: bool) -> Vec<Vec<f32>> {
    (0..rows)
        .map(|r| {
            let mut acc = vec![0f32; dim];
            let mut count = 0f32;
            for t in 0..len {
                if mask[r * len + t] == 0 {
                    continue;
                }
                count += 1.0;
                let base = (r * len + t) * dim;
                for (a, h) in acc.iter_mut().zip(&hidden[base..base + dim]) {
                    *a += h;
                }
            }
            let denom = count.max(1e-9);
            acc.iter_mut().for_each(|a| *a /= denom);
            if normalize {
                let norm = acc.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                acc.iter_mut().for_each(|a| *a /= norm);
            }
            acc
        })
        .collect()
}

fn read_max_seq_length(path: &Path) -> Result<Option<usize>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| EncoderError::Config { path: path.into(), reason: e.to_string() })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EncoderError::Config { path: path.into(), reason: e.to_string() })?;
    match value.get("max_seq_length") {
        None => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| EncoderError::Config {
            path: path.into(),
            reason: format!("max_seq_length: expected a positive integer, found {v}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_ignores_padding_and_normalizes() {
        // 1 row, 3 tokens (last is padding), dim 2
        let hidden = [1.0, 0.0, 3.0, 4.0, 100.0, 100.0];
        let pooled = mean_pool(&hidden, &[1, 1, 0], 1, 3, 2, false);
        assert_eq!(pooled[0], vec![2.0, 2.0]);
        let normed = mean_pool(&hidden, &[1, 1, 0], 1, 3, 2, true);
        assert!((normed[0][0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
