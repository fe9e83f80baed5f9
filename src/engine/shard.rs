//! Sharding a map stage: which items go to shard i of N, the shard's view of the item list, the small
//! manifest each shard task writes next to its content-hashed parts, and the merge of the parts back
//! into the artifact a single machine would have written.
//!
//! Shard i of N is the set of rows of the stage's item list whose key hashes (blake3 of the key's text)
//! to i modulo N: it depends only on the ids, so it is the same on every rerun and on every machine.
use super::lockfile::OutputRecord;
use crate::store::{write_atomic, ArtifactId, ArtifactKind, Lineage, Store, Table};
use arrow::array::{Array, AsArray, BooleanArray, UInt32Array};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A map stage's declaration: its item list is the input `input`, and every row of each output table
/// carries the item's id in column `key` (and so does every row of the input, unless `input_key` names
/// the input's id column). The stage must compute each item's output rows from that item alone, so
/// running it on any subset of the items gives those items' rows. A stage that works on a selection of
/// its input (some splits, the first N) says which rows with [`super::Stage::shard_items`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub input: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_key: Option<String>,
}

impl ShardSpec {
    pub fn new(input: &str, key: &str) -> Self {
        Self { input: input.into(), key: key.into(), input_key: None }
    }

    /// The input's id column is `input_key` (e.g. the dataset's `id` for outputs keyed by `item_id`).
    pub fn with_input_key(mut self, input_key: &str) -> Self {
        self.input_key = Some(input_key.into());
        self
    }

    /// The id column of the item list.
    pub fn input_key(&self) -> &str {
        self.input_key.as_deref().unwrap_or(&self.key)
    }
}

/// The shard (of `of`) that an item id belongs to.
pub fn shard_of(key: &str, of: usize) -> usize {
    let h = blake3::hash(key.as_bytes());
    let first: [u8; 8] = h.as_bytes()[..8].try_into().expect("8 bytes");
    (u64::from_le_bytes(first) % of.max(1) as u64) as usize
}

/// The sampling seed of one item's stream `stream` (a sample index, a PPO step and sample) under the
/// stage's `seed`: it depends on the item's id alone, never on which other items share its batch or
/// shard, so a map stage that seeds each item with it writes the same rows for the item however its
/// items are batched or sharded. blake3 over a domain tag, the seed, the stream and the id.
pub fn item_seed(seed: u64, item: &str, stream: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"mmboundary item seed\0");
    h.update(&seed.to_le_bytes());
    h.update(&stream.to_le_bytes());
    h.update(item.as_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The key column of a batch as text (string ids as they are, integer ids in decimal).
pub fn key_column(batch: &RecordBatch, key: &str, what: &str) -> anyhow::Result<Vec<String>> {
    let col = batch.column_by_name(key).ok_or_else(|| anyhow::anyhow!("{what} has no key column `{key}`"))?;
    let text = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| anyhow::anyhow!("{what}: key column `{key}`: {e}"))?;
    let text = text.as_string::<i32>();
    (0..text.len())
        .map(|i| {
            if text.is_null(i) {
                anyhow::bail!("{what}: row {i}: key column `{key}` is null")
            }
            Ok(text.value(i).to_string())
        })
        .collect()
}

/// The rows of `batch` in shard `index` of `of`, in their original order.
pub fn shard_view(batch: &RecordBatch, key: &str, index: usize, of: usize, what: &str) -> anyhow::Result<RecordBatch> {
    let keys = key_column(batch, key, what)?;
    let mask = BooleanArray::from(keys.iter().map(|k| shard_of(k, of) == index).collect::<Vec<_>>());
    Ok(arrow::compute::filter_record_batch(batch, &mask)?)
}

/// What one finished shard task leaves beside its parts: enough to check them without trusting the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub stage: String,
    pub cache_key: String,
    /// None: the whole stage ran as one job (a training stage).
    pub index: Option<usize>,
    pub of: usize,
    /// The shard's view of the item list (an artifact), and its rows.
    pub view: Option<String>,
    pub items: Option<u64>,
    pub outputs: BTreeMap<String, OutputRecord>,
    /// `SLURM_JOB_ID` of the task that wrote it, if any.
    pub job: Option<String>,
    pub seconds: f64,
}

impl ShardManifest {
    pub fn file_name(index: Option<usize>) -> String {
        match index {
            Some(i) => format!("shard-{i}.json"),
            None => "whole.json".into(),
        }
    }

    /// Written with temp file, fsync and rename: a duplicate or requeued task only rewrites a valid file.
    pub fn save(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(Self::file_name(self.index));
        write_atomic(&path, &serde_json::to_vec_pretty(self)?)?;
        Ok(path)
    }

