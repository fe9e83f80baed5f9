//! The four per-sentence uncertainty signals of §3.1.1: U_LNLP (eq. 3), U_MTE (eq. 4), U_TokenSAR
//! (eq. 5) and U_CLIPScore (eq. 6).
//!
//! What a sentence is, and what x is (the paper leaves both open; we chose):
//! - A response is split into sentences by the one splitter ([`super::parser::sentence_spans`]); each
//!   [`SentenceTokens`] holds exactly the generated tokens that decode to that sentence, in order
//!   ([`super::spans`]). Confidence-statement tokens are never part of a sentence (at warm-up the raw
//!   response has no statements; at RL time the stage drops the statement's tokens).
//! - Special tokens (EOS, image markers) keep their log-prob and entropy but are flagged `is_special`.
//! - x for sentence t is the prompt followed by sentences 1..t−1 (statements excluded): this is what the
//!   model conditioned on, and it is the context TokenSAR prepends to both sides of its pairs.
//! - Token `text` pieces are the decoded pieces of each token (the difference of prefix decodes, never
//!   vocabulary strings such as `ĠThe`), clipped to the sentence by [`super::spans`], so that the
//!   concatenation of a sentence's non-special pieces is the sentence as decoded, with the whitespace
//!   before it. TokenSAR builds "the text without token k" by concatenating the other pieces; a byte
//!   token that completes no character has an empty piece (deleting it changes nothing).
//! - TokenSAR pairs are (x + sep + y, x + sep + y without y_k), as lm-polygraph builds them; special
//!   tokens count in L but get similarity 1 (relevance 0); a one-token unit gets similarity 0.5.
use serde::{Deserialize, Serialize};

use super::{check_finite, ConfidenceError, ImageTextScorer, Location, PairSimilarity, Result};

/// One generated token as the generator reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: u32,
    /// The decoded piece (with its leading space, if any).
    pub text: String,
    /// log P(y_l | y_<l, x): natural log of the softmax probability of the chosen token (≤ 0).
    pub log_prob: f64,
    /// H(y_l | y_<l, x) over the full vocabulary, in nats (≥ 0).
    pub entropy: f64,
    pub is_special: bool,
}

/// The tokens of one sentence z_t (statement tokens excluded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SentenceTokens {
    pub tokens: Vec<TokenInfo>,
}

impl SentenceTokens {
    /// The sentence text: the non-special pieces concatenated.
    pub fn text(&self) -> String {
        self.tokens.iter().filter(|t| !t.is_special).map(|t| t.text.as_str()).collect()
    }
}

/// One response: its prompt text (x for the first sentence) and its sentences in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseTokens {
    pub prompt: String,
    pub sentences: Vec<SentenceTokens>,
}

/// Params of the text signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UncertaintyParams {
    /// Whether special tokens (e.g. the EOS closing the last sentence) count in U_LNLP and U_MTE.
    /// Paper: silent. We chose true, as lm-polygraph keeps the EOS in its log-likelihoods.
    pub include_special_in_likelihood: bool,
    /// TokenSAR settings.
    pub token_sar: TokenSarParams,
}

impl Default for UncertaintyParams {
    fn default() -> Self {
        UncertaintyParams { include_special_in_likelihood: true, token_sar: TokenSarParams::default() }
    }
}

/// Over which text TokenSAR measures relevance and normalizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelevanceScope {
    /// Eq. 5 with y = z_t and x = prompt + earlier sentences: deletions inside the sentence, relevance
    /// normalized over the sentence's tokens (a relevance-weighted mean NLL of the sentence).
    Sentence,
    /// lm-polygraph's claim-level TokenSAR: y = the whole response, x = the prompt; relevance
    /// normalized over the whole response, then summed over the sentence's tokens.
    Response,
}

/// TokenSAR params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSarParams {
    /// Paper: eq. 5 on "the generated text" per sentence, scope unstated. We chose `Sentence` (the literal
    /// reading, and each sentence's value does not shrink with the response length); `Response` is
    /// lm-polygraph's claim-level convention.
    pub scope: RelevanceScope,
    /// Similarity assigned to the token of a one-token unit (L = 1, special tokens counted, as in
    /// lm-polygraph; its deletion leaves nothing to compare). lm-polygraph: 0.5. We keep 0.5. Within a
    /// unit the relevances are normalized, so this only matters next to special tokens of relevance 0.
    pub single_token_similarity: f64,
    /// Text put between x and y on both sides of a pair. lm-polygraph: " " (`input + " " + decode(y)`).
    /// We keep " ".
    pub context_separator: String,
    /// Bound on the number of pairs handed to the similarity model in one call of the batched path;
    /// 0 = all deletions of the dataset in one call (default). A bound only caps memory.
    pub max_pairs_per_call: usize,
    /// Keep only the last this-many whitespace-separated words of x on both sides of a pair; None = all
    /// of x (eq. 5 as written, the default). The encoder's cost grows with the pair's length and every
    /// token deletion repeats x, so a short window makes TokenSAR several times cheaper; relevance is
    /// still measured in the local context the sentence continues.
    pub context_words: Option<usize>,
}

