//! Judging chains (eval_chains, PPO's rollouts): every chain of a stage in one encoder call
//! (`ChainJudge::judge_all`) against one chain at a time (`ChainJudge::judge`: one encoder call per chain,
//! where both stages made three per chain before session 16), with the shipped exact-match judge on the real
//! all-MiniLM-L6-v2 (set-up makes it).
//!
//! Run (dev profile, so the shared dependency builds are reused; the time is ONNX Runtime's either way):
//!   cargo bench --profile dev --bench judge
//! Read the ratio of the two medians of one run: the machine's noise moves both.
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mmboundary::stages::chain_judge::ChainJudge;
use mmboundary::stages::judges::{JudgeKind, JudgeParams};

const SIZES: [&str; 2] = ["small", "large"];
const COLOURS: [&str; 5] = ["red", "teal", "blue", "green", "yellow"];
const SHAPES: [&str; 4] = ["circle", "square", "hexagon", "triangle"];
const PLACES: [&str; 4] = ["top left", "top right", "bottom left", "bottom right"];
const STATEMENTS: [&str; 4] =
    ["and I am completely certain of this.", "I am far from sure of this.", "but I may well be wrong here.", "and this is well supported."];

/// `n` templated chains as the demo MLLM writes them (a perception sentence, a counting step, the answer),
/// each with a statement after every sentence and one fact in three changed, and the reference of each.
fn chains(n: usize) -> Vec<(String, Vec<String>)> {
    (0..n)
        .map(|i| {
            let (size, colour, shape, place) = (SIZES[i % 2], COLOURS[i % 5], SHAPES[i % 4], PLACES[(i / 4) % 4]);
            let (k, j) = (2 + i % 3, 1 + i % 2);
            let reference = vec![
                format!("There is a {size} {colour} solid {shape} at the {place}."),
                format!("There are {k} {shape}s. {k} is more than {j}."),
                format!("So, the answer is {}.", if i % 2 == 0 { "yes" } else { "no" }),
            ];
            let said_colour = if i % 3 == 0 { COLOURS[(i + 1) % 5] } else { colour };
            let text = format!(
                "There is a {size} {said_colour} solid {shape} at the {place} {} There are {k} {shape}s. {k} is more than {j}. {} \
                 So, the answer is {}. {}",
                STATEMENTS[i % 4],
                STATEMENTS[(i + 1) % 4],
                if i % 5 == 0 {
                    "maybe"
                } else if i % 2 == 0 {
                    "yes"
                } else {
                    "no"
                },
                STATEMENTS[(i + 2) % 4],
            );
            (text, reference)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let minilm = mmboundary::encoders::minilm::default_model_dir();
    assert!(minilm.join("onnx/model.onnx").is_file(), "{} missing: run scripts/setup.sh", minilm.display());
    let judge = JudgeParams { kind: JudgeKind::ExactMatch, cross_encoder: None };
    let cj = ChainJudge::load_judging(&minilm, &root.join("stages/statements.toml"), &judge, "bench").expect("the judge loads");
    // A PPO iteration's rollouts (16 prompts × 3) and a slice of eval (3 variants × 64 items).
    for n in [48, 192] {
        let data = chains(n);
        let refs: Vec<Vec<&str>> = data.iter().map(|(_, r)| r.iter().map(String::as_str).collect()).collect();
        let inputs: Vec<(&str, &[&str])> = data.iter().zip(&refs).map(|((t, _), r)| (t.as_str(), r.as_slice())).collect();
        let mut g = c.benchmark_group(format!("judge_{n}_chains"));
        g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_millis(500));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("all_at_once", |b| b.iter(|| black_box(cj.judge_all(black_box(&inputs)).unwrap())));
        g.bench_function("one_by_one", |b| {
            b.iter(|| {
                for &(text, reference) in &inputs {
                    black_box(cj.judge(black_box(text), reference).unwrap());
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
