//! Per-item seeding: an item's sampled output depends on the seed and the item alone, not on which other
//! items share its generation batch (or, the same thing, its Slurm shard).
//! - `generate` (in `mmb-torch`) sampling at temperature 1 with batches of 1 and of 3: every chain's
//!   tokens are equal; its log-probs and entropies agree within 1e-5, not bit for bit (a left-padded
//!   batch reduces in another order);
//! - PPO rollouts (`rollout_k`'s sampler) of one prompt are the same whatever prompts share its step.
//! - `rollout_k`'s shard item list: a shard of iteration k's draw, drawn again, is itself.
use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Int64Type, UInt32Type};
use mmboundary::engine::{item_seed, Pipeline, RunOptions};
use mmboundary::store::{ArtifactId, Store};
use std::collections::BTreeMap;
use std::path::Path;

mod common;
#[path = "common/worker.rs"]
mod worker;

type Chain = (Vec<i64>, Vec<f32>, Vec<f32>);

fn pipeline(dir: &Path, batch: usize) -> Pipeline {
    use mmboundary::data::penumbra::PenumbraParams;
    use mmboundary::stages::dataset::{DatasetParams, DatasetStage};
    use mmboundary::stages::features::{FeaturesParams, FeaturesStage};
    use mmboundary::stages::generate::{GenerateParams, GenerateStage};
    let clip = common::fixtures().join("encoders/clip_tiny");
    Pipeline::new(vec![
        Box::new(DatasetStage {
            params: DatasetParams {
                penumbra: PenumbraParams { n_items: 16, image_size: 32, ..Default::default() },
                chunk: 8,
                ..Default::default()
            },
        }),
        Box::new(FeaturesStage {
            params: FeaturesParams { clip: Some(clip), batch: 4, merge: Some(1), ..Default::default() },
            session: Default::default(),
        }),
        Box::new(GenerateStage {
            params: GenerateParams {
                model: Some(dir.join("tiny-llava")),
                splits: vec!["train".into(), "val".into(), "test".into(), "ood".into()],
                samples: 2,
                batch,
                max_new_tokens: 10,
                // Sampling that matters: at 1.0 the tiny model's tokens follow the seed.
                temperature: 1.0,
                device: "cpu".into(),
                ..Default::default()
            },
        }),
    ])
    .unwrap()
}

