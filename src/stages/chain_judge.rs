//! What `ppo` and `eval` both do to a generated chain: parse it into (sentence, statement) pairs, map
//! each statement back to its expressed confidence EV (MiniLM, the paper's backward map), and judge
//! each sentence against the item's reference chain (the stage's judge: MiniLM cosine, or the paper's
//! cross-encoder; every artifact records which). Also where each pair sits in the text, so the
//! PPO reward can be placed on the token that ends a statement.
use crate::confidence::parser::{numeric_confidence, ParsedPair, Parser, ParserParams};
use crate::confidence::statements::{BackwardParams, PoolIndex, StatementPool};
use crate::confidence::uncertainty::cosine;
use crate::confidence::PairSimilarity;
use crate::confidence::{Location, SentenceEmbedder};
use crate::encoders::minilm::{SentenceEncoder, SentenceEncoderParams};
use crate::encoders::runtime::SessionOptions;
use crate::stages::judges::{Judge, JudgeParams, MiniLmEmbedder};
use std::path::Path;

/// One judged pair: texts, byte spans in the chain, EV, and the similarity row to the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedPair {
    pub pair: ParsedPair,
    /// Byte range of the sentence in the chain text.
    pub sentence_span: (usize, usize),
    /// Byte end of the statement in the chain text (None without a statement).
    pub statement_end: Option<usize>,
    /// EV(c) on [0, 1]; None without a statement.
    pub expressed: Option<f64>,
    /// Cosine to each reference-chain sentence (perception first, then reasoning).
    pub similarity: Vec<f64>,
}

pub struct ChainJudge {
    pub embedder: MiniLmEmbedder,
    /// What compares a generated sentence with a reference sentence (MiniLM cosine or a cross-encoder).
    pub matcher: Judge,
    pub parser: Parser,
    pub pool: PoolIndex,
    pub backward: BackwardParams,
}

/// The byte range of `needle` in `text` at or after `from` (the parser's sentences and statements are
/// slices of the text, so they are found verbatim).
fn find_from(text: &str, needle: &str, from: usize) -> Option<(usize, usize)> {
    let from = from.min(text.len());
    if needle.is_empty() {
        return None;
    }
    text.get(from..).and_then(|t| t.find(needle)).map(|i| (from + i, from + i + needle.len()))
}

