//! Figure 4's split of sentence-level metrics into visual perception (the reference chain's
//! `Image_level`) and cross-modal reasoning (`Reasoning_level`).
//!
//! A generated sentence carries no level of its own. We chose (paper: silent) to give it the level of
//! its most similar reference sentence (the same similarity matrix as chain F1; first on ties).
use serde::{Deserialize, Serialize};

use super::chain::{finish, item_counts, ChainF1, ChainF1Params, ChainItem};
use super::{finite, mece, same_len, MetricsError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainLevel {
    /// `Image_level` of the annotated chains.
    Perception,
    /// `Reasoning_level` of the annotated chains.
    Reasoning,
}

impl ChainLevel {
    /// The name tables use: `perception` or `reasoning`.
    pub fn name(self) -> &'static str {
        match self {
            ChainLevel::Perception => "perception",
            ChainLevel::Reasoning => "reasoning",
        }
    }
}

/// The level of each predicted sentence (row of `similarity`): that of its nearest reference sentence.
pub fn assign_levels(index: usize, similarity: &[Vec<f64>], reference_levels: &[ChainLevel]) -> Result<Vec<ChainLevel>> {
    if reference_levels.is_empty() {
        return Err(MetricsError::Empty { what: format!("reference chain of item {index}"), unit: "sentence" });
    }
    similarity
        .iter()
        .enumerate()
        .map(|(i, row)| {
            same_len(&format!("similarity row {i} of item {index}"), reference_levels.len(), row.len())?;
            let mut best = (0usize, f64::NEG_INFINITY);
            for (j, &s) in row.iter().enumerate() {
                if finite("similarity", format!("{index}][{i}][{j}"), s)? > best.1 {
                    best = (j, s);
                }
            }
            Ok(reference_levels[best.0])
        })
        .collect()
}

/// MECE over the sentences of `level` only; responses with no sentence of that level are left out.
/// `None` when no response has one.
pub fn mece_by_level(sentence_levels: &[Vec<ChainLevel>], responses: &[Vec<(bool, f64)>], level: ChainLevel) -> Result<Option<f64>> {
    let kept = level_subset(sentence_levels, responses, level)?;
    if kept.is_empty() {
        return Ok(None);
    }
    mece(&kept).map(Some)
}

/// The (I(z), Conf(c)) pairs of `level`'s sentences, per response; responses without one are left out.
pub fn level_subset(
    sentence_levels: &[Vec<ChainLevel>],
    responses: &[Vec<(bool, f64)>],
    level: ChainLevel,
) -> Result<Vec<Vec<(bool, f64)>>> {
    same_len("sentence levels (one list per response)", responses.len(), sentence_levels.len())?;
    let mut kept = Vec::new();
    for (a, (levels, sentences)) in sentence_levels.iter().zip(responses).enumerate() {
        same_len(&format!("sentence levels of response {a}"), sentences.len(), levels.len())?;
        let subset: Vec<(bool, f64)> = sentences.iter().zip(levels).filter(|(_, l)| **l == level).map(|(s, _)| *s).collect();
        if !subset.is_empty() {
            kept.push(subset);
        }
    }
    Ok(kept)
}

/// Chain F1 restricted to one level: reference sentences of that level, predicted sentences assigned to
/// it by [`assign_levels`]. Items whose reference chain has no sentence of the level are left out.
pub fn chain_f1_by_level(
    items: &[ChainItem],
    reference_levels: &[Vec<ChainLevel>],
    level: ChainLevel,
    params: &ChainF1Params,
) -> Result<ChainF1> {
    same_len("reference levels (one list per item)", items.len(), reference_levels.len())?;
    let mut acc = ChainF1 { precise: 0, predicted: 0, covered: 0, reference: 0, precision: 0.0, recall: 0.0, f1: 0.0 };
    for (index, (item, levels)) in items.iter().zip(reference_levels).enumerate() {
        same_len(&format!("reference levels of item {index}"), item.n_reference, levels.len())?;
        let cols: Vec<usize> = (0..levels.len()).filter(|&j| levels[j] == level).collect();
        if cols.is_empty() {
            continue;
        }
        let assigned = assign_levels(index, &item.similarity, levels)?;
        let sub = ChainItem {
            similarity: item
                .similarity
                .iter()
                .zip(&assigned)
                .filter(|(_, l)| **l == level)
                .map(|(row, _)| cols.iter().map(|&j| row[j]).collect())
                .collect(),
            n_reference: cols.len(),
        };
        let (p, c) = item_counts(index, &sub, params.threshold)?;
        acc.precise += p;
        acc.covered += c;
        acc.predicted += sub.similarity.len();
        acc.reference += sub.n_reference;
    }
    Ok(finish(acc))
}
