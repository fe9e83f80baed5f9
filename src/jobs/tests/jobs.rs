//! The worker's jobs called in-process (no `mmb-torch` process): prompts and image inputs on the tiny
//! LLaVA of the stage tests, policy checkpoints, the PPO tables' bookkeeping, trainer params, devices and
//! the job dispatch. Expected values are hand-computed (noted at each) or transformers' goldens.
#[path = "../../../tests/common/mod.rs"]
mod common;

use arrow::array::{AsArray, Float32Builder, ListBuilder, StringArray, UInt32Array};
use arrow::datatypes::{Float64Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use jobs::inputs::{overlay_params, prompt_template, Features, ImageInputs, Prompter};
use jobs::policy;
use jobs::ppo::{log_batch, rollouts_batch, rollouts_for_update, RolloutRow};
use mllm::family::Mllm;
use mllm::ppo::{PpoParams, PpoStats};
use mllm::sft::{FineTuneMode, SftParams};
use mllm::weights::write_safetensors;
use mmboundary::data::{Item, ReferenceChain};
use mmboundary::stages::ppo::{rollouts_schema, RolloutScore};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tch::{Device, Tensor};

fn item(id: &str, question: &str, choices: &[&str]) -> Item {
    Item {
        id: id.into(),
        source: "test".into(),
        split: "train".into(),
        question: question.into(),
        image: None,
        choices: choices.iter().map(|c| c.to_string()).collect(),
        correct_choice: None,
        direct_answers: vec![],
        answer: None,
        chain: ReferenceChain::default(),
        difficulty: None,
        captions: vec![],
        hard_negatives: vec![],
        meta: Default::default(),
    }
}

/// A `features` table: `rows` of (item id, n_patches, dim, values).
fn features_batch(rows: &[(&str, u32, u32, Vec<f32>)]) -> RecordBatch {
    let mut patches = ListBuilder::new(Float32Builder::new());
    for (_, _, _, v) in rows {
        patches.values().append_slice(v);
        patches.append(true);
    }
    RecordBatch::try_from_iter([
        ("item_id", Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())) as _),
        ("n_patches", Arc::new(UInt32Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())) as _),
        ("dim", Arc::new(UInt32Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())) as _),
        ("patches", Arc::new(patches.finish()) as _),
    ])
    .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.reshape([-1]).to_kind(tch::Kind::Float)).unwrap()
}

#[test]
fn the_prompt_is_the_models_own_chat_format_with_the_image_tokens_spliced_in() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = common::tiny_llava(dir.path());
    // Rendered from the folder's tokenizer_config.json: transformers' rendering of llava-1.5's template.
    let template = prompt_template(&Some(model_dir.clone()), &None, &model_dir, 99).unwrap();
    assert_eq!(template, common::llava_chat_template().1);
    // A `prompt` set in the params wins over the folder's template.
    assert_eq!(prompt_template(&Some(model_dir.clone()), &Some("{image} x".into()), &model_dir, 99).unwrap(), "{image} x");

    let (_vs, model) = Mllm::load(&model_dir, Device::Cpu, mllm::DType::F32).unwrap();
    let tok = Prompter::tokenizer(&model_dir).unwrap();
    let prompter = Prompter::new(&tok, &model, &template);
    // "USER: {image}\nQuestion: how many objects ?\nOptions: (A) red (B) blue ASSISTANT:", lower-cased and
    // split on whitespace and punctuation, in tests/common's word-level vocabulary ([UNK] 0, a 5,
    // question 12, options 13, red 16, blue 18, how 41, many 42, objects 43, ? 50, : 51, ( 52, ) 53;
    // "user", "b" and "assistant" are unknown), with three image tokens (99) where {image} was.
    let ids = prompter.prompt("how many objects ?", &["red".into(), "blue".into()], 3).unwrap();
    assert_eq!(ids, [0, 51, 99, 99, 99, 12, 51, 41, 42, 43, 50, 13, 51, 52, 5, 53, 16, 52, 0, 53, 18, 0, 51]);
    // An instruction closes the user's turn on a line of its own, after the options.
    let asked = Prompter::new(&tok, &model, &template).with_instruction(Some("so answer"));
    let ids = asked.prompt("how many objects ?", &["red".into()], 1).unwrap();
    assert_eq!(ids, [0, 51, 99, 12, 51, 41, 42, 43, 50, 13, 51, 52, 5, 53, 16, 10, 11, 0, 51]);
}

