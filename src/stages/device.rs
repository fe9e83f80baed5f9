//! The device an MLLM stage runs on, resolved before the stage is keyed: `auto` becomes `cuda:0` or
//! `cpu` here, so the cache key, the lineage and the log name the device actually used, and CPU and GPU
//! runs never share a key. `mmb` does not link libtorch, so it decides from what `mmb-torch` was linked
//! with (`build.rs` sets `mmb_cuda_linked` when it links libtorch_cuda) and whether a GPU is visible;
//! the worker resolves the same choice with libtorch and refuses to run when the two disagree
//! ([`check_worker_device`]), and `cuda` where there is none is an error, never a silent CPU run.
//!
//! Before anything runs, [`check_machine`] holds every stage's requested device (the MLLM's `device`) and
//! ONNX execution provider against what this machine has, so a GPU request on a machine without one fails
//! up front naming the stage, the setting and the file that set it, not after the CPU stages before it
//! ran. A stage that runs elsewhere (`executor = "slurm"`) is left to its node's own checks.
use super::config::StageConfigs;
use crate::encoders::runtime::ExecutionProvider;

/// Whether `mmb-torch` was built with libtorch's CUDA library linked.
pub fn cuda_linked() -> bool {
    cfg!(mmb_cuda_linked)
}

/// Whether an NVIDIA GPU is visible to this process (a driver device node, and CUDA_VISIBLE_DEVICES not
/// hiding every device).
pub fn gpu_visible() -> bool {
    let hidden = std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| v.trim().is_empty() || v.trim() == "-1");
    !hidden && std::path::Path::new("/dev/nvidia0").exists()
}

/// `auto`, `cpu`, `cuda`, `cuda:N` → the device the stage will run on (`cpu` or `cuda:N`).
pub fn resolve_device(choice: &str) -> anyhow::Result<String> {
    match choice {
        "cpu" => Ok("cpu".into()),
        "auto" => Ok(if cuda_linked() && gpu_visible() { "cuda:0".into() } else { "cpu".into() }),
        "cuda" => Ok("cuda:0".into()),
        _ => match choice.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Ok(format!("cuda:{n}")),
            None => anyhow::bail!("device: expected auto, cpu, cuda or cuda:N, found {choice:?}"),
        },
    }
}

/// The device part of an MLLM stage's cache key: the resolved device and the dtype (`cuda:0/bf16`). A
/// device that does not parse keys as written (the run then fails with the parse error).
pub fn device_key(choice: &str, dtype: &str) -> String {
    format!("{}/{dtype}", resolve_device(choice).unwrap_or_else(|_| choice.to_string()))
}

/// The worker's check: libtorch resolved `choice` to `used` (`cpu` or `cuda:N`); it must be the device the
/// stage was keyed on.
pub fn check_worker_device(stage: &str, choice: &str, used: &str) -> anyhow::Result<()> {
    let keyed = resolve_device(choice)?;
    anyhow::ensure!(
        keyed == used,
        "{stage}: device = {choice:?} resolved to {used} in the worker but to {keyed} when the stage was keyed \
         (mmb-torch linked with CUDA: {}, GPU visible: {}); set the device explicitly",
        cuda_linked(),
        gpu_visible()
    );
    Ok(())
}

/// What this machine offers the stages.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    /// `mmb-torch` was built with libtorch_cuda ([`cuda_linked`]).
    pub cuda_linked: bool,
    /// An NVIDIA GPU is visible ([`gpu_visible`]).
    pub gpu_visible: bool,
    /// Whether the loaded ONNX Runtime offers a provider (`encoders::runtime::provider_available`).
    pub onnx_offers: fn(&ExecutionProvider) -> anyhow::Result<bool>,
}

impl Machine {
    /// This process's machine.
    pub fn this() -> Self {
        Self {
            cuda_linked: cuda_linked(),
            gpu_visible: gpu_visible(),
            onnx_offers: |ep| Ok(crate::encoders::runtime::provider_available(ep)?),
        }
    }
}

/// The stage file that configures a pipeline stage: `rollout_k` and `update_k` take `ppo`'s params,
/// `eval_chains` takes `eval`'s.
pub fn config_stage(stage: &str) -> &str {
    let iteration = |p: &str| stage.strip_prefix(p).is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
    if iteration("rollout_") || iteration("update_") {
        "ppo"
    } else if stage == "eval_chains" {
        "eval"
    } else {
        stage
    }
}

