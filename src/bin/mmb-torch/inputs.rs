//! What the model stages share: CLIP patch features by item, and prompts with the image slot expanded.
use anyhow::Context;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use mmboundary::stages::generate::render_prompt;
use std::collections::HashMap;
use tch::Tensor;

/// Patch features `[n_patches, dim]` of every item of a `features` artifact.
pub struct Features {
    rows: HashMap<String, (i64, i64, Vec<f32>)>,
}

impl Features {
    pub fn from_batch(b: &RecordBatch) -> anyhow::Result<Self> {
        let col = |n: &str| b.column_by_name(n).with_context(|| format!("features artifact has no column `{n}`"));
        let ids = col("item_id")?.as_string::<i32>();
        let n_p = col("n_patches")?.as_primitive::<UInt32Type>();
        let dims = col("dim")?.as_primitive::<UInt32Type>();
        let patches = col("patches")?.as_list::<i32>();
        let mut rows = HashMap::with_capacity(ids.len());
        for i in 0..ids.len() {
            let v = patches.value(i);
            rows.insert(
                ids.value(i).to_string(),
                (n_p.value(i) as i64, dims.value(i) as i64, v.as_primitive::<Float32Type>().values().to_vec()),
            );
        }
        Ok(Self { rows })
    }

    pub fn tensor(&self, item: &str) -> anyhow::Result<(i64, Tensor)> {
        let (n, d, v) = self.rows.get(item).with_context(|| format!("item {item}: no CLIP features"))?;
        Ok((*n, Tensor::from_slice(v).view([*n, *d])))
    }
}

/// The prompt template a model stage runs with: the one its params set, else the model's own
/// (`stages::models::prompt`: the demo MLLM's format, or the folder's chat template rendered by
/// `mllm::chat::pipeline_prompt`, with the image slot where the model's image token goes).
pub fn prompt_template(
    model: &Option<std::path::PathBuf>,
    prompt: &Option<String>,
    model_dir: &std::path::Path,
    image_token_index: i64,
) -> anyhow::Result<String> {
    match mmboundary::stages::models::prompt(model, prompt) {
        Some(p) => Ok(p),
        None => mllm::chat::pipeline_prompt(model_dir, image_token_index).with_context(|| {
            format!(
                "{}: the prompt in the model's own chat format (set `prompt` in stages/project.toml [model] to give one)",
                model_dir.display()
            )
        }),
    }
}

/// Prompt token ids with `{image}` expanded to one image token per patch.
pub struct Prompter<'a> {
    pub tok: &'a tokenizers::Tokenizer,
    pub image_token: i64,
    pub template: &'a str,
}

impl Prompter<'_> {
    pub fn encode(&self, s: &str) -> anyhow::Result<Vec<i64>> {
        Ok(self.tok.encode(s, false).map_err(|e| anyhow::anyhow!("tokenizing {s:?}: {e}"))?.get_ids().iter().map(|&i| i as i64).collect())
    }

    pub fn prompt(&self, question: &str, choices: &[String], n_patches: i64) -> anyhow::Result<Vec<i64>> {
        let (before, after) = render_prompt(self.template, question, choices);
        let mut ids = self.encode(&before)?;
        ids.extend(std::iter::repeat_n(self.image_token, n_patches as usize));
        ids.extend(self.encode(&after)?);
        Ok(ids)
    }
}

/// A trainer's params: its defaults with the stage's JSON table laid over them, nested tables merged key
/// by key. An unknown key is an error naming where it is (`what.key.subkey`), never silently ignored.
pub fn overlay_params<T: serde::Serialize + serde::de::DeserializeOwned + Default>(
    overrides: &serde_json::Value,
    what: &str,
) -> anyhow::Result<T> {
    fn merge(
        base: &mut serde_json::Map<String, serde_json::Value>,
        over: &serde_json::Map<String, serde_json::Value>,
        at: &str,
    ) -> anyhow::Result<()> {
        for (k, x) in over {
            let Some(b) = base.get_mut(k) else {
                anyhow::bail!("{at}: unknown key `{k}` (known: {})", base.keys().cloned().collect::<Vec<_>>().join(", "));
            };
            match (b.as_object_mut(), x.as_object()) {
                (Some(b), Some(o)) => merge(b, o, &format!("{at}.{k}"))?,
                _ => *b = x.clone(),
            }
        }
        Ok(())
    }
    let mut v = serde_json::to_value(T::default())?;
    match (v.as_object_mut(), overrides) {
        (Some(base), serde_json::Value::Object(over)) => merge(base, over, what)?,
        (_, serde_json::Value::Null) => {}
        (_, other) => anyhow::bail!("{what}: expected a table, found {other}"),
    }
    serde_json::from_value(v).with_context(|| what.to_string())
}
