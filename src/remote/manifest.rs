//! What a push publishes besides the objects: a manifest (the lock records of the pushed stages and every
//! pushed artifact with its kind, size and lineage sidecar hash), itself content-addressed, and a ref that
//! names the latest manifest of a lock.
//!
//! Remote layout under the prefix:
//! - `objects/<blake3>.<ext>`: artifacts, named by the hash of their bytes (as in the store);
//! - `lineage/<blake3>.json`: lineage sidecars of non-Parquet artifacts, named by their own hash;
//! - `manifests/<blake3>.json`: manifests;
//! - `refs/<lock>/<seq>.json`: `{"manifest": HASH}`, seq = 20 zero-padded digits. A push writes seq + 1
//!   with create-if-absent; a pusher that loses the race reads the winner's manifest, merges and retries,
//!   so concurrent pushes never lose each other's stages, and the history stays.
use crate::engine::StageRecord;
use crate::store::ArtifactKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const FORMAT: &str = "mmboundary-remote-manifest-v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactEntry {
    pub kind: ArtifactKind,
    pub bytes: u64,
    /// blake3 of the lineage sidecar (`lineage/<hash>.json`), for non-Parquet artifacts that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
}

impl ArtifactEntry {
    pub fn object_key(id: &str, kind: ArtifactKind) -> String {
        format!("objects/{id}.{}", kind.extension())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub tool: String,
    /// `main`, or a variant's lock name.
    pub lock: String,
    /// Stage → its lock record; every output (and every input not made by a listed stage) is in `artifacts`.
    pub stages: BTreeMap<String, StageRecord>,
    pub artifacts: BTreeMap<String, ArtifactEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefEntry {
    pub manifest: String,
}

impl Manifest {
    pub fn new(lock: &str) -> Self {
        Self {
            format: FORMAT.into(),
            tool: crate::store::Lineage::tool_version(),
            lock: lock.into(),
            stages: BTreeMap::new(),
            artifacts: BTreeMap::new(),
        }
    }

    /// Canonical bytes and their blake3 (the manifest's name).
    pub fn encode(&self) -> (Vec<u8>, String) {
        let bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        let hash = blake3::hash(&bytes).to_hex().to_string();
        (bytes, hash)
    }

    /// Lays `newer` over this manifest: its stages replace same-named ones, its artifacts are added.
    pub fn merge(&mut self, newer: &Manifest) {
        for (k, v) in &newer.stages {
            self.stages.insert(k.clone(), v.clone());
        }
        for (k, v) in &newer.artifacts {
            self.artifacts.insert(k.clone(), v.clone());
        }
    }
}

pub fn ref_key(lock: &str, seq: u64) -> String {
    format!("refs/{lock}/{seq:020}.json")
}

/// `stages` and every stage they depend on (through input ids produced by another record), and the input
/// ids no record produces (imported artifacts), from a set of lock records. Unknown names are errors.
pub fn closure(records: &BTreeMap<String, StageRecord>, stages: &[String]) -> Result<(BTreeSet<String>, BTreeSet<String>), String> {
    let mut producer: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, r) in records {
        for o in r.outputs.values() {
            producer.insert(o.id.as_str(), name.as_str());
        }
    }
    let mut seen = BTreeSet::new();
    let mut loose = BTreeSet::new();
    let mut todo: Vec<String> = stages.to_vec();
    while let Some(s) = todo.pop() {
        if seen.contains(&s) {
            continue;
        }
        let r =
            records.get(&s).ok_or_else(|| format!("no stage `{s}` (known: {})", records.keys().cloned().collect::<Vec<_>>().join(", ")))?;
        for id in r.inputs.values() {
            match producer.get(id.as_str()) {
                Some(p) => todo.push(p.to_string()),
                None => {
                    loose.insert(id.clone());
                }
            }
        }
        seen.insert(s);
    }
    Ok((seen, loose))
}

/// Every output id of these stages.
pub fn outputs_of<'a>(
    records: &'a BTreeMap<String, StageRecord>,
    stages: &'a BTreeSet<String>,
) -> impl Iterator<Item = (&'a str, ArtifactKind)> {
    stages.iter().flat_map(move |s| records[s].outputs.values().map(|o| (o.id.as_str(), o.kind)))
}

/// The lock-file name a manifest is published under (`main` for the main lock).
pub fn lock_label(lock: Option<&str>) -> String {
    lock.unwrap_or("main").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::OutputRecord;

    fn rec(inputs: &[(&str, &str)], outputs: &[(&str, &str)]) -> StageRecord {
        StageRecord {
            key: "k".into(),
            code_version: "1".into(),
            params: serde_json::json!({}),
            inputs: inputs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            models: Default::default(),
            device: "cpu".into(),
            threads: None,
            outputs: outputs
                .iter()
                .map(|(a, b)| (a.to_string(), OutputRecord { id: b.to_string(), kind: ArtifactKind::Parquet, bytes: 1 }))
                .collect(),
            finished: "t".into(),
            seconds: 0.0,
        }
    }

    #[test]
    fn closure_follows_input_ids_to_their_producers() {
        let mut r = BTreeMap::new();
        r.insert("dataset".to_string(), rec(&[], &[("items", "i1")]));
        r.insert("features".to_string(), rec(&[("items", "i1")], &[("features", "f1")]));
        r.insert("generate".to_string(), rec(&[("items", "i1"), ("features", "f1"), ("extra", "x9")], &[("chains", "c1")]));
        r.insert("other".to_string(), rec(&[], &[("o", "o1")]));
        let (s, loose) = closure(&r, &["generate".to_string()]).unwrap();
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec!["dataset", "features", "generate"]);
        assert_eq!(loose.into_iter().collect::<Vec<_>>(), vec!["x9"]);
        assert!(closure(&r, &["nope".to_string()]).unwrap_err().contains("dataset, features"));
    }

    #[test]
    fn merge_keeps_both_pushes_and_the_newer_stage_wins() {
        let mut a = Manifest::new("main");
        a.stages.insert("score".into(), rec(&[], &[("s", "s1")]));
        a.artifacts.insert("s1".into(), ArtifactEntry { kind: ArtifactKind::Parquet, bytes: 1, lineage: None });
        let mut b = Manifest::new("main");
        b.stages.insert("score".into(), rec(&[], &[("s", "s2")]));
        b.stages.insert("bin".into(), rec(&[], &[("l", "l1")]));
        b.artifacts.insert("s2".into(), ArtifactEntry { kind: ArtifactKind::Parquet, bytes: 1, lineage: None });
        a.merge(&b);
        assert_eq!(a.stages["score"].outputs["s"].id, "s2");
        assert!(a.stages.contains_key("bin"));
        assert_eq!(a.artifacts.len(), 2);
        let (bytes, h) = a.encode();
        assert_eq!(blake3::hash(&bytes).to_hex().to_string(), h);
        assert_eq!(ref_key("main", 7), "refs/main/00000000000000000007.json");
    }
}
