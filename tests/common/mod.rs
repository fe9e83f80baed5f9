//! What the stage tests share: the fixtures folder and a tiny LLaVA that decodes every id.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

pub mod tiny;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny random LLaVA of the mllm goldens (vocab 100, image token 99), with a word-level tokenizer
/// of exactly 100 entries so every id decodes.
pub fn tiny_llava(dir: &Path) -> PathBuf {
    tiny_model(dir, &fixtures().join("mllm/tiny-llava"), "tiny-llava", 100, &[(99, "<image>")], &["config.json", "model.safetensors"])
}

/// A private copy of the tiny model in `src` (the listed files) under `dir/name`, with a word-level
/// tokenizer of exactly `vocab` entries (the pipeline's words first, `special` ids as added special
/// tokens, `w<n>` fillers), so every id the model can produce decodes.
pub fn tiny_model(dir: &Path, src: &Path, name: &str, vocab: usize, special: &[(usize, &str)], files: &[&str]) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in files {
        std::fs::copy(src.join(f), out.join(f)).unwrap_or_else(|e| panic!("{}: {e}", src.join(f).display()));
    }
    let mut map = serde_json::Map::new();
    let words = "[UNK] [PAD] <s> </s> the a is there of and so answer question options yes no red green blue yellow \
                 purple orange pink teal circle square triangle diamond hexagon small large solid striped checkered left \
                 right top bottom center above below how many objects same color shape size . , ? : ( )";
    let mut words = words.split_whitespace();
    let mut added = Vec::new();
    for n in 0..vocab {
        if let Some((_, s)) = special.iter().find(|(i, _)| *i == n) {
            map.insert(s.to_string(), n.into());
            added.push(serde_json::json!({"id": n, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
        } else if let Some(w) = words.next() {
            map.insert(w.into(), n.into());
        } else {
            map.insert(format!("w{n}"), n.into());
        }
    }
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "[UNK]"}
    });
    std::fs::write(out.join("tokenizer.json"), serde_json::to_vec(&tok).unwrap()).unwrap();
    out
}

/// The tiny random LLaVA-NeXT of the backbone goldens (Llama tower, vocab 128, image token 127, 56-pixel
/// tiles), with its processor settings and a tokenizer.
pub fn tiny_llava_next(dir: &Path) -> PathBuf {
    let files = ["config.json", "model.safetensors", "preprocessor_config.json"];
    tiny_model(dir, &fixtures().join("backbones/tiny-llava-next"), "tiny-llava-next", 128, &[(127, "<image>")], &files)
}

/// The tiny random Qwen2-VL of the backbone goldens (vocab 160; vision start 150, end 151, image 152,
/// video 153), with the goldens' Qwen2-VL processor settings and a tokenizer.
pub fn tiny_qwen2_vl(dir: &Path) -> PathBuf {
    let special = [(150, "<|vision_start|>"), (151, "<|vision_end|>"), (152, "<|image_pad|>"), (153, "<|video_pad|>")];
    let out = tiny_model(dir, &fixtures().join("backbones/tiny-qwen2-vl"), "tiny-qwen2-vl", 160, &special, &["config.json", "model.safetensors"]);
    std::fs::copy(fixtures().join("backbones/qwen2-vl-processor/preprocessor_config.json"), out.join("preprocessor_config.json")).unwrap();
    // The goldens kept Qwen's real bos/eos ids (151643/151645), outside this 160-token vocabulary; the
    // trainers append the eos id to every target, so it must be one the model has: `</s>` (3).
    let cfg_path = out.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["text_config"]["eos_token_id"] = 3.into();
    cfg["text_config"]["bos_token_id"] = 2.into();
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    out
}
