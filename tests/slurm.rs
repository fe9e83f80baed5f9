//! Stages on a real Slurm cluster (`scripts/ci/slurm.sh install && scripts/ci/slurm.sh start DIR && . DIR/env`):
//! a map stage sharded into 4 array tasks gives the rows of the local run, a failed shard is reported with
//! its log and the rerun submits only it, a cancelled job is reported instead of waited on, a stage that
//! is not sharded runs as one job. Without a cluster every test FAILS, saying how to start one.
//!
//! This test binary has its own `main` (Cargo.toml: `harness = false`): the array tasks run this very
//! binary as `slurm shard-task PIPELINE DIR TASK_FILE`, so the tasks run the same stage code as the test.
use arrow::array::{Array, AsArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use mmboundary::engine::executor::{load_submissions, run_task, slurm_dir, ExecutorFile, ExecutorKind, Executors, StageExecutor, TaskFile};
use mmboundary::engine::shard::{merge_parts, shard_of};
use mmboundary::engine::slurm::SlurmClient;
use mmboundary::engine::{InputSpec, LockFile, Pipeline, RunOptions, ShardSpec, Stage, StageContext};
use mmboundary::store::{ArtifactId, ArtifactKind, Lineage, Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

const ITEMS: i64 = 24;

/// `numbers`: ids q0… with x = their number.
struct Numbers;
impl Stage for Numbers {
    fn name(&self) -> &str {
        "numbers"
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![]
    }
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "n": ITEMS })
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("x", DataType::Int64, false)]));
        // Written in a shuffled order so that "the local order" is not simply sorted.
        let xs: Vec<i64> = (0..ITEMS).map(|i| (i * 7) % ITEMS).collect();
        let ids: Vec<String> = xs.iter().map(|x| format!("q{x}")).collect();
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(ids)), Arc::new(Int64Array::from(xs))])?;
        ctx.write_table("out", schema, &[b], None)?;
        Ok(())
    }
}

/// `square`: a map stage; item x gives x % 3 + 1 rows (x, j, x² + j). Fails on the shard holding q3 while
/// `$MMB_TEST_FAIL` names an existing file; waits on the shard holding q5 while `$MMB_TEST_SLEEP` does.
struct Square;
impl Stage for Square {
    fn name(&self) -> &str {
        "square"
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::new("numbers", "numbers", "out")]
    }
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn shard(&self) -> Option<ShardSpec> {
        Some(ShardSpec::new("numbers", "id"))
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let t = ctx.input_table("numbers")?.concat()?;
        let ids = t.column(0).as_string::<i32>();
        let xs = t.column(1).as_primitive::<Int64Type>();
        let holds = |id: &str| (0..ids.len()).any(|i| ids.value(i) == id);
        let marker = |var: &str| std::env::var_os(var).map(PathBuf::from).is_some_and(|p| p.exists());
        if marker("MMB_TEST_FAIL") && holds("q3") {
            anyhow::bail!("injected failure on the shard holding q3");
        }
        if holds("q5") {
            let until = Instant::now() + Duration::from_secs(300);
            while marker("MMB_TEST_SLEEP") && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let (mut o_id, mut o_j, mut o_y) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..t.num_rows() {
            let x = xs.value(i);
            for j in 0..(x % 3 + 1) {
                o_id.push(ids.value(i).to_string());
                o_j.push(j);
                o_y.push(x * x + j);
            }
        }
        let schema = square_schema();
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(o_id)), Arc::new(Int64Array::from(o_j)), Arc::new(Int64Array::from(o_y))],
        )?;
        ctx.write_table("out", schema, &[b], None)?;
        Ok(())
    }
}

fn square_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("j", DataType::Int64, false),
        Field::new("y", DataType::Int64, false),
    ]))
}

/// `total`: not a map stage (one row: the sum of y), so under Slurm it runs as a single job.
struct Total;
impl Stage for Total {
    fn name(&self) -> &str {
        "total"
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::new("squares", "square", "out")]
    }
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let t = ctx.input_table("squares")?.concat()?;
        let sum: i64 = t.column(2).as_primitive::<Int64Type>().values().iter().sum();
        let schema = Arc::new(Schema::new(vec![Field::new("sum", DataType::Int64, false)]));
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![sum]))])?;
        ctx.write_table("out", schema, &[b], None)?;
        Ok(())
    }
}

fn squares() -> Pipeline {
    Pipeline::new(vec![Box::new(Numbers), Box::new(Square), Box::new(Total)]).unwrap()
}

/// The real `score` stage on tiny models: dataset → features → generate (in `mmb-torch`) → score.
fn scoring(dir: &Path) -> Pipeline {
    use mmboundary::data::penumbra::PenumbraParams;
    use mmboundary::stages::dataset::{DatasetParams, DatasetStage};
    use mmboundary::stages::features::{FeaturesParams, FeaturesStage};
    use mmboundary::stages::generate::{GenerateParams, GenerateStage};
    use mmboundary::stages::score::{ScoreParams, ScoreStage};
    let clip = common::fixtures().join("encoders/clip_tiny");
    let model = dir.join("tiny-llava");
    Pipeline::new(vec![
        Box::new(DatasetStage {
            params: DatasetParams {
                penumbra: PenumbraParams { n_items: 16, image_size: 32, ..Default::default() },
                chunk: 8,
                ..Default::default()
            },
        }),
        Box::new(FeaturesStage {
            params: FeaturesParams { clip: Some(clip.clone()), batch: 4, merge: Some(1), ..Default::default() },
            session: Default::default(),
        }),
        Box::new(GenerateStage {
            params: GenerateParams { model: Some(model), batch: 4, max_new_tokens: 12, device: "cpu".into(), ..Default::default() },
        }),
        Box::new(ScoreStage {
            params: ScoreParams { minilm: mmboundary::encoders::minilm::default_model_dir(), clip: Some(clip), ..Default::default() },
            session: Default::default(),
        }),
    ])
    .unwrap()
}

