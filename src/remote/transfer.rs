//! `push`, `pull` / `fetch` and the remote status.
//!
//! - Push rehashes each local artifact before it leaves (a corrupt local file is never published), asks the
//!   remote (HEAD) whether it already has the object, uploads what is missing with a payload checksum the
//!   server checks, create-if-absent, then publishes the manifest and advances the ref. An interrupted push
//!   published nothing but whole objects; rerun, it skips what the remote answers it has.
//! - Pull reads the latest manifest (verified by its hash), downloads what the store lacks, each object
//!   streamed into a temp file in the store and hashed on the way: only bytes that hash to the object's
//!   name are renamed into place; anything else is refused and reported. Then it records the pulled
//!   stages in the lock file (and the run-cache), so `mmb status` shows them up to date. `fetch` stops
//!   before that step.
use super::backend::{Remote, MULTIPART_ABOVE};
use super::error::RemoteError;
use super::manifest::{closure, lock_label, outputs_of, ref_key, ArtifactEntry, Manifest, RefEntry};
use crate::engine::{LockFile, RunCache, StageRecord};
use crate::store::{ArtifactId, ArtifactKind, Lineage, Store, StoreError, StoreLock};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// How many transfers run at once, and which lock file (None: the main one).
#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub jobs: usize,
    pub lock: Option<String>,
}

impl Default for TransferOptions {
    fn default() -> Self {
        Self { jobs: 8, lock: None }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PushReport {
    pub uploaded: usize,
    /// Objects the remote already had (asked, not remembered).
    pub present: usize,
    /// Objects found on the remote with the wrong size and replaced.
    pub repaired: usize,
    pub bytes: u64,
    pub stages: Vec<String>,
    pub manifest: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default)]
pub struct PullReport {
    pub downloaded: usize,
    /// Objects the store already had.
    pub present: usize,
    pub bytes: u64,
    /// Stages recorded in the lock file (pull only).
    pub recorded: Vec<String>,
    pub manifest: String,
    pub seconds: f64,
}

fn is_hex_prefix(t: &str) -> bool {
    t.len() >= 4 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Runs `work` on every item with `jobs` threads; collects each item's error.
fn parallel<T: Sync>(items: &[T], jobs: usize, work: impl Fn(&T) -> Result<(), RemoteError> + Sync) -> Vec<RemoteError> {
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                if let Err(e) = work(item) {
                    tracing::warn!("{e}");
                    errors.lock().expect("errors").push(e);
                }
            });
        }
    });
    errors.into_inner().expect("errors")
}

fn fail(mut errors: Vec<RemoteError>, total: usize) -> Result<(), RemoteError> {
    if errors.is_empty() {
        return Ok(());
    }
    let failed = errors.len();
    let first = errors.swap_remove(0);
    if failed == 1 && total == 1 {
        return Err(first);
    }
    Err(RemoteError::Failed { failed, total, first: Box::new(first) })
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{msg:8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Memory-maps a file as `Bytes` (no copy; empty files are read).
fn map_file(path: &Path) -> Result<Bytes, StoreError> {
    let f = std::fs::File::open(path).map_err(|e| StoreError::Io { path: path.to_path_buf(), source: e })?;
    let len = f.metadata().map_err(|e| StoreError::Io { path: path.to_path_buf(), source: e })?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // Safety: store objects are never modified in place (written once under a temp name, then renamed).
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| StoreError::Io { path: path.to_path_buf(), source: e })?;
    Ok(Bytes::from_owner(map))
}

/// The latest ref of `lock` on the remote: (seq, manifest hash, manifest), or None if nothing was pushed.
pub fn latest_manifest(remote: &Remote, lock: &str) -> Result<Option<(u64, String, Manifest)>, RemoteError> {
    let mut seqs: Vec<u64> =
        remote.list(&format!("refs/{lock}"))?.into_iter().filter_map(|(n, _)| n.strip_suffix(".json")?.parse().ok()).collect();
    seqs.sort_unstable();
    let Some(&seq) = seqs.last() else { return Ok(None) };
    let key = ref_key(lock, seq);
    let manifest_err =
        |key: &str, msg: String| RemoteError::Manifest { remote: remote.name.clone(), at: remote.at.clone(), key: key.into(), msg };
    let bytes = remote.get_small(&key)?.ok_or_else(|| manifest_err(&key, "listed but gone".into()))?;
    let entry: RefEntry = serde_json::from_slice(&bytes).map_err(|e| manifest_err(&key, e.to_string()))?;
    let mkey = format!("manifests/{}.json", entry.manifest);
    let bytes = remote.get_small(&mkey)?.ok_or_else(|| manifest_err(&mkey, format!("named by {key} but missing")))?;
    let found = blake3::hash(&bytes).to_hex().to_string();
    if found != entry.manifest {
        return Err(RemoteError::Corrupt {
            remote: remote.name.clone(),
            at: remote.at.clone(),
            key: mkey,
            expected: entry.manifest,
            found,
        });
    }
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| manifest_err(&mkey, e.to_string()))?;
    if m.format != super::manifest::FORMAT {
        return Err(manifest_err(&mkey, format!("format `{}`, this mmb reads `{}`", m.format, super::manifest::FORMAT)));
    }
    Ok(Some((seq, entry.manifest, m)))
}

