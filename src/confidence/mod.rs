//! The paper's confidence method (§3.1, §3.2): per-sentence uncertainty signals, their fusion into
//! five confidence levels, the statement pools with their two-way mapping, a parser for generated
//! responses, and the three rewards.
//!
//! Encoders (MiniLM, the cross-encoder, CLIP) enter only through the traits below, so this module
//! is plain numerics over plain values and can be tested with deterministic doubles.
//!
//! Conventions shared by every file here:
//! - A *sentence* is one step z_t of a response `[z_1, c_1, …, z_T, c_T]`; its tokens are the model's
//!   tokens that decode to the sentence text, statement tokens excluded (see [`uncertainty`]).
//! - Uncertainty grows towards 1, confidence grows towards 1; a *level* is 1 (uncertain) ..= 5 (fully
//!   confident), and its value on [0, 1] is `(level − 1) / 4` unless a params struct says otherwise.
//! - No function returns NaN: bad input is a [`ConfidenceError`] naming the item and sentence.
//!
//! How the stages use it:
//! - generate/score: [`parser::sentence_spans`] on the raw response → [`spans::response_sentences`] →
//!   per-sentence [`uncertainty::SentenceTokens`] → [`uncertainty::likelihood_signals`], [`uncertainty::token_sar_batched`], [`uncertainty::clip_scores`].
//! - bin: [`levels::LevelModel::fit`] on the training set's signal rows, [`levels::LevelModel::apply`] on
//!   any set (the fitted model is serializable, so it travels as an artifact).
//! - map (warm-up data): [`parser::interleave`] + [`parser::render`].
//! - rollout/ppo: [`parser::Parser::parse`] → [`statements::PoolIndex::map`] (EV) and
//!   [`rewards::sentence_correctness`] (I) → [`rewards::response_reward`].
//! - eval: the same parse + map, then `crate::metrics`.
pub mod consistency;
pub mod csr;
pub mod levels;
pub mod parser;
pub mod rewards;
pub mod similarity;
pub mod spans;
pub mod statements;
pub mod uncertainty;

use thiserror::Error;

/// A boxed error from an encoder implementation (whatever its own error type is).
pub type EncoderError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Sentence embeddings (all-MiniLM-L6-v2 in the paper's backward map). One vector per text, all the
/// same length; they need not be normalized (callers normalize).
pub trait SentenceEmbedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError>;
}

/// Cross-encoder-style similarity of text pairs in one batched call (TokenSAR's g, the chain matcher).
/// Returns one score per pair, in the order given; the implementation batches internally.
pub trait PairSimilarity {
    fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError>;
}

/// Image–text cosine similarity (CLIP). `Image` is whatever the implementation identifies an image by
/// (a preprocessed tensor, a path, a cached embedding); the result is one raw cosine per text.
pub trait ImageTextScorer {
    type Image: ?Sized;
    fn cosine(&self, image: &Self::Image, texts: &[&str]) -> Result<Vec<f32>, EncoderError>;
}

impl<T: SentenceEmbedder + ?Sized> SentenceEmbedder for &T {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError> {
        (**self).embed(texts)
    }
}

impl<T: PairSimilarity + ?Sized> PairSimilarity for &T {
    fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
        (**self).similarity(pairs)
    }
}

/// Where in the input a problem sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// The input as a whole (e.g. an empty dataset).
    Dataset,
    /// Row r of a flattened per-sentence table (signals, U_Final), in the order handed in.
    Row(usize),
    /// Item (response) i.
    Item(usize),
    /// Sentence t of item i.
    Sentence { item: usize, sentence: usize },
}

impl Location {
    pub fn item(item: usize) -> Self {
        Location::Item(item)
    }
    pub fn sentence(item: usize, sentence: usize) -> Self {
        Location::Sentence { item, sentence }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dataset => write!(f, "dataset"),
            Location::Row(r) => write!(f, "row {r}"),
            Location::Item(i) => write!(f, "item {i}"),
            Location::Sentence { item, sentence } => write!(f, "item {item}, sentence {sentence}"),
        }
    }
}

/// The one error type of the confidence module.
#[derive(Debug, Error)]
pub enum ConfidenceError {
    #[error("{at}: {field} must be finite, found {value}")]
    NonFinite { at: Location, field: &'static str, value: f64 },
    #[error("{at}: {what} is empty (expected at least one {unit})")]
    Empty { at: Location, what: &'static str, unit: &'static str },
    #[error("{at}: {field} = {value} is outside the expected range {expected}")]
    OutOfRange { at: Location, field: &'static str, value: f64, expected: &'static str },
    #[error("{what}: expected {expected}, found {found}")]
    Shape { what: String, expected: usize, found: usize },
    #[error("U_Final has standard deviation 0 over {n} sentences (all equal to {value}): the μ/σ intervals are undefined; use uniform intervals or a larger dataset")]
    ZeroSpread { n: usize, value: f64 },
    #[error("{at}: the sentence at bytes {}..{} cannot be located in the response's tokens: {why}", span.0, span.1)]
    Span { at: Location, span: (usize, usize), why: String },
    #[error("{0}")]
    InvalidParams(String),
    #[error("statement pool {source_name}: {message}")]
    Pool { source_name: String, message: String },
    #[error("statement {index} ({text:?}) maps to no level: {reason}")]
    NoLevel { index: usize, text: String, reason: String },
    #[error("encoder call failed while {during}: {source}")]
    Encoder {
        during: &'static str,
        #[source]
        source: EncoderError,
    },
}

pub type Result<T, E = ConfidenceError> = std::result::Result<T, E>;

/// Value on [0, 1] of a level 1..=5: `(level − 1) / 4` (level 5 = 1.0, fully confident). Levels
/// outside 1..=5 cannot come out of this module; they are clamped rather than extrapolated.
pub fn level_value(level: u8) -> f64 {
    (f64::from(level.clamp(1, 5)) - 1.0) / 4.0
}

pub(crate) fn check_finite(at: Location, field: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ConfidenceError::NonFinite { at, field, value })
    }
}

pub(crate) fn check_unit(at: Location, field: &'static str, value: f64) -> Result<f64> {
    check_finite(at, field, value)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfidenceError::OutOfRange { at, field, value, expected: "[0, 1]" })
    }
}

/// Every params struct of this module, as one stage TOML section can hold them (each part defaults).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfidenceParams {
    pub uncertainty: uncertainty::UncertaintyParams,
    pub clip: uncertainty::ClipParams,
    pub fusion: levels::FusionParams,
    pub backward: statements::BackwardParams,
    pub parser: parser::ParserParams,
    pub rewards: rewards::RewardParams,
}
