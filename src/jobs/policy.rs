//! Loading a policy: the base model (any family of `mllm::family`), plus (optionally) a trained checkpoint of the `sft` or `ppo` stage.
//! Both checkpoints carry the SFT trainer's params in their metadata (`params`), so the LoRA set-up
//! travels with the weights; `param.<name>` tensors are copied into the matching variables.
use super::{JobError, Result};
use mllm::family::Mllm;
use mllm::sft::{AsMutLm, FineTuneMode, SftParams};
use mllm::weights::read_safetensors;
use std::path::Path;
use tch::nn;

/// Value-head variables (PPO checkpoints) that a plain policy does not have.
const VALUE_HEAD: &str = "v_head.";

pub struct Policy {
    pub vs: nn::VarStore,
    pub model: Mllm,
    /// The SFT params of the restored checkpoint (None: the base model).
    pub sft: Option<SftParams>,
    /// The checkpoint's `params` metadata verbatim (carried into PPO checkpoints).
    pub sft_meta: Option<String>,
}

impl Policy {
    pub fn has_lora(&self) -> bool {
        matches!(self.sft.as_ref().map(|p| &p.mode), Some(FineTuneMode::Lora(_)))
    }
}

pub fn load(model_dir: &Path, device: tch::Device, dtype: mllm::DType, checkpoint: Option<&Path>) -> Result<Policy> {
    let (vs, mut model) = Mllm::load(model_dir, device, dtype)?;
    let Some(ck) = checkpoint else { return Ok(Policy { vs, model, sft: None, sft_meta: None }) };
    let (tensors, meta) = read_safetensors(ck)?;
    let raw =
        meta.get("params").ok_or_else(|| JobError::file(ck, "checkpoint metadata has no `params` (expected an sft or ppo checkpoint)"))?;
    let sft: SftParams = serde_json::from_str(raw).map_err(|e| JobError::file(ck, format!("metadata `params` is not SFT params: {e}")))?;
    if let FineTuneMode::Lora(lp) = &sft.mode {
        mllm::lora::attach(&vs, model.lm_mut(), lp)?;
    }
    let vars = vs.variables();
    let mut missing = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            match tensors.get(&format!("param.{name}")) {
                Some(src) => {
                    if src.size() != var.size() {
                        let msg = format!("weight {name}: expected shape {:?}, found {:?}", var.size(), src.size());
                        return Err(JobError::file(ck, msg));
                    }
                    var.shallow_clone().f_copy_(&src.to_kind(var.kind()).to_device(var.device()))?;
                }
                None if var.requires_grad() => missing.push(name.clone()),
                None => {}
            }
        }
        Ok(())
    })?;
    if !missing.is_empty() {
        return Err(JobError::file(ck, format!("checkpoint lacks trained weight(s) {}", missing.join(", "))));
    }
    let unexpected: Vec<&String> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("param.").map(|_| k))
        .filter(|k| !k["param.".len()..].starts_with(VALUE_HEAD) && !vars.contains_key(&k["param.".len()..]))
        .collect();
    if !unexpected.is_empty() {
        return Err(JobError::file(ck, format!("checkpoint weights {unexpected:?} match no variable of {}", model_dir.display())));
    }
    Ok(Policy { vs, model, sft: Some(sft), sft_meta: Some(raw.clone()) })
}

/// The base model made trainable as `mode` says (a `mllm::sft::FineTuneMode` as JSON: `"Full"` or
/// `{"Lora": {…}}`), carrying SFT params with that mode as its metadata, so that its checkpoints load
/// as an SFT model's do: PPO from the vanilla model (the DRL baseline).
pub fn load_trainable_base(model_dir: &Path, device: tch::Device, dtype: mllm::DType, mode: &serde_json::Value) -> Result<Policy> {
    let mode: FineTuneMode = serde_json::from_value(mode.clone())
        .map_err(|e| JobError::param("ppo.start_mode", format!("expected \"Full\" or {{ Lora = {{ … }} }}, found {mode}: {e}")))?;
    let (vs, mut model) = Mllm::load(model_dir, device, dtype)?;
    if let FineTuneMode::Lora(lp) = &mode {
        mllm::lora::attach(&vs, model.lm_mut(), lp)?;
    }
    let sft = SftParams { mode, ..SftParams::default() };
    let meta = serde_json::to_string(&sft)?;
    Ok(Policy { vs, model, sft: Some(sft), sft_meta: Some(meta) })
}

/// Freezes every variable (a reference model).
pub fn freeze(p: &Policy) {
    for (_, t) in p.vs.variables() {
        let _ = t.set_requires_grad(false);
    }
}

/// Resolves a stage's `device` param with libtorch, checks that it is the device the stage was keyed on
/// (`mmboundary::stages::device`), and says which device runs the stage. `cuda` where libtorch sees none
/// is an error.
pub fn device(stage: &str, choice: &str) -> Result<tch::Device> {
    use std::str::FromStr;
    let d = mllm::DeviceChoice::from_str(choice)?.resolve().map_err(JobError::step(format!("{stage}: device = {choice:?}")))?;
    let used = match d {
        tch::Device::Cpu => "cpu".to_string(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        other => return Err(JobError::stage(stage, format!("device {other:?} is not supported (cpu or cuda:N)"))),
    };
    mmboundary::stages::device::check_worker_device(stage, choice, &used)?;
    eprintln!("{stage}: running on {used} (device = {choice:?})");
    Ok(d)
}

/// A model stage's MLLM as the worker runs it: its folder (`ModelSettings::folder`: the user's, or the
/// demo MLLM's input), the device resolved and checked against the key ([`device`]), the dtype parsed.
pub struct ModelRun {
    pub dir: std::path::PathBuf,
    pub device: tch::Device,
    pub dtype: mllm::DType,
}

impl ModelRun {
    /// Stage `stage`'s (the name its messages carry).
    pub fn resolve(ctx: &mmboundary::engine::StageContext, stage: &str, m: &mmboundary::stages::models::ModelSettings) -> Result<Self> {
        use std::str::FromStr;
        let dir = m.folder(ctx)?;
        let device = device(stage, m.device)?;
        let dtype = mllm::DType::from_str(m.dtype)?;
        Ok(Self { dir, device, dtype })
    }
}
