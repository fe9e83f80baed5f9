//! Splits a generated response `[z_1, c_1, …, z_T, c_T]` into (sentence, statement) pairs, and renders
//! pairs back into text (the SFT targets). Never panics, whatever the model emitted.
//!
//! How statements are found (paper: silent; we chose, in this order):
//! 1. Pool statements, matched word by word (case-insensitive, ’ = '), anywhere in the text; a
//!    connective just before the match ("…, but I'm unsure about this.") joins the statement.
//! 2. Paraphrases: a clause that opens with a connective (and, but, though, …) and runs to the next
//!    comma/semicolon or the sentence end, at most `max_statement_words` words, containing a cue word
//!    (sure, certain, confident, doubt, …); or a whole short sentence opening with a first-person or
//!    deictic word (I, I'm, this, …) that contains a cue word.
//!
//! How sentences are split: Unicode sentence boundaries (UAX #29) over the text outside statements;
//! pieces with no letter or digit are dropped; leading/trailing separators (`,;:` and dashes) are trimmed.
//!
//! Pairing rules for messy output: a statement attaches to the sentence just before it; a statement with
//! no sentence before it since the last statement (two in a row, or one at the very start) is dropped and
//! reported in [`ParsedResponse::dropped_statements`]; a sentence with no statement (missing, or trailing
//! text) gets `None`; text after a mid-sentence statement starts a new sentence.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

use super::statements::StatementPool;
use super::{ConfidenceError, Result};

/// Parser params (the word lists of the paraphrase detector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParserParams {
    /// Words that open an appended confidence clause.
    pub connectives: Vec<String>,
    /// Words that open a stand-alone confidence sentence.
    pub openers: Vec<String>,
    /// Words that mark a clause as a confidence statement.
    pub cue_words: Vec<String>,
    /// Longest paraphrased statement, in words.
    pub max_statement_words: usize,
    /// A connective clause longer than this many words must also hold one of `openers` (a self- or
    /// deictic reference: "…, and I think this holds up") to count, which keeps content clauses such as
    /// "with colors designated for certain lines" out. Checked on 12,545 annotated chain sentences of
    /// the paper's data: 3 are still taken for statements.
    pub short_clause_words: usize,
    /// Tokens after which a full stop does not end a sentence (UAX #29 knows no abbreviations).
    pub abbreviations: Vec<String>,
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

impl Default for ParserParams {
    fn default() -> Self {
        ParserParams {
            connectives: strings(&["and", "but", "though", "although", "yet", "with", "while", "albeit"]),
            openers: strings(&["i", "i'm", "i've", "i'd", "my", "this", "that", "it", "it's", "there's"]),
            cue_words: strings(&[
                "sure",
                "unsure",
                "certain",
                "certainty",
                "certainly",
                "uncertain",
                "uncertainty",
                "confident",
                "confidence",
                "doubt",
                "doubts",
                "doubtful",
                "confirm",
                "confirmation",
                "guarantee",
                "reliable",
                "unreliable",
                "trustworthy",
                "hesitation",
                "hesitant",
                "questionable",
                "unclear",
                "imprecise",
                "undoubtedly",
                "unquestionably",
                "convinced",
                "verify",
                "verification",
                "checking",
                "tentative",
            ]),
            max_statement_words: 10,
            short_clause_words: 4,
            abbreviations: strings(&[
                "Mr.", "Mrs.", "Ms.", "Dr.", "St.", "Ft.", "Mt.", "Jr.", "Sr.", "vs.", "e.g.", "i.e.", "U.S.", "U.K.", "No.", "approx.",
                "Fig.",
            ]),
        }
    }
}

/// One step of a parsed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedPair {
    pub sentence: String,
    pub statement: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ParsedResponse {
    pub pairs: Vec<ParsedPair>,
    /// Statements that had no sentence of their own (two in a row, or at the start).
    pub dropped_statements: Vec<String>,
}

struct Word {
    start: usize,
    end: usize,
    norm: String,
}

fn normalize_word(w: &str) -> String {
    w.to_lowercase().replace(['’', 'ʼ', '‘'], "'")
}

fn words_in(text: &str, lo: usize, hi: usize) -> Vec<Word> {
    text[lo..hi]
        .split_word_bound_indices()
        .filter(|(_, w)| w.chars().any(char::is_alphanumeric))
        .map(|(i, w)| Word { start: lo + i, end: lo + i + w.len(), norm: normalize_word(w) })
        .collect()
}

const TERMINATORS: &[char] = &['.', '!', '?', '…', '。', '！', '？'];
const SEPARATORS: &[char] = &[',', ';', ':', '-', '–', '—', '、', '，'];

