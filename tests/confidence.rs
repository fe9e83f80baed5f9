//! Golden tests against scripts/reference_metrics.py (tests/fixtures/confidence/golden.json, 1e-9),
//! property tests, parser tests on messy model output, and bad-input tests for src/confidence and
//! src/metrics.
use std::cell::Cell;
use std::collections::HashMap;

use mmboundary::confidence::levels::{FusionParams, Intervals, LevelCuts, LevelModel, MinMaxNormalizer, SignalScores};
use mmboundary::confidence::parser::{render, split_sentences, ParsedPair, Parser, ParserParams};
use mmboundary::confidence::rewards::{
    level_accuracy, monotone_level_accuracy, response_reward, sentence_correctness, RewardParams, SentenceSignals,
};
use mmboundary::confidence::statements::{BackwardParams, ExpressedValue, PoolIndex, StatementPool};
use mmboundary::confidence::uncertainty::{
    clip_score_from_embeddings, likelihood_signals, token_sar_batched, token_sar_loop, RelevanceScope, ResponseTokens, SentenceTokens,
    TokenInfo, TokenSarParams, UncertaintyParams,
};
use mmboundary::confidence::{ConfidenceError, EncoderError, Location, PairSimilarity, SentenceEmbedder};
use mmboundary::metrics::accuracy::{
    aokvqa_direct, choice_from_answer, cultural_match, extract_final_answer, well_formed, AccuracyParams, AnswerNormalization,
};
use mmboundary::metrics::{
    auroc, chain_f1, chain_f1_by_level, ece, ece_unbinned, mece, mece_by_level, step_brier, ChainF1, ChainF1Params, ChainItem, ChainLevel,
    EceParams, MetricsError,
};
use proptest::prelude::*;
use serde_json::Value;

const TOL: f64 = 1e-9;

fn golden() -> &'static Value {
    static G: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/confidence/golden.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture present")).expect("fixture is JSON")
    })
}

fn pool() -> StatementPool {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/stages/statements.toml");
    StatementPool::from_toml(&std::fs::read_to_string(path).unwrap(), "stages/statements.toml").unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= TOL, "{what}: rust {a} vs reference {b}");
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(f64s).collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The deterministic similarity of the reference script: prefix overlap and length change, over
/// Unicode scalar values, rounded to f32. Counts calls and pairs.
#[derive(Default)]
struct DoubleSimilarity {
    calls: Cell<usize>,
    pairs: Cell<usize>,
}

impl PairSimilarity for DoubleSimilarity {
    fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
        self.calls.set(self.calls.get() + 1);
        self.pairs.set(self.pairs.get() + pairs.len());
        Ok(pairs
            .iter()
            .map(|(a, b)| {
                let (la, lb) = (a.chars().count() as f64, b.chars().count() as f64);
                let cp = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count() as f64;
                (0.5 * (cp + 1.0) / (la + 1.0) + 0.5 * (1.0 - (la - lb).abs() / (la + 1.0))) as f32
            })
            .collect())
    }
}

struct LookupEmbedder(HashMap<String, Vec<f32>>);

impl SentenceEmbedder for LookupEmbedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError> {
        texts.iter().map(|t| self.0.get(*t).cloned().ok_or_else(|| format!("unknown text {t:?}").into())).collect()
    }
}

fn responses() -> Vec<ResponseTokens> {
    serde_json::from_value(golden()["uncertainty"]["responses"].clone()).unwrap()
}

// ---------------------------------------------------------------------------------- golden: signals

#[test]
fn golden_lnlp_and_mte() {
    let g = &golden()["uncertainty"];
    let got = likelihood_signals(&responses(), &UncertaintyParams::default()).unwrap();
    let no_special = UncertaintyParams { include_special_in_likelihood: false, ..Default::default() };
    let got_ns = likelihood_signals(&responses(), &no_special).unwrap();
    for (i, r) in got.iter().enumerate() {
        for (t, &(l, m)) in r.iter().enumerate() {
            close(l, g["lnlp"][i][t].as_f64().unwrap(), &format!("LNLP {i}/{t}"));
            close(m, g["mte"][i][t].as_f64().unwrap(), &format!("MTE {i}/{t}"));
            close(got_ns[i][t].0, g["lnlp_no_special"][i][t].as_f64().unwrap(), &format!("LNLP w/o special {i}/{t}"));
        }
    }
}

#[test]
fn golden_token_sar_both_scopes_batched_equals_loop() {
    let g = &golden()["uncertainty"];
    let rs = responses();
    for (scope, key) in [(RelevanceScope::Sentence, "token_sar_sentence"), (RelevanceScope::Response, "token_sar_response")] {
        let params = TokenSarParams { scope, ..Default::default() };
        let batched_sim = DoubleSimilarity::default();
        let batched = token_sar_batched(&rs, &batched_sim, &params).unwrap();
        assert_eq!(batched_sim.calls.get(), 1, "the whole dataset goes in one call");
        let loop_sim = DoubleSimilarity::default();
        let looped = token_sar_loop(&rs, &loop_sim, &params).unwrap();
        assert!(loop_sim.calls.get() > 1);
        assert_eq!(loop_sim.pairs.get(), batched_sim.pairs.get());
        let chunked =
            token_sar_batched(&rs, &DoubleSimilarity::default(), &TokenSarParams { max_pairs_per_call: 7, ..params.clone() }).unwrap();
        for (i, r) in batched.iter().enumerate() {
            for (t, &v) in r.iter().enumerate() {
                let expected = g[key][i][t].as_f64().unwrap();
                close(v, expected, &format!("{key} {i}/{t} batched"));
                close(looped[i][t], expected, &format!("{key} {i}/{t} loop"));
                close(chunked[i][t], expected, &format!("{key} {i}/{t} chunked"));
            }
        }
    }
}