/// `generate` alone (in `mmb-torch`), sampling at temperature 1, two chains per question, on a selection
/// (every split, the first 12 of 16 questions) in batches of `batch`.
fn generating(dir: &Path, batch: usize) -> Pipeline {
    use mmboundary::data::penumbra::PenumbraParams;
    use mmboundary::stages::dataset::{DatasetParams, DatasetStage};
    use mmboundary::stages::features::{FeaturesParams, FeaturesStage};
    use mmboundary::stages::generate::{GenerateParams, GenerateStage};
    let clip = common::fixtures().join("encoders/clip_tiny");
    Pipeline::new(vec![
        Box::new(DatasetStage {
            params: DatasetParams {
                penumbra: PenumbraParams { n_items: 16, image_size: 32, ..Default::default() },
                chunk: 8,
                ..Default::default()
            },
        }),
        Box::new(FeaturesStage {
            params: FeaturesParams { clip: Some(clip), batch: 4, merge: Some(1), ..Default::default() },
            session: Default::default(),
        }),
        Box::new(GenerateStage {
            params: GenerateParams {
                model: Some(dir.join("tiny-llava")),
                splits: vec!["train".into(), "val".into(), "test".into(), "ood".into()],
                limit: Some(12),
                samples: 2,
                batch,
                max_new_tokens: 10,
                temperature: 1.0,
                device: "cpu".into(),
                ..Default::default()
            },
        }),
    ])
    .unwrap()
}

fn pipeline_named(name: &str, dir: &Path) -> Pipeline {
    match name {
        "squares" => squares(),
        "scoring" => scoring(dir),
        // One PPO iteration of 6 questions on the tiny pipeline (its model in DIR/tiny-llava).
        "rl" => common::tiny::pipeline_with(&dir.join("tiny-llava"), |p| {
            p.ppo = mmboundary::stages::ppo::PpoStageParams {
                iterations: 1,
                prompts_per_iteration: 6,
                ..common::tiny::ppo_params(&dir.join("tiny-llava"), 1.0)
            }
        }),
        // eval on the tiny pipeline: the vanilla model and SC (2 samples at 0.7 per question), the first 3
        // questions of val, test and ood, with the image-swap pass; no checkpoint, so no training runs.
        "evaluating" => common::tiny::pipeline_with(&dir.join("tiny-llava"), |p| {
            p.eval = mmboundary::stages::eval::EvalParams {
                variants: vec!["vanilla".into(), "sc".into()],
                limit: Some(3),
                sc: mmboundary::stages::self_consistency::ScParams { samples: 2, temperature: 0.7 },
                ..common::tiny::eval_params(&dir.join("tiny-llava"))
            }
        }),
        "generating-b1" => generating(dir, 1),
        "generating-b4" => generating(dir, 4),
        other => panic!("no test pipeline `{other}`"),
    }
}

/// The executor: `stage` on Slurm with `shards` shards, the rest here; tasks run this binary.
fn slurm_for(stages: &[&str], shards: usize, pipeline: &str, dir: &Path) -> Option<Arc<Executors>> {
    let mut file = ExecutorFile::default();
    file.slurm.shards = shards;
    file.slurm.poll_seconds = 0.2;
    file.slurm.throttle = Some(8);
    for s in stages {
        file.stage.insert(s.to_string(), StageExecutor { executor: Some(ExecutorKind::Slurm), ..Default::default() });
    }
    let exe = std::env::current_exe().unwrap();
    let task_command = vec![exe.to_string_lossy().into_owned(), "shard-task".into(), pipeline.into(), dir.to_string_lossy().into_owned()];
    Some(Arc::new(Executors { file, task_command }))
}

fn output_of(store: &Store, lock: Option<&str>, stage: &str, out: &str) -> ArtifactId {
    let lock = LockFile::load_named(store.root(), lock).unwrap();
    ArtifactId::parse(&lock.stages.get(stage).unwrap_or_else(|| panic!("no {stage} in the lock")).outputs[out].id).unwrap()
}

fn read_squares(store: &Store, id: &ArtifactId) -> Vec<(String, i64, i64)> {
    let b = store.read_table(id).unwrap().concat().unwrap();
    let (ids, j, y) = (b.column(0).as_string::<i32>(), b.column(1).as_primitive::<Int64Type>(), b.column(2).as_primitive::<Int64Type>());
    (0..b.num_rows()).map(|i| (ids.value(i).to_string(), j.value(i), y.value(i))).collect()
}

/// The rows `square` must write, by hand: items in `numbers`' order (x = 7i mod 24), x % 3 + 1 rows each.
fn expected_squares() -> Vec<(String, i64, i64)> {
    let mut v = Vec::new();
    for i in 0..ITEMS {
        let x = (i * 7) % ITEMS;
        for j in 0..(x % 3 + 1) {
            v.push((format!("q{x}"), j, x * x + j));
        }
    }
    v
}