impl Default for TokenSarParams {
    fn default() -> Self {
        TokenSarParams {
            scope: RelevanceScope::Sentence,
            single_token_similarity: 0.5,
            context_separator: " ".into(),
            max_pairs_per_call: 0,
            context_words: None,
        }
    }
}

fn check_tokens(at: Location, sentence: &SentenceTokens) -> Result<()> {
    if sentence.tokens.is_empty() {
        return Err(ConfidenceError::Empty { at, what: "sentence", unit: "token" });
    }
    for t in &sentence.tokens {
        check_finite(at, "log_prob", t.log_prob)?;
        check_finite(at, "entropy", t.entropy)?;
        if t.log_prob > 1e-9 {
            return Err(ConfidenceError::OutOfRange { at, field: "log_prob", value: t.log_prob, expected: "≤ 0" });
        }
        if t.entropy < -1e-9 {
            return Err(ConfidenceError::OutOfRange { at, field: "entropy", value: t.entropy, expected: "≥ 0" });
        }
    }
    Ok(())
}

fn counted(sentence: &SentenceTokens, include_special: bool) -> impl Iterator<Item = &TokenInfo> {
    sentence.tokens.iter().filter(move |t| include_special || !t.is_special)
}

/// U_LNLP = exp(−(1/L) Σ log P(y_l | …)) over the sentence's tokens (eq. 3).
pub fn lnlp(at: Location, sentence: &SentenceTokens, params: &UncertaintyParams) -> Result<f64> {
    check_tokens(at, sentence)?;
    let (sum, n) = counted(sentence, params.include_special_in_likelihood).fold((0.0, 0usize), |(s, n), t| (s + t.log_prob, n + 1));
    if n == 0 {
        return Err(ConfidenceError::Empty { at, what: "sentence (special tokens excluded)", unit: "token" });
    }
    check_finite(at, "U_LNLP", (-sum / n as f64).exp())
}

/// U_MTE = (1/L) Σ H(y_l | …) over the sentence's tokens (eq. 4).
pub fn mte(at: Location, sentence: &SentenceTokens, params: &UncertaintyParams) -> Result<f64> {
    check_tokens(at, sentence)?;
    let (sum, n) = counted(sentence, params.include_special_in_likelihood).fold((0.0, 0usize), |(s, n), t| (s + t.entropy, n + 1));
    if n == 0 {
        return Err(ConfidenceError::Empty { at, what: "sentence (special tokens excluded)", unit: "token" });
    }
    Ok(sum / n as f64)
}

/// U_LNLP and U_MTE for every sentence of every response.
pub fn likelihood_signals(responses: &[ResponseTokens], params: &UncertaintyParams) -> Result<Vec<Vec<(f64, f64)>>> {
    responses
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.sentences
                .iter()
                .enumerate()
                .map(|(t, s)| {
                    let at = Location::sentence(i, t);
                    Ok((lnlp(at, s, params)?, mte(at, s, params)?))
                })
                .collect()
        })
        .collect()
}

/// One TokenSAR scoring unit: a sentence (scope Sentence) or a whole response (scope Response).
struct Unit {
    response: usize,
    /// (sentence index, token index) of every token of the unit, special ones included.
    tokens: Vec<(usize, usize)>,
    /// Similarity per token when fixed without the model (special: 1, single token: param).
    fixed: Vec<Option<f64>>,
    /// (x ∪ y, x ∪ y \ y_k) for every token whose similarity needs the model, in token order.
    pairs: Vec<(String, String)>,
}

fn plan_units(responses: &[ResponseTokens], params: &TokenSarParams) -> Result<Vec<Unit>> {
    if !(0.0..=1.0).contains(&params.single_token_similarity) {
        return Err(ConfidenceError::InvalidParams(format!(
            "token_sar.single_token_similarity must be in [0, 1], found {}",
            params.single_token_similarity
        )));
    }
    let mut units = Vec::new();
    for (i, r) in responses.iter().enumerate() {
        if r.sentences.is_empty() {
            return Err(ConfidenceError::Empty { at: Location::item(i), what: "response", unit: "sentence" });
        }
        for (t, s) in r.sentences.iter().enumerate() {
            check_tokens(Location::sentence(i, t), s)?;
        }
        match params.scope {
            RelevanceScope::Sentence => {
                let mut context = r.prompt.clone();
                for (t, s) in r.sentences.iter().enumerate() {
                    units.push(make_unit(i, &context, &[(t, s)], params));
                    context.push_str(&s.text());
                }
            }
            RelevanceScope::Response => {
                let all: Vec<(usize, &SentenceTokens)> = r.sentences.iter().enumerate().collect();
                units.push(make_unit(i, &r.prompt, &all, params));
            }
        }
    }
    Ok(units)
}

