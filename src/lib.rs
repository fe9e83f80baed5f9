//! mmboundary: MMBoundary (ACL 2025) as a cached pipeline of content-hashed Parquet artifacts.
//!
//! Layers, each importing only those below it (see README "Architecture"):
//! `cli` → `engine` → `stages` → `confidence` → `metrics` → {`encoders`, `mllm`, `data`} → `store`.
pub mod cli;
pub mod confidence;
pub mod data;
pub mod encoders;
pub mod engine;
pub mod metrics;
pub mod remote;
pub mod report;
pub mod runtime;
pub mod stages;
pub mod store;
