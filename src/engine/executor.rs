//! Where a stage runs: `local` (in this process, or its `mmb-torch` worker, as always) or `slurm`.
//!
//! Under `slurm`, a map stage (one that declares a [`ShardSpec`]) runs as one array job of N tasks; task i
//! runs the unchanged stage code on shard i of its item list and writes content-hashed parts plus a
//! manifest. The engine waits for the array, checks every manifest and every part's hash, and merges the
//! parts into the artifact a local run writes. A missing or failed shard is reported with its log, and
//! the next `mmb run` resubmits only the missing shards. Any other stage (training: `sft`, `update_k`)
//! runs as a single job. Configuration: `stages/executor.toml` (see [`ExecutorFile`]).
use super::context::{work_dir_path, StageContext, WorkerJob};
use super::key::cache_key;
use super::lockfile::OutputRecord;
use super::shard::{merge_parts, read_parts, shard_view, view_lineage, ShardManifest, ShardSpec};
use super::slurm::{array_spec, SlurmClient, TaskState};
use super::stage::Stage;
use crate::store::{write_atomic, ArtifactId, ArtifactKind, Lineage, Store};
use indicatif::{MultiProgress, ProgressDrawTarget};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    #[default]
    Local,
    Slurm,
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "slurm" => Ok(Self::Slurm),
            _ => Err(format!("unknown executor `{s}` (known: local, slurm)")),
        }
    }
}

/// Slurm settings: `[slurm]` for every stage, `[stage.<name>]` to override them for one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// `--gpus-per-task` (0: none, e.g. to override `[slurm]` for a CPU stage).
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: Option<u32>,
    /// `--time`, e.g. `04:00:00`.
    pub time: Option<String>,
    /// Shards of a map stage (array tasks). More, smaller shards than GPUs blunt stragglers.
    pub shards: usize,
    /// At most this many tasks of an array at once (`--array=…%K`).
    pub throttle: Option<usize>,
    /// Further `sbatch` options, e.g. `["--mem=64G", "--constraint=a100"]`.
    pub extra: Vec<String>,
    /// How often the engine asks Slurm about its jobs.
    pub poll_seconds: f64,
    /// The `mmb` the tasks run (default: the running one; the path must be valid on the compute nodes).
    pub program: Option<PathBuf>,
    /// Command prefix for Slurm's clients (`MMB_SLURM_WRAP` overrides it).
    pub wrap: Vec<String>,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        Self {
            partition: None,
            account: None,
            gpus_per_task: None,
            cpus_per_task: None,
            time: None,
            shards: 4,
            throttle: None,
            extra: Vec::new(),
            poll_seconds: 2.0,
            program: None,
            wrap: Vec::new(),
        }
    }
}

/// One stage's choice: `executor` and any Slurm setting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageExecutor {
    pub executor: Option<ExecutorKind>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: Option<u32>,
    pub time: Option<String>,
    pub shards: Option<usize>,
    pub throttle: Option<usize>,
    pub extra: Option<Vec<String>>,
}

/// `stages/executor.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorFile {
    /// The executor of every stage without its own choice.
    pub executor: ExecutorKind,
    pub slurm: SlurmSettings,
    pub stage: BTreeMap<String, StageExecutor>,
}

impl ExecutorFile {
    pub const NAME: &'static str = "executor.toml";

    /// `<dir>/executor.toml`, or all-local when there is none; unknown keys are errors naming the file.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(Self::NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let f: Self = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                anyhow::ensure!(f.slurm.shards >= 1, "{}: slurm.shards must be at least 1", path.display());
                for (name, s) in &f.stage {
                    anyhow::ensure!(s.shards != Some(0), "{}: stage.{name}.shards must be at least 1", path.display());
                }
                Ok(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        }
    }

    pub fn kind_of(&self, stage: &str) -> ExecutorKind {
        self.stage.get(stage).and_then(|s| s.executor).unwrap_or(self.executor)
    }

    /// The Slurm settings of one stage (its overrides over `[slurm]`).
    pub fn settings_of(&self, stage: &str) -> SlurmSettings {
        let mut s = self.slurm.clone();
        if let Some(o) = self.stage.get(stage) {
            macro_rules! over {
                ($($f:ident),*) => { $( if o.$f.is_some() { s.$f = o.$f.clone(); } )* };
            }
            over!(partition, account, gpus_per_task, cpus_per_task, time, throttle);
            if let Some(n) = o.shards {
                s.shards = n;
            }
            if let Some(e) = &o.extra {
                s.extra = e.clone();
            }
        }
        s
    }
}

