use super::context::StageContext;
use super::error::EngineError;
use super::lockfile::{LockFile, OutputRecord, RunCache, StageRecord};
use super::pipeline::Pipeline;
use super::state::ModelHashes;
use super::status::{evaluate, produced_from_lock, Produced, StageStatus};
use crate::store::{Lineage, Store, StoreLock};
use indicatif::MultiProgress;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run only this stage and what it depends on (None: every stage).
    pub target: Option<String>,
    /// Independent stages run at once.
    pub jobs: usize,
    /// Stages to rerun even when up to date.
    pub force: Vec<String>,
    /// Record in the lock of this named variant (`locks/<name>.json`) instead of the main one.
    pub lock: Option<String>,
    /// Where stages run (None: all here; see [`super::executor`]).
    pub executor: Option<std::sync::Arc<super::executor::Executors>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { target: None, jobs: 1, force: Vec::new(), lock: None, executor: None }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Stages that ran, in completion order.
    pub ran: Vec<String>,
    /// Stages found up to date.
    pub fresh: Vec<String>,
    /// Stages whose key had run before: outputs taken from the run-cache, nothing ran.
    pub restored: Vec<String>,
    pub seconds: f64,
}

impl Pipeline {
    /// Each stage's status against the lock file, in pipeline order (no stage runs; no lock taken).
    pub fn status(&self, store: &Store, force: &[String]) -> Result<Vec<StageStatus>, EngineError> {
        self.status_named(store, force, None)
    }

    /// Status against a named variant's lock.
    pub fn status_named(&self, store: &Store, force: &[String], lock: Option<&str>) -> Result<Vec<StageStatus>, EngineError> {
        self.status_of(store, force, lock, &|_| true)
    }

