//! `stages/project.toml`: the MLLM, CLIP, judge, MiniLM, device, dtype and prompt set once and read by
//! every stage that needs them; a change reruns exactly the stages that read the value (through the
//! engine, on the tiny models); a disagreement between stage files is an error; an unset project keeps
//! the demo pipeline's params (and so its keys) as they were.
use mmboundary::engine::{LockFile, Pipeline, RunOptions};
use std::path::{Path, PathBuf};

mod common;
#[path = "common/worker.rs"]
mod worker;
use common::{fixtures, llava_chat_template, tiny_llava};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped stage files in a fresh folder (so a test can add a project file).
fn shipped_stages(dir: &Path) -> PathBuf {
    let out = dir.join("stages");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(repo().join("stages")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") && p.file_name().unwrap() != "project.toml" {
            std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
        }
    }
    out
}

fn params(p: &Pipeline, stage: &str) -> serde_json::Value {
    let v = p.get(stage).unwrap().params();
    // rollout_k / update_k key the ppo params under `ppo`.
    v.get("ppo").cloned().unwrap_or(v)
}

/// The bug this file exists for: `ppo` and `eval` took `model`, `clip` and `prompt` from code defaults
/// whatever the other stages were given. With stages/project.toml, every stage that reads one of them
/// gets the project's value.
#[test]
fn every_stage_that_reads_a_shared_value_takes_it_from_the_project_file() {
    let dir = tempfile::tempdir().unwrap();
    let stages = shipped_stages(dir.path());
    std::fs::write(
        stages.join("project.toml"),
        "[model]\npath = \"models/llava\"\ndevice = \"cpu\"\ndtype = \"bf16\"\n[clip]\npath = \"models/clip\"\n\
         [judge]\nkind = \"cross_encoder\"\ncross_encoder = \"models/stsb\"\nthreshold = 0.7\n[minilm]\npath = \"models/minilm\"\n",
    )
    .unwrap();
    let p = mmboundary::stages::pipeline(&stages).unwrap();
    let k = p.get("ppo").unwrap().params()["iterations"].as_u64().unwrap();
    let mut mllm = vec!["generate".to_string(), "sft".into(), "eval_chains".into()];
    for i in 0..k {
        mllm.extend([format!("rollout_{i}"), format!("update_{i}")]);
    }
    for s in &mllm {
        let v = params(&p, s);
        assert_eq!(v["model"], "models/llava", "{s}");
        assert_eq!(v["device"], "cpu", "{s}");
        assert_eq!(v["dtype"], "bf16", "{s}");
        // A model folder: the prompt is its own chat template's, rendered by the worker.
        assert!(v["prompt"].is_null(), "{s}: {}", v["prompt"]);
        assert_eq!(p.get(s).unwrap().device(), "cpu/bf16", "{s}");
        assert!(p.get(s).unwrap().models().contains(&PathBuf::from("models/llava")), "{s}: the folder is hashed into the key");
        assert!(p.get(s).unwrap().inputs().iter().all(|i| i.stage != "demo_mllm"), "{s} still reads the demo MLLM");
    }
    for s in ["features", "score", "rollout_0"] {
        assert_eq!(params(&p, s)["clip"], "models/clip", "{s}");
        assert!(p.get(s).unwrap().inputs().iter().all(|i| i.stage != "demo_clip"), "{s} still reads the demo CLIP");
    }
    for s in ["score", "rollout_0", "eval_chains"] {
        let v = params(&p, s);
        assert_eq!(v["minilm"], "models/minilm", "{s}");
        assert_eq!(v["judge"]["kind"], "cross_encoder", "{s}");
        assert_eq!(v["judge"]["cross_encoder"], "models/stsb", "{s}");
    }
    assert_eq!(params(&p, "score")["match_threshold"], 0.7);
    assert_eq!(params(&p, "eval_chains")["match_threshold"], 0.7);
    assert_eq!(params(&p, "rollout_0")["rewards"]["match_threshold"], 0.7);
    // Stages that read none of it are untouched, and the demo models are needed by nothing on the way to
    // the report.
    let plain = mmboundary::stages::pipeline(&shipped_stages(&dir.path().join("plain"))).unwrap();
    for s in ["dataset", "bin", "map", "report"] {
        assert_eq!(p.get(s).unwrap().params(), plain.get(s).unwrap().params(), "{s}");
    }
    // No stage reads the demo models any more, so the pipeline does not hold them (`mmb run` would
    // otherwise train them for nothing).
    for s in ["demo_clip", "demo_mllm"] {
        assert!(p.get(s).is_err() && plain.get(s).is_ok(), "{s}");
    }

    // A stage file still overrides what makes sense per stage (here eval's device and judge).
    std::fs::write(stages.join("eval.toml"), "[params]\ndevice = \"cuda:1\"\nlimit = 3\n[params.judge]\nkind = \"minilm_cosine\"\n")
        .unwrap();
    let p = mmboundary::stages::pipeline(&stages).unwrap();
    let e = params(&p, "eval_chains");
    assert_eq!((e["device"].as_str(), e["judge"]["kind"].as_str(), e["limit"].as_u64()), (Some("cuda:1"), Some("minilm_cosine"), Some(3)));
    assert_eq!(params(&p, "generate")["device"], "cpu");
}

