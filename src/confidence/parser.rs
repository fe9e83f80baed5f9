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
//! How sentences are split ([`sentence_spans`], the one splitter of the project: the `generate` worker
//! splits raw responses with it before scoring, PPO and eval split parsed responses with it):
//! - end-of-text markers a tokenizer left in the text (`</s>`, `<|im_end|>`, `<|endoftext|>`, …, the
//!   `special_markers` param) end a sentence and never belong to one;
//! - Unicode sentence boundaries (UAX #29) inside the text between markers, so decimals ("3.5") and
//!   closing quotes (`"Stop."`) stay in their sentence;
//! - a full stop glued to the next sentence ("…is blue.I am sure.") ends a sentence when a lower-case
//!   word of two or more letters precedes it and a capital follows (UAX #29 keeps "e.g.The" together);
//! - a sentence ending in one of `abbreviations` ("Dr.", "e.g.") is joined to the next;
//! - pieces with no letter or digit are dropped; leading/trailing whitespace and separators (`,;:` and
//!   dashes) are trimmed, and leading pictographs (emoji), so an emoji between sentences belongs to
//!   neither (UAX #29 would give it to the second).
//!
//! Numeric statements ("Confidence: 0.8.", "confidence 75%", or a bare "0.75." / ".75." / "75%" right
//! after a sentence) are found by their value, whatever the pool, and [`numeric_confidence`] reads the
//! value back (the backward map of a numeric statement is its number, not a pool lookup).
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
    /// End-of-text and role markers that end a sentence and are never part of one (a tokenizer that
    /// does not treat them as special tokens leaves them in the decoded text).
    pub special_markers: Vec<String>,
    /// Where the statements are: after their sentences (MMBoundary, default) or all after the response
    /// (the RCE baseline, [`Layout::AfterResponse`]). Left out of the params (and so of every cache key)
    /// when it is the default.
    #[serde(skip_serializing_if = "Layout::is_inline")]
    pub layout: Layout,
}

/// Where a response's confidence statements are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Each statement right after its sentence, `[z_1, c_1, …, z_T, c_T]` (MMBoundary).
    #[default]
    Inline,
    /// The whole chain first, then one block with every sentence's statement, numbered by sentence
    /// ([`render_after_response`], [`Parser::parse_after_response`]): the RCE baseline's format.
    AfterResponse,
}

impl Layout {
    fn is_inline(&self) -> bool {
        *self == Layout::Inline
    }
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
            special_markers: strings(&[
                "</s>",
                "<s>",
                "<|im_end|>",
                "<|im_start|>",
                "<|endoftext|>",
                "<|eot_id|>",
                "<|end_of_text|>",
                "<|begin_of_text|>",
                "<end_of_turn>",
                "<start_of_turn>",
                "<|end|>",
                "<|assistant|>",
                "<|user|>",
                "<|image_pad|>",
                "<|vision_start|>",
                "<|vision_end|>",
                "<image>",
            ]),
            layout: Layout::Inline,
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

/// Emoji and other pictographs (with their joiners, variation selectors and skin tones): no sentence
/// starts with one (UAX #29 gives an emoji between two sentences to the second).
fn is_pictograph(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2B00..=0x2BFF | 0x2300..=0x23FF | 0xFE00..=0xFE0F | 0x200D | 0x20E3 | 0xE0020..=0xE007F)
}

fn is_trimmed(c: char) -> bool {
    c.is_whitespace() || SEPARATORS.contains(&c)
}

/// The byte range of `text[lo..hi]` without leading/trailing whitespace and separators and leading
/// pictographs; None when no letter or digit is left.
fn clean_span(text: &str, lo: usize, hi: usize) -> Option<(usize, usize)> {
    let piece = &text[lo..hi];
    let start = piece.len() - piece.trim_start_matches(|c| is_trimmed(c) || is_pictograph(c)).len();
    let t = piece[start..].trim_end_matches(is_trimmed);
    t.chars().any(char::is_alphanumeric).then_some((lo + start, lo + start + t.len()))
}

fn clean_piece(piece: &str) -> Option<String> {
    clean_span(piece, 0, piece.len()).map(|(a, b)| piece[a..b].to_string())
}

