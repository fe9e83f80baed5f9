//! The make-like engine on small stages defined here: caching, staleness, corruption, crashes,
//! concurrency and sharing. Each test uses its own temporary store.
use arrow::array::{Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use mmboundary::engine::{InputSpec, Pipeline, RunOptions, Stage, StageContext, Staleness};
use mmboundary::store::{ArtifactKind, Lineage, Store, StoreError, StoreLock};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

fn int_table(values: Vec<i64>) -> (Arc<Schema>, RecordBatch) {
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap();
    (schema, batch)
}

fn read_ints(ctx: &StageContext, input: &str) -> anyhow::Result<Vec<i64>> {
    let t = ctx.input_table(input)?;
    let b = t.concat()?;
    let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    Ok((0..col.len()).map(|i| col.value(i)).collect())
}

/// A stage built from a closure, counting its runs.
struct TestStage {
    name: String,
    inputs: Vec<InputSpec>,
    params: serde_json::Value,
    runs: Arc<AtomicUsize>,
    body: Box<dyn Fn(&StageContext) -> anyhow::Result<()> + Send + Sync>,
}

impl Stage for TestStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        self.inputs.clone()
    }
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn params(&self) -> serde_json::Value {
        self.params.clone()
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        (self.body)(ctx)
    }
}

struct Counters(Vec<(String, Arc<AtomicUsize>)>);
impl Counters {
    fn get(&self, name: &str) -> usize {
        self.0.iter().find(|(n, _)| n == name).unwrap().1.load(Ordering::SeqCst)
    }
}

/// source(n) → scale(factor) → sum; source → side (independent of scale).
fn chain(n: i64, factor: i64) -> (Pipeline, Counters) {
    let mut counters = Vec::new();
    let mut mk = |name: &str,
                  inputs: Vec<InputSpec>,
                  params: serde_json::Value,
                  body: Box<dyn Fn(&StageContext) -> anyhow::Result<()> + Send + Sync>| {
        let runs = Arc::new(AtomicUsize::new(0));
        counters.push((name.to_string(), runs.clone()));
        Box::new(TestStage { name: name.into(), inputs, params, runs, body }) as Box<dyn Stage>
    };
    let stages = vec![
        mk(
            "sum",
            vec![InputSpec::new("scaled", "scale", "out")],
            serde_json::json!({}),
            Box::new(|ctx| {
                let v = read_ints(ctx, "scaled")?;
                let (s, b) = int_table(vec![v.iter().sum()]);
                ctx.write_table("out", s, &[b], None)?;
                Ok(())
            }),
        ),
        mk(
            "source",
            vec![],
            serde_json::json!({ "n": n }),
            Box::new(move |ctx| {
                let (s, b) = int_table((0..n).collect());
                ctx.write_table("out", s, &[b], None)?;
                Ok(())
            }),
        ),
        mk(
            "scale",
            vec![InputSpec::new("numbers", "source", "out")],
            serde_json::json!({ "factor": factor }),
            Box::new(move |ctx| {
                let v = read_ints(ctx, "numbers")?;
                let (s, b) = int_table(v.into_iter().map(|x| x * factor).collect());
                ctx.write_table("out", s, &[b], None)?;
                Ok(())
            }),
        ),
        mk(
            "side",
            vec![InputSpec::new("numbers", "source", "out")],
            serde_json::json!({}),
            Box::new(|ctx| {
                let v = read_ints(ctx, "numbers")?;
                ctx.write_bytes("out", ArtifactKind::Json, serde_json::to_string(&v)?.as_bytes())?;
                Ok(())
            }),
        ),
    ];
    (Pipeline::new(stages).unwrap(), Counters(counters))
}

fn tmp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("artifacts")).unwrap();
    (dir, store)
}

fn total(store: &Store) -> i64 {
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let id = mmboundary::store::ArtifactId::parse(&lock.stages["sum"].outputs["out"].id).unwrap();
    let b = store.read_table(&id).unwrap().concat().unwrap();
    b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0)
}

