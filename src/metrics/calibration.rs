//! Calibration errors: answer-level ECE (equal-width bins, or unbinned as SaySelf reports it) and the
//! paper's sentence-level MECE (eq. 15–17).
use serde::{Deserialize, Serialize};

use super::{same_len, unit, MetricsError, Result};

/// ECE params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EceParams {
    /// Number of equal-width bins on [0, 1]; bin b holds confidences in [b/B, (b+1)/B), the last bin
    /// also holds 1.0. Paper: ECE (Guo et al.), bin count unstated. We chose 20, as lm-polygraph.
    pub bins: usize,
}

impl Default for EceParams {
    fn default() -> Self {
        EceParams { bins: 20 }
    }
}

fn check_pairs(confidence: &[f64], correct: &[f64]) -> Result<()> {
    same_len("ECE: correctness values (one per confidence)", confidence.len(), correct.len())?;
    if confidence.is_empty() {
        return Err(MetricsError::Empty { what: "ECE input".into(), unit: "answer" });
    }
    for (i, (&c, &q)) in confidence.iter().zip(correct).enumerate() {
        unit("confidence", i, c)?;
        unit("correctness", i, q)?;
    }
    Ok(())
}

/// The ECE bin of a confidence in [0, 1] among `bins` equal-width bins: b with b/B ≤ c < (b+1)/B, the last
/// bin also holding 1.0 (values outside [0, 1] go to the first or last bin). Compared with the edges
/// b/B themselves (not floor(c·B)), so a value on an edge is binned exactly. The reliability diagram bins
/// with this too.
pub fn ece_bin(c: f64, bins: usize) -> usize {
    let b = bins.max(1);
    let c = c.clamp(0.0, 1.0);
    let mut k = ((c * b as f64).floor() as usize).min(b - 1);
    while k > 0 && c < k as f64 / b as f64 {
        k -= 1;
    }
    while k + 1 < b && c >= (k + 1) as f64 / b as f64 {
        k += 1;
    }
    k
}

/// Σ_b (n_b / N) |acc_b − conf_b| over non-empty equal-width bins. Correctness may be soft (A-OKVQA's
/// direct-answer accuracy), in [0, 1].
pub fn ece(confidence: &[f64], correct: &[f64], params: &EceParams) -> Result<f64> {
    if params.bins == 0 {
        return Err(MetricsError::InvalidParams("ece.bins must be ≥ 1, found 0".into()));
    }
    check_pairs(confidence, correct)?;
    let b = params.bins;
    let mut n = vec![0usize; b];
    let mut sum_conf = vec![0.0; b];
    let mut sum_acc = vec![0.0; b];
    for (&c, &q) in confidence.iter().zip(correct) {
        let k = ece_bin(c, b);
        n[k] += 1;
        sum_conf[k] += c;
        sum_acc[k] += q;
    }
    let total = confidence.len() as f64;
    Ok((0..b)
        .filter(|&k| n[k] > 0)
        .map(|k| {
            let nk = n[k] as f64;
            (nk / total) * (sum_acc[k] / nk - sum_conf[k] / nk).abs()
        })
        .sum())
}

/// SaySelf's unbinned variant: mean |confidence − correctness|.
pub fn ece_unbinned(confidence: &[f64], correct: &[f64]) -> Result<f64> {
    check_pairs(confidence, correct)?;
    Ok(confidence.iter().zip(correct).map(|(c, q)| (c - q).abs()).sum::<f64>() / confidence.len() as f64)
}

/// MECE (eq. 15–17): mean over responses of the mean over their sentences of |I(z) − Conf(c)|.
/// `responses[a]` holds (I(z), Conf(c)) per sentence. A response with no sentence is an error
/// (eq. 16 divides by |a|); drop such responses upstream if that is the intent.
pub fn mece(responses: &[Vec<(bool, f64)>]) -> Result<f64> {
    mean_sentence_error(responses, "MECE", |d| d.abs())
}

/// Step-level Brier score: MECE's averaging with the squared error (I(z) − Conf(c))². Why report it next
/// to MECE: the absolute error is not a proper scoring rule (when 80 % of sentences are right it is lowest
/// for "always 1.0"), while the squared error is lowest for calibrated confidence, which is what R_EC and
/// R_CS (eq. 11–12, squared) reward.
pub fn step_brier(responses: &[Vec<(bool, f64)>]) -> Result<f64> {
    mean_sentence_error(responses, "Brier", |d| d * d)
}

/// Mean over responses of the mean over their sentences of `err(I(z) − Conf(c))`.
fn mean_sentence_error(responses: &[Vec<(bool, f64)>], name: &str, err: impl Fn(f64) -> f64) -> Result<f64> {
    if responses.is_empty() {
        return Err(MetricsError::Empty { what: format!("{name} input"), unit: "response" });
    }
    let mut total = 0.0;
    for (a, sentences) in responses.iter().enumerate() {
        if sentences.is_empty() {
            return Err(MetricsError::Empty { what: format!("{name} response {a}"), unit: "sentence" });
        }
        let mut s = 0.0;
        for (t, &(correct, conf)) in sentences.iter().enumerate() {
            let conf = unit("Conf(c)", format!("{a}][{t}"), conf)?;
            s += err((if correct { 1.0 } else { 0.0 }) - conf);
        }
        total += s / sentences.len() as f64;
    }
    Ok(total / responses.len() as f64)
}

/// How a response's answer-level confidence (for ECE and AUROC) comes from its sentence confidences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerConfidence {
    /// The last sentence's (the "So, the answer is …" step).
    FinalSentence,
    Mean,
    Min,
}

impl Default for AnswerConfidence {
    /// Paper: silent. We chose the final sentence, which states the answer being scored.
    fn default() -> Self {
        AnswerConfidence::FinalSentence
    }
}

/// The answer-level confidence of one response (`index` names it in errors).
pub fn answer_confidence(index: usize, sentence_confidences: &[f64], mode: AnswerConfidence) -> Result<f64> {
    if sentence_confidences.is_empty() {
        return Err(MetricsError::Empty { what: format!("sentence confidences of response {index}"), unit: "sentence" });
    }
    for (t, &c) in sentence_confidences.iter().enumerate() {
        unit("sentence confidence", format!("{index}][{t}"), c)?;
    }
    let n = sentence_confidences.len() as f64;
    Ok(match mode {
        AnswerConfidence::FinalSentence => sentence_confidences[sentence_confidences.len() - 1],
        AnswerConfidence::Mean => sentence_confidences.iter().sum::<f64>() / n,
        AnswerConfidence::Min => sentence_confidences.iter().copied().fold(f64::INFINITY, f64::min),
    })
}