/// Byte ranges of `text` between special markers (the markers themselves excluded).
fn marker_free_ranges(text: &str, markers: &[String]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut lo = 0;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        match markers.iter().filter(|m| !m.is_empty() && rest.starts_with(m.as_str())).map(String::len).max() {
            Some(n) => {
                out.push((lo, i));
                i += n;
                lo = i;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    out.push((lo, text.len()));
    out.retain(|&(a, b)| b > a);
    out
}

/// Byte offsets (just past the full stop) inside `s` where a full stop is glued to the next sentence:
/// a lower-case word of at least two letters, ".", then a capital letter ("blue.I am sure").
fn glued_breaks(s: &str) -> Vec<usize> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut out = Vec::new();
    for k in 2..chars.len().saturating_sub(1) {
        let (at, c) = chars[k];
        if c != '.' || !chars[k + 1].1.is_uppercase() {
            continue;
        }
        let word: Vec<char> = chars[..k].iter().rev().map(|&(_, c)| c).take_while(|c| c.is_alphabetic()).collect();
        if word.len() >= 2 && word.iter().all(|c| c.is_lowercase()) {
            out.push(at + 1);
        }
    }
    out
}

/// Byte ranges of the sentences of `text` (before cleaning): see the module doc for the rules.
fn sentence_ranges(text: &str, params: &ParserParams) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (lo, hi) in marker_free_ranges(text, &params.special_markers) {
        let mut join_next = false;
        for (i, s) in text[lo..hi].split_sentence_bound_indices() {
            let mut cuts = vec![0];
            cuts.extend(glued_breaks(s));
            cuts.push(s.len());
            for w in cuts.windows(2) {
                let (a, b) = (lo + i + w[0], lo + i + w[1]);
                match out.last_mut() {
                    Some(last) if join_next => last.1 = b,
                    _ => out.push((a, b)),
                }
                let last_token = text[a..b].split_whitespace().last().unwrap_or("").trim_start_matches(|c: char| !c.is_alphanumeric());
                join_next = params.abbreviations.iter().any(|ab| ab == last_token);
            }
        }
    }
    out
}

/// The one sentence splitter: byte spans of the cleaned sentences of `text` (see the module doc), in
/// order and non-overlapping. `text[a..b]` is the sentence; what lies between spans belongs to none.
pub fn sentence_spans(text: &str, params: &ParserParams) -> Vec<(usize, usize)> {
    sentence_ranges(text, params).into_iter().filter_map(|(a, b)| clean_span(text, a, b)).collect()
}

/// The sentences of `text`, split and cleaned as [`Parser::parse`] does (no statement detection), with
/// the default params: how the generator splits a raw response into the sentences it scores.
pub fn split_sentences(text: &str) -> Vec<String> {
    sentence_spans(text, &ParserParams::default()).into_iter().map(|(a, b)| text[a..b].to_string()).collect()
}

/// A number as models write confidences: "0.8", ".75", "1.0", "75" (digits, one optional point).
/// Returns (value, byte length).
fn scan_number(s: &str) -> Option<(f64, usize)> {
    let b = s.as_bytes();
    let mut n = 0;
    while n < b.len() && b[n].is_ascii_digit() {
        n += 1;
    }
    let int_digits = n;
    if n < b.len() && b[n] == b'.' && n + 1 < b.len() && b[n + 1].is_ascii_digit() {
        n += 1;
        while n < b.len() && b[n].is_ascii_digit() {
            n += 1;
        }
    }
    if n == 0 || (int_digits == 0 && n < 2) {
        return None;
    }
    // A number glued to a letter or digit ("0.8x", "3.5.6") is not a confidence.
    if s[n..].chars().next().is_some_and(|c| c.is_alphanumeric()) {
        return None;
    }
    s[..n].parse::<f64>().ok().map(|v| (v, n))
}