#[test]
fn cached_rerun_does_nothing() {
    let (_d, store) = tmp_store();
    let (p, c) = chain(10, 2);
    let s = p.run(&store, &RunOptions::default()).unwrap();
    assert_eq!(s.ran.len(), 4);
    assert_eq!(total(&store), 90);
    let (p2, c2) = chain(10, 2);
    let s2 = p2.run(&store, &RunOptions::default()).unwrap();
    assert!(s2.ran.is_empty(), "ran {:?}", s2.ran);
    assert_eq!(s2.fresh.len(), 4);
    assert_eq!((c.get("source"), c2.get("source")), (1, 0));
    assert!(p2.status(&store, &[]).unwrap().iter().all(|s| s.is_fresh()));
}

#[test]
fn changing_one_param_reruns_exactly_that_stage_and_its_descendants() {
    let (_d, store) = tmp_store();
    chain(10, 2).0.run(&store, &RunOptions::default()).unwrap();
    let (p, c) = chain(10, 3);
    let st = p.status(&store, &[]).unwrap();
    let by = |n: &str| st.iter().find(|s| s.stage == n).unwrap().reasons.clone();
    assert!(by("source").is_empty() && by("side").is_empty());
    assert_eq!(by("scale"), vec![Staleness::Param { path: "factor".into(), old: "2".into(), new: "3".into() }]);
    assert_eq!(by("sum"), vec![Staleness::UpstreamStale("scale".into())]);
    let mut ran = p.run(&store, &RunOptions::default()).unwrap().ran;
    ran.sort();
    assert_eq!(ran, vec!["scale", "sum"]);
    assert_eq!((c.get("source"), c.get("side")), (0, 0));
    assert_eq!(total(&store), 135);
}

#[test]
fn target_runs_only_its_ancestors_and_force_reruns() {
    let (_d, store) = tmp_store();
    let (p, c) = chain(5, 2);
    let s = p.run(&store, &RunOptions { target: Some("scale".into()), ..Default::default() }).unwrap();
    let mut ran = s.ran.clone();
    ran.sort();
    assert_eq!(ran, vec!["scale", "source"]);
    assert_eq!(c.get("sum"), 0);
    // Forcing source reruns it; its bytes are identical, so nothing downstream is stale (early cutoff).
    // Without SOURCE_DATE_EPOCH, and a clock that has moved on: the bytes must not carry the time.
    std::env::remove_var("SOURCE_DATE_EPOCH");
    std::thread::sleep(Duration::from_millis(1100));
    let (p2, c2) = chain(5, 2);
    let s2 = p2.run(&store, &RunOptions { force: vec!["source".into()], ..Default::default() }).unwrap();
    assert_eq!(c2.get("source"), 1);
    assert_eq!(c2.get("scale"), 0);
    assert!(s2.ran.contains(&"sum".to_string()) && s2.ran.contains(&"side".to_string()));
}

#[test]
fn corrupted_artifact_is_caught_by_verify_and_by_the_reading_stage() {
    let (_d, store) = tmp_store();
    chain(50, 2).0.run(&store, &RunOptions::default()).unwrap();
    assert!(store.verify().unwrap().mismatches.is_empty());
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let id = mmboundary::store::ArtifactId::parse(&lock.stages["source"].outputs["out"].id).unwrap();
    let path = store.path_of(&id, ArtifactKind::Parquet);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let r = store.verify().unwrap();
    assert_eq!(r.mismatches.len(), 1);
    assert_eq!(r.mismatches[0].path, path);
    let err = chain(50, 7).0.run(&store, &RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("hash mismatch") && err.contains(id.as_str()), "{err}");
}