fn chains(store: &Store, id: &ArtifactId) -> BTreeMap<(String, u32), Chain> {
    let b = store.read_table(id).unwrap().concat().unwrap();
    let ids = b.column_by_name("item_id").unwrap().as_string::<i32>();
    let sample = b.column_by_name("sample").unwrap().as_primitive::<UInt32Type>();
    let (tok, lp, ent) = (
        b.column_by_name("tokens").unwrap().as_list::<i32>(),
        b.column_by_name("logprobs").unwrap().as_list::<i32>(),
        b.column_by_name("entropies").unwrap().as_list::<i32>(),
    );
    (0..b.num_rows())
        .map(|i| {
            (
                (ids.value(i).to_string(), sample.value(i)),
                (
                    tok.value(i).as_primitive::<Int64Type>().values().to_vec(),
                    lp.value(i).as_primitive::<Float32Type>().values().to_vec(),
                    ent.value(i).as_primitive::<Float32Type>().values().to_vec(),
                ),
            )
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn generate_output(store: &Store) -> ArtifactId {
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    ArtifactId::parse(&lock.stages["generate"].outputs["chains"].id).unwrap()
}

#[test]
fn a_generated_chain_does_not_depend_on_the_batch_its_item_is_in() {
    worker::worker();
    let (dir, store, _) = common::tiny_llava_store();
    pipeline(dir.path(), 1).run(&store, &RunOptions::default()).unwrap();
    let alone = chains(&store, &generate_output(&store));
    pipeline(dir.path(), 3).run(&store, &RunOptions::default()).unwrap();
    let batched = chains(&store, &generate_output(&store));
    assert_eq!(alone.len(), 32, "16 items × 2 samples");
    // Sampling is live: the two samples of an item are not all the same chain.
    let differ = alone.iter().filter(|((id, s), c)| *s == 0 && alone[&(id.clone(), 1)].0 != c.0).count();
    assert!(differ >= 8, "only {differ} of 16 items have two different samples: the seed does not reach the sampler");
    let mut exact = 0;
    for (k, a) in &alone {
        let b = &batched[k];
        assert_eq!(a.0, b.0, "item {} sample {}: tokens differ between a batch of 1 and a batch of 3", k.0, k.1);
        // Not bit for bit: a left-padded batch sums the same products in another order (measured: up to
        // a few 1e-7 here), so the floats agree to rounding only.
        assert!(max_abs_diff(&a.1, &b.1) < 1e-5, "item {} sample {}: log-probs {:?} vs {:?}", k.0, k.1, a.1, b.1);
        assert!(max_abs_diff(&a.2, &b.2) < 1e-5, "item {} sample {}: entropies {:?} vs {:?}", k.0, k.1, a.2, b.2);
        exact += usize::from(a == b);
    }
    eprintln!("{exact} of {} chains bit-identical between batches of 1 and 3 (the rest within 1e-5)", alone.len());
}

#[test]
fn ppo_rollouts_of_a_prompt_do_not_depend_on_the_other_prompts_of_the_step() {
    use mllm::generate::GenerationParams;
    use mllm::ppo::{PpoParams, PpoPrompt, PpoTrainer};
    use tch::Device;
    let params = PpoParams {
        samples_per_prompt: 2,
        generation: GenerationParams { temperature: 1.0, max_new_tokens: 6, eos_token_ids: vec![-1], seed: 3, ..Default::default() },
        ..Default::default()
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mllm/tiny-llama");
    let (vs, lm) = mllm::llama::load_causal_lm(&fixtures, Device::Cpu, mllm::DType::F32).unwrap();
    let prompt = |i: i64| PpoPrompt { ids: vec![1, 10 + i, 20 + 2 * i, 30], images: vec![] };
    // (item id, prompt) per step: item "q1" first among three, then second of two with other company.
    let steps: [Vec<(&str, i64)>; 2] = [vec![("q1", 1), ("q2", 2), ("q3", 3)], vec![("q4", 4), ("q1", 1)]];
    let mut of_q1 = Vec::new();
    for step in &steps {
        let mut tr = PpoTrainer::new(&vs, lm.cfg.hidden_size, params.clone()).unwrap();
        let prompts: Vec<PpoPrompt> = step.iter().map(|(_, i)| prompt(*i)).collect();
        let seed_of = |i: usize, j: usize, st: usize| item_seed(3, step[i].0, ((st as u64) << 32) | j as u64);
        let out = tr.sample_seeded(&lm, &prompts, Some(&seed_of)).unwrap();
        assert_eq!(out.len(), 2 * step.len());
        let q1 = step.iter().position(|(id, _)| *id == "q1").unwrap();
        of_q1.push(out.into_iter().filter(|(o, _)| *o == q1).map(|(_, g)| (g.tokens, g.logprobs)).collect::<Vec<_>>());
    }
    assert_eq!(of_q1[0].len(), 2);
    assert_ne!(of_q1[0][0].0, of_q1[0][1].0, "the two samples of one prompt draw different streams");
    for j in 0..2 {
        assert_eq!(of_q1[0][j].0, of_q1[1][j].0, "q1's sample {j} changed with the prompts beside it");
        assert!(
            max_abs_diff(&of_q1[0][j].1, &of_q1[1][j].1) < 1e-5,
            "q1's sample {j}: log-probs {:?} vs {:?}",
            of_q1[0][j].1,
            of_q1[1][j].1
        );
    }
}

/// The seed is a function of (seed, item, stream) and of nothing else; each argument moves it.
#[test]
fn item_seed_depends_on_seed_item_and_stream() {
    let s = item_seed(0, "q1", 0);
    assert_eq!(s, item_seed(0, "q1", 0));
    assert_ne!(s, item_seed(1, "q1", 0));
    assert_ne!(s, item_seed(0, "q2", 0));
    assert_ne!(s, item_seed(0, "q1", 1));
}

/// `rollout_k`'s shard item list: iteration k's draw (hand-checked below), and a shard task, which sees
/// only its part of the draw, draws exactly that part again (it re-runs the same selection and draw on
/// its view), for every k and every part.
#[test]
fn a_shard_of_an_iteration_draw_draws_itself() {
    use mmboundary::data::Item;
    use mmboundary::engine::shard::shard_of;
    use mmboundary::stages::ppo::{draw, iteration_items, PpoStageParams};
    // Without replacement within a pass over the set: 16 questions, 6 a time: iterations 0 and 1 take 12
    // different ones, iteration 2 the last 4 of the first pass and 2 of a reshuffled second.
    let passes: Vec<Vec<usize>> = (0..3).map(|k| draw(16, 6, 5, k)).collect();
    let first_two: std::collections::BTreeSet<usize> = passes[0].iter().chain(&passes[1]).copied().collect();
    assert_eq!(first_two.len(), 12);
    let rest: std::collections::BTreeSet<usize> = (0..16).filter(|i| !first_two.contains(i)).collect();
    assert_eq!(passes[2][..4].iter().copied().collect::<std::collections::BTreeSet<_>>(), rest);

    // Each with a reference chain: PPO draws only among items its rewards can judge.
    let items: Vec<Item> = (0..16)
        .map(|i| {
            let mut it = Item::new(&format!("q{i}"), "test", if i % 4 == 3 { "val" } else { "train" }, "?");
            it.chain.reasoning.push(format!("step {i}"));
            it
        })
        .collect();
    let p = PpoStageParams { prompts_per_iteration: 6, limit: Some(10), seed: 5, ..Default::default() };
    for k in 0..4 {
        let drawn = iteration_items(&items, &p, k).unwrap();
        assert_eq!(drawn.len(), 6);
        // The selection: train items only, the first 10 of them.
        assert!(drawn.iter().all(|it| it.split == "train" && it.id[1..].parse::<usize>().unwrap() <= 12), "{drawn:?}");
        for of in [2, 4] {
            for s in 0..of {
                let part: Vec<Item> = drawn.iter().filter(|it| shard_of(&it.id, of) == s).map(|&it| it.clone()).collect();
                let again: std::collections::BTreeSet<&str> =
                    iteration_items(&part, &p, k).map(|v| v.iter().map(|it| it.id.as_str()).collect()).unwrap_or_default();
                let want: std::collections::BTreeSet<&str> = part.iter().map(|it| it.id.as_str()).collect();
                assert_eq!(again, want, "iteration {k}, shard {s} of {of}");
            }
        }
    }
}
