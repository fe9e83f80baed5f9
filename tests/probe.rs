//! The linear probe (src/metrics/probe.rs) against numpy's (scripts/reference_probe.py, fixture
//! tests/fixtures/probe/golden.json): the same class scores on every test row, the same accuracy and
//! majority baseline.
use mmboundary::metrics::probe::{majority_share, RidgeProbe};
use serde_json::Value;

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

fn labels(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

#[test]
fn the_probe_matches_numpys_ridge_classifier() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/probe/golden.json");
    let g: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("golden.json: run scripts/reference_probe.py")).unwrap();
    let (tx, ty, vx, vy) = (rows(&g["train_x"]), labels(&g["train_y"]), rows(&g["test_x"]), labels(&g["test_y"]));
    let p = RidgeProbe::fit(&tx, &ty, g["classes"].as_u64().unwrap() as usize, g["lambda"].as_f64().unwrap()).unwrap();
    let want: Vec<Vec<f64>> =
        g["test_scores"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect();
    assert_eq!(want.len(), vx.len());
    for (i, (row, w)) in vx.iter().zip(&want).enumerate() {
        let got = p.scores(row).unwrap();
        for (k, (a, b)) in got.iter().zip(w).enumerate() {
            assert!((a - b).abs() < 1e-9, "row {i} class {k}: {a} vs numpy {b}");
        }
    }
    assert_eq!(p.accuracy(&vx, &vy).unwrap(), g["test_accuracy"].as_f64().unwrap());
    assert_eq!(majority_share(&ty, &vy).unwrap(), g["majority"].as_f64().unwrap());
}
