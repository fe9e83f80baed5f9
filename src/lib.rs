//! mmboundary: MMBoundary (ACL 2025) as a cached pipeline of content-hashed Parquet artifacts.
//!
//! Layers, each importing only those below it (see README "Architecture"):
//! `cli` → `engine` → `stages` → {`confidence`, `metrics`} → {`encoders`, `mllm`, `data`} → `store`.
pub mod mllm;
pub mod runtime;