fn is_terminator(c: char) -> bool {
    TERMINATORS.contains(&c)
}

/// Byte index just past any terminator characters that directly follow `end`.
fn extend_over_terminators(text: &str, end: usize) -> usize {
    end + text[end..].chars().take_while(|&c| is_terminator(c)).map(char::len_utf8).sum::<usize>()
}

fn clean_piece(piece: &str) -> Option<String> {
    let t = piece.trim_matches(|c: char| c.is_whitespace() || SEPARATORS.contains(&c));
    t.chars().any(char::is_alphanumeric).then(|| t.to_string())
}

/// Byte ranges of the UAX #29 sentences of `text`, a sentence ending in one of `abbreviations` joined
/// to the next.
fn sentence_ranges(text: &str, abbreviations: &[String]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut join_next = false;
    for (i, s) in text.split_sentence_bound_indices() {
        match out.last_mut() {
            Some(last) if join_next => last.1 = i + s.len(),
            _ => out.push((i, i + s.len())),
        }
        let last_token = s.split_whitespace().last().unwrap_or("").trim_start_matches(|c: char| !c.is_alphanumeric());
        join_next = abbreviations.iter().any(|a| a == last_token);
    }
    out
}

/// The sentences of `text`, split and cleaned as [`Parser::parse`] does (no statement detection), with
/// the default abbreviations: how the generator splits a raw response into the sentences it scores.
pub fn split_sentences(text: &str) -> Vec<String> {
    sentence_ranges(text, &ParserParams::default().abbreviations).into_iter().filter_map(|(a, b)| clean_piece(&text[a..b])).collect()
}

/// The statement finder, built once per pool.
#[derive(Debug, Clone)]
pub struct Parser {
    params: ParserParams,
    /// Pool statements as normalized word sequences, indexed by their first word.
    patterns: HashMap<String, Vec<Vec<String>>>,
}

impl Parser {
    pub fn new(pool: &StatementPool, params: ParserParams) -> Self {
        let mut patterns: HashMap<String, Vec<Vec<String>>> = HashMap::new();
        for (_, s) in pool.iter() {
            let seq: Vec<String> = words_in(s, 0, s.len()).into_iter().map(|w| w.norm).collect();
            if let Some(first) = seq.first() {
                patterns.entry(first.clone()).or_default().push(seq);
            }
        }
        // Longest first, so the longest pool statement wins at a position.
        patterns.values_mut().for_each(|v| v.sort_by_key(|p| std::cmp::Reverse(p.len())));
        let params = ParserParams {
            connectives: params.connectives.iter().map(|w| normalize_word(w)).collect(),
            openers: params.openers.iter().map(|w| normalize_word(w)).collect(),
            cue_words: params.cue_words.iter().map(|w| normalize_word(w)).collect(),
            ..params
        };
        Parser { params, patterns }
    }

    fn is_connective(&self, w: &str) -> bool {
        self.params.connectives.iter().any(|c| c == w)
    }

    fn has_cue(&self, ws: &[Word]) -> bool {
        ws.iter().any(|w| self.params.cue_words.contains(&w.norm))
    }

