//! `mmb sweep --seeds N` (issue 21, target 4): what a seed run changes, and the table it writes.
use mmboundary::metrics::bootstrap::Interval;
use mmboundary::report::intervals::{Difference, Estimate, Metric};
use mmboundary::stages::seeds::{seed_overrides, seed_run_name};
use mmboundary::stages::StageConfigs;
use std::path::Path;

fn stages_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/stages"))
}

/// Every stage's params as JSON, under `configs`.
fn resolved(configs: &StageConfigs) -> serde_json::Value {
    use mmboundary::stages::{eval::EvalParams, generate::GenerateParams, map::MapParams, ppo::PpoStageParams, sft::SftStageParams};
    serde_json::json!({
        "generate": serde_json::to_value(configs.params::<GenerateParams>("generate").unwrap()).unwrap(),
        "map": serde_json::to_value(configs.params::<MapParams>("map").unwrap()).unwrap(),
        "sft": serde_json::to_value(configs.params::<SftStageParams>("sft").unwrap()).unwrap(),
        "ppo": serde_json::to_value(configs.params::<PpoStageParams>("ppo").unwrap()).unwrap(),
        "eval": serde_json::to_value(configs.params::<EvalParams>("eval").unwrap()).unwrap(),
    })
}

#[test]
fn a_seed_run_changes_the_seeds_and_nothing_else() {
    let base = StageConfigs::new(stages_dir());
    let main = resolved(&base);
    let run = |k| resolved(&StageConfigs { dir: stages_dir().to_path_buf(), overrides: seed_overrides(&base, k).unwrap() });
    let seeded = run(7);
    // exactly these values moved to 7; setting them back gives the main run's params
    let mut back = seeded.clone();
    for ptr in ["/generate/seed", "/map/seed", "/sft/trainer/seed", "/ppo/seed", "/ppo/trainer/seed", "/eval/seed"] {
        assert_eq!(seeded.pointer(ptr), Some(&serde_json::json!(7)), "{ptr}");
        *back.pointer_mut(ptr).unwrap() = main.pointer(ptr).cloned().unwrap_or(serde_json::json!(0));
    }
    // the trainers kept the stage files' settings (sft.toml's learning rate, epochs …), only gained a seed
    assert_eq!(seeded.pointer("/sft/trainer/learning_rate"), Some(&serde_json::json!(1e-3)));
    assert_eq!(seeded.pointer("/sft/trainer/epochs"), Some(&serde_json::json!(12)));
    assert_eq!(seeded.pointer("/ppo/trainer/learning_rate"), Some(&serde_json::json!(1e-4)));
    let strip = |mut v: serde_json::Value| {
        // the main run's trainers have no explicit seed (their default, 0)
        for t in ["/sft/trainer", "/ppo/trainer"] {
            v.pointer_mut(t).unwrap().as_object_mut().unwrap().remove("seed");
        }
        v
    };
    assert_eq!(strip(back), strip(main));
    // seed 0 is the main run's settings exactly (no overrides): its run reuses the main run's cache
    assert!(seed_overrides(&base, 0).unwrap().is_empty());
    assert_eq!(seed_run_name(2), "seed-2");
}

#[test]
fn the_seeds_table_shows_each_seed_the_mean_and_what_its_interval_says() {
    let d = |split: &str, metric, per_seed: Vec<f64>, lo, hi| {
        let value = per_seed.iter().sum::<f64>() / per_seed.len() as f64;
        Difference {
            split: split.into(),
            metric,
            items: 200,
            per_seed,
            estimate: Estimate { value, interval: Some(Interval { lo, hi, defined: 1000, resamples: 1000 }) },
        }
    };
    let diffs = vec![
        d("val", Metric::Ece, vec![-0.075, -0.05, -0.1], -0.12, -0.03),
        d("val", Metric::Mece, vec![0.032, 0.01, 0.0], 0.005, 0.03),
        d("test", Metric::Brier, vec![0.01, -0.02, 0.0], -0.02, 0.015),
    ];
    let md = mmboundary::report::page::seeds_markdown(&diffs, "full", "SFT", &[0, 1, 2]);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines[0], "| split | metric | items | seed 0 | seed 1 | seed 2 | mean full − SFT [95 % interval] | verdict |");
    assert_eq!(lines[2], "| val | ECE | 200 | -0.075 | -0.050 | -0.100 | -0.075 [-0.120, -0.030] | full better |");
    assert_eq!(lines[3], "| val | MECE | 200 | +0.032 | +0.010 | +0.000 | 0.014 [0.005, 0.030] | SFT better |");
    assert_eq!(lines[4], "| test | Brier | 200 | +0.010 | -0.020 | +0.000 | -0.003 [-0.020, 0.015] | interval spans 0 |");
}