    /// The manifest of shard `index` if it exists, belongs to this run and every part it names is in
    /// the store with bytes matching its hash; otherwise why not.
    pub fn load_verified(dir: &Path, index: Option<usize>, of: usize, cache_key: &str, store: &Store) -> Result<Self, String> {
        let path = dir.join(Self::file_name(index));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("no manifest".into()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let m: Self = serde_json::from_slice(&bytes).map_err(|e| format!("{}: unreadable manifest: {e}", path.display()))?;
        if m.cache_key != cache_key || m.index != index || m.of != of {
            return Err(format!(
                "{}: written for another run (key {}, shard {:?} of {})",
                path.display(),
                short(&m.cache_key),
                m.index,
                m.of
            ));
        }
        for (name, o) in &m.outputs {
            let id = ArtifactId::parse(&o.id).map_err(|e| format!("{}: output `{name}`: {e}", path.display()))?;
            let part = store.path_of(&id, o.kind);
            if !part.exists() {
                return Err(format!("{}: part `{name}` {} is missing from the store", path.display(), part.display()));
            }
            store.check(&id, &part).map_err(|e| format!("{}: part `{name}`: {e}", path.display()))?;
        }
        Ok(m)
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// The lineage of a shard's view of its item list.
pub fn view_lineage(base: &Lineage, spec: &ShardSpec, full: &ArtifactId, index: usize, of: usize) -> Lineage {
    Lineage {
        stage: base.stage.clone(),
        output: format!("{} (shard {index} of {of} by `{}`)", spec.input, spec.input_key()),
        code_version: base.code_version.clone(),
        params: serde_json::json!({ "shard": index, "of": of, "key": spec.key }),
        inputs: BTreeMap::from([(spec.input.clone(), full.to_string())]),
        models: BTreeMap::new(),
        cache_key: base.cache_key.clone(),
        tool: Lineage::tool_version(),
        // The time and the row count are the store's to fill in.
        ..Default::default()
    }
}

/// Merges the parts of one output table (in shard order) into the rows a single machine writes: items in
/// the order of the full item list (`order`: its key column), each item's rows in the order its stage
/// wrote them. Returns the schema (without the parts' file metadata) and one batch.
pub fn merge_parts(parts: &[Table], key: &str, order: &[String]) -> anyhow::Result<(SchemaRef, RecordBatch)> {
    anyhow::ensure!(!parts.is_empty(), "no parts to merge");
    let schema: SchemaRef = Arc::new(Schema::new(parts[0].schema.fields().clone()));
    let mut batches = Vec::new();
    for p in parts {
        let fields_match = p.schema.fields().len() == schema.fields().len()
            && p.schema.fields().iter().zip(schema.fields()).all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        anyhow::ensure!(fields_match, "part {}: its columns differ from part {}'s", p.path.display(), parts[0].path.display());
        for b in &p.batches {
            batches.push(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?);
        }
    }
    let all = arrow::compute::concat_batches(&schema, &batches)?;
    let rank: HashMap<&str, usize> = {
        let mut m = HashMap::with_capacity(order.len());
        for (i, k) in order.iter().enumerate() {
            m.entry(k.as_str()).or_insert(i);
        }
        m
    };
    let keys = key_column(&all, key, "a merged part")?;
    let mut ranks = Vec::with_capacity(keys.len());
    for (row, k) in keys.iter().enumerate() {
        let r = rank.get(k.as_str()).ok_or_else(|| anyhow::anyhow!("merged row {row}: item `{k}` is not in the item list"))?;
        ranks.push(*r);
    }
    let mut idx: Vec<u32> = (0..all.num_rows() as u32).collect();
    // Stable: rows of one item keep the order the stage wrote them in.
    idx.sort_by_key(|&i| ranks[i as usize]);
    let merged = arrow::compute::take_record_batch(&all, &UInt32Array::from(idx))?;
    Ok((schema, merged))
}

/// Reads the parts of output `name` from manifests that [`ShardManifest::load_verified`] checked (their
/// bytes were just rehashed, so they are not hashed again here).
pub fn read_parts(store: &Store, manifests: &[ShardManifest], name: &str) -> anyhow::Result<Vec<Table>> {
    let mut out = Vec::with_capacity(manifests.len());
    for m in manifests {
        let o = m.outputs.get(name).ok_or_else(|| anyhow::anyhow!("shard {:?} of `{}` did not write output `{name}`", m.index, m.stage))?;
        anyhow::ensure!(
            o.kind == ArtifactKind::Parquet,
            "stage `{}`: output `{name}` is a {:?} artifact; only tables can be merged from shards",
            m.stage,
            o.kind
        );
        let id = ArtifactId::parse(&o.id)?;
        out.push(crate::store::read_parquet(&store.path_of(&id, ArtifactKind::Parquet), id)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;

    fn batch(ids: &[&str], xs: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(ids.to_vec())), Arc::new(Int64Array::from(xs.to_vec()))]).unwrap()
    }

    #[test]
    fn shard_of_is_the_hash_of_the_id_modulo_n() {
        // The first 8 bytes of blake3(id), little-endian, modulo N.
        let h = blake3::hash(b"q0");
        let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap());
        assert_eq!(shard_of("q0", 7), (v % 7) as usize);
        assert_eq!(shard_of("q0", 1), 0);
        // Every id lands in exactly one shard, and the views partition the rows.
        let ids: Vec<String> = (0..50).map(|i| format!("q{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let b = batch(&refs, &(0..50).collect::<Vec<_>>());
        let total: usize = (0..4).map(|i| shard_view(&b, "id", i, 4, "t").unwrap().num_rows()).sum();
        assert_eq!(total, 50);
    }
}
