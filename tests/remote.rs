//! Remotes: `mmb remote`, `push`, `pull`, `fetch`, `status --remote` against a shared folder and against a
//! real S3-compatible server (SeaweedFS, started by `scripts/ci/seaweedfs.sh start DIR`; `source DIR/env`
//! sets MMB_TEST_S3_ENDPOINT and the AWS keys). The S3 tests FAIL when the server is not set up.
use mmboundary::engine::{LockFile, RunOptions, StageRecord};
use mmboundary::remote::{self, RemoteSpec, RemotesFile, TransferOptions};
use mmboundary::store::{ArtifactId, ArtifactKind, Lineage, Store};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

fn s3_endpoint() -> String {
    std::env::var("MMB_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "MMB_TEST_S3_ENDPOINT is not set: these tests need the S3 test server. Run \
             `scripts/ci/seaweedfs.sh start /tmp/mmb-s3 && source /tmp/mmb-s3/env` before `cargo test` (README, Remotes)"
        )
    })
}

fn s3_bucket() -> String {
    std::env::var("MMB_TEST_S3_BUCKET").unwrap_or_else(|_| "mmb".into())
}

/// A fresh prefix per test, so tests (and reruns) never see each other's objects.
fn unique(name: &str) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}-{t}", std::process::id())
}

/// A project folder: `stages/remotes.toml` with one remote `origin`, and an empty store.
struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    fn new(spec: RemoteSpec) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("stages")).unwrap();
        let mut f = RemotesFile::default();
        f.add("origin", spec).unwrap();
        f.save(&root.join("stages")).unwrap();
        Self { _dir: dir, root }
    }
    fn s3(prefix: &str) -> Self {
        Self::new(RemoteSpec { url: format!("s3://{}/{prefix}", s3_bucket()), endpoint: Some(s3_endpoint()), region: None })
    }
    fn stages(&self) -> PathBuf {
        self.root.join("stages")
    }
    fn store(&self) -> Store {
        Store::open(self.root.join("artifacts")).unwrap()
    }
    fn mmb(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mmb"));
        c.current_dir(&self.root).env("MMB_STORE", self.root.join("artifacts")).env("MMB_STAGES", self.stages());
        c
    }
    fn remote(&self) -> remote::Remote {
        remote::open(&self.stages(), None).unwrap()
    }
}

fn lineage(stage: &str, output: &str) -> Lineage {
    Lineage {
        stage: stage.into(),
        output: output.into(),
        code_version: "1".into(),
        created: Some("2026-01-01T00:00:00Z".into()),
        ..Default::default()
    }
}

/// Deterministic pseudo-random bytes (distinct per seed).
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn record(key: &str, inputs: &[(&str, &ArtifactId)], outputs: &[(&str, &ArtifactId, ArtifactKind, u64)]) -> StageRecord {
    let inputs: BTreeMap<String, String> = inputs.iter().map(|(n, id)| (n.to_string(), id.to_string())).collect();
    let outputs: serde_json::Map<String, serde_json::Value> = outputs
        .iter()
        .map(|(n, id, kind, b)| (n.to_string(), serde_json::json!({ "id": id.to_string(), "kind": kind, "bytes": b })))
        .collect();
    serde_json::from_value(serde_json::json!({
        "key": key, "code_version": "1", "params": {}, "inputs": inputs, "models": {}, "device": "cpu",
        "outputs": outputs, "finished": "2026-01-01T00:00:00Z", "seconds": 0.0
    }))
    .unwrap()
}

