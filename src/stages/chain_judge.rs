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
use std::collections::HashMap;
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

    /// With the matcher `judge` selects, the default parser and backward map, on the CPU.
    pub fn load_judging(minilm: &Path, pool_path: &Path, judge: &JudgeParams, stage: &str) -> anyhow::Result<Self> {
        Self::load_with_judge(minilm, pool_path, Default::default(), Default::default(), judge, stage, &Default::default())
    }

    /// Similarity of every generated sentence (rows) to every reference sentence (columns).
    pub fn similarity_matrix(&self, sentences: &[&str], reference: &[&str]) -> anyhow::Result<Vec<Vec<f64>>> {
        let mut texts = Texts::default();
        self.request_similarity(&mut texts, sentences, reference);
        let known = texts.embed(self)?;
        let scores = self.cross_encoder_scores(&[(sentences, reference)])?;
        self.similarity_from(&known, sentences, reference, scores.first().map(Vec::as_slice))
    }

    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.embedder.embed(texts).map_err(|e| anyhow::anyhow!("MiniLM: {e}"))
    }

    /// Parses and judges one chain against its reference sentences (which must not be empty).
    pub fn judge(&self, text: &str, reference: &[&str]) -> anyhow::Result<Vec<JudgedPair>> {
        self.judge_all(&[(text, reference)])?.pop().expect("one result per chain")
    }

    /// Parses and judges many chains, each against its own reference sentences, with one encoder call for
    /// all their distinct texts (sentences, references, worded statements) and one cross-encoder call for
    /// all their pairs: judged chain by chain, ONNX Runtime's per-call cost outweighs the encoding (eval
    /// judges thousands of chains of a dozen short sentences). The outer error is the encoders'; each chain
    /// has its own result, an error where it cannot be parsed or has no reference.
    pub fn judge_all(&self, chains: &[(&str, &[&str])]) -> anyhow::Result<Vec<anyhow::Result<Vec<JudgedPair>>>> {
        let located: Vec<anyhow::Result<Vec<Located>>> = chains.iter().map(|&(text, reference)| self.locate(text, reference)).collect();
        // What the encoders must see: every chain's sentences against its reference, its worded statements.
        let mut texts = Texts::default();
        let mut pairs: Vec<(Vec<&str>, &[&str])> = Vec::new();
        for (l, &(_, reference)) in located.iter().zip(chains) {
            let Ok(l) = l else { continue };
            if l.is_empty() {
                continue;
            }
            let sentences: Vec<&str> = l.iter().map(|p| p.0.sentence.as_str()).collect();
            self.request_similarity(&mut texts, &sentences, reference);
            for s in worded(l) {
                texts.add(s);
            }
            pairs.push((sentences, reference));
        }
        let known = texts.embed(self)?;
        let pair_refs: Vec<(&[&str], &[&str])> = pairs.iter().map(|(s, r)| (s.as_slice(), *r)).collect();
        let mut scores = self.cross_encoder_scores(&pair_refs)?.into_iter();
        let mut out = Vec::with_capacity(chains.len());
        for (l, &(_, reference)) in located.into_iter().zip(chains) {
            let l = match l {
                Ok(l) if !l.is_empty() => l,
                other => {
                    out.push(other.map(|_| Vec::new()));
                    continue;
                }
            };
            let sentences: Vec<&str> = l.iter().map(|p| p.0.sentence.as_str()).collect();
            let ce = scores.next();
            out.push(self.similarity_from(&known, &sentences, reference, ce.as_deref()).and_then(|sim| self.finish(l, sim, &known)));
        }
        Ok(out)
    }

    /// The chain's (pair, sentence span, statement end) in order; empty when it has no sentence.
    fn locate(&self, text: &str, reference: &[&str]) -> anyhow::Result<Vec<Located>> {
        anyhow::ensure!(!reference.is_empty(), "judging a chain needs a reference chain, found none");
        // Each pair with its sentence's span and its statement's end: located in order after each other
        // (statements after their sentences), or as the RCE layout's parser placed them.
        Ok(match self.parser.layout() {
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
        })
    }

    /// Adds what the MiniLM-based matchers embed to compare `sentences` with `reference`.
    fn request_similarity<'t>(&self, texts: &mut Texts<'t>, sentences: &[&'t str], reference: &[&'t str]) {
        if matches!(self.matcher, Judge::MinilmCosine | Judge::ExactMatch) {
            for &t in sentences.iter().chain(reference) {
                texts.add(t);
            }
        }
    }

    /// The cross-encoder's score rows for every (sentences, reference) group in one call; empty for the
    /// other matchers.
    fn cross_encoder_scores(&self, groups: &[(&[&str], &[&str])]) -> anyhow::Result<Vec<Vec<f64>>> {
        let Judge::CrossEncoder(ce) = &self.matcher else { return Ok(Vec::new()) };
        let pairs: Vec<(&str, &str)> = groups
            .iter()
            .flat_map(|&(sentences, reference)| sentences.iter().flat_map(move |&s| reference.iter().map(move |&r| (s, r))))
            .collect();
        if pairs.is_empty() {
            return Ok(groups.iter().map(|_| Vec::new()).collect());
        }
        let scores = ce.similarity(&pairs).map_err(|e| anyhow::anyhow!("cross-encoder: {e}"))?;
        anyhow::ensure!(scores.len() == pairs.len(), "cross-encoder returned {} scores for {} pairs", scores.len(), pairs.len());
        let mut rest = scores.as_slice();
        Ok(groups
            .iter()
            .map(|&(sentences, reference)| {
                let (mine, tail) = rest.split_at(sentences.len() * reference.len());
                rest = tail;
                mine.iter().map(|&x| f64::from(x)).collect()
            })
            .collect())
    }

    /// The similarity rows of `sentences` against `reference`, from embedded texts or the cross-encoder's
    /// scores for this group.
    fn similarity_from(
        &self,
        known: &Embedded,
        sentences: &[&str],
        reference: &[&str],
        ce: Option<&[f64]>,
    ) -> anyhow::Result<Vec<Vec<f64>>> {
        match &self.matcher {
            Judge::MinilmCosine => cosine_matrix(&known.all(sentences), &known.all(reference)),
            Judge::ExactMatch => Ok(cosine_matrix(&known.all(sentences), &known.all(reference))?
                .into_iter()
                .zip(sentences)
                .map(|(row, s)| row.into_iter().zip(reference).map(|(c, r)| exact_or_half(s, r, c)).collect())
                .collect()),
            Judge::CrossEncoder(_) => {
                let scores = ce.ok_or_else(|| anyhow::anyhow!("cross-encoder: no scores for this chain"))?;
                Ok(scores.chunks(reference.len().max(1)).map(<[f64]>::to_vec).collect())
            }
        }
    }

    /// Each located pair with its similarity row and its EV: a numeric statement states its value, the
    /// others go through the backward map.
    fn finish(&self, located: Vec<Located>, sim: Vec<Vec<f64>>, known: &Embedded) -> anyhow::Result<Vec<JudgedPair>> {
        let mut out = Vec::with_capacity(located.len());
        for (t, ((pair, sentence_span, statement_end), row)) in located.into_iter().zip(sim).enumerate() {
            let expressed = match pair.statement.as_deref().filter(|s| !s.trim().is_empty()) {
                Some(s) => Some(match numeric_confidence(s) {
                    Some(v) => v,
                    None => self.pool.map_embedding(t, s, known.get(s), &self.backward)?.expressed(&self.backward),
                }),
                None => None,
            };
            out.push(JudgedPair { pair, sentence_span, statement_end: expressed.and(statement_end), expressed, similarity: row });
        }
        Ok(out)
    }
}

