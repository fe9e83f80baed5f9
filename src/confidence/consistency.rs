//! Self-consistency confidence (the SC baseline, Xiong et al. 2023, as MMBoundary's §4.4 compares with
//! it): a chain's confidence from how much K sampled chains of the same question agree with it.
//!
//! - **Answer**: the fraction of the K samples whose answer (already read and normalized by the caller:
//!   the chosen option, or the normalized free text) equals the chain's own; 0 when the chain gives no
//!   answer. Xiong et al.'s "consistency" aggregation with the greedy answer as the one scored.
//! - **Sentences** (our rule; the paper and Xiong et al. give none): sentence t's confidence is the
//!   fraction of the K samples that contain a sentence the judge matches with it (score strictly above the
//!   threshold, the same judge and threshold as I(z) and chain F1); the chain's answer sentence (the last
//!   one holding the answer marker) takes the answer agreement instead, so ECE's answer confidence is
//!   Xiong's.
use super::parser::{render, ParsedPair};
use super::{ConfidenceError, Location, Result};

/// The fraction of `samples` whose answer equals `own` (0 when `own` is None). Errors on no samples.
pub fn answer_agreement(own: Option<&str>, samples: &[Option<String>]) -> Result<f64> {
    if samples.is_empty() {
        return Err(ConfidenceError::Empty { at: Location::Dataset, what: "self-consistency samples", unit: "sampled chain" });
    }
    let Some(own) = own else { return Ok(0.0) };
    Ok(samples.iter().filter(|s| s.as_deref() == Some(own)).count() as f64 / samples.len() as f64)
}

/// Per sentence of the chain: the fraction of samples with a matching sentence. `similarity[k][t][j]` is
/// the judge's score of the chain's sentence t against sample k's sentence j (each `[t]` row has one entry
/// per sentence of sample k; a sample with no sentence matches nothing).
pub fn sentence_agreement(n_sentences: usize, similarity: &[Vec<Vec<f64>>], threshold: f64) -> Result<Vec<f64>> {
    if similarity.is_empty() {
        return Err(ConfidenceError::Empty { at: Location::Dataset, what: "self-consistency samples", unit: "sampled chain" });
    }
    let mut hits = vec![0usize; n_sentences];
    for (k, sim) in similarity.iter().enumerate() {
        if sim.len() != n_sentences {
            return Err(ConfidenceError::Shape { what: format!("sample {k}'s similarity rows"), expected: n_sentences, found: sim.len() });
        }
        for (t, row) in sim.iter().enumerate() {
            for &v in row {
                if !v.is_finite() {
                    return Err(ConfidenceError::NonFinite { at: Location::sentence(k, t), field: "judge score", value: v });
                }
            }
            if row.iter().any(|&v| v > threshold) {
                hits[t] += 1;
            }
        }
    }
    Ok(hits.into_iter().map(|h| h as f64 / similarity.len() as f64).collect())
}

/// The SC confidences of a chain's sentences: [`sentence_agreement`], with the answer sentence (index
/// `answer_sentence`, if any) set to the answer agreement.
pub fn chain_confidences(sentence: Vec<f64>, answer_sentence: Option<usize>, answer: f64) -> Result<Vec<f64>> {
    let mut out = sentence;
    if let Some(t) = answer_sentence {
        let n = out.len();
        *out.get_mut(t).ok_or(ConfidenceError::Shape { what: "answer sentence index".into(), expected: n, found: t })? = answer;
    }
    Ok(out)
}

/// The chain as eval reads it: each sentence followed by its confidence as a numeric statement
/// ("Confidence: 0.60."), which the parser reads back by value whatever the pool.
pub fn render_with_confidences(sentences: &[String], confidences: &[f64]) -> Result<String> {
    if sentences.len() != confidences.len() {
        return Err(ConfidenceError::Shape { what: "confidences".into(), expected: sentences.len(), found: confidences.len() });
    }
    let pairs: Vec<ParsedPair> = sentences
        .iter()
        .zip(confidences)
        .map(|(s, c)| ParsedPair { sentence: s.clone(), statement: Some(format!("Confidence: {c:.2}.")) })
        .collect();
    Ok(render(&pairs))
}

/// The statement level (1–5, values 0, 0.25, …, 1) nearest a consistency confidence on [0, 1] (ties
/// upwards), so the Multisample baseline's SFT targets say it with the pool's statements.
pub fn consistency_level(confidence: f64) -> Result<u8> {
    if !(0.0..=1.0).contains(&confidence) {
        return Err(ConfidenceError::OutOfRange { at: Location::Dataset, field: "consistency", value: confidence, expected: "[0, 1]" });
    }
    Ok(1 + (confidence * 4.0).round() as u8)
}