/// A store with a three-stage lock (dataset → score → bin), artifacts of several kinds with sidecars.
/// `seed` varies the bytes; `sizes` are the three artifacts' sizes.
fn fill(store: &Store, seed: u64, sizes: [usize; 3]) -> LockFile {
    let items = store.put_bytes(ArtifactKind::Json, &bytes(seed, sizes[0]), Some(&lineage("dataset", "items"))).unwrap();
    let scored = store.put_bytes(ArtifactKind::Bin, &bytes(seed + 1, sizes[1]), Some(&lineage("score", "scored"))).unwrap();
    let levels = store.put_bytes(ArtifactKind::Safetensors, &bytes(seed + 2, sizes[2]), Some(&lineage("bin", "levels"))).unwrap();
    let mut lock = LockFile { version: 1, stages: BTreeMap::new() };
    lock.stages.insert("dataset".into(), record(&format!("kd{seed}"), &[], &[("items", &items, ArtifactKind::Json, sizes[0] as u64)]));
    lock.stages.insert(
        "score".into(),
        record(&format!("ks{seed}"), &[("items", &items)], &[("scored", &scored, ArtifactKind::Bin, sizes[1] as u64)]),
    );
    lock.stages.insert(
        "bin".into(),
        record(&format!("kb{seed}"), &[("scored", &scored)], &[("levels", &levels, ArtifactKind::Safetensors, sizes[2] as u64)]),
    );
    lock.save(store.root()).unwrap();
    lock
}

fn id_of(lock: &LockFile, stage: &str) -> (ArtifactId, ArtifactKind) {
    let o = lock.stages[stage].outputs.values().next().unwrap();
    (ArtifactId::parse(&o.id).unwrap(), o.kind)
}