/// The last `n` whitespace-separated words of `s` (all of it for None), from the start of the first kept word.
fn last_words(s: &str, n: Option<usize>) -> &str {
    let Some(n) = n else { return s };
    if n == 0 {
        return "";
    }
    let mut seen = 0;
    let mut in_word = false;
    for (i, c) in s.char_indices().rev() {
        if c.is_whitespace() {
            if in_word {
                seen += 1;
                if seen == n {
                    return &s[i + c.len_utf8()..];
                }
            }
            in_word = false;
        } else {
            in_word = true;
        }
    }
    s
}

fn make_unit(response: usize, context: &str, sentences: &[(usize, &SentenceTokens)], params: &TokenSarParams) -> Unit {
    let context = last_words(context, params.context_words);
    let flat: Vec<(usize, usize, &TokenInfo)> =
        sentences.iter().flat_map(|&(t, s)| s.tokens.iter().enumerate().map(move |(k, tok)| (t, k, tok))).collect();
    let sep = params.context_separator.as_str();
    let full: String =
        [context, sep].into_iter().chain(flat.iter().filter(|(_, _, tok)| !tok.is_special).map(|(_, _, tok)| tok.text.as_str())).collect();
    let mut fixed = Vec::with_capacity(flat.len());
    let mut pairs = Vec::new();
    for (idx, (_, _, tok)) in flat.iter().enumerate() {
        if flat.len() == 1 {
            fixed.push(Some(params.single_token_similarity));
        } else if tok.is_special {
            fixed.push(Some(1.0)); // relevance 0
        } else {
            fixed.push(None);
            let without: String = [context, sep]
                .into_iter()
                .chain(flat.iter().enumerate().filter(|(j, (_, _, o))| *j != idx && !o.is_special).map(|(_, (_, _, o))| o.text.as_str()))
                .collect();
            pairs.push((full.clone(), without));
        }
    }
    Unit { response, tokens: flat.iter().map(|&(t, k, _)| (t, k)).collect(), fixed, pairs }
}

/// Relevance-weighted NLL per sentence of the unit, from the model similarities of its pairs.
fn finish_unit(unit: &Unit, responses: &[ResponseTokens], sims: &[f32], out: &mut [Vec<f64>]) -> Result<()> {
    let r = &responses[unit.response];
    let mut model = sims.iter();
    let mut relevance = Vec::with_capacity(unit.tokens.len());
    for (idx, fixed) in unit.fixed.iter().enumerate() {
        let sim = match fixed {
            Some(s) => *s,
            None => {
                let s = f64::from(*model.next().expect("one similarity per planned pair"));
                let (t, _) = unit.tokens[idx];
                check_finite(Location::sentence(unit.response, t), "TokenSAR similarity", s)?;
                // Cross-encoders may overshoot [0, 1] slightly; relevance must stay in [0, 1].
                s.clamp(0.0, 1.0)
            }
        };
        relevance.push(1.0 - sim);
    }
    let total: f64 = relevance.iter().sum();
    // All relevances 0 (every deletion judged harmless): fall back to uniform weights over the
    // non-special tokens (or all tokens if none), i.e. the unit's mean NLL, instead of 0/0.
    let weights: Vec<f64> = if total > 0.0 {
        relevance.iter().map(|x| x / total).collect()
    } else {
        let regular: Vec<bool> = unit.tokens.iter().map(|&(t, k)| !r.sentences[t].tokens[k].is_special).collect();
        let n = regular.iter().filter(|b| **b).count();
        if n > 0 {
            regular.iter().map(|&b| if b { 1.0 / n as f64 } else { 0.0 }).collect()
        } else {
            vec![1.0 / unit.tokens.len() as f64; unit.tokens.len()]
        }
    };
    for (&(t, k), w) in unit.tokens.iter().zip(&weights) {
        out[unit.response][t] += -r.sentences[t].tokens[k].log_prob * w;
    }
    Ok(())
}

fn empty_output(responses: &[ResponseTokens]) -> Vec<Vec<f64>> {
    responses.iter().map(|r| vec![0.0; r.sentences.len()]).collect()
}

fn call(sim: &dyn PairSimilarity, pairs: &[(String, String)]) -> Result<Vec<f32>> {
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let out = sim.similarity(&borrowed).map_err(|source| ConfidenceError::Encoder { during: "TokenSAR similarity", source })?;
    if out.len() != pairs.len() {
        return Err(ConfidenceError::Shape {
            what: "similarities returned by PairSimilarity for TokenSAR".into(),
            expected: pairs.len(),
            found: out.len(),
        });
    }
    Ok(out)
}