/// A confidence value written after a number: "%" → /100, "/10" or "/100" → divided, a bare value in
/// [0, 1] as is, a bare integer in (1, 10] on SaySelf's 0–10 scale, in (10, 100] as a percentage (only
/// when `labeled`). Returns (value in [0, 1], bytes consumed after the number).
fn scale(value: f64, is_decimal: bool, rest: &str, labeled: bool) -> Option<(f64, usize)> {
    let after_spaces = rest.len() - rest.trim_start_matches(' ').len();
    let r = &rest[after_spaces..];
    let (v, used) = if r.starts_with('%') {
        (value / 100.0, after_spaces + 1)
    } else if let Some(d) = r.strip_prefix('/').and_then(|x| scan_number(x.trim_start())) {
        let used = after_spaces + 1 + (r[1..].len() - r[1..].trim_start().len()) + d.1;
        if d.0 <= 0.0 {
            return None;
        }
        (value / d.0, used)
    } else if value <= 1.0 && (is_decimal || labeled) {
        (value, 0)
    } else if labeled && !is_decimal && value <= 10.0 {
        (value / 10.0, 0)
    } else if labeled && !is_decimal && value <= 100.0 {
        (value / 100.0, 0)
    } else {
        return None;
    };
    (0.0..=1.0).contains(&v).then_some((v, used))
}

/// Labels that introduce a numeric confidence ("Confidence: 0.8", "confidence level is 75%").
const NUMERIC_LABELS: &[&str] = &["confidence", "certainty"];
const LABEL_FILLERS: &[&str] = &["level", "score", "is", "of", "="];

/// A labeled number at the start of `s` ("Confidence: 0.8", "confidence 75%"): (value, byte length).
fn scan_labeled(s: &str) -> Option<(f64, usize)> {
    let head: String = s.chars().take(40).collect();
    let lower = head.to_lowercase();
    if lower.len() != head.len() {
        return None;
    }
    let label = NUMERIC_LABELS.iter().find(|l| lower.starts_with(*l))?;
    let mut i = label.len();
    if lower[i..].chars().next().is_some_and(char::is_alphanumeric) {
        return None;
    }
    loop {
        let skip = lower[i..].len() - lower[i..].trim_start_matches([' ', ':', '\t']).len();
        i += skip;
        match LABEL_FILLERS
            .iter()
            .find(|f| lower[i..].starts_with(*f) && !lower[i + f.len()..].chars().next().is_some_and(char::is_alphabetic))
        {
            Some(f) => i += f.len(),
            None => break,
        }
    }
    let (v, n) = scan_number(&s[i..])?;
    let (v, used) = scale(v, s[i..i + n].contains('.'), &s[i + n..], true)?;
    Some((v, i + n + used))
}

/// A bare number at the start of `s` that reads as a confidence: a decimal in [0, 1] ("0.75", ".75",
/// "1.0") or a percentage ("75%"). Returns (value, byte length).
fn scan_bare(s: &str) -> Option<(f64, usize)> {
    let (v, n) = scan_number(s)?;
    let decimal = s[..n].contains('.');
    let (v, used) = scale(v, decimal, &s[n..], false)?;
    if !decimal && used == 0 {
        return None;
    }
    Some((v, n + used))
}

/// The confidence on [0, 1] a numeric statement states ("Confidence: 0.8.", "confidence 75%", "0.75.",
/// ".75", "75%", "Confidence: 8/10"); None for a statement that is not one number with its label.
pub fn numeric_confidence(statement: &str) -> Option<f64> {
    let s = statement.trim().trim_end_matches(is_terminator).trim_end();
    // "(Confidence: 80/100)", as the DPV baseline's prompt asks for it: the brackets are not part of it.
    let s = match s.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        Some(inner) => inner.trim(),
        None => s,
    };
    let (v, n) = scan_labeled(s).or_else(|| scan_bare(s))?;
    (n == s.len()).then_some(v)
}

