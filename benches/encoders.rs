//! Criterion throughput of the encoders (`cargo bench --bench encoders`): MiniLM fp32 and the int8 fast path
//! on the benchmark corpus (sentences/s), and the ViT-B/32-architecture CLIP image tower including decoding
//! and preprocessing (images/s). Missing model files are reported and skipped; `scripts/setup.sh` and
//! `scripts/export_onnx.py {minilm-int8, clip-b32-random}` make them. For the full JSON report with the
//! fast path's cosine against fp32, see `encoders::bench::run`.
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mmboundary::encoders::bench::{default_corpus, default_images, BenchConfig};
use mmboundary::encoders::clip::ClipImageEncoder;
use mmboundary::encoders::minilm::{SentenceEncoder, SentenceEncoderParams};

fn sentences(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(default_corpus()).expect("benchmark corpus (set MMB_BENCH_CORPUS)");
    text.lines().map(str::trim).filter(|l| !l.is_empty()).take(n).map(String::from).collect()
}

fn minilm(c: &mut Criterion) {
    let cfg = BenchConfig::default();
    let corpus = sentences(1000);
    let refs: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let mut group = c.benchmark_group("minilm");
    group.sample_size(10).throughput(Throughput::Elements(refs.len() as u64));
    for file in &cfg.minilm_files {
        if !cfg.minilm_dir.join(file).is_file() {
            eprintln!("skipping {}: missing", cfg.minilm_dir.join(file).display());
            continue;
        }
        let params = SentenceEncoderParams { onnx_file: file.clone(), batch: cfg.batch.clone(), ..Default::default() };
        let enc = SentenceEncoder::load(&cfg.minilm_dir, params, &cfg.session).unwrap();
        let name = format!("{} [{}; {}]", file.display(), enc.model().provider().name(), cfg.batch.describe());
        group.bench_function(name, |b| b.iter(|| enc.encode(&refs).unwrap()));
    }
    group.finish();
}

fn clip(c: &mut Criterion) {
    let cfg = BenchConfig::default();
    let images: Vec<PathBuf> = default_images().into_iter().cycle().take(32).collect();
    let mut group = c.benchmark_group("clip_vit_b32");
    group.sample_size(10).throughput(Throughput::Elements(images.len() as u64));
    for onnx in &cfg.clip_image_onnx {
        if !onnx.is_file() {
            eprintln!("skipping {}: missing (scripts/export_onnx.py clip-b32-random / clip-int8)", onnx.display());
            continue;
        }
        let mut enc = ClipImageEncoder::load(onnx, cfg.clip_preprocess.clone(), &cfg.session).unwrap();
        enc.batch_size = cfg.clip_batch_size;
        let name = format!("{} decode+preprocess+tower", onnx.file_name().unwrap().to_string_lossy());
        group.bench_function(name, |b| b.iter(|| enc.encode_files(&images).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, minilm, clip);
criterion_main!(benches);