#[test]
fn llava_image_inputs_are_the_items_clip_patch_features() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = common::tiny_llava(dir.path());
    let (_vs, model) = Mllm::load(&model_dir, Device::Cpu, mllm::DType::F32).unwrap();
    let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..8).map(|i| -(i as f32)).collect();
    let batch = features_batch(&[("q1", 3, 2, a.clone()), ("q2", 2, 4, b.clone())]);
    let images = ImageInputs::new(&model, &model_dir, &batch).unwrap();
    assert!(matches!(images, ImageInputs::Features(_)));
    // One image token per patch row, and the rows exactly as stored, [n_patches, dim].
    let (n, t) = images.get(&model, &item("q1", "", &[])).unwrap();
    assert_eq!((n, t.len()), (3, 1));
    assert_eq!(t[0].size(), [3, 2]);
    assert_eq!(values(&t[0]), a);
    let (n, t) = images.get(&model, &item("q2", "", &[])).unwrap();
    assert_eq!((n, t[0].size(), values(&t[0])), (2, vec![2, 4], b));
    let e = images.get(&model, &item("q9", "", &[])).unwrap_err();
    assert_eq!(format!("{e:#}"), "item q9: no CLIP features");
    // A features table without a column it reads is refused by name.
    let cut = RecordBatch::try_from_iter([("item_id", Arc::new(StringArray::from(vec!["q1"])) as _)]).unwrap();
    let e = Features::from_batch(&cut).err().unwrap();
    assert_eq!(e.to_string(), "features artifact has no column `n_patches`");
    assert!(
        matches!(&e, jobs::JobError::MissingColumn { table, column } if table == "features artifact" && column == "n_patches"),
        "{e:?}"
    );
}

#[test]
fn trainer_params_overlay_the_defaults_key_by_key_and_refuse_unknown_keys() {
    let over = serde_json::json!({"kl_coef": 0.25, "generation": {"max_new_tokens": 7}});
    let tp: PpoParams = overlay_params(&over, "ppo.trainer").unwrap();
    let d = PpoParams::default();
    assert_eq!(tp.kl_coef, 0.25);
    assert_eq!(tp.generation.max_new_tokens, 7);
    // The nested table is merged, not replaced: its other keys keep their defaults.
    assert_eq!(tp.generation.temperature, d.generation.temperature);
    assert_eq!(tp.clip_range, d.clip_range);
    let none: PpoParams = overlay_params(&serde_json::Value::Null, "ppo.trainer").unwrap();
    assert_eq!(serde_json::to_value(none).unwrap(), serde_json::to_value(d).unwrap());
    let e = overlay_params::<PpoParams>(&serde_json::json!({"generation": {"bogus": 1}}), "ppo.trainer").unwrap_err();
    assert!(e.to_string().starts_with("ppo.trainer.generation: unknown key `bogus` (known: "), "{e}");
    let e = overlay_params::<PpoParams>(&serde_json::json!(3), "ppo.trainer").unwrap_err();
    assert_eq!(e.to_string(), "ppo.trainer: expected a table, found 3");
    assert!(matches!(&e, jobs::JobError::Param { field, .. } if field == "ppo.trainer"), "{e:?}");
}

