//! TokenSAR: all deletions of a dataset in one similarity call (batched) against one call per sentence
//! (lm-polygraph's loop). The similarity model is a deterministic test double that costs a fixed time
//! per call plus a fixed time per pair (busy-waited), so the figure isolates what batching saves in
//! call overhead; the real MiniLM / cross-encoder figure comes once src/encoders lands.
//!
//! Run (dev profile, so the shared dependency builds are reused):
//!   cargo bench --profile dev --bench tokensar
//! Cost model: TOKENSAR_CALL_US (default 500) per call, TOKENSAR_PAIR_US (default 40) per pair.
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmboundary::confidence::uncertainty::{token_sar_batched, token_sar_loop, ResponseTokens, SentenceTokens, TokenInfo, TokenSarParams};
use mmboundary::confidence::{EncoderError, PairSimilarity};

struct CostedDouble {
    per_call: Duration,
    per_pair: Duration,
}

fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

impl PairSimilarity for CostedDouble {
    fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
        spin(self.per_call + self.per_pair * pairs.len() as u32);
        Ok(pairs.iter().map(|(a, b)| b.len() as f32 / a.len().max(1) as f32).collect())
    }
}

fn env_us(name: &str, default: u64) -> Duration {
    Duration::from_micros(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

/// `responses` × 4 sentences × 12 tokens, with a 200-character prompt and an EOS on the last sentence.
fn dataset(responses: usize) -> Vec<ResponseTokens> {
    let words = [" the", " cake", " shows", " thirty", " candles", " on", " a", " gray", " bear", " table"];
    (0..responses)
        .map(|i| ResponseTokens {
            prompt: format!("USER: <image>\nQuestion {i}: {} ASSISTANT:", "why is this so? ".repeat(12)),
            sentences: (0..4)
                .map(|t| SentenceTokens {
                    tokens: (0..12)
                        .map(|k| TokenInfo {
                            id: (i * 97 + t * 13 + k) as u32,
                            text: words[(i + t + k) % words.len()].to_string(),
                            log_prob: -0.05 * ((i + k) % 7) as f64 - 0.01,
                            entropy: 0.1 * ((t + k) % 5) as f64,
                            is_special: false,
                        })
                        .chain((t == 3).then(|| TokenInfo { id: 2, text: "</s>".into(), log_prob: -0.01, entropy: 0.0, is_special: true }))
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = dataset(16);
    let sentences: usize = data.iter().map(|r| r.sentences.len()).sum();
    let params = TokenSarParams::default();
    let models = [
        ("overhead_only", CostedDouble { per_call: Duration::ZERO, per_pair: Duration::ZERO }),
        ("costed", CostedDouble { per_call: env_us("TOKENSAR_CALL_US", 500), per_pair: env_us("TOKENSAR_PAIR_US", 40) }),
    ];
    let mut group = c.benchmark_group("tokensar");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(sentences as u64));
    for (name, model) in &models {
        group.bench_with_input(BenchmarkId::new("batched", name), model, |b, m| {
            b.iter(|| black_box(token_sar_batched(black_box(&data), m, &params).unwrap()))
        });
        group.bench_with_input(BenchmarkId::new("loop", name), model, |b, m| {
            b.iter(|| black_box(token_sar_loop(black_box(&data), m, &params).unwrap()))
        });
    }
    group.finish();

    // The real judge: all-MiniLM-L6-v2 on ONNX Runtime (cosine of embeddings as g), when set-up made it.
    let dir = mmboundary::encoders::minilm::default_model_dir();
    if dir.join("onnx/model.onnx").is_file() {
        let enc = mmboundary::encoders::minilm::SentenceEncoder::load(&dir, Default::default(), &Default::default()).expect("MiniLM loads");
        let sim = mmboundary::confidence::similarity::CosineOfEmbeddings(mmboundary::stages::judges::MiniLmEmbedder(enc));
        let mut g = c.benchmark_group("tokensar_minilm");
        g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_millis(500));
        g.throughput(Throughput::Elements(sentences as u64));
        g.bench_function("batched", |b| b.iter(|| black_box(token_sar_batched(black_box(&data), &sim, &params).unwrap())));
        g.bench_function("loop", |b| b.iter(|| black_box(token_sar_loop(black_box(&data), &sim, &params).unwrap())));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
