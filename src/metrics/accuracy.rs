//! Answer accuracy per dataset (§4.3 "Accuracy"):
//! - A-OKVQA direct answer: min(#annotators whose answer equals the prediction / 3, 1) (the official
//!   A-OKVQA evaluation; it compares strings exactly, we compare them after [`normalize_answer`]).
//! - A-OKVQA multiple choice and ScienceQA: 1 if the predicted choice index is the correct one.
//! - CulturalVQA: its official judge is an LLM (LAVE), unavailable here; we match the prediction against
//!   the reference answer(s) after normalization (`CulturalMatch`).
use serde::{Deserialize, Serialize};

/// How answers are normalized before comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnswerNormalization {
    pub lowercase: bool,
    /// Replace ASCII punctuation (except an apostrophe inside a word and a point between digits) by space.
    pub strip_punctuation: bool,
    /// Drop the words a, an, the (as the VQA evaluation does).
    pub strip_articles: bool,
}

impl Default for AnswerNormalization {
    /// Official A-OKVQA: exact strings. We chose lowercase + punctuation + articles stripped, because our
    /// answers are extracted from free text ("So, the answer is a Thirty.").
    fn default() -> Self {
        AnswerNormalization { lowercase: true, strip_punctuation: true, strip_articles: true }
    }
}

/// CulturalVQA matching rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CulturalMatch {
    /// Normalized prediction equals a normalized reference.
    Exact,
    /// A normalized reference occurs in the normalized prediction as a whole-word sequence.
    Contains,
}

/// Which A-OKVQA setting the accuracy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AokvqaSetting {
    /// The chosen option is the correct one (the prompt lists the options).
    MultipleChoice,
    /// The official direct-answer score min(#annotators who gave the answer / 3, 1) ([`aokvqa_direct`]).
    DirectAnswer,
}

/// Accuracy params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccuracyParams {
    pub normalization: AnswerNormalization,
    /// Paper: "accuracy", rule unstated for CulturalVQA. We chose `Contains` (free-text answers often
    /// wrap the reference: "hot" vs "it is eaten hot").
    pub cultural_match: CulturalMatch,
    /// Phrases after which the final answer starts (case-insensitive; the last occurrence wins).
    pub answer_markers: Vec<String>,
    /// Paper: "accuracy" on A-OKVQA, setting unstated. We chose multiple choice (our prompts list the
    /// options); `direct_answer` scores the same answer against the ten annotator answers.
    pub aokvqa: AokvqaSetting,
}

impl Default for AccuracyParams {
    fn default() -> Self {
        AccuracyParams {
            normalization: AnswerNormalization::default(),
            cultural_match: CulturalMatch::Contains,
            answer_markers: vec!["the answer is".into(), "answer:".into()],
            aokvqa: AokvqaSetting::MultipleChoice,
        }
    }
}

/// Normalizes an answer for comparison (whitespace always collapsed and trimmed).
pub fn normalize_answer(answer: &str, norm: &AnswerNormalization) -> String {
    let text = if norm.lowercase { answer.to_lowercase() } else { answer.to_string() };
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1).copied();
        let keep = !norm.strip_punctuation
            || !c.is_ascii_punctuation()
            || (c == '\'' && prev.is_some_and(char::is_alphanumeric) && next.is_some_and(char::is_alphanumeric))
            || (c == '.' && prev.is_some_and(|p| p.is_ascii_digit()) && next.is_some_and(|n| n.is_ascii_digit()));
        out.push(if keep { c } else { ' ' });
    }
    out.split_whitespace().filter(|w| !(norm.strip_articles && matches!(*w, "a" | "an" | "the"))).collect::<Vec<_>>().join(" ")
}

/// A-OKVQA direct-answer accuracy: min(#matching annotator answers / 3, 1).
pub fn aokvqa_direct(prediction: &str, direct_answers: &[String], norm: &AnswerNormalization) -> f64 {
    let p = normalize_answer(prediction, norm);
    let matches = direct_answers.iter().filter(|a| normalize_answer(a, norm) == p).count();
    (matches as f64 / 3.0).min(1.0)
}

/// Multiple-choice accuracy (A-OKVQA MC, ScienceQA): 1 if the chosen index is correct, 0 otherwise
/// (also when no choice could be read from the answer).
pub fn choice_accuracy(predicted: Option<usize>, correct: usize) -> f64 {
    if predicted == Some(correct) {
        1.0
    } else {
        0.0
    }
}

