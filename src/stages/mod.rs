//! The pipeline's stages, one short file each, and the registry that builds them from `stages/*.toml`.
pub mod bin;
pub mod chain_judge;
mod config;
pub mod csr_pairs;
pub mod dataset;
pub mod demo_clip;
pub mod demo_mllm;
pub mod device;
pub mod dpo;
pub mod eval;
pub mod features;
pub mod generate;
pub mod ice_sce;
pub mod image_swap;
pub mod judges;
pub mod map;
pub mod models;
pub mod ppo;
pub mod project;
pub mod report;
pub mod score;
pub mod seeds;
pub mod self_consistency;
pub mod settings;
pub mod sft;
pub mod worker;

pub use config::{load_stage_toml, StageConfigs, StageToml, SweepFile, Variant};

use crate::engine::{Pipeline, Stage};
use std::path::Path;

/// The stages that prepare the embedded benchmark's models; a pipeline holds each only while a stage reads it.
pub const DEMO_STAGES: [&str; 2] = [models::DEMO_CLIP.0, models::DEMO_MLLM.0];

fn stages_reading(stages: &[Box<dyn Stage>], name: &str) -> bool {
    stages.iter().any(|s| s.inputs().iter().any(|i| i.stage == name))
}

/// Every stage of the pipeline, with params from `<dir>/<stage>.toml` over the defaults in code.
pub fn pipeline(dir: &Path) -> anyhow::Result<Pipeline> {
    pipeline_with(&StageConfigs::new(dir))
}

/// The pipeline with params from `configs` (a sweep variant's overrides included).
pub fn pipeline_with(c: &StageConfigs) -> anyhow::Result<Pipeline> {
    let session = crate::encoders::runtime::SessionOptions::default();
    let (features, score): (features::FeaturesParams, score::ScoreParams) = (c.params("features")?, c.params("score")?);
    let (generate, sft, ppo, eval): (generate::GenerateParams, sft::SftStageParams, ppo::PpoStageParams, eval::EvalParams) =
        (c.params("generate")?, c.params("sft")?, c.params("ppo")?, c.params("eval")?);
    let dpo: dpo::DpoStageParams = c.params("dpo")?;
    // What the stages share must be one value (stages/project.toml sets it once; a stage file may not split it).
    let m = |model: &Option<std::path::PathBuf>| models::describe(model);
    project::check_agreement(
        "model",
        &[
            ("generate", m(&generate.model)),
            ("sft", m(&sft.model)),
            ("ppo", m(&ppo.model)),
            ("eval", m(&eval.model)),
            ("dpo", m(&dpo.model)),
        ],
    )?;
    project::check_agreement("clip", &[("features", m(&features.clip)), ("score", m(&score.clip)), ("ppo", m(&ppo.clip))])?;
    let pr = |model: &Option<std::path::PathBuf>, p: &Option<String>| {
        models::prompt(model, p).map(|p| format!("{p:?}")).unwrap_or_else(|| "the model's chat template".into())
    };
    project::check_agreement(
        "prompt",
        &[
            ("generate", pr(&generate.model, &generate.prompt)),
            ("sft", pr(&sft.model, &sft.prompt)),
            ("ppo", pr(&ppo.model, &ppo.prompt)),
            ("eval", pr(&eval.model, &eval.prompt)),
            ("dpo", pr(&dpo.model, &dpo.prompt)),
        ],
    )?;
    let mut stages: Vec<Box<dyn Stage>> = vec![
        Box::new(dataset::DatasetStage { params: c.params("dataset")? }),
        Box::new(demo_clip::DemoClipStage { params: c.params("demo_clip")? }),
        Box::new(features::FeaturesStage { params: features, session: session.clone() }),
        Box::new(demo_mllm::DemoMllmStage { params: c.params("demo_mllm")? }),
        Box::new(generate::GenerateStage { params: generate }),
        Box::new(score::ScoreStage { params: score, session: session.clone() }),
        Box::new(bin::BinStage { params: c.params("bin")? }),
        Box::new(map::MapStage { params: c.params("map")? }),
        Box::new(sft::SftStage { params: sft }),
    ];
    // rollout_k and update_k for each of the K iterations, then `ppo`, which gathers them.
    stages.extend(ppo::stages(ppo));
    // The Conf-CSR baseline's preference data and DPO (kept below only when eval evaluates its policy).
    stages.push(Box::new(csr_pairs::CsrPairsStage { params: c.params("csr_pairs")? }));
    stages.push(Box::new(dpo::DpoStage { params: dpo }));
    // eval_chains (the judged chains, item by item), then eval (the metrics from their rows).
    stages.extend(eval::stages(eval));
    stages.push(Box::new(report::ReportStage { params: c.params("report")? }));
    // A stage only a baseline reads is part of the pipeline only when something reads it, so the main
    // run neither runs nor lists it (dpo first: csr_pairs is read by dpo alone).
    for only_read in ["dpo", "csr_pairs"] {
        if !stages_reading(&stages, only_read) {
            stages.retain(|s| s.name() != only_read);
        }
    }
    // The demo models are prepared only for the stages that read them: a project that names its own
    // MLLM and CLIP (stages/project.toml) has no demo stage to run.
    let read: Vec<&str> = DEMO_STAGES.into_iter().filter(|d| stages_reading(&stages, d)).collect();
    stages.retain(|s| !DEMO_STAGES.contains(&s.name()) || read.contains(&s.name()));
    Ok(Pipeline::new(stages)?)
}
