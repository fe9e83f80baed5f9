//! The jobs of the `mmb-torch` worker: the stages that need libtorch (the MLLM), one module each, and
//! [`run_job`], which runs a job file's stage. `mmb` hands the worker a job (stage, params, input ids,
//! store; `mmboundary::stages::worker`) and reads back the ids of what it wrote.
//!
//! Modules, each using only those above it in this list:
//! - `error`: [`JobError`], the one error type of the jobs (the binary turns it into its `anyhow` report);
//! - `inputs`: what the model stages share (image inputs per family, prompts, trainer params);
//! - `policy`: loading a policy (base model plus an SFT or PPO checkpoint) and the stage's device;
//! - `generate`, `sft`, `dpo`, `demo_mllm`, `ppo` (rollouts, updates, gather), `eval`: one stage each;
//! - `bench_vlm`: one round of the LLaVA-NeXT / Qwen2-VL speed benchmark (`mmb-torch bench-vlm`).
//!
//! These files are compiled twice: as this library (package `mmboundary-jobs`, where their tests run
//! in-process) and as the worker binary's `jobs` module (src/bin/mmb-torch/main.rs), because the binary
//! belongs to the `mmboundary` package, which this one depends on. Paths between modules are therefore
//! relative (`super::`), never `crate::`.
pub mod bench_vlm;
pub mod demo_mllm;
pub mod dpo;
pub mod error;
pub mod eval;
pub mod generate;
pub mod inputs;
pub mod policy;
pub mod ppo;
pub mod sft;

use indicatif::MultiProgress;
use mmboundary::engine::{StageContext, WorkerJob};
use mmboundary::stages::worker::WorkerResult;
use mmboundary::store::Store;

pub use error::{JobError, Result};

/// Runs one stage of a worker job in `ctx` (the stage is `ctx.stage()`).
pub fn run_stage(ctx: &StageContext) -> Result<()> {
    match ctx.stage() {
        "generate" => generate::run(ctx),
        "sft" => sft::run(ctx),
        "dpo" => dpo::run(ctx),
        "demo_mllm" => demo_mllm::run(ctx),
        "ppo" => ppo::gather(ctx),
        "eval_chains" => eval::run(ctx),
        s if s.starts_with("rollout_") => ppo::rollout(ctx),
        s if s.starts_with("update_") => ppo::update(ctx),
        other => Err(JobError::UnknownStage(other.into())),
    }
}

/// Runs a job in its store and says what it wrote (the ids the worker reports back).
pub fn run_job(job: &WorkerJob, progress: &MultiProgress) -> Result<WorkerResult> {
    let store = Store::open(&job.store).map_err(JobError::step(format!("the job's store {}", job.store.display())))?;
    let ctx = StageContext::from_job(&store, job, progress);
    run_stage(&ctx)?;
    Ok(WorkerResult { outputs: ctx.written() })
}
