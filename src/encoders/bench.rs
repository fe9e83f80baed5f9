//! Encoder throughput: sentences/s and non-pad tokens/s for sentence encoders (fp32 and the int8 fast path,
//! with the fast path's minimum cosine against fp32), images/s for a CLIP image tower including decoding and
//! preprocessing. Model loading and one warm-up batch are outside the timed region. `scripts/bench_baselines.py`
//! measures sentence-transformers, Python onnxruntime and transformers' CLIP on the same inputs.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::batching::BatchPolicy;
use super::clip::{ClipImageEncoder, ClipPreprocess};
use super::minilm::{default_model_dir, SentenceEncoder, SentenceEncoderParams};
use super::runtime::SessionOptions;
use super::{cosine, EncoderError, Result};

/// What to measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BenchConfig {
    /// One sentence per line (default: the project's own `benches/corpus/penumbra_sentences.txt`, 4,000 sentences).
    pub corpus: PathBuf,
    /// Use only the first N sentences.
    pub limit: Option<usize>,
    pub minilm_dir: PathBuf,
    /// Sentence-encoder ONNX files to time (relative to `minilm_dir`); the first is the fp32 reference the
    /// others are compared with.
    pub minilm_files: Vec<PathBuf>,
    /// CLIP image towers to time (e.g. the ViT-B/32-architecture export and its int8 fast path); the first is
    /// the reference the others are compared with (cosine of image embeddings). Empty: no images.
    pub clip_image_onnx: Vec<PathBuf>,
    pub clip_preprocess: ClipPreprocess,
    /// Image files, decoded and preprocessed inside the timed region.
    pub images: Vec<PathBuf>,
    /// Times the image list is repeated.
    pub image_repeat: usize,
    pub clip_batch_size: usize,
    /// Timed rounds: each round times every configuration once, in turn (interleaved, so a slow spell of a
    /// noisy machine hits all of them); the report gives each one's median and spread over the rounds.
    pub rounds: usize,
    pub session: SessionOptions,
    pub batch: BatchPolicy,
}

impl Default for BenchConfig {
    fn default() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Self {
            corpus: default_corpus(),
            limit: None,
            minilm_dir: default_model_dir(),
            minilm_files: vec![PathBuf::from("onnx/model.onnx"), PathBuf::from("onnx/model_int8.onnx")],
            clip_image_onnx: vec![
                root.join(".deps/models/clip-vit-b32-random/image.onnx"),
                root.join(".deps/models/clip-vit-b32-random/image_int8.onnx"),
            ],
            clip_preprocess: ClipPreprocess::default(),
            images: default_images(),
            image_repeat: 8,
            clip_batch_size: 16,
            rounds: 1,
            session: SessionOptions::default(),
            batch: BatchPolicy::default(),
        }
    }
}

/// The benchmark corpus: `$MMB_BENCH_CORPUS`, else the project's own (`mmb data corpus`, committed).
pub fn default_corpus() -> PathBuf {
    match std::env::var_os("MMB_BENCH_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/corpus/penumbra_sentences.txt"),
    }
}

/// `.deps/bench/images/*` (written by `scripts/bench_baselines.py` from scikit-image's photos), else the test
/// fixture photos.
pub fn default_images() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [root.join(".deps/bench/images"), root.join("tests/fixtures/encoders/photos")] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    (name.ends_with(".jpg") || name.ends_with(".png")) && !name.contains(".codes")
                })
                .collect();
            files.sort();
            if !files.is_empty() {
                return files;
            }
        }
    }
    Vec::new()
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchEntry {
    pub model: String,
    pub file: PathBuf,
    /// The provider the session really ran on.
    pub ep: String,
    pub threads: usize,
    pub batch_policy: String,
    pub items: usize,
    /// Median over the rounds.
    pub seconds: f64,
    /// Each round's seconds, in round order.
    pub round_seconds: Vec<f64>,
    /// Median over the rounds.
    pub sentences_per_s: Option<f64>,
    pub non_pad_tokens_per_s: Option<f64>,
    /// Padded tokens / non-pad tokens (1.0 = no padding).
    pub padding_overhead: Option<f64>,
    /// Median over the rounds.
    pub images_per_s: Option<f64>,
    /// (slowest, fastest) items per second over the rounds.
    pub spread_per_s: (f64, f64),
    /// Each round's CPU seconds of this process over (wall seconds × threads): near 1 when the encoder's threads
    /// had the cores to themselves, lower when another process took them (`None` where not measurable).
    pub round_cpu_share: Vec<Option<f64>>,
    /// Against the first (fp32) sentence-encoder file, over the whole corpus.
    pub min_cosine_vs_reference: Option<f32>,
    pub mean_cosine_vs_reference: Option<f32>,
    pub truncated: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub corpus: PathBuf,
    pub sentences: usize,
    pub images: usize,
    pub entries: Vec<BenchEntry>,
    /// Configurations not measured, with why (a missing file, …).
    pub skipped: Vec<String>,
    /// What else the machine was doing: a throughput figure taken while other processes held the cores
    /// measures them, not the encoders (ONNX Runtime's threads wait for each other at every operator).
    pub machine: MachineLoad,
    /// Why these figures should not be quoted, if they should not.
    pub warnings: Vec<String>,
}