#[test]
fn independent_stages_run_in_parallel_with_jobs() {
    // Two stages that each wait for the other to start: only a parallel runner finishes.
    let (_d, store) = tmp_store();
    let (tx_a, rx_a) = mpsc::channel::<()>();
    let (tx_b, rx_b) = mpsc::channel::<()>();
    let rendezvous = |tx: mpsc::Sender<()>, rx: mpsc::Receiver<()>| {
        let rx = Mutex::new(rx);
        move |ctx: &StageContext| -> anyhow::Result<()> {
            tx.send(()).ok();
            rx.lock().unwrap().recv_timeout(Duration::from_secs(20)).map_err(|_| anyhow::anyhow!("peer never started"))?;
            ctx.write_bytes("out", ArtifactKind::Json, ctx.stage().as_bytes())?;
            Ok(())
        }
    };
    let mk = |name: &str, body: Box<dyn Fn(&StageContext) -> anyhow::Result<()> + Send + Sync>| {
        Box::new(TestStage { name: name.into(), inputs: vec![], params: serde_json::json!({}), runs: Arc::default(), body })
            as Box<dyn Stage>
    };
    let p = Pipeline::new(vec![mk("a", Box::new(rendezvous(tx_a, rx_b))), mk("b", Box::new(rendezvous(tx_b, rx_a)))]).unwrap();
    let s = p.run(&store, &RunOptions { jobs: 2, ..Default::default() }).unwrap();
    assert_eq!(s.ran.len(), 2);
}

#[test]
fn stages_side_by_side_share_the_threads_and_one_alone_takes_them_all() {
    let cores = mmboundary::runtime::stage_threads();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let pipeline = || {
        let mk = |name: &str| {
            let seen = seen.clone();
            let body = move |ctx: &StageContext| -> anyhow::Result<()> {
                seen.lock().unwrap().push((ctx.stage().to_string(), mmboundary::runtime::stage_threads()));
                ctx.write_bytes("out", ArtifactKind::Json, ctx.stage().as_bytes())?;
                Ok(())
            };
            Box::new(TestStage {
                name: name.into(),
                inputs: vec![],
                params: serde_json::json!({}),
                runs: Arc::default(),
                body: Box::new(body),
            }) as Box<dyn Stage>
        };
        Pipeline::new(vec![mk("a"), mk("b")]).unwrap()
    };
    // What each stage saw, and the cap its lock record says it ran under.
    let run = |jobs: usize| {
        let (_d, store) = tmp_store();
        pipeline().run(&store, &RunOptions { jobs, ..Default::default() }).unwrap();
        let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
        let mut got = std::mem::take(&mut *seen.lock().unwrap());
        got.sort();
        (got, lock.stages.values().map(|r| r.threads).collect::<Vec<_>>())
    };
    let share = (cores / 2).max(1);
    assert_eq!(run(2), (vec![("a".to_string(), share), ("b".to_string(), share)], vec![Some(share); 2]));
    assert_eq!(run(1), (vec![("a".to_string(), cores), ("b".to_string(), cores)], vec![None; 2]));
}

/// Held while a test spawns a process and while a test relies on a lock being released when it drops: between
/// fork and exec a child holds copies of every descriptor of this process (flock locks included), so a sibling
/// test's spawn could keep a just-dropped lock alive for a moment.
static SPAWN_GUARD: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_concurrent_run_is_refused_with_a_clear_message() {
    let _guard = SPAWN_GUARD.lock().unwrap_or_else(|e| e.into_inner());
    let (_d, store) = tmp_store();
    let held = StoreLock::acquire(store.root(), "another run").unwrap();
    let err = chain(3, 1).0.run(&store, &RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("locked by another mmb process") && err.contains("another run"), "{err}");
    drop(held);
    chain(3, 1).0.run(&store, &RunOptions::default()).unwrap();
}