struct PushItem {
    id: ArtifactId,
    kind: ArtifactKind,
    path: PathBuf,
    bytes: u64,
    sidecar: Option<(Vec<u8>, String)>,
}

/// Pushes `targets` (stage names with everything they depend on, artifact ids or prefixes; none: every
/// stage of the lock file) and publishes a manifest of what was pushed.
pub fn push(store: &Store, remote: &Remote, targets: &[String], opts: &TransferOptions) -> Result<PushReport, RemoteError> {
    let start = Instant::now();
    let lock = LockFile::load_named(store.root(), opts.lock.as_deref())?;
    let mut want_stages = Vec::new();
    let mut ids: BTreeMap<ArtifactId, ArtifactKind> = BTreeMap::new();
    if targets.is_empty() {
        if lock.stages.is_empty() {
            return Err(RemoteError::Target {
                target: "(all)".into(),
                msg: "the lock file records no stage: nothing to push (run the pipeline first)".into(),
            });
        }
        want_stages.extend(lock.stages.keys().cloned());
    }
    for t in targets {
        if lock.stages.contains_key(t) {
            want_stages.push(t.clone());
        } else if is_hex_prefix(t) {
            let (id, kind, _) = store.find(t)?;
            ids.insert(id, kind);
        } else {
            let known = lock.stages.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(RemoteError::Target {
                target: t.clone(),
                msg: format!("neither a stage of the lock file ({known}) nor an artifact hash prefix"),
            });
        }
    }
    let (stages, loose) = closure(&lock.stages, &want_stages).map_err(|msg| RemoteError::Target { target: want_stages.join(" "), msg })?;
    for (id, kind) in outputs_of(&lock.stages, &stages) {
        ids.insert(ArtifactId::parse(id)?, kind);
    }
    for id in &loose {
        let (id, kind, _) = store.find(id)?;
        ids.insert(id, kind);
    }
    let mut items = Vec::new();
    for (id, kind) in ids {
        let path = store.path_of(&id, kind);
        let bytes = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => return Err(StoreError::Missing { id: id.to_string(), path }.into()),
        };
        let sidecar = match store.sidecar_lineage(&path)? {
            Some(_) => {
                let side = crate::store::sidecar_path(&path);
                let b = std::fs::read(&side).map_err(|e| StoreError::Io { path: side.clone(), source: e })?;
                let h = blake3::hash(&b).to_hex().to_string();
                Some((b, h))
            }
            None => None,
        };
        items.push(PushItem { id, kind, path, bytes, sidecar });
    }
    let total: u64 = items.iter().map(|i| i.bytes).sum();
    let pb = bar(total, "push");
    let (uploaded, present, repaired, sent) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0), AtomicU64::new(0));
    let errors = parallel(&items, opts.jobs, |it| {
        // A corrupt local file must not be published under the name it no longer matches.
        store.check(&it.id, &it.path)?;
        if let Some((b, h)) = &it.sidecar {
            // Sidecars first: an object on the remote implies its sidecar is there.
            remote.put_new(&format!("lineage/{h}.json"), Bytes::from(b.clone()))?;
        }
        let key = ArtifactEntry::object_key(it.id.as_str(), it.kind);
        match remote.head(&key)? {
            Some(size) if size == it.bytes => {
                present.fetch_add(1, Ordering::Relaxed);
                pb.inc(it.bytes);
                return Ok(());
            }
            Some(size) => {
                tracing::warn!("remote `{}`: {key} has {size} bytes, expected {}: replacing it", remote.name, it.bytes);
                let data = map_file(&it.path)?;
                if it.bytes > MULTIPART_ABOVE {
                    remote.put_multipart(&key, data, &|n| pb.inc(n))?;
                } else {
                    remote.put_overwrite(&key, data)?;
                    pb.inc(it.bytes);
                }
                repaired.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let data = map_file(&it.path)?;
                if it.bytes > MULTIPART_ABOVE {
                    remote.put_multipart(&key, data, &|n| pb.inc(n))?;
                } else if !remote.put_new(&key, data)? {
                    // Another pusher stored it between our HEAD and PUT: same name, same bytes.
                    present.fetch_add(1, Ordering::Relaxed);
                    pb.inc(it.bytes);
                    return Ok(());
                } else {
                    pb.inc(it.bytes);
                }
                uploaded.fetch_add(1, Ordering::Relaxed);
            }
        }
        sent.fetch_add(it.bytes, Ordering::Relaxed);
        tracing::info!("uploaded {key} ({} bytes)", it.bytes);
        Ok(())
    });
    pb.finish_and_clear();
    fail(errors, items.len())?;

    // Everything is on the remote: publish the manifest, then advance the ref (create-if-absent; merge
    // with a concurrent pusher's manifest and retry when it won the slot).
    let label = lock_label(opts.lock.as_deref());
    let mut mine = Manifest::new(&label);
    for s in &stages {
        mine.stages.insert(s.clone(), lock.stages[s].clone());
    }
    for it in &items {
        mine.artifacts.insert(
            it.id.to_string(),
            ArtifactEntry { kind: it.kind, bytes: it.bytes, lineage: it.sidecar.as_ref().map(|(_, h)| h.clone()) },
        );
    }
    let tries = 50;
    for attempt in 0..tries {
        let (next, merged) = match latest_manifest(remote, &label)? {
            Some((seq, _, mut prev)) => {
                prev.merge(&mine);
                (seq + 1, prev)
            }
            None => (0, mine.clone()),
        };
        let (bytes, hash) = merged.encode();
        remote.put_new(&format!("manifests/{hash}.json"), Bytes::from(bytes))?;
        let entry = serde_json::to_vec(&RefEntry { manifest: hash.clone() }).expect("ref serializes");
        if remote.put_new(&ref_key(&label, next), Bytes::from(entry))? {
            return Ok(PushReport {
                uploaded: uploaded.into_inner(),
                present: present.into_inner(),
                repaired: repaired.into_inner(),
                bytes: sent.into_inner(),
                stages: stages.into_iter().collect(),
                manifest: hash,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        tracing::info!("ref {} taken by a concurrent push (attempt {}); merging", ref_key(&label, next), attempt + 1);
        std::thread::sleep(std::time::Duration::from_millis(20 * (attempt as u64 + 1).min(10)));
    }
    Err(RemoteError::RefContention { remote: remote.name.clone(), key: format!("refs/{label}"), tries })
}

/// What a pull wants from a manifest: stage records to record, and artifacts to have.
fn resolve_pull(m: &Manifest, targets: &[String]) -> Result<(BTreeSet<String>, BTreeMap<String, ArtifactEntry>), RemoteError> {
    let mut want_stages = Vec::new();
    let mut ids: BTreeMap<String, ArtifactEntry> = BTreeMap::new();
    if targets.is_empty() {
        want_stages.extend(m.stages.keys().cloned());
        ids.extend(m.artifacts.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for t in targets {
        if m.stages.contains_key(t) {
            want_stages.push(t.clone());
        } else if is_hex_prefix(t) {
            let hits: Vec<_> = m.artifacts.iter().filter(|(k, _)| k.starts_with(t.as_str())).collect();
            match hits.len() {
                1 => {
                    ids.insert(hits[0].0.clone(), hits[0].1.clone());
                }
                0 => {
                    return Err(RemoteError::Target {
                        target: t.clone(),
                        msg: "no artifact of the remote's manifest has this prefix".into(),
                    })
                }
                n => return Err(RemoteError::Target { target: t.clone(), msg: format!("ambiguous: {n} artifacts of the remote match") }),
            }
        } else {
            let known = m.stages.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(RemoteError::Target {
                target: t.clone(),
                msg: format!("neither a stage on the remote ({known}) nor an artifact hash prefix"),
            });
        }
    }
    let (stages, loose) = closure(&m.stages, &want_stages).map_err(|msg| RemoteError::Target { target: want_stages.join(" "), msg })?;
    let needed: Vec<String> = outputs_of(&m.stages, &stages).map(|(id, _)| id.to_string()).chain(loose).collect();
    for id in needed {
        let e = m.artifacts.get(&id).ok_or_else(|| RemoteError::Target {
            target: id.clone(),
            msg: "a pulled stage needs this artifact, but the remote's manifest does not list it (inconsistent manifest)".into(),
        })?;
        ids.insert(id, e.clone());
    }
    Ok((stages, ids))
}

/// Downloads what the store lacks of `targets` (stages with what they depend on, artifact prefixes; none:
/// everything of the remote's manifest). With `record`, the pulled stages' records enter the lock file.
pub fn pull(store: &Store, remote: &Remote, targets: &[String], opts: &TransferOptions, record: bool) -> Result<PullReport, RemoteError> {
    let start = Instant::now();
    let label = lock_label(opts.lock.as_deref());
    // Everything the remote is asked before the store is touched: a remote that is down leaves it as it was.
    let (_, manifest_hash, m) = latest_manifest(remote, &label)?.ok_or_else(|| RemoteError::NothingPushed {
        remote: remote.name.clone(),
        at: remote.at.clone(),
        lock: label.clone(),
        key: format!("refs/{label}/"),
    })?;
    let (stages, wanted) = resolve_pull(&m, targets)?;
    let mut todo = Vec::new();
    let mut present = 0;
    for (id, e) in &wanted {
        let id = ArtifactId::parse(id)?;
        if store.path_of(&id, e.kind).exists() {
            present += 1;
        } else {
            todo.push((id, e.clone()));
        }
    }
    let _guard = StoreLock::acquire(store.root(), if record { "mmb pull" } else { "mmb fetch" })?;
    store.remove_stale_temps()?;
    let total: u64 = todo.iter().map(|(_, e)| e.bytes).sum();
    let pb = bar(total, if record { "pull" } else { "fetch" });
    let (downloaded, got) = (AtomicUsize::new(0), AtomicU64::new(0));
    let errors = parallel(&todo, opts.jobs, |(id, e)| {
        let lineage = match &e.lineage {
            None => None,
            Some(h) => {
                let key = format!("lineage/{h}.json");
                let b = remote.get_small(&key)?.ok_or_else(|| RemoteError::Manifest {
                    remote: remote.name.clone(),
                    at: remote.at.clone(),
                    key: key.clone(),
                    msg: "listed in the manifest but missing on the remote".into(),
                })?;
                let found = blake3::hash(&b).to_hex().to_string();
                if &found != h {
                    return Err(RemoteError::Corrupt {
                        remote: remote.name.clone(),
                        at: remote.at.clone(),
                        key,
                        expected: h.clone(),
                        found,
                    });
                }
                let l: Lineage = serde_json::from_slice(&b).map_err(|err| RemoteError::Manifest {
                    remote: remote.name.clone(),
                    at: remote.at.clone(),
                    key,
                    msg: err.to_string(),
                })?;
                Some(l)
            }
        };
        let key = ArtifactEntry::object_key(id.as_str(), e.kind);
        let mut net: Option<RemoteError> = None;
        let res = store.put_expected(e.kind, lineage.as_ref(), id, Path::new(&key), |w| {
            let r = remote.get_stream(&key, &mut |chunk| {
                w.write_all(chunk)?;
                pb.inc(chunk.len() as u64);
                Ok(())
            });
            r.map_err(|err| {
                net = Some(err);
                StoreError::Io { path: PathBuf::from(&key), source: std::io::Error::other("download failed") }
            })
        });
        if let Some(err) = net {
            return Err(err);
        }
        match res {
            Ok(_) => {}
            Err(StoreError::HashMismatch { expected, found, .. }) => {
                return Err(RemoteError::Corrupt { remote: remote.name.clone(), at: remote.at.clone(), key, expected, found })
            }
            Err(err) => return Err(err.into()),
        }
        downloaded.fetch_add(1, Ordering::Relaxed);
        got.fetch_add(e.bytes, Ordering::Relaxed);
        tracing::info!("downloaded {key} ({} bytes)", e.bytes);
        Ok(())
    });
    pb.finish_and_clear();
    let failed = !errors.is_empty();
    // Stages whose outputs all made it are recorded even when others failed.
    let mut recorded = Vec::new();
    if record {
        let mut lock = LockFile::load_named(store.root(), opts.lock.as_deref())?;
        lock.version = 1;
        let complete = |s: &String| {
            let rec: &StageRecord = &m.stages[s];
            rec.outputs.values().all(|o| ArtifactId::parse(&o.id).map(|id| store.path_of(&id, o.kind).exists()).unwrap_or(false))
        };
        for s in &stages {
            // A stage counts only when its outputs and every upstream stage's outputs are here.
            let (upstream, _) = closure(&m.stages, std::slice::from_ref(s)).expect("closure of a pulled stage");
            if upstream.iter().all(complete) {
                let rec = &m.stages[s];
                RunCache::put(store.root(), rec)?;
                lock.stages.insert(s.clone(), rec.clone());
                recorded.push(s.clone());
            }
        }
        if !recorded.is_empty() {
            lock.save_named(store.root(), opts.lock.as_deref())?;
        }
    }
    if failed {
        fail(errors, todo.len())?;
    }
    Ok(PullReport {
        downloaded: downloaded.into_inner(),
        present,
        bytes: got.into_inner(),
        recorded,
        manifest: manifest_hash,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One stage's state between the store and the remote.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSync {
    pub stage: String,
    pub outputs: usize,
    /// Outputs in the local store / on the remote (None: not in that lock).
    pub local: Option<usize>,
    pub remote: usize,
    /// The remote manifest's key for the stage, when it differs from the local lock's (or the stage is only there).
    pub remote_key: Option<String>,
    pub local_key: Option<String>,
}

impl StageSync {
    pub fn describe(&self) -> String {
        match (&self.local_key, &self.remote_key) {
            (None, Some(_)) => "on the remote only (mmb pull to get it)".into(),
            (Some(l), Some(r)) if l != r => format!("differs: local key {} , remote key {}", &l[..12.min(l.len())], &r[..12.min(r.len())]),
            _ if self.remote == self.outputs && self.local == Some(self.outputs) => "in sync".into(),
            _ if self.remote == self.outputs => {
                format!("pushed; {} of {} outputs missing locally (mmb pull)", self.outputs - self.local.unwrap_or(0), self.outputs)
            }
            _ => format!("not pushed: {} of {} outputs missing on the remote (mmb push)", self.outputs - self.remote, self.outputs),
        }
    }
}

/// Compares the lock file with the remote: one LIST of the remote's objects (sizes checked) and its
/// latest manifest; nothing is remembered between runs.
pub fn remote_status(store: &Store, remote: &Remote, lock: Option<&str>) -> Result<Vec<StageSync>, RemoteError> {
    let local = LockFile::load_named(store.root(), lock)?;
    let objects: BTreeMap<String, u64> = remote.list("objects")?.into_iter().collect();
    let manifest = latest_manifest(remote, &lock_label(lock))?.map(|(_, _, m)| m);
    let on_remote = |id: &str, kind: ArtifactKind, bytes: u64| objects.get(&format!("{id}.{}", kind.extension())) == Some(&bytes);
    let mut out = Vec::new();
    for (name, rec) in &local.stages {
        let local_n = rec
            .outputs
            .values()
            .filter(|o| ArtifactId::parse(&o.id).map(|id| store.path_of(&id, o.kind).exists()).unwrap_or(false))
            .count();
        let remote_n = rec.outputs.values().filter(|o| on_remote(&o.id, o.kind, o.bytes)).count();
        let rkey = manifest.as_ref().and_then(|m| m.stages.get(name)).map(|r| r.key.clone());
        out.push(StageSync {
            stage: name.clone(),
            outputs: rec.outputs.len(),
            local: Some(local_n),
            remote: remote_n,
            remote_key: rkey.filter(|k| k != &rec.key),
            local_key: Some(rec.key.clone()),
        });
    }
    if let Some(m) = &manifest {
        for (name, rec) in m.stages.iter().filter(|(n, _)| !local.stages.contains_key(*n)) {
            out.push(StageSync {
                stage: name.clone(),
                outputs: rec.outputs.len(),
                local: None,
                remote: rec.outputs.values().filter(|o| on_remote(&o.id, o.kind, o.bytes)).count(),
                remote_key: Some(rec.key.clone()),
                local_key: None,
            });
        }
    }
    Ok(out)
}
