use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Parquet key/value metadata key holding the lineage JSON.
pub const LINEAGE_KEY: &str = "mmboundary.lineage";
/// Parquet key/value metadata key read by Hugging Face `datasets`.
pub const HF_KEY: &str = "huggingface";

/// Where an artifact came from: enough to audit it, or to decide whether a copy from another team
/// was made by the same stage, params and inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Lineage {
    /// Stage that wrote it (`import` for imported files, `prepare` for preparation steps).
    pub stage: String,
    /// Name of this output among the stage's outputs.
    pub output: String,
    /// The stage's code version (part of its cache key).
    pub code_version: String,
    /// The stage's params, canonical JSON (sorted keys).
    pub params: serde_json::Value,
    /// Input name → artifact id.
    pub inputs: BTreeMap<String, String>,
    /// External model files (path → blake3) that the stage read.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// The cache key of the run that wrote it.
    pub cache_key: String,
    /// `mmboundary <version>`.
    pub tool: String,
    /// When it was written (RFC 3339; `SOURCE_DATE_EPOCH` pins it). Kept only where it does not enter the
    /// artifact's hash: the sidecar of a non-Parquet artifact. A Parquet artifact carries none, so a rerun
    /// that reproduces the same rows reproduces the same bytes and name; its time is in the lock file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Rows of a table (None for files).
    pub rows: Option<u64>,
}

impl Lineage {
    pub fn tool_version() -> String {
        format!("mmboundary {}", env!("CARGO_PKG_VERSION"))
    }

    /// Now, or `SOURCE_DATE_EPOCH` when set, as RFC 3339.
    pub fn now() -> String {
        let t = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
    }
}
