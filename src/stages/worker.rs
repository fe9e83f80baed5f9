//! Stages that need libtorch run in the `mmb-torch` worker process, so that the `mmb` CLI never links
//! libtorch (~0.45 s of static initialization per process) and a crash or out-of-memory in a model
//! stays in its own process. The engine keys, caches and records these stages exactly like the others;
//! only `run` crosses the process boundary: the job goes out as JSON, the worker writes its outputs
//! into the same store (atomically, by hash), and reports their ids back.
use crate::engine::{StageContext, WorkerJob};
use crate::store::{ArtifactId, ArtifactKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What the worker reports back.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerResult {
    pub outputs: BTreeMap<String, (ArtifactId, ArtifactKind)>,
}

pub const WORKER_BIN: &str = "mmb-torch";

/// `$MMB_TORCH`, else `mmb-torch` beside the running executable (or one folder up, for test binaries
/// in target/*/deps).
pub fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MMB_TORCH") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for cand in [dir.join(WORKER_BIN), dir.parent().map(|d| d.join(WORKER_BIN)).unwrap_or_default()] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    anyhow::bail!(
        "this stage needs the `{WORKER_BIN}` worker, which was not found beside {} (build it with \
         `cargo build --release --workspace --bins`, or point MMB_TORCH at it)",
        exe.display()
    )
}

/// Runs the context's stage in the worker and adopts its outputs. The worker gets this thread's cap (its
/// share under `-j N`, see `runtime::with_share`) as `$MMB_THREADS`.
pub fn run_in_worker(ctx: &StageContext) -> anyhow::Result<()> {
    let bin = worker_binary()?;
    let dir = tempfile::tempdir()?;
    let job_path = dir.path().join("job.json");
    let result_path = dir.path().join("result.json");
    std::fs::write(&job_path, serde_json::to_vec(&ctx.to_job())?)?;
    let status = worker_command(&bin, &job_path, &result_path, crate::runtime::thread_cap())
        .status()
        .map_err(|e| anyhow::anyhow!("could not start {}: {e}", bin.display()))?;
    if !status.success() {
        anyhow::bail!("the {WORKER_BIN} worker failed for stage `{}` ({status}); its error is above", ctx.stage());
    }
    let result: WorkerResult = serde_json::from_slice(&std::fs::read(&result_path)?)
        .map_err(|e| anyhow::anyhow!("{}: unreadable worker result: {e}", result_path.display()))?;
    for (output, (id, kind)) in result.outputs {
        ctx.adopt(&output, &id, kind)?;
    }
    Ok(())
}

/// The worker's command line; with a share of the threads (stages side by side), `$MMB_THREADS` caps its
/// pools, so that two workers do not each take every core.
fn worker_command(bin: &Path, job: &Path, result: &Path, threads: Option<usize>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("job").arg(job).arg(result).stdin(Stdio::null());
    if let Some(n) = threads {
        cmd.env(crate::runtime::THREADS_ENV, n.to_string());
    }
    cmd
}

/// Reads a job file (worker side).
pub fn read_job(path: &std::path::Path) -> anyhow::Result<WorkerJob> {
    serde_json::from_slice(&std::fs::read(path)?).map_err(|e| anyhow::anyhow!("{}: not a worker job: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{OsStr, OsString};

    #[test]
    fn a_worker_beside_others_gets_its_share_of_the_threads() {
        let envs = |threads| {
            let cmd = worker_command(Path::new("mmb-torch"), Path::new("job.json"), Path::new("result.json"), threads);
            assert_eq!(cmd.get_args().collect::<Vec<_>>(), ["job", "job.json", "result.json"]);
            cmd.get_envs().map(|(k, v)| (k.to_owned(), v.map(OsStr::to_owned))).collect::<Vec<_>>()
        };
        assert_eq!(envs(Some(3)), [(OsString::from("MMB_THREADS"), Some(OsString::from("3")))]);
        assert!(envs(None).is_empty(), "alone, the worker keeps its runtimes' defaults");
    }
}