#[test]
fn bad_pipelines_are_rejected() {
    let mk = |name: &str, from: &str| {
        Box::new(TestStage {
            name: name.into(),
            inputs: vec![InputSpec::new("x", from, "out")],
            params: serde_json::json!({}),
            runs: Arc::default(),
            body: Box::new(|_| Ok(())),
        }) as Box<dyn Stage>
    };
    let e = Pipeline::new(vec![mk("a", "b"), mk("b", "a")]).err().unwrap().to_string();
    assert!(e.contains("cycle"), "{e}");
    let e = Pipeline::new(vec![mk("a", "nope")]).err().unwrap().to_string();
    assert!(e.contains("`nope.out`") && e.contains("not a stage"), "{e}");
    // A stage that forgets its output fails the run and records nothing.
    let (_d, store) = tmp_store();
    let p = Pipeline::new(vec![Box::new(TestStage {
        name: "lazy".into(),
        inputs: vec![],
        params: serde_json::json!({}),
        runs: Arc::default(),
        body: Box::new(|_| Ok(())),
    }) as Box<dyn Stage>])
    .unwrap();
    let e = p.run(&store, &RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("without writing its declared output `out`"), "{e}");
    assert!(mmboundary::engine::LockFile::load(store.root()).unwrap().stages.is_empty());
}

#[test]
fn export_import_roundtrip_and_tampered_files_are_refused() {
    let (_d, store) = tmp_store();
    chain(20, 2).0.run(&store, &RunOptions::default()).unwrap();
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let id = lock.stages["scale"].outputs["out"].id.clone();
    let share = tempfile::tempdir().unwrap();
    let file = store.export(&id[..8], share.path()).unwrap();

    let (_d2, other) = tmp_store();
    let (got, lineage) = other.import(&file).unwrap();
    assert_eq!(got.as_str(), id);
    assert_eq!((lineage.stage.as_str(), lineage.rows), ("scale", Some(20)));
    assert_eq!(lineage.params, serde_json::json!({ "factor": 2 }));

    // Flipped byte: the name no longer matches the content.
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 3] ^= 1;
    let bad = share.path().join(file.file_name().unwrap());
    std::fs::write(&bad, &bytes).unwrap();
    let (_d3, third) = tmp_store();
    assert!(matches!(third.import(&bad), Err(StoreError::HashMismatch { .. })));

    // Rows changed and the file renamed to its new hash: the lineage's row count gives it away.
    let original = other.read_table(&got).unwrap();
    let (schema, batch) = int_table(vec![1, 2, 3]);
    let kv = vec![parquet::file::metadata::KeyValue::new(
        mmboundary::store::LINEAGE_KEY.to_string(),
        serde_json::to_string(original.lineage.as_ref().unwrap()).unwrap(),
    )];
    let props = parquet::file::properties::WriterProperties::builder().set_key_value_metadata(Some(kv)).build();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let forged = share.path().join(format!("{}.parquet", blake3::hash(&buf).to_hex()));
    std::fs::File::create(&forged).unwrap().write_all(&buf).unwrap();
    let e = third.import(&forged).unwrap_err().to_string();
    assert!(e.contains("tampered"), "{e}");
    assert!(third.list().unwrap().is_empty());
}

#[test]
fn gc_is_a_dry_run_unless_applied_and_keeps_what_the_lock_references() {
    let (_d, store) = tmp_store();
    chain(4, 2).0.run(&store, &RunOptions::default()).unwrap();
    chain(4, 5).0.run(&store, &RunOptions::default()).unwrap();
    let keep = mmboundary::engine::LockFile::load(store.root()).unwrap().referenced();
    let before = store.list().unwrap().len();
    let would = store.gc(&keep, false).unwrap();
    assert_eq!(would.len(), 2, "old scale and sum outputs");
    assert_eq!(store.list().unwrap().len(), before);
    store.gc(&keep, true).unwrap();
    assert_eq!(store.list().unwrap().len(), before - 2);
    assert!(chain(4, 5).0.run(&store, &RunOptions::default()).unwrap().ran.is_empty());
}