#[test]
fn a_checkpoint_restores_every_trained_weight_and_refuses_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = common::tiny_llava(dir.path());
    let base = policy::load(&model_dir, Device::Cpu, mllm::DType::F32, None).unwrap();
    assert!(base.sft.is_none() && !base.has_lora());
    let vars = base.vs.variables();
    let full = serde_json::to_string(&SftParams { mode: FineTuneMode::Full, ..SftParams::default() }).unwrap();
    let meta = |params: Option<&str>| -> HashMap<String, String> {
        params.map(|p| HashMap::from([("params".to_string(), p.to_string())])).unwrap_or_default()
    };
    // Every weight + 0.5, and a value head (a PPO checkpoint's), which a plain policy skips.
    let mut tensors: Vec<(String, Tensor)> = vars.iter().map(|(n, t)| (format!("param.{n}"), t.detach() + 0.5)).collect();
    tensors.push(("param.v_head.summary.weight".into(), Tensor::zeros([1, 48], (tch::Kind::Float, Device::Cpu))));
    let ck = dir.path().join("full.safetensors");
    write_safetensors(&ck, &tensors, meta(Some(&full))).unwrap();
    let p = policy::load(&model_dir, Device::Cpu, mllm::DType::F32, Some(&ck)).unwrap();
    assert_eq!(p.sft_meta.as_deref(), Some(full.as_str()));
    assert!(matches!(p.sft.as_ref().unwrap().mode, FineTuneMode::Full));
    let got = p.vs.variables();
    assert_eq!(got.len(), vars.len());
    for (name, t) in &vars {
        assert_eq!(values(&got[name]), values(&(t.detach() + 0.5)), "{name}");
    }

    // A trained weight missing, a weight of no variable, no `params`: each refused, naming it.
    let dropped = format!("param.{}", vars.iter().find(|(_, t)| t.requires_grad()).unwrap().0);
    let fewer: Vec<(String, Tensor)> = tensors.iter().filter(|(n, _)| *n != dropped).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    let at = dir.path().join("fewer.safetensors");
    write_safetensors(&at, &fewer, meta(Some(&full))).unwrap();
    let e = policy::load(&model_dir, Device::Cpu, mllm::DType::F32, Some(&at)).err().unwrap().to_string();
    assert_eq!(e, format!("{}: checkpoint lacks trained weight(s) {}", at.display(), &dropped["param.".len()..]));
    let mut more: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    more.push(("param.bogus.weight".into(), Tensor::zeros([2], (tch::Kind::Float, Device::Cpu))));
    let at = dir.path().join("more.safetensors");
    write_safetensors(&at, &more, meta(Some(&full))).unwrap();
    let e = policy::load(&model_dir, Device::Cpu, mllm::DType::F32, Some(&at)).err().unwrap().to_string();
    assert!(e.starts_with(&format!("{}: checkpoint weights [\"param.bogus.weight\"] match no variable", at.display())), "{e}");
    let at = dir.path().join("bare.safetensors");
    write_safetensors(&at, &tensors, meta(None)).unwrap();
    let e = policy::load(&model_dir, Device::Cpu, mllm::DType::F32, Some(&at)).err().unwrap().to_string();
    assert_eq!(e, format!("{}: checkpoint metadata has no `params` (expected an sft or ppo checkpoint)", at.display()));
}

fn score(token_rewards: Vec<(usize, f64)>, ka: f64, ec: f64, cs: f64) -> RolloutScore {
    RolloutScore {
        sentences: vec!["the circle is red .".into()],
        statements: vec![Some("i am sure".into())],
        expressed: vec![Some(0.9)],
        internal: vec![0.8],
        levels: vec![4],
        correct: vec![true],
        ka,
        ec,
        cs,
        total: token_rewards.iter().map(|r| r.1).sum(),
        token_rewards,
    }
}

