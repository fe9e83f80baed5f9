//! Where a stage's model comes from. `None` (the default): the demo model that the pipeline prepares for
//! the embedded benchmark (a folder artifact of the `demo_clip` / `demo_mllm` stage, so it is cached and
//! keyed like any input). `Some(path)`: a user's own model folder (a real CLIP export, a LLaVA/Qwen2-family
//! Hugging Face folder), whose files' hashes become part of the cache key.
use crate::engine::{InputSpec, StageContext};
use std::path::{Path, PathBuf};

/// The demo CLIP: stage `demo_clip`, output `clip` (ONNX layout of `encoders::clip::Clip::load`).
pub const DEMO_CLIP: (&str, &str) = ("demo_clip", "clip");
/// The demo MLLM: stage `demo_mllm`, output `mllm` (a LLaVA-style Hugging Face folder).
pub const DEMO_MLLM: (&str, &str) = ("demo_mllm", "mllm");

/// The input a stage needs for its model, if it uses the demo one.
pub fn model_input(param: &Option<PathBuf>, input: &str, demo: (&str, &str)) -> Option<InputSpec> {
    param.is_none().then(|| InputSpec::new(input, demo.0, demo.1))
}

/// The files to hash into the cache key, if the model is a user's folder.
pub fn model_files(param: &Option<PathBuf>) -> Vec<PathBuf> {
    param.iter().cloned().collect()
}

/// The model folder to load.
pub fn resolve(ctx: &StageContext, param: &Option<PathBuf>, input: &str) -> anyhow::Result<PathBuf> {
    match param {
        Some(p) => Ok(p.clone()),
        None => ctx.input_folder(input),
    }
}

/// The prompt a model stage is keyed and run with: the one set, else the model's own. For the demo MLLM
/// that is [`super::demo_mllm::PROMPT`], the format it was trained on; for a model folder it stays unset
/// here and the worker renders it from the folder's chat template (`mllm::chat::pipeline_prompt`), whose
/// files are hashed into the key with the rest of the folder.
pub fn prompt(model: &Option<PathBuf>, prompt: &Option<String>) -> Option<String> {
    match (model, prompt) {
        (_, Some(p)) => Some(p.clone()),
        (None, None) => Some(super::demo_mllm::PROMPT.into()),
        (Some(_), None) => None,
    }
}

/// What a model stage (`generate`, `sft`, `dpo`, `ppo`'s iterations, `eval_chains`) runs its MLLM with:
/// the model folder (None: the demo MLLM, the stage's `model` input), the prompt, the device and dtype.
/// The `Stage` methods that follow from them (the model input, the prompt the stage is keyed with, the
/// files hashed into the key, the device key) and the worker's folder are its methods, one implementation
/// for every model stage; each stage's params hand it out (`mllm()`).
#[derive(Debug, Clone, Copy)]
pub struct ModelSettings<'a> {
    pub model: &'a Option<PathBuf>,
    pub prompt: &'a Option<String>,
    pub device: &'a str,
    pub dtype: &'a str,
}

impl ModelSettings<'_> {
    /// The name of the input that carries the demo MLLM's folder.
    pub const INPUT: &'static str = "model";

    /// The demo MLLM's folder as an input, if the stage uses it ([`model_input`]).
    pub fn input(&self) -> Option<InputSpec> {
        model_input(self.model, Self::INPUT, DEMO_MLLM)
    }

    /// The prompt the stage is keyed and run with ([`prompt`]).
    pub fn prompt(&self) -> Option<String> {
        prompt(self.model, self.prompt)
    }

    /// The model folder's files to hash into the key ([`model_files`]).
    pub fn files(&self) -> Vec<PathBuf> {
        model_files(self.model)
    }

    /// The device and dtype as keyed (`super::device::device_key`).
    pub fn device_key(&self) -> String {
        super::device::device_key(self.device, self.dtype)
    }

    /// The model folder to load ([`resolve`]).
    pub fn folder(&self, ctx: &StageContext) -> anyhow::Result<PathBuf> {
        resolve(ctx, self.model, Self::INPUT)
    }
}

/// A path for messages.
pub fn describe(param: &Option<PathBuf>) -> String {
    param.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_else(|| "the demo model".into())
}
