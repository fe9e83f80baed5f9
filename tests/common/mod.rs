//! What the stage tests share: the fixtures folder and a tiny LLaVA that decodes every id.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

pub mod tiny;

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The repository's root, also from a workspace member's tests (src/jobs/tests/ include this module).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().find(|d| d.join("tests/fixtures").is_dir()).unwrap_or(manifest).to_path_buf()
}

/// The tiny random LLaVA of the mllm goldens (vocab 100, image token 99), with a word-level tokenizer
/// of exactly 100 entries so every id decodes.
pub fn tiny_llava(dir: &Path) -> PathBuf {
    tiny_model(dir, &fixtures().join("mllm/tiny-llava"), "tiny-llava", 100, &[(99, "<image>")], &["config.json", "model.safetensors"])
}

/// The set-up of the engine tests on the tiny LLaVA: a temporary folder with a store (`artifacts/`) and
/// [`tiny_llava`] (`tiny-llava/`) in it. The folder lives as long as the returned `TempDir`.
pub fn tiny_llava_store() -> (tempfile::TempDir, mmboundary::store::Store, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = mmboundary::store::Store::open(dir.path().join("artifacts")).unwrap();
    let model = tiny_llava(dir.path());
    (dir, store, model)
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
    // Hugging Face llava-1.5's chat template (as the chat-template goldens hold it): the stages render
    // their prompt from it, as from any model folder.
    let cfg = serde_json::json!({ "chat_template": llava_chat_template().0, "bos_token": "<s>", "eos_token": "</s>" });
    std::fs::write(out.join("tokenizer_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    out
}

/// llava-hf's LLaVA-1.5 chat template and the pipeline prompt transformers renders from it
/// (tests/fixtures/mllm/chat_templates.json, scripts/make_chat_template_goldens.py).
pub fn llava_chat_template() -> (String, String) {
    chat_template_case("llava")
}

/// A chat-template golden case's template and the pipeline prompt transformers renders from it.
pub fn chat_template_case(name: &str) -> (String, String) {
    let g: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("mllm/chat_templates.json")).unwrap()).unwrap();
    let case = g["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("the {name} case"));
    (case["template"].as_str().unwrap().to_string(), case["prompt_template"].as_str().unwrap().to_string())
}

/// Word-level tokens of `text` (each with its leading space) and their byte ends.
#[allow(dead_code)]
pub fn tokens_of(text: &str) -> mmboundary::stages::ppo::RolloutTokens {
    let mut tokens = Vec::new();
    let mut ends = Vec::new();
    let mut at = 0;
    for (i, w) in text.split(' ').enumerate() {
        let piece = if i == 0 { w.to_string() } else { format!(" {w}") };
        at += piece.len();
        tokens.push(mmboundary::confidence::uncertainty::TokenInfo {
            id: i as u32,
            text: piece,
            log_prob: -0.1 * (i % 5) as f64,
            entropy: 0.2 * (i % 3) as f64,
            is_special: false,
        });
        ends.push(at);
    }
    mmboundary::stages::ppo::RolloutTokens { text: text.to_string(), tokens, token_ends: ends }
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
    let out =
        tiny_model(dir, &fixtures().join("backbones/tiny-qwen2-vl"), "tiny-qwen2-vl", 160, &special, &["config.json", "model.safetensors"]);
    std::fs::copy(fixtures().join("backbones/qwen2-vl-processor/preprocessor_config.json"), out.join("preprocessor_config.json")).unwrap();
    // The goldens kept Qwen's real bos/eos ids (151643/151645), outside this 160-token vocabulary; the
    // trainers append the eos id to every target, so it must be one the model has: `</s>` (3).
    let cfg_path = out.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["text_config"]["eos_token_id"] = 3.into();
    cfg["text_config"]["bos_token_id"] = 2.into();
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    // Qwen2's chat format (text content: the image slot stays where the turn has it; the prompter puts
    // the vision delimiters around the image tokens).
    let chat = serde_json::json!({ "chat_template": chat_template_case("qwen2").0, "eos_token": "<|im_end|>" });
    std::fs::write(out.join("tokenizer_config.json"), serde_json::to_vec(&chat).unwrap()).unwrap();
    out
}
