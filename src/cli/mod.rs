//! The command line: one file per command group, each a thin shell over the libraries.
mod bench;
mod data;
mod pipeline;
mod remote;
mod store;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "mmb", version, about = "MMBoundary: step-level confidence for multimodal LLMs, as a cached pipeline")]
pub struct Cli {
    /// The artifact store.
    #[arg(long, global = true, default_value = "artifacts", env = "MMB_STORE")]
    pub store: PathBuf,
    /// The folder of stage TOML files (one per stage: its inputs and params).
    #[arg(long, global = true, default_value = "stages", env = "MMB_STAGES")]
    pub stages: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run what is stale (all stages, or TARGET and what it depends on).
    Run(pipeline::RunArgs),
    /// Run every variant of stages/sweep.toml (the paper's ablations), each sharing every stage it can.
    Sweep(pipeline::SweepArgs),
    /// Each stage: up to date or stale, and why (with --remote: what is pushed to a remote).
    Status(remote::StatusArgs),
    /// The stage graph (text, or Graphviz with --dot).
    Dag(pipeline::DagArgs),
    /// An artifact (by hash or prefix) or a stage's outputs: schema, rows, lineage, first rows.
    Show(store::ShowArgs),
    /// Rehash every artifact; non-zero exit on any mismatch.
    Verify,
    /// List (or with --apply delete) artifacts that the lock file does not reference.
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
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MMB_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::runtime::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(a) => pipeline::run(&cli.store, &cli.stages, a),
        Command::Sweep(a) => pipeline::sweep(&cli.store, &cli.stages, a),
        Command::Status(a) => match a.remote {
            None => pipeline::status(&cli.store, &cli.stages),
            Some(name) => remote::status(&cli.store, &cli.stages, &name),
        },
        Command::Dag(a) => pipeline::dag(&cli.stages, a),
        Command::Show(a) => store::show(&cli.store, &cli.stages, a),
        Command::Verify => store::verify(&cli.store),
        Command::Gc(a) => store::gc(&cli.store, a),
        Command::Export(a) => store::export(&cli.store, a),
        Command::Import(a) => store::import(&cli.store, a),
        Command::Remote(a) => remote::remote_cmd(&cli.stages, a),
        Command::Push(a) => remote::push(&cli.store, &cli.stages, a),
        Command::Pull(a) => remote::pull(&cli.store, &cli.stages, a, true),
        Command::Fetch(a) => remote::pull(&cli.store, &cli.stages, a, false),
        Command::Bench(a) => bench::run(a),
        Command::Data(a) => data::run(a).map(|()| ExitCode::SUCCESS),
    }
}
