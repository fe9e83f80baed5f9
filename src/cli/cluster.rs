//! Running stages on a Slurm cluster: the executor of `mmb run --executor`, the task command the array
//! jobs run, and the job lines of `mmb status`.
use crate::engine::executor::{job_report, run_task, ExecutorFile, ExecutorKind, Executors};
use crate::engine::StageStatus;
use crate::store::Store;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct ShardTaskArgs {
    /// The task file the engine wrote (`work/<stage>-<key>/slurm/task.json`).
    pub task: PathBuf,
    /// The shard to run (default: `$SLURM_ARRAY_TASK_ID`).
    #[arg(long)]
    pub index: Option<usize>,
    /// The preset the submitting run used.
    #[arg(long)]
    pub preset: Option<String>,
    /// The `--set`s the submitting run used.
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub set: Vec<crate::stages::settings::Setting>,
}

/// `<stages>/executor.toml` with `--executor` over its default; None when everything runs here.
pub fn executors(
    store: &Path,
    stages: &Path,
    kind: Option<ExecutorKind>,
    preset: Option<&str>,
    set: &[crate::stages::settings::Setting],
) -> anyhow::Result<Option<Arc<Executors>>> {
    let mut file = ExecutorFile::load(stages)?;
    if let Some(k) = kind {
        file.executor = k;
    }
    let any_slurm = file.executor == ExecutorKind::Slurm || file.stage.values().any(|s| s.executor == Some(ExecutorKind::Slurm));
    if !any_slurm {
        return Ok(None);
    }
    // The tasks run on other machines: absolute paths (on the shared filesystem) only.
    let exe = std::env::current_exe()?;
    let mut task_command = vec![
        exe.to_string_lossy().into_owned(),
        "--store".into(),
        std::path::absolute(store)?.to_string_lossy().into_owned(),
        "--stages".into(),
        std::path::absolute(stages)?.to_string_lossy().into_owned(),
        "shard-task".into(),
    ];
    if let Some(p) = preset {
        task_command.extend(["--preset".into(), p.into()]);
    }
    for s in set {
        task_command.extend(["--set".into(), s.to_string()]);
    }
    Ok(Some(Arc::new(Executors { file, task_command })))
}

pub fn shard_task(store: &Path, stages: &Path, a: ShardTaskArgs) -> anyhow::Result<ExitCode> {
    let (configs, _) = crate::stages::settings::run_configs(stages, a.preset.as_deref(), &a.set)?;
    let pipeline = crate::stages::pipeline_with(&configs)?;
    let job: serde_json::Value = serde_json::from_slice(&std::fs::read(&a.task).map_err(|e| anyhow::anyhow!("{}: {e}", a.task.display()))?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.task.display()))?;
    let name = job["job"]["stage"].as_str().ok_or_else(|| anyhow::anyhow!("{}: no job.stage", a.task.display()))?;
    // This node must have what the stage asks for (the submitting machine left it to this one).
    crate::stages::device::check_machine(&configs, &[name], |_| false, &crate::stages::device::Machine::this())?;
    let store = Store::open(store)?;
    let manifest = run_task(pipeline.get(name)?, &store, &a.task, a.index)?;
    eprintln!("wrote {}", manifest.display());
    Ok(ExitCode::SUCCESS)
}

/// `Slurm job 12: 3 COMPLETED, 1 FAILED; 3/4 shard(s) done` for a stale stage with a submitted job.
pub fn job_line(store: &Store, stages: &Path, st: &StageStatus) -> Option<String> {
    let key = st.key.as_deref()?;
    let wrap = ExecutorFile::load(stages).map(|f| f.settings_of(&st.stage).wrap).unwrap_or_default();
    match job_report(store, &st.stage, key, &wrap) {
        Ok(Some(r)) => Some(r.summary()),
        Ok(None) => None,
        Err(e) => Some(format!("Slurm: {}", crate::runtime::error_chain(e.as_ref()))),
    }
}
