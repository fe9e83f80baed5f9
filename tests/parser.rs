//! The one sentence splitter and the parser on what models really write: abbreviations, decimals,
//! quotes, a statement glued to its sentence, end-of-text markers, emoji, numeric statements in every
//! form, and property tests over responses built from the statement pools.
use mmboundary::confidence::parser::{numeric_confidence, sentence_spans, split_sentences, ParsedPair, Parser, ParserParams};
use mmboundary::confidence::statements::StatementPool;
use proptest::prelude::*;

fn pool(name: &str) -> StatementPool {
    let path = format!("{}/stages/{name}", env!("CARGO_MANIFEST_DIR"));
    StatementPool::from_toml(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
}

fn pair(sentence: &str, statement: Option<&str>) -> ParsedPair {
    ParsedPair { sentence: sentence.into(), statement: statement.map(String::from) }
}

#[test]
fn the_splitter_keeps_abbreviations_decimals_and_quotes_together() {
    assert_eq!(
        split_sentences("Dr. Smith is at the door. It holds e.g. two cakes. Mt. Fuji is tall."),
        vec!["Dr. Smith is at the door.", "It holds e.g. two cakes.", "Mt. Fuji is tall."]
    );
    assert_eq!(
        split_sentences("The price is 3.50 dollars. It rose by .5 today. Pi is about 3.14159!"),
        vec!["The price is 3.50 dollars.", "It rose by .5 today.", "Pi is about 3.14159!"]
    );
    assert_eq!(
        split_sentences("He said \"Stop.\" Then he left. The sign reads 'No entry.' So, the answer is B."),
        vec!["He said \"Stop.\"", "Then he left.", "The sign reads 'No entry.'", "So, the answer is B."]
    );
    // A full stop glued to the next sentence ends it; initials and "e.g." glued to a capital do not.
    assert_eq!(split_sentences("The sky is blue.It rains."), vec!["The sky is blue.", "It rains."]);
    assert_eq!(split_sentences("It is from the U.S.Army base."), vec!["It is from the U.S.Army base."]);
    assert_eq!(split_sentences("Use a tool, e.g.The hammer."), vec!["Use a tool, e.g.The hammer."]);
}

#[test]
fn markers_never_become_sentences_and_emoji_stick_to_neither_sentence() {
    for text in [
        "The sky is blue.</s>",
        "The sky is blue. </s>",
        "The sky is blue.<|im_end|>",
        "The sky is blue.<|endoftext|>\n",
        "<|im_start|>The sky is blue.<|im_end|><|im_end|>",
    ] {
        assert_eq!(split_sentences(text), vec!["The sky is blue."], "{text:?}");
    }
    // A marker ends a sentence even without a terminator.
    assert_eq!(split_sentences("The sky is blue</s>It rains"), vec!["The sky is blue", "It rains"]);
    assert_eq!(split_sentences("The sky is blue. 🙂 The grass is green."), vec!["The sky is blue.", "The grass is green."]);
    assert_eq!(split_sentences("The sky is blue 🙂. 👍🏽 It rains."), vec!["The sky is blue 🙂.", "It rains."]);
    // Spans are byte ranges of the very text.
    let text = "The sky is blue. 🙂 It rains.</s>";
    let spans = sentence_spans(text, &ParserParams::default());
    assert_eq!(spans.iter().map(|&(a, b)| &text[a..b]).collect::<Vec<_>>(), vec!["The sky is blue.", "It rains."]);

    let parser = Parser::new(&pool("statements.toml"), ParserParams::default());
    let r = parser.parse("The sky is blue and I am completely certain of this.</s>");
    assert_eq!(r.pairs, vec![pair("The sky is blue", Some("and I am completely certain of this."))]);
    let r = parser.parse("The sky is blue. I am far from sure of this. 🙂<|im_end|>");
    assert_eq!(r.pairs, vec![pair("The sky is blue.", Some("I am far from sure of this."))]);
    // A statement glued to its sentence.
    let r = parser.parse("The sky is blue.I am far from sure of this.");
    assert_eq!(r.pairs, vec![pair("The sky is blue.", Some("I am far from sure of this."))]);
}

#[test]
fn numeric_statements_are_read_by_value() {
    for (s, v) in [
        ("Confidence: 0.8.", 0.8),
        ("Confidence: 0.80.", 0.8),
        ("confidence 0.75", 0.75),
        ("Confidence 0.75.", 0.75),
        ("Confidence: 75%", 0.75),
        ("Confidence level: 75 %.", 0.75),
        ("Confidence is 1.0.", 1.0),
        ("Confidence: .75.", 0.75),
        ("Confidence: 8/10.", 0.8),
        ("Confidence: 8.", 0.8),
        ("Confidence: 0.", 0.0),
        ("Certainty: 40%.", 0.4),
        ("75%", 0.75),
        ("1.0.", 1.0),
        (".75.", 0.75),
        ("0.25", 0.25),
    ] {
        let got = numeric_confidence(s);
        assert!(got.is_some_and(|g| (g - v).abs() < 1e-12), "{s:?}: {got:?}, expected {v}");
    }
    for s in ["The answer is 4.", "4.", "Confidence: 1.5.", "Confidence: 250%.", "Confidence: high.", "0.8 meters.", "I am sure.", ""] {
        assert_eq!(numeric_confidence(s), None, "{s:?}");
    }
}

#[test]
fn numeric_statements_are_found_with_any_pool() {
    for pool_file in ["statements.toml", "statements_numeric.toml"] {
        let parser = Parser::new(&pool(pool_file), ParserParams::default());
        for st in ["Confidence: 0.8.", "Confidence: 0.75.", "75%", "1.0.", ".75.", "Confidence 0.75.", "Confidence: 0.50."] {
            let text = format!("The circle is red. {st} So, the answer is B. Confidence: 0.25.");
            let r = parser.parse(&text);
            assert_eq!(
                r.pairs,
                vec![pair("The circle is red.", Some(st)), pair("So, the answer is B.", Some("Confidence: 0.25."))],
                "{pool_file}: {text:?}"
            );
            assert!(r.dropped_statements.is_empty());
        }
        // Appended to the sentence.
        let r = parser.parse("The circle is red, confidence: 0.9. It sits left.");
        assert_eq!(r.pairs, vec![pair("The circle is red", Some("confidence: 0.9.")), pair("It sits left.", None)]);
        // Numbers that are content stay content.
        let r = parser.parse("The ratio is 0.5 of the total. It weighs 75% of the box.");
        assert_eq!(r.pairs, vec![pair("The ratio is 0.5 of the total.", None), pair("It weighs 75% of the box.", None)]);
    }
}

const WORDS: &[&str] = &[
    "cake", "bear", "gray", "table", "candles", "thirty", "blue", "sky", "café", "日本", "naïve", "shows", "red", "dog", "3.5", "near",
    "two", "of",
];

fn sentence_strategy() -> impl Strategy<Value = String> {
    let openers = vec!["Cake", "Bear", "Sky", "Zürich", "Two", "Dog", "Plate", "Éclair", "The"];
    (prop::sample::select(openers), prop::collection::vec(prop::sample::select(WORDS), 1..6), prop::sample::select(vec![".", "!", "?"]))
        .prop_map(|(first, rest, end)| format!("{first} {}{end}", rest.join(" ")))
}

/// How a statement is written after its sentence.
#[derive(Debug, Clone)]
enum Statement {
    None,
    Pool(u8, usize),
    /// A numeric form of value v: "Confidence: v.", "Confidence v.", "v%", bare decimal.
    Numeric(u8, usize),
}

fn numeric_text(level: u8, form: usize) -> (String, f64) {
    let v = f64::from(level - 1) / 4.0;
    let s = match form % 5 {
        0 => format!("Confidence: {v}."),
        1 => format!("Confidence {v:.2}."),
        2 => format!("{}%", (v * 100.0).round()),
        3 => format!("{v:.1}."),
        _ => format!("confidence: {}/10.", (v * 10.0).round()),
    };
    // "{:.1}" of 0.25 / 0.75 rounds: the value read back is what was written.
    let written = match form % 5 {
        3 => format!("{v:.1}").parse().unwrap(),
        4 => (v * 10.0).round() / 10.0,
        _ => v,
    };
    (s, written)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Responses as models write them: pool or numeric statements (or none), separated by a space, a
    /// newline or nothing, an emoji now and then, an end-of-text marker at the end.
    #[test]
    fn parser_reads_generated_responses(
        steps in prop::collection::vec((sentence_strategy(), 0u8..3, 1u8..=5, 0usize..40, 0usize..4), 1..6),
        marker in prop::sample::select(vec!["", "</s>", "<|im_end|>", "<|endoftext|>", " </s>", "\n<|im_end|>"]),
    ) {
        let default = pool("statements.toml");
        let mut text = String::new();
        let mut expected: Vec<(String, Statement)> = Vec::new();
        for (i, (sentence, kind, level, idx, sep)) in steps.iter().enumerate() {
            if i > 0 {
                text.push_str([" ", "\n", " 🙂 ", "\n\n"][*sep]);
            }
            text.push_str(sentence);
            let st = match kind {
                0 => Statement::None,
                1 => Statement::Pool(*level, *idx),
                _ => Statement::Numeric(*level, *idx),
            };
            let mut sentence = sentence.clone();
            match &st {
                Statement::None => {}
                Statement::Pool(l, k) => {
                    // As `render` writes it: a lower-case statement replaces the sentence's terminator.
                    let v = default.statements(*l).unwrap();
                    let s = &v[k % v.len()];
                    if s.starts_with(char::is_lowercase) {
                        text.truncate(text.len() - 1);
                        sentence.pop();
                    }
                    text.push(' ');
                    text.push_str(s);
                }
                Statement::Numeric(l, k) => {
                    text.push(' ');
                    text.push_str(&numeric_text(*l, *k).0);
                }
            }
            expected.push((sentence, st));
        }
        text.push_str(marker);
        let parsed = Parser::new(&default, ParserParams::default()).parse(&text);
        prop_assert_eq!(parsed.pairs.len(), expected.len(), "{:?} -> {:?}", text, parsed.pairs);
        for (p, (sentence, st)) in parsed.pairs.iter().zip(&expected) {
            prop_assert_eq!(&p.sentence, sentence, "{:?}", text);
            prop_assert!(!p.sentence.contains('<') && !p.sentence.starts_with('🙂'), "{:?}", p);
            match st {
                Statement::None => prop_assert!(p.statement.is_none(), "{:?}: {:?}", text, p),
                Statement::Pool(..) => prop_assert!(p.statement.is_some(), "{:?}: {:?}", text, p),
                Statement::Numeric(l, k) => {
                    let v = p.statement.as_deref().and_then(numeric_confidence);
                    prop_assert_eq!(v, Some(numeric_text(*l, *k).1), "{:?}: {:?}", text, p);
                }
            }
        }
    }

    /// Whatever the text, spans are ordered, disjoint, on character boundaries, and hold no marker.
    #[test]
    fn spans_are_ordered_slices_without_markers(text in "(\\PC|</s>|<\\|im_end\\|>|🙂|\\.|\\n){0,120}") {
        let spans = sentence_spans(&text, &ParserParams::default());
        let mut end = 0;
        for &(a, b) in &spans {
            prop_assert!(a >= end && a < b && text.is_char_boundary(a) && text.is_char_boundary(b));
            prop_assert!(!text[a..b].contains("</s>") && !text[a..b].contains("<|im_end|>"));
            end = b;
        }
    }
}