    /// Byte spans of pool statements, non-overlapping, in text order.
    fn pool_spans(&self, text: &str, words: &[Word], sentence_of: &[usize]) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let hit = self.patterns.get(&words[i].norm).and_then(|cands| {
                cands.iter().find(|p| i + p.len() <= words.len() && p.iter().zip(&words[i..]).all(|(a, b)| *a == b.norm))
            });
            match hit {
                Some(p) => {
                    let last = i + p.len() - 1;
                    let mut start = words[i].start;
                    if !self.is_connective(&p[0])
                        && i > 0
                        && self.is_connective(&words[i - 1].norm)
                        && sentence_of[i - 1] == sentence_of[i]
                        && spans.last().is_none_or(|&(_, e)| e <= words[i - 1].start)
                    {
                        start = words[i - 1].start;
                    }
                    spans.push((start, extend_over_terminators(text, words[last].end)));
                    i = last + 1;
                }
                None => i += 1,
            }
        }
        spans
    }

    /// Paraphrased statements inside the sentence piece [lo, hi) (which holds no pool statement).
    fn cue_spans(&self, text: &str, lo: usize, hi: usize, at_sentence_start: bool, out: &mut Vec<(usize, usize)>) {
        let ws = words_in(text, lo, hi);
        if ws.is_empty() {
            return;
        }
        let max = self.params.max_statement_words;
        if at_sentence_start && self.params.openers.iter().any(|o| *o == ws[0].norm) && ws.len() <= max && self.has_cue(&ws) {
            out.push((ws[0].start, extend_over_terminators(text, ws[ws.len() - 1].end)));
            return;
        }
        let mut c = 0;
        while c < ws.len() {
            if !self.is_connective(&ws[c].norm) {
                c += 1;
                continue;
            }
            // The clause runs to the next comma/semicolon between words, or to the piece's end.
            let mut e = c + 1;
            while e < ws.len() && !text[ws[e - 1].end..ws[e].start].contains([',', ';', '，']) {
                e += 1;
            }
            let clause = &ws[c..e];
            let referent = clause.len() <= self.params.short_clause_words || clause.iter().any(|w| self.params.openers.contains(&w.norm));
            if clause.len() <= max && referent && self.has_cue(clause) {
                out.push((ws[c].start, extend_over_terminators(text, ws[e - 1].end)));
                c = e;
            } else {
                c += 1;
            }
        }
    }

    /// Parses one response.
    pub fn parse(&self, text: &str) -> ParsedResponse {
        let sentences = sentence_ranges(text, &self.params.abbreviations);
        let words = words_in(text, 0, text.len());
        let sentence_of: Vec<usize> =
            words.iter().map(|w| sentences.iter().position(|&(s, e)| w.start >= s && w.start < e).unwrap_or(0)).collect();
        let pool = self.pool_spans(text, &words, &sentence_of);

        // Paraphrases in the sentence pieces left between pool statements.
        let mut spans = pool.clone();
        for &(s, e) in &sentences {
            let mut lo = s;
            let mut at_start = true;
            for &(ps, pe) in pool.iter().filter(|&&(ps, pe)| pe > s && ps < e) {
                if ps > lo {
                    self.cue_spans(text, lo, ps, at_start, &mut spans);
                }
                lo = lo.max(pe);
                at_start = false;
            }
            if lo < e {
                self.cue_spans(text, lo, e, at_start, &mut spans);
            }
        }
        spans.sort_unstable();

        let mut out = ParsedResponse::default();
        let mut pos = 0;
        let push_text = |out: &mut ParsedResponse, lo: usize, hi: usize| {
            for &(s, e) in &sentences {
                let (a, b) = (s.max(lo), e.min(hi));
                if a < b {
                    if let Some(sentence) = clean_piece(&text[a..b]) {
                        out.pairs.push(ParsedPair { sentence, statement: None });
                    }
                }
            }
        };
        for (s, e) in spans {
            if s < pos {
                continue; // overlapping span (cannot happen by construction; skip rather than panic)
            }
            push_text(&mut out, pos, s);
            let statement = text[s..e].trim().to_string();
            match out.pairs.last_mut() {
                Some(p) if p.statement.is_none() => p.statement = Some(statement),
                _ => out.dropped_statements.push(statement),
            }
            pos = e;
        }
        push_text(&mut out, pos, text.len());
        out
    }
}

/// The warm-up target of one response (§3.1.2): each sentence followed by a statement drawn from its
/// level's pool ([`StatementPool::sample`], keyed by `item_key` and the sentence index).
pub fn interleave(pool: &StatementPool, seed: u64, item_key: &str, sentences: &[String], levels: &[u8]) -> Result<Vec<ParsedPair>> {
    if sentences.len() != levels.len() {
        return Err(ConfidenceError::Shape {
            what: format!("levels of item {item_key:?} (one per sentence)"),
            expected: sentences.len(),
            found: levels.len(),
        });
    }
    sentences
        .iter()
        .zip(levels)
        .enumerate()
        .map(|(t, (sentence, &level))| {
            Ok(ParsedPair { sentence: sentence.clone(), statement: Some(pool.sample(level, seed, item_key, t)?.to_string()) })
        })
        .collect()
}

/// Renders pairs as the model should write them: a statement opening in lower case ("and I believe
/// this is right.") replaces the sentence's final punctuation; one opening in upper case follows the
/// sentence as its own sentence. Every sentence and statement ends with a terminator.
pub fn render(pairs: &[ParsedPair]) -> String {
    let mut parts = Vec::with_capacity(pairs.len());
    for p in pairs {
        let sentence = p.sentence.trim();
        let with_stop = |s: &str| {
            if s.ends_with(is_terminator) {
                s.to_string()
            } else {
                format!("{s}.")
            }
        };
        match p.statement.as_deref().map(str::trim) {
            Some(c) if c.chars().next().is_some_and(char::is_lowercase) => {
                parts.push(format!("{} {}", sentence.trim_end_matches(is_terminator), with_stop(c)))
            }
            Some(c) => parts.push(format!("{} {}", with_stop(sentence), with_stop(c))),
            None => parts.push(with_stop(sentence)),
        }
    }
    parts.join(" ")
}
