//! `sft`: the warm-up fine-tuning (§3.1.2) on chains with interleaved confidence statements, with the
//! project's SFT trainer (LoRA or full, AdamW, 10 % warm-up, loss on the response only). The model runs
//! in the `mmb-torch` worker. Outputs: the final checkpoint (trainable weights and optimizer state, as
//! safetensors) and the per-step log.
use crate::engine::{InputSpec, Stage, StageContext};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftStageParams {
    /// The base model (a LLaVA-style Hugging Face folder), the same as `generate`'s (unset: the demo MLLM).
    pub model: Option<PathBuf>,
    /// The prompt template (see `generate`; unset: the model's own).
    pub prompt: Option<String>,
    /// The trainer's settings, as `mllm::sft::SftParams` reads them (mode, learning_rate, epochs,
    /// batch_size, grad_accum_steps, max_grad_norm, warmup_ratio, adamw, seed, max_steps…). The paper:
    /// AdamW, lr 1e-4, 10 % warm-up, batch 16.
    pub trainer: serde_json::Value,
    pub device: String,
    pub dtype: String,
}

impl Default for SftStageParams {
    fn default() -> Self {
        let g = super::generate::GenerateParams::default();
        Self {
            model: g.model,
            prompt: g.prompt,
            trainer: serde_json::json!({ "learning_rate": 1e-4, "batch_size": 16, "warmup_ratio": 0.1 }),
            device: g.device,
            dtype: g.dtype,
        }
    }
}

pub struct SftStage {
    pub params: SftStageParams,
}

/// The per-optimizer-step log.
pub fn sft_log_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("step", DataType::UInt64, false),
        Field::new("epoch", DataType::UInt64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("grad_norm", DataType::Float64, false),
        Field::new("response_tokens", DataType::Int64, false),
        Field::new("seconds", DataType::Float64, false),
    ]))
}

impl SftStageParams {
    /// The MLLM this stage runs (`super::models::ModelSettings`).
    pub fn mllm(&self) -> super::models::ModelSettings<'_> {
        super::models::ModelSettings { model: &self.model, prompt: &self.prompt, device: &self.device, dtype: &self.dtype }
    }
}

impl Stage for SftStage {
    fn name(&self) -> &str {
        "sft"
    }
    /// 2: a target follows the prompt as the model's own generations do (`Prompter::response`: no space
    /// after a turn that ends with a newline).
    fn code_version(&self) -> &str {
        "2"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        let mut v = vec![
            InputSpec::new("sft_data", "map", "sft_data"),
            InputSpec::new("items", "dataset", "items"),
            InputSpec::new("features", "features", "features"),
        ];
        v.extend(self.params.mllm().input());
        v
    }
    fn outputs(&self) -> Vec<String> {
        vec!["checkpoint".into(), "log".into()]
    }
    /// With the prompt resolved ([`super::models::prompt`]).
    fn params(&self) -> serde_json::Value {
        let p = SftStageParams { prompt: self.params.mllm().prompt(), ..self.params.clone() };
        serde_json::to_value(&p).expect("params serialize")
    }
    fn models(&self) -> Vec<PathBuf> {
        self.params.mllm().files()
    }
    fn device(&self) -> String {
        self.params.mllm().device_key()
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        super::worker::run_in_worker(ctx)
    }
}