/// Byte spans of numeric statements in `text`: a labeled number anywhere, or a bare one right after a
/// sentence's terminator; each span runs over the terminators that follow it.
fn numeric_spans(text: &str) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, c) in text.char_indices() {
        if out.last().is_some_and(|&(_, e)| i < e) {
            continue;
        }
        let prev = text[..i].chars().next_back();
        if prev.is_some_and(|p| p.is_alphanumeric() || (p == '.' && !c.is_alphabetic())) {
            continue;
        }
        let hit = if c.is_alphabetic() {
            scan_labeled(&text[i..])
        } else if c.is_ascii_digit() || c == '.' {
            // Bare: the previous non-space character ends a sentence.
            let before = text[..i].trim_end_matches([' ', '\t', '\n']);
            let after_terminator = before.chars().next_back().is_some_and(is_terminator) && before.len() < i;
            if after_terminator {
                scan_bare(&text[i..]).filter(|&(_, n)| {
                    // …and the number closes its sentence: only terminators, then space, a marker or the end.
                    let rest = text[i + n..].trim_start_matches(is_terminator);
                    rest.is_empty() || rest.starts_with(char::is_whitespace) || rest.starts_with('<')
                })
            } else {
                None
            }
        } else {
            None
        };
        if let Some((_, n)) = hit {
            // A statement in brackets, "(Confidence: 80/100)", takes its brackets with it.
            let open = text[..i].trim_end_matches([' ', '\t']).strip_suffix('(').map(str::len);
            let after = &text[i + n..];
            let close = after.trim_start_matches([' ', '\t']).starts_with(')').then(|| i + n + after.find(')').unwrap_or(0) + 1);
            let (start, end) = match (open, close) {
                (Some(o), Some(c)) if out.last().is_none_or(|&(_, e)| e <= o) => (o, c),
                _ => (i, i + n),
            };
            out.push((start, extend_over_terminators(text, end)));
        }
    }
    out
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

    /// Where this parser expects the statements.
    pub fn layout(&self) -> Layout {
        self.params.layout
    }

    /// Parses one response in the parser's layout ([`ParserParams::layout`]).
    pub fn parse(&self, text: &str) -> ParsedResponse {
        match self.params.layout {
            Layout::Inline => self.parse_inline(text),
            Layout::AfterResponse => self.parse_after_response(text).parsed,
        }
    }

    /// Parses a response in the RCE layout ([`Layout::AfterResponse`]): `<chain>` then the block
    /// `Confidence: [1] <statement> [2] <statement> …` ([`render_after_response`]).
    ///
    /// - The block opens at the LAST "Confidence:" (ASCII case-insensitive, starting a word) of the text;
    ///   without one, the whole text is the chain and no sentence has a statement.
    /// - The chain is the text before the block, split by [`sentence_spans`] (no statement detection in
    ///   it: in this layout a statement is only what the block holds).
    /// - The block ends at the first special marker (`</s>`, …). Inside it, `[k]` (k = 1, 2, …, ASCII
    ///   digits) opens the entry of sentence k, which runs to the next `[j]` or the block's end, trimmed.
    /// - Missing-confidence rule: a sentence whose number has no entry (or an empty one) gets `None`, as an
    ///   inline sentence without statement (eval: `missing_confidence`; PPO: `rewards.missing_statement`).
    /// - An entry whose number is 0, beyond the chain's sentences, or already taken (the first one wins),
    ///   and text between the label and the first `[k]`, go to [`ParsedResponse::dropped_statements`].
    pub fn parse_after_response(&self, text: &str) -> LocatedResponse {
        let start = after_response_block(text).unwrap_or(text.len());
        let sentence_spans = sentence_spans(&text[..start], &self.params);
        let n = sentence_spans.len();
        let mut statement_spans: Vec<Option<(usize, usize)>> = vec![None; n];
        let mut dropped = Vec::new();
        if start < text.len() {
            let body = start + AFTER_RESPONSE_LABEL.len();
            let end =
                marker_free_ranges(&text[body..], &self.params.special_markers)
                    .first()
                    .map_or(body, |&(a, b)| if a == 0 { body + b } else { body });
            let markers = entry_markers(&text[body..end]);
            let trimmed = |a: usize, b: usize| -> Option<(usize, usize)> {
                let piece = &text[a..b];
                let lead = piece.len() - piece.trim_start().len();
                let t = piece.trim();
                (!t.is_empty()).then_some((a + lead, a + lead + t.len()))
            };
            let first = markers.first().map_or(end, |m| body + m.0);
            if let Some((a, b)) = trimmed(body, first) {
                dropped.push(text[a..b].to_string());
            }
            for (j, &(_, after, k)) in markers.iter().enumerate() {
                let stop = markers.get(j + 1).map_or(end, |m| body + m.0);
                let Some(span) = trimmed(body + after, stop) else { continue };
                match k.checked_sub(1).and_then(|t| statement_spans.get_mut(t)) {
                    Some(slot) if slot.is_none() => *slot = Some(span),
                    _ => dropped.push(text[span.0..span.1].to_string()),
                }
            }
        }
        let pairs = sentence_spans
            .iter()
            .zip(&statement_spans)
            .map(|(&(a, b), st)| ParsedPair { sentence: text[a..b].to_string(), statement: st.map(|(c, d)| text[c..d].to_string()) })
            .collect();
        LocatedResponse { parsed: ParsedResponse { pairs, dropped_statements: dropped }, sentence_spans, statement_spans }
    }

    /// Parses one response with each statement after its sentence ([`Layout::Inline`]).
    fn parse_inline(&self, text: &str) -> ParsedResponse {
        let sentences = sentence_ranges(text, &self.params);
        let words = words_in(text, 0, text.len());
        let sentence_of: Vec<usize> =
            words.iter().map(|w| sentences.iter().position(|&(s, e)| w.start >= s && w.start < e).unwrap_or(0)).collect();
        // Pool statements, then numeric statements where no pool statement is.
        let mut pool = self.pool_spans(text, &words, &sentence_of);
        let numeric: Vec<(usize, usize)> =
            numeric_spans(text).into_iter().filter(|&(a, b)| !pool.iter().any(|&(s, e)| a < e && s < b)).collect();
        pool.extend(numeric);
        pool.sort_unstable();

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

/// The label that opens the statement block of [`Layout::AfterResponse`].
pub const AFTER_RESPONSE_LABEL: &str = "Confidence:";

/// A response of the [`Layout::AfterResponse`] read back, with where each part lies in the text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocatedResponse {
    pub parsed: ParsedResponse,
    /// Byte span of each pair's sentence.
    pub sentence_spans: Vec<(usize, usize)>,
    /// Byte span of each pair's statement (None without one).
    pub statement_spans: Vec<Option<(usize, usize)>>,
}

