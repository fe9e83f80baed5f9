use crate::engine::{Pipeline, RunOptions};
use crate::store::Store;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run this stage and what it depends on (default: everything).
    pub target: Option<String>,
    /// Independent stages to run at once.
    #[arg(short, long, default_value_t = 1)]
    pub jobs: usize,
    /// Rerun these stages even if up to date (repeatable).
    #[arg(long)]
    pub force: Vec<String>,
    /// Run with a preset of `<stages>/presets.toml` laid over the stage files (e.g. `smollm2-135m`: the
    /// demo MLLM on SmolLM2-135M-Instruct's weights), under its own lock so the default run stays as it is.
    #[arg(long)]
    pub preset: Option<String>,
    /// Set a stage param for this run, over the stage files and the preset: `STAGE.KEY=VALUE` with a TOML
    /// value (`dataset.seed=20261130`, `ppo.trainer.learning_rate=1e-5`, `eval.splits=["val"]`; a bare word
    /// is a string). Repeatable. The run records under its own lock (`set-<hash>`), so the default run's
    /// lock stays as it is.
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub set: Vec<crate::stages::settings::Setting>,
    /// Where stages run: `local`, or `slurm` (array jobs for map stages, single jobs for the rest), over
    /// `executor` of `<stages>/executor.toml`.
    #[arg(long)]
    pub executor: Option<crate::engine::executor::ExecutorKind>,
}

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// Run each variant up to this stage (default: everything for `sweep`, `eval` for `compare`).
    pub target: Option<String>,
    /// The variants (default: `<stages>/sweep.toml`).
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// Run only these variants (repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    /// Independent stages to run at once.
    #[arg(short, long, default_value_t = 1)]
    pub jobs: usize,
    /// Instead of the variants: the main pipeline under N seeds (`sweep` only), each to its eval under its
    /// own lock (`seed-0` … `seed-{N-1}`; seed 0 is the main run's settings, so it reuses that run's cache),
    /// then full − SFT per split on ECE, MECE and step-level Brier: each seed's, their mean and its paired
    /// bootstrap 95 % interval, in `artifacts/seeds.md`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    pub seeds: Option<u64>,
    /// With `--seeds`: stage params under every seed, as `mmb run --set` (e.g. `dataset.seed=20261130`, a
    /// benchmark nobody tuned on); the seeds record under `set-<hash>-seed-k` and the table goes to
    /// `seeds-set-<hash>.md`.
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub set: Vec<crate::stages::settings::Setting>,
}

#[derive(clap::Args, Debug)]
pub struct DagArgs {
    /// Print Graphviz DOT.
    #[arg(long)]
    pub dot: bool,
}

