//! What `ppo` and `eval` both do to a generated chain: parse it into (sentence, statement) pairs, map
//! each statement back to its expressed confidence EV (MiniLM, the paper's backward map), and judge
//! each sentence against the item's reference chain (MiniLM cosine as the stand-in for the paper's
//! unnamed matcher; every artifact records the judge). Also where each pair sits in the text, so the
//! PPO reward can be placed on the token that ends a statement.
use crate::confidence::parser::{ParsedPair, Parser, ParserParams};
use crate::confidence::statements::{BackwardParams, PoolIndex, StatementPool};
use crate::confidence::uncertainty::cosine;
use crate::confidence::{Location, SentenceEmbedder};
use crate::encoders::minilm::{SentenceEncoder, SentenceEncoderParams};
use crate::encoders::runtime::SessionOptions;
use crate::stages::judges::MiniLmEmbedder;
use std::path::Path;

/// The name every judged artifact records for the sentence matcher.
pub const JUDGE_NAME: &str = "minilm-cosine";

/// One judged pair: texts, byte spans in the chain, EV, and the similarity row to the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedPair {
    pub pair: ParsedPair,
    /// Byte range of the sentence in the chain text (best effort: the parser trims pieces).
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
    pub parser: Parser,
    pub pool: PoolIndex,
    pub backward: BackwardParams,
}

/// Finds `needle` in `text` at or after `from`; falls back to a case-insensitive search.
fn find_from(text: &str, needle: &str, from: usize) -> Option<(usize, usize)> {
    let from = from.min(text.len());
    if let Some(i) = text.get(from..).and_then(|t| t.find(needle)) {
        return Some((from + i, from + i + needle.len()));
    }
    let lower = text.to_lowercase();
    if lower.len() != text.len() {
        return None;
    }
    lower.get(from..).and_then(|t| t.find(&needle.to_lowercase())).map(|i| (from + i, from + i + needle.len()))
}

/// Cosine matrix `rows × cols` of two embedding lists.
pub fn cosine_matrix(rows: &[Vec<f32>], cols: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f64>>> {
    rows.iter()
        .enumerate()
        .map(|(i, a)| cols.iter().enumerate().map(|(j, b)| Ok(cosine(Location::sentence(i, j), a, b)?)).collect())
        .collect()
}

impl ChainJudge {
    pub fn load(
        minilm: &Path,
        pool_path: &Path,
        parser: ParserParams,
        backward: BackwardParams,
        session: &SessionOptions,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(pool_path).map_err(|e| anyhow::anyhow!("{}: {e}", pool_path.display()))?;
        let pool = StatementPool::from_toml(&text, &pool_path.display().to_string())?;
        let embedder = MiniLmEmbedder(SentenceEncoder::load(minilm, SentenceEncoderParams::default(), session)?);
        let index = PoolIndex::build(&pool, &embedder)?;
        Ok(Self { embedder, parser: Parser::new(&pool, parser), pool: index, backward })
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
        let sim = cosine_matrix(&self.embed(&sentences)?, &self.embed(reference)?)?;
        let statements: Vec<&str> = parsed.pairs.iter().filter_map(|p| p.statement.as_deref()).filter(|s| !s.trim().is_empty()).collect();
        let mut ev =
            if statements.is_empty() { Vec::new() } else { self.pool.map(&statements, &self.embedder, &self.backward)? }.into_iter();
        let mut cursor = 0usize;
        let mut out = Vec::with_capacity(parsed.pairs.len());
        for (pair, row) in parsed.pairs.into_iter().zip(sim) {
            let sentence_span = find_from(text, &pair.sentence, cursor).unwrap_or((cursor.min(text.len()), cursor.min(text.len())));
            cursor = sentence_span.1;
            let (statement_end, expressed) = match pair.statement.as_deref().filter(|s| !s.trim().is_empty()) {
                Some(s) => {
                    let end = find_from(text, s, cursor).map(|(_, e)| e);
                    if let Some(e) = end {
                        cursor = e;
                    }
                    let m = ev.next().ok_or_else(|| anyhow::anyhow!("backward map returned fewer matches than statements"))?;
                    (end, Some(m.expressed(&self.backward)))
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
    fn find_from_moves_forward_and_ignores_case_as_fallback() {
        assert_eq!(find_from("a b. a b.", "a b", 1), Some((5, 8)));
        assert_eq!(find_from("The Cat.", "the cat", 0), Some((0, 7)));
        assert_eq!(find_from("x", "y", 0), None);
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
