//! `stages/project.toml`: the one place for what the stages share — the MLLM folder, its device, dtype
//! and prompt, the CLIP folder, the judge and the MiniLM. Every key is optional; a key left unset keeps
//! each stage's own default (the demo MLLM and demo CLIP the pipeline prepares), so a project without the
//! file runs, and is keyed, exactly as before.
//!
//! A set key becomes a layer of the params of every stage that reads it, between the defaults in code
//! and the stage's own file: defaults < project.toml < `stages/<stage>.toml` < a preset's or sweep
//! variant's overrides. So a stage file can still override what is sensible per stage (a device, the
//! judge of `score`), and since the values land in the stages' params, which are part of their cache
//! keys, changing one reruns exactly the stages that read it and what depends on them.
//!
//! ```toml
//! [model]                      # generate, sft, rollout_k/update_k/ppo, eval
//! path = "models/llava-1.5"    # a Hugging Face LLaVA-style folder; unset: the demo MLLM
//! device = "cuda"              # auto | cpu | cuda | cuda:N
//! dtype = "bf16"               # f32 | bf16 | f16
//! # prompt = "..."             # unset: the model's own chat template (tokenizer_config.json)
//! [clip]                       # features, score, rollout_k
//! path = "models/clip-vit-l-336"
//! [judge]                      # score, rollout_k, eval: kind, cross_encoder, and the I(z) threshold
//! kind = "cross_encoder"
//! cross_encoder = "models/stsb-roberta-large"
//! threshold = 0.64
//! [minilm]                     # score, rollout_k, eval
//! path = ".deps/models/all-MiniLM-L6-v2"
//! [onnx]                       # features, score, rollout_k/update_k/ppo, eval: where ONNX encoders run
//! execution_provider = { kind = "cuda", device_id = 0 }
//! ```
//!
//! A device or execution provider this machine does not have is refused before any stage runs
//! ([`super::device::check_machine`]), naming the stage, the setting and the file that set it.
//!
//! Paths are relative to the project root (the folder that holds `stages/`), as in the stage files.
use super::judges::JudgeKind;
use crate::encoders::runtime::ExecutionProvider;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file's name inside the stages folder.
pub const FILE: &str = "project.toml";

/// The stages whose params take the MLLM (`model`, `device`, `dtype`, `prompt`). `ppo`'s params are also
/// those of every `rollout_k` and `update_k`.
pub const MLLM_STAGES: [&str; 5] = ["generate", "sft", "ppo", "eval", "dpo"];
/// The stages whose params take the CLIP folder (`clip`).
pub const CLIP_STAGES: [&str; 3] = ["features", "score", "ppo"];
/// The stages whose params take the judge and the MiniLM (`judge`, `minilm`, the match threshold).
pub const JUDGE_STAGES: [&str; 3] = ["score", "ppo", "eval"];
/// The stages that run ONNX encoders and take `execution_provider`.
pub const ONNX_STAGES: [&str; 4] = ["features", "score", "ppo", "eval"];

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// What the project is (documentation only).
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub clip: PathSection,
    #[serde(default)]
    pub judge: JudgeSection,
    #[serde(default)]
    pub minilm: PathSection,
    #[serde(default)]
    pub onnx: OnnxSection,
}

/// Where the ONNX encoders run (the CLIP, the judge, the MiniLM).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxSection {
    /// `{ kind = "cpu" }`, `{ kind = "cuda", device_id = 0 }` or `{ kind = "tensor_rt", device_id = 0, … }`.
    pub execution_provider: Option<ExecutionProvider>,
}

/// The MLLM and how it runs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face LLaVA-style folder (`config.json`, `*.safetensors`, `tokenizer.json`, its chat
    /// template in `tokenizer_config.json` or `chat_template.jinja`); unset: the demo MLLM.
    pub path: Option<PathBuf>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: Option<String>,
    /// `f32`, `bf16` or `f16`.
    pub dtype: Option<String>,
    /// The prompt, with `{image}`, `{question}` and `{options}` slots; unset: the model's own (the demo
    /// MLLM's format, or a folder's chat template rendered by `mllm::chat::pipeline_prompt`).
    pub prompt: Option<String>,
}

/// A model folder.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSection {
    pub path: Option<PathBuf>,
}

/// The judge of TokenSAR's g and of I(z) (see `stages::judges::JudgeParams`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSection {
    pub kind: Option<JudgeKind>,
    /// The exported cross-encoder folder (`kind = "cross_encoder"`).
    pub cross_encoder: Option<PathBuf>,
    /// I(z) = 1 above this: `score` and `eval`'s `match_threshold`, `ppo`'s `rewards.match_threshold`.
    pub threshold: Option<f64>,
}

