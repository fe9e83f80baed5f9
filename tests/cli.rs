//! The `mmb` binary as a user runs it.
use std::process::Command;

fn mmb(store: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mmb")).arg("--store").arg(store).args(args).output().unwrap()
}

#[test]
fn mmb_does_not_link_libtorch() {
    // Loading libtorch costs ~0.45 s per process; the CLI must stay instant (torch work runs in a worker).
    let bin = std::fs::read(env!("CARGO_BIN_EXE_mmb")).unwrap();
    let needle = b"libtorch_cpu.so";
    assert!(!bin.windows(needle.len()).any(|w| w == needle), "mmb links libtorch_cpu.so");
}

#[test]
fn verify_exits_non_zero_on_a_corrupt_artifact_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = mmboundary::store::Store::open(dir.path()).unwrap();
    let id = store.put_bytes(mmboundary::store::ArtifactKind::Json, b"{\"a\": 1}", None).unwrap();
    let ok = mmb(dir.path(), &["verify"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let path = store.path_of(&id, mmboundary::store::ArtifactKind::Json);
    std::fs::write(&path, b"{\"a\": 2}").unwrap();
    let bad = mmb(dir.path(), &["verify"]);
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("MISMATCH") && out.contains(id.as_str()), "{out}");
}

#[test]
fn show_and_import_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let o = mmb(dir.path(), &["show", "abcdef12"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("artifact abcdef12 not found"));
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"not parquet").unwrap();
    let o = mmb(dir.path(), &["import", junk.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("junk") && err.contains("not an artifact id"), "{err}");
}