fn fresh_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("artifacts")).unwrap();
    (dir, store)
}

fn opts(lock: Option<&str>, force: &[&str], executor: Option<Arc<Executors>>) -> RunOptions {
    RunOptions { lock: lock.map(String::from), force: force.iter().map(|s| s.to_string()).collect(), executor, ..Default::default() }
}

fn square_sharded_into_4_gives_the_local_rows_byte_identical() {
    let (dir, store) = fresh_store();
    let p = squares();
    let t0 = Instant::now();
    p.run(&store, &opts(None, &[], None)).unwrap();
    let local_s = t0.elapsed().as_secs_f64();
    let local = output_of(&store, None, "square", "out");
    assert_eq!(read_squares(&store, &local), expected_squares());

    let t0 = Instant::now();
    let s = p.run(&store, &opts(Some("slurm"), &["square"], slurm_for(&["square"], 4, "squares", dir.path()))).unwrap();
    let slurm_s = t0.elapsed().as_secs_f64();
    assert!(s.ran.contains(&"square".to_string()), "{s:?}");
    let merged = output_of(&store, Some("slurm"), "square", "out");
    assert_eq!(read_squares(&store, &merged), expected_squares());
    // Same rows and lineage: the very same artifact (its name is the hash of its bytes).
    assert_eq!(merged, local, "the merged artifact is byte-identical to the local one");
    let key = LockFile::load_named(store.root(), Some("slurm")).unwrap().stages["square"].key.clone();
    let sdir = slurm_dir(store.root(), "square", &key);
    let subs = load_submissions(&sdir);
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].indexes, vec![0, 1, 2, 3]);
    for i in 0..4 {
        assert!(sdir.join(format!("manifests/shard-{i}.json")).exists());
    }
    // Every shard holds the items whose id hashes to it, and no other.
    for i in 0..4 {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(sdir.join(format!("manifests/shard-{i}.json"))).unwrap()).unwrap();
        let want = (0..ITEMS).filter(|x| shard_of(&format!("q{x}"), 4) == i).count() as u64;
        assert_eq!(m["items"].as_u64(), Some(want), "shard {i}");
    }
    eprintln!("    square ({ITEMS} items): local {local_s:.2} s, Slurm 4 shards {slurm_s:.2} s");

    // Another shard count: the 4-shard manifests are not taken for shards of 2.
    p.run(&store, &opts(Some("slurm"), &["square"], slurm_for(&["square"], 2, "squares", dir.path()))).unwrap();
    let subs = load_submissions(&sdir);
    assert_eq!((subs.len(), subs[1].indexes.clone(), subs[1].of), (2, vec![0, 1], 2));
    assert_eq!(output_of(&store, Some("slurm"), "square", "out"), local);

    // A part whose bytes no longer match its hash is not merged: its shard runs again, only it.
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(sdir.join("manifests/shard-1.json")).unwrap()).unwrap();
    let part = store.path_of(&ArtifactId::parse(m["outputs"]["out"]["id"].as_str().unwrap()).unwrap(), ArtifactKind::Parquet);
    std::fs::write(&part, b"corrupt").unwrap();
    p.run(&store, &opts(Some("slurm"), &["square"], slurm_for(&["square"], 2, "squares", dir.path()))).unwrap();
    let subs = load_submissions(&sdir);
    assert_eq!((subs.len(), subs[2].indexes.clone()), (3, vec![1]));
    assert_eq!(output_of(&store, Some("slurm"), "square", "out"), local);
}

/// 64 shards for 24 items: only the shards that hold items get a task; the merge is still the local artifact.
fn more_shards_than_items_submits_only_shards_holding_items() {
    let (dir, store) = fresh_store();
    let p = squares();
    p.run(&store, &opts(None, &[], None)).unwrap();
    let local = output_of(&store, None, "square", "out");
    let t0 = Instant::now();
    p.run(&store, &opts(Some("slurm"), &["square"], slurm_for(&["square"], 64, "squares", dir.path()))).unwrap();
    let slurm_s = t0.elapsed().as_secs_f64();
    assert_eq!(output_of(&store, Some("slurm"), "square", "out"), local);
    let key = LockFile::load_named(store.root(), Some("slurm")).unwrap().stages["square"].key.clone();
    let subs = load_submissions(&slurm_dir(store.root(), "square", &key));
    let mut want: Vec<usize> = (0..ITEMS).map(|x| shard_of(&format!("q{x}"), 64)).collect();
    want.sort();
    want.dedup();
    assert_eq!(subs[0].indexes, want);
    eprintln!("    square ({ITEMS} items) on 64 shards: {} tasks, {slurm_s:.2} s", want.len());
}

