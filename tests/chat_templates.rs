//! Chat templates from model folders, rendered with our minijinja environment, against transformers'
//! `apply_chat_template` on the same templates and conversations (tests/fixtures/mllm/chat_templates.json,
//! written by scripts/make_chat_template_goldens.py): Llama 2, Llama 3 / 3.1, Mistral, Vicuna, Qwen2,
//! LLaVA (content parts) and `tojson`.

use mllm::chat::{strftime, ChatMessage, ChatTemplate, ContentPart, PartsMessage, USER_TURN};
use serde_json::Value;
use std::path::PathBuf;

fn goldens() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mllm/chat_templates.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// A model folder holding the template as transformers writes it: in tokenizer_config.json, or (newer
/// transformers) in chat_template.jinja beside it.
fn folder(case: &Value, jinja_file: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let template = case["template"].as_str().unwrap();
    let mut cfg = serde_json::json!({"bos_token": case["bos_token"], "eos_token": {"content": case["eos_token"], "special": true}});
    if jinja_file {
        std::fs::write(dir.path().join("chat_template.jinja"), template).unwrap();
    } else {
        cfg["chat_template"] = template.into();
    }
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    dir
}

fn parts(content: &Value) -> Vec<ContentPart> {
    content
        .as_array()
        .unwrap()
        .iter()
        .map(|p| match p["type"].as_str().unwrap() {
            "image" => ContentPart::Image,
            _ => ContentPart::Text(p["text"].as_str().unwrap().to_string()),
        })
        .collect()
}

#[test]
fn templates_render_exactly_as_transformers_apply_chat_template() {
    let g = goldens();
    assert_eq!(g["user_turn"].as_str().unwrap(), USER_TURN);
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    let mut compared = 0;
    for (k, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let dir = folder(case, k % 2 == 1);
        let chat = ChatTemplate::from_dir(dir.path()).unwrap();
        for (r, want) in case["renders"].as_array().unwrap().iter().enumerate() {
            let gen = want["add_generation_prompt"].as_bool().unwrap();
            let msgs = want["messages"].as_array().unwrap();
            let got = if msgs[0]["content"].is_array() {
                let m: Vec<PartsMessage> =
                    msgs.iter().map(|m| PartsMessage { role: m["role"].as_str().unwrap().into(), parts: parts(&m["content"]) }).collect();
                chat.render_parts(&m, gen)
            } else {
                let m: Vec<ChatMessage> =
                    msgs.iter().map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
                chat.render(&m, gen)
            };
            match (want.get("text"), got) {
                (Some(t), Ok(got)) => assert_eq!(got, t.as_str().unwrap(), "{name}, conversation {r}"),
                (None, Err(e)) => {
                    let msg = want["error"].as_str().unwrap();
                    assert!(e.to_string().contains(msg), "{name}, conversation {r}: {e} should say {msg:?}");
                }
                (t, got) => panic!("{name}, conversation {r}: transformers gave {t:?}, we gave {got:?}"),
            }
            compared += 1;
        }
        // The pipeline's prompt in the model's own format.
        if let Some(p) = case["prompt_template"].as_str() {
            let image_token = (name == "llava").then_some("<image>");
            assert_eq!(chat.prompt_template(USER_TURN, image_token).unwrap(), p, "{name}: prompt template");
        }
    }
    assert_eq!(compared, 23);
}

#[test]
fn llava_parts_template_needs_the_image_token_to_place_the_image() {
    let g = goldens();
    let case = g["cases"].as_array().unwrap().iter().find(|c| c["name"] == "llava").unwrap().clone();
    let dir = folder(&case, false);
    let chat = ChatTemplate::from_dir(dir.path()).unwrap();
    let e = chat.prompt_template(USER_TURN, None).unwrap_err().to_string();
    assert!(e.contains("image token"), "{e}");
}

#[test]
fn strftime_matches_python_time_strftime() {
    for row in goldens()["strftime"].as_array().unwrap() {
        let (secs, fmt) = (row["secs"].as_i64().unwrap(), row["format"].as_str().unwrap());
        assert_eq!(strftime(fmt, secs), row["text"].as_str().unwrap(), "{fmt} at {secs}");
    }
}

#[test]
fn strftime_now_is_available_to_templates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({"chat_template": "{{ strftime_now('%Y') }}|{{ messages[0].content }}"});
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let out = ChatTemplate::from_dir(dir.path()).unwrap().render(&[ChatMessage::new("user", "x")], false).unwrap();
    let year: i64 = out.split('|').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(year.to_string(), strftime("%Y", now));
    assert!(out.ends_with("|x"));
}

/// A LLaVA folder's pipeline prompt: its template from tokenizer_config.json, its image token's text
/// from tokenizer.json (id 99 = `<image>` here), placeholders left for the stage.
#[test]
fn pipeline_prompt_of_a_model_folder_uses_its_template_and_image_token() {
    let g = goldens();
    for name in ["llava", "qwen2", "llama3"] {
        let case = g["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
        let dir = folder(&case, false);
        let mut vocab = serde_json::Map::new();
        for (i, w) in ["[UNK]", "question", "options"].iter().enumerate() {
            vocab.insert(w.to_string(), i.into());
        }
        vocab.insert("<image>".into(), 99.into());
        let tok = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 99, "content": "<image>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        });
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
        let got = mllm::chat::pipeline_prompt(dir.path(), 99).unwrap();
        assert_eq!(got, case["prompt_template"].as_str().unwrap(), "{name}");
        let e = mllm::chat::pipeline_prompt(dir.path(), 5000).unwrap_err().to_string();
        assert!(e.contains("5000") && e.contains("tokenizer.json"), "{e}");
    }
}