pub fn run(store: &Path, stages: &Path, a: RunArgs) -> anyhow::Result<ExitCode> {
    let (configs, lock_name) = crate::stages::settings::run_configs(stages, a.preset.as_deref(), &a.set)?;
    let pipeline = crate::stages::pipeline_with(&configs)?;
    if let Some(lock) = lock_name.as_deref().filter(|_| !a.set.is_empty()) {
        eprintln!("settings over the stage files: {} (lock {lock})", settings_line(&a.set));
    }
    let executor = super::cluster::executors(store, stages, a.executor, a.preset.as_deref(), &a.set)?;
    let store = Store::open(store)?;
    let opts = RunOptions { target: a.target, jobs: a.jobs, force: a.force, lock: lock_name.clone(), executor };
    check_machine(&pipeline, &configs, &store, &opts)?;
    let s = pipeline.run(&store, &opts)?;
    let restored = if s.restored.is_empty() { String::new() } else { format!("; restored from the run-cache: {}", s.restored.join(", ")) };
    if s.ran.is_empty() {
        eprintln!("up to date ({} stages, {:.3} s){restored}", s.fresh.len(), s.seconds);
    } else {
        eprintln!("ran {} ({} up to date) in {:.1} s{restored}", s.ran.join(", "), s.fresh.len(), s.seconds);
    }
    // Point at the report of this run (the preset's, under its own lock), extracted from its artifact.
    let lock = crate::engine::LockFile::load_named(store.root(), lock_name.as_deref())?;
    if let Some(o) = lock.stages.get("report").and_then(|r| r.outputs.get("report")) {
        let dir = store.materialize(&crate::store::ArtifactId::parse(&o.id)?)?;
        eprintln!("report: {}", dir.join("report.html").display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses a run whose stages (those it will run: reached by its target and not up to date) ask for a
/// device or ONNX execution provider this machine lacks, before any runs; a stage the executor sends to
/// Slurm is its node's to check.
fn check_machine(p: &Pipeline, configs: &crate::stages::StageConfigs, store: &Store, opts: &RunOptions) -> anyhow::Result<()> {
    let will_run = p.to_run(store, opts)?;
    let names: Vec<&str> = will_run.iter().map(String::as_str).collect();
    let exec = opts.executor.as_deref();
    let slurm = |s: &str| exec.is_some_and(|e| e.file.kind_of(s) == crate::engine::executor::ExecutorKind::Slurm);
    crate::stages::device::check_machine(configs, &names, slurm, &crate::stages::device::Machine::this())
}

/// The settings as given, for the log: `dataset.seed=20261130, eval.device="cuda"`.
fn settings_line(set: &[crate::stages::settings::Setting]) -> String {
    set.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
}

pub fn status(store: &Path, stages: &Path, preset: Option<&str>, set: &[crate::stages::settings::Setting]) -> anyhow::Result<ExitCode> {
    let (configs, lock) = crate::stages::settings::run_configs(stages, preset, set)?;
    let pipeline = crate::stages::pipeline_with(&configs)?;
    let store = Store::open(store)?;
    for st in pipeline.status_named(&store, &[], lock.as_deref())? {
        if st.is_fresh() {
            println!("{:<10} up to date", st.stage);
        } else {
            let why: Vec<String> = st.reasons.iter().map(|r| r.to_string()).collect();
            println!("{:<10} stale: {}", st.stage, why.join("; "));
            if let Some(line) = super::cluster::job_line(&store, stages, &st) {
                println!("{:<10} {line}", "");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn dag(stages: &Path, a: DagArgs) -> anyhow::Result<ExitCode> {
    let pipeline = crate::stages::pipeline(stages)?;
    print!("{}", render_dag(&pipeline, a.dot));
    Ok(ExitCode::SUCCESS)
}

pub fn render_dag(p: &Pipeline, dot: bool) -> String {
    let mut s = String::new();
    if dot {
        s.push_str("digraph mmb {\n  rankdir=LR;\n");
        for st in p.ordered() {
            s.push_str(&format!("  \"{}\";\n", st.name()));
        }
        for (from, to, out) in p.edges() {
            s.push_str(&format!("  \"{from}\" -> \"{to}\" [label=\"{out}\"];\n"));
        }
        s.push_str("}\n");
    } else {
        for st in p.ordered() {
            let ins: Vec<String> = st.inputs().iter().map(|i| format!("{}.{}", i.stage, i.output)).collect();
            s.push_str(&format!("{:<10} ← {}\n", st.name(), if ins.is_empty() { "(no inputs)".into() } else { ins.join(", ") }));
        }
    }
    s
}

/// Runs every variant of the sweep file, each under its own lock; stages a variant shares with the main
/// pipeline or another variant come from the run-cache.
pub fn sweep(store: &Path, stages: &Path, a: SweepArgs) -> anyhow::Result<ExitCode> {
    match a.seeds {
        Some(n) => run_seeds(store, stages, a, n),
        None => {
            anyhow::ensure!(a.set.is_empty(), "--set goes with `mmb run` or `mmb sweep --seeds`; a variant sets its params in its file");
            run_variants(store, stages, a, VariantTable::Ablations)
        }
    }
}

/// `mmb sweep --seeds N`: see [`SweepArgs::seeds`].
fn run_seeds(store: &Path, stages: &Path, a: SweepArgs, n: u64) -> anyhow::Result<ExitCode> {
    use crate::report::intervals::{seeds_paired_differences, Metric};
    use crate::stages::seeds::{seed_overrides, seed_run_name};
    anyhow::ensure!(
        a.file.is_none() && a.only.is_empty() && a.target.is_none(),
        "--seeds runs the main pipeline to its eval under each seed: it takes no variants file, --only or target"
    );
    let (base, prefix) = crate::stages::settings::run_configs(stages, None, &a.set)?;
    if let Some(p) = &prefix {
        eprintln!("settings over the stage files: {} (locks {p}-seed-k)", settings_line(&a.set));
    }
    let store = Store::open(store)?;
    let mut runs = Vec::new();
    for k in 0..n {
        let overrides = crate::stages::settings::layered(base.overrides.clone(), &seed_overrides(&base, k)?);
        let configs = crate::stages::StageConfigs { dir: stages.to_path_buf(), overrides };
        let pipeline = crate::stages::pipeline_with(&configs)?;
        let lock = prefix.as_ref().map_or_else(|| seed_run_name(k), |p| format!("{p}-{}", seed_run_name(k)));
        let opts = RunOptions { target: Some("eval".into()), jobs: a.jobs, lock: Some(lock.clone()), ..Default::default() };
        check_machine(&pipeline, &configs, &store, &opts)?;
        let s = pipeline.run(&store, &opts)?;
        println!(
            "{lock:<10} ran [{}]  restored [{}]  up to date {}  ({:.1} s)",
            s.ran.join(", "),
            s.restored.join(", "),
            s.fresh.len(),
            s.seconds
        );
        let eval = fresh_eval(&store, &pipeline, Some(&lock))?
            .ok_or_else(|| anyhow::anyhow!("{lock}: its eval is not up to date after the run"))?;
        runs.push(eval);
    }
    let rule = runs[0].rule.clone();
    if let Some(k) = runs.iter().position(|r| r.rule != rule) {
        anyhow::bail!(
            "{}: eval's ECE bins or answer-confidence rule differ from seed 0's; the seeds' metrics can't be averaged",
            seed_run_name(k as u64)
        );
    }
    let splits: Vec<String> = base.params::<crate::stages::eval::EvalParams>("eval")?.splits;
    let bootstrap = base.params::<crate::stages::report::ReportParams>("report")?.bootstrap;
    let items: Vec<_> = runs.iter().map(|r| &r.items).collect();
    let diffs = seeds_paired_differences(&items, "full", "sft", &splits, &[Metric::Ece, Metric::Mece, Metric::Brier], &rule, &bootstrap)?;
    let seeds: Vec<u64> = (0..n).collect();
    let table = format!(
        "## Full method − SFT only over {n} seeds\n\nEach seed's run changes every seed after the base model (warm-up sampling, statement draw, SFT data \
         order, PPO, eval); the benchmark and base model stay, so the runs answer the same items. Negative = the full method has the lower error. \
         Interval: {} item resamples, the same draw for every seed.\n\n{}",
        bootstrap.resamples,
        crate::report::page::seeds_markdown(&diffs, "full", "SFT", &seeds)
    );
    let per_seed = runs
        .iter()
        .map(|r| {
            let roles = crate::report::roles::eval_role_cells(&r.sentences, &r.answers)?;
            Ok(crate::report::page::SeedPolicies::new(&r.rows, &crate::report::evidence::statement_aurocs(&r.sentences)?, &roles))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let variants = base.params::<crate::stages::eval::EvalParams>("eval")?.variants;
    let variants: Vec<&str> = variants.iter().map(String::as_str).collect();
    let table = format!(
        "{table}\n## Each policy under each seed\n\nAnswer accuracy (Table 1's) and statement AUROC (the report's \"{}\"; none for a \
         policy that writes no statements) per seed, and the statement AUROC over pairs of a right and a wrong sentence of the same \
         role (perception, reasoning, the answer: the report's \"By sentence role\").\n\n{}",
        crate::stages::report::STATEMENTS_HEADING,
        crate::report::page::seeds_policies_markdown(&per_seed, &variants, &splits, &seeds)
    );
    // What training costs in answer accuracy: each policy against the one it starts from, paired as above.
    let accuracy = |a: &str, b: &str| seeds_paired_differences(&items, a, b, &splits, &[Metric::Accuracy], &rule, &bootstrap);
    let table = format!(
        "{table}\n## Answer accuracy against the policy each starts from\n\nPositive = the later policy answers more questions \
         right. The untuned model is the same under every seed.\n\n### SFT − untuned\n\n{}\n### Full method − SFT\n\n{}",
        crate::report::page::seeds_markdown(&accuracy("sft", "vanilla")?, "SFT", "untuned", &seeds),
        crate::report::page::seeds_markdown(&accuracy("full", "sft")?, "full", "SFT", &seeds),
    );
    let out = store.root().join(prefix.map_or_else(|| "seeds.md".to_string(), |p| format!("seeds-{p}.md")));
    crate::store::write_atomic(&out, table.as_bytes())?;
    println!("\n{table}\nwritten to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `mmb compare`: the baselines of `stages/baselines.toml` as `sweep` runs its variants, then Table 1's
/// upper half (with Table 8's AUROC) in `artifacts/compare.md`.
pub fn compare(store: &Path, stages: &Path, a: SweepArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.seeds.is_none(), "--seeds belongs to `mmb sweep` (the main pipeline under several seeds), not `mmb compare`");
    anyhow::ensure!(a.set.is_empty(), "--set goes with `mmb run` or `mmb sweep --seeds`; a baseline sets its params in its file");
    run_variants(store, stages, a, VariantTable::Baselines)
}

/// Which table a run of variants ends with, and where it is written.
#[derive(Clone, Copy)]
enum VariantTable {
    Ablations,
    Baselines,
}

impl VariantTable {
    fn default_file(self) -> &'static str {
        match self {
            Self::Ablations => "sweep.toml",
            Self::Baselines => "baselines.toml",
        }
    }
    fn out(self) -> &'static str {
        match self {
            Self::Ablations => "sweep.md",
            Self::Baselines => "compare.md",
        }
    }
    fn heading(self) -> &'static str {
        match self {
            Self::Ablations => crate::report::page::ABLATION_HEADING,
            Self::Baselines => crate::report::page::BASELINE_HEADING,
        }
    }
}

fn run_variants(store: &Path, stages: &Path, a: SweepArgs, kind: VariantTable) -> anyhow::Result<ExitCode> {
    let file = a.file.unwrap_or_else(|| stages.join(kind.default_file()));
    let sweep = crate::stages::SweepFile::load(&file)?;
    let store = Store::open(store)?;
    for name in &a.only {
        anyhow::ensure!(sweep.variant.iter().any(|v| &v.name == name), "{}: no variant named `{name}`", file.display());
    }
    for v in sweep.variant.iter().filter(|v| a.only.is_empty() || a.only.contains(&v.name)) {
        let configs = crate::stages::StageConfigs { dir: stages.to_path_buf(), overrides: v.params.clone() };
        let pipeline = crate::stages::pipeline_with(&configs)?;
        // A baseline runs up to its eval (what the table reads), not the report of its own lock.
        let target = a.target.clone().or_else(|| matches!(kind, VariantTable::Baselines).then(|| "eval".to_string()));
        let opts = RunOptions { target, jobs: a.jobs, lock: Some(v.name.clone()), ..Default::default() };
        check_machine(&pipeline, &configs, &store, &opts)?;
        let s = pipeline.run(&store, &opts)?;
        println!(
            "{:<24} ran [{}]  restored [{}]  up to date {}  ({:.1} s){}",
            v.name,
            s.ran.join(", "),
            s.restored.join(", "),
            s.fresh.len(),
            s.seconds,
            v.description.as_deref().map(|d| format!("  — {d}")).unwrap_or_default()
        );
    }
    // The table needs every variant's eval; a sweep to an earlier stage has none.
    if a.target.as_deref().is_none_or(|t| t == "eval" || t == "report") {
        let table = variant_table(&store, stages, &sweep, kind.heading())?;
        let out = store.root().join(kind.out());
        crate::store::write_atomic(&out, table.as_bytes())?;
        println!("\n{table}\nwritten to {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A lock's up-to-date eval: its metrics rows, its per-item scores and how ECE was computed (for the
/// intervals).
struct FreshEval {
    rows: Vec<crate::report::page::MetricsRow>,
    items: std::collections::BTreeMap<(String, String), Vec<crate::report::intervals::ItemScores>>,
    rule: crate::report::intervals::CellRule,
    /// eval_chains' judged sentences (whether each policy wrote statements, and what they said).
    sentences: arrow::record_batch::RecordBatch,
    /// How eval read the answers (which sentence of a chain is its answer).
    answers: crate::metrics::accuracy::AccuracyParams,
}

/// The eval of a lock, if its eval stages (eval_chains, eval) are up to date for `pipeline`.
fn fresh_eval(store: &Store, pipeline: &Pipeline, lock: Option<&str>) -> anyhow::Result<Option<FreshEval>> {
    let status = pipeline.status_named(store, &[], lock)?;
    let fresh = ["eval_chains", "eval"].iter().all(|st| status.iter().any(|s| s.stage == *st && s.is_fresh()));
    let mut stages = crate::engine::LockFile::load_named(store.root(), lock)?.stages;
    if !fresh {
        return Ok(None);
    }
    let mut read = |stage: &str, name: &str| -> anyhow::Result<Option<crate::store::Table>> {
        let Some(output) = stages.get_mut(stage).and_then(|r| r.outputs.remove(name)) else { return Ok(None) };
        Ok(Some(store.read_table(&crate::store::ArtifactId::parse(&output.id)?)?))
    };
    let (Some(metrics), Some(sentences)) = (read("eval", "metrics")?, read("eval_chains", "sentences")?) else { return Ok(None) };
    let answers = crate::stages::report::answer_reading(&sentences)?;
    let (metrics, sentences) = (metrics.concat()?, sentences.concat()?);
    let rows = crate::stages::report::metrics_rows(&metrics)?;
    let items = crate::stages::report::report_items(&sentences, &rows)?;
    let rule = crate::stages::report::cell_rule(&metrics)?;
    Ok(Some(FreshEval { rows, items, rule, sentences, answers }))
}

/// The paper's ablation table (Table 1's lower half) or baseline table (its upper half): the main run's
/// full method and its SFT-only policy ("w/o RL"), then each variant's policy (`row`: `full` unless the
/// variant says otherwise), from each lock's up-to-date eval.
fn variant_table(store: &Store, stages: &Path, sweep: &crate::stages::SweepFile, heading: &str) -> anyhow::Result<String> {
    let relabel = |rows: &[crate::report::page::MetricsRow], from: &str, to: &str| -> Vec<_> {
        rows.iter()
            .filter(|m| m.variant == from)
            .cloned()
            .map(|mut m| {
                m.variant = to.to_string();
                m
            })
            .collect()
    };
    // Each row's intervals: its variant's items under the row's label, checked against its eval values.
    let mut cells = crate::report::intervals::Cells::new();
    let mut add_cells = |e: &FreshEval, from: &str, to: &str, rows: &[crate::report::page::MetricsRow]| -> anyhow::Result<()> {
        let items =
            e.items.iter().filter(|((v, _), _)| v == from).map(|((_, sp), its)| ((to.to_string(), sp.clone()), its.clone())).collect();
        cells.extend(crate::report::intervals::cell_intervals(&items, rows, &e.rule, &Default::default())?);
        Ok(())
    };
    // Why a row looks as it does: whether its policy writes statements, and what MECE rewards on the
    // report's split (as the main report shows for its own variants).
    let split = crate::stages::StageConfigs::new(stages).params::<crate::stages::report::ReportParams>("report")?.split;
    let mut statements = Vec::new();
    let mut anatomy = Vec::new();
    let mut explain = |e: &FreshEval, from: &str, to: &str| -> anyhow::Result<()> {
        for ((v, sp), c) in crate::report::evidence::statement_counts(&e.sentences)? {
            if v == from {
                statements.push((to.to_string(), sp, c));
            }
        }
        if let Some(r) = crate::stages::report::stated_responses(&e.sentences, &split)?.remove(from) {
            anatomy.push((to.to_string(), r.into_values().collect()));
        }
        Ok(())
    };
    let mut entries = Vec::new();
    let mut costs = Vec::new();
    let main_lock = crate::engine::LockFile::load(store.root())?;
    let main = fresh_eval(store, &crate::stages::pipeline(stages)?, None)?;
    for (from, to) in [("full", "MMBoundary"), ("sft", "w/o RL")] {
        let rows = main.as_ref().map(|e| relabel(&e.rows, from, to));
        if let (Some(e), Some(r)) = (&main, &rows) {
            add_cells(e, from, to, r)?;
            explain(e, from, to)?;
        }
        entries.push((format!("{to} (`mmb run`)"), to.to_string(), rows));
    }
    for v in &sweep.variant {
        let configs = crate::stages::StageConfigs { dir: stages.to_path_buf(), overrides: v.params.clone() };
        let label = v.description.clone().unwrap_or_else(|| v.name.clone());
        let pipeline = crate::stages::pipeline_with(&configs)?;
        let e = fresh_eval(store, &pipeline, Some(&v.name))?;
        let rows = e.as_ref().map(|e| relabel(&e.rows, v.row(), &label));
        if let (Some(e), Some(r)) = (&e, &rows) {
            add_cells(e, v.row(), &label, r)?;
            explain(e, v.row(), &label)?;
            let order: Vec<String> = pipeline.ordered().map(|st| st.name().to_string()).collect();
            let lock = crate::engine::LockFile::load_named(store.root(), Some(&v.name))?;
            let beyond = lock.beyond(&main_lock, &order).into_iter().map(|(st, r)| (st.to_string(), r.key.clone(), r.seconds)).collect();
            costs.push((v.name.clone(), beyond));
        }
        let cmd = if heading == crate::report::page::BASELINE_HEADING { "compare" } else { "sweep" };
        entries.push((format!("`mmb {cmd} --only {}`", v.name), label.clone(), rows));
    }
    let mut md = crate::report::page::variants_markdown(heading, &entries, &cells);
    if !statements.is_empty() {
        let splits = crate::report::page::ordered_splits(&entries.iter().filter_map(|e| e.2.clone()).flatten().collect::<Vec<_>>());
        let labels: Vec<&String> = entries.iter().filter(|e| e.2.is_some()).map(|e| &e.1).collect();
        let rank = |label: &String, sp: &String| (labels.iter().position(|l| *l == label), splits.iter().position(|s| s == sp));
        statements.sort_by_key(|(label, sp, _)| rank(label, sp));
        md.push_str(&format!(
            "\n## Statements written\n\nPer row and split: the sentences judged, the share carrying a statement, the mean stated \
             confidence and the share judged right. A policy that writes no statement gets eval's constant `missing_confidence` for \
             every sentence: its MECE and AUROC (0.5) say that, not calibration.\n\n{}",
            crate::report::evidence::statements_markdown(&statements)
        ));
        md.push_str(&format!(
            "\n## What MECE rewards ({split})\n\n{}\n\n{}",
            crate::stages::report::ANATOMY_NOTE,
            crate::report::page::mece_anatomy_markdown(&anatomy)?
        ));
    }
    if !costs.is_empty() {
        md.push_str(
            "\n## Cost beyond `mmb run`\n\nEach variant's stages that the main run's lock does not hold, with the wall seconds recorded when \
             they were computed (a stage restored from the run-cache keeps those of the run that computed it; on a busy machine they \
             measure it too).\n\n",
        );
        md.push_str(&crate::report::page::cost_markdown(&costs));
    }
    Ok(md)
}
