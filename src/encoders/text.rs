//! Tokenization with `tokenizers` (a Hugging Face `tokenizer.json`): truncation to the model's length
//! (counted), special tokens as the tokenizer's post-processor adds them, and padding of a batch into the
//! i64 tensors ONNX encoders take.
use std::path::{Path, PathBuf};

use tokenizers::{EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::{EncoderError, Result};

/// A tokenizer with the truncation length of the model it feeds.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    max_len: usize,
    pad_id: u32,
}

/// Token ids of a set of texts (or pairs), unpadded.
#[derive(Debug, Clone, Default)]
pub struct Tokenized {
    pub ids: Vec<Vec<u32>>,
    pub type_ids: Vec<Vec<u32>>,
    /// Indices of the items that were longer than the model allows and were cut.
    pub truncated: Vec<usize>,
}

/// One padded batch, row-major `[rows, len]`.
pub struct PaddedBatch {
    pub rows: usize,
    pub len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; truncation is set to `max_len` tokens (special tokens included, longest-first for
    /// pairs, cutting the end as Hugging Face does), padding is done here per batch. `pad_token` names the
    /// token used for padding (its id must exist in the vocabulary).
    pub fn load(path: &Path, max_len: usize, pad_token: &str) -> Result<Self> {
        if !path.is_file() {
            return Err(EncoderError::MissingFile { what: "tokenizer", path: path.to_path_buf(), hint: String::new() });
        }
        let err = |reason: String| EncoderError::Tokenizer { path: path.to_path_buf(), reason };
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        let pad_id =
            tokenizer.token_to_id(pad_token).ok_or_else(|| err(format!("padding token {pad_token:?} is not in the vocabulary")))?;
        if max_len < 4 {
            return Err(err(format!("max length must be at least 4 tokens, found {max_len}")));
        }
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| err(e.to_string()))?;
        tokenizer.with_padding(None);
        Ok(Self { tokenizer, path: path.to_path_buf(), max_len, pad_id })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id batches are padded with (masked out by `attention_mask`).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Tokenizes texts (in parallel). An empty or whitespace-only text is an error naming its index.
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Tokenized> {
        check_texts(texts.iter().copied(), "text")?;
        let inputs: Vec<EncodeInput> = texts.iter().map(|&t| EncodeInput::Single(t.into())).collect();
        self.encode(inputs)
    }

    /// Tokenizes sentence pairs (in parallel), as `tokenizer(a, b)` does.
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<Tokenized> {
        check_texts(pairs.iter().map(|p| p.0), "pair first text")?;
        check_texts(pairs.iter().map(|p| p.1), "pair second text")?;
        let inputs: Vec<EncodeInput> = pairs.iter().map(|&(a, b)| EncodeInput::Dual(a.into(), b.into())).collect();
        self.encode(inputs)
    }

    fn encode(&self, inputs: Vec<EncodeInput>) -> Result<Tokenized> {
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| EncoderError::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        let mut out = Tokenized::default();
        for (i, e) in encodings.into_iter().enumerate() {
            if !e.get_overflowing().is_empty() {
                out.truncated.push(i);
            }
            out.ids.push(e.get_ids().to_vec());
            out.type_ids.push(e.get_type_ids().to_vec());
        }
        if !out.truncated.is_empty() {
            tracing::info!(tokenizer = %self.path.display(), truncated = out.truncated.len(), max_len = self.max_len,
                "texts longer than the model's maximum were truncated");
        }
        Ok(out)
    }
}

fn check_texts<'a>(texts: impl Iterator<Item = &'a str>, what: &str) -> Result<()> {
    for (i, t) in texts.enumerate() {
        if t.trim().is_empty() {
            return Err(EncoderError::BadInput { item: format!("{what} #{i}"), reason: "empty text (nothing to encode)".into() });
        }
    }
    Ok(())
}

impl Tokenized {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn lengths(&self) -> Vec<usize> {
        self.ids.iter().map(Vec::len).collect()
    }

    /// Pads the items `batch` (indices) to the longest of them.
    pub fn pad_batch(&self, batch: &[usize], pad_id: u32) -> PaddedBatch {
        let len = batch.iter().map(|&i| self.ids[i].len()).max().unwrap_or(0);
        let rows = batch.len();
        let mut input_ids = vec![pad_id as i64; rows * len];
        let mut attention_mask = vec![0i64; rows * len];
        let mut token_type_ids = vec![0i64; rows * len];
        for (r, &i) in batch.iter().enumerate() {
            for (c, (&id, &tt)) in self.ids[i].iter().zip(&self.type_ids[i]).enumerate() {
                input_ids[r * len + c] = id as i64;
                attention_mask[r * len + c] = 1;
                token_type_ids[r * len + c] = tt as i64;
            }
        }
        PaddedBatch { rows, len, input_ids, attention_mask, token_type_ids }
    }
}
