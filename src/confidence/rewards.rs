//! The three RL rewards of §3.2: knowledge accuracy R_KA (eq. 10), expected calibration R_EC (eq. 11),
//! confidence self-calibration R_CS (eq. 12), and their weighted sum R (eq. 13).
use serde::{Deserialize, Serialize};

use super::{check_finite, check_unit, ConfidenceError, Location, Result};

/// What a sentence without a confidence statement contributes to R_EC and R_CS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingStatement {
    /// The term's minimum, −1, as if the statement were maximally wrong (discourages dropping them).
    Penalize,
    /// Left out of the EC/CS means (if every sentence lacks one, both terms are −1).
    Skip,
    /// A [`ConfidenceError::Empty`] naming the sentence.
    Error,
}

/// Reward params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardParams {
    /// α, β, γ of eq. 13. Paper: "α, β, γ are equal", value unstated. We chose 1/3 each, so
    /// R ∈ [−2/3, 1].
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    /// The "w/o R_KA / R_EC / R_CS" ablations switch a term off; the other weights are left as they are
    /// (the paper: the remaining terms "become dominant").
    pub enable_ka: bool,
    pub enable_ec: bool,
    pub enable_cs: bool,
    /// A sentence is correct, I(z_t) = 1, when its best similarity to a reference-chain sentence is
    /// strictly above this. Paper: "matches the knowledge in the reference chain", no threshold. We chose
    /// 0.64 with the stsb cross-encoder, the chain-F1 threshold of App. D.3.
    pub match_threshold: f64,
    /// Paper: silent (every sentence is assumed to carry a statement). We chose `Penalize`.
    pub missing_statement: MissingStatement,
}

impl Default for RewardParams {
    fn default() -> Self {
        RewardParams {
            alpha: 1.0 / 3.0,
            beta: 1.0 / 3.0,
            gamma: 1.0 / 3.0,
            enable_ka: true,
            enable_ec: true,
            enable_cs: true,
            match_threshold: 0.64,
            missing_statement: MissingStatement::Penalize,
        }
    }
}

/// What the rewards need of one generated sentence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SentenceSignals {
    /// I(z_t): matches the reference chain.
    pub correct: bool,
    /// EV(c_t) on [0, 1] from the backward map; None when the sentence has no statement.
    pub expressed: Option<f64>,
    /// IV(z_t) on [0, 1]: the internal confidence (by default the level value of §3.1.1's level).
    pub internal: f64,
}

/// Per-sentence terms (EC/CS are None when the sentence was skipped).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SentenceReward {
    pub ka: f64,
    pub ec: Option<f64>,
    pub cs: Option<f64>,
}

/// One response's rewards; a disabled term is reported but contributes 0 to `total`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseReward {
    pub ka: f64,
    pub ec: f64,
    pub cs: f64,
    pub total: f64,
    pub per_sentence: Vec<SentenceReward>,
}

/// I(z_t) for each generated sentence from its similarity row to the reference chain
/// (`similarity[t][j]`): max_j s_tj > threshold. An empty reference chain is an error.
pub fn sentence_correctness(item: usize, similarity: &[Vec<f64>], n_reference: usize, threshold: f64) -> Result<Vec<bool>> {
    if n_reference == 0 {
        return Err(ConfidenceError::Empty { at: Location::item(item), what: "reference chain", unit: "sentence" });
    }
    similarity
        .iter()
        .enumerate()
        .map(|(t, row)| {
            if row.len() != n_reference {
                return Err(ConfidenceError::Shape {
                    what: format!("similarity row of item {item}, sentence {t}"),
                    expected: n_reference,
                    found: row.len(),
                });
            }
            let mut best = f64::NEG_INFINITY;
            for &s in row {
                best = best.max(check_finite(Location::sentence(item, t), "similarity", s)?);
            }
            Ok(best > threshold)
        })
        .collect()
}

fn calibration(indicator: f64, expressed: f64) -> f64 {
    1.0 - 2.0 * (indicator - expressed).powi(2)
}

