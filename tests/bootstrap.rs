//! Bootstrap intervals (src/metrics/bootstrap.rs, src/report/intervals.rs) against the numpy reference
//! `scripts/reference_bootstrap.py`, replaying its explicit item resamples.
use mmboundary::metrics::bootstrap::Interval;
use mmboundary::metrics::calibration::{AnswerConfidence, EceParams};
use mmboundary::report::intervals::{
    cell_interval, metric_of, paired_difference, paired_ids, seeds_paired_difference, seeds_paired_differences, CellRule, ItemScores,
    Metric,
};
use serde_json::Value;
use std::collections::BTreeMap;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bootstrap/golden.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e} (run scripts/reference_bootstrap.py)"));
    serde_json::from_str(&text).unwrap()
}

fn items(v: &Value) -> Vec<ItemScores> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| ItemScores {
            item_id: i["item_id"].as_str().unwrap().into(),
            answer_correct: i["answer_correct"].as_f64().unwrap(),
            sentences: i["sentences"].as_array().unwrap().iter().map(|s| (s[0].as_bool().unwrap(), s[1].as_f64().unwrap())).collect(),
        })
        .collect()
}

const METRICS: [(Metric, &str); 5] =
    [(Metric::Ece, "ece"), (Metric::Mece, "mece"), (Metric::Brier, "brier"), (Metric::Accuracy, "accuracy"), (Metric::Auroc, "auroc")];

fn same(got: Option<Interval>, want: &Value, what: &str) {
    match (got, want.is_null()) {
        (None, true) => {}
        (Some(i), false) => {
            let (lo, hi) = (want["lo"].as_f64().unwrap(), want["hi"].as_f64().unwrap());
            assert!((i.lo - lo).abs() < 1e-9 && (i.hi - hi).abs() < 1e-9, "{what}: got [{}, {}], numpy [{lo}, {hi}]", i.lo, i.hi);
            assert_eq!(i.defined as u64, want["defined"].as_u64().unwrap(), "{what}: defined resamples");
        }
        (g, _) => panic!("{what}: got {g:?}, numpy {want}"),
    }
}

#[test]
fn cell_and_paired_intervals_match_numpy_on_the_same_resamples() {
    let g = golden();
    let rule =
        CellRule { ece: EceParams { bins: g["bins"].as_u64().unwrap() as usize }, answer_confidence: AnswerConfidence::FinalSentence };
    let level = g["level"].as_f64().unwrap();
    let (a, b) = (items(&g["a"]), items(&g["b"]));
    let indices: Vec<Vec<usize>> = g["indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|k| k.as_u64().unwrap() as usize).collect())
        .collect();
    let ids: Vec<String> = g["ids"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    assert_eq!(paired_ids(&a, &b), ids);
    // Variant a has every id, in id order: its resamples index it directly.
    assert_eq!(a.iter().map(|i| i.item_id.clone()).collect::<Vec<_>>(), ids);
    let all: Vec<&ItemScores> = a.iter().collect();
    for (m, name) in METRICS {
        let cell = &g["cells"][format!("a/{name}")];
        let v = metric_of(&all, m, &rule).unwrap();
        assert!((v.unwrap() - cell["value"].as_f64().unwrap()).abs() < 1e-12, "a/{name}: {v:?} vs {}", cell["value"]);
        same(cell_interval(&a, m, &rule, &indices, level).unwrap(), &cell["interval"], &format!("a/{name}"));
        let d = paired_difference(&a, &b, m, &rule, &indices, level).unwrap().unwrap();
        let want = g["cells"][format!("a/{name}")]["value"].as_f64().unwrap() - g["cells"][format!("b/{name}")]["value"].as_f64().unwrap();
        assert!((d.value - want).abs() < 1e-12, "{name}: paired value {} vs {want}", d.value);
        same(d.interval, &g["paired"][name], &format!("paired {name}"));
    }
}

/// `mmb sweep --seeds`: the mean over two runs of a − b, each run's difference, and the interval on the same
/// item resamples, against numpy (the golden's `seeds` section); one run gives `paired_difference` exactly.
#[test]
fn the_mean_over_seeds_of_a_paired_difference_matches_numpy() {
    let g = golden();
    let rule =
        CellRule { ece: EceParams { bins: g["bins"].as_u64().unwrap() as usize }, answer_confidence: AnswerConfidence::FinalSentence };
    let level = g["level"].as_f64().unwrap();
    let (a, b) = (items(&g["a"]), items(&g["b"]));
    let (a2, b2) = (items(&g["seeds"]["a2"]), items(&g["seeds"]["b2"]));
    let indices: Vec<Vec<usize>> = g["indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|k| k.as_u64().unwrap() as usize).collect())
        .collect();
    for (m, name) in METRICS {
        let want = &g["seeds"]["paired"][name];
        let (per_seed, est) = seeds_paired_difference(&[(&a, &b), (&a2, &b2)], m, &rule, &indices, level).unwrap().unwrap();
        let want_seeds: Vec<f64> = want["per_seed"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(per_seed.len(), 2);
        for (got, w) in per_seed.iter().zip(&want_seeds) {
            assert!((got - w).abs() < 1e-12, "{name}: per-seed {got} vs numpy {w}");
        }
        assert!((est.value - (want_seeds[0] + want_seeds[1]) / 2.0).abs() < 1e-12, "{name}: mean {}", est.value);
        same(est.interval, &want["interval"], &format!("seeds {name}"));
        // one run: the single-run paired difference, value and interval
        let one = seeds_paired_difference(&[(&a, &b)], m, &rule, &indices, level).unwrap().unwrap().1;
        assert_eq!(Some(one), paired_difference(&a, &b, m, &rule, &indices, level).unwrap());
    }
    // the per-split form keys runs by (variant, split) and skips a split a run lacks
    let run = |x: &[ItemScores], y: &[ItemScores], with_test: bool| {
        let mut m = BTreeMap::new();
        m.insert(("full".to_string(), "val".to_string()), x.to_vec());
        m.insert(("sft".to_string(), "val".to_string()), y.to_vec());
        if with_test {
            m.insert(("full".to_string(), "test".to_string()), x.to_vec());
            m.insert(("sft".to_string(), "test".to_string()), y.to_vec());
        }
        m
    };
    let (r0, r1) = (run(&a, &b, true), run(&a2, &b2, false));
    let params = mmboundary::metrics::bootstrap::BootstrapParams { resamples: 50, seed: 1, level: 0.95 };
    let splits = vec!["val".to_string(), "test".to_string()];
    let d = seeds_paired_differences(&[&r0, &r1], "full", "sft", &splits, &[Metric::Mece], &rule, &params).unwrap();
    assert_eq!(d.len(), 1, "test is missing from run 1: {d:?}");
    assert_eq!((d[0].split.as_str(), d[0].items), ("val", 23));
    let want: Vec<f64> = g["seeds"]["paired"]["mece"]["per_seed"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!((d[0].per_seed[0] - want[0]).abs() < 1e-12 && (d[0].per_seed[1] - want[1]).abs() < 1e-12);
}
