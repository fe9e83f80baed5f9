//! AUROC (App. D.2) as sklearn's `roc_auc_score` computes it: the ROC curve with one point per distinct
//! score (tied scores move TPR and FPR together, i.e. a tie counts one half), then the trapezoid rule.
use super::{MetricsError, Result};

/// AUROC of `scores` (higher = more likely positive) against `labels`. ±inf scores are replaced by
/// (max finite + 1) / (min finite − 1), as lm-polygraph does; NaN is an error; a single class is an
/// error (sklearn raises too).
pub fn auroc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    super::same_len("AUROC labels (one per score)", scores.len(), labels.len())?;
    if scores.is_empty() {
        return Err(MetricsError::Empty { what: "AUROC input".into(), unit: "score" });
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(MetricsError::NonFinite { what: "AUROC score", index: i.to_string(), value: f64::NAN });
    }
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return Err(MetricsError::SingleClass { n: labels.len(), label: pos > 0 });
    }
    let finite: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let (hi, lo) = if finite.is_empty() { (1.0, -1.0) } else { (hi + 1.0, lo - 1.0) };
    let clean: Vec<f64> = scores
        .iter()
        .map(|&s| {
            if s == f64::INFINITY {
                hi
            } else if s == f64::NEG_INFINITY {
                lo
            } else {
                s
            }
        })
        .collect();

    let mut order: Vec<usize> = (0..clean.len()).collect();
    order.sort_by(|&a, &b| clean[b].total_cmp(&clean[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut prev_tpr, mut prev_fpr) = (0.0f64, 0.0f64);
    let mut area = 0.0;
    let mut i = 0;
    while i < order.len() {
        let s = clean[order[i]];
        while i < order.len() && clean[order[i]] == s {
            if labels[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let (tpr, fpr) = (tp as f64 / pos as f64, fp as f64 / neg as f64);
        area += (fpr - prev_fpr) * (tpr + prev_tpr) / 2.0;
        (prev_tpr, prev_fpr) = (tpr, fpr);
    }
    Ok(area)
}
