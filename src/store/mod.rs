//! The artifact store: every artifact is one file under `artifacts/objects/`, named by the blake3 hash
//! of its bytes. Writes are atomic (temp file in the same folder, fsync, rename, fsync of the folder),
//! so a crash mid-write leaves at most a temp file, which the next writer removes.
//!
//! Tables are Parquet files whose key/value metadata carries their lineage (`mmboundary.lineage`) and,
//! where the columns map to them, Hugging Face `datasets` features (`huggingface`), so pandas, polars,
//! duckdb and `datasets` read them as they are. Other artifacts (safetensors checkpoints, ONNX files,
//! reports) keep their lineage in a sidecar `<file>.lineage.json`.
mod artifact;
mod audit;
mod error;
mod folder;
mod lineage;
mod lock;
mod table;

pub(crate) use artifact::sidecar_path;
pub use artifact::{hash_file, write_atomic, ArtifactId, ArtifactKind, HashingWriter, Store};
pub use audit::{Mismatch, VerifyReport};
pub(crate) use error::IoContext;
pub use error::StoreError;
pub use lineage::{Lineage, HF_KEY, LINEAGE_KEY};
pub use lock::StoreLock;
pub use table::{expect_columns, expect_schema, read_parquet, Table};
