//! `mmb gc`: what nothing needs any more, under the store lock so that a concurrent run's fresh outputs
//! (not yet in any lock file) are never taken for garbage.
//!
//! Two kinds of garbage: artifacts that no lock file (the main one, or a variant's) references, and the
//! work folders (`work/<stage>-<key prefix>`, per-epoch checkpoints kept for resuming a crashed run) of
//! runs that finished, whose result is in the store. The work folder of a run that never finished is its
//! resume state: it is kept and listed.
use super::error::EngineError;
use super::lockfile::LockFile;
use crate::store::{IoContext, Store, StoreLock};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct GcReport {
    /// Unreferenced artifacts (deleted when applied), with their sizes.
    pub artifacts: Vec<(PathBuf, u64)>,
    /// Work folders of finished runs (deleted when applied), with their sizes.
    pub work: Vec<(PathBuf, u64)>,
    /// Work folders of runs that never finished: kept, as the state a rerun resumes from.
    pub resumable: Vec<(PathBuf, u64)>,
    /// Artifacts kept because a lock file references them.
    pub kept: usize,
}

/// Lists (and with `apply` deletes) the garbage of `store`, holding its lock throughout.
pub fn collect_garbage(store: &Store, apply: bool) -> Result<GcReport, EngineError> {
    let _guard = StoreLock::acquire(store.root(), if apply { "mmb gc --apply" } else { "mmb gc" })?;
    let keep: BTreeSet<String> = LockFile::load_all(store.root())?.iter().flat_map(|l| l.referenced()).collect();
    let artifacts = store.gc(&keep, apply)?;
    let finished = finished_keys(store.root())?;
    let mut report = GcReport { artifacts, kept: keep.len(), ..Default::default() };
    let work = store.root().join("work");
    let entries = match std::fs::read_dir(&work) {
        Ok(rd) => rd.collect::<Result<Vec<_>, _>>().at(&work)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(crate::store::StoreError::Io { path: work, source: e }.into()),
    };
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        // `<stage>-<first 16 hex digits of the run's cache key>` (StageContext::work_dir).
        let done = name.rsplit_once('-').is_some_and(|(_, prefix)| finished.iter().any(|k| k.starts_with(prefix)));
        let bytes = tree_size(&path)?;
        if done {
            if apply {
                std::fs::remove_dir_all(&path).at(&path)?;
            }
            report.work.push((path, bytes));
        } else {
            report.resumable.push((path, bytes));
        }
    }
    Ok(report)
}

/// Cache keys of every run that finished: the run-cache (`runs/<key>.json`) and every lock file.
fn finished_keys(root: &Path) -> Result<BTreeSet<String>, EngineError> {
    let mut keys: BTreeSet<String> = LockFile::load_all(root)?.into_iter().flat_map(|l| l.stages.into_values().map(|r| r.key)).collect();
    if let Ok(rd) = std::fs::read_dir(root.join("runs")) {
        keys.extend(rd.flatten().filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").map(str::to_string)));
    }
    Ok(keys)
}

fn tree_size(path: &Path) -> Result<u64, crate::store::StoreError> {
    let meta = std::fs::symlink_metadata(path).at(path)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(path).at(path)? {
        total += tree_size(&e.at(path)?.path())?;
    }
    Ok(total)
}