/// The executor of a run: the file's choices and the command an array task runs (`<command…> JOB_FILE`;
/// for `mmb`: `mmb --store S --stages D shard-task`).
#[derive(Debug, Clone, Default)]
pub struct Executors {
    pub file: ExecutorFile,
    pub task_command: Vec<String>,
}

/// Runs a stage where its executor says.
pub(crate) fn execute(stage: &dyn Stage, ctx: &StageContext, exec: Option<&Executors>) -> anyhow::Result<()> {
    match exec {
        Some(e) if e.file.kind_of(stage.name()) == ExecutorKind::Slurm => run_on_slurm(stage, ctx, e),
        _ => stage.run(ctx),
    }
}

/// What an array task reads: the stage's job and how it is sharded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskFile {
    pub job: WorkerJob,
    pub shard: Option<ShardSpec>,
    pub of: usize,
    /// The shards that hold items (only these get a task).
    pub tasks: Vec<usize>,
    /// Where the manifests go.
    pub manifests: PathBuf,
}

/// One submission of a stage to Slurm (`submissions.json` keeps them all, newest last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job: String,
    /// The array indexes submitted (empty: a single job).
    pub indexes: Vec<usize>,
    /// The number of shards the items were split into.
    #[serde(default)]
    pub of: usize,
    pub submitted: String,
}

/// The folder where a stage run's Slurm files live: `work/<stage>-<key16>/slurm`.
pub fn slurm_dir(store_root: &Path, stage: &str, key: &str) -> PathBuf {
    work_dir_path(store_root, stage, key).join("slurm")
}

