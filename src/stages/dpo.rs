//! `dpo`: the Conf-CSR baseline's training, DPO (`mllm::dpo`) from the base model on `csr_pairs`'
//! (question + image, chosen, rejected) pairs. The model runs in the `mmb-torch` worker; the
//! reference log-probs are the base model's, computed before training (and again before resuming: with
//! LoRA the freshly attached adapters are zero, so the model is the base model). Outputs: the final
//! checkpoint (SFT's layout, format `mmboundary-dpo-v1`: eval loads it as it loads an SFT checkpoint) and
//! the per-step log. The stage is part of a pipeline only when eval evaluates its policy
//! (`eval.variants` holds [`DPO_POLICY`]), so the main run neither runs nor keys it.
use crate::engine::{InputSpec, Stage, StageContext};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The eval policy of the DPO-trained model (the Conf-CSR baseline's row).
pub const DPO_POLICY: &str = "dpo";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoStageParams {
    /// The base model (unset: the demo MLLM), the same as the other model stages'.
    pub model: Option<PathBuf>,
    /// The prompt template (see `generate`; unset: the model's own).
    pub prompt: Option<String>,
    /// The trainer's settings over `mllm::dpo::DpoParams`' defaults (mode, beta, label_smoothing,
    /// learning_rate, epochs, batch_size, grad_accum_steps, max_grad_norm, warmup_ratio, adamw, seed,
    /// max_steps…). Default: the paper's RL settings shared across methods (App. B: lr 1e-5, batch 16),
    /// β = 0.1 (TRL's; CSR's script trains LLaVA-1.5 7B at lr 1e-7 with LoRA r = 128).
    pub trainer: serde_json::Value,
    pub device: String,
    pub dtype: String,
}

impl Default for DpoStageParams {
    fn default() -> Self {
        let g = super::generate::GenerateParams::default();
        Self {
            model: g.model,
            prompt: g.prompt,
            trainer: serde_json::json!({ "learning_rate": 1e-5, "batch_size": 16 }),
            device: g.device,
            dtype: g.dtype,
        }
    }
}

pub struct DpoStage {
    pub params: DpoStageParams,
}

/// The per-optimizer-step log (TRL's statistics: rewards are β·(log π − log π_ref)).
pub fn dpo_log_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("step", DataType::UInt64, false),
        Field::new("epoch", DataType::UInt64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("grad_norm", DataType::Float64, false),
        Field::new("pairs", DataType::UInt64, false),
        Field::new("reward_chosen", DataType::Float64, false),
        Field::new("reward_rejected", DataType::Float64, false),
        Field::new("reward_margin", DataType::Float64, false),
        Field::new("reward_accuracy", DataType::Float64, false),
        Field::new("seconds", DataType::Float64, false),
    ]))
}

impl DpoStageParams {
    /// The MLLM this stage runs (`super::models::ModelSettings`).
    pub fn mllm(&self) -> super::models::ModelSettings<'_> {
        super::models::ModelSettings { model: &self.model, prompt: &self.prompt, device: &self.device, dtype: &self.dtype }
    }
}

impl Stage for DpoStage {
    fn name(&self) -> &str {
        "dpo"
    }
    /// 2: a target follows the prompt as the model's own generations do (`Prompter::response`: no space
    /// after a turn that ends with a newline).
    fn code_version(&self) -> &str {
        "2"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        let mut v = vec![
            InputSpec::new("pairs", "csr_pairs", "pairs"),
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
        let p = DpoStageParams { prompt: self.params.mllm().prompt(), ..self.params.clone() };
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