#[test]
fn identical_tables_get_identical_ids_whenever_they_are_written() {
    // No test in this file sets SOURCE_DATE_EPOCH: names must not depend on the clock without it.
    std::env::remove_var("SOURCE_DATE_EPOCH");
    let (_d, store) = tmp_store();
    let l = |t: &str| Lineage { stage: "t".into(), created: Some(t.into()), ..Default::default() };
    let (s, b) = int_table(vec![1, 2, 3]);
    let a = store.put_table(s.clone(), &[b.clone()], &l("2026-01-01T00:00:00Z"), None).unwrap();
    let c = store.put_table(s, &[b], &l("2027-06-30T12:34:56.789Z"), None).unwrap();
    assert_eq!(a, c);
}

/// Helper run in a child process by `a_run_killed_mid_write_leaves_no_artifact_and_the_next_run_recovers`.
#[test]
fn killed_child_helper() {
    let Ok(root) = std::env::var("MMB_TEST_CHILD_STORE") else { return };
    let store = Store::open(root).unwrap();
    let body: Box<dyn Fn(&StageContext) -> anyhow::Result<()> + Send + Sync> = Box::new(|ctx| {
        ctx.store().put_with(ArtifactKind::Bin, None, |w| {
            w.write_all(&[7u8; 1 << 16]).unwrap();
            w.flush().unwrap();
            std::thread::sleep(Duration::from_secs(120));
            Ok(())
        })?;
        Ok(())
    });
    let p = Pipeline::new(vec![Box::new(TestStage {
        name: "slow".into(),
        inputs: vec![],
        params: serde_json::json!({}),
        runs: Arc::default(),
        body,
    }) as Box<dyn Stage>])
    .unwrap();
    p.run(&store, &RunOptions::default()).unwrap();
}

#[test]
fn a_run_killed_mid_write_leaves_no_artifact_and_the_next_run_recovers() {
    let (_d, store) = tmp_store();
    let mut child = {
        let _guard = SPAWN_GUARD.lock().unwrap_or_else(|e| e.into_inner());
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "killed_child_helper", "--nocapture", "--test-threads=1"])
            .env("MMB_TEST_CHILD_STORE", store.root())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let objects = store.objects_dir();
    let temps =
        || std::fs::read_dir(&objects).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".tmp-")).count();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while temps() == 0 {
        assert!(std::time::Instant::now() < deadline, "child never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    // While the child writes, the store is locked.
    let e = chain(2, 1).0.run(&store, &RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("locked"), "{e}");
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup
    child.wait().unwrap();
    assert!(store.list().unwrap().is_empty(), "no artifact appears from a killed write");
    assert_eq!(temps(), 1);
    // The kernel released the lock; the next run cleans the temp file and works.
    let s = chain(2, 1).0.run(&store, &RunOptions::default()).unwrap();
    assert_eq!(s.ran.len(), 4);
    assert_eq!(temps(), 0);
}

#[test]
fn folder_artifacts_are_deterministic_and_materialize_once_checked() {
    let (_d, store) = tmp_store();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("sub")).unwrap();
    std::fs::write(src.path().join("config.json"), b"{\"a\": 1}").unwrap();
    std::fs::write(src.path().join("sub/weights.bin"), vec![3u8; 5000]).unwrap();
    let a = store.put_dir(src.path(), None).unwrap();
    // Touching a file changes its mtime, not the artifact.
    std::fs::File::options().append(true).open(src.path().join("config.json")).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
    assert_eq!(store.put_dir(src.path(), None).unwrap(), a);
    let dir = store.materialize(&a).unwrap();
    assert_eq!(std::fs::read(dir.join("sub/weights.bin")).unwrap(), vec![3u8; 5000]);
    assert_eq!(store.materialize(&a).unwrap(), dir);
    // A corrupt tar is refused before anything is extracted.
    std::fs::remove_dir_all(&dir).unwrap();
    let tar = store.path_of(&a, ArtifactKind::Tar);
    let mut bytes = std::fs::read(&tar).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&tar, &bytes).unwrap();
    assert!(matches!(store.materialize(&a), Err(StoreError::HashMismatch { .. })));
    assert!(!dir.exists());
}