/// U_TokenSAR (eq. 5) for every sentence of every response, with all token deletions of the dataset
/// sent to the similarity model in one call (or in calls of `max_pairs_per_call` pairs).
pub fn token_sar_batched(responses: &[ResponseTokens], sim: &dyn PairSimilarity, params: &TokenSarParams) -> Result<Vec<Vec<f64>>> {
    let units = plan_units(responses, params)?;
    let all: Vec<(String, String)> = units.iter().flat_map(|u| u.pairs.iter().cloned()).collect();
    let mut sims = Vec::with_capacity(all.len());
    if !all.is_empty() {
        let chunk = if params.max_pairs_per_call == 0 { all.len() } else { params.max_pairs_per_call };
        for part in all.chunks(chunk) {
            sims.extend(call(sim, part)?);
        }
    }
    let mut out = empty_output(responses);
    let mut offset = 0;
    for u in &units {
        finish_unit(u, responses, &sims[offset..offset + u.pairs.len()], &mut out)?;
        offset += u.pairs.len();
    }
    Ok(out)
}

/// The same values as [`token_sar_batched`], one similarity call per unit (sentence or response), as
/// lm-polygraph does: kept to measure what batching buys.
pub fn token_sar_loop(responses: &[ResponseTokens], sim: &dyn PairSimilarity, params: &TokenSarParams) -> Result<Vec<Vec<f64>>> {
    let units = plan_units(responses, params)?;
    let mut out = empty_output(responses);
    for u in &units {
        let sims = if u.pairs.is_empty() { Vec::new() } else { call(sim, &u.pairs)? };
        finish_unit(u, responses, &sims, &mut out)?;
    }
    Ok(out)
}

/// CLIPScore params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipParams {
    /// Text prepended to each sentence before CLIP encodes it. Paper (eq. 6): none. The CLIPScore
    /// reference uses "A photo depicts ". We chose "" (the paper's formula). Its 2.5 factor is
    /// omitted: min-max normalization removes any positive scale. Truncation to CLIP's 77 tokens
    /// (keeping the end token) is the scorer's job.
    pub prefix: String,
}

/// U_CLIPScore = max(cos(v, s), 0) (eq. 6) from a raw cosine.
pub fn clip_score_from_cosine(at: Location, cosine: f64) -> Result<f64> {
    Ok(check_finite(at, "CLIP cosine", cosine)?.max(0.0))
}

/// U_CLIPScore from embeddings (cosine computed in f64).
pub fn clip_score_from_embeddings(at: Location, image: &[f32], text: &[f32]) -> Result<f64> {
    clip_score_from_cosine(at, cosine(at, image, text)?)
}

/// U_CLIPScore for every sentence of one response against its image, in one scorer call.
pub fn clip_scores<S: ImageTextScorer>(
    item: usize,
    scorer: &S,
    image: &S::Image,
    sentences: &[&str],
    params: &ClipParams,
) -> Result<Vec<f64>> {
    let texts: Vec<String> = sentences.iter().map(|s| format!("{}{}", params.prefix, s.trim())).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let cos = scorer.cosine(image, &refs).map_err(|source| ConfidenceError::Encoder { during: "CLIP image-text scoring", source })?;
    if cos.len() != refs.len() {
        return Err(ConfidenceError::Shape { what: format!("CLIP cosines for item {item}"), expected: refs.len(), found: cos.len() });
    }
    cos.iter().enumerate().map(|(t, &c)| clip_score_from_cosine(Location::sentence(item, t), f64::from(c))).collect()
}

/// Cosine of two vectors in f64; a zero vector or a length mismatch is an error.
pub fn cosine(at: Location, a: &[f32], b: &[f32]) -> Result<f64> {
    if a.len() != b.len() {
        return Err(ConfidenceError::Shape { what: format!("embedding length at {at}"), expected: a.len(), found: b.len() });
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    check_finite(at, "embedding norm", na + nb)?;
    if na == 0.0 || nb == 0.0 {
        return Err(ConfidenceError::OutOfRange { at, field: "embedding norm", value: 0.0, expected: "> 0" });
    }
    Ok(dot / (na.sqrt() * nb.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::last_words;

    #[test]
    fn last_words_keeps_the_tail_from_a_word_start() {
        assert_eq!(last_words("a bb  ccc\nd", Some(2)), "ccc\nd");
        assert_eq!(last_words("a bb ccc d", Some(2)), "ccc d");
        assert_eq!(last_words("a bb ccc d ", Some(1)), "d ");
        assert_eq!(last_words("a bb", Some(5)), "a bb");
        assert_eq!(last_words("a bb", None), "a bb");
        assert_eq!(last_words("a bb", Some(0)), "");
        assert_eq!(last_words("héllo wörld", Some(1)), "wörld");
    }
}