#[test]
fn stage_files_that_split_a_shared_value_are_an_error_naming_the_stages() {
    let dir = tempfile::tempdir().unwrap();
    let stages = shipped_stages(dir.path());
    // What the README used to say: the model in generate.toml and sft.toml; ppo and eval kept the demo.
    for s in ["generate", "sft"] {
        let text = std::fs::read_to_string(stages.join(format!("{s}.toml"))).unwrap();
        std::fs::write(stages.join(format!("{s}.toml")), text.replacen("[params]\n", "[params]\nmodel = \"models/llava\"\n", 1)).unwrap();
    }
    let e = format!("{:#}", mmboundary::stages::pipeline(&stages).err().expect("a split model"));
    assert!(
        e.contains("`model`")
            && e.contains("generate: models/llava")
            && e.contains("ppo: the demo model")
            && e.contains("eval: the demo model"),
        "{e}"
    );
    assert!(e.contains("project.toml"), "{e}");
    // The same for the CLIP (features vs score vs ppo).
    let stages = shipped_stages(&dir.path().join("clip"));
    std::fs::write(stages.join("score.toml"), "[params]\nclip = \"models/clip\"\n").unwrap();
    let e = format!("{:#}", mmboundary::stages::pipeline(&stages).err().expect("a split CLIP"));
    assert!(e.contains("`clip`") && e.contains("score: models/clip") && e.contains("features: the demo model"), "{e}");
    // An unknown key in the project file names the file.
    let stages = shipped_stages(&dir.path().join("typo"));
    std::fs::write(stages.join("project.toml"), "[model]\nfolder = \"x\"\n").unwrap();
    let e = format!("{:#}", mmboundary::stages::pipeline(&stages).err().expect("an unknown key"));
    assert!(e.contains("project.toml") && e.contains("folder"), "{e}");
}

/// No project file (or an empty one): the demo pipeline's params are what they were before the file
/// existed, so its cache keys do not change. The demo MLLM's prompt is its own SmolLM2 format.
#[test]
fn an_unset_project_keeps_the_demo_params() {
    let dir = tempfile::tempdir().unwrap();
    let stages = shipped_stages(dir.path());
    let before = mmboundary::stages::pipeline(&stages).unwrap();
    std::fs::write(stages.join("project.toml"), "description = \"nothing set\"\n[model]\n[clip]\n").unwrap();
    let after = mmboundary::stages::pipeline(&stages).unwrap();
    let demo_prompt = "<|im_start|>user\n{image}\nQuestion: {question}\nOptions: {options}<|im_end|>\n<|im_start|>assistant\n";
    for s in before.ordered() {
        assert_eq!(s.params(), after.get(s.name()).unwrap().params(), "{}", s.name());
        assert_eq!(s.device(), after.get(s.name()).unwrap().device(), "{}", s.name());
    }
    for s in ["generate", "sft", "rollout_0", "update_0", "eval_chains"] {
        let v = params(&after, s);
        assert_eq!(v["prompt"], demo_prompt, "{s}");
        assert!(v["model"].is_null(), "{s}");
        assert_eq!(v["device"], "auto", "{s}");
        assert!(after.get(s).unwrap().inputs().iter().any(|i| i.stage == "demo_mllm"), "{s}");
    }
    // The generate params as they were keyed before the project file existed (the shipped generate.toml
    // over the defaults in code), byte for byte.
    let want = serde_json::json!({
        "model": null, "splits": ["train"], "samples": 1, "max_new_tokens": 120, "temperature": 0.1, "top_p": 1.0,
        "seed": 0, "batch": 16, "device": "auto", "dtype": "f32", "prompt": demo_prompt, "limit": 400
    });
    assert_eq!(after.get("generate").unwrap().params(), want);
}

