//! The pipeline's stages, one short file each, and the registry that builds them from `stages/*.toml`.
pub mod bin;
pub mod chain_judge;
mod config;
pub mod dataset;
pub mod demo_clip;
pub mod demo_mllm;
pub mod device;
pub mod eval;
pub mod features;
pub mod generate;
pub mod image_swap;
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
    let session = crate::encoders::runtime::SessionOptions::default();
    let mut stages: Vec<Box<dyn Stage>> = vec![
        Box::new(dataset::DatasetStage { params: c.params("dataset")? }),
        Box::new(demo_clip::DemoClipStage { params: c.params("demo_clip")? }),
        Box::new(features::FeaturesStage { params: c.params("features")?, session: session.clone() }),
        Box::new(demo_mllm::DemoMllmStage { params: c.params("demo_mllm")? }),
        Box::new(generate::GenerateStage { params: c.params("generate")? }),
        Box::new(score::ScoreStage { params: c.params("score")?, session: session.clone() }),
        Box::new(bin::BinStage { params: c.params("bin")? }),
        Box::new(map::MapStage { params: c.params("map")? }),
        Box::new(sft::SftStage { params: c.params("sft")? }),
    ];
    // rollout_k and update_k for each of the K iterations, then `ppo`, which gathers them.
    stages.extend(ppo::stages(c.params("ppo")?));
    stages.push(Box::new(eval::EvalStage { params: c.params("eval")? }));
    stages.push(Box::new(report::ReportStage { params: c.params("report")? }));
    Ok(Pipeline::new(stages)?)
}