fn a_failed_shard_is_reported_and_the_rerun_submits_only_it() {
    let (dir, store) = fresh_store();
    let marker = dir.path().join("fail");
    std::fs::write(&marker, b"").unwrap();
    std::env::set_var("MMB_TEST_FAIL", &marker);
    let p = squares();
    let exec = slurm_for(&["square"], 4, "squares", dir.path());
    let err = p.run(&store, &opts(None, &[], exec.clone())).unwrap_err().to_string();
    let bad = shard_of("q3", 4);
    assert!(err.contains(&format!("shard {bad} of 4: FAILED")), "{err}");
    assert!(err.contains("1 of 4 Slurm task(s)") && err.contains("nothing was merged"), "{err}");
    assert!(err.contains(&format!("--array={bad}%8")), "{err}");
    // The log path named in the report holds the stage's error.
    let log = err.split("log: ").nth(1).unwrap().split_whitespace().next().unwrap();
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{log}: {e}"));
    assert!(text.contains("injected failure on the shard holding q3"), "{text}");
    assert!(!LockFile::load(store.root()).unwrap().stages.contains_key("square"), "nothing recorded");

    std::fs::remove_file(&marker).unwrap();
    p.run(&store, &opts(None, &[], exec)).unwrap();
    let key = LockFile::load(store.root()).unwrap().stages["square"].key.clone();
    let subs = load_submissions(&slurm_dir(store.root(), "square", &key));
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[1].indexes, vec![bad], "only the failed shard was resubmitted");
    assert_eq!(read_squares(&store, &output_of(&store, None, "square", "out")), expected_squares());
    std::env::remove_var("MMB_TEST_FAIL");
}