/// Every file under a folder with its bytes (to prove a failed command left a store untouched).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Push everything from `a`, pull `score` into an empty `b`: b gets score and what it depends on (not
/// bin), byte-identical with sidecars, and its lock records exactly team A's records of those stages.
fn round_trip(a: &Project, b: &Project) {
    let lock = fill(&a.store(), 1, [3000, 200_000, 5000]);
    let out = a.mmb().args(["push", "-j", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("3 uploaded"), "{}", stderr_of(&out));
    // Again: the remote is asked, everything is there, nothing is uploaded.
    let out = a.mmb().arg("push").output().unwrap();
    assert!(stderr_of(&out).contains("0 uploaded") && stderr_of(&out).contains("3 already there"), "{}", stderr_of(&out));
    let out = a.mmb().args(["status", "--remote"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.lines().filter(|l| l.contains("in sync")).count() == 3, "{text}{}", stderr_of(&out));

    let out = b.mmb().args(["pull", "score"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("2 downloaded and verified"), "{}", stderr_of(&out));
    let got = LockFile::load(b.store().root()).unwrap();
    assert_eq!(got.stages.keys().collect::<Vec<_>>(), vec!["dataset", "score"]);
    assert_eq!(got.stages["score"], lock.stages["score"]);
    assert_eq!(got.stages["dataset"], lock.stages["dataset"]);
    for stage in ["dataset", "score"] {
        let (id, kind) = id_of(&lock, stage);
        let (pa, pb) = (a.store().path_of(&id, kind), b.store().path_of(&id, kind));
        assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
        assert_eq!(b.store().sidecar_lineage(&pb).unwrap().unwrap(), a.store().sidecar_lineage(&pa).unwrap().unwrap());
    }
    let (bin_id, bin_kind) = id_of(&lock, "bin");
    assert!(!b.store().path_of(&bin_id, bin_kind).exists(), "bin was not asked for");
    // A second pull (everything) downloads only what the store lacks.
    let out = b.mmb().arg("pull").output().unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success() && err.contains("1 downloaded and verified") && err.contains("2 already in the store"), "{err}");
    assert_eq!(LockFile::load(b.store().root()).unwrap().stages, lock.stages);
    // `fetch` of an artifact prefix brings the object back without touching the lock.
    std::fs::remove_file(b.store().path_of(&bin_id, bin_kind)).unwrap();
    let out = b.mmb().args(["fetch", &bin_id.as_str()[..10]]).output().unwrap();
    assert!(out.status.success() && stderr_of(&out).contains("fetched from `origin`: 1 downloaded"), "{}", stderr_of(&out));
    assert!(b.store().path_of(&bin_id, bin_kind).exists());
    assert_eq!(LockFile::load(b.store().root()).unwrap().stages, lock.stages);
    let out = b.mmb().arg("verify").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
}

#[test]
fn the_store_refuses_downloaded_bytes_that_do_not_hash_to_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("artifacts")).unwrap();
    let good = bytes(5, 10_000);
    let id = ArtifactId::parse(&blake3::hash(&good).to_hex().to_string()).unwrap();
    let mut bad = good.clone();
    bad[17] ^= 1;
    let source = Path::new("objects/x.bin");
    let e = store
        .put_expected(ArtifactKind::Bin, None, &id, source, |w| {
            std::io::Write::write_all(w, &bad).map_err(|e| mmboundary::store::StoreError::Io { path: source.into(), source: e })
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("objects/x.bin") && msg.contains(id.as_str()) && msg.contains(&blake3::hash(&bad).to_hex().to_string()), "{msg}");
    assert_eq!(std::fs::read_dir(store.objects_dir()).unwrap().count(), 0, "nothing, not even a temp file, stays");
    let got = store
        .put_expected(ArtifactKind::Bin, None, &id, source, |w| {
            std::io::Write::write_all(w, &good).map_err(|e| mmboundary::store::StoreError::Io { path: source.into(), source: e })
        })
        .unwrap();
    assert_eq!(got, id);
    assert_eq!(std::fs::read(store.path_of(&id, ArtifactKind::Bin)).unwrap(), good);
}

#[test]
fn remote_add_list_remove_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let mmb = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mmb"));
        c.current_dir(dir.path()).env("MMB_STAGES", dir.path().join("stages")).env("MMB_STORE", dir.path().join("artifacts"));
        c
    };
    std::fs::create_dir_all(dir.path().join("stages")).unwrap();
    assert!(mmb()
        .args(["remote", "add", "origin", "s3://team-bucket/shared", "--endpoint", "http://127.0.0.1:9"])
        .output()
        .unwrap()
        .status
        .success());
    assert!(mmb().args(["remote", "add", "nfs", "file:///mnt/shared/mmb"]).output().unwrap().status.success());
    let out = mmb().args(["remote", "add", "x", "ftp://nope"]).output().unwrap();
    assert!(!out.status.success() && stderr_of(&out).contains("ftp://nope"), "{}", stderr_of(&out));
    let out = mmb().args(["remote", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("* origin") && text.contains("s3://team-bucket/shared") && text.contains("endpoint http://127.0.0.1:9"),
        "{text}"
    );
    assert!(text.contains("  nfs") && text.contains("file:///mnt/shared/mmb"), "{text}");
    assert!(mmb().args(["remote", "remove", "origin"]).output().unwrap().status.success());
    let text = String::from_utf8_lossy(&mmb().args(["remote", "list"]).output().unwrap().stdout).into_owned();
    assert!(!text.contains("origin") && text.contains("* nfs"), "{text}");
    let out = mmb().args(["push", "-r", "origin"]).output().unwrap();
    assert!(!out.status.success() && stderr_of(&out).contains("no remote named `origin`"), "{}", stderr_of(&out));
}

#[test]
fn file_remote_round_trip() {
    let shared = tempfile::tempdir().unwrap();
    let spec = RemoteSpec { url: format!("file://{}", shared.path().display()), endpoint: None, region: None };
    round_trip(&Project::new(spec.clone()), &Project::new(spec));
    assert!(shared.path().join("objects").is_dir() && shared.path().join("manifests").is_dir() && shared.path().join("refs/main").is_dir());
}

