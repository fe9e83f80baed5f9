//! `generate`: reasoning chains for the training questions from the (frozen) MLLM, with every generated
//! token's log-prob and full-vocabulary entropy and the sentence boundaries: what `score` needs.
//! The model runs in the `mmb-torch` worker (see [`super::worker`]); this file declares the stage and the
//! layout of its output ([`chains_batch`], which splits every chain with the one sentence splitter and
//! locates each sentence's tokens).
use crate::confidence::parser::{sentence_spans, ParserParams};
use crate::confidence::spans::{floors_after_previous, response_sentences, GeneratedToken};
use crate::data::Item;
use crate::engine::{InputSpec, Stage, StageContext};
use arrow::array::{ArrayRef, Float32Builder, Int64Builder, ListBuilder, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Decoding and prompting choices. The paper samples its warm-up chains at temperature 0.1 (§3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateParams {
    /// A Hugging Face LLaVA, LLaVA-NeXT or Qwen2-VL folder (`config.json`, `*.safetensors`, `tokenizer.json`,
    /// and `preprocessor_config.json` for the latter two; `mllm::family`); unset: the demo MLLM the pipeline
    /// trains on the embedded benchmark.
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
    /// Chains per generation batch (left-padded). Each chain samples from its own stream, seeded by its
    /// item's id and sample index, so the batch size does not change what is sampled.
    pub batch: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`; asking for CUDA where there is none is an error.
    pub device: String,
    /// `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// The prompt; `{image}` becomes the image's patch tokens, `{question}` and `{options}` the item's.
    /// Unset: the model's own ([`super::models::prompt`]): the demo MLLM's format
    /// ([`super::demo_mllm::PROMPT`]), or a model folder's chat template rendered by
    /// `mllm::chat::pipeline_prompt` (the template's files are in the folder, hence in the cache key).
    pub prompt: Option<String>,
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
            prompt: None,
            limit: None,
        }
    }
}

/// The user turn after the image in the pipeline's prompts (`mllm::chat::USER_TURN`), as the demo MLLM
/// is trained on it.
pub fn question_block(question: &str, choices: &[String]) -> String {
    let (_, after) = render_prompt("{image}\nQuestion: {question}\nOptions: {options}", question, choices);
    after.trim_start_matches('\n').to_string()
}

/// Renders the text parts of a prompt around the `{image}` slot: (before, after).
pub fn render_prompt(template: &str, question: &str, choices: &[String]) -> (String, String) {
    render_prompt_with(template, question, choices, None)
}

/// [`render_prompt`] with an `instruction` (a baseline's request for confidences, `eval.instruction`)
/// closing the user's turn on a line of its own after the options, in whatever chat format the template is.
pub fn render_prompt_with(template: &str, question: &str, choices: &[String], instruction: Option<&str>) -> (String, String) {
    let mut options =
        choices.iter().enumerate().map(|(i, c)| format!("({}) {c}", (b'A' + (i as u8 % 26)) as char)).collect::<Vec<_>>().join(" ");
    if let Some(i) = instruction {
        options = format!("{options}\n{i}");
    }
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
        // Each token's decoded piece; the pieces concatenate to `text`.
        Field::new("token_text", list(DataType::Utf8), false),
        Field::new("logprobs", list(DataType::Float32), false),
        Field::new("entropies", list(DataType::Float32), false),
        Field::new("sentences", list(DataType::Utf8), false),
        Field::new("sentence_first", list(DataType::UInt32), false),
        Field::new("sentence_last", list(DataType::UInt32), false),
        Field::new("finish", DataType::Utf8, false),
    ]))
}

/// One generated chain as the worker hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRow {
    pub item_id: String,
    pub split: String,
    pub sample: u32,
    /// The decoded text (special tokens skipped).
    pub text: String,
    pub tokens: Vec<i64>,
    /// Each token's decoded piece (the difference of prefix decodes, `mllm::generate::decode_pieces`):
    /// they concatenate to `text`. Stored as `token_text`.
    pub pieces: Vec<String>,
    pub logprobs: Vec<f32>,
    pub entropies: Vec<f32>,
    pub finish: String,
}

