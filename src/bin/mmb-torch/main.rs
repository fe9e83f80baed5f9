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
    if args.get(1).map(String::as_str) == Some("bench-vlm") {
        return bench_vlm(&args[1..]);
    }
    let [_, cmd, job, result] = args else {
        anyhow::bail!("usage: mmb-torch job JOB.json RESULT.json (started by `mmb run`, not by hand), or mmb-torch bench-vlm --help");
    };
    anyhow::ensure!(cmd == "job", "unknown command `{cmd}` (expected `job`)");
    let job = read_job(Path::new(job))?;
    if let Some(n) = mmboundary::runtime::init_threads()? {
        // Beside other stages (`mmb run -j N`): libtorch's and rayon's pools take the share, not every core.
        tch::set_num_threads(n as i32);
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
        eprintln!("{}: on {n} threads ({}={n})", job.stage, mmboundary::runtime::THREADS_ENV);
    }
    let out = jobs::run_job(&job, &MultiProgress::new())?;
    mmboundary::store::write_atomic(Path::new(result), &serde_json::to_vec(&out)?)?;
    Ok(())
}

/// One round of the VLM benchmark on our side (`jobs::bench_vlm`); `scripts/bench_vlm.py rounds` runs it.
#[derive(clap::Parser, Debug)]
#[command(name = "mmb-torch bench-vlm")]
struct BenchVlmArgs {
    /// A folder written by `scripts/bench_vlm.py build` (LLaVA-NeXT or Qwen2-VL).
    #[arg(long)]
    model: std::path::PathBuf,
    /// generate or train.
    #[arg(long)]
    task: String,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// The image (default: tests/fixtures/encoders/photos/chelsea.png).
    #[arg(long)]
    image: Option<std::path::PathBuf>,
    /// x,y,width,height cut from the image first.
    #[arg(long, value_delimiter = ',', num_args = 4, default_value = "0,0,448,300")]
    crop: Vec<u32>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 32)]
    response_len: usize,
}

fn bench_vlm(args: &[String]) -> anyhow::Result<()> {
    use clap::Parser;
    let a = BenchVlmArgs::parse_from(args);
    let cfg = jobs::bench_vlm::VlmBenchConfig {
        image: a.image.unwrap_or_else(|| jobs::bench_vlm::default_image(Path::new(env!("CARGO_MANIFEST_DIR")))),
        model_dir: a.model,
        crop: Some([a.crop[0], a.crop[1], a.crop[2], a.crop[3]]),
        dtype: jobs::bench_vlm::parse_dtype(&a.dtype)?,
        task: a.task,
        threads: a.threads,
        new_tokens: a.new_tokens,
        steps: a.steps,
        response_len: a.response_len,
    };
    println!("{}", serde_json::to_string(&jobs::bench_vlm::run(&cfg)?)?);
    Ok(())
}