/// Refuses, before anything runs, a pipeline whose stages ask for a device or an ONNX execution provider
/// this machine does not have. `stages`: the pipeline stages the run reaches; `elsewhere(stage)`: the
/// stage runs on another node (Slurm), whose own checks apply. Every refusal is listed, each naming the
/// stage, the setting, its value and the file that set it.
pub fn check_machine(c: &StageConfigs, stages: &[&str], elsewhere: impl Fn(&str) -> bool, m: &Machine) -> anyhow::Result<()> {
    // A config stage is checked here when one of its pipeline stages runs here.
    let here = |cfg: &str| stages.iter().any(|s| config_stage(s) == cfg && !elsewhere(s));
    let mut requests: Vec<(&str, &str, String, Option<ExecutionProvider>)> = Vec::new();
    if here("generate") {
        requests.push(("generate", "device", c.params::<super::generate::GenerateParams>("generate")?.device, None));
    }
    if here("sft") {
        requests.push(("sft", "device", c.params::<super::sft::SftStageParams>("sft")?.device, None));
    }
    if here("features") {
        let ep = c.params::<super::features::FeaturesParams>("features")?.execution_provider;
        requests.push(("features", "execution_provider", String::new(), Some(ep)));
    }
    if here("score") {
        let ep = c.params::<super::score::ScoreParams>("score")?.execution_provider;
        requests.push(("score", "execution_provider", String::new(), Some(ep)));
    }
    if here("ppo") {
        let p: super::ppo::PpoStageParams = c.params("ppo")?;
        requests.push(("ppo", "device", p.device, None));
        requests.push(("ppo", "execution_provider", String::new(), Some(p.execution_provider)));
    }
    // eval's device and ONNX provider are eval_chains' (eval itself only computes the metrics).
    if stages.iter().any(|s| *s == "eval_chains" && !elsewhere(s)) {
        let p: super::eval::EvalParams = c.params("eval")?;
        requests.push(("eval", "device", p.device, None));
        requests.push(("eval", "execution_provider", String::new(), Some(p.execution_provider)));
    }
    let mut refused = Vec::new();
    for (stage, setting, device, ep) in requests {
        let (shown, lacks) = match &ep {
            None => {
                let lacks = match resolve_device(&device) {
                    Err(e) => Some(e.to_string()),
                    Ok(d) if d.starts_with("cuda") && !m.cuda_linked => {
                        Some("mmb-torch was built without CUDA (libtorch_cuda not linked)".to_string())
                    }
                    Ok(d) if d.starts_with("cuda") && !m.gpu_visible => {
                        Some("no NVIDIA GPU is visible (no /dev/nvidia0, or CUDA_VISIBLE_DEVICES hides them)".to_string())
                    }
                    Ok(_) => None,
                };
                (format!("{device:?}"), lacks)
            }
            Some(ep) => {
                let lacks = if ep.is_cpu() {
                    None
                } else if !m.gpu_visible {
                    Some("no NVIDIA GPU is visible (no /dev/nvidia0, or CUDA_VISIBLE_DEVICES hides them)".to_string())
                } else if !(m.onnx_offers)(ep)? {
                    Some(format!("the loaded ONNX Runtime has no {} execution provider (a CPU-only build)", ep.name()))
                } else {
                    None
                };
                (serde_json::to_string(ep).expect("a provider serializes"), lacks)
            }
        };
        if let Some(lacks) = lacks {
            let origin = c.origin(stage, setting)?;
            refused.push(format!("stage `{stage}`: {setting} = {shown} (set in {origin}): {lacks}"));
        }
    }
    anyhow::ensure!(
        refused.is_empty(),
        "this machine cannot run what the stages ask for; nothing ran:\n  {}\nSet the device to \"cpu\" (or \"auto\") and          the execution provider to {{ kind = \"cpu\" }}, or run those stages on a GPU node (stages/executor.toml:          executor = \"slurm\").",
        refused.join("\n  ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(files: &[(&str, &str)]) -> (tempfile::TempDir, StageConfigs) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let c = StageConfigs::new(dir.path());
        (dir, c)
    }

    const ALL: [&str; 9] = ["dataset", "features", "generate", "score", "sft", "rollout_0", "update_0", "eval_chains", "eval"];

    #[test]
    fn a_gpu_request_on_a_machine_without_one_is_refused_naming_stage_setting_and_file() {
        let cpu = Machine { cuda_linked: false, gpu_visible: false, onnx_offers: |_| Ok(false) };
        let (dir, c) = configs(&[
            ("project.toml", "[model]\ndevice = \"cuda\"\n"),
            ("sft.toml", "[params]\ndevice = \"cpu\"\n"),
            ("score.toml", "[params]\nexecution_provider = { kind = \"cuda\", device_id = 1 }\n"),
        ]);
        let e = check_machine(&c, &ALL, |_| false, &cpu).unwrap_err().to_string();
        let project = dir.path().join("project.toml").display().to_string();
        let score = dir.path().join("score.toml").display().to_string();
        for want in [
            format!("stage `generate`: device = \"cuda\" (set in {project}): mmb-torch was built without CUDA"),
            format!("stage `ppo`: device = \"cuda\" (set in {project})"),
            format!("stage `eval`: device = \"cuda\" (set in {project})"),
            format!("stage `score`: execution_provider = {{\"kind\":\"cuda\",\"device_id\":1}} (set in {score}): no NVIDIA GPU"),
        ] {
            assert!(e.contains(&want), "{want}\nnot in\n{e}");
        }
        assert!(!e.contains("`sft`") && !e.contains("`features`") && e.contains("nothing ran"), "{e}");
        // libtorch has CUDA but no GPU is visible: named as such.
        let linked = Machine { cuda_linked: true, ..cpu };
        let e = check_machine(&c, &["generate"], |_| false, &linked).unwrap_err().to_string();
        assert!(e.contains("no NVIDIA GPU is visible") && !e.contains("`score`"), "{e}");
        // A GPU, but a CPU-only ONNX Runtime: the ONNX request alone is refused.
        let gpu = Machine { cuda_linked: true, gpu_visible: true, onnx_offers: |_| Ok(false) };
        let e = check_machine(&c, &ALL, |_| false, &gpu).unwrap_err().to_string();
        assert!(e.contains("stage `score`") && e.contains("no cuda execution provider") && !e.contains("`generate`"), "{e}");
        let full = Machine { onnx_offers: |_| Ok(true), ..gpu };
        assert!(check_machine(&c, &ALL, |_| false, &full).is_ok());
        // Stages that run on Slurm are the node's to check; ppo is checked while any rollout/update runs here.
        let slurm = |s: &str| s != "dataset" && s != "sft" && s != "features";
        assert!(check_machine(&c, &ALL, slurm, &cpu).is_ok());
        let e = check_machine(&c, &ALL, |s: &str| s != "update_0", &cpu).unwrap_err().to_string();
        assert!(e.contains("stage `ppo`") && !e.contains("`generate`") && !e.contains("`score`"), "{e}");
        // eval's device is eval_chains': on Slurm, the metrics stage left here asks for nothing.
        let e = check_machine(&c, &ALL, |s: &str| s != "eval_chains", &cpu).unwrap_err().to_string();
        assert!(e.contains("stage `eval`") && !e.contains("`generate`"), "{e}");
        assert!(check_machine(&c, &["eval"], |_| false, &cpu).is_ok());
        // A run that does not reach a stage does not check it.
        assert!(check_machine(&c, &["dataset", "features", "sft"], |_| false, &cpu).is_ok());
        // The defaults (auto, the CPU provider) always pass; a malformed device is named too.
        let (_d, plain) = configs(&[]);
        assert!(check_machine(&plain, &ALL, |_| false, &cpu).is_ok());
        let (_d, bad) = configs(&[("generate.toml", "[params]\ndevice = \"gpu\"\n")]);
        let e = check_machine(&bad, &ALL, |_| false, &cpu).unwrap_err().to_string();
        assert!(e.contains("stage `generate`: device = \"gpu\"") && e.contains("generate.toml"), "{e}");
    }

    #[test]
    fn iterations_are_configured_by_ppo() {
        assert_eq!(config_stage("rollout_3"), "ppo");
        assert_eq!(config_stage("update_0"), "ppo");
        assert_eq!(config_stage("ppo"), "ppo");
        assert_eq!(config_stage("rollout_"), "rollout_");
        assert_eq!(config_stage("generate"), "generate");
        assert_eq!(config_stage("eval_chains"), "eval");
    }

    #[test]
    fn choices_resolve_to_the_device_used() {
        assert_eq!(resolve_device("cpu").unwrap(), "cpu");
        assert_eq!(resolve_device("cuda").unwrap(), "cuda:0");
        assert_eq!(resolve_device("cuda:3").unwrap(), "cuda:3");
        let auto = resolve_device("auto").unwrap();
        assert_eq!(auto == "cuda:0", cuda_linked() && gpu_visible());
        assert!(auto == "cpu" || auto == "cuda:0");
        assert!(resolve_device("gpu").unwrap_err().to_string().contains("\"gpu\""));
        assert_eq!(device_key("cpu", "bf16"), "cpu/bf16");
        assert_ne!(device_key("auto", "f32"), "auto/f32");
        assert!(check_worker_device("generate", "cpu", "cpu").is_ok());
        let e = check_worker_device("generate", "cpu", "cuda:0").unwrap_err().to_string();
        assert!(e.contains("generate") && e.contains("cuda:0") && e.contains("cpu"), "{e}");
    }
}