/// Flips one byte of an object on the remote, keeping its size: a pull refuses it, stores nothing under
/// its name, says which object, and still takes the good ones.
fn corrupted_object_is_refused(a: &Project, b: &Project, corrupt: &dyn Fn(&str, Vec<u8>)) {
    let lock = fill(&a.store(), 7, [2000, 100_000, 3000]);
    assert!(a.mmb().arg("push").output().unwrap().status.success());
    let (id, kind) = id_of(&lock, "score");
    let key = format!("objects/{id}.{}", kind.extension());
    let mut data = std::fs::read(a.store().path_of(&id, kind)).unwrap();
    data[1234] ^= 0x55;
    corrupt(&key, data);
    let out = b.mmb().arg("pull").output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&key) && err.contains("corrupt") && err.contains(&format!("not {id}")), "{err}");
    assert!(!b.store().path_of(&id, kind).exists(), "a corrupt object entered the store");
    let leftovers: Vec<_> = std::fs::read_dir(b.store().objects_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // The good objects came in.
    let (items, ikind) = id_of(&lock, "dataset");
    assert!(b.store().path_of(&items, ikind).exists());
    // Only stages whose outputs, and whose upstream stages' outputs, all arrived are recorded.
    assert_eq!(LockFile::load(b.store().root()).unwrap().stages.keys().collect::<Vec<_>>(), vec!["dataset"]);
}

#[test]
fn file_remote_corrupted_object_is_refused() {
    let shared = tempfile::tempdir().unwrap();
    let spec = RemoteSpec { url: format!("file://{}", shared.path().display()), endpoint: None, region: None };
    let root = shared.path().to_path_buf();
    corrupted_object_is_refused(&Project::new(spec.clone()), &Project::new(spec), &|key, data| {
        std::fs::write(root.join(key), data).unwrap()
    });
}

#[test]
fn s3_round_trip() {
    let prefix = unique("round-trip");
    round_trip(&Project::s3(&prefix), &Project::s3(&prefix));
}

#[test]
fn s3_corrupted_object_is_refused_on_pull() {
    let prefix = unique("corrupt");
    let a = Project::s3(&prefix);
    let remote = a.remote();
    corrupted_object_is_refused(&a, &Project::s3(&prefix), &|key, data| remote.put_overwrite(key, data.into()).unwrap());
}