/// The stage files of the tiny pipeline (as tests/common/tiny.rs builds it in code) and a project file.
fn tiny_project(dir: &Path, model: &Path, clip: &Path, extra_model: &str) -> PathBuf {
    let stages = dir.join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    let pool = repo().join("stages/statements.toml");
    let pool = pool.display();
    let files = [
        ("dataset", "[params]\nn_items = 16\nimage_size = 32\nchunk = 8\n".to_string()),
        ("features", "[params]\nbatch = 8\n".into()),
        ("generate", "[params]\nlimit = 4\nbatch = 4\nmax_new_tokens = 12\n".into()),
        ("map", format!("[params]\npool = \"{pool}\"\n")),
        ("sft", "[params]\ntrainer = { epochs = 1, batch_size = 2, max_steps = 1, learning_rate = 1e-3 }\n".into()),
        (
            "ppo",
            format!(
                "[params]\niterations = 2\nprompts_per_iteration = 2\npool = \"{pool}\"\n\
                 trainer = {{ ppo_epochs = 1, mini_batch_size = 3, generation = {{ max_new_tokens = 12 }} }}\n"
            ),
        ),
        ("eval", format!("[params]\nlimit = 1\nmax_new_tokens = 12\nbatch = 4\npool = \"{pool}\"\n")),
    ];
    for (s, text) in files {
        std::fs::write(stages.join(format!("{s}.toml")), text).unwrap();
    }
    write_project(&stages, model, clip, extra_model);
    stages
}