pub fn load_submissions(dir: &Path) -> Vec<Submission> {
    std::fs::read(dir.join("submissions.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn run_on_slurm(stage: &dyn Stage, ctx: &StageContext, exec: &Executors) -> anyhow::Result<()> {
    let name = stage.name();
    let key = ctx.cache_key().to_string();
    let settings = exec.file.settings_of(name);
    let client = SlurmClient::new(&settings.wrap);
    // Tasks run elsewhere: every path they see is absolute (on the shared filesystem).
    let root = std::path::absolute(ctx.store().root()).map_err(|e| anyhow::anyhow!("{}: {e}", ctx.store().root().display()))?;
    let dir = slurm_dir(&root, name, &key);
    let manifests = dir.join("manifests");
    let logs = dir.join("logs");
    for d in [&manifests, &logs] {
        std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
    }
    let spec = stage.shard();
    let of = if spec.is_some() { settings.shards } else { 1 };
    // The item list's keys, in order (the merge's row order); shards that hold no item get no task.
    let order = match &spec {
        Some(spec) => {
            let full = stage.shard_items(&ctx.input_table(&spec.input)?.concat()?)?;
            Some(super::shard::key_column(&full, spec.input_key(), &format!("stage `{name}`: input `{}`", spec.input))?)
        }
        None => None,
    };
    let indexes: Vec<Option<usize>> = match &order {
        Some(keys) => {
            let used: std::collections::BTreeSet<usize> = keys.iter().map(|k| super::shard::shard_of(k, of)).collect();
            used.into_iter().map(Some).collect()
        }
        None => vec![None],
    };
    if indexes.is_empty() {
        // No items: nothing to spread; the stage writes its (empty) outputs here.
        return stage.run(ctx);
    }

    let mut job = ctx.to_job();
    job.store = root.clone();
    let tasks: Vec<usize> = indexes.iter().flatten().copied().collect();
    let task = TaskFile { job, shard: spec.clone(), of, tasks, manifests: manifests.clone() };
    let task_path = dir.join("task.json");
    write_atomic(&task_path, &serde_json::to_vec_pretty(&task)?)?;
    let mut command = exec.task_command.clone();
    if let Some(p) = &settings.program {
        anyhow::ensure!(!command.is_empty(), "no task command to put {} in", p.display());
        command[0] = p.to_string_lossy().into_owned();
    }
    anyhow::ensure!(!command.is_empty(), "stage `{name}`: no command for the Slurm tasks");
    command.push(task_path.to_string_lossy().into_owned());
    let script = dir.join("task.sh");
    let body = format!(
        "#!/bin/sh\n# Written by mmb: one Slurm task of stage `{name}` (cache key {key}).\nexec {}\n",
        command.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    );
    write_atomic(&script, body.as_bytes())?;

    // Which shards have no valid manifest (and why); the verified manifests of the others.
    let mut ms: BTreeMap<Option<usize>, ShardManifest> = BTreeMap::new();
    let mut missing = |why: &mut BTreeMap<usize, String>| -> Vec<Option<usize>> {
        let mut out = Vec::new();
        for &i in &indexes {
            if ms.contains_key(&i) {
                continue;
            }
            match ShardManifest::load_verified(&manifests, i, of, &key, ctx.store()) {
                Ok(m) => {
                    ms.insert(i, m);
                }
                Err(e) => {
                    why.insert(i.unwrap_or(0), e);
                    out.push(i);
                }
            }
        }
        out
    };
    let mut why = BTreeMap::new();
    let mut todo = missing(&mut why);
    let mut submitted_now = false;
    let mut last_states: Vec<TaskState> = Vec::new();
    let mut last_job: Option<String> = None;
    while !todo.is_empty() {
        // A job of an earlier `mmb run` may still be working on these shards: wait for it instead of
        // submitting them twice.
        let previous = load_submissions(&dir).last().cloned();
        let mut job = None;
        if let Some(prev) = previous.as_ref().filter(|p| p.of == of) {
            if let Some(states) = client.tasks(&prev.job)? {
                if states.iter().any(|t| t.is_active()) {
                    job = Some(prev.job.clone());
                }
            }
        }
        let job = match job {
            Some(j) => j,
            None if submitted_now => break,
            None => {
                // A job that ended since we looked may have written manifests meanwhile.
                why.clear();
                todo = missing(&mut why);
                if todo.is_empty() {
                    break;
                }
                let idx: Vec<usize> = todo.iter().flatten().copied().collect();
                let cwd = std::env::current_dir().map_err(|e| anyhow::anyhow!("the current folder: {e}"))?;
                let args = sbatch_args(&settings, name, &key, &cwd, &logs, spec.as_ref().map(|_| idx.as_slice()));
                let j = client.submit(&args, &script).map_err(|e| submit_error(name, &settings, e))?;
                let mut subs = load_submissions(&dir);
                subs.push(Submission { job: j.clone(), indexes: idx, of, submitted: Lineage::now() });
                write_atomic(&dir.join("submissions.json"), &serde_json::to_vec_pretty(&subs)?)?;
                tracing::info!(stage = name, job = %j, tasks = todo.len(), "submitted to Slurm");
                eprintln!("{name}: Slurm job {j} ({} of {of} shard(s)); logs in {}", todo.len(), logs.display());
                submitted_now = true;
                j
            }
        };
        last_states = wait(&client, &job, Duration::from_secs_f64(settings.poll_seconds.max(0.05)))?;
        last_job = Some(job);
        why.clear();
        todo = missing(&mut why);
        if !submitted_now && !todo.is_empty() {
            // We only waited for an earlier run's job; submit what it left missing.
            continue;
        }
        break;
    }
    if !todo.is_empty() {
        anyhow::bail!(report_missing(name, &todo, &why, &last_states, last_job.as_deref(), &logs, (indexes.len(), of), settings.throttle));
    }
    // Every manifest is there and every part verified: merge (or adopt a single job's outputs).
    drop(missing);
    let ms: Vec<ShardManifest> = ms.into_values().collect();
    match &spec {
        None => {
            for (out, o) in &ms[0].outputs {
                ctx.adopt(out, &ArtifactId::parse(&o.id)?, o.kind)?;
            }
        }
        Some(spec) => {
            let started = Instant::now();
            let order = order.as_deref().expect("a sharded stage has its item order");
            for out in stage.outputs() {
                let parts = read_parts(ctx.store(), &ms, &out)?;
                let hf = parts[0].hf_features.clone();
                let (schema, batch) = merge_parts(&parts, &spec.key, order)?;
                ctx.write_table(&out, schema, &[batch], hf.as_ref())?;
            }
            tracing::info!(stage = name, shards = of, seconds = started.elapsed().as_secs_f64(), "merged");
        }
    }
    Ok(())
}

/// A refused submission, said in the executor's terms where Slurm's own words are obscure: a cluster
/// (or partition) without GPUs answers `--gpus-per-task` with "Invalid generic resource (gres)".
fn submit_error(stage: &str, s: &SlurmSettings, e: anyhow::Error) -> anyhow::Error {
    let msg = format!("{e:#}");
    match s.gpus_per_task.filter(|&g| g > 0) {
        Some(g) if msg.contains("generic resource") || msg.contains("gres") => anyhow::anyhow!(
            "Slurm refused {g} GPU(s) per task: the {} has no nodes with GPUs (`Gres=gpu:…`) to give; \
             set `gpus_per_task = 0` under [stage.{stage}] in stages/executor.toml to run it on CPUs, or name a GPU \
             partition. Slurm said: {msg}",
            s.partition.as_deref().map(|p| format!("partition `{p}`")).unwrap_or_else(|| "default partition".into())
        ),
        _ => e,
    }
}

/// The `sbatch` options of one submission (the script comes last, from [`SlurmClient::submit`]).
pub fn sbatch_args(s: &SlurmSettings, stage: &str, key: &str, cwd: &Path, logs: &Path, array: Option<&[usize]>) -> Vec<String> {
    let mut args = vec![
        format!("--job-name=mmb-{stage}"),
        // The submitting folder: stage params and model paths relative to it mean the same in the task.
        format!("--chdir={}", cwd.display()),
        format!("--comment=mmb {stage} {}", &key[..16.min(key.len())]),
    ];
    match array {
        Some(idx) => {
            args.push(format!("--array={}", array_spec(idx, s.throttle)));
            args.push(format!("--output={}/%A_%a.out", logs.display()));
        }
        None => args.push(format!("--output={}/%j.out", logs.display())),
    }
    if let Some(p) = &s.partition {
        args.push(format!("--partition={p}"));
    }
    if let Some(a) = &s.account {
        args.push(format!("--account={a}"));
    }
    if let Some(g) = s.gpus_per_task.filter(|&g| g > 0) {
        args.push("--ntasks=1".into());
        args.push(format!("--gpus-per-task={g}"));
    }
    if let Some(c) = s.cpus_per_task {
        args.push(format!("--cpus-per-task={c}"));
    }
    if let Some(t) = &s.time {
        args.push(format!("--time={t}"));
    }
    args.extend(s.extra.iter().cloned());
    args
}

/// Polls until no task of the job is queued or running (a held task counts as finished: it would never
/// run by itself). Returns the last states seen (empty when Slurm forgot the job).
/// A controller that does not answer (restarting, overloaded) is asked again, up to 10 times in a row.
fn wait(client: &SlurmClient, job: &str, poll: Duration) -> anyhow::Result<Vec<TaskState>> {
    let mut failures = 0;
    loop {
        match client.tasks(job) {
            Ok(None) => return Ok(Vec::new()),
            Ok(Some(states)) => {
                failures = 0;
                if !states.iter().any(|t| t.is_active()) {
                    return Ok(states);
                }
            }
            Err(e) if failures < 10 => {
                failures += 1;
                tracing::warn!(job, error = %e, "Slurm did not answer; asking again");
            }
            Err(e) => {
                return Err(e.context(format!(
                    "Slurm job {job}: gave up asking after 10 failures (the tasks may still run; `mmb run` again waits for them)"
                )))
            }
        }
        std::thread::sleep(poll);
    }
}

#[allow(clippy::too_many_arguments)]
fn report_missing(
    stage: &str,
    todo: &[Option<usize>],
    why: &BTreeMap<usize, String>,
    states: &[TaskState],
    job: Option<&str>,
    logs: &Path,
    (total, of): (usize, usize),
    throttle: Option<usize>,
) -> String {
    let mut lines = Vec::new();
    for i in todo {
        let idx = i.unwrap_or(0);
        let st = states.iter().find(|t| match i {
            Some(i) => t.indexes.contains(i),
            None => t.indexes.is_empty(),
        });
        let state = st.map(|t| t.describe()).unwrap_or_else(|| "state unknown to Slurm".into());
        let log = match (st, job) {
            (Some(t), _) if !t.stdout.is_empty() && !t.stdout.contains('%') => t.stdout.clone(),
            (_, Some(j)) => match i {
                Some(i) => format!("{}/{j}_{i}.out", logs.display()),
                None => format!("{}/{j}.out", logs.display()),
            },
            _ => logs.display().to_string(),
        };
        let which = match i {
            Some(i) => format!("shard {i} of {of}"),
            None => "the job".to_string(),
        };
        lines.push(format!("  {which}: {state} ({}); log: {log}", why.get(&idx).map(String::as_str).unwrap_or("no manifest")));
    }
    let again = if todo.iter().all(|i| i.is_some()) {
        let idx: Vec<usize> = todo.iter().flatten().copied().collect();
        format!("resubmits only these shards (--array={})", array_spec(&idx, throttle))
    } else {
        "submits the job again".to_string()
    };
    format!(
        "{} of {} Slurm task(s) of stage `{stage}` (job {}) did not finish; nothing was merged:\n{}\n`mmb run` again {again}",
        todo.len(),
        total,
        job.unwrap_or("?"),
        lines.join("\n")
    )
}

/// The task side (`mmb shard-task TASK_FILE`): runs `stage` on shard `index` (default
/// `$SLURM_ARRAY_TASK_ID`; the whole stage when it is not sharded) and writes its parts and manifest.
pub fn run_task(stage: &dyn Stage, store: &Store, task_file: &Path, index: Option<usize>) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    let task: TaskFile = serde_json::from_slice(&std::fs::read(task_file).map_err(|e| anyhow::anyhow!("{}: {e}", task_file.display()))?)
        .map_err(|e| anyhow::anyhow!("{}: not a task file: {e}", task_file.display()))?;
    let job = &task.job;
    anyhow::ensure!(stage.name() == job.stage, "{}: a task of stage `{}`, given stage `{}`", task_file.display(), job.stage, stage.name());
    // The stage built here must be the one the engine keyed: same code, params, inputs, models, device.
    let inputs: BTreeMap<String, String> = job.inputs.iter().map(|(k, (id, _))| (k.clone(), id.to_string())).collect();
    let key = cache_key(stage.name(), stage.code_version(), &stage.params(), &inputs, &job.lineage.models, &stage.device());
    anyhow::ensure!(
        key == job.lineage.cache_key,
        "stage `{}`: its code or params here differ from the run that submitted this task (key {} vs {}); \
         do not edit the stage files while its Slurm jobs run",
        stage.name(),
        &key[..12],
        &job.lineage.cache_key[..12]
    );
    let index = match (&task.shard, index) {
        (None, _) => None,
        (Some(_), Some(i)) => Some(i),
        (Some(_), None) => Some(
            std::env::var("SLURM_ARRAY_TASK_ID")
                .map_err(|_| anyhow::anyhow!("stage `{}` is sharded: give the shard index (or run as a Slurm array task)", stage.name()))?
                .parse::<usize>()
                .map_err(|e| anyhow::anyhow!("SLURM_ARRAY_TASK_ID: {e}"))?,
        ),
    };
    let mut inputs = job.inputs.clone();
    let mut lineage = job.lineage.clone();
    let (mut view, mut items) = (None, None);
    if let (Some(spec), Some(i)) = (&task.shard, index) {
        anyhow::ensure!(i < task.of, "shard {i} of {}: no such shard", task.of);
        let (full_id, _) = inputs
            .get(&spec.input)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("stage `{}` has no input `{}` to shard", job.stage, spec.input))?;
        let full = store.read_table(&full_id)?;
        let what = format!("input `{}` ({})", spec.input, full.path.display());
        let batch = shard_view(&stage.shard_items(&full.concat()?)?, spec.input_key(), i, task.of, &what)?;
        let vl = view_lineage(&job.lineage, spec, &full_id, i, task.of);
        let id = store.put_table(batch.schema(), &[batch.clone()], &vl, full.hf_features.as_ref())?;
        lineage.inputs.insert(spec.input.clone(), id.to_string());
        inputs.insert(spec.input.clone(), (id.clone(), ArtifactKind::Parquet));
        view = Some(id.to_string());
        items = Some(batch.num_rows() as u64);
    }
    let progress = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
    let ctx = StageContext::new(store, &job.stage, job.params.clone(), inputs, job.outputs.clone(), lineage, &progress);
    stage.run(&ctx)?;
    let written = ctx.into_written();
    let mut outputs = BTreeMap::new();
    for d in &job.outputs {
        let (id, kind) =
            written.get(d).ok_or_else(|| anyhow::anyhow!("stage `{}` finished without writing its output `{d}`", job.stage))?;
        let bytes = std::fs::metadata(store.path_of(id, *kind)).map(|m| m.len()).unwrap_or(0);
        outputs.insert(d.clone(), OutputRecord { id: id.to_string(), kind: *kind, bytes });
    }
    let m = ShardManifest {
        stage: job.stage.clone(),
        cache_key: job.lineage.cache_key.clone(),
        index,
        of: task.of,
        view,
        items,
        outputs,
        job: std::env::var("SLURM_JOB_ID").ok(),
        seconds: started.elapsed().as_secs_f64(),
    };
    m.save(&task.manifests)
}

