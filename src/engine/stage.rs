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
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()>;
}
