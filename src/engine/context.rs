use crate::store::{ArtifactId, ArtifactKind, Lineage, Store, StoreError, Table};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `work/<stage>-<first 16 of the key>`: a stage run's resumable work folder.
pub(crate) fn work_dir_path(root: &Path, stage: &str, key: &str) -> PathBuf {
    root.join("work").join(format!("{stage}-{}", &key[..16.min(key.len())]))
}

/// A stage handed to another process: what it reads, writes and is keyed by.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerJob {
    pub stage: String,
    pub store: PathBuf,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, (ArtifactId, ArtifactKind)>,
    pub outputs: Vec<String>,
    pub lineage: Lineage,
}

/// What a running stage sees: its params, its inputs (checked against their hashes when read), and
/// the only way to write outputs (through the store, with lineage filled in).
pub struct StageContext<'a> {
    store: &'a Store,
    stage: String,
    params: serde_json::Value,
    inputs: BTreeMap<String, (ArtifactId, ArtifactKind)>,
    declared: Vec<String>,
    lineage: Lineage,
    written: Mutex<BTreeMap<String, (ArtifactId, ArtifactKind)>>,
    progress: &'a MultiProgress,
}

impl<'a> StageContext<'a> {
    pub(crate) fn new(
        store: &'a Store,
        stage: &str,
        params: serde_json::Value,
        inputs: BTreeMap<String, (ArtifactId, ArtifactKind)>,
        declared: Vec<String>,
        lineage: Lineage,
        progress: &'a MultiProgress,
    ) -> Self {
        Self { store, stage: stage.into(), params, inputs, declared, lineage, written: Mutex::new(BTreeMap::new()), progress }
    }

    pub fn stage(&self) -> &str {
        &self.stage
    }

    pub fn store(&self) -> &Store {
        self.store
    }

    /// This run's cache key (names work folders that must survive a crash of this very run).
    pub fn cache_key(&self) -> &str {
        &self.lineage.cache_key
    }