/// Reads a choice index from an answer: a letter ("B", "(B)", "B.", "option B") or the choice's text
/// (exact after normalization, else the only choice contained in the answer as whole words).
pub fn choice_from_answer(answer: &str, choices: &[String], norm: &AnswerNormalization) -> Option<usize> {
    let raw = answer.trim();
    let letters: Vec<char> = raw
        .trim_start_matches(|c: char| c == '(' || c.is_whitespace())
        .trim_start_matches("option ")
        .trim_start_matches("Option ")
        .chars()
        .collect();
    if let Some(&c) = letters.first() {
        let rest: String = letters[1..].iter().collect();
        let alone = rest.trim_matches(|c: char| c == ')' || c == '.' || c == ':' || c.is_whitespace()).is_empty();
        if alone && c.is_ascii_uppercase() {
            let i = (c as u8 - b'A') as usize;
            if i < choices.len() {
                return Some(i);
            }
        }
    }
    let a = normalize_answer(answer, norm);
    let normed: Vec<String> = choices.iter().map(|c| normalize_answer(c, norm)).collect();
    if let Some(i) = normed.iter().position(|c| *c == a) {
        return Some(i);
    }
    let contained: Vec<usize> = (0..normed.len()).filter(|&i| contains_words(&a, &normed[i])).collect();
    (contained.len() == 1).then(|| contained[0])
}

/// Whether `needle`'s words occur contiguously in `haystack`'s words (both already normalized).
pub fn contains_words(haystack: &str, needle: &str) -> bool {
    let h: Vec<&str> = haystack.split_whitespace().collect();
    let n: Vec<&str> = needle.split_whitespace().collect();
    !n.is_empty() && h.windows(n.len()).any(|w| w == n.as_slice())
}

/// CulturalVQA accuracy against one or more reference answers.
pub fn cultural_match(prediction: &str, references: &[String], params: &AccuracyParams) -> f64 {
    let p = normalize_answer(prediction, &params.normalization);
    let hit = references.iter().any(|r| {
        let r = normalize_answer(r, &params.normalization);
        match params.cultural_match {
            CulturalMatch::Exact => !r.is_empty() && p == r,
            CulturalMatch::Contains => contains_words(&p, &r),
        }
    });
    if hit {
        1.0
    } else {
        0.0
    }
}

/// The final answer of a response: the text after the last answer marker, up to the end of its line or
/// sentence, trimmed. None when no marker occurs or nothing follows it.
pub fn extract_final_answer(response: &str, params: &AccuracyParams) -> Option<String> {
    let lower = response.to_lowercase();
    // Lowercasing can change byte lengths (rare non-ASCII); only use positions when it did not.
    let (hay, same) = if lower.len() == response.len() { (lower.as_str(), true) } else { (response, false) };
    let (start, _) = params
        .answer_markers
        .iter()
        .filter_map(|m| {
            let m = if same { m.to_lowercase() } else { m.clone() };
            hay.rfind(&m).map(|i| (i + m.len(), i))
        })
        .max_by_key(|&(_, i)| i)?;
    let tail = &response[start..];
    let end = tail.find(['\n']).unwrap_or(tail.len());
    let mut answer = tail[..end].trim().trim_start_matches(':').trim();
    // Stop at a sentence end ("…is hot. I'm sure."): a terminator followed by the end, or by space and
    // a word that does not start in lower case. Not inside "30.5" nor after "dr." in "dr. pepper".
    if let Some((i, _)) = answer.char_indices().find(|&(i, c)| {
        if !matches!(c, '.' | '!' | '?') {
            return false;
        }
        let rest = &answer[i + c.len_utf8()..];
        let next_word = rest.trim_start();
        rest.is_empty() || (rest.starts_with(char::is_whitespace) && !next_word.starts_with(char::is_lowercase))
    }) {
        answer = answer[..i].trim();
    }
    (!answer.is_empty()).then(|| answer.to_string())
}

/// Whether a chain is well-formed: an answer can be read from its sentences (statements stripped), joined.
/// Eval reports the share per split; PPO's `unanswered_response_reward` replaces R where it is false.
pub fn well_formed<S: AsRef<str>>(sentences: &[S], params: &AccuracyParams) -> bool {
    let joined = sentences.iter().map(|s| s.as_ref().trim()).collect::<Vec<_>>().join(" ");
    extract_final_answer(&joined, params).is_some()
}

/// Mean of per-item accuracies (0 items is None).
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}
