use super::context::StageContext;
use super::shard::ShardSpec;
use std::path::PathBuf;

/// An input of a stage: the output `output` of stage `stage`, known inside the stage as `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub stage: String,
    pub output: String,
}

impl InputSpec {
    pub fn new(name: &str, stage: &str, output: &str) -> Self {
        Self { name: name.into(), stage: stage.into(), output: output.into() }
    }
}

/// One step of the pipeline. Everything that can change what it writes must appear in its cache key:
/// its name, [`Stage::code_version`], [`Stage::params`], its inputs' ids, [`Stage::models`] and
/// [`Stage::device`] (see [`super::cache_key`]).
pub trait Stage: Send + Sync {
    fn name(&self) -> &str;
    /// Bump when the stage's logic changes in a way that changes its outputs (Dagster's code_version).
    fn code_version(&self) -> &str;
    fn inputs(&self) -> Vec<InputSpec>;
    fn outputs(&self) -> Vec<String>;
    /// The stage's effective params (defaults overridden by its TOML), as JSON; the engine canonicalizes.
    fn params(&self) -> serde_json::Value;
    /// External files read by the stage (a user's model folder files, ONNX files) whose content is part of the key.
    fn models(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// Device and dtype, e.g. `cpu/f32`: results may differ across them.
    fn device(&self) -> String {
        "cpu".into()
    }
    /// A map stage names its item list and key column here, so an executor may run it on shards of the
    /// items and merge the outputs (see [`super::shard`]); None: the stage runs as one piece.
    fn shard(&self) -> Option<ShardSpec> {
        None
    }
    /// Of a sharded stage's item list, the rows it writes outputs for, in the order it writes them (the
    /// merge's row order); run on the rows of one shard of these, it writes that shard's rows. Default:
    /// every row, in order. A stage that selects (some splits, the first N) returns its selection, so
    /// that a shard never sees an item the whole run would not have used.
    fn shard_items(&self, items: &arrow::record_batch::RecordBatch) -> anyhow::Result<arrow::record_batch::RecordBatch> {
        Ok(items.clone())
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()>;
}
