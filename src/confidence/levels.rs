//! From four raw signals to five confidence levels (§3.1.1, eq. 7): dataset-level min-max
//! normalization (fitted on one dataset, applied to any other), signal direction, weighted or max
//! fusion into U_Final, and the μ/σ (or uniform) intervals that cut U_Final into levels 5..1.
use serde::{Deserialize, Serialize};

use super::{check_finite, ConfidenceError, Location, Result};

/// The four signals, in the paper's order (w_0..w_3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Lnlp,
    Mte,
    TokenSar,
    ClipScore,
}

impl Signal {
    pub const ALL: [Signal; 4] = [Signal::Lnlp, Signal::Mte, Signal::TokenSar, Signal::ClipScore];
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn name(self) -> &'static str {
        ["U_LNLP", "U_MTE", "U_TokenSAR", "U_CLIPScore"][self.index()]
    }
}

/// The raw (or normalized) signal values of one sentence, indexed by [`Signal::index`].
pub type SignalScores = [f64; 4];

/// Whether each signal takes part in the fusion (the "w/o U_x" ablations of Table 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnabledSignals {
    pub lnlp: bool,
    pub mte: bool,
    pub token_sar: bool,
    pub clip_score: bool,
}

impl Default for EnabledSignals {
    fn default() -> Self {
        EnabledSignals { lnlp: true, mte: true, token_sar: true, clip_score: true }
    }
}

impl EnabledSignals {
    pub fn as_array(&self) -> [bool; 4] {
        [self.lnlp, self.mte, self.token_sar, self.clip_score]
    }
}

/// How the normalized signals are pooled into U_Final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Eq. 7: Σ w_i U_i.
    Weighted,
    /// Table 1's "w U_Max": the largest enabled (direction-aligned) uncertainty.
    Max,
}

/// How the cut points on U_Final are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intervals {
    /// §3.1.1: [0, μ−σ, μ+σ, μ+2σ, μ+3σ, 1] ↦ levels 5, 4, 3, 2, 1.
    MuSigma,
    /// Table 7's UIC ablation: [0, 0.2, 0.4, 0.6, 0.8, 1] ↦ levels 5..1.
    Uniform,
    /// Equal-count levels: cuts at the 20/40/60/80 % quantiles of the fitted U_Final (linear
    /// interpolation, numpy's default), so each level holds a fifth of the fitted sentences. Not the
    /// paper's: μ/σ puts about two thirds of the sentences in level 4, and R_CS then rewards one statement.
    Quantile,
}

/// How CLIPScore (which grows with certainty) enters a sum of uncertainties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipDirection {
    /// Use 1 − normalized CLIPScore, so every term grows with uncertainty.
    Flip,
    /// Use the normalized CLIPScore as is (eq. 7 read literally).
    AsIs,
}

/// Params of normalization, fusion and levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionParams {
    /// w_0..w_3 for LNLP, MTE, TokenSAR, CLIPScore. Paper (App. B): 0.25 each. We keep 0.25.
    pub weights: [f64; 4],
    /// Paper: weighted (eq. 7); `Max` is the "w U_Max" ablation.
    pub pooling: Pooling,
    /// Paper: μ/σ intervals; `Uniform` is the UIC ablation.
    pub intervals: Intervals,
    /// Which signals take part. Paper: all four; the "w/o" ablations drop one.
    pub enabled: EnabledSignals,
    /// When signals are disabled, rescale the remaining weights to sum to 1 so U_Final stays on [0, 1].
    /// Paper: silent. We chose true.
    pub renormalize_weights: bool,
    /// Paper: "closer to 0 = more certain", yet CLIPScore grows with certainty; silent on the fix.
    /// We chose `Flip` (1 − normalized CLIPScore); `AsIs` is the literal formula.
    pub clip_direction: ClipDirection,
    /// Clamp normalized values to [0, 1] when a normalizer fitted on one dataset meets values outside
    /// its range on another. Paper: normalizes within one dataset. We chose true.
    pub clamp: bool,
    /// σ of U_Final with this many degrees of freedom removed. Paper: "standard deviation". We chose
    /// 0 (population σ, numpy's default).
    pub sigma_ddof: u32,
}