/// Cosine matrix `rows × cols` of two embedding lists.
pub fn cosine_matrix(rows: &[Vec<f32>], cols: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f64>>> {
    rows.iter()
        .enumerate()
        .map(|(i, a)| cols.iter().enumerate().map(|(j, b)| Ok(cosine(Location::sentence(i, j), a, b)?)).collect())
        .collect()
}

impl ChainJudge {
    /// With the MiniLM-cosine matcher.
    pub fn load(
        minilm: &Path,
        pool_path: &Path,
        parser: ParserParams,
        backward: BackwardParams,
        session: &SessionOptions,
    ) -> anyhow::Result<Self> {
        Self::load_with_judge(minilm, pool_path, parser, backward, &JudgeParams::default(), "judge", session)
    }

    /// With the matcher `judge` selects (`stage` names the params in errors).
    pub fn load_with_judge(
        minilm: &Path,
        pool_path: &Path,
        parser: ParserParams,
        backward: BackwardParams,
        judge: &JudgeParams,
        stage: &str,
        session: &SessionOptions,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(pool_path).map_err(|e| anyhow::anyhow!("{}: {e}", pool_path.display()))?;
        let pool = StatementPool::from_toml(&text, &pool_path.display().to_string())?;
        let embedder = MiniLmEmbedder(SentenceEncoder::load(minilm, SentenceEncoderParams::default(), session)?);
        let index = PoolIndex::build(&pool, &embedder)?;
        let matcher = judge.load(stage, session)?;
        Ok(Self { embedder, matcher, parser: Parser::new(&pool, parser), pool: index, backward })
    }

    /// Similarity of every generated sentence (rows) to every reference sentence (columns).
    pub fn similarity_matrix(&self, sentences: &[&str], reference: &[&str]) -> anyhow::Result<Vec<Vec<f64>>> {
        match &self.matcher {
            Judge::MinilmCosine => cosine_matrix(&self.embed(sentences)?, &self.embed(reference)?),
            Judge::CrossEncoder(ce) => {
                let pairs: Vec<(&str, &str)> = sentences.iter().flat_map(|&s| reference.iter().map(move |&r| (s, r))).collect();
                let scores = ce.similarity(&pairs).map_err(|e| anyhow::anyhow!("cross-encoder: {e}"))?;
                anyhow::ensure!(scores.len() == pairs.len(), "cross-encoder returned {} scores for {} pairs", scores.len(), pairs.len());
                Ok(scores.chunks(reference.len().max(1)).map(|row| row.iter().map(|&x| f64::from(x)).collect()).collect())
            }
        }
    }

    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.embedder.embed(texts).map_err(|e| anyhow::anyhow!("MiniLM: {e}"))
    }

    /// Parses and judges one chain against its reference sentences (which must not be empty).
    pub fn judge(&self, text: &str, reference: &[&str]) -> anyhow::Result<Vec<JudgedPair>> {
        anyhow::ensure!(!reference.is_empty(), "judging a chain needs a reference chain, found none");
        let parsed = self.parser.parse(text);
        if parsed.pairs.is_empty() {
            return Ok(Vec::new());
        }
        let sentences: Vec<&str> = parsed.pairs.iter().map(|p| p.sentence.as_str()).collect();
        let sim = self.similarity_matrix(&sentences, reference)?;
        // EV: a numeric statement states its value; the others go through the backward map (one call).
        let worded: Vec<&str> = parsed
            .pairs
            .iter()
            .filter_map(|p| p.statement.as_deref())
            .filter(|s| !s.trim().is_empty() && numeric_confidence(s).is_none())
            .collect();
        let mut ev = if worded.is_empty() { Vec::new() } else { self.pool.map(&worded, &self.embedder, &self.backward)? }.into_iter();
        let mut cursor = 0usize;
        let mut out = Vec::with_capacity(parsed.pairs.len());
        for (t, (pair, row)) in parsed.pairs.into_iter().zip(sim).enumerate() {
            let sentence_span = find_from(text, &pair.sentence, cursor)
                .ok_or_else(|| anyhow::anyhow!("sentence {t} ({:?}) cannot be located in the chain after byte {cursor}", pair.sentence))?;
            cursor = sentence_span.1;
            let (statement_end, expressed) = match pair.statement.as_deref().filter(|s| !s.trim().is_empty()) {
                Some(s) => {
                    let (_, end) = find_from(text, s, cursor)
                        .ok_or_else(|| anyhow::anyhow!("the statement of sentence {t} ({s:?}) cannot be located after byte {cursor}"))?;
                    cursor = end;
                    let value = match numeric_confidence(s) {
                        Some(v) => v,
                        None => ev
                            .next()
                            .ok_or_else(|| anyhow::anyhow!("backward map returned fewer matches than statements"))?
                            .expressed(&self.backward),
                    };
                    (Some(end), Some(value))
                }
                None => (None, None),
            };
            out.push(JudgedPair { pair, sentence_span, statement_end, expressed, similarity: row });
        }
        Ok(out)
    }
}

/// A borrowed embedder, so one loaded MiniLM serves both as embedder and as pair similarity.
pub struct EmbedderRef<'a>(pub &'a dyn SentenceEmbedder);

impl SentenceEmbedder for EmbedderRef<'_> {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, crate::confidence::EncoderError> {
        self.0.embed(texts)
    }
}

/// Index of the first token whose decoded prefix reaches byte `b` (the last token if none does).
pub fn token_at_byte(token_ends: &[usize], b: usize) -> usize {
    token_ends.iter().position(|&e| e >= b).unwrap_or(token_ends.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_from_moves_forward() {
        assert_eq!(find_from("a b. a b.", "a b", 1), Some((5, 8)));
        assert_eq!(find_from("The Cat.", "the cat", 0), None);
        assert_eq!(find_from("x", "y", 0), None);
        assert_eq!(find_from("x", "", 0), None);
    }

    #[test]
    fn token_at_byte_takes_the_first_token_reaching_the_byte() {
        let ends = [3, 7, 7, 12];
        assert_eq!(token_at_byte(&ends, 1), 0);
        assert_eq!(token_at_byte(&ends, 7), 1);
        assert_eq!(token_at_byte(&ends, 8), 3);
        assert_eq!(token_at_byte(&ends, 99), 3);
    }
}
