//! The tiny end-to-end pipeline of the stage tests (dataset → … → eval → report on the tiny LLaVA, the tiny
//! CLIP and MiniLM), shared by tests/rl_stages.rs and tests/remote.rs.
#![allow(dead_code)]
use super::fixtures;
use mmboundary::data::penumbra::PenumbraParams;
use mmboundary::engine::{Pipeline, Stage};
use mmboundary::stages::bin::{BinParams, BinStage};
use mmboundary::stages::csr_pairs::{CsrPairsParams, CsrPairsStage};
use mmboundary::stages::dataset::{DatasetParams, DatasetStage};
use mmboundary::stages::dpo::{DpoStage, DpoStageParams};
use mmboundary::stages::eval::EvalParams;
use mmboundary::stages::features::{FeaturesParams, FeaturesStage};
use mmboundary::stages::generate::{GenerateParams, GenerateStage};
use mmboundary::stages::map::{MapParams, MapStage};
use mmboundary::stages::ppo::PpoStageParams;
use mmboundary::stages::score::{ScoreParams, ScoreStage};
use mmboundary::stages::sft::{SftStage, SftStageParams};
use std::path::{Path, PathBuf};

pub fn pool_path() -> PathBuf {
    super::repo_root().join("stages/statements.toml")
}

pub fn ppo_params(model: &Path, alpha: f64) -> PpoStageParams {
    let mut p = PpoStageParams {
        model: Some(model.to_path_buf()),
        device: "cpu".into(),
        iterations: 2,
        prompts_per_iteration: 2,
        trainer: serde_json::json!({ "ppo_epochs": 1, "mini_batch_size": 3, "generation": { "max_new_tokens": 12 } }),
        minilm: mmboundary::encoders::minilm::default_model_dir(),
        clip: Some(fixtures().join("encoders/clip_tiny")),
        pool: pool_path(),
        ..Default::default()
    };
    p.rewards.alpha = alpha;
    p
}

pub fn pipeline(model: &Path, alpha: f64) -> Pipeline {
    pipeline_k(model, alpha, 2)
}

/// The pipeline with K = `iterations` PPO iterations.
pub fn pipeline_k(model: &Path, alpha: f64, iterations: usize) -> Pipeline {
    pipeline_full(model, PpoStageParams { iterations, ..ppo_params(model, alpha) }, eval_params(model))
}

/// The params of the tiny pipeline a baseline edits.
pub struct TinyParams {
    pub generate: GenerateParams,
    pub map: MapParams,
    pub ppo: PpoStageParams,
    pub eval: EvalParams,
    /// The Conf-CSR baseline's stages (in the pipeline only when eval evaluates the `dpo` policy).
    pub csr_pairs: CsrPairsParams,
    pub dpo: DpoStageParams,
    pub report: mmboundary::stages::report::ReportParams,
}

/// m = 2 sampled chains per question (temperature 0.7) from `generate`: the set-up of the baselines that
/// read several chains of a question (Conf-CSR, Multisample, SaySelf, Table 3).
pub fn sample_twice(p: &mut TinyParams) {
    p.generate.samples = 2;
    p.generate.temperature = 0.7;
}

fn csr_pairs_params() -> CsrPairsParams {
    CsrPairsParams { pool: pool_path(), ..Default::default() }
}

/// One DPO step without warm-up (a warm-up's first step has learning rate 0).
fn dpo_params(model: &Path) -> DpoStageParams {
    DpoStageParams {
        model: Some(model.to_path_buf()),
        trainer: serde_json::json!({ "epochs": 1, "batch_size": 2, "max_steps": 1, "learning_rate": 1e-3, "warmup_ratio": 0.0 }),
        device: "cpu".into(),
        ..Default::default()
    }
}

/// The default tiny pipeline with `edit` applied to its params (the baselines' variants).
pub fn pipeline_with(model: &Path, edit: impl FnOnce(&mut TinyParams)) -> Pipeline {
    let mut p = TinyParams {
        generate: generate_params(model),
        map: MapParams { pool: pool_path(), ..Default::default() },
        ppo: ppo_params(model, 1.0 / 3.0),
        eval: eval_params(model),
        csr_pairs: csr_pairs_params(),
        dpo: dpo_params(model),
        report: Default::default(),
    };
    edit(&mut p);
    pipeline_parts(model, p)
}

fn generate_params(model: &Path) -> GenerateParams {
    GenerateParams {
        model: Some(model.to_path_buf()),
        limit: Some(4),
        batch: 4,
        max_new_tokens: 12,
        device: "cpu".into(),
        ..Default::default()
    }
}

pub fn eval_params(model: &Path) -> EvalParams {
    EvalParams {
        model: Some(model.to_path_buf()),
        device: "cpu".into(),
        limit: Some(1),
        max_new_tokens: 12,
        batch: 4,
        minilm: mmboundary::encoders::minilm::default_model_dir(),
        pool: pool_path(),
        ..Default::default()
    }
}

fn pipeline_full(model: &Path, ppo: PpoStageParams, eval: EvalParams) -> Pipeline {
    let map = MapParams { pool: pool_path(), ..Default::default() };
    pipeline_parts(
        model,
        TinyParams {
            generate: generate_params(model),
            map,
            ppo,
            eval,
            csr_pairs: csr_pairs_params(),
            dpo: dpo_params(model),
            report: Default::default(),
        },
    )
}

fn pipeline_parts(model: &Path, p: TinyParams) -> Pipeline {
    let TinyParams { generate, map, ppo, eval, csr_pairs, dpo, report } = p;
    let with_dpo = eval.variants.iter().any(|v| v == mmboundary::stages::dpo::DPO_POLICY);
    let mut stages: Vec<Box<dyn Stage>> = vec![
        Box::new(DatasetStage {
            params: DatasetParams {
                penumbra: PenumbraParams { n_items: 16, image_size: 32, ..Default::default() },
                chunk: 8,
                ..Default::default()
            },
        }),
        Box::new(FeaturesStage {
            params: FeaturesParams { clip: Some(fixtures().join("encoders/clip_tiny")), batch: 8, merge: Some(1), ..Default::default() },
            session: Default::default(),
        }),
        Box::new(GenerateStage { params: generate }),
        Box::new(ScoreStage {
            params: ScoreParams {
                minilm: mmboundary::encoders::minilm::default_model_dir(),
                clip: Some(fixtures().join("encoders/clip_tiny")),
                ..Default::default()
            },
            session: Default::default(),
        }),
        Box::new(BinStage { params: BinParams::default() }),
        Box::new(MapStage { params: map }),
        Box::new(SftStage {
            params: SftStageParams {
                model: Some(model.to_path_buf()),
                trainer: serde_json::json!({ "epochs": 1, "batch_size": 2, "max_steps": 1, "learning_rate": 1e-3 }),
                device: "cpu".into(),
                ..Default::default()
            },
        }),
    ];
    stages.extend(mmboundary::stages::ppo::stages(ppo));
    if with_dpo {
        stages.push(Box::new(CsrPairsStage { params: csr_pairs }));
        stages.push(Box::new(DpoStage { params: dpo }));
    }
    stages.extend(mmboundary::stages::eval::stages(eval));
    stages.push(Box::new(mmboundary::stages::report::ReportStage { params: report }));
    Pipeline::new(stages).unwrap()
}