impl Default for FusionParams {
    fn default() -> Self {
        FusionParams {
            weights: [0.25; 4],
            pooling: Pooling::Weighted,
            intervals: Intervals::MuSigma,
            enabled: EnabledSignals::default(),
            renormalize_weights: true,
            clip_direction: ClipDirection::Flip,
            clamp: true,
            sigma_ddof: 0,
        }
    }
}

impl FusionParams {
    fn check(&self) -> Result<()> {
        let enabled = self.enabled.as_array();
        if !enabled.iter().any(|&e| e) {
            return Err(ConfidenceError::InvalidParams("fusion.enabled: at least one signal must be enabled".into()));
        }
        for (i, &w) in self.weights.iter().enumerate() {
            if !w.is_finite() || w < 0.0 {
                return Err(ConfidenceError::InvalidParams(format!(
                    "fusion.weights[{i}] ({}) must be finite and ≥ 0, found {w}",
                    Signal::ALL[i].name()
                )));
            }
        }
        if self.pooling == Pooling::Weighted {
            let total: f64 = self.weights.iter().zip(enabled).filter(|(_, e)| *e).map(|(w, _)| w).sum();
            if total <= 0.0 {
                return Err(ConfidenceError::InvalidParams("fusion.weights: the enabled signals' weights sum to 0".into()));
            }
        }
        Ok(())
    }

    /// The effective weights (0 for disabled signals, rescaled if `renormalize_weights`).
    pub fn effective_weights(&self) -> [f64; 4] {
        let enabled = self.enabled.as_array();
        let mut w = [0.0; 4];
        for i in 0..4 {
            if enabled[i] {
                w[i] = self.weights[i];
            }
        }
        let total: f64 = w.iter().sum();
        if self.renormalize_weights && total > 0.0 {
            w.iter_mut().for_each(|x| *x /= total);
        }
        w
    }
}

/// Per-signal min and max over the dataset it was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinMaxNormalizer {
    pub min: [f64; 4],
    pub max: [f64; 4],
}

impl MinMaxNormalizer {
    /// Fits min and max per signal. Errors on an empty dataset or a non-finite value (naming the row).
    pub fn fit(rows: &[SignalScores]) -> Result<Self> {
        if rows.is_empty() {
            return Err(ConfidenceError::Empty { at: Location::Dataset, what: "dataset of signal scores", unit: "sentence" });
        }
        let mut min = [f64::INFINITY; 4];
        let mut max = [f64::NEG_INFINITY; 4];
        for (r, row) in rows.iter().enumerate() {
            for (i, &v) in row.iter().enumerate() {
                check_finite(Location::Row(r), Signal::ALL[i].name(), v)?;
                min[i] = min[i].min(v);
                max[i] = max[i].max(v);
            }
        }
        Ok(MinMaxNormalizer { min, max })
    }

    /// (u − min) / (max − min) per signal. A signal that was constant over the fitted dataset
    /// (max = min) carries no information and normalizes to 0 everywhere (a documented rule, not NaN).
    pub fn apply(&self, row: usize, scores: &SignalScores, clamp: bool) -> Result<SignalScores> {
        let mut out = [0.0; 4];
        for i in 0..4 {
            let v = check_finite(Location::Row(row), Signal::ALL[i].name(), scores[i])?;
            let span = self.max[i] - self.min[i];
            let x = if span > 0.0 { (v - self.min[i]) / span } else { 0.0 };
            out[i] = if clamp { x.clamp(0.0, 1.0) } else { x };
        }
        Ok(out)
    }
}

/// U_Final of one normalized row: direction-aligned, then pooled.
pub fn fuse(normalized: &SignalScores, params: &FusionParams) -> Result<f64> {
    params.check()?;
    Ok(fuse_unchecked(normalized, params))
}