/// Waits until the task of the shard holding q5 runs; returns its job id.
fn wait_for_running_q5(store: &Store) -> String {
    let client = SlurmClient::new(&[]);
    let work = store.root().join("work");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the array never started");
        let sub = std::fs::read_dir(&work)
            .ok()
            .and_then(|rd| rd.flatten().find(|e| e.file_name().to_string_lossy().starts_with("square-")))
            .and_then(|e| load_submissions(&e.path().join("slurm")).last().cloned());
        if let Some(sub) = sub {
            let states = client.tasks(&sub.job).unwrap().unwrap_or_default();
            if states.iter().any(|t| t.indexes == vec![shard_of("q5", 4)] && t.state == "RUNNING") {
                return sub.job;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `mmb run` killed while its array runs: the next run waits for that job instead of submitting the
/// shards twice, then merges.
fn a_rerun_after_the_engine_died_waits_for_the_running_job() {
    let (dir, store) = fresh_store();
    let marker = dir.path().join("sleep");
    std::fs::write(&marker, b"").unwrap();
    std::env::set_var("MMB_TEST_SLEEP", &marker);
    let mut engine = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["run-squares", &store.root().to_string_lossy(), &dir.path().to_string_lossy()])
        .spawn()
        .unwrap();
    let job = wait_for_running_q5(&store);
    engine.kill().unwrap();
    engine.wait().unwrap();
    std::fs::remove_file(&marker).unwrap();
    squares().run(&store, &opts(None, &[], slurm_for(&["square"], 4, "squares", dir.path()))).unwrap();
    let key = LockFile::load(store.root()).unwrap().stages["square"].key.clone();
    let subs = load_submissions(&slurm_dir(store.root(), "square", &key));
    let logs = slurm_dir(store.root(), "square", &key).join("logs");
    let log: Vec<String> = (0..4).map(|i| std::fs::read_to_string(logs.join(format!("{job}_{i}.out"))).unwrap_or_default()).collect();
    assert_eq!(subs.len(), 1, "no second submission: {subs:?}; the first job's logs: {log:?}");
    assert_eq!(subs[0].job, job);
    assert_eq!(read_squares(&store, &output_of(&store, None, "square", "out")), expected_squares());
    std::env::remove_var("MMB_TEST_SLEEP");
}

fn a_cancelled_job_is_reported_not_waited_on() {
    let (dir, store) = fresh_store();
    let marker = dir.path().join("sleep");
    std::fs::write(&marker, b"").unwrap();
    std::env::set_var("MMB_TEST_SLEEP", &marker);
    let p = squares();
    // `numbers` first (locally), so the key of `square` is known to find its Slurm folder.
    p.run(&store, &RunOptions { target: Some("numbers".into()), ..Default::default() }).unwrap();
    let exec = slurm_for(&["square"], 4, "squares", dir.path());
    let root = store.root().to_path_buf();
    let runner = std::thread::spawn(move || {
        let store = Store::open(root).unwrap();
        squares().run(&store, &opts(None, &[], exec)).map_err(|e| e.to_string())
    });
    // Wait until the waiting shard runs, then cancel the whole array.
    let job = wait_for_running_q5(&store);
    let client = SlurmClient::new(&[]);
    let cancelled = Instant::now();
    client.cancel(&job).unwrap();
    while !runner.is_finished() {
        assert!(cancelled.elapsed() < Duration::from_secs(30), "mmb still waits 30 s after the job was cancelled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = runner.join().unwrap().unwrap_err();
    assert!(err.contains(&format!("shard {} of 4: CANCELLED", shard_of("q5", 4))), "{err}");
    assert!(!LockFile::load(store.root()).unwrap().stages.contains_key("square"));
    std::env::remove_var("MMB_TEST_SLEEP");
}

fn a_stage_that_is_not_sharded_runs_as_one_job_and_status_sees_it() {
    let (dir, store) = fresh_store();
    let p = squares();
    p.run(&store, &opts(None, &[], slurm_for(&["total"], 4, "squares", dir.path()))).unwrap();
    let lock = LockFile::load(store.root()).unwrap();
    let sum: i64 = expected_squares().iter().map(|r| r.2).sum();
    let t = store.read_table(&output_of(&store, None, "total", "out")).unwrap().concat().unwrap();
    assert_eq!(t.column(0).as_primitive::<Int64Type>().value(0), sum);
    let sdir = slurm_dir(store.root(), "total", &lock.stages["total"].key);
    let subs = load_submissions(&sdir);
    assert_eq!(subs.len(), 1);
    assert!(subs[0].indexes.is_empty(), "a single job, not an array");
    assert!(sdir.join("manifests/whole.json").exists());
    let r = mmboundary::engine::executor::job_report(&store, "total", &lock.stages["total"].key, &[]).unwrap().unwrap();
    assert!(r.summary().contains("1 COMPLETED; 1/1 shard(s) done"), "{}", r.summary());
}

fn score_sharded_into_4_gives_the_local_rows() {
    std::env::set_var("MMB_TORCH", env!("CARGO_BIN_EXE_mmb-torch"));
    let (dir, store, _) = common::tiny_llava_store();
    let p = scoring(dir.path());
    p.run(&store, &opts(None, &[], None)).unwrap();
    let local = output_of(&store, None, "score", "scored");
    let local_s = LockFile::load(store.root()).unwrap().stages["score"].seconds;
    let t0 = Instant::now();
    p.run(&store, &opts(None, &["score"], slurm_for(&["score"], 4, "scoring", dir.path()))).unwrap();
    let slurm_s = t0.elapsed().as_secs_f64();
    let merged = output_of(&store, None, "score", "scored");
    let (a, b) = (store.read_table(&local).unwrap().concat().unwrap(), store.read_table(&merged).unwrap().concat().unwrap());
    assert!(a.num_rows() >= 8, "{} scored sentences", a.num_rows());
    let strip = |b: &RecordBatch| RecordBatch::try_new(Arc::new(Schema::new(b.schema().fields().clone())), b.columns().to_vec()).unwrap();
    assert_eq!(strip(&a), strip(&b), "merged rows equal the local rows");
    assert_eq!(merged, local, "byte-identical artifact");
    eprintln!("    score ({} sentences): local {local_s:.2} s, Slurm 4 shards {slurm_s:.2} s", a.num_rows());
}

/// The real `generate` (per-item seeded sampling in `mmb-torch`) as 4 array tasks. One question per
/// batch: the merged artifact is the local one, byte for byte. Batches of 4: a shard's batches hold other
/// questions than the local run's, and a left-padded batch rounds differently (tests/item_seeding.rs),
/// so every chain's tokens, text and sentences are the same and its log-probs and entropies agree to 1e-3 (1e-5
/// on an AMD EPYC without AVX-512; 1.5e-4 on an Intel Xeon with it, whose GEMM kernels block by batch shape).
fn generate_sharded_into_4_gives_the_local_rows() {
    std::env::set_var("MMB_TORCH", env!("CARGO_BIN_EXE_mmb-torch"));
    let (dir, store, _) = common::tiny_llava_store();
    for name in ["generating-b1", "generating-b4"] {
        let p = pipeline_named(name, dir.path());
        p.run(&store, &opts(Some(name), &[], None)).unwrap();
        let local = output_of(&store, Some(name), "generate", "chains");
        let local_s = LockFile::load_named(store.root(), Some(name)).unwrap().stages["generate"].seconds;
        let t0 = Instant::now();
        p.run(&store, &opts(Some(name), &["generate"], slurm_for(&["generate"], 4, name, dir.path()))).unwrap();
        let slurm_s = t0.elapsed().as_secs_f64();
        let merged = output_of(&store, Some(name), "generate", "chains");
        let (a, b) = (store.read_table(&local).unwrap().concat().unwrap(), store.read_table(&merged).unwrap().concat().unwrap());
        assert_eq!(a.num_rows(), 24, "{name}: the first 12 questions × 2 samples");
        assert_eq!(a.schema().fields(), b.schema().fields());
        for (i, f) in a.schema().fields().iter().enumerate() {
            if matches!(f.name().as_str(), "logprobs" | "entropies") {
                let (x, y) = (a.column(i).as_list::<i32>(), b.column(i).as_list::<i32>());
                for r in 0..a.num_rows() {
                    let (x, y) = (x.value(r), y.value(r));
                    let (x, y) = (x.as_primitive::<Float32Type>().values(), y.as_primitive::<Float32Type>().values());
                    assert_eq!(x.len(), y.len());
                    let d = x.iter().zip(y.iter()).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                    assert!(d < 1e-3, "{name}: row {r}: {} differ by {d}", f.name());
                }
            } else {
                assert_eq!(a.column(i), b.column(i), "{name}: column {} of the merged rows", f.name());
            }
        }
        if name == "generating-b1" {
            assert_eq!(merged, local, "one question per batch: byte-identical artifact");
        }
        eprintln!("    generate ({name}, 24 chains): local {local_s:.2} s, Slurm 4 shards {slurm_s:.2} s");
    }
}

/// The real `rollout_k` (per-item seeded PPO sampling, then the reward model) as 4 array tasks over
/// iteration 0's draw of 6 questions: every rollout's tokens, text, sentences and levels are the local
/// run's, and its rewards and signals agree to 1e-9 (a shard's questions are sampled in other batches).
fn rollout_sharded_into_4_gives_the_local_rows() {
    std::env::set_var("MMB_TORCH", env!("CARGO_BIN_EXE_mmb-torch"));
    let (dir, store, _) = common::tiny_llava_store();
    let p = pipeline_named("rl", dir.path());
    let local_opts = RunOptions { target: Some("rollout_0".into()), ..opts(None, &[], None) };
    p.run(&store, &local_opts).unwrap();
    let local = output_of(&store, None, "rollout_0", "rollouts");
    let local_s = LockFile::load(store.root()).unwrap().stages["rollout_0"].seconds;
    let t0 = Instant::now();
    let exec = slurm_for(&["rollout_0"], 4, "rl", dir.path());
    p.run(&store, &RunOptions { target: Some("rollout_0".into()), ..opts(None, &["rollout_0"], exec) }).unwrap();
    let slurm_s = t0.elapsed().as_secs_f64();
    let merged = output_of(&store, None, "rollout_0", "rollouts");
    let (a, b) = (store.read_table(&local).unwrap().concat().unwrap(), store.read_table(&merged).unwrap().concat().unwrap());
    assert!(a.num_rows() >= 6, "{} rollouts", a.num_rows());
    let ids = a.column_by_name("item_id").unwrap().as_string::<i32>();
    let distinct: std::collections::BTreeSet<&str> = (0..ids.len()).map(|i| ids.value(i)).collect();
    assert_eq!(distinct.len(), 6, "iteration 0 draws 6 questions");
    let key = LockFile::load(store.root()).unwrap().stages["rollout_0"].key.clone();
    let tasks = load_submissions(&slurm_dir(store.root(), "rollout_0", &key))[0].indexes.len();
    assert!(tasks >= 2, "the 6 questions spread over {tasks} task(s)");
    assert_eq!(a.schema().fields(), b.schema().fields());
    let mut exact = true;
    for (i, f) in a.schema().fields().iter().enumerate() {
        if a.column(i) == b.column(i) {
            continue;
        }
        exact = false;
        // Only floats may differ, and only by rounding.
        let (x, y) = (arrow::compute::cast(a.column(i), &DataType::Utf8), arrow::compute::cast(b.column(i), &DataType::Utf8));
        let floats = |c: &dyn Array| -> Vec<f64> {
            match c.data_type() {
                DataType::Float64 => c.as_primitive::<arrow::datatypes::Float64Type>().values().to_vec(),
                DataType::List(_) => {
                    let l = c.as_list::<i32>();
                    l.values().as_primitive::<arrow::datatypes::Float64Type>().values().to_vec()
                }
                other => panic!("column {}: {other:?} values differ between the local and the merged rows ({x:?} vs {y:?})", f.name()),
            }
        };
        let (x, y) = (floats(a.column(i).as_ref()), floats(b.column(i).as_ref()));
        assert_eq!(x.len(), y.len(), "column {}", f.name());
        let d = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0f64, f64::max);
        assert!(d < 1e-9, "column {}: differs by {d}", f.name());
    }
    eprintln!(
        "    rollout_0 ({} rollouts of 6 questions, {tasks} tasks): local {local_s:.2} s, Slurm 4 shards {slurm_s:.2} s; byte-identical: {}",
        a.num_rows(),
        merged == local
    );
    assert_eq!(exact, merged == local);
}

/// The real `eval_chains` (greedy and SC chains per item in `mmb-torch`, judged, and the image-swap pass)
/// as 4 array tasks, then `eval` (the metrics) over the merged rows: every eval_chains table is the local
/// run's, byte for byte, and so are the metrics. Items take swap partners from other shards (the partner
/// comes from the whole selection, input `all_items`).
fn eval_sharded_into_4_gives_the_local_rows() {
    std::env::set_var("MMB_TORCH", env!("CARGO_BIN_EXE_mmb-torch"));
    let (dir, store, _) = common::tiny_llava_store();
    let p = pipeline_named("evaluating", dir.path());
    let target = |o: RunOptions| RunOptions { target: Some("eval".into()), ..o };
    let ran = p.run(&store, &target(opts(None, &[], None))).unwrap().ran;
    assert_eq!(ran, ["dataset", "features", "eval_chains", "eval"], "no training for vanilla and SC");
    let outs = ["chains", "sentences", "image_swap"];
    let local: Vec<ArtifactId> = outs.iter().map(|o| output_of(&store, None, "eval_chains", o)).collect();
    let local_metrics = output_of(&store, None, "eval", "metrics");
    let lock = LockFile::load(store.root()).unwrap();
    let (local_s, local_eval_s) = (lock.stages["eval_chains"].seconds, lock.stages["eval"].seconds);
    let t0 = Instant::now();
    let exec = slurm_for(&["eval_chains"], 4, "evaluating", dir.path());
    let ran = p.run(&store, &target(opts(None, &["eval_chains", "eval"], exec))).unwrap().ran;
    let slurm_s = t0.elapsed().as_secs_f64();
    assert_eq!(ran, ["eval_chains", "eval"]);
    let key = LockFile::load(store.root()).unwrap().stages["eval_chains"].key.clone();
    let tasks = load_submissions(&slurm_dir(store.root(), "eval_chains", &key))[0].indexes.len();
    assert!(tasks >= 2, "the questions spread over {tasks} task(s)");
    for (o, local) in outs.iter().zip(&local) {
        let merged = output_of(&store, None, "eval_chains", o);
        let (a, b) = (store.read_table(local).unwrap().concat().unwrap(), store.read_table(&merged).unwrap().concat().unwrap());
        let strip =
            |b: &RecordBatch| RecordBatch::try_new(Arc::new(Schema::new(b.schema().fields().clone())), b.columns().to_vec()).unwrap();
        assert_eq!(strip(&a), strip(&b), "eval_chains `{o}`: the merged rows equal the local rows");
        assert_eq!(&merged, local, "eval_chains `{o}`: byte-identical artifact");
    }
    let chains = store.read_table(&local[0]).unwrap().concat().unwrap();
    let items = store.read_table(&output_of(&store, None, "dataset", "items")).unwrap().concat().unwrap();
    let items = mmboundary::data::items_from_record_batch(&items).unwrap();
    let questions = mmboundary::stages::eval::select(&items, &["val".into(), "test".into(), "ood".into()], Some(3)).len();
    assert!(questions >= 4, "{questions} questions");
    assert_eq!(chains.num_rows(), 2 * questions, "{questions} questions × (vanilla, sc)");
    let sw = store.read_table(&local[2]).unwrap().concat().unwrap();
    let (ids, from) =
        (sw.column_by_name("item_id").unwrap().as_string::<i32>(), sw.column_by_name("swapped_from").unwrap().as_string::<i32>());
    assert!((0..sw.num_rows()).any(|r| shard_of(ids.value(r), 4) != shard_of(from.value(r), 4)), "no swap partner from another shard");
    assert_eq!(output_of(&store, None, "eval", "metrics"), local_metrics, "eval's metrics from the merged rows are the local ones");
    eprintln!(
        "    eval_chains ({} chains, {} sentences, {tasks} tasks): local {local_s:.2} s (+ eval {local_eval_s:.2} s), \
         Slurm 4 shards + eval {slurm_s:.2} s",
        chains.num_rows(),
        store.read_table(&local[1]).unwrap().concat().unwrap().num_rows()
    );
}

/// GPUs asked of a cluster without any (this one's node has no `Gres`): Slurm refuses the submission,
/// the run fails at once naming the stage, the setting to change and Slurm's own message, and nothing
/// is recorded; without the GPU option the same stage runs.
fn gpus_on_a_cluster_without_gpus_are_refused_clearly() {
    let (dir, store) = fresh_store();
    let p = squares();
    let mut exec = slurm_for(&["square"], 4, "squares", dir.path()).unwrap();
    Arc::get_mut(&mut exec).unwrap().file.stage.get_mut("square").unwrap().gpus_per_task = Some(1);
    let t0 = Instant::now();
    let err = p.run(&store, &opts(Some("gpu"), &[], Some(exec))).unwrap_err();
    let msg = format!("{err:#}");
    assert!(t0.elapsed() < Duration::from_secs(30), "refused at submission, not waited on");
    for want in ["stage `square`", "Slurm refused 1 GPU(s) per task", "gpus_per_task = 0", "Invalid generic resource"] {
        assert!(msg.contains(want), "the error should say `{want}`: {msg}");
    }
    let lock = LockFile::load_named(store.root(), Some("gpu")).unwrap();
    assert!(!lock.stages.contains_key("square"), "nothing recorded for the refused stage");
    p.run(&store, &opts(Some("gpu"), &[], slurm_for(&["square"], 4, "squares", dir.path()))).unwrap();
    assert_eq!(read_squares(&store, &output_of(&store, Some("gpu"), "square", "out")), expected_squares());
}

/// The `mmb` binary as a user runs it: `mmb run --executor slurm` submits `mmb shard-task` jobs (here the
/// `dataset` stage, as one job) and records the same artifact as a local run; a job whose task fails is
/// reported, and `mmb status` shows it.
fn mmb_run_executor_slurm_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let stages = dir.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::write(stages.join("dataset.toml"), "[params]\nn_items = 6\nimage_size = 32\nchunk = 3\n").unwrap();
    let mmb = |store: &str, args: &[&str]| {
        // Relative paths, as a user types them: the tasks must get them absolute.
        std::process::Command::new(env!("CARGO_BIN_EXE_mmb"))
            .current_dir(dir.path())
            .args(["--store", store, "--stages", "stages"])
            .args(args)
            .output()
            .unwrap()
    };
    let local = mmb("local", &["run", "dataset"]);
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let o = mmb("cluster", &["run", "dataset", "--executor", "slurm"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("dataset: Slurm job"), "{err}");
    let items = |store: &str| LockFile::load(&dir.path().join(store)).unwrap().stages["dataset"].outputs["items"].id.clone();
    assert_eq!(items("cluster"), items("local"), "the Slurm job wrote the local run's artifact");

    // A task that cannot run: reported with its log; `mmb status` shows the failed job.
    std::fs::write(stages.join("executor.toml"), "executor = \"slurm\"\n[slurm]\nprogram = \"/bin/false\"\npoll_seconds = 0.2\n").unwrap();
    let o = mmb("broken", &["run", "dataset"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("the job: FAILED, exit 1:0") && err.contains("nothing was merged"), "{err}");
    // (`status` builds the whole pipeline, whose demo stages name files of this repository: run it here.)
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_mmb"))
        .arg("--store")
        .arg(dir.path().join("broken"))
        .arg("--stages")
        .arg(&stages)
        .arg("status")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&st.stdout);
    assert!(out.contains("dataset    stale: never run"), "{out}{}", String::from_utf8_lossy(&st.stderr));
    assert!(out.contains(": 1 FAILED; 0/1 shard(s) done"), "{out}");
}

/// Merge cost at 4, 16, 64 shards (figures for the note), checked for the right rows.
fn merge_time_grows_gently_with_shards() {
    let (_dir, store) = fresh_store();
    let n = 20_000usize;
    let ids: Vec<String> = (0..n).map(|i| format!("item-{i}")).collect();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("v", DataType::Int64, false)]));
    let lineage = Lineage { stage: "bench".into(), ..Default::default() };
    for shards in [4usize, 16, 64] {
        let mut parts = Vec::new();
        for s in 0..shards {
            let rows: Vec<usize> = (0..n).filter(|&i| shard_of(&ids[i], shards) == s).collect();
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(rows.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(rows.iter().map(|&i| i as i64).collect::<Vec<_>>())),
                ],
            )
            .unwrap();
            parts.push(store.put_table(schema.clone(), &[b], &lineage, None).unwrap());
        }
        let t0 = Instant::now();
        let tables: Vec<_> = parts.iter().map(|id| store.read_table(id).unwrap()).collect();
        let (sch, merged) = merge_parts(&tables, "id", &ids).unwrap();
        store.put_table(sch, &[merged.clone()], &lineage, None).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let v = merged.column(1).as_primitive::<Int64Type>();
        assert!((0..n).all(|i| v.value(i) == i as i64));
        eprintln!("    merge of {n} rows from {shards} parts (read + verify + merge + write): {:.1} ms", secs * 1e3);
    }
}