    /// A folder for resumable work of this run (e.g. training checkpoints): the same key gets the same
    /// folder, so a rerun after a crash finds what the crashed run left. `mmb gc` does not touch it.
    pub fn work_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = work_dir_path(self.store.root(), &self.stage, &self.lineage.cache_key);
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The stage's params deserialized into its params struct.
    pub fn params<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_value(self.params.clone()).map_err(|e| anyhow::anyhow!("stage `{}`: params: {e}", self.stage))
    }

    fn input(&self, name: &str) -> anyhow::Result<&(ArtifactId, ArtifactKind)> {
        self.inputs.get(name).ok_or_else(|| {
            anyhow::anyhow!(
                "stage `{}` has no input `{name}` (inputs: {})",
                self.stage,
                self.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    pub fn input_id(&self, name: &str) -> anyhow::Result<ArtifactId> {
        Ok(self.input(name)?.0.clone())
    }

    /// Reads a Parquet input, verifying its bytes against its name first.
    pub fn input_table(&self, name: &str) -> anyhow::Result<Table> {
        let (id, _) = self.input(name)?;
        Ok(self.store.read_table(id)?)
    }

    /// Reads a Parquet input as [`Self::input_table`] and checks that it has every column of `schema`
    /// (its producing stage's), each of its type: a table of another shape (an import, a file made by
    /// hand) is an error naming the file, the column and the types, not a panic where the column is read.
    pub fn input_table_as(&self, name: &str, schema: &Schema) -> anyhow::Result<Table> {
        let table = self.input_table(name)?;
        crate::store::expect_schema(&table, schema).map_err(|e| anyhow::anyhow!("stage `{}`, input `{name}`: {e}", self.stage))?;
        Ok(table)
    }

    /// A folder input (a tar artifact, e.g. a model folder), extracted once under `artifacts/cache/`.
    pub fn input_folder(&self, name: &str) -> anyhow::Result<PathBuf> {
        let (id, kind) = self.input(name)?;
        anyhow::ensure!(*kind == ArtifactKind::Tar, "stage `{}`: input `{name}` is a {:?} artifact, not a folder", self.stage, kind);
        Ok(self.store.materialize(id)?)
    }

    /// Path of a non-tabular input, verified against its hash.
    pub fn input_path(&self, name: &str) -> anyhow::Result<PathBuf> {
        let (id, kind) = self.input(name)?;
        let path = self.store.path_of(id, *kind);
        if !path.exists() {
            return Err(StoreError::Missing { id: id.to_string(), path }.into());
        }
        self.store.check(id, &path)?;
        Ok(path)
    }

    fn lineage_for(&self, output: &str) -> anyhow::Result<Lineage> {
        if !self.declared.iter().any(|d| d == output) {
            anyhow::bail!("stage `{}` writes undeclared output `{output}` (declared: {})", self.stage, self.declared.join(", "));
        }
        Ok(Lineage { output: output.into(), created: Some(Lineage::now()), ..self.lineage.clone() })
    }

    fn record(&self, output: &str, id: &ArtifactId, kind: ArtifactKind) {
        self.written.lock().expect("outputs lock").insert(output.into(), (id.clone(), kind));
    }

    pub fn write_table(
        &self,
        output: &str,
        schema: SchemaRef,
        batches: &[RecordBatch],
        hf_features: Option<&serde_json::Value>,
    ) -> anyhow::Result<ArtifactId> {
        let lineage = self.lineage_for(output)?;
        let id = self.store.put_table(schema, batches, &lineage, hf_features)?;
        self.record(output, &id, ArtifactKind::Parquet);
        Ok(id)
    }

    pub fn write_bytes(&self, output: &str, kind: ArtifactKind, bytes: &[u8]) -> anyhow::Result<ArtifactId> {
        let lineage = self.lineage_for(output)?;
        let id = self.store.put_bytes(kind, bytes, Some(&lineage))?;
        self.record(output, &id, kind);
        Ok(id)
    }

    pub fn write_file(&self, output: &str, kind: ArtifactKind, src: &Path) -> anyhow::Result<ArtifactId> {
        let lineage = self.lineage_for(output)?;
        let id = self.store.put_file(kind, src, Some(&lineage))?;
        self.record(output, &id, kind);
        Ok(id)
    }

    /// Stores a folder (a model: config, weights, tokenizer) as one tar output.
    pub fn write_dir(&self, output: &str, dir: &Path) -> anyhow::Result<ArtifactId> {
        let lineage = self.lineage_for(output)?;
        let id = self.store.put_dir(dir, Some(&lineage))?;
        self.record(output, &id, ArtifactKind::Tar);
        Ok(id)
    }

    /// Streams a large non-tabular output straight into the store (hashed as it is written).
    pub fn write_with<F>(&self, output: &str, kind: ArtifactKind, write: F) -> anyhow::Result<ArtifactId>
    where
        F: FnOnce(&mut crate::store::HashingWriter) -> Result<(), StoreError>,
    {
        let lineage = self.lineage_for(output)?;
        let id = self.store.put_with(kind, Some(&lineage), write)?;
        self.record(output, &id, kind);
        Ok(id)
    }

    /// A progress bar under the run's multi-progress display (hidden when stderr is not a terminal).
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        let bar = self.progress.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10.bold} {msg:24} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(self.stage.clone());
        bar.set_message(what.to_string());
        bar
    }

    /// Everything a worker process needs to act as this stage (see [`crate::stages::worker`]).
    pub fn to_job(&self) -> WorkerJob {
        WorkerJob {
            stage: self.stage.clone(),
            store: self.store.root().to_path_buf(),
            params: self.params.clone(),
            inputs: self.inputs.clone(),
            outputs: self.declared.clone(),
            lineage: self.lineage.clone(),
        }
    }

    /// The context a worker process rebuilds from a job.
    pub fn from_job(store: &'a Store, job: &WorkerJob, progress: &'a MultiProgress) -> Self {
        Self::new(store, &job.stage, job.params.clone(), job.inputs.clone(), job.outputs.clone(), job.lineage.clone(), progress)
    }

    /// Outputs written so far (a worker reports these back).
    pub fn written(&self) -> BTreeMap<String, (ArtifactId, ArtifactKind)> {
        self.written.lock().expect("outputs lock").clone()
    }

    /// Takes over an output that a worker process wrote into the store, after checking its bytes.
    pub fn adopt(&self, output: &str, id: &ArtifactId, kind: ArtifactKind) -> anyhow::Result<()> {
        self.lineage_for(output)?;
        let path = self.store.path_of(id, kind);
        if !path.exists() {
            return Err(StoreError::Missing { id: id.to_string(), path }.into());
        }
        self.store.check(id, &path)?;
        self.record(output, id, kind);
        Ok(())
    }

    pub(crate) fn into_written(self) -> BTreeMap<String, (ArtifactId, ArtifactKind)> {
        self.written.into_inner().expect("outputs lock")
    }
}