impl Project {
    /// `<dir>/project.toml`; a missing file is the empty project (every stage on its own defaults). A
    /// malformed file or an unknown key is an error naming the file.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        }
    }

    /// What this project sets in `stage`'s params, as a params table (empty for a stage that reads none
    /// of its keys, or when nothing is set).
    pub fn layer(&self, stage: &str) -> toml::Table {
        let mut t = toml::Table::new();
        let path = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned());
        if MLLM_STAGES.contains(&stage) {
            let m = &self.model;
            if let Some(p) = &m.path {
                t.insert("model".into(), path(p));
            }
            for (k, v) in [("device", &m.device), ("dtype", &m.dtype), ("prompt", &m.prompt)] {
                if let Some(v) = v {
                    t.insert(k.into(), toml::Value::String(v.clone()));
                }
            }
        }
        if CLIP_STAGES.contains(&stage) {
            if let Some(p) = &self.clip.path {
                t.insert("clip".into(), path(p));
            }
        }
        if ONNX_STAGES.contains(&stage) {
            if let Some(ep) = &self.onnx.execution_provider {
                let v = toml::Value::try_from(ep).expect("an execution provider is a TOML table");
                t.insert("execution_provider".into(), v);
            }
        }
        if JUDGE_STAGES.contains(&stage) {
            if let Some(p) = &self.minilm.path {
                t.insert("minilm".into(), path(p));
            }
            let j = &self.judge;
            let mut judge = toml::Table::new();
            if let Some(k) = j.kind {
                let name = serde_json::to_value(k).expect("a judge kind serializes");
                judge.insert("kind".into(), toml::Value::String(name.as_str().expect("a unit variant").into()));
            }
            if let Some(p) = &j.cross_encoder {
                judge.insert("cross_encoder".into(), path(p));
            }
            if !judge.is_empty() {
                t.insert("judge".into(), toml::Value::Table(judge));
            }
            if let Some(x) = j.threshold {
                if stage == "ppo" {
                    t.insert("rewards".into(), toml::Value::Table(toml::Table::from_iter([("match_threshold".into(), x.into())])));
                } else {
                    t.insert("match_threshold".into(), x.into());
                }
            }
        }
        t
    }
}

/// The stages that must agree on a shared value, and what each uses: one MLLM is generated with, trained
/// and evaluated (its checkpoints are deltas over it), one CLIP gives both the patch features it reads and
/// CLIPScore, and one prompt is trained and evaluated. A stage file or override that sets another value in
/// one of them is an error naming the stages, never a silent mix.
pub fn check_agreement(what: &str, uses: &[(&str, String)]) -> anyhow::Result<()> {
    let first = &uses[0].1;
    if uses.iter().all(|(_, v)| v == first) {
        return Ok(());
    }
    let list = uses.iter().map(|(s, v)| format!("{s}: {v}")).collect::<Vec<_>>().join("; ");
    anyhow::bail!(
        "the stages disagree on `{what}` ({list}); they must use one: set it once in stages/{FILE} and not in the \
         stage files"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_project_sets_nothing() {
        let p = Project::default();
        for s in ["dataset", "features", "generate", "score", "sft", "ppo", "eval", "report"] {
            assert!(p.layer(s).is_empty(), "{s}");
        }
    }

    #[test]
    fn each_key_reaches_exactly_the_stages_that_read_it() {
        let p: Project = toml::from_str(
            "[model]\npath = \"m\"\ndevice = \"cpu\"\n[clip]\npath = \"c\"\n[judge]\nkind = \"cross_encoder\"\n\
             cross_encoder = \"x\"\nthreshold = 0.5\n[minilm]\npath = \"l\"\n\
             [onnx]\nexecution_provider = { kind = \"cuda\", device_id = 1 }\n",
        )
        .unwrap();
        let keys = |s: &str| p.layer(s).keys().cloned().collect::<Vec<_>>().join(",");
        assert_eq!(keys("dataset"), "");
        assert_eq!(keys("features"), "clip,execution_provider");
        assert_eq!(keys("generate"), "device,model");
        assert_eq!(keys("sft"), "device,model");
        assert_eq!(keys("score"), "clip,execution_provider,judge,match_threshold,minilm");
        assert_eq!(keys("ppo"), "clip,device,execution_provider,judge,minilm,model,rewards");
        assert_eq!(keys("eval"), "device,execution_provider,judge,match_threshold,minilm,model");
        assert_eq!(keys("report"), "");
        let ep = toml::Table::from_iter([("kind".to_string(), "cuda".into()), ("device_id".to_string(), 1i64.into())]);
        assert_eq!(p.layer("features")["execution_provider"], toml::Value::Table(ep));
        let ppo = p.layer("ppo");
        assert_eq!(ppo["rewards"]["match_threshold"].as_float(), Some(0.5));
        assert_eq!(ppo["judge"]["kind"].as_str(), Some("cross_encoder"));
        assert_eq!(ppo["judge"]["cross_encoder"].as_str(), Some("x"));
    }

    #[test]
    fn unknown_keys_and_disagreements_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "[model]\nfolder = \"m\"\n").unwrap();
        let e = Project::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("project.toml") && e.contains("folder"), "{e}");
        assert_eq!(Project::load(&dir.path().join("none")).unwrap(), Project::default());
        let e = check_agreement("model", &[("generate", "a".into()), ("eval", "b".into())]).unwrap_err().to_string();
        assert!(e.contains("generate: a") && e.contains("eval: b") && e.contains("project.toml"), "{e}");
        assert!(check_agreement("model", &[("generate", "a".into()), ("eval", "a".into())]).is_ok());
    }
}
