//! Where each sentence of a decoded response sits among the generated tokens, and which text each of
//! its tokens contributes: the bridge from a generator's output (decoded text, one decoded piece per
//! token, the pieces concatenating to the text) to the [`SentenceTokens`] the signals read.
//!
//! - Token k covers the bytes `[end_{k−1}, end_k)` of the text, `end_k` the length of pieces 0..=k.
//! - A sentence span `[a, b)` (from [`super::parser::sentence_spans`], or the parser's pairs) is made of
//!   the tokens from the first whose bytes reach past `a` to the first whose bytes reach `b`.
//! - Each of those tokens contributes its piece clipped to `[s, b)`, where `s` is where the sentence's
//!   first token starts or, if earlier, where the whitespace directly before the sentence starts (so the
//!   sentence keeps the space or blank line that precedes it in the decoded text, even when a
//!   whitespace-only token carries it), but never before `floor` (the end of the previous sentence or
//!   statement). The concatenation of a sentence's pieces is therefore the decoded text `text[s..b]`,
//!   and the concatenation over a response's sentences is the decoded response without its statements
//!   (and without what the splitter trims between sentences, such as an emoji).
//! - A span that no token reaches, or a sentence whose pieces do not rebuild it, is an error naming the
//!   item and the sentence.
use super::uncertainty::{SentenceTokens, TokenInfo};
use super::{ConfidenceError, Location, Result};

/// Byte end of each token in the text: the cumulative lengths of the pieces.
pub fn token_ends<S: AsRef<str>>(pieces: &[S]) -> Vec<usize> {
    pieces
        .iter()
        .scan(0usize, |acc, p| {
            *acc += p.as_ref().len();
            Some(*acc)
        })
        .collect()
}

/// The token range `[first, last]` (inclusive) that covers the byte span `[a, b)`.
pub fn token_range(at: Location, ends: &[usize], span: (usize, usize)) -> Result<(usize, usize)> {
    let (a, b) = span;
    let unlocatable = |why: String| ConfidenceError::Span { at, span, why };
    if a >= b {
        return Err(unlocatable("the span is empty".into()));
    }
    let first = ends.iter().position(|&e| e > a).ok_or_else(|| unlocatable(format!("no token reaches byte {a}")))?;
    let last = ends
        .iter()
        .position(|&e| e >= b)
        .ok_or_else(|| unlocatable(format!("the tokens' decoded text ends at byte {}", ends.last().copied().unwrap_or(0))))?;
    Ok((first, last.max(first)))
}

/// One token as the generator reported it, before it is assigned to a sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken<'a> {
    pub id: u32,
    /// The decoded piece.
    pub piece: &'a str,
    pub log_prob: f64,
    pub entropy: f64,
    pub is_special: bool,
}