    /// Status of the stages `only` keeps (with all their ancestors kept, as a target's are).
    fn status_of(
        &self,
        store: &Store,
        force: &[String],
        lock: Option<&str>,
        only: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<StageStatus>, EngineError> {
        let lock = LockFile::load_named(store.root(), lock)?;
        let produced = produced_from_lock(&lock)?;
        let models = ModelHashes::load(store.root());
        let mut stale = BTreeSet::new();
        let mut out = Vec::new();
        for s in self.ordered().filter(|s| only(s.name())) {
            let st = evaluate(s, &lock, &produced, &|u| stale.contains(u), &models, store, force.iter().any(|f| f == s.name()))?;
            if !st.is_fresh() {
                stale.insert(s.name().to_string());
            }
            out.push(st);
        }
        models.save()?;
        Ok(out)
    }

    /// The stages a run with `opts` would start, in pipeline order: those its target reaches that are not
    /// up to date in its lock (forced ones included; a stage after one that runs is not known fresh, so it
    /// counts). Nothing runs; what the up-front checks hold against this machine.
    pub fn to_run(&self, store: &Store, opts: &RunOptions) -> Result<Vec<String>, EngineError> {
        for f in &opts.force {
            self.get(f)?;
        }
        let selected: BTreeSet<String> = match &opts.target {
            Some(t) => self.ancestors_and_self(t)?,
            None => self.ordered().map(|s| s.name().to_string()).collect(),
        };
        // Only the reached stages are evaluated (another stage's model files need not exist).
        Ok(self
            .status_of(store, &opts.force, opts.lock.as_deref(), &|s| selected.contains(s))?
            .into_iter()
            .filter(|st| !st.is_fresh())
            .map(|st| st.stage)
            .collect())
    }

    /// Runs what is stale, make-style, holding the store lock throughout.
    pub fn run(&self, store: &Store, opts: &RunOptions) -> Result<RunSummary, EngineError> {
        let start = Instant::now();
        let _guard = StoreLock::acquire(store.root(), "mmb run")?;
        store.remove_stale_temps()?;
        for f in &opts.force {
            self.get(f)?;
        }
        let selected: BTreeSet<String> = match &opts.target {
            Some(t) => self.ancestors_and_self(t)?,
            None => self.ordered().map(|s| s.name().to_string()).collect(),
        };
        let lock_name = opts.lock.as_deref();
        let mut lock = LockFile::load_named(store.root(), lock_name)?;
        lock.version = 1;
        let mut produced = produced_from_lock(&lock)?;
        let models = ModelHashes::load(store.root());
        let progress = MultiProgress::new();
        let mut summary = RunSummary::default();

        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut rerun: BTreeSet<String> = BTreeSet::new();
        let mut running: BTreeSet<String> = BTreeSet::new();
        let mut failure: Option<EngineError> = None;
        let jobs = opts.jobs.max(1);
        // Stages side by side share the threads; one at a time, a stage takes them all.
        let threads = (jobs > 1).then(|| crate::runtime::thread_share(crate::runtime::stage_threads(), jobs));

        std::thread::scope(|scope| -> Result<(), EngineError> {
            let (tx, rx) = mpsc::channel::<(String, Result<(StageRecord, Produced), EngineError>)>();
            loop {
                // Launch every ready stage (all parents done) while there is room; fresh ones finish at once.
                let mut launched = true;
                while launched && failure.is_none() {
                    launched = false;
                    for s in self.ordered() {
                        let name = s.name().to_string();
                        if !selected.contains(&name) || done.contains(&name) || running.contains(&name) {
                            continue;
                        }
                        let parents = self.parents(&name)?;
                        if !parents.iter().all(|p| done.contains(p)) {
                            continue;
                        }
                        if running.len() >= jobs {
                            break;
                        }
                        let forced = opts.force.contains(&name);
                        let st = evaluate(s, &lock, &produced, &|_| false, &models, store, forced)?;
                        if st.is_fresh() {
                            done.insert(name.clone());
                            summary.fresh.push(name);
                            launched = true;
                            continue;
                        }
                        if let (false, Some(rec)) = (forced, st.key.as_deref().and_then(|k| RunCache::get(store.root(), k))) {
                            if let Some(outs) = restorable(&name, &rec, store) {
                                produced.extend(outs);
                                lock.stages.insert(name.clone(), rec);
                                lock.save_named(store.root(), lock_name)?;
                                done.insert(name.clone());
                                announce(&progress, start, &format!("{name}: outputs restored from the run-cache"));
                                summary.restored.push(name);
                                launched = true;
                                continue;
                            }
                        }
                        tracing::info!(stage = %name, reasons = %st.reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; "), "running");
                        announce(
                            &progress,
                            start,
                            &format!(
                                "{name}: started ({}){}",
                                st.reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; "),
                                threads.map(|n| format!(" on {n} threads of {}", crate::runtime::stage_threads())).unwrap_or_default()
                            ),
                        );
                        running.insert(name.clone());
                        rerun.insert(name.clone());
                        let tx = tx.clone();
                        let progress = &progress;
                        let exec = opts.executor.as_deref();
                        scope.spawn(move || {
                            // A panic (an `expect`, an Arrow cast on a bad artifact) must fail the run, not leave
                            // the loop below waiting for a report that never comes.
                            let res =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_one(s, st, store, progress, exec, threads)))
                                    .unwrap_or_else(|payload| {
                                        Err(EngineError::StagePanicked { stage: name.clone(), msg: panic_message(&*payload) })
                                    });
                            let _ = tx.send((name, res));
                        });
                        launched = true;
                    }
                }
                if running.is_empty() {
                    break;
                }
                let (name, res) = rx.recv().expect("a running stage reports back");
                running.remove(&name);
                match &res {
                    Ok((record, _)) => announce(&progress, start, &format!("{name}: finished in {:.1} s", record.seconds)),
                    Err(e) => announce(&progress, start, &format!("{name}: FAILED: {e}")),
                }
                match res {
                    Ok((record, outs)) => {
                        produced.extend(outs);
                        RunCache::put(store.root(), &record)?;
                        lock.stages.insert(name.clone(), record);
                        lock.save_named(store.root(), lock_name)?;
                        done.insert(name.clone());
                        summary.ran.push(name);
                    }
                    Err(e) => {
                        if failure.is_none() {
                            failure = Some(e);
                        }
                    }
                }
            }
            Ok(())
        })?;
        models.save()?;
        summary.seconds = start.elapsed().as_secs_f64();
        match failure {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

/// One line per stage event on stderr, stamped with the time since the run started: above the progress
/// bars on a terminal, plain lines otherwise (`mmb run > run.log` shows what is happening).
fn announce(progress: &MultiProgress, start: Instant, what: &str) {
    let line = format!("[{:>7.1} s] {what}", start.elapsed().as_secs_f64());
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let _ = progress.println(line);
    } else {
        eprintln!("{line}");
    }
}

/// The text a panic was raised with (`panic!("…")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A run-cache record's outputs, if every one of them is still in the store.
fn restorable(stage: &str, rec: &StageRecord, store: &Store) -> Option<Produced> {
    let mut out = Produced::new();
    for (name, o) in &rec.outputs {
        let id = crate::store::ArtifactId::parse(&o.id).ok()?;
        if !store.path_of(&id, o.kind).exists() {
            return None;
        }
        out.insert((stage.to_string(), name.clone()), (id, o.kind));
    }
    Some(out)
}

fn run_one(
    stage: &dyn super::stage::Stage,
    st: StageStatus,
    store: &Store,
    progress: &MultiProgress,
    exec: Option<&super::executor::Executors>,
    threads: Option<usize>,
) -> Result<(StageRecord, Produced), EngineError> {
    let started = Instant::now();
    let name = stage.name().to_string();
    let key = st.key.clone().expect("a stage whose parents are done has a key");
    let lineage = Lineage {
        stage: name.clone(),
        output: String::new(),
        code_version: stage.code_version().into(),
        params: st.params.clone(),
        inputs: st.inputs.iter().map(|(k, (id, _))| (k.clone(), id.to_string())).collect(),
        models: st.models.clone(),
        cache_key: key.clone(),
        tool: Lineage::tool_version(),
        created: None,
        rows: None,
    };
    let ctx = StageContext::new(store, &name, st.params.clone(), st.inputs.clone(), stage.outputs(), lineage, progress);
    // An in-process stage's encoders take the share on this thread; a worker gets it as `$MMB_THREADS`.
    let (done, cap) = crate::runtime::with_share(threads, || (super::executor::execute(stage, &ctx, exec), crate::runtime::thread_cap()));
    done.map_err(|source| EngineError::StageFailed { stage: name.clone(), source })?;
    let written = ctx.into_written();
    let declared = stage.outputs();
    for d in &declared {
        if !written.contains_key(d) {
            return Err(EngineError::MissingOutput { stage: name.clone(), output: d.clone() });
        }
    }
    let mut outputs = BTreeMap::new();
    let mut produced = Produced::new();
    for (out, (id, kind)) in written {
        let bytes = std::fs::metadata(store.path_of(&id, kind)).map(|m| m.len()).unwrap_or(0);
        outputs.insert(out.clone(), OutputRecord { id: id.to_string(), kind, bytes });
        produced.insert((name.clone(), out), (id, kind));
    }
    let record = StageRecord {
        key,
        code_version: stage.code_version().into(),
        params: st.params,
        inputs: st.inputs.iter().map(|(k, (id, _))| (k.clone(), id.to_string())).collect(),
        models: st.models,
        device: stage.device(),
        threads: cap,
        outputs,
        finished: Lineage::now(),
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((record, produced))
}