/// The task side: `slurm shard-task PIPELINE DIR TASK_FILE`.
fn task(args: &[String]) -> ExitCode {
    let [pipeline, dir, file] = args else {
        eprintln!("usage: slurm shard-task PIPELINE DIR TASK_FILE");
        return ExitCode::FAILURE;
    };
    let run = || -> anyhow::Result<PathBuf> {
        let t: TaskFile = serde_json::from_slice(&std::fs::read(file)?)?;
        let p = pipeline_named(pipeline, Path::new(dir));
        let store = Store::open(&t.job.store)?;
        run_task(p.get(&t.job.stage)?, &store, Path::new(file), None)
    };
    match run() {
        Ok(m) => {
            eprintln!("wrote {}", m.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("shard-task") {
        return task(&args[2..]);
    }
    if let (Some("run-squares"), Some(root), Some(dir)) = (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        // An engine process for a test to kill mid-run.
        let store = Store::open(root).unwrap();
        let r = squares().run(&store, &opts(None, &[], slurm_for(&["square"], 4, "squares", Path::new(dir))));
        return if r.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    // Where a Parquet artifact's lineage carries its write time, SOURCE_DATE_EPOCH pins it (the array tasks
    // inherit it), so that the byte-identity checks compare rows and lineage only.
    std::env::set_var("SOURCE_DATE_EPOCH", "1700000000");
    let tests: Vec<(&str, fn())> = vec![
        ("square_sharded_into_4_gives_the_local_rows_byte_identical", square_sharded_into_4_gives_the_local_rows_byte_identical),
        ("more_shards_than_items_submits_only_shards_holding_items", more_shards_than_items_submits_only_shards_holding_items),
        ("a_failed_shard_is_reported_and_the_rerun_submits_only_it", a_failed_shard_is_reported_and_the_rerun_submits_only_it),
        ("a_cancelled_job_is_reported_not_waited_on", a_cancelled_job_is_reported_not_waited_on),
        ("a_rerun_after_the_engine_died_waits_for_the_running_job", a_rerun_after_the_engine_died_waits_for_the_running_job),
        ("a_stage_that_is_not_sharded_runs_as_one_job_and_status_sees_it", a_stage_that_is_not_sharded_runs_as_one_job_and_status_sees_it),
        ("score_sharded_into_4_gives_the_local_rows", score_sharded_into_4_gives_the_local_rows),
        ("generate_sharded_into_4_gives_the_local_rows", generate_sharded_into_4_gives_the_local_rows),
        ("rollout_sharded_into_4_gives_the_local_rows", rollout_sharded_into_4_gives_the_local_rows),
        ("eval_sharded_into_4_gives_the_local_rows", eval_sharded_into_4_gives_the_local_rows),
        ("gpus_on_a_cluster_without_gpus_are_refused_clearly", gpus_on_a_cluster_without_gpus_are_refused_clearly),
        ("mmb_run_executor_slurm_through_the_cli", mmb_run_executor_slurm_through_the_cli),
        ("merge_time_grows_gently_with_shards", merge_time_grows_gently_with_shards),
    ];
    let filter: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> = tests.into_iter().filter(|(n, _)| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()))).collect();
    if args.iter().any(|a| a == "--list") {
        for (n, _) in &selected {
            println!("{n}: test");
        }
        return ExitCode::SUCCESS;
    }
    println!("\nrunning {} tests (a real Slurm cluster)", selected.len());
    let cluster = SlurmClient::new(&[]).ping();
    let mut failed = Vec::new();
    for (name, f) in &selected {
        let started = Instant::now();
        let ok = match &cluster {
            Err(e) if *name != "merge_time_grows_gently_with_shards" => {
                eprintln!(
                    "{name}: no Slurm cluster to test against: {e:#}\n  start one (as root): scripts/ci/slurm.sh install && \
                     scripts/ci/slurm.sh start DIR && . DIR/env   (then rerun this test)"
                );
                false
            }
            _ => std::panic::catch_unwind(*f).is_ok(),
        };
        println!("test {name} ... {} ({:.1} s)", if ok { "ok" } else { "FAILED" }, started.elapsed().as_secs_f64());
        if !ok {
            failed.push(*name);
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &failed {
            println!("    {f}");
        }
        ExitCode::FAILURE
    }
}
