//! The paper's evaluation metrics (§4.3, App. D): ECE (binned, and SaySelf's unbinned variant), MECE
//! (eq. 15–17), accuracy per dataset, WikiWhy's reasoning-chain F1, AUROC, and the perception /
//! reasoning split of Figure 4. Plain numbers in, plain numbers out; never NaN.
pub mod accuracy;
pub mod agreement;
pub mod auroc;
pub mod bootstrap;
pub mod by_level;
pub mod calibration;
pub mod chain;
pub mod probe;

use thiserror::Error;

pub use accuracy::{AccuracyParams, AnswerNormalization, CulturalMatch};
pub use auroc::auroc;
pub use by_level::{assign_levels, chain_f1_by_level, level_subset, mece_by_level, ChainLevel};
pub use calibration::{answer_confidence, ece, ece_unbinned, mece, step_brier, AnswerConfidence, EceParams};
pub use chain::{chain_f1, ChainF1, ChainF1Params, ChainItem};

/// The one error type of the metrics module.
#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("{what}[{index}] must be finite, found {value}")]
    NonFinite { what: &'static str, index: String, value: f64 },
    #[error("{what}[{index}] = {value} is outside {expected}")]
    OutOfRange { what: &'static str, index: String, value: f64, expected: &'static str },
    #[error("{what} is empty (expected at least one {unit})")]
    Empty { what: String, unit: &'static str },
    #[error("{what}: expected length {expected}, found {found}")]
    Shape { what: String, expected: usize, found: usize },
    #[error("AUROC is undefined: all {n} labels are {label} (need both classes)")]
    SingleClass { n: usize, label: bool },
    #[error("{0}")]
    InvalidParams(String),
}

pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

pub(crate) fn finite(what: &'static str, index: impl std::fmt::Display, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(MetricsError::NonFinite { what, index: index.to_string(), value })
    }
}

pub(crate) fn unit(what: &'static str, index: impl std::fmt::Display, value: f64) -> Result<f64> {
    finite(what, &index, value)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(MetricsError::OutOfRange { what, index: index.to_string(), value, expected: "[0, 1]" })
    }
}

pub(crate) fn same_len(what: &str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(MetricsError::Shape { what: what.to_string(), expected, found })
    }
}

/// Every params struct of this module, as one stage TOML section can hold them (each part defaults).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsParams {
    pub ece: EceParams,
    pub chain_f1: ChainF1Params,
    pub accuracy: AccuracyParams,
    pub answer_confidence: AnswerConfidence,
}