#[test]
fn rollouts_written_by_rollout_k_are_what_update_k_trains_on() {
    let row = |item: &str, sample: u32, tokens: Vec<i64>, s: RolloutScore| RolloutRow {
        iteration: 3,
        item: item.into(),
        sample,
        text: "the circle is red .".into(),
        tokens,
        score: s,
    };
    let rows = vec![
        row("q2", 0, vec![4, 24, 6, 16, 48, 3], score(vec![(4, 0.25), (5, -0.5)], 0.1, 0.2, 0.3)),
        row("q1", 0, vec![5, 3], score(vec![(1, 1.0)], -0.4, 0.0, 0.6)),
        row("q2", 1, vec![14], score(vec![], 0.0, 0.5, 0.0)),
    ];
    let b = rollouts_batch(&rows, "minilm").unwrap();
    assert_eq!(b.schema(), rollouts_schema());
    assert_eq!(b.column_by_name("judge").unwrap().as_string::<i32>().value(2), "minilm");
    // Iteration 3 drew q1 then q2: rows map to those prompt indices.
    let items = [item("q1", "", &[]), item("q2", "", &[])];
    let (sampled, scores) = rollouts_for_update(&b, "rollouts.parquet", &items, 3).unwrap();
    assert_eq!(sampled, vec![(1, vec![4, 24, 6, 16, 48, 3]), (0, vec![5, 3]), (1, vec![14])]);
    assert_eq!(scores[0].token_rewards, [(4, 0.25), (5, -0.5)]);
    assert_eq!(scores[1].token_rewards, [(1, 1.0)]);
    assert!(scores[2].token_rewards.is_empty());
    let parts = |ka: f64, ec: f64, cs: f64, r: f64| {
        BTreeMap::from([("r_ka".to_string(), ka), ("r_ec".to_string(), ec), ("r_cs".to_string(), cs), ("reward".to_string(), r)])
    };
    assert_eq!(scores[0].components, parts(0.1, 0.2, 0.3, -0.25));
    assert_eq!(scores[1].components, parts(-0.4, 0.0, 0.6, 1.0));
    assert_eq!(scores[2].components, parts(0.0, 0.5, 0.0, 0.0));
    // Rollouts of another draw (an item not among the iteration's questions) are refused by row.
    let e = rollouts_for_update(&b, "rollouts.parquet", &items[..1], 3).unwrap_err();
    assert_eq!(e.to_string(), "rollouts.parquet: row 0: item q2 is not among iteration 3's questions (stale rollouts?)");
    assert!(matches!(&e, jobs::JobError::File { path, .. } if path == std::path::Path::new("rollouts.parquet")), "{e:?}");
}

#[test]
fn the_ppo_log_has_one_row_per_iteration_and_nan_for_a_missing_reward_part() {
    let stats = PpoStats {
        score_mean: 0.5,
        kl: 0.01,
        policy_entropy: 2.0,
        clip_fraction: 0.125,
        value_loss: 0.3,
        policy_loss: -0.2,
        approx_kl: 0.002,
        response_length: 12.0,
        components: BTreeMap::from([("r_ka".to_string(), 0.75), ("reward".to_string(), 0.5)]),
        ..PpoStats::default()
    };
    let b = log_batch(&[(2, stats, 9.5)]).unwrap();
    assert_eq!(b.num_rows(), 1);
    assert_eq!(b.column_by_name("iteration").unwrap().as_primitive::<UInt32Type>().value(0), 2);
    let f = |n: &str| b.column_by_name(n).unwrap().as_primitive::<Float64Type>().value(0);
    let expect = [
        ("score_mean", 0.5),
        ("kl", 0.01),
        ("policy_entropy", 2.0),
        ("clip_fraction", 0.125),
        ("value_loss", 0.3),
        ("policy_loss", -0.2),
        ("approx_kl", 0.002),
        ("response_length", 12.0),
        ("r_ka", 0.75),
        ("reward", 0.5),
        ("seconds", 9.5),
    ];
    for (n, v) in expect {
        assert_eq!(f(n), v, "{n}");
    }
    assert!(f("r_ec").is_nan() && f("r_cs").is_nan());
}

#[test]
fn a_stage_runs_on_the_device_it_names_and_a_gpu_request_fails_clearly_without_one() {
    assert_eq!(policy::device("generate", "cpu").unwrap(), Device::Cpu);
    if !tch::Cuda::is_available() {
        let e = policy::device("generate", "cuda").unwrap_err();
        assert!(format!("{e:#}").starts_with("generate: device = \"cuda\": "), "{e:#}");
    }
}

#[test]
fn a_job_for_a_stage_the_worker_does_not_have_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let job = mmboundary::engine::WorkerJob {
        stage: "score".into(),
        store: dir.path().to_path_buf(),
        params: serde_json::Value::Null,
        inputs: Default::default(),
        outputs: vec![],
        lineage: Default::default(),
    };
    let e = jobs::run_job(&job, &indicatif::MultiProgress::new()).unwrap_err();
    assert_eq!(e.to_string(), "mmb-torch has no stage `score`");
    assert!(matches!(&e, jobs::JobError::UnknownStage(s) if s == "score"), "{e:?}");
}
