//! What `ppo` and `eval` both do to a generated chain: parse it into (sentence, statement) pairs, map
//! each statement back to its expressed confidence EV (MiniLM, the paper's backward map), and judge
//! each sentence against the item's reference chain (the stage's judge: MiniLM cosine, or the paper's
//! cross-encoder; every artifact records which). Also where each pair sits in the text, so the
//! PPO reward can be placed on the token that ends a statement.
use crate::confidence::parser::{numeric_confidence, Layout, ParsedPair, Parser, ParserParams};
use crate::confidence::similarity::exact_or_half;
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
            Judge::ExactMatch => Ok(cosine_matrix(&self.embed(sentences)?, &self.embed(reference)?)?
                .into_iter()
                .zip(sentences)
                .map(|(row, s)| row.into_iter().zip(reference).map(|(c, r)| exact_or_half(s, r, c)).collect())
                .collect()),
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
        // Each pair with its sentence's span and its statement's end: located in order after each other
        // (statements after their sentences), or as the RCE layout's parser placed them.
        let located: Vec<(ParsedPair, (usize, usize), Option<usize>)> = match self.parser.layout() {
            Layout::Inline => locate_inline(text, self.parser.parse(text).pairs)?,
            Layout::AfterResponse => {
                let l = self.parser.parse_after_response(text);
                l.parsed
                    .pairs
                    .into_iter()
                    .zip(l.sentence_spans)
                    .zip(l.statement_spans)
                    .map(|((p, span), st)| (p, span, st.map(|s| s.1)))
                    .collect()
            }
        };
        if located.is_empty() {
            return Ok(Vec::new());
        }
        let sentences: Vec<&str> = located.iter().map(|p| p.0.sentence.as_str()).collect();
        let sim = self.similarity_matrix(&sentences, reference)?;
        // EV: a numeric statement states its value; the others go through the backward map (one call).
        let worded: Vec<&str> = located
            .iter()
            .filter_map(|p| p.0.statement.as_deref())
            .filter(|s| !s.trim().is_empty() && numeric_confidence(s).is_none())
            .collect();
        let mut ev = if worded.is_empty() { Vec::new() } else { self.pool.map(&worded, &self.embedder, &self.backward)? }.into_iter();
        let mut out = Vec::with_capacity(located.len());
        for ((pair, sentence_span, statement_end), row) in located.into_iter().zip(sim) {
            let expressed = match pair.statement.as_deref().filter(|s| !s.trim().is_empty()) {
                Some(s) => Some(match numeric_confidence(s) {
                    Some(v) => v,
                    None => ev
                        .next()
                        .ok_or_else(|| anyhow::anyhow!("backward map returned fewer matches than statements"))?
                        .expressed(&self.backward),
                }),
                None => None,
            };
            out.push(JudgedPair { pair, sentence_span, statement_end: expressed.and(statement_end), expressed, similarity: row });
        }
        Ok(out)
    }
}

/// Spans of inline pairs (each statement right after its sentence): every sentence and statement found
/// verbatim in the text after the previous one.
fn locate_inline(text: &str, pairs: Vec<ParsedPair>) -> anyhow::Result<Vec<(ParsedPair, (usize, usize), Option<usize>)>> {
    let mut cursor = 0usize;
    let mut out = Vec::with_capacity(pairs.len());
    for (t, pair) in pairs.into_iter().enumerate() {
        let sentence_span = find_from(text, &pair.sentence, cursor)
            .ok_or_else(|| anyhow::anyhow!("sentence {t} ({:?}) cannot be located in the chain after byte {cursor}", pair.sentence))?;
        cursor = sentence_span.1;
        let statement_end = match pair.statement.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(s) => {
                let (_, end) = find_from(text, s, cursor)
                    .ok_or_else(|| anyhow::anyhow!("the statement of sentence {t} ({s:?}) cannot be located after byte {cursor}"))?;
                cursor = end;
                Some(end)
            }
            None => None,
        };
        out.push((pair, sentence_span, statement_end));
    }
    Ok(out)
}

/// A borrowed embedder, so one loaded MiniLM serves both as embedder and as pair similarity.
pub struct EmbedderRef<'a>(pub &'a dyn SentenceEmbedder);

impl SentenceEmbedder for EmbedderRef<'_> {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, crate::confidence::EncoderError> {
        self.0.embed(texts)
    }
}

/// (sentence span, floor) of each judged pair, for clipping its tokens: the floor is the end of what
/// precedes the sentence, the previous statement's end when that statement lies before the sentence
/// (inline layout), else the previous sentence's end (the RCE layout, whose statements come after the
/// whole chain); 0 for the first.
pub fn sentence_floors(judged: &[JudgedPair]) -> Vec<((usize, usize), usize)> {
    judged
        .iter()
        .enumerate()
        .map(|(t, j)| {
            let floor = t.checked_sub(1).map_or(0, |p| {
                let before = &judged[p];
                before.statement_end.filter(|&e| e <= j.sentence_span.0).unwrap_or(before.sentence_span.1)
            });
            (j.sentence_span, floor)
        })
        .collect()
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

    fn pair(sentence_span: (usize, usize), statement_end: Option<usize>) -> JudgedPair {
        JudgedPair {
            pair: ParsedPair { sentence: String::new(), statement: None },
            sentence_span,
            statement_end,
            expressed: statement_end.map(|_| 0.5),
            similarity: Vec::new(),
        }
    }

    #[test]
    fn floors_follow_inline_statements_and_skip_statements_after_the_response() {
        // Inline: "A. s1. B. s2." sentences [0,2) and [7,9), statements ending at 6 and 13.
        let inline = [pair((0, 2), Some(6)), pair((7, 9), Some(13))];
        assert_eq!(sentence_floors(&inline), vec![((0, 2), 0), ((7, 9), 6)]);
        // After the response: "A. B. C.\nConfidence: [1] s1. [2] s2." sentences [0,2), [3,5), [6,8), the
        // statements end at 30 and 38 (after every sentence), the third has none.
        let after = [pair((0, 2), Some(30)), pair((3, 5), Some(38)), pair((6, 8), None)];
        assert_eq!(sentence_floors(&after), vec![((0, 2), 0), ((3, 5), 2), ((6, 8), 5)]);
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