#[test]
fn s3_two_concurrent_pushers_both_land() {
    let prefix = unique("concurrent");
    let (a, b, c) = (Project::s3(&prefix), Project::s3(&prefix), Project::s3(&prefix));
    // Both teams share `dataset` (same bytes); each has its own score and bin.
    let la = fill(&a.store(), 10, [50_000, 80_000, 4000]);
    let mut lb = fill(&b.store(), 10, [50_000, 80_000, 4000]);
    let extra = b.store().put_bytes(ArtifactKind::Bin, &bytes(99, 70_000), Some(&lineage("score", "scored"))).unwrap();
    let (items, _) = id_of(&lb, "dataset");
    lb.stages.remove("bin");
    lb.stages.insert("score".into(), record("ks-b", &[("items", &items)], &[("scored", &extra, ArtifactKind::Bin, 70_000)]));
    let rep = b.store().put_bytes(ArtifactKind::Bin, &bytes(98, 60_000), Some(&lineage("report", "r"))).unwrap();
    lb.stages.insert("report".into(), record("kr-b", &[("scored", &extra)], &[("r", &rep, ArtifactKind::Bin, 60_000)]));
    lb.save(b.store().root()).unwrap();
    let (pa, pb) = (a.mmb().args(["push", "-j", "4"]).spawn_ok(), b.mmb().args(["push", "-j", "4"]).spawn_ok());
    let (oa, ob) = (pa.wait_with_output().unwrap(), pb.wait_with_output().unwrap());
    assert!(oa.status.success(), "{}", stderr_of(&oa));
    assert!(ob.status.success(), "{}", stderr_of(&ob));
    // Neither push lost the other's: the latest manifest has A's bin and B's report, and the score of
    // whichever published last; every object each listed is there and pulls verified.
    let (_, _, m) = remote::latest_manifest(&c.remote(), "main").unwrap().unwrap();
    assert!(m.stages.contains_key("bin") && m.stages.contains_key("report"), "{:?}", m.stages.keys());
    assert_eq!(m.artifacts.len(), 5);
    let refs = c.remote().list("refs/main").unwrap();
    assert_eq!(refs.len(), 2, "{refs:?}");
    let out = c.mmb().args(["pull", "bin", "report"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let got = LockFile::load(c.store().root()).unwrap();
    assert_eq!(got.stages["bin"], la.stages["bin"]);
    assert_eq!(got.stages["report"], lb.stages["report"]);
}

trait SpawnOk {
    fn spawn_ok(&mut self) -> std::process::Child;
}

impl SpawnOk for Command {
    fn spawn_ok(&mut self) -> std::process::Child {
        self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }
}

#[test]
fn s3_push_killed_midway_resumes_without_redoing_finished_objects() {
    let prefix = unique("killed");
    let (a, b) = (Project::s3(&prefix), Project::s3(&prefix));
    let store = a.store();
    let mut lock = LockFile { version: 1, stages: BTreeMap::new() };
    let n = 40;
    for i in 0..n {
        let size = 1 << 20;
        let id = store.put_bytes(ArtifactKind::Bin, &bytes(1000 + i, size), Some(&lineage("dataset", "part"))).unwrap();
        lock.stages.insert(format!("s{i:02}"), record(&format!("k{i}"), &[], &[("part", &id, ArtifactKind::Bin, size as u64)]));
    }
    lock.save(store.root()).unwrap();
    let mut child = a.mmb().args(["push", "-j", "1"]).env("MMB_LOG", "mmboundary::remote=info").spawn_ok();
    let mut done = 0;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while done < 5 {
        let line = lines.next().expect("push ended before 5 uploads").unwrap();
        done += line.contains("uploaded objects/") as usize;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let remote = a.remote();
    let on_remote = remote.list("objects").unwrap().len();
    assert!((5..n as usize).contains(&on_remote), "{on_remote} objects on the remote after the kill");
    // Nothing was published: no manifest names objects that may be missing.
    assert!(remote::latest_manifest(&remote, "main").unwrap().is_none());
    let out = a.mmb().args(["push", "-j", "4"]).output().unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("{} uploaded", n as usize - on_remote)) && err.contains(&format!("{on_remote} already there")), "{err}");
    let out = b.mmb().args(["pull", "-j", "4"]).output().unwrap();
    assert!(out.status.success() && stderr_of(&out).contains(&format!("{n} downloaded and verified")), "{}", stderr_of(&out));
}

#[test]
fn s3_wrong_credentials_give_a_clear_error() {
    let a = Project::s3(&unique("creds"));
    fill(&a.store(), 3, [100, 100, 100]);
    let out = a.mmb().arg("push").env("AWS_SECRET_ACCESS_KEY", "not-the-secret").output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("remote `origin`") && err.contains("access denied") && err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    let out = a
        .mmb()
        .arg("push")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env("AWS_SHARED_CREDENTIALS_FILE", a.root.join("none"))
        .env("AWS_CONFIG_FILE", a.root.join("none"))
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success() && err.contains("no AWS credentials"), "{err}");
}

#[test]
fn s3_server_down_gives_a_clear_error_and_leaves_the_store_untouched() {
    s3_endpoint();
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let a = Project::new(RemoteSpec { url: "s3://mmb/down".into(), endpoint: Some(endpoint.clone()), region: None });
    fill(&a.store(), 5, [100, 200, 300]);
    let before = snapshot(&a.root);
    for cmd in [&["pull"][..], &["push"], &["fetch"], &["status", "--remote"]] {
        let t = std::time::Instant::now();
        let out = a.mmb().args(cmd).output().unwrap();
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{cmd:?}: {err}");
        assert!(err.contains("cannot reach the server") && err.contains(&endpoint), "{cmd:?}: {err}");
        assert!(t.elapsed().as_secs() < 60, "{cmd:?} took {:?}", t.elapsed());
    }
    assert_eq!(snapshot(&a.root), before, "a failed transfer changed the project");
}

