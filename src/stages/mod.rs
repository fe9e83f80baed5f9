//! The pipeline's stages, one short file each, and the registry that builds them from `stages/*.toml`.
mod config;
pub mod bin;
pub mod chain_judge;
pub mod dataset;
pub mod demo_clip;
pub mod demo_mllm;
pub mod eval;
pub mod features;
pub mod generate;
pub mod judges;
pub mod map;
pub mod models;
pub mod ppo;
pub mod report;
pub mod score;
pub mod sft;
pub mod worker;

pub use config::{load_stage_toml, StageConfigs, StageToml, SweepFile, Variant};

use crate::engine::{Pipeline, Stage};
use std::path::Path;

/// Every stage of the pipeline, with params from `<dir>/<stage>.toml` over the defaults in code.
pub fn pipeline(dir: &Path) -> anyhow::Result<Pipeline> {
    pipeline_with(&StageConfigs::new(dir))
}

/// The pipeline with params from `configs` (a sweep variant's overrides included).
pub fn pipeline_with(c: &StageConfigs) -> anyhow::Result<Pipeline> {
    let stages: Vec<Box<dyn Stage>> = vec![Box::new(dataset::DatasetStage { params: c.params("dataset")? })];
    Ok(Pipeline::new(stages)?)
}
