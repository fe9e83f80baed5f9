use crate::store::StoreError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stage `{stage}` failed: {}", crate::runtime::error_chain(.source.as_ref()))]
    StageFailed { stage: String, source: anyhow::Error },
    #[error("stage `{stage}` panicked: {msg}")]
    StagePanicked { stage: String, msg: String },
    #[error("stage `{stage}` finished without writing its declared output `{output}`")]
    MissingOutput { stage: String, output: String },
    #[error("stage `{stage}` wrote `{output}`, which it does not declare (declared: {declared})")]
    UndeclaredOutput { stage: String, output: String, declared: String },
    #[error("stage `{stage}`: input `{input}` names `{from}`, which {why}")]
    BadInput { stage: String, input: String, from: String, why: String },
    #[error("two stages are named `{0}`")]
    DuplicateStage(String),
    #[error("the stages form a cycle: {0}")]
    Cycle(String),
    #[error("no stage named `{0}` (stages: {1})")]
    UnknownStage(String, String),
    #[error("stage `{stage}` has no input named `{input}` (inputs: {known})")]
    UnknownInput { stage: String, input: String, known: String },
    #[error("{path}: {msg}")]
    LockFile { path: PathBuf, msg: String },
    #[error("model file {path} for stage `{stage}`: {source}")]
    Model { stage: String, path: PathBuf, source: std::io::Error },
}
