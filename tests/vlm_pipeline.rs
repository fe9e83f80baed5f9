//! The paper's backbones through every stage, set only through configuration (`model = DIR`): dataset →
//! features → generate → score → bin → map → sft → one PPO iteration → eval → report on the tiny random
//! LLaVA-NeXT and Qwen2-VL folders of the backbone goldens (their image processors and vision towers run
//! in the worker; the values of those paths are checked against transformers in tests/backbones.rs).
use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};
use mmboundary::engine::{LockFile, RunOptions};
use mmboundary::store::{ArtifactId, ArtifactKind, Store};
use std::path::{Path, PathBuf};

mod common;
#[path = "common/worker.rs"]
mod worker;
use common::tiny::pipeline_k;
use common::{tiny_llava_next, tiny_qwen2_vl};
use worker::worker;

/// Runs the pipeline on the folder `make` writes and checks what every family must give; returns the
/// trained checkpoint's tensor names.
fn through_every_stage(make: fn(&Path) -> PathBuf, image_token: i64) -> Vec<String> {
    worker();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("artifacts")).unwrap();
    let model = make(dir.path());
    let s = pipeline_k(&model, 1.0 / 3.0, 1).run(&store, &RunOptions::default()).unwrap();
    eprintln!("{}: {:.1} s", model.display(), s.seconds);
    let expected =
        ["dataset", "features", "generate", "score", "bin", "map", "sft", "rollout_0", "update_0", "ppo", "eval_chains", "eval", "report"];
    assert_eq!(s.ran, expected);
    let lock = LockFile::load(store.root()).unwrap();
    let table = |stage: &str, out: &str| {
        store.read_table(&ArtifactId::parse(&lock.stages[stage].outputs[out].id).unwrap()).unwrap().concat().unwrap()
    };
    // generate: 4 items, their chains never hold the image token (suppressed), and the pieces are the text.
    let chains = table("generate", "chains");
    assert_eq!(chains.num_rows(), 4);
    let (toks, text, pieces) = (
        chains.column_by_name("tokens").unwrap().as_list::<i32>(),
        chains.column_by_name("text").unwrap().as_string::<i32>(),
        chains.column_by_name("token_text").unwrap().as_list::<i32>(),
    );
    for r in 0..4 {
        let t = toks.value(r);
        let t = t.as_primitive::<Int64Type>();
        assert!(!t.is_empty() && t.values().iter().all(|&x| x != image_token), "row {r}: {:?}", t.values());
        let p = pieces.value(r);
        let joined: String = p.as_string::<i32>().iter().flatten().collect();
        assert_eq!(joined, text.value(r));
    }
    // ppo: one logged iteration, finite statistics.
    let log = table("ppo", "log");
    assert_eq!(log.num_rows(), 1);
    for col in ["kl", "value_loss", "policy_loss", "policy_entropy"] {
        let v = log.column_by_name(col).unwrap().as_primitive::<Float64Type>().value(0);
        assert!(v.is_finite(), "{col} = {v}");
    }
    // report: the page exists.
    let rep = lock.stages["report"].outputs["report"].id.clone();
    let rdir = store.materialize(&ArtifactId::parse(&rep).unwrap()).unwrap();
    assert!(std::fs::read_to_string(rdir.join("report.md")).unwrap().contains("| sft"));
    // the trained policy: LoRA adapters and the value head only, never the frozen vision tower.
    let ck = &lock.stages["ppo"].outputs["checkpoint"];
    let bytes = std::fs::read(store.path_of(&ArtifactId::parse(&ck.id).unwrap(), ArtifactKind::Safetensors)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let names: Vec<String> = meta.tensors().keys().cloned().collect();
    assert!(names.iter().all(|n| n.contains(".lora_") || n.starts_with("param.v_head.")), "{names:?}");
    names
}

#[test]
fn llava_next_runs_through_every_stage() {
    let names = through_every_stage(tiny_llava_next, 127);
    assert!(names.iter().any(|n| n.starts_with("param.language_model.model.layers.0.self_attn.q_proj.lora_A")), "{names:?}");
}

#[test]
fn qwen2_vl_runs_through_every_stage() {
    let names = through_every_stage(tiny_qwen2_vl, 152);
    assert!(names.iter().any(|n| n.starts_with("param.model.layers.0.self_attn.q_proj.lora_A")), "{names:?}");
}
