//! `demo_mllm`: the small LLaVA-style MLLM of the embedded benchmark — the demo CLIP's patch features →
//! a 2-layer GELU projector → a small Llama decoder with SmolLM2's tokenizer — trained with the project's
//! SFT trainer on the benchmark's plain reference chains, so it really knows easy scenes and not hard ones.
//! Runs in the `mmb-torch` worker (`mllm::demo`); the result is a LLaVA Hugging Face folder artifact.
use crate::engine::{InputSpec, Stage, StageContext};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoMllmParams {
    /// SmolLM2-135M-Instruct's GGUF (tokenizer, and the weights for the `smollm2` preset).
    pub gguf: PathBuf,
    /// `mllm::demo::DemoParams` as JSON, laid over its defaults (decoder size or the SmolLM2 preset,
    /// learning rate, epochs, batch size, seed, max_steps).
    pub trainer: serde_json::Value,
    /// Splits whose reference chains train the model.
    pub splits: Vec<String>,
    /// Use only the first N training items (None: all).
    pub limit: Option<usize>,
    /// The statement pool (as `map`'s): its text joins the compact vocabulary, so the statements that SFT
    /// later teaches tokenize the same way as everything else.
    pub pool: PathBuf,
    /// With this prompt, every training image also gets a scene-description example: each object's
    /// perception sentence in reading order (LLaVA's caption-alignment data; Penumbra items only, from
    /// their scene graph). None: the reference chains alone.
    pub describe_prompt: Option<String>,
    /// Every training image also gets the short whole-scene drills of
    /// `data::penumbra::questions::perception_drills` (how many objects, which colors, shapes, patterns).
    pub perception_drills: bool,
    /// Every training image also gets the `data::penumbra::questions::object_drills`: each object the
    /// scene can name by a short unique description, asked for its full description and region. Left out
    /// of the params (and so of the cache key) when off, so runs without it keep their artifacts.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub object_drills: bool,
    /// Every training image also gets this many more questions with their reference chains
    /// (`data::penumbra::extra_questions`: drawn as the benchmark draws its own, from a stream of their own).
    /// Left out of the params (and so of the cache key) when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub extra_questions: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for DemoMllmParams {
    fn default() -> Self {
        Self {
            gguf: PathBuf::from(".deps/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
            trainer: serde_json::json!({}),
            splits: vec!["train".into()],
            limit: None,
            pool: PathBuf::from("stages/statements.toml"),
            describe_prompt: Some("Describe every object in the image.".into()),
            perception_drills: false,
            object_drills: false,
            extra_questions: 0,
        }
    }
}

/// The demo MLLM's own prompt, SmolLM2's chat format: the model is trained on exactly this (its user turn
/// is `generate::question_block` after the image; `mllm::demo::chat_prompt` writes the same text with
/// the image slot expanded).
pub const PROMPT: &str = "<|im_start|>user\n{image}\nQuestion: {question}\nOptions: {options}<|im_end|>\n<|im_start|>assistant\n";

/// What the demo MLLM that these params (as its lineage records them) train is, for the report's header:
/// the decoder `trainer.decoder` picks (`mllm::demo::DecoderChoice`, in its serde form: absent or
/// `{ scratch = {…} }` is a decoder trained from scratch, `"smollm2_gguf"` is SmolLM2-135M-Instruct's
/// weights, the `--preset smollm2-135m` path).
pub fn describe(params: &serde_json::Value) -> anyhow::Result<String> {
    let params: DemoMllmParams = serde_json::from_value(params.clone()).map_err(|e| anyhow::anyhow!("demo_mllm params: {e}"))?;
    let decoder = match params.trainer.get("decoder") {
        None => "with a decoder trained from scratch",
        Some(serde_json::Value::Object(o)) if o.len() == 1 && o.contains_key("scratch") => "with a decoder trained from scratch",
        Some(serde_json::Value::String(s)) if s == "smollm2_gguf" => "on SmolLM2-135M-Instruct",
        Some(other) => anyhow::bail!("demo_mllm params: trainer.decoder is {other}; expected `smollm2_gguf` or `{{ scratch = {{…}} }}`"),
    };
    Ok(format!("the demo MLLM {decoder} (stage demo_mllm)"))
}

pub struct DemoMllmStage {
    pub params: DemoMllmParams,
}

impl Stage for DemoMllmStage {
    fn name(&self) -> &str {
        "demo_mllm"
    }
    fn code_version(&self) -> &str {
        "2"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::new("items", "dataset", "items"), InputSpec::new("features", "features", "features")]
    }
    fn outputs(&self) -> Vec<String> {
        vec!["mllm".into(), "report".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }
    fn models(&self) -> Vec<PathBuf> {
        vec![self.params.gguf.clone(), self.params.pool.clone()]
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        super::worker::run_in_worker(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::PROMPT;
    use crate::stages::generate::{question_block, render_prompt};

    /// `object_drills` is left out of the params while off (the default run's key is what it was before
    /// the option existed) and keyed when on.
    #[test]
    fn object_drills_are_keyed_only_when_on() {
        use super::{DemoMllmParams, DemoMllmStage};
        use crate::engine::Stage;
        let off = DemoMllmStage { params: DemoMllmParams::default() }.params();
        assert_eq!(off.get("object_drills"), None, "{off}");
        let back: DemoMllmParams = serde_json::from_value(off).unwrap();
        assert!(!back.object_drills);
        let on = DemoMllmStage { params: DemoMllmParams { object_drills: true, ..Default::default() } }.params();
        assert_eq!(on["object_drills"], true);
        // The same for extra questions.
        assert_eq!(DemoMllmStage { params: DemoMllmParams::default() }.params().get("extra_questions"), None);
        let on = DemoMllmStage { params: DemoMllmParams { extra_questions: 2, ..Default::default() } }.params();
        assert_eq!(on["extra_questions"], 2);
    }

    /// The pipeline's prompt for the demo model is the text the demo MLLM was trained on.
    #[test]
    fn the_demo_prompt_is_what_the_demo_mllm_is_trained_on() {
        let choices = vec!["red".to_string(), "blue".to_string()];
        let (before, after) = render_prompt(PROMPT, "Which color?", &choices);
        let stage = format!("{before}{}{after}", mllm::demo::IMAGE_TOKEN.repeat(3));
        assert_eq!(stage, mllm::demo::chat_prompt(&question_block("Which color?", &choices), 3));
        assert_eq!(
            stage,
            "<|im_start|>user\n<image><image><image>\nQuestion: Which color?\nOptions: (A) red (B) blue<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