fn fuse_unchecked(normalized: &SignalScores, params: &FusionParams) -> f64 {
    let mut u = *normalized;
    if params.clip_direction == ClipDirection::Flip {
        u[Signal::ClipScore.index()] = 1.0 - u[Signal::ClipScore.index()];
    }
    let enabled = params.enabled.as_array();
    match params.pooling {
        Pooling::Weighted => params.effective_weights().iter().zip(u).map(|(w, x)| w * x).sum(),
        Pooling::Max => u.iter().zip(enabled).filter(|(_, e)| *e).map(|(x, _)| *x).fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Cut points c_1 < c_2 < c_3 < c_4 on U_Final: level 5 below c_1, 4 on [c_1, c_2), 3 on [c_2, c_3),
/// 2 on [c_3, c_4), 1 from c_4 on. A value on a cut point goes to the less confident side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelCuts {
    pub cuts: [f64; 4],
    /// μ and σ of U_Final on the fitted dataset (also kept for the uniform intervals, for reports).
    pub mean: f64,
    pub std: f64,
}

impl LevelCuts {
    pub fn fit(u_final: &[f64], params: &FusionParams) -> Result<Self> {
        if u_final.is_empty() {
            return Err(ConfidenceError::Empty { at: Location::Dataset, what: "U_Final values", unit: "sentence" });
        }
        for (r, &u) in u_final.iter().enumerate() {
            check_finite(Location::Row(r), "U_Final", u)?;
        }
        let n = u_final.len();
        let mean = u_final.iter().sum::<f64>() / n as f64;
        let ddof = params.sigma_ddof as usize;
        if n <= ddof {
            return Err(ConfidenceError::InvalidParams(format!("fusion.sigma_ddof = {ddof} needs more than {ddof} sentences, found {n}")));
        }
        let var = u_final.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / (n - ddof) as f64;
        let std = var.sqrt();
        let cuts = match params.intervals {
            Intervals::MuSigma => {
                if std <= 0.0 {
                    return Err(ConfidenceError::ZeroSpread { n, value: mean });
                }
                [mean - std, mean + std, mean + 2.0 * std, mean + 3.0 * std]
            }
            Intervals::Uniform => [0.2, 0.4, 0.6, 0.8],
            Intervals::Quantile => {
                if std <= 0.0 {
                    return Err(ConfidenceError::ZeroSpread { n, value: mean });
                }
                let mut sorted = u_final.to_vec();
                sorted.sort_by(f64::total_cmp);
                // numpy's default quantile, the one the bootstrap's percentiles use
                [0.2, 0.4, 0.6, 0.8].map(|q| crate::metrics::bootstrap::percentile(&sorted, q))
            }
        };
        Ok(LevelCuts { cuts, mean, std })
    }

    /// Level 5 (most confident) ..= 1 of a U_Final value; monotone non-increasing in `u`.
    pub fn level(&self, u: f64) -> u8 {
        5 - self.cuts.iter().filter(|&&c| u >= c).count() as u8
    }
}

/// Everything fitted on one dataset that turns raw signals into levels on any dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelModel {
    pub params: FusionParams,
    pub normalizer: MinMaxNormalizer,
    pub cuts: LevelCuts,
}

/// One sentence's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub normalized: SignalScores,
    pub u_final: f64,
    pub level: u8,
}

impl LevelModel {
    /// Fits normalizer and cut points on `rows` (one per sentence of the whole dataset).
    pub fn fit(rows: &[SignalScores], params: &FusionParams) -> Result<Self> {
        params.check()?;
        let normalizer = MinMaxNormalizer::fit(rows)?;
        let u: Vec<f64> = rows
            .iter()
            .enumerate()
            .map(|(r, row)| Ok(fuse_unchecked(&normalizer.apply(r, row, params.clamp)?, params)))
            .collect::<Result<_>>()?;
        let cuts = LevelCuts::fit(&u, params)?;
        Ok(LevelModel { params: params.clone(), normalizer, cuts })
    }

    /// Normalizes, fuses and bins `rows` with what was fitted (the same or another dataset).
    pub fn apply(&self, rows: &[SignalScores]) -> Result<Vec<Scored>> {
        self.params.check()?;
        rows.iter()
            .enumerate()
            .map(|(r, row)| {
                let normalized = self.normalizer.apply(r, row, self.params.clamp)?;
                let u_final = fuse_unchecked(&normalized, &self.params);
                Ok(Scored { normalized, u_final, level: self.cuts.level(u_final) })
            })
            .collect()
    }
}