/// The machine's load around the timed rounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineLoad {
    pub cores: usize,
    /// The benchmark's own threads: the load average counts them too.
    #[serde(default)]
    pub bench_threads: usize,
    /// 1-minute load average before the first and after the last timed round (`None` off Linux).
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
}

/// Below this CPU share a round lost a noticeable part of its time to other processes.
pub const CONTENDED_CPU_SHARE: f64 = 0.85;

/// Runnable work of other processes (load average beyond the benchmark's own threads) from which the machine
/// counts as busy: half a core, on average over the last minute.
pub const OTHERS_LOAD_LIMIT: f64 = 0.5;

/// The 1-minute load average (Linux `/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// CPU seconds (user + system) this process has used so far.
pub fn process_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// The warnings a report carries: a machine with other work (load average beyond the benchmark's own threads,
/// by at least [`OTHERS_LOAD_LIMIT`]) when the rounds began or ended, and each configuration whose median round had less than [`CONTENDED_CPU_SHARE`] of its threads' time.
pub fn contention_warnings(machine: &MachineLoad, entries: &[(String, Vec<Option<f64>>)]) -> Vec<String> {
    let mut out = Vec::new();
    let own = machine.bench_threads as f64;
    for (when, load) in [("before", machine.load_before), ("after", machine.load_after)] {
        if let Some(load) = load.filter(|&l| l - own >= OTHERS_LOAD_LIMIT) {
            out.push(format!(
                "load average {load:.2} on {} cores {when} the timed rounds, {:.2} beyond the benchmark's own {} threads: other processes competed for the cores, so these figures measure the contention",
                machine.cores,
                load - own,
                machine.bench_threads
            ));
        }
    }
    for (name, shares) in entries {
        let mut known: Vec<f64> = shares.iter().flatten().copied().collect();
        if known.is_empty() {
            continue;
        }
        let share = median(&known);
        known.sort_by(f64::total_cmp);
        if share < CONTENDED_CPU_SHARE {
            out.push(format!(
                "{name}: its threads were on a CPU for {:.0} % of the median round (lowest {:.0} %): another process held the cores",
                share * 100.0,
                known[0] * 100.0
            ));
        }
    }
    out
}

fn read_corpus(path: &Path, limit: Option<usize>) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| EncoderError::MissingFile {
        what: "benchmark corpus",
        path: path.to_path_buf(),
        hint: format!(" ({e}; set MMB_BENCH_CORPUS or BenchConfig::corpus)"),
    })?;
    let mut lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if let Some(n) = limit {
        lines.truncate(n);
    }
    if lines.is_empty() {
        return Err(EncoderError::BadInput { item: path.display().to_string(), reason: "corpus has no sentences".into() });
    }
    Ok(lines)
}

/// Median of a non-empty list.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (median seconds, each round's seconds, (slowest, fastest) items/s) of `items` timed over rounds.
fn summarize(items: usize, rounds: &[f64]) -> (f64, Vec<f64>, (f64, f64)) {
    let rates: Vec<f64> = rounds.iter().map(|s| items as f64 / s).collect();
    let spread = (rates.iter().copied().fold(f64::INFINITY, f64::min), rates.iter().copied().fold(0.0, f64::max));
    (median(rounds), rounds.to_vec(), spread)
}

fn cosines(reference: &super::Embeddings, other: &super::Embeddings) -> (Option<f32>, Option<f32>) {
    let cs: Vec<f32> = (0..reference.len()).map(|i| cosine(reference.row(i), other.row(i))).collect();
    (cs.iter().copied().reduce(f32::min), Some(cs.iter().sum::<f32>() / cs.len() as f32))
}