/// The use case: team A runs the pipeline through `score` and pushes; team B, with the same stage
/// definitions and an empty store, pulls `score` and runs the rest without recomputing anything upstream,
/// and ends with team A's results.
#[test]
fn team_b_pulls_scored_data_and_runs_only_what_follows() {
    let prefix = unique("teams");
    std::env::set_var("SOURCE_DATE_EPOCH", "1767225600");
    let shared = tempfile::tempdir().unwrap();
    let worker = shared.path().join("mmb-torch");
    std::fs::copy(env!("CARGO_BIN_EXE_mmb-torch"), &worker).unwrap();
    std::env::set_var("MMB_TORCH", &worker);
    // The same stage definitions on both sides (model paths included).
    let model = common::tiny_llava(shared.path());
    let pipeline = || common::tiny::pipeline_k(&model, 1.0 / 3.0, 1);
    let (a, b) = (Project::s3(&prefix), Project::s3(&prefix));
    let opts = TransferOptions { jobs: 4, lock: None };

    let sa = pipeline().run(&a.store(), &RunOptions { target: Some("score".into()), ..Default::default() }).unwrap();
    assert_eq!(sa.ran, vec!["dataset", "features", "generate", "score"]);
    let pushed = remote::push(&a.store(), &a.remote(), &[], &opts).unwrap();
    assert_eq!(pushed.stages, vec!["dataset", "features", "generate", "score"]);

    let pulled = remote::pull(&b.store(), &b.remote(), &["score".into()], &opts, true).unwrap();
    assert_eq!(pulled.recorded, vec!["dataset", "features", "generate", "score"]);
    let fresh: Vec<String> = pipeline().status(&b.store(), &[]).unwrap().into_iter().filter(|s| s.is_fresh()).map(|s| s.stage).collect();
    assert_eq!(fresh, vec!["dataset", "features", "generate", "score"], "the pulled stages are up to date");
    let eval = RunOptions { target: Some("eval".into()), ..Default::default() };
    let sb = pipeline().run(&b.store(), &eval).unwrap();
    assert_eq!(sb.ran, vec!["bin", "map", "sft", "rollout_0", "update_0", "ppo", "eval_chains", "eval"]);
    assert!(sb.restored.is_empty());

    // Team A runs the same rest of the pipeline and gets the same results: bin and map byte for byte;
    // checkpoints tensor for tensor, tables value for value (their bytes differ: checkpoint metadata is
    // written in HashMap order and logs hold wall times, and those ids flow into lineage downstream).
    let sa = pipeline().run(&a.store(), &eval).unwrap();
    assert_eq!(sa.ran, sb.ran);
    let (la, lb) = (LockFile::load(a.store().root()).unwrap(), LockFile::load(b.store().root()).unwrap());
    for stage in ["bin", "map"] {
        assert_eq!(la.stages[stage].outputs, lb.stages[stage].outputs, "stage {stage}");
    }
    for stage in ["sft", "rollout_0", "update_0", "ppo", "eval_chains", "eval"] {
        for (name, oa) in &la.stages[stage].outputs {
            let ob = &lb.stages[stage].outputs[name];
            same_content(&a.store(), &b.store(), (&oa.id, oa.kind), (&ob.id, ob.kind), &format!("{stage}.{name}"));
        }
    }
}

/// Two artifacts hold the same values: tables column by column (wall-time columns aside), safetensors
/// tensor by tensor with equal metadata, anything else byte for byte.
fn same_content(sa: &Store, sb: &Store, a: (&str, ArtifactKind), b: (&str, ArtifactKind), what: &str) {
    let (ia, ib) = (ArtifactId::parse(a.0).unwrap(), ArtifactId::parse(b.0).unwrap());
    assert_eq!(a.1, b.1, "{what}");
    match a.1 {
        ArtifactKind::Parquet => {
            let ta = sa.read_table(&ia).unwrap().concat().unwrap();
            let tb = sb.read_table(&ib).unwrap().concat().unwrap();
            assert_eq!(ta.schema().fields().len(), tb.schema().fields().len(), "{what}");
            assert!(ta.num_rows() > 0, "{what} is empty");
            for f in ta.schema().fields() {
                if f.name() == "seconds" {
                    continue;
                }
                assert_eq!(ta.column_by_name(f.name()).unwrap(), tb.column_by_name(f.name()).unwrap(), "{what}: column {}", f.name());
            }
        }
        ArtifactKind::Safetensors => {
            let ba = std::fs::read(sa.path_of(&ia, a.1)).unwrap();
            let bb = std::fs::read(sb.path_of(&ib, b.1)).unwrap();
            let (ma, mb) =
                (safetensors::SafeTensors::read_metadata(&ba).unwrap().1, safetensors::SafeTensors::read_metadata(&bb).unwrap().1);
            assert_eq!(ma.metadata(), mb.metadata(), "{what}: metadata");
            let (xa, xb) = (safetensors::SafeTensors::deserialize(&ba).unwrap(), safetensors::SafeTensors::deserialize(&bb).unwrap());
            let mut names = xa.names();
            names.sort();
            assert!(!names.is_empty(), "{what}");
            for n in names {
                assert_eq!(xa.tensor(n).unwrap().data(), xb.tensor(n).unwrap().data(), "{what}: tensor {n}");
            }
            assert_eq!(xa.len(), xb.len(), "{what}");
        }
        _ => assert_eq!(std::fs::read(sa.path_of(&ia, a.1)).unwrap(), std::fs::read(sb.path_of(&ib, b.1)).unwrap(), "{what}"),
    }
}

