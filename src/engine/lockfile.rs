use super::error::EngineError;
use crate::store::{write_atomic, ArtifactKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What one stage's last successful run used and wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub code_version: String,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    pub device: String,
    pub outputs: BTreeMap<String, OutputRecord>,
    pub finished: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub id: String,
    pub kind: ArtifactKind,
    pub bytes: u64,
}

/// `artifacts/mmb.lock.json`: stage → record, rewritten atomically after every finished stage, so
/// a crash mid-pipeline keeps what finished.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    pub stages: BTreeMap<String, StageRecord>,
}

impl LockFile {
    pub const NAME: &'static str = "mmb.lock.json";

    pub fn path(root: &Path) -> PathBuf {
        root.join(Self::NAME)
    }

    /// The lock of a named variant (a sweep's ablation): `locks/<name>.json`; None: the main lock.
    pub fn path_named(root: &Path, name: Option<&str>) -> PathBuf {
        match name {
            None => Self::path(root),
            Some(n) => root.join("locks").join(format!("{n}.json")),
        }
    }

    pub fn load(root: &Path) -> Result<Self, EngineError> {
        Self::load_named(root, None)
    }

    /// Every lock file of the store (the main one and each variant's), for `gc`.
    pub fn load_all(root: &Path) -> Result<Vec<Self>, EngineError> {
        let mut out = vec![Self::load(root)?];
        if let Ok(rd) = std::fs::read_dir(root.join("locks")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(n) = name.strip_suffix(".json") {
                    out.push(Self::load_named(root, Some(n))?);
                }
            }
        }
        Ok(out)
    }

    pub fn load_named(root: &Path, name: Option<&str>) -> Result<Self, EngineError> {
        let path = Self::path_named(root, name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| EngineError::LockFile { path, msg: format!("unreadable ({e}); delete it to rerun everything") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self { version: 1, stages: BTreeMap::new() }),
            Err(e) => Err(EngineError::LockFile { path, msg: e.to_string() }),
        }
    }

    pub fn save(&self, root: &Path) -> Result<(), EngineError> {
        self.save_named(root, None)
    }

    pub fn save_named(&self, root: &Path, name: Option<&str>) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec_pretty(self).expect("lock file serializes");
        write_atomic(&Self::path_named(root, name), &bytes)?;
        Ok(())
    }

    /// Every artifact id the lock file references (what `gc` keeps).
    pub fn referenced(&self) -> std::collections::BTreeSet<String> {
        self.stages.values().flat_map(|r| r.outputs.values().map(|o| o.id.clone())).collect()
    }
}

/// Every finished run by cache key (`artifacts/runs/<key>.json`), as DVC's run-cache: a stage whose key was
/// ever computed before (a reverted param, a sweep variant sharing the stage) takes its outputs from here
/// instead of running, as long as they are still in the store.
pub struct RunCache;

impl RunCache {
    fn path(root: &Path, key: &str) -> PathBuf {
        root.join("runs").join(format!("{key}.json"))
    }

    pub fn get(root: &Path, key: &str) -> Option<StageRecord> {
        let bytes = std::fs::read(Self::path(root, key)).ok()?;
        // A damaged entry only costs a rerun.
        serde_json::from_slice(&bytes).ok()
    }

    pub fn put(root: &Path, record: &StageRecord) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec_pretty(record).expect("record serializes");
        write_atomic(&Self::path(root, &record.key), &bytes)?;
        Ok(())
    }
}