/// A located pair: the pair, its sentence's byte span, its statement's end.
type Located = (ParsedPair, (usize, usize), Option<usize>);

/// The statements of `located` that go through the backward map (worded, not numeric).
fn worded(located: &[Located]) -> impl Iterator<Item = &str> {
    located.iter().filter_map(|p| p.0.statement.as_deref()).filter(|s| !s.trim().is_empty() && numeric_confidence(s).is_none())
}

/// Distinct texts to embed, in first-seen order.
#[derive(Default)]
struct Texts<'t> {
    index: HashMap<&'t str, usize>,
    list: Vec<&'t str>,
}

impl<'t> Texts<'t> {
    fn add(&mut self, t: &'t str) {
        if !self.index.contains_key(t) {
            self.index.insert(t, self.list.len());
            self.list.push(t);
        }
    }

    /// All of them in one encoder call.
    fn embed(self, judge: &ChainJudge) -> anyhow::Result<Embedded> {
        let vectors = judge.embed(&self.list)?;
        anyhow::ensure!(vectors.len() == self.list.len(), "MiniLM returned {} vectors for {} texts", vectors.len(), self.list.len());
        Ok(Embedded { index: self.index.into_iter().map(|(t, i)| (t.to_string(), i)).collect(), vectors })
    }
}

/// Embeddings of distinct texts, looked up by text.
struct Embedded {
    index: HashMap<String, usize>,
    vectors: Vec<Vec<f32>>,
}

impl Embedded {
    fn get(&self, t: &str) -> &[f32] {
        &self.vectors[self.index[t]]
    }

    fn all(&self, ts: &[&str]) -> Vec<Vec<f32>> {
        ts.iter().map(|t| self.get(t).to_vec()).collect()
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
