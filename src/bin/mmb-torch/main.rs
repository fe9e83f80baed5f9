//! `mmb-torch`: the worker that runs the stages needing libtorch (the MLLM), so that `mmb` itself never
//! loads libtorch. `mmb` hands it a job file (stage, params, input ids, store) and reads back the ids of
//! what it wrote; see `src/stages/worker.rs`. The stages' work is the `jobs` library (src/jobs/), which
//! this binary compiles as a module (that package depends on this one, so this one cannot depend on it).
#[path = "../../jobs/lib.rs"]
mod jobs;

use indicatif::MultiProgress;
use mmboundary::stages::worker::read_job;
use std::path::Path;
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
    let out = jobs::run_job(&read_job(Path::new(job))?, &MultiProgress::new())?;
    mmboundary::store::write_atomic(Path::new(result), &serde_json::to_vec(&out)?)?;
    Ok(())
}