/// `extra_model`: more `[model]` keys (a device other than cpu, a prompt).
fn write_project(stages: &Path, model: &Path, clip: &Path, extra_model: &str) {
    let minilm = mmboundary::encoders::minilm::default_model_dir();
    let device = if extra_model.contains("device") { "" } else { "device = \"cpu\"\n" };
    std::fs::write(
        stages.join("project.toml"),
        format!(
            "[model]\npath = \"{}\"\n{device}{extra_model}\n[clip]\npath = \"{}\"\n[minilm]\npath = \"{}\"\n",
            model.display(),
            clip.display(),
            minilm.display()
        ),
    )
    .unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// Through the engine on the tiny models: the whole pipeline runs from the stage files and project.toml
/// alone; changing a project value reruns the stages that read it and what is downstream of them, and
/// nothing else (a Parquet artifact's lineage holds its stage's key, so a rerun stage's outputs are new
/// artifacts); the prompt is the model's own chat template; `device = "cuda"` on a machine without CUDA
/// fails naming the stage and the device.
#[test]
fn changing_a_project_value_reruns_exactly_the_stages_that_read_it() {
    worker::worker();
    let (dir, store, model) = common::tiny_llava_store();
    let clip = fixtures().join("encoders/clip_tiny");
    let stages = tiny_project(dir.path(), &model, &clip, "");
    let run = |target: &str| {
        let p = mmboundary::stages::pipeline(&stages).unwrap();
        p.run(&store, &RunOptions { target: Some(target.into()), ..Default::default() })
    };
    let s = run("report").unwrap();
    let rl = ["rollout_0", "update_0", "rollout_1", "update_1", "ppo"];
    let all: Vec<&str> = ["dataset", "features", "generate", "score", "bin", "map", "sft"]
        .into_iter()
        .chain(rl)
        .chain(["eval_chains", "eval", "report"])
        .collect();
    assert_eq!(s.ran, all);
    // The prompt each model stage ran with is the folder's own (llava-1.5's), rendered by the worker.
    let lock = LockFile::load(store.root()).unwrap();
    assert!(lock.stages["generate"].params["prompt"].is_null());
    let (_, want_prompt) = llava_chat_template();
    assert_eq!(want_prompt, "USER: {image}\nQuestion: {question}\nOptions: {options} ASSISTANT:");
    let chains = store
        .read_table(&mmboundary::store::ArtifactId::parse(&lock.stages["generate"].outputs["chains"].id).unwrap())
        .unwrap()
        .concat()
        .unwrap();
    assert_eq!(chains.num_rows(), 4);
    assert!(run("report").unwrap().ran.is_empty(), "a second run reruns nothing");

    // The same model at another path: the model's folder (path and files) is in the key of every stage
    // that reads it, so generate and everything downstream of it reruns; dataset and features do not.
    let copy = dir.path().join("copy/tiny-llava");
    copy_dir(&model, &copy);
    write_project(&stages, &copy, &clip, "");
    let s = run("report").unwrap();
    assert_eq!(s.ran, all[2..].to_vec());

    // The judge's threshold, with score.toml keeping its own (a per-stage override): only the stages that
    // take the project's value rerun, the PPO iterations (I(z) in R_KA) and eval, and what follows them.
    std::fs::write(stages.join("score.toml"), "[params]\nmatch_threshold = 0.64\n").unwrap();
    assert!(run("report").unwrap().ran.is_empty(), "the score stage's own value equals the default");
    std::fs::OpenOptions::new()
        .append(true)
        .open(stages.join("project.toml"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"[judge]\nthreshold = 0.5\n"))
        .unwrap();
    let p = mmboundary::stages::pipeline(&stages).unwrap();
    assert_eq!(params(&p, "eval_chains")["match_threshold"], 0.5);
    assert_eq!(params(&p, "score")["match_threshold"], 0.64);
    let s = run("report").unwrap();
    assert_eq!(s.ran, ["rollout_0", "update_0", "rollout_1", "update_1", "ppo", "eval_chains", "eval", "report"]);
    // The template's prompt written out in the project file: every model stage takes it, generate reruns
    // (its params changed) and writes exactly the chains it wrote with the template rendered by the worker.
    write_project(&stages, &copy, &clip, &format!("prompt = {want_prompt:?}"));
    let p = mmboundary::stages::pipeline(&stages).unwrap();
    for s in ["generate", "sft", "rollout_0", "update_1", "eval_chains"] {
        assert_eq!(params(&p, s)["prompt"], want_prompt.as_str(), "{s}");
    }
    assert_eq!(run("generate").unwrap().ran, ["generate"]);
    let lock = LockFile::load(store.root()).unwrap();
    let again = store
        .read_table(&mmboundary::store::ArtifactId::parse(&lock.stages["generate"].outputs["chains"].id).unwrap())
        .unwrap()
        .concat()
        .unwrap();
    for col in ["item_id", "text", "tokens"] {
        assert_eq!(again.column_by_name(col).unwrap(), chains.column_by_name(col).unwrap(), "{col}");
    }

    // A GPU request on a machine without one: an error naming the stage and the device, never a CPU run.
    // `mmb run` refuses it up front (a_gpu_request_is_refused_before_any_stage_runs); the worker keeps its
    // own check for a stage started any other way (here: the engine directly).
    write_project(&stages, &copy, &clip, "device = \"cuda\"");
    assert!(!mmboundary::stages::device::gpu_visible(), "this check is for a machine without a GPU");
    // (The worker prints its own refusal, "CUDA device 0 was requested but libtorch sees 0", to stderr.)
    let e = format!("{:#}", run("generate").err().expect("a CUDA run on a machine without CUDA"));
    assert!(e.contains("the mmb-torch worker failed for stage `generate`"), "{e}");
    let lock = LockFile::load(store.root()).unwrap();
    assert_eq!(lock.stages["generate"].device, "cpu/f32", "the failed CUDA run recorded nothing");
}

fn mmb(store: &Path, stages: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mmb")).arg("--store").arg(store).arg("--stages").arg(stages).args(args).output().unwrap()
}

/// `device = "cuda"` (and an ONNX GPU provider) on a machine without a GPU: `mmb run` refuses before
/// the first stage, naming each stage, the setting and the file that set it; dataset and features (CPU
/// stages before generate) did not run. A run that reaches no GPU stage still runs.
#[test]
fn a_gpu_request_is_refused_before_any_stage_runs() {
    assert!(!mmboundary::stages::device::gpu_visible(), "this check is for a machine without a GPU");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("artifacts");
    let clip = fixtures().join("encoders/clip_tiny");
    let stages = tiny_project(dir.path(), &tiny_llava(dir.path()), &clip, "device = \"cuda\"");
    let project = stages.join("project.toml");
    let text = std::fs::read_to_string(&project).unwrap();
    std::fs::write(&project, format!("{text}[onnx]\nexecution_provider = {{ kind = \"cuda\", device_id = 0 }}\n")).unwrap();
    std::fs::write(stages.join("sft.toml"), "[params]\ndevice = \"cpu\"\n").unwrap();
    std::fs::write(stages.join("score.toml"), "[params]\nexecution_provider = { kind = \"cpu\" }\n").unwrap();
    let o = mmb(&store, &stages, &["run"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    let p = project.display();
    for want in [
        format!("stage `generate`: device = \"cuda\" (set in {p})"),
        format!("stage `ppo`: device = \"cuda\" (set in {p})"),
        format!("stage `eval`: device = \"cuda\" (set in {p})"),
        format!("stage `features`: execution_provider = {{\"kind\":\"cuda\",\"device_id\":0}} (set in {p}): no NVIDIA GPU is visible"),
        format!("stage `ppo`: execution_provider = {{\"kind\":\"cuda\",\"device_id\":0}} (set in {p})"),
    ] {
        assert!(e.contains(&want), "{want}\nnot in\n{e}");
    }
    // sft and score set the CPU in their own files.
    assert!(!e.contains("stage `sft`") && !e.contains("stage `score`") && e.contains("nothing ran"), "{e}");
    let lock = LockFile::load(&store).unwrap();
    assert!(lock.stages.is_empty(), "stages ran before the refusal: {:?}", lock.stages.keys().collect::<Vec<_>>());
    // A stage file's own setting names that file.
    std::fs::write(stages.join("generate.toml"), "[params]\ndevice = \"cuda:1\"\nlimit = 4\n").unwrap();
    let e = String::from_utf8_lossy(&mmb(&store, &stages, &["run"]).stderr).into_owned();
    assert!(e.contains(&format!("stage `generate`: device = \"cuda:1\" (set in {})", stages.join("generate.toml").display())), "{e}");
    // A run that reaches no GPU stage runs.
    let o = mmb(&store, &stages, &["run", "dataset"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(LockFile::load(&store).unwrap().stages.keys().collect::<Vec<_>>(), ["dataset"]);
}

/// `[onnx] execution_provider` in project.toml reaches features, score, the PPO iterations and eval; a
/// stage file overrides it; features keeps the CPU out of its key (the demo key unchanged).
#[test]
fn the_onnx_provider_is_set_once_and_overridable_per_stage() {
    let dir = tempfile::tempdir().unwrap();
    let stages = shipped_stages(dir.path());
    std::fs::write(stages.join("project.toml"), "[onnx]\nexecution_provider = { kind = \"cuda\", device_id = 1 }\n").unwrap();
    let p = mmboundary::stages::pipeline(&stages).unwrap();
    let want = serde_json::json!({"kind": "cuda", "device_id": 1});
    for s in ["features", "score", "rollout_0", "update_0", "eval_chains"] {
        assert_eq!(params(&p, s)["execution_provider"], want, "{s}");
    }
    assert_eq!(p.get("features").unwrap().device(), "ort-cuda/f32");
    assert!(params(&p, "generate").get("execution_provider").is_none());
    std::fs::write(stages.join("features.toml"), "[params]\nexecution_provider = { kind = \"cpu\" }\n").unwrap();
    let p = mmboundary::stages::pipeline(&stages).unwrap();
    assert!(params(&p, "features").get("execution_provider").is_none(), "the CPU stays out of features' key");
    assert_eq!(params(&p, "score")["execution_provider"], want);
}

/// `features.merge` follows the CLIP when unset: the demo CLIP's 2 (the demo run's features params as
/// they were keyed when features.toml set `merge = 2`), 1 for a CLIP folder of project.toml; a stage
/// file still sets it.
#[test]
fn features_merge_follows_the_clip() {
    let dir = tempfile::tempdir().unwrap();
    let stages = shipped_stages(dir.path());
    let demo = mmboundary::stages::pipeline(&stages).unwrap();
    assert_eq!(demo.get("features").unwrap().params(), serde_json::json!({"clip": null, "batch": 64, "merge": 2}));
    std::fs::write(stages.join("project.toml"), "[clip]\npath = \"models/clip\"\n").unwrap();
    let p = mmboundary::stages::pipeline(&stages).unwrap();
    assert_eq!(p.get("features").unwrap().params(), serde_json::json!({"clip": "models/clip", "batch": 64, "merge": 1}));
    std::fs::write(stages.join("features.toml"), "[params]\nmerge = 2\n").unwrap();
    let p = mmboundary::stages::pipeline(&stages).unwrap();
    assert_eq!(params(&p, "features")["merge"], 2);
}