#[test]
fn golden_clip_score() {
    for (k, case) in golden()["clip"].as_array().unwrap().iter().enumerate() {
        let v = clip_score_from_embeddings(Location::item(k), &f32s(&case["image"]), &f32s(&case["text"])).unwrap();
        close(v, case["expected"].as_f64().unwrap(), &format!("CLIPScore {k}"));
        assert!(v >= 0.0);
    }
}

// ----------------------------------------------------------------------------------- golden: levels

fn rows(v: &Value) -> Vec<SignalScores> {
    matrix(v).into_iter().map(|r| [r[0], r[1], r[2], r[3]]).collect()
}

#[test]
fn golden_normalize_fuse_levels() {
    let g = &golden()["levels"];
    let (fit, apply) = (rows(&g["fit_rows"]), rows(&g["apply_rows"]));
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let params: FusionParams = serde_json::from_value(case["params"].clone()).unwrap();
        let model = LevelModel::fit(&fit, &params).unwrap();
        for i in 0..4 {
            close(model.normalizer.min[i], case["min"][i].as_f64().unwrap(), name);
            close(model.normalizer.max[i], case["max"][i].as_f64().unwrap(), name);
        }
        close(model.cuts.mean, case["mean"].as_f64().unwrap(), &format!("{name} mean"));
        close(model.cuts.std, case["std"].as_f64().unwrap(), &format!("{name} std"));
        for (c, e) in model.cuts.cuts.iter().zip(f64s(&case["cuts"])) {
            close(*c, e, &format!("{name} cut"));
        }
        for (set, key_u, key_l) in [(&fit, "u_fit", "levels_fit"), (&apply, "u_apply", "levels_apply")] {
            let scored = model.apply(set).unwrap();
            for (r, s) in scored.iter().enumerate() {
                close(s.u_final, case[key_u][r].as_f64().unwrap(), &format!("{name} {key_u}[{r}]"));
                assert_eq!(u64::from(s.level), case[key_l][r].as_u64().unwrap(), "{name} {key_l}[{r}]");
            }
        }
        let scored = model.apply(&apply).unwrap();
        for (r, s) in scored.iter().enumerate() {
            for i in 0..4 {
                close(s.normalized[i], case["normalized_apply"][r][i].as_f64().unwrap(), &format!("{name} norm[{r}][{i}]"));
            }
        }
    }
}

// --------------------------------------------------------------------------------- golden: backward

#[test]
fn golden_backward_map() {
    let g = &golden()["backward"];
    let levels: Vec<u8> = g["pool_levels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect();
    let pool: Vec<Vec<f32>> = g["pool"].as_array().unwrap().iter().map(f32s).collect();
    let queries: Vec<Vec<f32>> = g["queries"].as_array().unwrap().iter().map(f32s).collect();
    let index = PoolIndex::from_embeddings(levels, pool).unwrap();
    let names: Vec<String> = (0..queries.len()).map(|i| format!("generated statement {i}")).collect();
    let embedder = LookupEmbedder(names.iter().cloned().zip(queries.iter().cloned()).collect());
    let texts: Vec<&str> = names.iter().map(String::as_str).collect();
    for tau in [0.05, 0.2] {
        let params = BackwardParams { temperature: tau, value: ExpressedValue::Soft, ..Default::default() };
        let got = index.map(&texts, &embedder, &params).unwrap();
        for (q, m) in got.iter().enumerate() {
            let e = &g["expected"][q];
            assert_eq!(m.nearest as u64, e["nearest"].as_u64().unwrap());
            assert_eq!(u64::from(m.level), e["level"].as_u64().unwrap());
            close(m.cosine, e["cosine"].as_f64().unwrap(), "cosine");
            close(m.level_value, (f64::from(m.level) - 1.0) / 4.0, "level value");
            close(m.expressed(&params), e["soft"][tau.to_string()].as_f64().unwrap(), &format!("soft value τ={tau}"));
            assert!((0.0..=1.0).contains(&m.soft_value));
        }
    }
}

// ---------------------------------------------------------------------------------- golden: rewards

#[test]
fn golden_rewards() {
    let g = &golden()["rewards"];
    let responses: Vec<Vec<SentenceSignals>> = serde_json::from_value(g["responses"].clone()).unwrap();
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let params: RewardParams = serde_json::from_value(case["params"].clone()).unwrap();
        for (i, r) in responses.iter().enumerate() {
            let got = response_reward(i, r, &params).unwrap();
            let e = &case["expected"][i];
            for (v, k) in [(got.ka, "ka"), (got.ec, "ec"), (got.cs, "cs"), (got.total, "total")] {
                close(v, e[k].as_f64().unwrap(), &format!("{name} response {i} {k}"));
            }
        }
    }
    let sim = matrix(&g["similarity"]);
    let correct = sentence_correctness(0, &sim, sim[0].len(), 0.64).unwrap();
    let expected: Vec<bool> = g["correct"].as_array().unwrap().iter().map(|x| x.as_bool().unwrap()).collect();
    assert_eq!(correct, expected);
}

// ---------------------------------------------------------------------------------- golden: metrics

#[test]
fn golden_ece_and_unbinned() {
    let g = &golden()["metrics"]["ece"];
    let (conf, correct) = (f64s(&g["confidence"]), f64s(&g["correct"]));
    for (bins, expected) in g["binned"].as_object().unwrap() {
        let got = ece(&conf, &correct, &EceParams { bins: bins.parse().unwrap() }).unwrap();
        close(got, expected.as_f64().unwrap(), &format!("ECE {bins} bins"));
    }
    close(ece_unbinned(&conf, &correct).unwrap(), g["unbinned"].as_f64().unwrap(), "unbinned ECE");
}

