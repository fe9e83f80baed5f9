//! The Conf-CSR baseline's self-reward (CSR, Zhou et al. 2024, as the paper's §4.4 uses it): each
//! sentence's language likelihood and its CLIPScore are rank-normalized among the sentences competing
//! with it, combined as `R(s) = (1 − α)·rank_T(s) + α·rank_I(s)` (α = CSR's `clip_alpha`, 0.9), a path
//! is scored by its sentences' mean R, and the best and worst paths of a question become a preference
//! pair. Conf-CSR also turns each sentence's R into a confidence (min-max over the dataset) and a level.
//!
//! CSR's conventions, kept here: a rank is `position / n` in the candidates sorted best first (the best
//! of n gets 1/n, the worst 1), so a LOWER R is a BETTER sentence; ties keep their input order (Python's
//! stable sort); the chosen path is the first with the lowest length-normalized score, the rejected the
//! last with the highest (`construct.py`: `sorted(results, key=score/len)[0]` and `[-1]`).
//!
//! Our choices (CSR builds a sentence-level beam-search tree; we reuse the pipeline's sampled chains):
//! - the candidates a sentence is ranked among are all sentences of its question's sampled chains (CSR:
//!   the sibling sentences continuing the same prefix, which independent samples do not have);
//! - the likelihood is the sentence's length-normalized likelihood, U_LNLP (the `score` stage's
//!   perplexity, lower = more likely; CSR: the beam's score), the image score U_CLIPScore (CSR: CLIP
//!   ViT-L/14-336's score; here the pipeline's CLIP);
//! - a path's score is the mean of its sentences' R (CSR divides the cumulative R by the path length
//!   counting its root node, n + 1).
use super::{check_finite, ConfidenceError, Location, Result};

/// CSR's `clip_alpha` (`construct.py`'s default).
pub const CLIP_ALPHA: f64 = 0.9;

/// CSR's rank normalization (`calculate_ranks`): each value's 1-based position among `values` sorted
/// best first, divided by n (best 1/n, worst 1). Ties keep their input order.
pub fn rank_normalize(values: &[f64], higher_is_better: bool) -> Result<Vec<f64>> {
    for (i, v) in values.iter().enumerate() {
        check_finite(Location::Row(i), "value to rank", *v)?;
    }
    let mut order: Vec<usize> = (0..values.len()).collect();
    // A stable sort: equal values keep their input order.
    order.sort_by(|&a, &b| {
        let o = values[a].total_cmp(&values[b]);
        if higher_is_better {
            o.reverse()
        } else {
            o
        }
    });
    let n = values.len() as f64;
    let mut ranks = vec![0.0; values.len()];
    for (pos, &i) in order.iter().enumerate() {
        ranks[i] = (pos + 1) as f64 / n;
    }
    Ok(ranks)
}

/// R(s) = (1 − α)·rank_T + α·rank_I of every candidate sentence, from their U_LNLP (perplexity: lower
/// ranks first) and U_CLIPScore (higher ranks first). Lower is better.
pub fn sentence_rewards(lnlp: &[f64], clipscore: &[f64], alpha: f64) -> Result<Vec<f64>> {
    if lnlp.len() != clipscore.len() {
        return Err(ConfidenceError::Shape { what: "CLIPScores (one per sentence)".into(), expected: lnlp.len(), found: clipscore.len() });
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(ConfidenceError::OutOfRange { at: Location::Dataset, field: "clip_alpha", value: alpha, expected: "[0, 1]" });
    }
    let rank_t = rank_normalize(lnlp, false)?;
    let rank_i = rank_normalize(clipscore, true)?;
    Ok(rank_t.iter().zip(&rank_i).map(|(t, i)| (1.0 - alpha) * t + alpha * i).collect())
}

/// A path's score: the mean R of its sentences (lower is better).
pub fn path_score(rewards: &[f64]) -> Result<f64> {
    if rewards.is_empty() {
        return Err(ConfidenceError::Empty { at: Location::Dataset, what: "path", unit: "sentence" });
    }
    Ok(rewards.iter().sum::<f64>() / rewards.len() as f64)
}

/// The (chosen, rejected) paths among `scores` (lower is better): the first path with the lowest score
/// and the last with the highest. None when there are fewer than two paths or all score the same
/// (no preference to learn).
pub fn best_worst(scores: &[f64]) -> Result<Option<(usize, usize)>> {
    for (i, s) in scores.iter().enumerate() {
        check_finite(Location::Item(i), "path score", *s)?;
    }
    if scores.len() < 2 {
        return Ok(None);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (best, worst) = (order[0], order[order.len() - 1]);
    Ok((scores[best] < scores[worst]).then_some((best, worst)))
}

/// Conf-CSR's confidences: R min-max normalized over the dataset and flipped (the best R of the dataset
/// is 1, the worst 0); all equal: 0.5 each (no information).
pub fn confidences(rewards: &[f64]) -> Result<Vec<f64>> {
    for (i, r) in rewards.iter().enumerate() {
        check_finite(Location::Row(i), "CSR reward", *r)?;
    }
    let lo = rewards.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok(rewards.iter().map(|r| if hi > lo { (hi - r) / (hi - lo) } else { 0.5 }).collect())
}
