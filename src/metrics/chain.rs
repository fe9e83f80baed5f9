//! Reasoning-chain F1 (App. D.3), WikiWhy's explanation metric: each predicted sentence is *precise* if
//! some reference sentence is similar enough to it, each reference sentence is *covered* if some
//! predicted sentence is similar enough to it; counts are micro-averaged over the test set.
use serde::{Deserialize, Serialize};

use super::{finite, MetricsError, Result};

/// Chain-F1 params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainF1Params {
    /// Similarity threshold, strict (s > τ). Paper/WikiWhy: 0.64 with cross-encoder/stsb-roberta-large.
    pub threshold: f64,
}

impl Default for ChainF1Params {
    fn default() -> Self {
        ChainF1Params { threshold: 0.64 }
    }
}

/// One item: `similarity[i][j]` between predicted sentence i and reference sentence j.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainItem {
    pub similarity: Vec<Vec<f64>>,
    pub n_reference: usize,
}

/// Micro-averaged counts and scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChainF1 {
    pub precise: usize,
    pub predicted: usize,
    pub covered: usize,
    pub reference: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// (precise, covered) of one item, after checking its shape and values.
pub(crate) fn item_counts(index: usize, item: &ChainItem, threshold: f64) -> Result<(usize, usize)> {
    if item.n_reference == 0 {
        return Err(MetricsError::Empty { what: format!("reference chain of item {index}"), unit: "sentence" });
    }
    let mut covered = vec![false; item.n_reference];
    let mut precise = 0;
    for (i, row) in item.similarity.iter().enumerate() {
        super::same_len(&format!("chain similarity row {i} of item {index}"), item.n_reference, row.len())?;
        let mut hit = false;
        for (j, &s) in row.iter().enumerate() {
            if finite("chain similarity", format!("{index}][{i}][{j}"), s)? > threshold {
                hit = true;
                covered[j] = true;
            }
        }
        precise += usize::from(hit);
    }
    Ok((precise, covered.iter().filter(|&&c| c).count()))
}

/// Chain F1 over a test set. Empty reference chains are errors; an empty prediction counts 0 precise of
/// 0 predicted. P = 0 when nothing was predicted, F1 = 0 when P + R = 0.
pub fn chain_f1(items: &[ChainItem], params: &ChainF1Params) -> Result<ChainF1> {
    if !params.threshold.is_finite() {
        return Err(MetricsError::InvalidParams(format!("chain_f1.threshold must be finite, found {}", params.threshold)));
    }
    if items.is_empty() {
        return Err(MetricsError::Empty { what: "chain F1 input".into(), unit: "item" });
    }
    let mut acc = ChainF1 { precise: 0, predicted: 0, covered: 0, reference: 0, precision: 0.0, recall: 0.0, f1: 0.0 };
    for (index, item) in items.iter().enumerate() {
        let (p, c) = item_counts(index, item, params.threshold)?;
        acc.precise += p;
        acc.covered += c;
        acc.predicted += item.similarity.len();
        acc.reference += item.n_reference;
    }
    Ok(finish(acc))
}

pub(crate) fn finish(mut acc: ChainF1) -> ChainF1 {
    acc.precision = if acc.predicted > 0 { acc.precise as f64 / acc.predicted as f64 } else { 0.0 };
    acc.recall = if acc.reference > 0 { acc.covered as f64 / acc.reference as f64 } else { 0.0 };
    let s = acc.precision + acc.recall;
    acc.f1 = if s > 0.0 { 2.0 * acc.precision * acc.recall / s } else { 0.0 };
    acc
}