fn calibration(v: &Value) -> Vec<Vec<(bool, f64)>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|p| (p[0].as_bool().unwrap(), p[1].as_f64().unwrap())).collect())
        .collect()
}

#[test]
fn golden_mece() {
    let g = &golden()["metrics"]["mece"];
    close(mece(&calibration(&g["responses"])).unwrap(), g["expected"].as_f64().unwrap(), "MECE");
    close(step_brier(&calibration(&g["responses"])).unwrap(), g["brier_expected"].as_f64().unwrap(), "step-level Brier");
}

#[test]
fn golden_auroc_sklearn() {
    for case in golden()["metrics"]["auroc"].as_array().unwrap() {
        let scores: Vec<f64> = case["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| match x.as_str() {
                Some("inf") => f64::INFINITY,
                Some("-inf") => f64::NEG_INFINITY,
                _ => x.as_f64().unwrap(),
            })
            .collect();
        let labels: Vec<bool> = case["labels"].as_array().unwrap().iter().map(|x| x.as_bool().unwrap()).collect();
        close(auroc(&scores, &labels).unwrap(), case["expected"].as_f64().unwrap(), case["name"].as_str().unwrap());
    }
}

fn check_f1(got: &ChainF1, e: &Value, what: &str) {
    assert_eq!(got.precise as u64, e["precise"].as_u64().unwrap(), "{what} precise");
    assert_eq!(got.covered as u64, e["covered"].as_u64().unwrap(), "{what} covered");
    assert_eq!(got.predicted as u64, e["predicted"].as_u64().unwrap(), "{what} predicted");
    assert_eq!(got.reference as u64, e["reference"].as_u64().unwrap(), "{what} reference");
    close(got.precision, e["precision"].as_f64().unwrap(), what);
    close(got.recall, e["recall"].as_f64().unwrap(), what);
    close(got.f1, e["f1"].as_f64().unwrap(), what);
}

#[test]
fn golden_chain_f1_and_level_split() {
    let g = &golden()["metrics"]["chain"];
    let items: Vec<ChainItem> = serde_json::from_value(g["items"].clone()).unwrap();
    let levels: Vec<Vec<ChainLevel>> = serde_json::from_value(g["reference_levels"].clone()).unwrap();
    let params = ChainF1Params::default();
    check_f1(&chain_f1(&items, &params).unwrap(), &g["expected"], "chain F1");
    let cal = calibration(&g["calibration"]);
    for (level, key) in [(ChainLevel::Perception, "perception"), (ChainLevel::Reasoning, "reasoning")] {
        check_f1(&chain_f1_by_level(&items, &levels, level, &params).unwrap(), &g["by_level"][key], key);
        let assigned: Vec<Vec<ChainLevel>> = items
            .iter()
            .zip(&levels)
            .enumerate()
            .map(|(i, (it, lv))| mmboundary::metrics::assign_levels(i, &it.similarity, lv).unwrap())
            .collect();
        let got = mece_by_level(&assigned, &cal, level).unwrap().unwrap();
        close(got, g["mece_by_level"][key].as_f64().unwrap(), &format!("MECE {key}"));
    }
}

#[test]
fn golden_aokvqa_direct_answer_accuracy() {
    for case in golden()["metrics"]["aokvqa_direct"].as_array().unwrap() {
        let answers: Vec<String> = serde_json::from_value(case["direct_answers"].clone()).unwrap();
        let got = aokvqa_direct(case["prediction"].as_str().unwrap(), &answers, &AnswerNormalization::default());
        close(got, case["expected"].as_f64().unwrap(), case["prediction"].as_str().unwrap());
    }
}

#[test]
fn accuracy_choice_cultural_and_answer_extraction() {
    let p = AccuracyParams::default();
    let choices: Vec<String> = ["one", "ten", "nine", "thirty"].iter().map(|s| s.to_string()).collect();
    let n = &p.normalization;
    assert_eq!(choice_from_answer("(D)", &choices, n), Some(3));
    assert_eq!(choice_from_answer("B.", &choices, n), Some(1));
    assert_eq!(choice_from_answer("Thirty.", &choices, n), Some(3));
    assert_eq!(choice_from_answer("it is nine years", &choices, n), Some(2));
    assert_eq!(choice_from_answer("one or ten", &choices, n), None, "ambiguous answers pick nothing");
    assert_eq!(choice_from_answer("E", &choices, n), None);
    assert_eq!(cultural_match("It is eaten hot.", &["hot".into()], &p), 1.0);
    assert_eq!(cultural_match("It is eaten shortly.", &["hot".into()], &p), 0.0);
    let text = "The cake shows 30 and I am confident in this. So, the answer is 30.5. I'm sure.";
    assert_eq!(extract_final_answer(text, &p).as_deref(), Some("30.5"));
    assert_eq!(extract_final_answer("Thought: hot food.\n\nAnswer: So the answer is hot.", &p).as_deref(), Some("hot"));
    assert_eq!(extract_final_answer("no marker here", &p), None);
    assert_eq!(extract_final_answer("So, the answer is dr. pepper. I am sure.", &p).as_deref(), Some("dr. pepper"));
    assert_eq!(extract_final_answer("The answer is B!", &p).as_deref(), Some("B"));
    // Well-formed: an answer can be read from the sentences, joined (eval's share, PPO's unanswered rule).
    assert!(well_formed(&["There is a red circle.", "So, the answer is 3."], &p));
    assert!(!well_formed(&["There is a red circle.", "So, the answer is"], &p), "a marker with nothing after it");
    assert!(!well_formed(&["There is a red circle."], &p), "no marker");
    assert!(!well_formed::<&str>(&[], &p));
    assert!(well_formed(&["So, the answer is", "3."], &p), "the answer in the sentence after its marker");
}

