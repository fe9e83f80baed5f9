//! The command line: one file per command group, each a thin shell over the libraries.
mod bench;
mod cluster;
mod data;
mod pipeline;
mod remote;
mod store;

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "mmb", version, about = "MMBoundary: step-level confidence for multimodal LLMs, as a cached pipeline")]
pub struct Cli {
    /// The artifact store (default: `artifacts/` of the project).
    #[arg(long, global = true, env = "MMB_STORE")]
    pub store: Option<PathBuf>,
    /// The folder of stage TOML files, one per stage: its inputs and params (default: `stages/` of the project).
    #[arg(long, global = true, env = "MMB_STAGES")]
    pub stages: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run what is stale (all stages, or TARGET and what it depends on).
    Run(pipeline::RunArgs),
    /// Run every variant of stages/sweep.toml (the paper's ablations), each sharing every stage it can.
    Sweep(pipeline::SweepArgs),
    /// Run the paper's baselines of stages/baselines.toml (DPV, DPS, DRL, …), each sharing every stage it
    /// can, and write Table 1's upper half with Table 8's AUROC next to MMBoundary and "w/o RL".
    Compare(pipeline::SweepArgs),
    /// Each stage: up to date or stale, and why (with --remote: what is pushed to a remote).
    Status(remote::StatusArgs),
    /// The stage graph (text, or Graphviz with --dot).
    Dag(pipeline::DagArgs),
    /// An artifact (by hash or prefix) or a stage's outputs: schema, rows, lineage, first rows.
    Show(store::ShowArgs),
    /// Rehash every artifact; non-zero exit on any mismatch.
    Verify,
    /// List (or with --apply delete) artifacts no lock file references, and work folders of finished runs.
    Gc(store::GcArgs),
    /// Copy an artifact, with its lineage, into a folder to share it.
    Export(store::ExportArgs),
    /// Bring shared artifacts into this store; refuses files whose hash or lineage do not check.
    Import(store::ImportArgs),
    /// Manage remotes (S3-compatible buckets, shared folders): add, list, remove.
    Remote(remote::RemoteArgs),
    /// Upload stages' outputs (with what they depend on) or artifacts to a remote, verified, with a manifest.
    Push(remote::PushArgs),
    /// Download from a remote (each object checked by its blake3) and record the pulled stages in the lock.
    Pull(remote::PushArgs),
    /// As pull, without recording stages in the lock file.
    Fetch(remote::PushArgs),
    /// The embedded Penumbra benchmark outside the pipeline: generate N items, a contact sheet, or show items.
    Data(data::DataArgs),
    /// Benchmarks (figures as JSON, with references measured in the same run).
    Bench(bench::BenchArgs),
    /// One Slurm task of a stage (what `mmb run --executor slurm` submits; not for direct use).
    #[command(hide = true)]
    ShardTask(cluster::ShardTaskArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MMB_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in `mmb run 2> run.log`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match crate::runtime::init_threads().and_then(|_| dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::runtime::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The project folder: the nearest folder at or above `start` that holds a `stages/` folder, as git looks
/// for `.git` and cargo for `Cargo.toml`.
pub fn find_project_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find(|d| d.join("stages").is_dir()).map(Path::to_path_buf)
}

/// Resolves `--store` and `--stages` (relative to where `mmb` was started), then works from the project
/// folder, so `mmb` behaves the same from any folder inside it and relative paths in stage files mean
/// the same thing. Outside any project, the defaults are `artifacts/` and `stages/` of the current folder.
fn locate(cli: &Cli) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cwd = std::env::current_dir()?;
    let store = cli.store.as_ref().map(|p| cwd.join(p));
    let stages = cli.stages.as_ref().map(|p| cwd.join(p));
    let root = find_project_root(&cwd).unwrap_or_else(|| cwd.clone());
    if root != cwd {
        std::env::set_current_dir(&root).map_err(|e| anyhow::anyhow!("{}: {e}", root.display()))?;
        tracing::info!(root = %root.display(), "working from the project folder");
    }
    Ok((store.unwrap_or_else(|| root.join("artifacts")), stages.unwrap_or_else(|| root.join("stages"))))
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let (store_dir, stages_dir) = locate(&cli)?;
    let (store, stages) = (store_dir.as_path(), stages_dir.as_path());
    match cli.command {
        Command::Run(a) => pipeline::run(store, stages, a),
        Command::Sweep(a) => pipeline::sweep(store, stages, a),
        Command::Compare(a) => pipeline::compare(store, stages, a),
        Command::Status(a) => match a.remote {
            None => pipeline::status(store, stages, a.preset.as_deref(), &a.set),
            Some(name) => remote::status(store, stages, &name),
        },
        Command::Dag(a) => pipeline::dag(stages, a),
        Command::Show(a) => self::store::show(store, stages, a),
        Command::Verify => self::store::verify(store),
        Command::Gc(a) => self::store::gc(store, a),
        Command::Export(a) => self::store::export(store, a),
        Command::Import(a) => self::store::import(store, a),
        Command::Remote(a) => remote::remote_cmd(stages, a),
        Command::Push(a) => remote::push(store, stages, a),
        Command::Pull(a) => remote::pull(store, stages, a, true),
        Command::Fetch(a) => remote::pull(store, stages, a, false),
        Command::Bench(a) => bench::run(a),
        Command::Data(a) => data::run(a).map(|()| ExitCode::SUCCESS),
        Command::ShardTask(a) => cluster::shard_task(store, stages, a),
    }
}
