//! A cross-encoder judge: RoBERTa sequence classification on sentence pairs with a sigmoid over the single
//! logit, as sentence-transformers' `CrossEncoder.predict` (the paper uses cross-encoder/stsb-roberta-large
//! to check generated sentences against the reference chain and for TokenSAR's relevance weights).
//! Where no cross-encoder is configured, MiniLM cosine stands in; every result says which judge ran.
use std::path::{Path, PathBuf};

use ort::value::TensorElementType;
use serde::{Deserialize, Serialize};

use super::batching::{self, BatchPolicy};
use super::minilm::SentenceEncoder;
use super::runtime::{i64_input, OnnxModel, Port, SessionOptions};
use super::text::TextTokenizer;
use super::{check_finite, EncoderError, Result};

/// Choices for the cross-encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CrossEncoderParams {
    /// Token limit for a pair (special tokens included); `None` = `max_length` of
    /// `cross_encoder_config.json`, else 512 (RoBERTa's positions).
    pub max_length: Option<usize>,
    pub batch: BatchPolicy,
}

impl Default for CrossEncoderParams {
    fn default() -> Self {
        Self { max_length: None, batch: BatchPolicy::default() }
    }
}

/// RoBERTa (or BERT) sequence classification with one logit, over ONNX Runtime.
pub struct CrossEncoder {
    model: OnnxModel,
    tokenizer: TextTokenizer,
    params: CrossEncoderParams,
}

/// Scores for pairs, with what produced them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairScores {
    pub scores: Vec<f32>,
    pub judge: Judge,
    /// Pair indices cut to the model's length.
    pub truncated: Vec<usize>,
}

/// Which model judged a set of pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Judge {
    /// sigmoid(logit) of a cross-encoder, in [0, 1].
    CrossEncoder { model: PathBuf },
    /// Cosine of sentence embeddings, in [-1, 1] (the stand-in when no cross-encoder is configured).
    SentenceCosine { model: PathBuf },
}

impl CrossEncoder {
    /// Loads `dir/model.onnx` and `dir/tokenizer.json` (and `cross_encoder_config.json` when present).
    pub fn load(dir: &Path, params: CrossEncoderParams, options: &SessionOptions) -> Result<Self> {
        let max_len = match params.max_length {
            Some(n) => n,
            None => read_max_length(&dir.join("cross_encoder_config.json"))?.unwrap_or(512),
        };
        let tok_path = dir.join("tokenizer.json");
        // RoBERTa pads with <pad>, BERT with [PAD]
        let tokenizer = TextTokenizer::load(&tok_path, max_len, "<pad>").or_else(|_| TextTokenizer::load(&tok_path, max_len, "[PAD]"))?;
        let model = OnnxModel::load(&dir.join("model.onnx"), options)?;
        model.expect_signature(
            "cross-encoder (sequence classification)",
            &[
                Port { name: "input_ids", elem: TensorElementType::Int64, rank: 2, required: true },
                Port { name: "attention_mask", elem: TensorElementType::Int64, rank: 2, required: true },
                Port { name: "token_type_ids", elem: TensorElementType::Int64, rank: 2, required: false },
            ],
            &[Port { name: "logits", elem: TensorElementType::Float32, rank: 2, required: true }],
        )?;
        Ok(Self { model, tokenizer, params })
    }

    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// sigmoid(logit) for each (a, b) pair; element `i` belongs to `pairs[i]`.
    pub fn predict(&self, pairs: &[(&str, &str)]) -> Result<PairScores> {
        let tokens = self.tokenizer.encode_pairs(pairs)?;
        let lengths = tokens.lengths();
        let with_types = self.model.has_input("token_type_ids");
        let scores = batching::run_in_batches(&lengths, &self.params.batch, |batch| {
            let padded = tokens.pad_batch(batch, self.tokenizer.pad_id());
            let shape = [padded.rows, padded.len];
            let ort_err = self.model.ort_error("building inputs");
            let mut inputs = vec![
                ("input_ids", i64_input(shape, padded.input_ids).map_err(ort_err)?),
                ("attention_mask", i64_input(shape, padded.attention_mask).map_err(ort_err)?),
            ];
            if with_types {
                inputs.push(("token_type_ids", i64_input(shape, padded.token_type_ids).map_err(ort_err)?));
            }
            let (shape, logits) = self.model.run(inputs, &["logits"])?.remove(0);
            if shape != [padded.rows, 1] {
                return Err(EncoderError::ModelSignature {
                    path: self.model.path().to_path_buf(),
                    encoder: "cross-encoder (sequence classification)",
                    detail: format!("logits have shape {shape:?}, expected [{}, 1] (one label)", padded.rows),
                });
            }
            check_finite(&logits, self.model.path(), "logits")?;
            Ok(logits.iter().map(|&z| sigmoid(z)).collect())
        })?;
        Ok(PairScores { scores, judge: Judge::CrossEncoder { model: self.model.path().to_path_buf() }, truncated: tokens.truncated })
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// The judge of sentence pairs: a cross-encoder when configured, else sentence-embedding cosine.
pub enum PairJudge {
    CrossEncoder(CrossEncoder),
    SentenceCosine(SentenceEncoder),
}

impl PairJudge {
    pub fn score(&self, pairs: &[(&str, &str)]) -> Result<PairScores> {
        match self {
            Self::CrossEncoder(ce) => ce.predict(pairs),
            Self::SentenceCosine(enc) => {
                let texts: Vec<&str> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
                let emb = enc.encode(&texts)?;
                let scores = (0..pairs.len()).map(|i| super::cosine(emb.embeddings.row(2 * i), emb.embeddings.row(2 * i + 1))).collect();
                let mut truncated: Vec<usize> = emb.truncated.iter().map(|t| t / 2).collect();
                truncated.dedup();
                Ok(PairScores { scores, judge: Judge::SentenceCosine { model: enc.model().path().to_path_buf() }, truncated })
            }
        }
    }
}

fn read_max_length(path: &Path) -> Result<Option<usize>> {
    if !path.is_file() {
        return Ok(None);
    }
    let err = |reason: String| EncoderError::Config { path: path.to_path_buf(), reason };
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?).map_err(|e| err(e.to_string()))?;
    match v.get("max_length") {
        None => Ok(None),
        Some(n) => n.as_u64().map(|n| Some(n as usize)).ok_or_else(|| err(format!("max_length: expected an integer, found {n}"))),
    }
}
