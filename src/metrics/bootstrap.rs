//! Percentile bootstrap intervals of a metric over ITEMS, and the paired bootstrap interval of a
//! difference between two variants evaluated on the same items.
//!
//! Why items and not sentences: the sentences of one chain are correlated (one image, one question, one
//! policy's train of thought), so a resample draws whole items and carries all of an item's sentences.
//! The metric is a function of the list of drawn item indices (with repeats), so it sees each drawn
//! item as often as it was drawn. The paired interval draws ONE index list per resample and evaluates
//! both variants on it, so the item-to-item variance common to both cancels in the difference.
//!
//! Percentiles are numpy's default (`np.percentile(..., method="linear")`): for sorted values v_0..v_{m-1},
//! the q-quantile is v_⌊h⌋ + (h − ⌊h⌋)(v_⌊h⌋+1 − v_⌊h⌋) with h = q(m − 1).
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{MetricsError, Result};

/// Bootstrap params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapParams {
    /// Number of resamples. We chose 1000 (Efron & Tibshirani's usual count for percentile intervals).
    pub resamples: usize,
    /// Seed of the index draws (ChaCha8); the same seed gives the same intervals.
    pub seed: u64,
    /// Coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
    pub level: f64,
}

impl Default for BootstrapParams {
    fn default() -> Self {
        Self { resamples: 1000, seed: 0, level: 0.95 }
    }
}

/// A percentile interval; `defined` of `resamples` resamples gave a value (e.g. AUROC is undefined on a
/// resample with one class only, and such resamples are left out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
    pub defined: usize,
    pub resamples: usize,
}

/// `resamples` lists of `n_items` indices drawn uniformly with replacement from 0..n_items, from a
/// ChaCha8 stream seeded with `seed` (list r is the r-th block of n_items draws).
pub fn resample_indices(n_items: usize, resamples: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if n_items == 0 {
        return Err(MetricsError::Empty { what: "bootstrap input".into(), unit: "item" });
    }
    if resamples == 0 {
        return Err(MetricsError::InvalidParams("bootstrap.resamples must be ≥ 1, found 0".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok((0..resamples).map(|_| (0..n_items).map(|_| rng.random_range(0..n_items)).collect()).collect())
}

/// numpy's default (linear) percentile of `sorted` (ascending, non-empty) at q ∈ [0, 1].
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let h = q * (sorted.len() - 1) as f64;
    let k = h.floor() as usize;
    if k + 1 >= sorted.len() {
        return sorted[sorted.len() - 1];
    }
    sorted[k] + (h - k as f64) * (sorted[k + 1] - sorted[k])
}

fn check_level(level: f64) -> Result<()> {
    if level.is_finite() && level > 0.0 && level < 1.0 {
        Ok(())
    } else {
        Err(MetricsError::InvalidParams(format!("bootstrap.level must be in (0, 1), found {level}")))
    }
}

/// The percentile interval of `metric` over the given resamples (each a list of item indices). `metric`
/// returns None where it is undefined on a resample; None overall when fewer than half the resamples give
/// a value (the interval would describe a selected minority). Resamples run in parallel; the result does
/// not depend on the thread count (values are sorted before the percentiles are read).
pub fn interval<F>(indices: &[Vec<usize>], level: f64, metric: F) -> Result<Option<Interval>>
where
    F: Fn(&[usize]) -> Option<f64> + Sync,
{
    check_level(level)?;
    if indices.is_empty() {
        return Err(MetricsError::InvalidParams("bootstrap: no resamples".into()));
    }
    let mut values: Vec<f64> = indices.par_iter().filter_map(|ix| metric(ix)).collect();
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(MetricsError::NonFinite { what: "bootstrap metric value", index: "resample".into(), value: *v });
    }
    if values.len() * 2 < indices.len() {
        return Ok(None);
    }
    values.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    Ok(Some(Interval {
        lo: percentile(&values, alpha),
        hi: percentile(&values, 1.0 - alpha),
        defined: values.len(),
        resamples: indices.len(),
    }))
}

/// The paired interval of `a − b`: both metrics are evaluated on the SAME drawn item list of each
/// resample (the items must be indexed alike for both variants).
pub fn paired_interval<A, B>(indices: &[Vec<usize>], level: f64, a: A, b: B) -> Result<Option<Interval>>
where
    A: Fn(&[usize]) -> Option<f64> + Sync,
    B: Fn(&[usize]) -> Option<f64> + Sync,
{
    interval(indices, level, |ix| Some(a(ix)? - b(ix)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_numpys_linear() {
        // np.percentile([1, 2, 4, 8], [2.5, 50, 97.5]) = [1.075, 3.0, 7.7]
        let v = [1.0, 2.0, 4.0, 8.0];
        assert!((percentile(&v, 0.025) - 1.075).abs() < 1e-12);
        assert!((percentile(&v, 0.5) - 3.0).abs() < 1e-12);
        assert!((percentile(&v, 0.975) - 7.7).abs() < 1e-12);
        assert_eq!(percentile(&[5.0], 0.3), 5.0);
    }

    #[test]
    fn indices_are_seeded_and_in_range() {
        let a = resample_indices(7, 20, 3).unwrap();
        assert_eq!(a, resample_indices(7, 20, 3).unwrap());
        assert_ne!(a, resample_indices(7, 20, 4).unwrap());
        assert!(a.iter().all(|r| r.len() == 7 && r.iter().all(|&i| i < 7)));
        assert!(resample_indices(0, 5, 0).is_err() && resample_indices(3, 0, 0).is_err());
    }

    #[test]
    fn hand_computed_interval_of_a_mean_and_a_paired_difference() {
        // Items 0..3 with values x = [0, 1, 3], y = [0, 0, 1]; three explicit resamples.
        static X: [f64; 3] = [0.0, 1.0, 3.0];
        static Y: [f64; 3] = [0.0, 0.0, 1.0];
        let mean = |v: &'static [f64; 3]| move |ix: &[usize]| Some(ix.iter().map(|&i| v[i]).sum::<f64>() / ix.len() as f64);
        let ix = vec![vec![0, 0, 0], vec![0, 1, 2], vec![2, 2, 1]];
        // Means of x: 0, 4/3, 7/3; 50 % interval = 25th and 75th percentiles: 2/3 and 11/6.
        let i = interval(&ix, 0.5, mean(&X)).unwrap().unwrap();
        assert!((i.lo - 2.0 / 3.0).abs() < 1e-12 && (i.hi - 11.0 / 6.0).abs() < 1e-12, "{i:?}");
        // x − y per resample: 0, 1, 5/3; 25th/75th: 1/2 and 4/3.
        let d = paired_interval(&ix, 0.5, mean(&X), mean(&Y)).unwrap().unwrap();
        assert!((d.lo - 0.5).abs() < 1e-12 && (d.hi - 4.0 / 3.0).abs() < 1e-12, "{d:?}");
        assert_eq!((d.defined, d.resamples), (3, 3));
        // Undefined on most resamples: no interval.
        assert!(interval(&ix, 0.5, |r: &[usize]| (r[0] == 2).then_some(1.0)).unwrap().is_none());
        assert!(interval(&ix, 1.5, mean(&X)).is_err());
    }
}