/// For `mmb status`: the newest Slurm job of a stage run, its tasks' states, and which shards are done.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub submission: Submission,
    /// None: Slurm no longer knows the job.
    pub states: Option<Vec<TaskState>>,
    pub done: usize,
    pub of: usize,
}

pub fn job_report(store: &Store, stage: &str, key: &str, wrap: &[String]) -> anyhow::Result<Option<JobReport>> {
    let dir = slurm_dir(store.root(), stage, key);
    let Some(sub) = load_submissions(&dir).last().cloned() else { return Ok(None) };
    let task: Option<TaskFile> = std::fs::read(dir.join("task.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let idx: Vec<Option<usize>> = match &task {
        Some(t) if t.shard.is_some() => t.tasks.iter().copied().map(Some).collect(),
        _ => vec![None],
    };
    let of = idx.len();
    let manifests = dir.join("manifests");
    let done = idx.iter().filter(|&&i| manifests.join(ShardManifest::file_name(i)).exists()).count();
    let states = SlurmClient::new(wrap).tasks(&sub.job)?;
    Ok(Some(JobReport { submission: sub, states, done, of }))
}

impl JobReport {
    /// One line: `job 12: 2 COMPLETED, 1 RUNNING, 1 FAILED; 2/4 shards done`.
    pub fn summary(&self) -> String {
        let states = match &self.states {
            None => "no longer known to Slurm".to_string(),
            Some(ts) => {
                let mut count: BTreeMap<String, usize> = BTreeMap::new();
                for t in ts {
                    *count.entry(t.state.clone()).or_default() += t.indexes.len().max(1);
                }
                count.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ")
            }
        };
        format!("Slurm job {}: {states}; {}/{} shard(s) done", self.submission.job, self.done, self.of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_file_overrides_per_stage_and_names_the_file_on_a_typo() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(ExecutorFile::NAME),
            "executor = \"slurm\"\n[slurm]\npartition = \"gpu\"\nshards = 16\nthrottle = 4\nextra = [\"--mem=8G\"]\n\
             [stage.score]\nshards = 64\ngpus_per_task = 1\n[stage.bin]\nexecutor = \"local\"\n",
        )
        .unwrap();
        let f = ExecutorFile::load(dir.path()).unwrap();
        assert_eq!(f.kind_of("score"), ExecutorKind::Slurm);
        assert_eq!(f.kind_of("bin"), ExecutorKind::Local);
        let s = f.settings_of("score");
        assert_eq!((s.shards, s.throttle, s.gpus_per_task, s.partition.as_deref()), (64, Some(4), Some(1), Some("gpu")));
        assert_eq!(s.extra, vec!["--mem=8G".to_string()]);
        assert_eq!(f.settings_of("sft").shards, 16);

        std::fs::write(dir.path().join(ExecutorFile::NAME), "[slurm]\npartiton = \"gpu\"\n").unwrap();
        let e = ExecutorFile::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("executor.toml") && e.contains("partiton"), "{e}");
        // No file: everything local.
        assert_eq!(ExecutorFile::load(&dir.path().join("none")).unwrap(), ExecutorFile::default());
    }

    #[test]
    fn sbatch_options_follow_the_settings() {
        let s = SlurmSettings {
            partition: Some("gpu".into()),
            account: Some("proj".into()),
            gpus_per_task: Some(2),
            time: Some("01:00:00".into()),
            throttle: Some(3),
            extra: vec!["--mem=8G".into()],
            ..Default::default()
        };
        let a = sbatch_args(&s, "score", "0123456789abcdef0123", Path::new("/w"), Path::new("/l"), Some(&[0, 1, 2, 5]));
        assert_eq!(
            a,
            [
                "--job-name=mmb-score",
                "--chdir=/w",
                "--comment=mmb score 0123456789abcdef",
                "--array=0-2,5%3",
                "--output=/l/%A_%a.out",
                "--partition=gpu",
                "--account=proj",
                "--ntasks=1",
                "--gpus-per-task=2",
                "--time=01:00:00",
                "--mem=8G"
            ]
        );
        let single = sbatch_args(
            &SlurmSettings { gpus_per_task: Some(0), ..Default::default() },
            "sft",
            "k",
            Path::new("/w"),
            Path::new("/l"),
            None,
        );
        assert_eq!(single, ["--job-name=mmb-sft", "--chdir=/w", "--comment=mmb sft k", "--output=/l/%j.out"]);
    }

    #[test]
    fn the_shipped_and_the_readme_configurations_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let shipped = ExecutorFile::load(&root.join("stages")).unwrap();
        assert_eq!(
            (shipped.executor, shipped.kind_of("bin"), shipped.settings_of("score").shards),
            (ExecutorKind::Local, ExecutorKind::Local, 16)
        );
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let section = readme.split("## On a cluster (Slurm)").nth(1).expect("README has the Slurm section");
        let toml_block = section.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a TOML example");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ExecutorFile::NAME), toml_block).unwrap();
        let f = ExecutorFile::load(dir.path()).unwrap();
        assert_eq!((f.kind_of("score"), f.kind_of("bin")), (ExecutorKind::Slurm, ExecutorKind::Local));
        assert_eq!(f.settings_of("score").cpus_per_task, Some(8));
    }
}
