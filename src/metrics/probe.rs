//! Linear probe: how much of a label a feature vector carries, read off by the simplest classifier that
//! could use it. A ridge-regression classifier (one-hot targets, features standardized on the training
//! rows, a bias, weights in closed form by a Cholesky solve of (XᵀX + λI) W = XᵀY; the bias is not
//! penalized); the predicted class is the largest output. Closed form, so a probe is exact and fast (no
//! learning rate, no epochs to tune) and a reference in numpy gives the same weights
//! (scripts/reference_probe.py).
use super::{finite, MetricsError, Result};
use nalgebra::{DMatrix, DVector};

/// A fitted probe.
#[derive(Debug, Clone)]
pub struct RidgeProbe {
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// (features + 1) × classes; the last row is the bias.
    weights: DMatrix<f64>,
}

impl RidgeProbe {
    /// Fits on `x` (one row per example, all of one length) with labels `y` in `0..classes`.
    /// A feature constant on the training rows is left unscaled (it carries nothing; its weight is 0).
    pub fn fit(x: &[Vec<f32>], y: &[usize], classes: usize, lambda: f64) -> Result<Self> {
        if x.is_empty() {
            return Err(MetricsError::Empty { what: "probe training rows".into(), unit: "row" });
        }
        super::same_len("probe labels", x.len(), y.len())?;
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(MetricsError::InvalidParams(format!("probe ridge λ must be finite and > 0, found {lambda}")));
        }
        let d = x[0].len();
        for (i, row) in x.iter().enumerate() {
            super::same_len(&format!("probe row {i}"), d, row.len())?;
            for (j, v) in row.iter().enumerate() {
                finite("probe feature", format!("{i}, {j}"), *v as f64)?;
            }
        }
        if let Some((i, c)) = y.iter().enumerate().find(|(_, &c)| c >= classes) {
            return Err(MetricsError::OutOfRange { what: "probe label", index: i.to_string(), value: *c as f64, expected: "0..classes" });
        }
        let n = x.len() as f64;
        let mean: Vec<f64> = (0..d).map(|j| x.iter().map(|r| r[j] as f64).sum::<f64>() / n).collect();
        let scale: Vec<f64> = (0..d)
            .map(|j| {
                let var = x.iter().map(|r| (r[j] as f64 - mean[j]).powi(2)).sum::<f64>() / n;
                if var > 0.0 {
                    var.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        let design = DMatrix::from_fn(x.len(), d + 1, |i, j| if j == d { 1.0 } else { (x[i][j] as f64 - mean[j]) / scale[j] });
        let targets = DMatrix::from_fn(x.len(), classes, |i, k| if y[i] == k { 1.0 } else { 0.0 });
        let mut gram = design.transpose() * &design;
        for j in 0..d {
            gram[(j, j)] += lambda;
        }
        // The bias is unpenalized; its column is centred against the standardized features, so the system
        // stays positive definite as long as there is one row.
        let rhs = design.transpose() * targets;
        let chol = gram.cholesky().ok_or_else(|| MetricsError::InvalidParams("probe: XᵀX + λI is not positive definite".into()))?;
        Ok(Self { mean, scale, weights: chol.solve(&rhs) })
    }

    /// The class outputs of one row (before the argmax).
    pub fn scores(&self, row: &[f32]) -> Result<Vec<f64>> {
        let d = self.mean.len();
        super::same_len("probe row", d, row.len())?;
        let mut v = DVector::from_element(d + 1, 1.0);
        for j in 0..d {
            v[j] = (row[j] as f64 - self.mean[j]) / self.scale[j];
        }
        Ok((self.weights.transpose() * v).iter().copied().collect())
    }

    /// The predicted class: the largest output (the lowest class on a tie).
    pub fn predict(&self, row: &[f32]) -> Result<usize> {
        let s = self.scores(row)?;
        Ok(s.iter().enumerate().fold(0, |best, (k, &v)| if v > s[best] { k } else { best }))
    }

    /// Share of `x` predicted as `y`.
    pub fn accuracy(&self, x: &[Vec<f32>], y: &[usize]) -> Result<f64> {
        super::same_len("probe labels", x.len(), y.len())?;
        if x.is_empty() {
            return Err(MetricsError::Empty { what: "probe test rows".into(), unit: "row" });
        }
        let mut right = 0;
        for (row, &c) in x.iter().zip(y) {
            right += (self.predict(row)? == c) as usize;
        }
        Ok(right as f64 / x.len() as f64)
    }
}

/// What a probe must beat: the share of `test` labels equal to the most common `train` label (the
/// lowest class on a tie), the accuracy of a classifier that ignores its features.
pub fn majority_share(train: &[usize], test: &[usize]) -> Result<f64> {
    if train.is_empty() || test.is_empty() {
        return Err(MetricsError::Empty { what: "majority baseline labels".into(), unit: "label" });
    }
    let classes = train.iter().max().map_or(0, |m| m + 1);
    let mut counts = vec![0usize; classes];
    for &c in train {
        counts[c] += 1;
    }
    let top = counts.iter().enumerate().fold(0, |best, (k, &n)| if n > counts[best] { k } else { best });
    Ok(test.iter().filter(|&&c| c == top).count() as f64 / test.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_separable_label_is_read_and_a_constant_feature_is_harmless() {
        // Class = sign of feature 0; feature 1 is constant.
        let x: Vec<Vec<f32>> = vec![vec![-2.0, 5.0], vec![-1.0, 5.0], vec![1.0, 5.0], vec![2.0, 5.0]];
        let y = vec![0, 0, 1, 1];
        let p = RidgeProbe::fit(&x, &y, 2, 1e-3).unwrap();
        assert_eq!(p.accuracy(&x, &y).unwrap(), 1.0);
        // By hand: feature 0 standardizes to z = (−2, −1, 1, 2)/√2.5 (Σz² = 4); the bias column is orthogonal
        // to it, so each class's bias is its share (0.5) and its weight Σ z·t / (Σz² + λ): 3/√2.5 / 4.001
        // for class 1.
        let s = p.scores(&[0.0, 5.0]).unwrap();
        assert!((s[0] - 0.5).abs() < 1e-12 && (s[1] - 0.5).abs() < 1e-12, "{s:?}");
        let s = p.scores(&[2.0, 5.0]).unwrap();
        let w = 3.0 / 2.5f64.sqrt() / (4.0 + 1e-3);
        assert!((s[1] - (0.5 + w * 2.0 / 2.5f64.sqrt())).abs() < 1e-12, "{s:?} vs {w}");
    }

    #[test]
    fn bad_input_is_named() {
        let e = RidgeProbe::fit(&[vec![1.0], vec![f32::NAN]], &[0, 1], 2, 1.0).unwrap_err().to_string();
        assert!(e.contains("probe feature[1, 0]"), "{e}");
        let e = RidgeProbe::fit(&[vec![1.0]], &[2], 2, 1.0).unwrap_err().to_string();
        assert!(e.contains("probe label[0] = 2"), "{e}");
        let e = RidgeProbe::fit(&[vec![1.0], vec![1.0, 2.0]], &[0, 1], 2, 1.0).unwrap_err().to_string();
        assert!(e.contains("probe row 1"), "{e}");
    }

    #[test]
    fn the_majority_baseline_counts_the_most_common_training_label() {
        assert_eq!(majority_share(&[0, 1, 1, 2], &[1, 0, 1, 1]).unwrap(), 0.75);
        // Tie between 0 and 1 in training: the lowest wins.
        assert_eq!(majority_share(&[1, 0], &[0, 1, 1, 1]).unwrap(), 0.25);
    }
}
