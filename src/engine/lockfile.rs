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
    /// The thread cap the stage ran under (its `-j N` share or `$MMB_THREADS`); absent: none, every runtime
    /// on its own default. Not part of the key, yet a trained stage's floats can depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
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

    /// The stages of this lock whose key `base` does not hold, in `order` (stage names; others after, by
    /// name): what a variant computed beyond the main run, with each stage's recorded seconds (a stage
    /// restored from the run-cache keeps the seconds of the run that computed it).
    pub fn beyond<'a>(&'a self, base: &LockFile, order: &[String]) -> Vec<(&'a str, &'a StageRecord)> {
        let base_keys: std::collections::BTreeSet<&str> = base.stages.values().map(|r| r.key.as_str()).collect();
        let rank = |name: &str| order.iter().position(|o| o == name).unwrap_or(order.len());
        let mut out: Vec<(&str, &StageRecord)> =
            self.stages.iter().filter(|(_, r)| !base_keys.contains(r.key.as_str())).map(|(n, r)| (n.as_str(), r)).collect();
        out.sort_by_key(|(n, _)| (rank(n), n.to_string()));
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, seconds: f64) -> StageRecord {
        StageRecord {
            key: key.into(),
            code_version: "1".into(),
            params: serde_json::Value::Null,
            inputs: BTreeMap::new(),
            models: BTreeMap::new(),
            device: "cpu".into(),
            threads: None,
            outputs: BTreeMap::new(),
            finished: String::new(),
            seconds,
        }
    }

    fn lock(stages: &[(&str, &str, f64)]) -> LockFile {
        LockFile { version: 1, stages: stages.iter().map(|(n, k, s)| (n.to_string(), record(k, *s))).collect() }
    }

    #[test]
    fn beyond_keeps_the_stages_whose_key_the_base_lacks_in_pipeline_order() {
        let main = lock(&[("dataset", "k1", 1.0), ("generate", "k2", 60.0), ("eval", "k3", 9.0)]);
        // A variant reusing dataset, with its own generate and eval; `zeta` is not in the order.
        let variant = lock(&[("dataset", "k1", 1.0), ("eval", "k5", 4.0), ("generate", "k4", 80.0), ("zeta", "k6", 2.0)]);
        let order: Vec<String> = ["dataset", "generate", "eval"].map(String::from).to_vec();
        let got: Vec<(&str, &str, f64)> = variant.beyond(&main, &order).into_iter().map(|(n, r)| (n, r.key.as_str(), r.seconds)).collect();
        assert_eq!(got, [("generate", "k4", 80.0), ("eval", "k5", 4.0), ("zeta", "k6", 2.0)]);
        // A key the base holds under another stage name is the base's work too.
        let renamed = lock(&[("sampled", "k2", 60.0)]);
        assert!(renamed.beyond(&main, &order).is_empty());
    }
}
