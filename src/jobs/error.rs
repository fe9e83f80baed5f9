//! The jobs' one error type: each variant names what failed (the input table and column, the row and
//! item, the param, the file, the stage), and wraps what the libraries below reported.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A job for a stage the worker does not run.
    #[error("mmb-torch has no stage `{0}`")]
    UnknownStage(String),
    /// An input table lacks a column the job reads.
    #[error("{table} has no column `{column}`")]
    MissingColumn { table: String, column: String },
    /// A row of an input names an item the dataset does not have (`at`: the input and row).
    #[error("{at}: item {item} is not in the dataset")]
    UnknownItem { at: String, item: String },
    /// What the job needs of one item is not there or failed (its CLIP features, its image features).
    #[error("item {item}: {msg}")]
    Item { item: String, msg: String },
    /// A param the job cannot use (`field`: where it is, e.g. `ppo.trainer.epochs`, `eval.variants`).
    #[error("{field}: {msg}")]
    Param { field: String, msg: String },
    /// A file the job read (a tokenizer, a checkpoint, a statement pool, a level model).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// An input or output of the job's own checks (`stage`: the stage, e.g. `ppo iteration 2`).
    #[error("{stage}: {msg}")]
    Stage { stage: String, msg: String },
    /// A step of the job that a library below failed, with the library's whole chain of causes.
    #[error("{what}: {cause:#}")]
    Step { what: String, cause: anyhow::Error },
    /// An I/O error on a path.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Model(#[from] mllm::MllmError),
    #[error(transparent)]
    Store(#[from] mmboundary::store::StoreError),
    #[error(transparent)]
    Data(#[from] mmboundary::data::DataError),
    #[error(transparent)]
    Encoder(#[from] mmboundary::encoders::EncoderError),
    #[error(transparent)]
    Confidence(#[from] mmboundary::confidence::ConfidenceError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// What the pipeline library (the store, the stage context, a stage's own functions) reported; its
    /// messages name the artifact, input or row.
    #[error(transparent)]
    Pipeline(#[from] anyhow::Error),
}

pub type Result<T, E = JobError> = std::result::Result<T, E>;

impl JobError {
    pub fn stage(stage: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Stage { stage: stage.into(), msg: msg.into() }
    }
    pub fn param(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Param { field: field.into(), msg: msg.into() }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Self::File { path: path.into(), msg: msg.to_string() }
    }
    pub fn column(table: impl Into<String>, column: impl Into<String>) -> Self {
        Self::MissingColumn { table: table.into(), column: column.into() }
    }
    pub fn unknown_item(at: impl Into<String>, item: impl Into<String>) -> Self {
        Self::UnknownItem { at: at.into(), item: item.into() }
    }
    pub fn item(item: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Item { item: item.into(), msg: msg.into() }
    }
    /// `what` failed in a library below (its error, of any type, keeps its chain of causes).
    pub fn step<E: Into<anyhow::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> Self {
        let what = what.into();
        move |cause| Self::Step { what, cause: cause.into() }
    }
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