/// The tokens of the sentence `span` of `text`, pieces clipped as the module doc says; `floor` is the
/// byte the sentence may not reach back before (the end of what precedes it). Also returns the token
/// range.
pub fn sentence_tokens(
    at: Location,
    text: &str,
    tokens: &[GeneratedToken<'_>],
    span: (usize, usize),
    floor: usize,
) -> Result<(SentenceTokens, (usize, usize))> {
    let ends = token_ends(&tokens.iter().map(|t| t.piece).collect::<Vec<_>>());
    if ends.last().copied().unwrap_or(0) != text.len() {
        return Err(ConfidenceError::Span {
            at,
            span,
            why: format!("the token pieces decode to {} bytes but the text has {}", ends.last().copied().unwrap_or(0), text.len()),
        });
    }
    if span.1 > text.len() || !text.is_char_boundary(span.0) || !text.is_char_boundary(span.1) {
        return Err(ConfidenceError::Span {
            at,
            span,
            why: format!("outside the {}-byte text or not on character boundaries", text.len()),
        });
    }
    let (first, last) = token_range(at, &ends, span)?;
    if floor > span.0 {
        return Err(ConfidenceError::Span { at, span, why: format!("starts before the end of what precedes it (byte {floor})") });
    }
    let token_start = if first == 0 { 0 } else { ends[first - 1] };
    let space_start = span.0 - (text[floor..span.0].len() - text[floor..span.0].trim_end().len());
    let start = token_start.min(space_start).max(floor);
    let mut out = Vec::with_capacity(last - first + 1);
    for (k, t) in tokens.iter().enumerate().take(last + 1).skip(first) {
        // The first token also takes the whitespace before it that belongs to the sentence.
        let lo = if k == first { start } else { ends[k - 1].max(start) };
        let (a, b) = (lo, ends[k].min(span.1));
        let piece = if a < b { text.get(a..b).unwrap_or_default() } else { "" };
        out.push(TokenInfo { id: t.id, text: piece.to_string(), log_prob: t.log_prob, entropy: t.entropy, is_special: t.is_special });
    }
    let sentence = SentenceTokens { tokens: out };
    if sentence.text() != text[start..span.1] {
        return Err(ConfidenceError::Span {
            at,
            span,
            why: format!("its tokens' pieces give {:?}, not {:?}", sentence.text(), &text[start..span.1]),
        });
    }
    Ok((sentence, (first, last)))
}

/// The sentences of a response, each given as (byte span, floor), in order and non-overlapping, with
/// their tokens. A floor is the end of what precedes the sentence (the previous sentence, or the
/// statement after it); [`floors_after_previous`] gives the floors of consecutive sentences.
pub fn response_sentences(
    item: usize,
    text: &str,
    tokens: &[GeneratedToken<'_>],
    spans: &[((usize, usize), usize)],
) -> Result<Vec<(SentenceTokens, (usize, usize))>> {
    let mut previous_end = 0;
    spans
        .iter()
        .enumerate()
        .map(|(t, &(span, floor))| {
            let at = Location::sentence(item, t);
            if span.0 < previous_end || floor > span.0 {
                return Err(ConfidenceError::Span {
                    at,
                    span,
                    why: format!("overlaps what precedes it (the previous sentence ends at byte {previous_end}, the floor is {floor})"),
                });
            }
            let out = sentence_tokens(at, text, tokens, span, floor.max(previous_end))?;
            previous_end = span.1;
            Ok(out)
        })
        .collect()
}

/// (span, floor) for consecutive sentences: each sentence's floor is the previous one's end.
pub fn floors_after_previous(spans: &[(usize, usize)]) -> Vec<((usize, usize), usize)> {
    let mut floor = 0;
    spans
        .iter()
        .map(|&s| {
            let out = (s, floor);
            floor = s.1;
            out
        })
        .collect()
}

/// The byte spans of `sentences` in `text`, each found at or after the end of the previous one; a
/// sentence that is not there is an error naming it.
pub fn locate(item: usize, text: &str, sentences: &[&str]) -> Result<Vec<(usize, usize)>> {
    let mut cursor = 0;
    sentences
        .iter()
        .enumerate()
        .map(|(t, s)| {
            let at = Location::sentence(item, t);
            let found = if s.is_empty() { None } else { text.get(cursor..).and_then(|rest| rest.find(s)) };
            let a = found.map(|i| cursor + i).ok_or_else(|| ConfidenceError::Span {
                at,
                span: (cursor, cursor),
                why: format!("{s:?} does not occur in the response after byte {cursor}"),
            })?;
            cursor = a + s.len();
            Ok((a, cursor))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks<'a>(pieces: &[&'a str]) -> Vec<GeneratedToken<'a>> {
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| GeneratedToken { id: i as u32, piece: p, log_prob: -0.5, entropy: 1.0, is_special: false })
            .collect()
    }

    #[test]
    fn sentences_keep_their_leading_space_and_lose_what_follows() {
        let pieces = ["The", " sky", " is", " blue", ".", " It", " rains", ".", "\n\n", "So", ".", ""];
        let text: String = pieces.concat();
        let spans = crate::confidence::parser::sentence_spans(&text, &Default::default());
        assert_eq!(spans, vec![(0, 16), (17, 26), (28, 31)]);
        let s = response_sentences(3, &text, &toks(&pieces), &floors_after_previous(&spans)).unwrap();
        assert_eq!(locate(3, &text, &["The sky is blue.", "It rains.", "So."]).unwrap(), spans);
        assert_eq!(s[0].0.text(), "The sky is blue.");
        assert_eq!(s[0].1, (0, 4));
        assert_eq!(s[1].0.text(), " It rains.");
        assert_eq!(s[1].1, (5, 7));
        // The blank line, a token of its own between the sentences, is the third sentence's leading space.
        assert_eq!(s[2].0.text(), "\n\nSo.");
        assert_eq!(s[2].1, (9, 10));
        assert_eq!(s[2].0.tokens[0].text, "\n\nSo");
    }

    #[test]
    fn a_token_straddling_a_boundary_is_clipped() {
        // "blue." and "I" glued into one piece: the second sentence's first token gives only "I".
        let pieces = ["Sky", " blue", ".I", " am", " sure", "."];
        let text: String = pieces.concat();
        let s = response_sentences(0, &text, &toks(&pieces), &floors_after_previous(&[(0, 9), (9, 19)])).unwrap();
        assert_eq!(s[0].0.text(), "Sky blue.");
        assert_eq!(s[0].0.tokens.last().unwrap().text, ".");
        assert_eq!(s[1].0.text(), "I am sure.");
        assert_eq!(s[1].1, (2, 5));
    }

    #[test]
    fn unlocatable_spans_are_errors_naming_the_sentence() {
        let pieces = ["A", " b", "."];
        let text: String = pieces.concat();
        let e = response_sentences(7, &text, &toks(&pieces), &floors_after_previous(&[(0, 3), (2, 4)])).unwrap_err().to_string();
        assert!(e.contains("item 7, sentence 1"), "{e}");
        let e = locate(5, &text, &["A", "c."]).unwrap_err().to_string();
        assert!(e.contains("item 5, sentence 1") && e.contains("\"c.\""), "{e}");
        let e = sentence_tokens(Location::sentence(2, 0), "A b. extra", &toks(&pieces), (0, 4), 0).unwrap_err().to_string();
        assert!(e.contains("item 2, sentence 0") && e.contains("decode to 4 bytes"), "{e}");
        let e = sentence_tokens(Location::sentence(2, 1), &text, &toks(&pieces), (2, 2), 0).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }
}