/// The `chains` table of `rows`: each chain split into sentences by the one splitter
/// ([`sentence_spans`] with the default parser params), each sentence with its token range. A chain whose
/// pieces do not rebuild its text, or whose sentence cannot be located in its tokens, is an error naming
/// the item.
pub fn chains_batch(rows: &[ChainRow]) -> anyhow::Result<RecordBatch> {
    let (mut c_id, mut c_split, mut c_sample, mut c_text, mut c_finish) =
        (StringBuilder::new(), StringBuilder::new(), UInt32Builder::new(), StringBuilder::new(), StringBuilder::new());
    let mut c_tokens = ListBuilder::new(Int64Builder::new());
    let mut c_tt = ListBuilder::new(StringBuilder::new());
    let (mut c_lp, mut c_ent) = (ListBuilder::new(Float32Builder::new()), ListBuilder::new(Float32Builder::new()));
    let mut c_sent = ListBuilder::new(StringBuilder::new());
    let (mut c_first, mut c_last) = (ListBuilder::new(UInt32Builder::new()), ListBuilder::new(UInt32Builder::new()));
    let parser = ParserParams::default();
    for (r, row) in rows.iter().enumerate() {
        let n = row.tokens.len();
        anyhow::ensure!(
            row.pieces.len() == n && row.logprobs.len() == n && row.entropies.len() == n,
            "item {} sample {}: {n} tokens but {} pieces, {} log-probs, {} entropies",
            row.item_id,
            row.sample,
            row.pieces.len(),
            row.logprobs.len(),
            row.entropies.len()
        );
        let toks: Vec<GeneratedToken> = (0..n)
            .map(|k| GeneratedToken {
                id: row.tokens[k] as u32,
                piece: &row.pieces[k],
                log_prob: f64::from(row.logprobs[k]),
                entropy: f64::from(row.entropies[k]),
                is_special: false,
            })
            .collect();
        let spans = sentence_spans(&row.text, &parser);
        let located = response_sentences(r, &row.text, &toks, &floors_after_previous(&spans))
            .map_err(|e| anyhow::anyhow!("item {} sample {}: {e}", row.item_id, row.sample))?;
        c_id.append_value(&row.item_id);
        c_split.append_value(&row.split);
        c_sample.append_value(row.sample);
        c_text.append_value(&row.text);
        c_finish.append_value(&row.finish);
        c_tokens.values().append_slice(&row.tokens);
        c_tokens.append(true);
        for p in &row.pieces {
            c_tt.values().append_value(p);
        }
        c_tt.append(true);
        c_lp.values().append_slice(&row.logprobs);
        c_lp.append(true);
        c_ent.values().append_slice(&row.entropies);
        c_ent.append(true);
        for (&(a, b), (_, (first, last))) in spans.iter().zip(&located) {
            c_sent.values().append_value(&row.text[a..b]);
            c_first.values().append_value(*first as u32);
            c_last.values().append_value(*last as u32);
        }
        c_sent.append(true);
        c_first.append(true);
        c_last.append(true);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(c_id.finish()),
        Arc::new(c_split.finish()),
        Arc::new(c_sample.finish()),
        Arc::new(c_text.finish()),
        Arc::new(c_tokens.finish()),
        Arc::new(c_tt.finish()),
        Arc::new(c_lp.finish()),
        Arc::new(c_ent.finish()),
        Arc::new(c_sent.finish()),
        Arc::new(c_first.finish()),
        Arc::new(c_last.finish()),
        Arc::new(c_finish.finish()),
    ];
    Ok(RecordBatch::try_new(chains_schema(), cols)?)
}

/// The questions `generate` answers: the items of `splits`, in the dataset's order, the first `limit`.
pub fn select<'a>(items: &'a [Item], splits: &[String], limit: Option<usize>) -> Vec<&'a Item> {
    let mut selected: Vec<&Item> = items.iter().filter(|it| splits.iter().any(|s| s == &it.split)).collect();
    if let Some(n) = limit {
        selected.truncate(n);
    }
    selected
}

pub struct GenerateStage {
    pub params: GenerateParams,
}

impl GenerateParams {
    /// The MLLM this stage runs (`super::models::ModelSettings`).
    pub fn mllm(&self) -> super::models::ModelSettings<'_> {
        super::models::ModelSettings { model: &self.model, prompt: &self.prompt, device: &self.device, dtype: &self.dtype }
    }
}

impl Stage for GenerateStage {
    fn name(&self) -> &str {
        "generate"
    }
    /// 2: `token_text` holds decoded pieces (was: vocabulary entries), sentences from the one splitter.
    /// 3: each chain seeded by its item's id and sample (was: by batch), rows item by item.
    fn code_version(&self) -> &str {
        "3"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        let mut v = vec![InputSpec::new("items", "dataset", "items"), InputSpec::new("features", "features", "features")];
        v.extend(self.params.mllm().input());
        v
    }
    fn outputs(&self) -> Vec<String> {
        vec!["chains".into()]
    }
    /// With the prompt resolved ([`super::models::prompt`]).
    fn params(&self) -> serde_json::Value {
        let p = GenerateParams { prompt: self.params.mllm().prompt(), ..self.params.clone() };
        serde_json::to_value(&p).expect("params serialize")
    }
    fn models(&self) -> Vec<PathBuf> {
        self.params.mllm().files()
    }
    fn device(&self) -> String {
        self.params.mllm().device_key()
    }
    /// Each chain depends on its item (and the seed) alone: `generate` may run on shards of its items.
    fn shard(&self) -> Option<crate::engine::ShardSpec> {
        Some(crate::engine::ShardSpec::new("items", "item_id").with_input_key("id"))
    }
    /// The questions [`select`] picks (the splits, the first `limit`), in the dataset's order.
    fn shard_items(&self, items: &RecordBatch) -> anyhow::Result<RecordBatch> {
        let all = crate::data::items_from_record_batch(items)?;
        let keep: std::collections::HashSet<&str> =
            select(&all, &self.params.splits, self.params.limit).into_iter().map(|it| it.id.as_str()).collect();
        let ids = crate::engine::shard::key_column(items, "id", "generate: input `items`")?;
        let mask = arrow::array::BooleanArray::from(ids.iter().map(|id| keep.contains(id.as_str())).collect::<Vec<_>>());
        Ok(arrow::compute::filter_record_batch(items, &mask)?)
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        super::worker::run_in_worker(ctx)
    }
}