#[test]
fn run_cache_restores_a_reverted_param_and_shares_stages_across_variant_locks() {
    let (_d, store) = tmp_store();
    chain(6, 2).0.run(&store, &RunOptions::default()).unwrap();
    chain(6, 3).0.run(&store, &RunOptions::default()).unwrap();
    // Back to factor 2: nothing runs, the earlier outputs come back from the run-cache.
    let (p, c) = chain(6, 2);
    let s = p.run(&store, &RunOptions::default()).unwrap();
    assert!(s.ran.is_empty(), "ran {:?}", s.ran);
    let mut restored = s.restored.clone();
    restored.sort();
    assert_eq!(restored, vec!["scale", "sum"]);
    assert_eq!(c.get("scale"), 0);
    assert_eq!(total(&store), 30);
    // A variant with its own lock shares every stage whose key it has in common.
    let (p, c) = chain(6, 5);
    let s = p.run(&store, &RunOptions { lock: Some("factor5".into()), ..Default::default() }).unwrap();
    assert_eq!(c.get("source"), 0, "source is shared");
    assert_eq!(s.ran.len(), 2);
    assert!(store.root().join("locks/factor5.json").exists());
    assert_eq!(total(&store), 30, "the main lock is untouched");
    // gc keeps what any lock references.
    let keep: std::collections::BTreeSet<String> =
        mmboundary::engine::LockFile::load_all(store.root()).unwrap().iter().flat_map(|l| l.referenced()).collect();
    store.gc(&keep, true).unwrap();
    assert!(chain(6, 5).0.run(&store, &RunOptions { lock: Some("factor5".into()), ..Default::default() }).unwrap().ran.is_empty());
}

