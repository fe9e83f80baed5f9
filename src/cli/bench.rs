use crate::engine::{bench::synthetic_chain, RunOptions};
use crate::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchWhat {
    /// The engine and store at DVC's scale: no-op run, status after touching every artifact, verify.
    Store(StoreBenchArgs),
    /// Encoder throughput (MiniLM fp32 and the fast path, CLIP images incl. decode and preprocessing),
    /// as JSON; run scripts/bench_baselines.py on the same corpus for the Python references.
    Encoders(EncoderBenchArgs),
    /// (internal) one step of the store benchmark, timed from outside by `mmb bench store`.
    #[command(hide = true)]
    StoreStep { step: String, dir: PathBuf },
}

#[derive(clap::Args, Debug)]
pub struct StoreBenchArgs {
    /// Total bytes of the 8 stages' outputs, in GB.
    #[arg(long, default_value_t = 2.15)]
    pub gb: f64,
    /// Where the benchmark store lives (kept between runs; default: a folder under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Timed repetitions of each step (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
}

#[derive(clap::Args, Debug)]
pub struct EncoderBenchArgs {
    /// One sentence per line (default: the project's own `benches/corpus/penumbra_sentences.txt`).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Use only the first N corpus sentences.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Timed rounds, each configuration once per round in turn; medians and spread are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Execution provider: cpu, cuda or tensorrt.
    #[arg(long, default_value = "cpu")]
    pub ep: String,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    pub fp16: bool,
    /// TensorRT: cache built engines in this folder.
    #[arg(long)]
    pub engine_cache: Option<PathBuf>,
    /// Run on the CPU when the chosen provider cannot register (off: fail loudly).
    #[arg(long)]
    pub allow_cpu_fallback: bool,
    /// Intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn encoder_bench(a: EncoderBenchArgs) -> anyhow::Result<ExitCode> {
    use crate::encoders::runtime::ExecutionProvider;
    let provider = match a.ep.as_str() {
        "cpu" => ExecutionProvider::Cpu,
        "cuda" => ExecutionProvider::Cuda { device_id: 0 },
        "tensorrt" => ExecutionProvider::TensorRt { device_id: 0, fp16: a.fp16, engine_cache_dir: a.engine_cache },
        other => anyhow::bail!("--ep: expected cpu, cuda or tensorrt, found `{other}`"),
    };
    let mut cfg = crate::encoders::bench::BenchConfig { limit: a.limit, rounds: a.rounds, ..Default::default() };
    if let Some(corpus) = a.corpus {
        cfg.corpus = corpus;
    }
    cfg.session.provider = provider;
    cfg.session.allow_cpu_fallback = a.allow_cpu_fallback;
    cfg.session.intra_threads = a.threads;
    let report = crate::encoders::bench::run(&cfg)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

const STAGES: usize = 8;

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    match a.what {
        BenchWhat::Store(s) => store_bench(s),
        BenchWhat::Encoders(e) => encoder_bench(e),
        BenchWhat::StoreStep { step, dir } => store_step(&step, &dir),
    }
}

fn bytes_of(gb: f64) -> u64 {
    (gb * 1e9) as u64
}

fn store_step(step: &str, dir: &Path) -> anyhow::Result<ExitCode> {
    let gb: f64 = std::fs::read_to_string(dir.join("gb"))?.trim().parse()?;
    let pipeline = synthetic_chain(STAGES, bytes_of(gb));
    let store = Store::open(dir.join("artifacts"))?;
    match step {
        "run" => {
            let s = pipeline.run(&store, &RunOptions::default())?;
            println!("{}", s.ran.len());
        }
        "status" => {
            let st = pipeline.status(&store, &[])?;
            println!("{}", st.iter().filter(|s| !s.is_fresh()).count());
        }
        other => anyhow::bail!("unknown step `{other}`"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `mmb bench store-step STEP DIR` `reps` times; returns (median seconds, last stdout).
fn time_step(step: &str, dir: &Path, reps: usize) -> anyhow::Result<(f64, String)> {
    let exe = std::env::current_exe()?;
    let mut times = Vec::new();
    let mut out = String::new();
    for _ in 0..reps {
        let t = Instant::now();
        let o = Command::new(&exe).args(["bench", "store-step", step]).arg(dir).output()?;
        times.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(o.status.success(), "store-step {step} failed: {}", String::from_utf8_lossy(&o.stderr));
        out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((times[times.len() / 2], out))
}

fn store_bench(a: StoreBenchArgs) -> anyhow::Result<ExitCode> {
    let dir = a.dir.unwrap_or_else(|| std::env::temp_dir().join("mmb-bench-store"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("gb"), a.gb.to_string())?;
    let store = Store::open(dir.join("artifacts"))?;
    let t = Instant::now();
    let first = synthetic_chain(STAGES, bytes_of(a.gb)).run(&store, &RunOptions::default())?;
    eprintln!("set-up: {} stages written in {:.1} s ({} already there)", first.ran.len(), t.elapsed().as_secs_f64(), first.fresh.len());
    let files: Vec<PathBuf> = store.list()?.into_iter().map(|(_, _, p)| p).collect();
    let total: u64 = files.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();

    let (noop, ran) = time_step("run", &dir, a.reps)?;
    anyhow::ensure!(ran == "0", "a no-op run ran {ran} stages");
    // Touch every artifact (content unchanged): names are hashes, so nothing should be stale or rehashed.
    for f in &files {
        std::fs::File::options().append(true).open(f)?.set_modified(std::time::SystemTime::now())?;
    }
    let (status, stale) = time_step("status", &dir, a.reps)?;
    anyhow::ensure!(stale == "0", "status after touch reports {stale} stale stages");

    // Warm the page cache, then time verify (blake3, mmap, all cores) against md5 over the same files (DVC's hash).
    store.verify()?;
    let t = Instant::now();
    let v = store.verify()?;
    let verify_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(v.mismatches.is_empty(), "verify found mismatches");
    let cores = rayon::current_num_threads() as f64;
    let md5 = Command::new("md5sum").args(&files).output().ok().filter(|o| o.status.success()).map(|_| ());
    let md5_s = md5.map(|_| {
        let t = Instant::now();
        let _ = Command::new("md5sum").args(&files).output();
        t.elapsed().as_secs_f64()
    });
    let gbps = total as f64 / 1e9 / verify_s;
    let report = serde_json::json!({
        "stages": STAGES,
        "bytes": total,
        "noop_run_s": noop,
        "status_after_touch_s": status,
        "verify_s": verify_s,
        "verify_gb_per_s": gbps,
        "verify_gb_per_s_per_core": gbps / cores,
        "cores": cores,
        "md5sum_s": md5_s,
        "verify_speedup_vs_md5": md5_s.map(|m| m / verify_s),
        "dvc_reference_same_machine_kind": { "noop_repro_s": 0.58, "status_after_touch_s": 3.9 },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
