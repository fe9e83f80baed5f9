//! `mmb-torch`: the worker that runs the stages needing libtorch (the MLLM), so that `mmb` itself never
//! loads libtorch. `mmb` hands it a job file (stage, params, input ids, store) and reads back the ids of
//! what it wrote; see `src/stages/worker.rs`.
mod demo_mllm;
mod eval;
mod generate;
mod inputs;
mod policy;
mod ppo;
mod sft;

use indicatif::MultiProgress;
use mmboundary::engine::StageContext;
use mmboundary::stages::worker::{read_job, WorkerResult};
use mmboundary::store::Store;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", mmboundary::runtime::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let [_, cmd, job, result] = args else {
        anyhow::bail!("usage: mmb-torch job JOB.json RESULT.json (started by `mmb run`, not by hand)");
    };
    anyhow::ensure!(cmd == "job", "unknown command `{cmd}` (expected `job`)");
    let job = read_job(std::path::Path::new(job))?;
    let store = Store::open(&job.store)?;
    let progress = MultiProgress::new();
    let ctx = StageContext::from_job(&store, &job, &progress);
    match job.stage.as_str() {
        "generate" => generate::run(&ctx)?,
        "sft" => sft::run(&ctx)?,
        "demo_mllm" => demo_mllm::run(&ctx)?,
        "ppo" => ppo::gather(&ctx)?,
        "eval_chains" => eval::run(&ctx)?,
        s if s.starts_with("rollout_") => ppo::rollout(&ctx)?,
        s if s.starts_with("update_") => ppo::update(&ctx)?,
        other => anyhow::bail!("mmb-torch has no stage `{other}`"),
    }
    let out = WorkerResult { outputs: ctx.written() };
    mmboundary::store::write_atomic(std::path::Path::new(result), &serde_json::to_vec(&out)?)?;
    Ok(())
}
