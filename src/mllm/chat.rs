//! Tokenizer and chat template from a model folder (or a GGUF file's metadata). Chat templates are the
//! Jinja strings transformers uses (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`),
//! rendered with minijinja with `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and
//! `raise_exception` available. Templates that call Python string methods (`.strip()` …) are not
//! supported by minijinja's core and fail with a clear error.
use super::{MllmError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// `dir/tokenizer.json`.
pub fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let p = dir.join("tokenizer.json");
    tokenizers::Tokenizer::from_file(&p).map_err(|e| MllmError::Tokenizer(format!("{}: {e}", p.display())))
}

fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// From `chat_template.jinja` or `tokenizer_config.json` in a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| MllmError::Tokenizer(format!("{}: {e}", cfg_path.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            std::fs::read_to_string(&jinja).map_err(super::io_err(&jinja))?
        } else {
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => s.clone(),
                // A list of named templates: take "default".
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(String::from))
                    .unwrap_or_default(),
                _ => String::new(),
            }
        };
        if source.is_empty() {
            return Err(MllmError::Tokenizer(format!(
                "no chat template in {} (expected chat_template.jinja or a chat_template field in tokenizer_config.json)",
                dir.display()
            )));
        }
        Ok(Self { source, bos_token: token_text(cfg.get("bos_token")), eos_token: token_text(cfg.get("eos_token")) })
    }

    /// From a GGUF file's `tokenizer.chat_template`.
    pub fn from_gguf(file: &super::gguf::GgufFile) -> Result<Self> {
        let source = file.meta_str("tokenizer.chat_template")?.to_string();
        let tokens = match file.metadata.get("tokenizer.ggml.tokens") {
            Some(super::gguf::Value::Array(a)) => a.clone(),
            _ => vec![],
        };
        let tok = |key: &str| {
            file.metadata
                .get(key)
                .and_then(|v| v.as_u64())
                .and_then(|i| tokens.get(i as usize))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(Self { source, bos_token: tok("tokenizer.ggml.bos_token_id"), eos_token: tok("tokenizer.ggml.eos_token_id") })
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source).map_err(|e| MllmError::Tokenizer(format!("chat template does not parse: {e}")))?;
        let tmpl = env.get_template("chat").map_err(|e| MllmError::Tokenizer(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages
                .iter()
                .map(|m| minijinja::Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())]))
                .collect::<minijinja::Value>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| MllmError::Tokenizer(format!("rendering the chat template: {e}")))
    }
}