/// Runs every configured measurement: models are loaded and warmed up once, then `rounds` rounds time each
/// configuration in turn.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let sentences = read_corpus(&cfg.corpus, cfg.limit)?;
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let threads = cfg.session.threads();
    let rounds = cfg.rounds.max(1);
    let mut skipped = Vec::new();

    let mut text_encoders = Vec::new();
    for (k, file) in cfg.minilm_files.iter().enumerate() {
        let full = cfg.minilm_dir.join(file);
        if !full.is_file() {
            if k == 0 {
                return Err(EncoderError::MissingFile {
                    what: "reference sentence-encoder ONNX",
                    path: full,
                    hint: " (run scripts/setup.sh)".into(),
                });
            }
            skipped.push(format!("{}: missing (make it with scripts/export_onnx.py minilm-int8)", full.display()));
            continue;
        }
        let params = SentenceEncoderParams { onnx_file: file.clone(), batch: cfg.batch.clone(), ..Default::default() };
        let enc = SentenceEncoder::load(&cfg.minilm_dir, params, &cfg.session)?;
        enc.encode(&refs[..refs.len().min(64)])?; // warm-up
        text_encoders.push((full, enc));
    }
    let mut image_encoders = Vec::new();
    let images: Vec<PathBuf> = (0..cfg.image_repeat.max(1)).flat_map(|_| cfg.images.iter().cloned()).collect();
    for onnx in &cfg.clip_image_onnx {
        if !onnx.is_file() {
            skipped.push(format!("{}: missing (make it with scripts/export_onnx.py clip-b32-random / clip-int8)", onnx.display()));
            continue;
        }
        if cfg.images.is_empty() {
            skipped.push("CLIP: no images configured".into());
            break;
        }
        let mut enc = ClipImageEncoder::load(onnx, cfg.clip_preprocess.clone(), &cfg.session)?;
        enc.batch_size = cfg.clip_batch_size.max(1);
        enc.encode_files(&images[..images.len().min(enc.batch_size)])?; // warm-up
        image_encoders.push((onnx.clone(), enc));
    }

    // Interleaved rounds; the outputs of the last round give the agreement figures (they are the same every round).
    let mut text_times = vec![Vec::new(); text_encoders.len()];
    let mut image_times = vec![Vec::new(); image_encoders.len()];
    let mut text_shares = vec![Vec::new(); text_encoders.len()];
    let mut image_shares = vec![Vec::new(); image_encoders.len()];
    let cpu_share = |cpu0: Option<f64>, wall: f64| -> Option<f64> {
        let used = process_cpu_seconds()? - cpu0?;
        (wall > 0.0).then(|| used / (wall * threads as f64))
    };
    let load_before = load_average();
    let mut text_out = Vec::new();
    let mut image_out = Vec::new();
    for _ in 0..rounds {
        text_out.clear();
        for (k, (_, enc)) in text_encoders.iter().enumerate() {
            let (cpu0, t0) = (process_cpu_seconds(), Instant::now());
            let out = enc.encode(&refs)?;
            let wall = t0.elapsed().as_secs_f64();
            text_times[k].push(wall);
            text_shares[k].push(cpu_share(cpu0, wall));
            text_out.push(out);
        }
        image_out.clear();
        for (k, (_, enc)) in image_encoders.iter().enumerate() {
            let (cpu0, t0) = (process_cpu_seconds(), Instant::now());
            let out = enc.encode_files(&images)?;
            let wall = t0.elapsed().as_secs_f64();
            image_times[k].push(wall);
            image_shares[k].push(cpu_share(cpu0, wall));
            image_out.push(out);
        }
    }

    let mut entries = Vec::new();
    for (k, ((file, enc), out)) in text_encoders.iter().zip(&text_out).enumerate() {
        let (secs, round_seconds, spread) = summarize(refs.len(), &text_times[k]);
        let (min_cos, mean_cos) = if k == 0 { (None, None) } else { cosines(&text_out[0].embeddings, &out.embeddings) };
        entries.push(BenchEntry {
            model: "all-MiniLM-L6-v2".into(),
            file: file.clone(),
            ep: enc.model().provider().name().into(),
            threads,
            batch_policy: cfg.batch.describe(),
            items: refs.len(),
            seconds: secs,
            round_seconds,
            round_cpu_share: text_shares[k].clone(),
            sentences_per_s: Some(refs.len() as f64 / secs),
            non_pad_tokens_per_s: Some(out.non_pad_tokens as f64 / secs),
            padding_overhead: Some(out.padded_tokens as f64 / out.non_pad_tokens.max(1) as f64),
            images_per_s: None,
            spread_per_s: spread,
            min_cosine_vs_reference: min_cos,
            mean_cosine_vs_reference: mean_cos,
            truncated: out.truncated.len(),
        });
    }
    let n_images = if image_encoders.is_empty() { 0 } else { images.len() };
    for (k, ((onnx, enc), out)) in image_encoders.iter().zip(&image_out).enumerate() {
        let (secs, round_seconds, spread) = summarize(n_images, &image_times[k]);
        let (min_cos, mean_cos) = if k == 0 { (None, None) } else { cosines(&image_out[0].embeddings, &out.embeddings) };
        entries.push(BenchEntry {
            model: "CLIP image tower".into(),
            file: onnx.clone(),
            ep: enc.model().provider().name().into(),
            threads,
            batch_policy: format!("{} images per call, decode+preprocess included (rayon)", enc.batch_size),
            items: n_images,
            seconds: secs,
            round_seconds,
            round_cpu_share: image_shares[k].clone(),
            sentences_per_s: None,
            non_pad_tokens_per_s: None,
            padding_overhead: None,
            images_per_s: Some(n_images as f64 / secs),
            spread_per_s: spread,
            min_cosine_vs_reference: min_cos,
            mean_cosine_vs_reference: mean_cos,
            truncated: 0,
        });
    }
    let machine = MachineLoad { cores: threads_available(), bench_threads: threads, load_before, load_after: load_average() };
    let named: Vec<(String, Vec<Option<f64>>)> =
        entries.iter().map(|e| (e.file.display().to_string(), e.round_cpu_share.clone())).collect();
    let warnings = contention_warnings(&machine, &named);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(BenchReport { corpus: cfg.corpus.clone(), sentences: refs.len(), images: n_images, entries, skipped, machine, warnings })
}

fn threads_available() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
