//! The encoders as the confidence module's judges: the adapters from `encoders` types to the traits in
//! `confidence` (which knows no encoder), in the one place that sees both.
use crate::confidence::{EncoderError, PairSimilarity, SentenceEmbedder};
use crate::encoders::cross_encoder::{CrossEncoder, CrossEncoderParams};
use crate::encoders::minilm::SentenceEncoder;
use crate::encoders::runtime::SessionOptions;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// all-MiniLM-L6-v2 (or any mean-pooled bi-encoder) as a [`SentenceEmbedder`].
pub struct MiniLmEmbedder(pub SentenceEncoder);

impl SentenceEmbedder for MiniLmEmbedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError> {
        let e = self.0.encode(texts)?;
        Ok(e.embeddings.data.chunks(e.embeddings.dim.max(1)).map(<[f32]>::to_vec).collect())
    }
}

/// A cross-encoder (sigmoid of its one logit, as sentence-transformers' `CrossEncoder.predict`) as a
/// [`PairSimilarity`].
pub struct CrossEncoderSimilarity(pub CrossEncoder);

impl PairSimilarity for CrossEncoderSimilarity {
    fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
        Ok(self.0.predict(pairs)?.scores)
    }
}

/// Which model judges sentence pairs: TokenSAR's g in `score` and `ppo`, and whether a generated sentence
/// matches a reference sentence (I(z), R_KA, MECE, chain F1) in `ppo` and `eval`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeKind {
    /// Cosine of all-MiniLM-L6-v2 embeddings (the stages' `minilm`). The stand-in when no cross-encoder
    /// can be had; the paper's 0.64 threshold was tuned for the cross-encoder, not for this.
    #[default]
    MinilmCosine,
    /// A cross-encoder folder (`model.onnx`, `tokenizer.json`; `scripts/export_onnx.py cross-encoder`
    /// exports one), the paper's cross-encoder/stsb-roberta-large with threshold 0.64.
    CrossEncoder,
    /// Right only when the sentence is a reference sentence word for word (case, spacing and the final
    /// full stop aside): 1 for it, else half of MiniLM's cosine (`confidence::similarity::ExactMatch`), so
    /// the nearest reference sentence still gives a sentence its level. For templated reference chains,
    /// the embedded benchmark's, where "a large red hexagon" has MiniLM cosine 0.87 with "a large teal
    /// hexagon". TokenSAR's g is then MiniLM's cosine (equality cannot weigh one token's relevance).
    ExactMatch,
}

/// The judge of a stage (its name, threshold and folder go into the stage's params, hence its cache
/// key, and into every row it writes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeParams {
    pub kind: JudgeKind,
    /// The cross-encoder folder; required with `kind = "cross_encoder"`.
    pub cross_encoder: Option<PathBuf>,
}

/// A loaded judge. Unlike `encoders::cross_encoder::PairJudge` (which embeds both texts of every pair),
/// the MiniLM judge goes through `confidence::similarity::CosineOfEmbeddings`, which embeds each distinct
/// text once: TokenSAR's pairs share their first text, and the judged sentences their references.
pub enum Judge {
    MinilmCosine,
    ExactMatch,
    CrossEncoder(CrossEncoderSimilarity),
}

impl JudgeParams {
    /// The name rows record: `minilm-cosine` or `cross-encoder:<folder name>`.
    pub fn name(&self) -> String {
        match self.kind {
            JudgeKind::MinilmCosine => "minilm-cosine".into(),
            JudgeKind::ExactMatch => "exact-match".into(),
            JudgeKind::CrossEncoder => format!(
                "cross-encoder:{}",
                self.cross_encoder.as_deref().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            ),
        }
    }

    /// The model files the judge reads (hashed into the cache key).
    pub fn model_files(&self) -> Vec<PathBuf> {
        match (&self.kind, &self.cross_encoder) {
            (JudgeKind::CrossEncoder, Some(d)) => vec![d.join("model.onnx"), d.join("tokenizer.json")],
            _ => vec![],
        }
    }

    /// A match threshold this judge can use (`key` names it in the error): the exact-match judge scores a
    /// reference sentence 1 and any other sentence at most 0.5, so its threshold must be in [0.5, 1).
    pub fn check_threshold(&self, stage: &str, key: &str, threshold: f64) -> anyhow::Result<()> {
        if self.kind == JudgeKind::ExactMatch && !(0.5..1.0).contains(&threshold) {
            anyhow::bail!(
                "{stage}.{key} = {threshold}: the exact_match judge scores a reference sentence 1 and any other \
                 sentence at most 0.5, so its threshold must be at least 0.5 and below 1"
            );
        }
        Ok(())
    }

    /// Loads the judge; a cross-encoder without its folder is an error naming the param.
    pub fn load(&self, stage: &str, session: &SessionOptions) -> anyhow::Result<Judge> {
        match (&self.kind, &self.cross_encoder) {
            (JudgeKind::MinilmCosine, _) => Ok(Judge::MinilmCosine),
            (JudgeKind::ExactMatch, _) => Ok(Judge::ExactMatch),
            (JudgeKind::CrossEncoder, Some(d)) => {
                let ce = CrossEncoder::load(d, CrossEncoderParams::default(), session)
                    .map_err(|e| anyhow::anyhow!("{stage}.judge.cross_encoder = {}: {e}", d.display()))?;
                Ok(Judge::CrossEncoder(CrossEncoderSimilarity(ce)))
            }
            (JudgeKind::CrossEncoder, None) => {
                anyhow::bail!("{stage}.judge: kind = \"cross_encoder\" needs `cross_encoder` = the folder of an exported cross-encoder")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_match_judge_refuses_a_threshold_outside_half_to_one() {
        let exact = JudgeParams { kind: JudgeKind::ExactMatch, cross_encoder: None };
        for ok in [0.5, 0.64, 0.99] {
            exact.check_threshold("eval", "match_threshold", ok).unwrap();
        }
        for bad in [0.3, 1.0, f64::NAN] {
            let e = exact.check_threshold("ppo", "rewards.match_threshold", bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "ppo.rewards.match_threshold = {bad}: the exact_match judge scores a reference sentence 1 and any \
                     other sentence at most 0.5, so its threshold must be at least 0.5 and below 1"
                )
            );
        }
        // Other judges keep any threshold.
        JudgeParams::default().check_threshold("eval", "match_threshold", 0.3).unwrap();
        assert_eq!(exact.name(), "exact-match");
    }
}
