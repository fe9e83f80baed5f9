//! The README's real path, step by step, as a user follows it: a project folder with a Hugging Face
//! LLaVA-1.5-style folder (tiny, random weights, saved by transformers: scripts/make_worked_example.py),
//! a CLIP and a cross-encoder exported to ONNX (the tiny exports of scripts/export_onnx.py), an A-OKVQA-
//! format dataset (official JSON, COCO-style image folder, the paper's annotated-chain format) and a
//! ScienceQA-format one; `stages/project.toml` and `stages/dataset.toml` say where they are, a few stage
//! files size the run, and `mmb run` goes through `report`, which names the dataset, model and judge.
use mmboundary::engine::LockFile;
use mmboundary::store::{ArtifactId, Store};
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
mod common;
use common::fixtures;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e} (run scripts/make_worked_example.py)", from.display())) {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, dest).unwrap();
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_real_path_runs_from_configuration_alone_and_the_report_names_dataset_model_and_judge() {
    let worked = fixtures().join("worked");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(worked.join("expected.json")).expect("tests/fixtures/worked/expected.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("my-project");
    let worker = tmp.path().join("mmb-torch");
    std::fs::copy(env!("CARGO_BIN_EXE_mmb-torch"), &worker).unwrap();

    // What the user has: their model folders and datasets, under their project.
    copy_tree(&worked.join("llava-1.5-tiny"), &proj.join("models/llava-1.5-tiny"));
    copy_tree(&fixtures().join("encoders/clip_tiny"), &proj.join("models/clip"));
    copy_tree(&fixtures().join("encoders/cross_encoder_tiny"), &proj.join("models/stsb"));
    copy_tree(&worked.join("aokvqa"), &proj.join("data/aokvqa"));
    copy_tree(&worked.join("annotated"), &proj.join("data/annotated"));
    copy_tree(&worked.join("scienceqa"), &proj.join("data/ScienceQA"));
    let stages = proj.join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("stages/statements.toml"), stages.join("statements.toml")).unwrap();

    // The model's own prompt: what transformers renders from the folder's chat template.
    let folder = proj.join("models/llava-1.5-tiny");
    assert!(folder.join("chat_template.jinja").is_file(), "transformers 5 saves the template beside tokenizer_config.json");
    assert_eq!(
        mmboundary_prompt(&folder),
        expected["prompt_template"].as_str().unwrap(),
        "chat::pipeline_prompt vs transformers' apply_chat_template"
    );

    // Step 2: what the stages share.
    let minilm = mmboundary::encoders::minilm::default_model_dir();
    write(
        &stages.join("project.toml"),
        &format!(
            "description = \"the worked example\"\n\
             [model]\npath = \"models/llava-1.5-tiny\"\ndevice = \"cpu\"\n\
             [clip]\npath = \"models/clip\"\n\
             [judge]\nkind = \"cross_encoder\"\ncross_encoder = \"models/stsb\"\nthreshold = 0.64\n\
             [minilm]\npath = \"{}\"\n",
            minilm.display()
        ),
    );
    // Features as a Hugging Face LLaVA expects them (the CLIP's own patches) with no setting: the merge
    // follows the CLIP folder.
    write(&stages.join("features.toml"), "[params]\nbatch = 8\n");
    // Step 3: the data, in the official layouts.
    write(
        &stages.join("dataset.toml"),
        "[params]\nsource = [\"aokvqa\", \"scienceqa\"]\n\
         [params.aokvqa]\ndir = \"data/aokvqa\"\ncoco = \"data/aokvqa/coco\"\nannotated = \"data/annotated/aokvqa_mmb.json\"\n\
         [params.scienceqa]\ndir = \"data/ScienceQA\"\n",
    );
    // Step 4: the run's size (tiny: a few minutes of CI).
    write(&stages.join("generate.toml"), "[params]\nmax_new_tokens = 12\nbatch = 8\n");
    write(&stages.join("sft.toml"), "[params]\ntrainer = { epochs = 1, batch_size = 4, max_steps = 2, learning_rate = 1e-3 }\n");
    write(
        &stages.join("ppo.toml"),
        "[params]\niterations = 2\nprompts_per_iteration = 2\n\
         trainer = { ppo_epochs = 1, mini_batch_size = 3, generation = { max_new_tokens = 12 } }\n",
    );
    write(&stages.join("eval.toml"), "[params]\nsplits = [\"val\"]\nlimit = 6\nmax_new_tokens = 12\nbatch = 6\n");

    let mmb = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_mmb")).args(args).current_dir(&proj).env("MMB_TORCH", &worker).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (ok, out, err) = mmb(&["run"]);
    assert!(ok, "mmb run failed:\n{out}\n{err}");
    for s in ["demo_clip", "demo_mllm"] {
        assert!(!err.contains(&format!("{s}: started")), "{s} ran though the project names its own models:\n{err}");
    }

    // The report names the dataset (by source and split), the model and the judge.
    let store = Store::open(proj.join("artifacts")).unwrap();
    let lock = LockFile::load(store.root()).unwrap();
    assert_eq!(lock.stages["features"].params["merge"], 1, "features.merge unset follows the CLIP folder");
    let rep = store.materialize(&ArtifactId::parse(&lock.stages["report"].outputs["report"].id).unwrap()).unwrap();
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    let n = &expected["items"];
    let about = format!(
        "Dataset: aokvqa (train {}, val {}) + scienceqa (train {}, val {}). Model: models/llava-1.5-tiny. \
         Judge: cross-encoder:stsb > 0.64.",
        n["aokvqa"]["train"], n["aokvqa"]["val"], n["scienceqa"]["train"], n["scienceqa"]["val"]
    );
    assert!(md.contains(&about), "{about}\nnot in\n{md}");
    // No stage file of the project changes bin's intervals or PPO's rewards: the library's defaults, the paper's.
    let design = "Design: levels at U_Final's μ/σ intervals (the paper's); a sentence without a statement scores −1 in R_EC \
                  and R_CS (the paper's).";
    assert!(md.contains(&format!("{about} {design}")), "{design}\nnot in\n{md}");
    let html = std::fs::read_to_string(rep.join("report.html")).unwrap();
    assert!(html.contains("Model: models/llava-1.5-tiny"), "report.html lacks the model");
    assert!(md.contains("judged by: cross-encoder:stsb > 0.64."), "{md}");
    // Eval ran on the val split of both sources: 6 items per variant.
    let metrics = store.read_table(&ArtifactId::parse(&lock.stages["eval"].outputs["metrics"].id).unwrap()).unwrap().concat().unwrap();
    let responses = metrics.column_by_name("responses").unwrap();
    let responses = responses.as_any().downcast_ref::<arrow::array::UInt64Array>().unwrap();
    let level = metrics.column_by_name("level").unwrap();
    let level = level.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
    let all: Vec<u64> = (0..metrics.num_rows()).filter(|&r| level.value(r) == "all").map(|r| responses.value(r)).collect();
    assert_eq!(all, vec![6, 6, 6], "vanilla, sft, full on val");

    // Nothing changed: nothing reruns.
    let (ok, _, err) = mmb(&["run"]);
    assert!(ok && !err.contains("started"), "{err}");

    // Target 4's seeds table: seed 0 is this run (nothing reruns for it), seed 1 reruns from generate on.
    let (ok, out, err) = mmb(&["sweep", "--seeds", "2"]);
    assert!(ok, "mmb sweep --seeds 2 failed:\n{out}\n{err}");
    let seed0 = out.lines().find(|l| l.starts_with("seed-0")).unwrap_or_else(|| panic!("{out}"));
    assert!(seed0.contains("ran []"), "seed 0 is the main run's cache: {seed0}");
    let seed1 = out.lines().find(|l| l.starts_with("seed-1")).unwrap_or_else(|| panic!("{out}"));
    for s in ["generate", "sft", "eval"] {
        assert!(seed1.contains(s), "seed 1 reruns {s}: {seed1}");
    }
    assert!(!seed1.contains("dataset") || seed1.contains("ran [generate"), "{seed1}");
    // Seed 0's difference is this run's eval metrics: ECE full − ECE sft on val (3 decimals in the table).
    let variant = metrics.column_by_name("variant").unwrap().as_any().downcast_ref::<arrow::array::StringArray>().unwrap().clone();
    let split = metrics.column_by_name("split").unwrap().as_any().downcast_ref::<arrow::array::StringArray>().unwrap().clone();
    let ece = metrics.column_by_name("ece").unwrap().as_any().downcast_ref::<arrow::array::Float64Array>().unwrap().clone();
    let ece_of = |v: &str| {
        (0..metrics.num_rows())
            .find(|&r| variant.value(r) == v && split.value(r) == "val" && level.value(r) == "all")
            .map(|r| ece.value(r))
            .unwrap()
    };
    let table = std::fs::read_to_string(store.root().join("seeds.md")).unwrap();
    let row = table.lines().find(|l| l.starts_with("| val | ECE |")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells[2], "6", "{row}");
    let got: f64 = cells[3].parse().unwrap();
    assert!(
        (got - (ece_of("full") - ece_of("sft"))).abs() <= 5e-4 + 1e-12,
        "{row}: seed 0 vs eval's {} − {}",
        ece_of("full"),
        ece_of("sft")
    );
    assert!(table.lines().any(|l| l.starts_with("| val | MECE |")) && table.lines().any(|l| l.starts_with("| val | Brier |")), "{table}");
    // What training costs in accuracy: seed 0's SFT − untuned is eval's, on the same items.
    let acc = metrics.column_by_name("accuracy").unwrap().as_any().downcast_ref::<arrow::array::Float64Array>().unwrap().clone();
    let acc_of = |v: &str| {
        (0..metrics.num_rows())
            .find(|&r| variant.value(r) == v && split.value(r) == "val" && level.value(r) == "all")
            .map(|r| acc.value(r))
            .unwrap()
    };
    let sft_part = table.split("### SFT − untuned").nth(1).unwrap_or_else(|| panic!("{table}"));
    let row = sft_part.lines().find(|l| l.starts_with("| val | Acc |")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    let got: f64 = cells[3].parse().unwrap();
    assert!((got - (acc_of("sft") - acc_of("vanilla"))).abs() <= 5e-4 + 1e-12, "{row}: seed 0 vs eval's accuracies");
    assert!(table.contains("### Full method − SFT\n\n| split | metric | items | seed 0 | seed 1 | mean full − SFT"), "{table}");
}

fn mmboundary_prompt(folder: &Path) -> String {
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
    let image = cfg["image_token_index"].as_i64().or_else(|| cfg["image_token_id"].as_i64()).expect("an image token id");
    mllm::chat::pipeline_prompt(&PathBuf::from(folder), image).unwrap()
}