#[test]
fn a_panicking_stage_fails_the_run_with_its_message_releases_the_lock_and_leaves_no_partial_artifact() {
    let (_d, store) = tmp_store();
    let runs = Arc::new(AtomicUsize::new(0));
    let stage = TestStage {
        name: "boom".into(),
        inputs: vec![],
        params: serde_json::json!({}),
        runs: runs.clone(),
        body: Box::new(|ctx| {
            // Half an artifact is on disk (a temp file) when the stage panics.
            ctx.store().put_with(ArtifactKind::Bin, None, |w| {
                w.write_all(&[1u8; 4096]).unwrap();
                panic!("bad artifact: column `x` is not Int64");
            })?;
            Ok(())
        }),
    };
    let pipeline = Pipeline::new(vec![Box::new(stage) as Box<dyn Stage>]).unwrap();
    let root = store.root().to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let store = Store::open(&root).unwrap();
        let _ = tx.send(pipeline.run(&store, &RunOptions::default()).map(|_| ()).map_err(|e| e.to_string()));
    });
    let res = rx.recv_timeout(Duration::from_secs(30)).expect("the run must end, not wait forever on a panicked stage");
    let err = res.expect_err("a panicking stage fails the run");
    assert!(err.contains("boom") && err.contains("panicked") && err.contains("column `x` is not Int64"), "{err}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // The lock is free, and nothing (no temp file, no artifact) is left in the objects folder.
    StoreLock::acquire(store.root(), "test").expect("lock released after the failed run");
    let left: Vec<_> = std::fs::read_dir(store.objects_dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(mmboundary::engine::LockFile::load(store.root()).unwrap().stages.is_empty());
}

#[test]
fn gc_waits_for_no_run_and_cleans_the_work_folders_of_finished_runs() {
    let (_d, store) = tmp_store();
    let runs = Arc::new(AtomicUsize::new(0));
    let trainer = TestStage {
        name: "train".into(),
        inputs: vec![],
        params: serde_json::json!({ "epochs": 2 }),
        runs,
        body: Box::new(|ctx| {
            // Per-epoch checkpoints, as the SFT stage keeps them for a resume after a crash.
            let dir = ctx.work_dir()?;
            std::fs::write(dir.join("epoch-1.safetensors"), [0u8; 1000])?;
            ctx.write_bytes("out", ArtifactKind::Bin, b"final weights")?;
            Ok(())
        }),
    };
    Pipeline::new(vec![Box::new(trainer) as Box<dyn Stage>]).unwrap().run(&store, &RunOptions::default()).unwrap();
    // A crashed run's resume state (its key never finished) and an artifact nothing references.
    let orphan = store.root().join("work/train-0123456789abcdef");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("epoch-1.safetensors"), [0u8; 10]).unwrap();
    let stray = store.put_bytes(ArtifactKind::Bin, b"unreferenced", None).unwrap();

    // While a run holds the store, gc is refused (it could take the run's new outputs for garbage).
    {
        let _run = StoreLock::acquire(store.root(), "mmb run").unwrap();
        let err = mmboundary::engine::collect_garbage(&store, true).unwrap_err().to_string();
        assert!(err.contains("mmb run"), "{err}");
        assert!(store.path_of(&stray, ArtifactKind::Bin).exists());
    }
    let dry = mmboundary::engine::collect_garbage(&store, false).unwrap();
    assert_eq!(dry.artifacts.len(), 1);
    assert_eq!(dry.work.len(), 1);
    assert_eq!(dry.work[0].1, 1000);
    assert!(dry.work[0].0.file_name().unwrap().to_string_lossy().starts_with("train-"));
    assert_eq!(dry.resumable, vec![(orphan.clone(), 10)]);
    let applied = mmboundary::engine::collect_garbage(&store, true).unwrap();
    assert!(!applied.work[0].0.exists() && orphan.exists());
    assert!(!store.path_of(&stray, ArtifactKind::Bin).exists());
    // What the lock references is still there: a rerun has nothing to do.
    let trainer_again = TestStage {
        name: "train".into(),
        inputs: vec![],
        params: serde_json::json!({ "epochs": 2 }),
        runs: Arc::new(AtomicUsize::new(0)),
        body: Box::new(|_| anyhow::bail!("must not run")),
    };
    let s = Pipeline::new(vec![Box::new(trainer_again) as Box<dyn Stage>]).unwrap().run(&store, &RunOptions::default()).unwrap();
    assert!(s.ran.is_empty());
}

