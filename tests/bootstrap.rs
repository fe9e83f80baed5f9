//! Bootstrap intervals (src/metrics/bootstrap.rs, src/report/intervals.rs) against the numpy reference
//! `scripts/reference_bootstrap.py`, replaying its explicit item resamples.
use mmboundary::metrics::bootstrap::Interval;
use mmboundary::metrics::calibration::{AnswerConfidence, EceParams};
use mmboundary::report::intervals::{cell_interval, metric_of, paired_difference, paired_ids, CellRule, ItemScores, Metric};
use serde_json::Value;

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