#[test]
fn sweep_runs_each_variant_under_its_own_lock_and_shares_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let stages = dir.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::write(stages.join("dataset.toml"), "[params]\nn_items = 6\nimage_size = 32\nchunk = 3\n").unwrap();
    std::fs::write(
        stages.join("sweep.toml"),
        "[[variant]]\nname = \"same\"\n\n[[variant]]\nname = \"seed1\"\ndescription = \"another seed\"\n[variant.params.dataset]\nseed = 1\n",
    )
    .unwrap();
    let store = dir.path().join("artifacts");
    let run = |args: &[&str]| {
        let o =
            Command::new(env!("CARGO_BIN_EXE_mmb")).arg("--store").arg(&store).arg("--stages").arg(&stages).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    run(&["run", "dataset"]);
    let out = run(&["sweep", "dataset"]);
    let line = |name: &str| out.lines().find(|l| l.starts_with(name)).unwrap().to_string();
    assert!(line("same").contains("ran []") && line("same").contains("restored [dataset]"), "{out}");
    assert!(line("seed1").contains("ran [dataset]") && line("seed1").contains("another seed"), "{out}");
    let again = run(&["sweep", "dataset"]);
    assert!(again.lines().all(|l| l.contains("ran []") && l.contains("restored []")), "{again}");
    // A preset is a variant of presets.toml run by `mmb run --preset`, under its own lock.
    std::fs::write(stages.join("presets.toml"), "[[variant]]\nname = \"seed2\"\n[variant.params.dataset]\nseed = 2\n").unwrap();
    let mmb = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mmb")).arg("--store").arg(&store).arg("--stages").arg(&stages).args(args).output().unwrap()
    };
    let o = mmb(&["run", "--preset", "seed2", "dataset"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("ran dataset"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = mmb(&["run", "dataset"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("up to date"), "the default lock is untouched");
    let o = mmb(&["run", "--preset", "nope"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("presets.toml") && err.contains("seed2"), "{err}");
    // `--set` is the preset's params from the command line: the same key, so the same artifact from the
    // run-cache, under a lock named after the settings; the default lock untouched.
    let o = mmb(&["run", "--set", "dataset.seed=2", "dataset"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("dataset.seed=2 (lock set-") && err.contains("restored from the run-cache: dataset"),
        "{err}"
    );
    let lock_of = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(store.join("locks").join(format!("{name}.json"))).unwrap()).unwrap()
    };
    let set_lock = std::fs::read_dir(store.join("locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("set-"))
        .unwrap()
        .trim_end_matches(".json")
        .to_string();
    assert_eq!(lock_of(&set_lock)["stages"]["dataset"]["outputs"], lock_of("preset-seed2")["stages"]["dataset"]["outputs"]);
    let o = mmb(&["run", "dataset"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("up to date"), "the default lock is untouched");
    let status = |args: &[&str]| String::from_utf8_lossy(&mmb(&[&["status"], args].concat()).stdout).into_owned();
    assert!(status(&["--set", "dataset.seed=2"]).lines().any(|l| l.starts_with("dataset") && l.contains("up to date")), "its own lock");
    let stale = status(&["--set", "dataset.seed=4"]);
    assert!(stale.lines().any(|l| l.starts_with("dataset") && l.contains("stale")), "{stale}");
    let o = mmb(&["run", "--preset", "seed2", "--set", "dataset.seed=3", "dataset"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("ran dataset") && err.contains("(lock preset-seed2-set-"),
        "the setting over the preset: {err}"
    );
    for (bad, says) in [
        ("datset.seed=1", vec!["no stage file", "datset.toml", "dataset"]),
        ("dataset.seeed=1", vec!["dataset.toml", "seeed"]),
        ("dataset.seed=[1", vec!["--set dataset.seed=[1", "not a TOML value"]),
        ("dataset.seed", vec!["expected STAGE.KEY=VALUE"]),
    ] {
        let o = mmb(&["run", "--set", bad, "dataset"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && says.iter().all(|s| err.contains(s)), "--set {bad}: {err}");
    }
    // A typo in a variant is an error that names the file.
    std::fs::write(stages.join("sweep.toml"), "[[variant]]\nname = \"bad\"\n[variant.params.dataset]\nseeed = 1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mmb"))
        .arg("--store")
        .arg(&store)
        .arg("--stages")
        .arg(&stages)
        .args(["sweep", "dataset"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("dataset.toml") && err.contains("seeed"), "{err}");
}

#[test]
fn the_shipped_stage_files_and_every_sweep_variant_parse_into_a_valid_pipeline() {
    let stages = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("stages");
    let p = mmboundary::stages::pipeline(&stages).unwrap();
    let names: Vec<&str> = p.ordered().map(|s| s.name()).collect();
    for s in
        ["dataset", "demo_clip", "features", "demo_mllm", "generate", "score", "bin", "map", "sft", "ppo", "eval_chains", "eval", "report"]
    {
        assert!(names.contains(&s), "{s} missing from {names:?}");
    }
    let sweep = mmboundary::stages::SweepFile::load(&stages.join("sweep.toml")).unwrap();
    assert!(sweep.variant.len() >= 9);
    for v in &sweep.variant {
        let c = mmboundary::stages::StageConfigs { dir: stages.clone(), overrides: v.params.clone() };
        let pv = mmboundary::stages::pipeline_with(&c).unwrap_or_else(|e| panic!("variant {}: {e:#}", v.name));
        // A variant changes params of at least one stage.
        let changed = pv.ordered().zip(p.ordered()).any(|(a, b)| a.params() != b.params());
        assert!(changed, "variant {} changes nothing", v.name);
    }
    let presets = mmboundary::stages::SweepFile::load(&stages.join("presets.toml")).unwrap();
    let smol = presets.variant.iter().find(|v| v.name == "smollm2-135m").expect("the SmolLM2 preset");
    let c = mmboundary::stages::StageConfigs { dir: stages.clone(), overrides: smol.params.clone() };
    let pv = mmboundary::stages::pipeline_with(&c).unwrap();
    let demo = pv.ordered().find(|s| s.name() == "demo_mllm").unwrap().params();
    assert_eq!(demo["trainer"]["decoder"], "smollm2_gguf", "{demo}");
    // The stage files cut the levels at quintiles and leave a missing statement out of R_EC and R_CS (the
    // rollouts score with it, the updates key on it); `paper-design` restores the paper's μ/σ and -1.
    let param = |p: &mmboundary::engine::Pipeline, stage: &str| p.ordered().find(|s| s.name() == stage).unwrap().params();
    let preset = |name: &str| {
        let v = presets.variant.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("the {name} preset"));
        mmboundary::stages::pipeline_with(&mmboundary::stages::StageConfigs { dir: stages.clone(), overrides: v.params.clone() }).unwrap()
    };
    assert_eq!(param(&p, "bin")["fusion"]["intervals"], "quantile");
    assert_eq!(param(&p, "rollout_0")["ppo"]["rewards"]["missing_statement"], "skip");
    assert_eq!(param(&p, "update_0")["ppo"]["rewards"]["missing_statement"], "skip", "the update's reward params too");
    assert_eq!(param(&p, "rollout_0")["ppo"]["internal_value"], "monotone_level_accuracy");
    assert_eq!(param(&p, "update_15")["ppo"]["internal_value"], "monotone_level_accuracy");
    let paper = preset("paper-design");
    assert_eq!(param(&paper, "bin")["fusion"]["intervals"], "mu_sigma");
    assert_eq!(param(&paper, "rollout_0")["ppo"]["rewards"]["missing_statement"], "penalize");
    assert_eq!(param(&paper, "update_15")["ppo"]["rewards"]["missing_statement"], "penalize");
    // The level's value is the default of the params, so it is left out of them (and of the keys).
    assert!(param(&paper, "rollout_0")["ppo"]["internal_value"].is_null(), "paper-design's IV is the level's value");
    // Session 15's experiment: quintiles, rollouts at 0.7 (the files leave the trainer's default, 1), and -1.
    let eq = preset("equal-count-levels");
    assert_eq!(param(&eq, "bin")["fusion"]["intervals"], "quantile");
    assert!(param(&p, "rollout_0")["ppo"]["trainer"]["generation"]["temperature"].is_null());
    assert_eq!(param(&eq, "rollout_0")["ppo"]["trainer"]["generation"]["temperature"], 0.7);
    assert_eq!(param(&eq, "rollout_0")["ppo"]["rewards"]["missing_statement"], "penalize");
    assert!(param(&eq, "rollout_0")["ppo"]["internal_value"].is_null());
    // The report's header names the model the preset trains, the default run's its scratch decoder.
    assert_eq!(mmboundary::stages::demo_mllm::describe(&demo).unwrap(), "the demo MLLM on SmolLM2-135M-Instruct (stage demo_mllm)");
    let default_demo = p.ordered().find(|s| s.name() == "demo_mllm").unwrap().params();
    assert_eq!(
        mmboundary::stages::demo_mllm::describe(&default_demo).unwrap(),
        "the demo MLLM with a decoder trained from scratch (stage demo_mllm)"
    );
    // What follows the base model is cut to fit 2 cores, over the stage files' values.
    let params = |name: &str| pv.ordered().find(|s| s.name() == name).unwrap_or_else(|| panic!("{name}")).params();
    assert_eq!(params("sft")["trainer"]["epochs"], 1);
    assert_eq!(params("sft")["trainer"]["learning_rate"], 1e-4);
    assert_eq!(params("sft")["trainer"]["batch_size"], 16, "sft.toml's other settings stay");
    assert!(pv.ordered().any(|s| s.name() == "update_3") && !pv.ordered().any(|s| s.name() == "update_4"));
    assert_eq!(params("update_0")["ppo"]["trainer"]["learning_rate"], 1e-5);
    assert_eq!(params("eval_chains")["limit"], 25);
    assert_eq!(params("eval_chains")["image_swap"], false);
}

/// A fake report artifact recorded under `lock` (the main lock, or a preset's), as the report stage records one.
fn record_report(store: &mmboundary::store::Store, lock: Option<&str>, marker: &str) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report.html"), marker).unwrap();
    let id = store.put_dir(dir.path(), None).unwrap();
    let mut l = mmboundary::engine::LockFile::load_named(store.root(), lock).unwrap();
    let output = mmboundary::engine::OutputRecord { id: id.to_string(), kind: mmboundary::store::ArtifactKind::Tar, bytes: 0 };
    l.stages.insert(
        "report".into(),
        mmboundary::engine::StageRecord {
            key: "k".repeat(64),
            code_version: "1".into(),
            params: serde_json::json!({}),
            inputs: Default::default(),
            models: Default::default(),
            device: "cpu".into(),
            threads: None,
            outputs: [("report".to_string(), output)].into(),
            finished: String::new(),
            seconds: 0.0,
        },
    );
    l.save_named(store.root(), lock).unwrap();
    store.root().join("cache").join(id.as_str()).join("report.html")
}

#[test]
fn mmb_works_from_any_folder_inside_the_project_and_a_preset_run_points_at_its_own_report() {
    let project = tempfile::tempdir().unwrap();
    let stages = project.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::write(stages.join("dataset.toml"), "[params]\nn_items = 4\nimage_size = 32\nchunk = 2\n").unwrap();
    std::fs::write(stages.join("presets.toml"), "[[variant]]\nname = \"seed2\"\n[variant.params.dataset]\nseed = 2\n").unwrap();
    let sub = project.path().join("notes/deep");
    std::fs::create_dir_all(&sub).unwrap();
    let mmb_in = |dir: &std::path::Path, args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_mmb"))
            .current_dir(dir)
            .env_remove("MMB_STORE")
            .env_remove("MMB_STAGES")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // Run from a subfolder: the project's stage files are used and the store is the project's.
    let err = mmb_in(&sub, &["run", "dataset"]);
    assert!(err.contains("ran dataset"), "{err}");
    // Without a terminal, one line per stage start and finish, with the time.
    let started = err.lines().find(|l| l.contains("dataset: started")).unwrap_or_else(|| panic!("no start line: {err}"));
    assert!(started.starts_with('[') && started.contains(" s] "), "{started}");
    assert!(err.lines().any(|l| l.contains("dataset: finished in ")), "{err}");
    assert!(project.path().join("artifacts/mmb.lock.json").is_file());
    assert!(!sub.join("artifacts").exists(), "a store was made in the subfolder");
    assert!(mmb_in(project.path(), &["run", "dataset"]).contains("up to date"));
    // The preset's report, not the default run's.
    let store = mmboundary::store::Store::open(project.path().join("artifacts")).unwrap();
    record_report(&store, None, "main");
    let preset_report = record_report(&store, Some("preset-seed2"), "preset");
    let err = mmb_in(&sub, &["run", "--preset", "seed2", "dataset"]);
    let line = err.lines().find(|l| l.starts_with("report: ")).unwrap_or_else(|| panic!("no report line: {err}"));
    assert_eq!(std::fs::read_to_string(line.trim_start_matches("report: ")).unwrap(), "preset", "{line}");
    assert!(preset_report.is_file());
}

#[test]
fn compare_runs_the_baselines_file_under_their_own_locks() {
    let dir = tempfile::tempdir().unwrap();
    let stages = dir.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::write(stages.join("dataset.toml"), "[params]\nn_items = 6\nimage_size = 32\nchunk = 3\n").unwrap();
    std::fs::write(
        stages.join("baselines.toml"),
        "[[variant]]\nname = \"b1\"\ndescription = \"a baseline\"\nrow = \"vanilla\"\n[variant.params.dataset]\nseed = 1\n",
    )
    .unwrap();
    let store = dir.path().join("artifacts");
    let mmb = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mmb")).arg("--store").arg(&store).arg("--stages").arg(&stages).args(args).output().unwrap()
    };
    let o = mmb(&["compare", "dataset"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|l| l.starts_with("b1") && l.contains("ran [dataset]") && l.contains("a baseline")), "{out}");
    let lock = mmboundary::engine::LockFile::load_named(&store, Some("b1")).unwrap();
    assert!(lock.stages.contains_key("dataset"), "the baseline's own lock records its run");
    assert!(!mmboundary::engine::LockFile::load(&store).unwrap().stages.contains_key("dataset"), "the main lock is untouched");
    let o = mmb(&["compare", "--only", "nope", "dataset"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("baselines.toml") && err.contains("nope"), "{err}");
}

/// `mmb shard-task` (what a Slurm array task runs on its node) holds the stage's device request against
/// the node before running: a GPU request on a node without one fails naming the stage, the setting and
/// the file that set it, and nothing runs (a PPO iteration's task checks `ppo`'s settings).
#[test]
fn shard_task_refuses_a_gpu_request_on_a_node_without_one() {
    assert!(!mmboundary::stages::device::gpu_visible(), "this check is for a machine without a GPU");
    let dir = tempfile::tempdir().unwrap();
    let stages = dir.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    let project = stages.join("project.toml");
    std::fs::write(&project, "[model]\ndevice = \"cuda\"\n").unwrap();
    for (stage, config) in [("generate", "generate"), ("rollout_0", "ppo")] {
        let task = dir.path().join(format!("{stage}.json"));
        std::fs::write(&task, serde_json::json!({ "job": { "stage": stage } }).to_string()).unwrap();
        let store = dir.path().join("artifacts");
        let o = mmb(&store, &["--stages", stages.to_str().unwrap(), "shard-task", task.to_str().unwrap(), "--index", "0"]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{e}");
        let want = format!("stage `{config}`: device = \"cuda\" (set in {})", project.display());
        assert!(e.contains(&want) && e.contains("nothing ran"), "{want}\nnot in\n{e}");
    }
}