#[test]
fn seeds_need_two_runs_and_belong_to_sweep() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmb")).args(["sweep", "--seeds", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seeds"), "{}", String::from_utf8_lossy(&out.stderr));
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmb"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--store", tmp.path().to_str().unwrap(), "compare", "--seeds", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seeds belongs to `mmb sweep`"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The per-seed table: Table 1's accuracy (level `all` only) and the statement AUROC of each policy under
/// each seed, the mean when every seed has one, and no row for a measure no seed has.
#[test]
fn the_seeds_table_gives_each_policys_accuracy_and_statement_auroc_per_seed() {
    use mmboundary::report::evidence::StatementAuroc;
    use mmboundary::report::page::{seeds_policies_markdown, MetricsRow, SeedPolicies};
    use mmboundary::report::roles::{Role, RoleCell, RoleCells};
    let row = |variant: &str, level: &str, accuracy: f64| MetricsRow {
        variant: variant.into(),
        split: "val".into(),
        level: level.into(),
        responses: 10,
        sentences: 30,
        ece: None,
        mece: None,
        brier: None,
        accuracy: Some(accuracy),
        chain_f1: None,
        auroc: None,
    };
    let stmt = |pairs: &[(&str, Option<f64>)]| {
        pairs.iter().map(|(v, a)| ((v.to_string(), "val".to_string()), StatementAuroc { stated: 20, right: 8, auroc: *a })).collect()
    };
    // Same-role pairs: seed 0's SFT policy has perception AUROC 0.4 over 6 pairs and answer AUROC 0.6 over 2
    // → (2.4 + 1.2) / 8 = 0.45; seed 1's has only answer pairs (0.5); a full policy without pairs has none.
    let role = |v: &str, r: Role, auroc: Option<f64>, pairs: usize| {
        ((v.to_string(), "val".to_string(), r), RoleCell { sentences: 9, right: 3, stated: 9, confidence_sum: 4.5, auroc, pairs })
    };
    let roles0: RoleCells =
        [role("sft", Role::Perception, Some(0.4), 6), role("sft", Role::Answer, Some(0.6), 2), role("full", Role::Answer, Some(0.7), 4)]
            .into_iter()
            .collect();
    let roles1: RoleCells = [role("sft", Role::Answer, Some(0.5), 3), role("full", Role::Answer, None, 0)].into_iter().collect();
    let seed0 = SeedPolicies::new(
        &[row("vanilla", "all", 0.4), row("sft", "all", 0.5), row("sft", "perception", 0.9), row("full", "all", 0.6)],
        &stmt(&[("sft", Some(0.7)), ("full", Some(0.8))]),
        &roles0,
    );
    // seed 1's full policy judged every stated sentence right: no AUROC
    let seed1 = SeedPolicies::new(
        &[row("vanilla", "all", 0.5), row("sft", "all", 0.45), row("full", "all", 0.55)],
        &stmt(&[("sft", Some(0.6)), ("full", None)]),
        &roles1,
    );
    let md = seeds_policies_markdown(&[seed0, seed1], &["vanilla", "sft", "full"], &["val".into(), "test".into()], &[0, 1]);
    let want = "| split | policy | measure | seed 0 | seed 1 | mean |\n|---|---|---|---|---|---|\n\
                | val | vanilla | accuracy | 0.400 | 0.500 | 0.450 |\n\
                | val | sft | accuracy | 0.500 | 0.450 | 0.475 |\n\
                | val | sft | statement AUROC | 0.700 | 0.600 | 0.650 |\n\
                | val | sft | statement AUROC, same-role pairs | 0.450 | 0.500 | 0.475 |\n\
                | val | full | accuracy | 0.600 | 0.550 | 0.575 |\n\
                | val | full | statement AUROC | 0.800 | – | – |\n\
                | val | full | statement AUROC, same-role pairs | 0.700 | – | – |\n";
    assert_eq!(md, want);
}