/// Rewards of one response (`item` names it in errors).
pub fn response_reward(item: usize, sentences: &[SentenceSignals], params: &RewardParams) -> Result<ResponseReward> {
    for (name, w) in [("alpha", params.alpha), ("beta", params.beta), ("gamma", params.gamma)] {
        if !w.is_finite() {
            return Err(ConfidenceError::InvalidParams(format!("rewards.{name} must be finite, found {w}")));
        }
    }
    if sentences.is_empty() {
        return Err(ConfidenceError::Empty { at: Location::item(item), what: "response", unit: "sentence" });
    }
    let mut per_sentence = Vec::with_capacity(sentences.len());
    for (t, s) in sentences.iter().enumerate() {
        let at = Location::sentence(item, t);
        let internal = check_unit(at, "internal confidence IV", s.internal)?;
        let ka = if s.correct { 1.0 } else { 0.0 };
        let (ec, cs) = match s.expressed {
            Some(ev) => {
                let ev = check_unit(at, "expressed confidence EV", ev)?;
                (Some(calibration(ka, ev)), Some(calibration(internal, ev)))
            }
            None => match params.missing_statement {
                MissingStatement::Penalize => (Some(-1.0), Some(-1.0)),
                MissingStatement::Skip => (None, None),
                MissingStatement::Error => return Err(ConfidenceError::Empty { at, what: "confidence statement", unit: "statement" }),
            },
        };
        per_sentence.push(SentenceReward { ka, ec, cs });
    }
    let mean = |f: &dyn Fn(&SentenceReward) -> Option<f64>| {
        let v: Vec<f64> = per_sentence.iter().filter_map(f).collect();
        if v.is_empty() {
            -1.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let ka = mean(&|r| Some(r.ka));
    let ec = mean(&|r| r.ec);
    let cs = mean(&|r| r.cs);
    let on = |b: bool| if b { 1.0 } else { 0.0 };
    let total =
        on(params.enable_ka) * params.alpha * ka + on(params.enable_ec) * params.beta * ec + on(params.enable_cs) * params.gamma * cs;
    Ok(ResponseReward { ka, ec, cs, total, per_sentence })
}

/// The share of right sentences at each internal level, add-one smoothed: (right + 1) / (n + 2), so a level
/// with few sentences stays near 1/2 and one with none is 1/2. `sentences` gives each response's levels
/// (1..=5) and I(z_t), in the same order. Histogram binning (Zadrozny & Elkan 2001) of the levels.
pub fn level_accuracy<'a>(sentences: impl IntoIterator<Item = (&'a [u8], &'a [bool])>) -> Result<[f64; 5]> {
    Ok(smoothed_level_accuracy(sentences)?.map(|(a, _)| a))
}

/// [`level_accuracy`] made non-decreasing in the level by weighted pool-adjacent-violators (isotonic
/// regression, weights n + 2): a level then never asks for a lower confidence than the level below it, so
/// R_CS keeps the internal signals' ranking even when a sparse level's share comes out of order.
pub fn monotone_level_accuracy<'a>(sentences: impl IntoIterator<Item = (&'a [u8], &'a [bool])>) -> Result<[f64; 5]> {
    // Blocks of pooled levels: (weighted sum, weight, levels pooled).
    let mut blocks: Vec<(f64, f64, usize)> = Vec::with_capacity(5);
    for (a, w) in smoothed_level_accuracy(sentences)? {
        blocks.push((a * w, w, 1));
        while let [.., (s0, w0, _), (s1, w1, _)] = blocks[..] {
            if s0 / w0 <= s1 / w1 {
                break;
            }
            let (s, w, k) = blocks.pop().unwrap();
            let last = blocks.last_mut().unwrap();
            *last = (last.0 + s, last.1 + w, last.2 + k);
        }
    }
    let values: Vec<f64> = blocks.iter().flat_map(|&(s, w, k)| std::iter::repeat_n(s / w, k)).collect();
    Ok(std::array::from_fn(|l| values[l]))
}

/// Per level, (right + 1) / (n + 2) and its weight n + 2.
fn smoothed_level_accuracy<'a>(sentences: impl IntoIterator<Item = (&'a [u8], &'a [bool])>) -> Result<[(f64, f64); 5]> {
    let (mut right, mut n) = ([0usize; 5], [0usize; 5]);
    for (item, (levels, correct)) in sentences.into_iter().enumerate() {
        if levels.len() != correct.len() {
            return Err(ConfidenceError::Shape {
                what: format!("levels of response {item}"),
                expected: correct.len(),
                found: levels.len(),
            });
        }
        for (t, (&l, &c)) in levels.iter().zip(correct).enumerate() {
            if !(1..=5).contains(&l) {
                return Err(ConfidenceError::OutOfRange {
                    at: Location::sentence(item, t),
                    field: "internal level",
                    value: f64::from(l),
                    expected: "1..=5",
                });
            }
            n[usize::from(l) - 1] += 1;
            right[usize::from(l) - 1] += usize::from(c);
        }
    }
    Ok(std::array::from_fn(|l| ((right[l] as f64 + 1.0) / (n[l] as f64 + 2.0), n[l] as f64 + 2.0)))
}

/// SaySelf's reward (Xu et al. 2024, `utils/utils.py::calculate_reward`): R = 1 − 2·(correctness −
/// confidence)² on the final answer, both on [0, 1]; a response whose confidence cannot be read gets −1.
pub fn sayself_reward(correct: f64, confidence: Option<f64>) -> Result<f64> {
    let c = check_unit(Location::Dataset, "answer correctness", correct)?;
    match confidence {
        None => Ok(-1.0),
        Some(q) => {
            let q = check_unit(Location::Dataset, "answer confidence", q)?;
            Ok(1.0 - 2.0 * (c - q).powi(2))
        }
    }
}