// ------------------------------------------------------------------------------------------- parser

fn pair(sentence: &str, statement: Option<&str>) -> ParsedPair {
    ParsedPair { sentence: sentence.into(), statement: statement.map(Into::into) }
}

#[test]
fn parser_handles_messy_model_output() {
    let parser = Parser::new(&pool(), ParserParams::default());
    // A missing statement.
    let r = parser.parse("The cake says 30. The bear is gray and I am confident in this.");
    assert_eq!(r.pairs, vec![pair("The cake says 30.", None), pair("The bear is gray", Some("and I am confident in this."))]);
    // Two statements in a row: the second has no sentence of its own.
    let r = parser.parse("The cake says 30 and this is well supported. I am far from sure of this. The bear is gray.");
    assert_eq!(r.pairs, vec![pair("The cake says 30", Some("and this is well supported.")), pair("The bear is gray.", None)]);
    assert_eq!(r.dropped_statements, vec!["I am far from sure of this.".to_string()]);
    // A statement in the middle of a sentence: the rest starts a new sentence.
    let r = parser.parse("The cake, and I am quite sure of it, shows 30.");
    assert_eq!(r.pairs, vec![pair("The cake", Some("and I am quite sure of it")), pair("shows 30.", None)]);
    // Trailing text after the last statement.
    let r = parser.parse("The cake says 30 with full certainty. So the answer is thirty");
    assert_eq!(r.pairs, vec![pair("The cake says 30", Some("with full certainty.")), pair("So the answer is thirty", None)]);
    // Unicode, curly apostrophes, CJK full stops.
    let r = parser.parse("Le gâteau 🎂 dit 30 and I AM CONFIDENT IN THIS. 日本の猫。Then it’s gray, but I’m rather unsure of that.");
    assert_eq!(
        r.pairs,
        vec![
            pair("Le gâteau 🎂 dit 30", Some("and I AM CONFIDENT IN THIS.")),
            pair("日本の猫。", None),
            pair("Then it’s gray", Some("but I’m rather unsure of that.")),
        ]
    );
    // A statement at the very start has no sentence.
    let r = parser.parse("I am far from sure of this. The sky is blue.");
    assert_eq!(r.pairs, vec![pair("The sky is blue.", None)]);
    assert_eq!(r.dropped_statements.len(), 1);
    // A stand-alone paraphrase.
    let r = parser.parse("The bear is brown. I'm not at all certain about that.");
    assert_eq!(r.pairs, vec![pair("The bear is brown.", Some("I'm not at all certain about that."))]);
    // Nothing at all.
    assert!(parser.parse("").pairs.is_empty());
    assert!(parser.parse("  ... !!").pairs.is_empty());
    assert_eq!(split_sentences("One. Two 3.5 three! Four"), vec!["One.", "Two 3.5 three!", "Four"]);
    assert_eq!(
        split_sentences("Dr. Pepper rivals Pepsi. It is from the U.S. and sold in 'Ft. Worth'."),
        vec!["Dr. Pepper rivals Pepsi.", "It is from the U.S. and sold in 'Ft. Worth'."]
    );
    // A long content clause with a cue word but no self-reference is not a statement.
    let r = parser.parse("Buses with trim colors are designated for certain lines. I am far from sure of this.");
    assert_eq!(r.pairs, vec![pair("Buses with trim colors are designated for certain lines.", Some("I am far from sure of this."))]);
}

const NEUTRAL: &[&str] = &[
    "cake", "bear", "gray", "table", "candles", "thirty", "blue", "sky", "café", "日本", "🙂", "naïve", "shows", "red", "dog", "3.5",
    "near", "window", "Zürich", "two", "large", "plate", "of", "food",
];

/// Well-formed sentences open with a capital letter: after a full stop, UAX #29 (rightly) does not break
/// before a lower-case word ("e.g. cake"), so "Cake. 🙂 cake." is one sentence.
fn sentence_strategy() -> impl Strategy<Value = String> {
    let openers = vec!["cake", "bear", "sky", "Zürich", "two", "dog", "plate", "éclair"];
    (
        prop::sample::select(openers),
        prop::collection::vec(prop::sample::select(NEUTRAL), 0..6),
        prop::sample::select(vec!["", ".", "!", "?"]),
    )
        .prop_map(|(first, rest, end)| {
            let words: Vec<&str> = std::iter::once(first).chain(rest).collect();
            let mut s = words.join(" ");
            let mut c = s.chars();
            let first = c.next().unwrap();
            s = first.to_uppercase().chain(c).collect();
            s + end
        })
}

