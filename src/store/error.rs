use std::path::PathBuf;

/// Everything that can go wrong in the store; each variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("artifact {id} not found in the store (looked for {path})")]
    Missing { id: String, path: PathBuf },
    #[error("{path}: content hash mismatch: the name says {expected} but the bytes hash to {found} (corrupt or tampered)")]
    HashMismatch { path: PathBuf, expected: String, found: String },
    #[error("{path}: not a valid Parquet file: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("{path}: {source}")]
    Arrow { path: PathBuf, source: arrow::error::ArrowError },
    #[error("{path}: lineage metadata: {msg}")]
    Lineage { path: PathBuf, msg: String },
    #[error("{path}: column `{column}`: expected {expected}, found {found}")]
    Schema { path: PathBuf, column: String, expected: String, found: String },
    #[error("`{0}` is not an artifact id: expected a 64-character blake3 hex (or a unique prefix of one)")]
    BadId(String),
    #[error("artifact prefix `{prefix}` is ambiguous: {count} artifacts match")]
    Ambiguous { prefix: String, count: usize },
    #[error("the store at {path} is locked by another mmb process ({holder}); wait for it to finish")]
    Locked { path: PathBuf, holder: String },
}

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Io { path: path.into(), source })
    }
}
