//! What the stage tests share: the fixtures folder and a tiny LLaVA that decodes every id.
use std::path::{Path, PathBuf};

pub mod tiny;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny random LLaVA of the mllm goldens (vocab 100, image token 99), with a word-level tokenizer
/// of exactly 100 entries so every id decodes.
pub fn tiny_llava(dir: &Path) -> PathBuf {
    let out = dir.join("tiny-llava");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("mllm/tiny-llava").join(f), out.join(f)).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    let words = "[UNK] [PAD] <s> </s> the a is there of and so answer question options yes no red green blue yellow \
                 purple orange pink teal circle square triangle diamond hexagon small large solid striped checkered left \
                 right top bottom center above below how many objects same color shape size . , ? : ( )";
    let mut n = 0;
    for w in words.split_whitespace() {
        vocab.insert(w.into(), n.into());
        n += 1;
    }
    while n < 99 {
        vocab.insert(format!("w{n}"), n.into());
        n += 1;
    }
    vocab.insert("<image>".into(), 99.into());
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 99, "content": "<image>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
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
    let g: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("mllm/chat_templates.json")).unwrap()).unwrap();
    let case = g["cases"].as_array().unwrap().iter().find(|c| c["name"] == "llava").expect("the llava case");
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
