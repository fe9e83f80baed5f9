//! `generate`: reasoning chains for the training questions from the (frozen) MLLM, with every generated
//! token's log-prob and full-vocabulary entropy and the sentence boundaries: what `score` needs.
//! The model runs in the `mmb-torch` worker (see [`super::worker`]); this file declares the stage and the
//! layout of its output.
use crate::engine::{InputSpec, Stage, StageContext};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Decoding and prompting choices. The paper samples its warm-up chains at temperature 0.1 (§3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateParams {
    /// A Hugging Face LLaVA-style folder (`config.json`, `*.safetensors`, `tokenizer.json`); unset: the
    /// demo MLLM the pipeline trains on the embedded benchmark.
    pub model: Option<PathBuf>,
    /// Which dataset splits to generate for.
    pub splits: Vec<String>,
    /// Chains per question.
    pub samples: usize,
    pub max_new_tokens: usize,
    /// The paper: 0.1 for the warm-up data. 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Questions per generation batch (left-padded).
    pub batch: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`; asking for CUDA where there is none is an error.
    pub device: String,
    /// `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// The prompt; `{image}` becomes the image's patch tokens, `{question}` and `{options}` the item's.
    pub prompt: String,
    /// Use only the first N selected questions (None: all).
    pub limit: Option<usize>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            model: None,
            splits: vec!["train".into()],
            samples: 1,
            max_new_tokens: 160,
            temperature: 0.1,
            top_p: 1.0,
            seed: 0,
            batch: 8,
            device: "auto".into(),
            dtype: "f32".into(),
            prompt: DEFAULT_PROMPT.into(),
            limit: None,
        }
    }
}

/// The prompt of the embedded benchmark's models, in SmolLM2's chat format (the demo MLLM is trained on
/// exactly this: its user turn is [`question_block`] after the image).
pub const DEFAULT_PROMPT: &str = "<|im_start|>user\n{image}\nQuestion: {question}\nOptions: {options}<|im_end|>\n<|im_start|>assistant\n";

/// The user turn after the image in [`DEFAULT_PROMPT`].
pub fn question_block(question: &str, choices: &[String]) -> String {
    let (_, after) = render_prompt("{image}\nQuestion: {question}\nOptions: {options}", question, choices);
    after.trim_start_matches('\n').to_string()
}

/// Renders the text parts of a prompt around the `{image}` slot: (before, after).
pub fn render_prompt(template: &str, question: &str, choices: &[String]) -> (String, String) {
    let options =
        choices.iter().enumerate().map(|(i, c)| format!("({}) {c}", (b'A' + (i as u8 % 26)) as char)).collect::<Vec<_>>().join(" ");
    let text = template.replace("{question}", question).replace("{options}", &options);
    match text.split_once("{image}") {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (String::new(), text),
    }
}

/// One row per (item, sample); token-level columns are aligned lists.
pub fn chains_schema() -> SchemaRef {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("sample", DataType::UInt32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("tokens", list(DataType::Int64), false),
        Field::new("token_text", list(DataType::Utf8), false),
        Field::new("logprobs", list(DataType::Float32), false),
        Field::new("entropies", list(DataType::Float32), false),
        Field::new("sentences", list(DataType::Utf8), false),
        Field::new("sentence_first", list(DataType::UInt32), false),
        Field::new("sentence_last", list(DataType::UInt32), false),
        Field::new("finish", DataType::Utf8, false),
    ]))
}

pub struct GenerateStage {
    pub params: GenerateParams,
}

impl Stage for GenerateStage {
    fn name(&self) -> &str {
        "generate"
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        let mut v = vec![InputSpec::new("items", "dataset", "items"), InputSpec::new("features", "features", "features")];
        v.extend(super::models::model_input(&self.params.model, "model", super::models::DEMO_MLLM));
        v
    }
    fn outputs(&self) -> Vec<String> {
        vec!["chains".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }
    fn models(&self) -> Vec<PathBuf> {
        super::models::model_files(&self.params.model)
    }
    fn device(&self) -> String {
        format!("{}/{}", self.params.device, self.params.dtype)
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        super::worker::run_in_worker(ctx)
    }
}
