//! How to choose a stand-in judge's threshold: the cut on its scores that agrees best with a reference
//! judge's decisions on the same pairs.
//!
//! The procedure the `judge` param documents for MiniLM cosine: take (generated sentence, reference
//! sentence) pairs (e.g. every pair of the scored training chains against their reference chains), label
//! each with the cross-encoder's decision (score > 0.64, the paper's threshold for
//! cross-encoder/stsb-roberta-large), and set the MiniLM threshold to [`best_threshold`] of the MiniLM
//! cosines against those labels; report the agreement it reaches.
use super::{finite, MetricsError, Result};

/// The threshold t (a midpoint between consecutive distinct scores, or just below/above all of them)
/// for which `score > t` agrees with `labels` on the most pairs; ties go to the smallest t. Returns
/// (t, agreement as a fraction of the pairs).
pub fn best_threshold(scores: &[f64], labels: &[bool]) -> Result<(f64, f64)> {
    if scores.len() != labels.len() {
        return Err(MetricsError::Shape { what: "threshold labels (one per score)".into(), expected: scores.len(), found: labels.len() });
    }
    if scores.is_empty() {
        return Err(MetricsError::Empty { what: "threshold scores".into(), unit: "pair" });
    }
    for (i, &s) in scores.iter().enumerate() {
        finite("score", i, s)?;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Below every score: all pairs judged positive.
    let positives = labels.iter().filter(|&&l| l).count();
    let mut agree = positives;
    let lowest = scores[order[0]];
    let (mut best_t, mut best) = (lowest - 1e-9_f64.max(lowest.abs() * 1e-9), agree);
    let mut i = 0;
    while i < order.len() {
        // Move every pair with this score below the threshold.
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            agree = if labels[order[i]] { agree - 1 } else { agree + 1 };
            i += 1;
        }
        let t = if i < order.len() { (s + scores[order[i]]) / 2.0 } else { s };
        if agree > best {
            best = agree;
            best_t = t;
        }
    }
    Ok((best_t, best as f64 / scores.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_cut_is_found_and_ties_go_low() {
        // Scores 0.1 0.4 0.5 0.9 with labels F T F T: cuts at 0.25 and 0.7 both agree on 3 of 4.
        let (t, a) = best_threshold(&[0.9, 0.1, 0.5, 0.4], &[true, false, false, true]).unwrap();
        assert!((t - 0.25).abs() < 1e-12 && (a - 0.75).abs() < 1e-12, "{t} {a}");
        // Separable: the midpoint between the classes, full agreement.
        let (t, a) = best_threshold(&[0.2, 0.3, 0.8, 0.7], &[false, false, true, true]).unwrap();
        assert!((t - 0.5).abs() < 1e-12 && a == 1.0);
        // All positive: below every score; all negative: the top score itself (score > t is never true).
        assert!(best_threshold(&[0.2, 0.3], &[true, true]).unwrap().0 < 0.2);
        assert_eq!(best_threshold(&[0.2, 0.3], &[false, false]).unwrap(), (0.3, 1.0));
        assert!(best_threshold(&[], &[]).is_err() && best_threshold(&[f64::NAN], &[true]).is_err());
    }
}