fn core(s: &str) -> String {
    s.trim().trim_end_matches(['.', '!', '?']).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn parser_never_panics(text in "\\PC{0,200}") {
        let parser = Parser::new(&pool(), ParserParams::default());
        let r = parser.parse(&text);
        for p in &r.pairs {
            prop_assert!(!p.sentence.is_empty());
        }
    }

    #[test]
    fn parser_round_trips_rendered_responses(
        steps in prop::collection::vec((sentence_strategy(), prop::option::weighted(0.8, (1u8..=5, 0usize..40))), 1..6)
    ) {
        let pool = pool();
        let pairs: Vec<ParsedPair> = steps
            .iter()
            .map(|(s, st)| ParsedPair {
                sentence: s.clone(),
                statement: st.map(|(l, i)| { let v = pool.statements(l).unwrap(); v[i % v.len()].clone() }),
            })
            .collect();
        let text = render(&pairs);
        let parsed = Parser::new(&pool, ParserParams::default()).parse(&text);
        prop_assert!(parsed.dropped_statements.is_empty(), "{text:?}: dropped {:?}", parsed.dropped_statements);
        prop_assert_eq!(parsed.pairs.len(), pairs.len(), "{:?} -> {:?}", text, parsed.pairs);
        for (a, b) in pairs.iter().zip(&parsed.pairs) {
            prop_assert_eq!(core(&a.sentence), core(&b.sentence));
            prop_assert_eq!(a.statement.as_deref().map(core), b.statement.as_deref().map(core));
        }
    }

    #[test]
    fn ece_and_mece_are_in_unit_interval(
        data in prop::collection::vec((0.0f64..=1.0, 0.0f64..=1.0), 1..60),
        bins in 1usize..30,
        responses in prop::collection::vec(prop::collection::vec((any::<bool>(), 0.0f64..=1.0), 1..8), 1..10),
    ) {
        let (c, q): (Vec<f64>, Vec<f64>) = data.into_iter().unzip();
        let e = ece(&c, &q, &EceParams { bins }).unwrap();
        prop_assert!((0.0..=1.0).contains(&e));
        let u = ece_unbinned(&c, &q).unwrap();
        prop_assert!((0.0..=1.0).contains(&u));
        let m = mece(&responses).unwrap();
        prop_assert!((0.0..=1.0).contains(&m));
    }

    #[test]
    fn auroc_flips_with_labels(data in prop::collection::vec((-3i32..3, any::<bool>()), 2..60)) {
        let scores: Vec<f64> = data.iter().map(|(s, _)| f64::from(*s) / 2.0).collect();
        let labels: Vec<bool> = data.iter().map(|(_, l)| *l).collect();
        prop_assume!(labels.iter().any(|&l| l) && labels.iter().any(|&l| !l));
        let a = auroc(&scores, &labels).unwrap();
        let flipped: Vec<bool> = labels.iter().map(|l| !l).collect();
        let b = auroc(&scores, &flipped).unwrap();
        prop_assert!((a + b - 1.0).abs() < 1e-12, "{a} + {b}");
        prop_assert!((0.0..=1.0).contains(&a));
    }

    #[test]
    fn levels_are_monotone_in_u_final(
        u in prop::collection::vec(0.0f64..1.0, 3..50),
        probes in prop::collection::vec(-0.5f64..1.5, 2..40),
        intervals in prop::sample::select(vec![Intervals::Uniform, Intervals::MuSigma, Intervals::Quantile]),
    ) {
        let params = FusionParams { intervals, ..Default::default() };
        let cuts = match LevelCuts::fit(&u, &params) {
            Ok(c) => c,
            Err(ConfidenceError::ZeroSpread { .. }) => return Ok(()),
            Err(e) => panic!("{e}"),
        };
        let mut probes = probes;
        probes.sort_by(f64::total_cmp);
        let levels: Vec<u8> = probes.iter().map(|&p| cuts.level(p)).collect();
        prop_assert!(levels.windows(2).all(|w| w[0] >= w[1]), "{levels:?}");
        prop_assert!(levels.iter().all(|l| (1..=5).contains(l)));
    }

    #[test]
    fn normalization_is_idempotent(rows in prop::collection::vec(prop::array::uniform4(-5.0f64..5.0), 1..30)) {
        let n1 = MinMaxNormalizer::fit(&rows).unwrap();
        let once: Vec<SignalScores> = rows.iter().enumerate().map(|(r, x)| n1.apply(r, x, true).unwrap()).collect();
        let n2 = MinMaxNormalizer::fit(&once).unwrap();
        for (r, x) in once.iter().enumerate() {
            let twice = n2.apply(r, x, true).unwrap();
            for i in 0..4 {
                prop_assert!((twice[i] - x[i]).abs() < 1e-12);
                prop_assert!((0.0..=1.0).contains(&x[i]));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------- pools

#[test]
fn pool_file_is_valid_and_forward_map_is_seeded() {
    let pool = pool();
    for level in 1..=5 {
        assert_eq!(pool.statements(level).unwrap().len(), 40, "level {level}");
    }
    let a = pool.sample(3, 7, "q1", 2).unwrap();
    assert_eq!(a, pool.sample(3, 7, "q1", 2).unwrap(), "same seed and key, same statement");
    assert!(pool.statements(3).unwrap().iter().any(|s| s == a));
    let distinct: std::collections::HashSet<&str> = (0..200).map(|t| pool.sample(5, 7, "q1", t).unwrap()).collect();
    assert!(distinct.len() > 20, "draws spread over the pool: {}", distinct.len());
    assert!(pool.sample(6, 7, "q1", 0).is_err());
    let bad = "[[level]]\nlevel = 1\nname = \"x\"\nstatements = [\"a.\"]\n";
    let err = StatementPool::from_toml(bad, "bad.toml").unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("[1]"), "{err}");
}

// ------------------------------------------------------------------------------------- bad input

fn tok(log_prob: f64) -> TokenInfo {
    TokenInfo { id: 1, text: " a".into(), log_prob, entropy: 0.5, is_special: false }
}

#[test]
fn bad_inputs_are_typed_errors_naming_the_place() {
    let p = UncertaintyParams::default();
    let nan = vec![ResponseTokens {
        prompt: "x".into(),
        sentences: vec![SentenceTokens { tokens: vec![tok(-0.1)] }, SentenceTokens { tokens: vec![tok(-0.2), tok(f64::NAN)] }],
    }];
    let e = likelihood_signals(&nan, &p).unwrap_err();
    assert!(matches!(e, ConfidenceError::NonFinite { at: Location::Sentence { item: 0, sentence: 1 }, .. }), "{e}");
    assert!(e.to_string().contains("item 0, sentence 1"));
    let inf = vec![ResponseTokens { prompt: "x".into(), sentences: vec![SentenceTokens { tokens: vec![tok(f64::NEG_INFINITY)] }] }];
    assert!(token_sar_batched(&inf, &DoubleSimilarity::default(), &TokenSarParams::default()).is_err());
    let empty = vec![ResponseTokens { prompt: "x".into(), sentences: vec![SentenceTokens::default()] }];
    assert!(matches!(likelihood_signals(&empty, &p), Err(ConfidenceError::Empty { .. })));

    // σ = 0.
    let flat = vec![[1.0, 2.0, 3.0, 0.5]; 5];
    assert!(matches!(LevelModel::fit(&flat, &FusionParams::default()), Err(ConfidenceError::ZeroSpread { n: 5, .. })));
    // A constant signal normalizes to 0, not NaN; the others still separate sentences.
    let mut rows = vec![[1.0, 2.0, 3.0, 0.5]; 5];
    rows.iter_mut().enumerate().for_each(|(i, r)| r[0] = i as f64);
    let scored = LevelModel::fit(&rows, &FusionParams::default()).unwrap().apply(&rows).unwrap();
    assert!(scored.iter().all(|s| s.u_final.is_finite() && s.normalized[1] == 0.0));

    // Empty reference chain.
    assert!(matches!(sentence_correctness(4, &[vec![]], 0, 0.64), Err(ConfidenceError::Empty { .. })));
    let err = chain_f1(&[ChainItem { similarity: vec![], n_reference: 0 }], &ChainF1Params::default()).unwrap_err();
    assert!(matches!(err, MetricsError::Empty { .. }) && err.to_string().contains("item 0"));

    // A statement that maps to no level.
    let index = PoolIndex::from_embeddings(vec![1, 5], vec![vec![1.0, 0.0], vec![0.0, 1.0]]).unwrap();
    let embedder = LookupEmbedder([("odd".to_string(), vec![-1.0, -1.0]), ("zero".to_string(), vec![0.0, 0.0])].into());
    let floor = BackwardParams { min_cosine: Some(0.0), ..Default::default() };
    assert!(matches!(index.map(&["odd"], &embedder, &floor), Err(ConfidenceError::NoLevel { index: 0, .. })));
    assert!(matches!(index.map(&["zero"], &embedder, &BackwardParams::default()), Err(ConfidenceError::NoLevel { .. })));
    assert!(matches!(index.map(&["  "], &embedder, &BackwardParams::default()), Err(ConfidenceError::NoLevel { .. })));

    // Metrics.
    assert!(matches!(auroc(&[0.1, 0.2], &[true, true]), Err(MetricsError::SingleClass { .. })));
    assert!(auroc(&[f64::NAN, 0.2], &[true, false]).is_err());
    assert!(ece(&[1.2], &[1.0], &EceParams::default()).is_err());
    assert!(ece(&[], &[], &EceParams::default()).is_err());
    assert!(mece(&[vec![]]).is_err());

    // Rewards: missing statement rules, out-of-range values.
    let s = [SentenceSignals { correct: true, expressed: None, internal: 0.5 }];
    let strict = RewardParams { missing_statement: mmboundary::confidence::rewards::MissingStatement::Error, ..Default::default() };
    assert!(response_reward(0, &s, &strict).is_err());
    let bad = [SentenceSignals { correct: true, expressed: Some(f64::NAN), internal: 0.5 }];
    assert!(response_reward(0, &bad, &RewardParams::default()).is_err());
    assert!(response_reward(0, &[], &RewardParams::default()).is_err());
}

#[test]
fn ece_bins_on_exact_edges() {
    // 0.3 with 10 bins belongs to [0.3, 0.4): a floor(c·B) on 0.3·10 = 3.0000000000000004 agrees,
    // 0.7·10 = 7.000000000000001 too; 1.0 goes to the last bin.
    let e = ece(&[0.3, 0.7, 1.0, 0.0], &[0.0, 1.0, 1.0, 0.0], &EceParams { bins: 10 }).unwrap();
    close(e, (0.3 + 0.3 + 0.0 + 0.0) / 4.0, "edge ECE");
}

#[test]
fn level_cut_points_go_to_the_less_confident_side() {
    let params = FusionParams { intervals: Intervals::Uniform, ..Default::default() };
    let cuts = LevelCuts::fit(&[0.1, 0.5, 0.9], &params).unwrap();
    let got: Vec<u8> = [0.0, 0.19999, 0.2, 0.4, 0.6, 0.79999, 0.8, 1.0].iter().map(|&u| cuts.level(u)).collect();
    assert_eq!(got, vec![5, 5, 4, 3, 2, 2, 1, 1]);
    // μ/σ: [0, μ−σ) ↦ 5, [μ−σ, μ+σ) ↦ 4, …, [μ+3σ, 1] ↦ 1 (μ = 0.5, σ = 0.1 here).
    let cuts = LevelCuts::fit(&[0.4, 0.6], &FusionParams::default()).unwrap();
    close(cuts.mean, 0.5, "μ");
    close(cuts.std, 0.1, "σ");
    let got: Vec<u8> = [0.39, 0.41, 0.61, 0.71, 0.81].iter().map(|&u| cuts.level(u)).collect();
    assert_eq!(got, vec![5, 4, 3, 2, 1]);
}

/// Equal-count intervals, by hand: sorted U_Final [0, 0.1, 0.3, 0.6, 1] (n = 5), the q-quantile at position
/// 4q between order statistics: 0.2 → 0.8 → 0.08, 0.4 → 1.6 → 0.22, 0.6 → 2.4 → 0.42, 0.8 → 3.2 → 0.68
/// (numpy.quantile agrees). Each fitted sentence then lands in its own level.
#[test]
fn quantile_intervals_put_a_fifth_of_the_sentences_in_each_level() {
    let params = FusionParams { intervals: Intervals::Quantile, ..Default::default() };
    let u = [0.6, 0.0, 1.0, 0.3, 0.1];
    let cuts = LevelCuts::fit(&u, &params).unwrap();
    for (got, want) in cuts.cuts.iter().zip([0.08, 0.22, 0.42, 0.68]) {
        close(*got, want, "quantile cut");
    }
    let got: Vec<u8> = u.iter().map(|&x| cuts.level(x)).collect();
    assert_eq!(got, vec![2, 5, 1, 3, 4]);
    assert!(matches!(LevelCuts::fit(&[0.3, 0.3], &params), Err(ConfidenceError::ZeroSpread { .. })));
}

/// `context_words`: each pair's left side is the last n words of x (prompt + earlier sentences) + y; a window
/// wider than x changes nothing, a narrow one changes the values.
#[test]
fn token_sar_context_window_keeps_the_last_words_of_x() {
    struct Recording(std::cell::RefCell<Vec<String>>, DoubleSimilarity);
    impl PairSimilarity for Recording {
        fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
            self.0.borrow_mut().extend(pairs.iter().map(|(a, _)| a.to_string()));
            self.1.similarity(pairs)
        }
    }
    let rs = responses();
    let full = token_sar_batched(&rs, &DoubleSimilarity::default(), &TokenSarParams::default()).unwrap();
    let wide = TokenSarParams { context_words: Some(100_000), ..Default::default() };
    assert_eq!(token_sar_batched(&rs, &DoubleSimilarity::default(), &wide).unwrap(), full);
    let rec = Recording(Default::default(), DoubleSimilarity::default());
    let narrow = token_sar_batched(&rs, &rec, &TokenSarParams { context_words: Some(3), ..Default::default() }).unwrap();
    assert_ne!(narrow, full);
    // The left sides we expect, as word lists: last 3 words of x, then the sentence's words.
    let mut expected = std::collections::HashSet::new();
    for r in &rs {
        let mut x = r.prompt.clone();
        for s in &r.sentences {
            let xw: Vec<&str> = x.split_whitespace().collect();
            let mut words: Vec<String> = xw[xw.len().saturating_sub(3)..].iter().map(|w| w.to_string()).collect();
            words.extend(s.text().split_whitespace().map(str::to_string));
            expected.insert(words);
            x.push_str(&s.text());
        }
    }
    let seen = rec.0.borrow();
    assert!(!seen.is_empty());
    for a in seen.iter() {
        let words: Vec<String> = a.split_whitespace().map(str::to_string).collect();
        assert!(expected.contains(&words), "unexpected left side {a:?}");
    }
}

#[test]
fn cosine_of_embeddings_dedupes_texts_and_feeds_token_sar() {
    use mmboundary::confidence::similarity::CosineOfEmbeddings;
    struct Counting(Cell<usize>);
    impl SentenceEmbedder for Counting {
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError> {
            self.0.set(self.0.get() + texts.len());
            // A deterministic bag-of-bytes embedding.
            Ok(texts
                .iter()
                .map(|t| {
                    let mut v = vec![1.0f32; 8];
                    t.bytes().for_each(|b| v[usize::from(b) % 8] += 1.0);
                    v
                })
                .collect())
        }
    }
    let sim = CosineOfEmbeddings(Counting(Cell::new(0)));
    let s = sim.similarity(&[("ab", "ab"), ("ab", "ba"), ("ab", "zz")]).unwrap();
    assert_eq!(sim.0 .0.get(), 3, "ab, ba, zz embedded once each");
    close(f64::from(s[0]), 1.0, "identical texts");
    close(f64::from(s[1]), 1.0, "same bag of bytes");
    assert!(s[2] < 1.0);
    let rs = responses();
    let out = token_sar_batched(&rs, &sim, &TokenSarParams::default()).unwrap();
    assert!(out.iter().flatten().all(|v| v.is_finite() && *v >= 0.0));
}

#[test]
fn interleave_render_parse_recovers_levels() {
    use mmboundary::confidence::parser::interleave;
    let pool = pool();
    let sentences: Vec<String> = split_sentences("The cake has the number 30 on it. The bear cake is gray. So, the answer is thirty.");
    let levels = [5u8, 2, 4];
    let pairs = interleave(&pool, 11, "2Aq5RiEn7eyfWjEbpuYT2o", &sentences, &levels).unwrap();
    let text = render(&pairs);
    let parsed = Parser::new(&pool, ParserParams::default()).parse(&text);
    let got: Vec<Option<u8>> = parsed.pairs.iter().map(|p| p.statement.as_deref().and_then(|s| pool.level_of(s))).collect();
    assert_eq!(got, vec![Some(5), Some(2), Some(4)], "{text}");
    assert_eq!(pool.level_of("And I am Confident in this"), Some(4));
    assert_eq!(pool.level_of("and I am confident"), None);
    assert!(interleave(&pool, 11, "k", &sentences, &levels[..2]).is_err());
}

#[test]
fn numeric_pool_of_the_no_mapping_ablation_round_trips() {
    use mmboundary::confidence::parser::interleave;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/stages/statements_numeric.toml");
    let pool = StatementPool::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap();
    let sentences: Vec<String> = split_sentences("The circle is red. It sits left of the square. So, the answer is B.");
    let levels = [1u8, 3, 5];
    let text = render(&interleave(&pool, 0, "item", &sentences, &levels).unwrap());
    assert_eq!(
        text,
        "The circle is red. Confidence: 0.00. It sits left of the square. Confidence: 0.50. So, the answer is B. Confidence: 1.00."
    );
    let parsed = Parser::new(&pool, ParserParams::default()).parse(&text);
    let got: Vec<(String, Option<u8>)> =
        parsed.pairs.iter().map(|p| (p.sentence.clone(), p.statement.as_deref().and_then(|s| pool.level_of(s)))).collect();
    let want: Vec<(String, Option<u8>)> = sentences.iter().cloned().zip([Some(1), Some(3), Some(5)]).collect();
    assert_eq!(got, want, "{text}");
    // The number is the level value, (level − 1) / 4.
    for (level, s) in pool.iter() {
        let x: f64 = s.trim_start_matches("Confidence: ").trim_end_matches('.').parse().unwrap();
        assert_eq!(x, mmboundary::confidence::level_value(level), "{s}");
    }
}

/// `level_accuracy` by hand: two responses, levels 1 1 2 | 5 5 5 with right F T F | T T F. Level 1: (1 + 1) /
/// (2 + 2) = 0.5; level 2: (0 + 1) / (1 + 2) = 1/3; levels 3 and 4 have no sentence: 1/2; level 5: (2 + 1) /
/// (3 + 2) = 0.6. A level outside 1..=5 and a length mismatch name the response and sentence.
#[test]
fn level_accuracy_is_each_levels_smoothed_share_of_right_sentences() {
    let levels: [&[u8]; 2] = [&[1, 1, 2], &[5, 5, 5]];
    let right: [&[bool]; 2] = [&[false, true, false], &[true, true, false]];
    let v = level_accuracy(levels.iter().copied().zip(right.iter().copied())).unwrap();
    let want = [0.5, 1.0 / 3.0, 0.5, 0.5, 0.6];
    for (l, (a, b)) in v.iter().zip(want).enumerate() {
        assert!((a - b).abs() < 1e-12, "level {}: {a} against {b}", l + 1);
    }
    let err = level_accuracy([(&[1u8, 6][..], &[true, false][..])]).unwrap_err().to_string();
    assert!(err.contains("sentence 1") && err.contains("internal level") && err.contains('6'), "{err}");
    let err = level_accuracy([(&[1u8][..], &[true, false][..])]).unwrap_err().to_string();
    assert!(err.contains("levels of response 0") && err.contains("expected 2, found 1"), "{err}");
}

/// `monotone_level_accuracy` by hand (pool-adjacent-violators, weights n + 2):
/// - the test above: level 1's 0.5 (weight 4) above level 2's 1/3 (weight 3) pool to (2 + 1) / 7 = 3/7;
///   0.5, 0.5, 0.6 follow in order → [3/7, 3/7, 0.5, 0.5, 0.6];
/// - a pool that grows backwards: levels 1 | 2 2 | 3 3 3 3 with right T | T F | F F F F: 2/3 (w 3), 2/4
///   (w 4), 1/6 (w 6) → 2/3 and 1/2 pool to 4/7 (w 7), then 1/6 joins: (4 + 1) / 13 = 5/13; levels 4, 5
///   (none) stay 1/2;
/// - ties stay apart: levels 2 2 | 3 3 | 4 with right T T | F F | T: 0.5, 3/4 (w 4), 1/4 (w 4), 2/3 (w 3),
///   0.5 (w 2) → 3/4 and 1/4 pool to 0.5, equal to level 1's (not pooled, same value); 2/3 and 0.5 pool
///   to (2 + 1) / 5 = 0.6.
/// Errors are level_accuracy's.
#[test]
fn monotone_level_accuracy_pools_levels_out_of_order() {
    let close = |v: [f64; 5], want: [f64; 5]| {
        for (l, (a, b)) in v.iter().zip(want).enumerate() {
            assert!((a - b).abs() < 1e-12, "level {}: {a} against {b} ({v:?})", l + 1);
        }
    };
    let levels: [&[u8]; 2] = [&[1, 1, 2], &[5, 5, 5]];
    let right: [&[bool]; 2] = [&[false, true, false], &[true, true, false]];
    close(monotone_level_accuracy(levels.iter().copied().zip(right.iter().copied())).unwrap(), [3.0 / 7.0, 3.0 / 7.0, 0.5, 0.5, 0.6]);
    let levels: [&[u8]; 3] = [&[1], &[2, 2], &[3, 3, 3, 3]];
    let right: [&[bool]; 3] = [&[true], &[true, false], &[false; 4]];
    let p = 5.0 / 13.0;
    close(monotone_level_accuracy(levels.iter().copied().zip(right.iter().copied())).unwrap(), [p, p, p, 0.5, 0.5]);
    let levels: [&[u8]; 2] = [&[2, 2, 3], &[3, 4]];
    let right: [&[bool]; 2] = [&[true, true, false], &[false, true]];
    close(monotone_level_accuracy(levels.iter().copied().zip(right.iter().copied())).unwrap(), [0.5, 0.5, 0.5, 0.6, 0.6]);
    let err = monotone_level_accuracy([(&[0u8][..], &[true][..])]).unwrap_err().to_string();
    assert!(err.contains("internal level") && err.contains("1..=5"), "{err}");
}
