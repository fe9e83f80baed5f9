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

    pub fn load(root: &Path) -> Result<Self, EngineError> {
        let path = Self::path(root);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| EngineError::LockFile { path, msg: format!("unreadable ({e}); delete it to rerun everything") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self { version: 1, stages: BTreeMap::new() }),
            Err(e) => Err(EngineError::LockFile { path, msg: e.to_string() }),
        }
    }

    pub fn save(&self, root: &Path) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec_pretty(self).expect("lock file serializes");
        write_atomic(&Self::path(root), &bytes)?;
        Ok(())
    }

    /// Every artifact id the lock file references (what `gc` keeps).
    pub fn referenced(&self) -> std::collections::BTreeSet<String> {
        self.stages.values().flat_map(|r| r.outputs.values().map(|o| o.id.clone())).collect()
    }
}