/// Byte index of the block's label: its last ASCII-case-insensitive occurrence that starts a word.
fn after_response_block(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let label = AFTER_RESPONSE_LABEL.to_ascii_lowercase();
    lower.match_indices(&label).map(|(i, _)| i).filter(|&i| !text[..i].chars().next_back().is_some_and(char::is_alphanumeric)).last()
}

/// The `[k]` markers of a statement block: (byte start, byte end, k), in order.
fn entry_markers(block: &str) -> Vec<(usize, usize, usize)> {
    let b = block.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits > 0 && b.get(i + 1 + digits) == Some(&b']') {
                if let Ok(k) = block[i + 1..i + 1 + digits].parse::<usize>() {
                    out.push((i, i + digits + 2, k));
                    i += digits + 2;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// The RCE baseline's target ([`Layout::AfterResponse`]): the chain's sentences as [`render`] writes them
/// without statements, then a new line and `Confidence: [1] <statement> [2] <statement> …`, the k-th
/// entry holding sentence k's statement in the pool's words (each ending with a terminator). Sentences
/// without a statement have no entry; a chain with none has no block.
pub fn render_after_response(pairs: &[ParsedPair]) -> String {
    let chain: Vec<ParsedPair> = pairs.iter().map(|p| ParsedPair { sentence: p.sentence.clone(), statement: None }).collect();
    let mut out = render(&chain);
    let entries: Vec<String> = pairs
        .iter()
        .enumerate()
        .filter_map(|(k, p)| {
            p.statement.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(|s| format!("[{}] {}", k + 1, with_stop(s)))
        })
        .collect();
    if !entries.is_empty() {
        out.push('\n');
        out.push_str(AFTER_RESPONSE_LABEL);
        out.push(' ');
        out.push_str(&entries.join(" "));
    }
    out
}

fn with_stop(s: &str) -> String {
    if s.ends_with(is_terminator) {
        s.to_string()
    } else {
        format!("{s}.")
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