/// Throughput against boto3 with the same concurrency, part size and server, one run each (figures for the
/// README; run with `cargo test --release --test remote perf_ -- --ignored --nocapture`): a store of ~1.2 GB
/// (6 tables of 200 MB and 1,000 small artifacts with lineage sidecars); then `status --remote` on it.
#[test]
#[ignore]
fn perf_push_pull_against_boto3() {
    let prefix = unique("perf");
    let (a, b) = (Project::s3(&prefix), Project::s3(&prefix));
    let store = a.store();
    let mut lock = LockFile { version: 1, stages: BTreeMap::new() };
    let fill_xof = |seed: u64, n: usize| {
        let mut v = vec![0u8; n];
        blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut v);
        v
    };
    for i in 0..1006u64 {
        let (kind, size) = if i < 6 { (ArtifactKind::Parquet, 200_000_000) } else { (ArtifactKind::Json, 16_384) };
        let id = store
            .put_bytes(kind, &fill_xof(i, size), (kind != ArtifactKind::Parquet).then(|| lineage("dataset", "part")).as_ref())
            .unwrap();
        lock.stages.insert(format!("s{i:04}"), record(&format!("k{i}"), &[], &[("part", &id, kind, size as u64)]));
    }
    lock.save(store.root()).unwrap();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_remote_boto3.py");
    let boto = |dir: &Path, direction: &str| -> f64 {
        let out = Command::new(&python)
            .arg(&script)
            .args([direction, dir.to_str().unwrap(), "--endpoint", &s3_endpoint(), "--bucket", &s3_bucket()])
            .args(["--prefix", &format!("{prefix}-boto3"), "--jobs", "8"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["seconds"].as_f64().unwrap()
    };
    let timed = |c: &mut Command| -> f64 {
        let t = std::time::Instant::now();
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        eprintln!("{}", stderr_of(&out).trim());
        t.elapsed().as_secs_f64()
    };
    let total: u64 = snapshot(&store.objects_dir()).values().map(|v| v.len() as u64).sum();
    let push = timed(a.mmb().args(["push", "-j", "8"]));
    let boto_up = boto(&store.objects_dir(), "up");
    let status = timed(a.mmb().args(["status", "--remote"]));
    let pull = timed(b.mmb().args(["pull", "-j", "8"]));
    let down = tempfile::tempdir().unwrap();
    let boto_down = boto(down.path(), "down");
    let mb = total as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({
            "bytes": total, "artifacts": 1006,
            "push_s": push, "boto3_up_s": boto_up, "push_vs_boto3": boto_up / push,
            "push_mb_s": mb / push, "boto3_up_mb_s": mb / boto_up,
            "pull_s": pull, "boto3_down_s": boto_down, "pull_vs_boto3": boto_down / pull,
            "pull_mb_s": mb / pull, "boto3_down_mb_s": mb / boto_down,
            "status_remote_s": status,
        })
    );
}