/// What a run would start (what `mmb run`, `sweep` and `compare` hold against this machine up front):
/// every reached stage before the first run; none once all are up to date; a forced stage and what is
/// after it; only what the target reaches; a changed stage and what is after it; nothing runs meanwhile.
#[test]
fn to_run_names_the_stages_a_run_would_start_and_no_up_to_date_one() {
    let (_d, store) = tmp_store();
    let (p, c) = chain(10, 2);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let opts = |target: Option<&str>, force: &[&str]| RunOptions {
        target: target.map(String::from),
        force: force.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(sorted(p.to_run(&store, &opts(None, &[])).unwrap()), ["scale", "side", "source", "sum"]);
    assert_eq!(sorted(p.to_run(&store, &opts(Some("scale"), &[])).unwrap()), ["scale", "source"]);
    p.run(&store, &RunOptions::default()).unwrap();
    assert!(p.to_run(&store, &opts(None, &[])).unwrap().is_empty());
    assert_eq!(p.to_run(&store, &opts(None, &["scale"])).unwrap(), ["scale", "sum"]);
    assert!(p.to_run(&store, &opts(Some("side"), &["scale"])).unwrap().is_empty());
    let (tripled, _) = chain(10, 3);
    assert_eq!(tripled.to_run(&store, &opts(None, &[])).unwrap(), ["scale", "sum"]);
    // Another variant's lock has recorded nothing yet.
    let variant = RunOptions { lock: Some("variant".into()), ..Default::default() };
    assert_eq!(p.to_run(&store, &variant).unwrap().len(), 4);
    assert!(p.to_run(&store, &opts(None, &["nope"])).is_err());
    assert_eq!(["source", "scale", "side", "sum"].map(|s| c.get(s)), [1, 1, 1, 1]);
}

/// A stage's input of the wrong shape (an import, a file made by hand) is an error naming the stage, the
/// input, the file, the column and both types, before any column is read; a list whose items another
/// Arrow writer named differently (`element`) is the same type.
#[test]
fn an_input_of_the_wrong_shape_is_named_not_a_panic() {
    use arrow::array::{new_empty_array, ArrayRef};
    use mmboundary::stages::bin::{BinParams, BinStage};
    use mmboundary::stages::score::scored_schema;

    /// `score`'s `scored` table with one column's type changed.
    struct Scored(&'static str, DataType);
    impl Stage for Scored {
        fn name(&self) -> &str {
            "score"
        }
        fn code_version(&self) -> &str {
            "1"
        }
        fn inputs(&self) -> Vec<InputSpec> {
            Vec::new()
        }
        fn outputs(&self) -> Vec<String> {
            vec!["scored".into()]
        }
        fn params(&self) -> serde_json::Value {
            serde_json::json!({ "column": self.0, "type": self.1.to_string() })
        }
        fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
            let fields: Vec<Field> = scored_schema()
                .fields()
                .iter()
                .map(|f| if f.name() == self.0 { Field::new(f.name(), self.1.clone(), true) } else { f.as_ref().clone() })
                .collect();
            let schema = Arc::new(Schema::new(fields));
            let columns: Vec<ArrayRef> = schema.fields().iter().map(|f| new_empty_array(f.data_type())).collect();
            ctx.write_table("scored", schema.clone(), &[RecordBatch::try_new(schema, columns)?], None)?;
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("artifacts")).unwrap();
    let run = |scored: Scored| {
        let stages: Vec<Box<dyn Stage>> = vec![Box::new(scored), Box::new(BinStage { params: BinParams::default() })];
        Pipeline::new(stages).unwrap().run(&store, &RunOptions::default()).unwrap_err().to_string()
    };
    let e = run(Scored("lnlp", DataType::Utf8));
    assert!(e.contains("stage `bin`, input `scored`: "), "{e}");
    assert!(e.contains(".parquet: column `lnlp`: expected Float64, found Utf8"), "{e}");
    let e = run(Scored("split", DataType::Int64));
    assert!(e.contains("column `split`: expected Utf8, found Int64"), "{e}");
    // Past the check, bin refuses an empty table: the schema was accepted.
    let e = run(Scored("lnlp", DataType::Float64));
    assert!(e.contains("no scored sentences"), "{e}");

    // The items of a list are the same type whatever their field is named.
    let table = |item: &str| {
        let schema = Schema::new(vec![Field::new("x", DataType::List(Arc::new(Field::new(item, DataType::Float32, true))), false)]);
        let path = dir.path().join(format!("{item}.parquet"));
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![new_empty_array(schema.field(0).data_type())]).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        mmboundary::store::read_parquet(&path, mmboundary::store::ArtifactId::parse(&"0".repeat(64)).unwrap()).unwrap()
    };
    let want = Schema::new(vec![Field::new("x", DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), false)]);
    mmboundary::store::expect_schema(&table("element"), &want).unwrap();
    let strings = Schema::new(vec![Field::new("x", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false)]);
    let e = mmboundary::store::expect_schema(&table("element"), &strings).unwrap_err().to_string();
    assert!(e.contains("column `x`: expected List(Utf8), found List(Float32, field: 'element')"), "{e}");
}
