//! The `dataset` stage on real datasets (tiny fixtures in the official layouts, written by
//! scripts/make_data_fixtures.py): sources from the stage file, the annotated join, splits, images
//! referenced by path and hash (and read back by `features`), the load report, and the embedded
//! benchmark's params (and so its cache key) unchanged.
use arrow::array::AsArray;
use arrow::datatypes::Float32Type;
use mmboundary::data::sources::{AokvqaSource, CulturalvqaSource, ScienceqaSource, SourceName, Sources};
use mmboundary::data::{items_from_record_batch, ImageMode, Item, SkipPolicy};
use mmboundary::engine::{LockFile, Pipeline, RunOptions, Stage};
use mmboundary::stages::dataset::{DatasetParams, DatasetStage};
use mmboundary::stages::features::{FeaturesParams, FeaturesStage};
use mmboundary::stages::StageConfigs;
use mmboundary::store::{ArtifactId, Store};
use std::path::{Path, PathBuf};

#[allow(dead_code)]
mod common;
use common::fixtures;

/// Copy a folder (fixtures are read-only in spirit: tests that change files work on a copy).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// All three datasets, from a copy of the fixtures under `root`.
fn real_params(root: &Path, images: ImageMode) -> DatasetParams {
    let data = root.join("data");
    if !data.exists() {
        copy_dir(&fixtures().join("data"), &data);
    }
    DatasetParams {
        source: Sources(vec![SourceName::Aokvqa, SourceName::Scienceqa, SourceName::Culturalvqa]),
        aokvqa: Some(AokvqaSource {
            dir: data.join("aokvqa"),
            coco: data.join("aokvqa/coco"),
            splits: vec!["val".into()],
            annotated: Some(data.join("annotated/aokvqa_val_mmb.json")),
            images,
            // The annotated fixture has an id (qZZ) that is not in the dataset: a counted skip.
            on_bad_record: SkipPolicy::SkipAndCount,
            ..Default::default()
        }),
        scienceqa: Some(ScienceqaSource { dir: data.join("scienceqa"), images, ..Default::default() }),
        culturalvqa: Some(CulturalvqaSource {
            dir: Some(data.join("culturalvqa")),
            annotated: Some(data.join("annotated/culturalvqa_cvqa_mmb.json")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pipeline(params: DatasetParams, batch: usize) -> Pipeline {
    let stages: Vec<Box<dyn Stage>> = vec![
        Box::new(DatasetStage { params }),
        Box::new(FeaturesStage {
            params: FeaturesParams { clip: Some(fixtures().join("encoders/clip_tiny")), batch, merge: Some(1), ..Default::default() },
            session: Default::default(),
        }),
    ];
    Pipeline::new(stages).unwrap()
}

fn output(store: &Store, stage: &str, out: &str) -> ArtifactId {
    ArtifactId::parse(&LockFile::load(store.root()).unwrap().stages[stage].outputs[out].id).unwrap()
}

fn items(store: &Store) -> Vec<Item> {
    items_from_record_batch(&store.read_table(&output(store, "dataset", "items")).unwrap().concat().unwrap()).unwrap()
}

fn features(store: &Store) -> std::collections::HashMap<String, Vec<f32>> {
    let b = store.read_table(&output(store, "features", "features")).unwrap().concat().unwrap();
    let ids = b.column_by_name("item_id").unwrap().as_string::<i32>();
    let p = b.column_by_name("patches").unwrap().as_list::<i32>();
    (0..b.num_rows()).map(|r| (ids.value(r).to_string(), p.value(r).as_primitive::<Float32Type>().values().to_vec())).collect()
}

#[test]
fn real_sources_load_join_reference_images_and_feed_features() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("artifacts")).unwrap();
    let params = real_params(tmp.path(), ImageMode::Reference);
    let s = pipeline(params.clone(), 4).run(&store, &RunOptions::default()).unwrap();
    assert_eq!(s.ran, vec!["dataset", "features"]);

    let rows = items(&store);
    let ids: Vec<&str> = rows.iter().map(|i| i.id.as_str()).collect();
    // A-OKVQA val joined with its chains (qA1 twice: two annotations; qA3 kept without one), ScienceQA
    // train + val image questions, CulturalVQA's five rows as the out-of-distribution split.
    assert_eq!(
        ids,
        [
            "aokvqa:qA1",
            "aokvqa:qA1#1",
            "aokvqa:qA2",
            "aokvqa:qA3",
            "scienceqa:1",
            "scienceqa:3",
            "culturalvqa:0",
            "culturalvqa:1",
            "culturalvqa:2",
            "culturalvqa:3",
            "culturalvqa:4"
        ]
    );
    let splits: Vec<(&str, &str)> = rows.iter().map(|i| (i.source.as_str(), i.split.as_str())).collect();
    assert_eq!(
        &splits[..6],
        [("aokvqa", "val"); 4].iter().copied().chain([("scienceqa", "train"), ("scienceqa", "val")]).collect::<Vec<_>>()
    );
    assert!(rows[6..].iter().all(|i| i.source == "culturalvqa" && i.split == "ood"));
    assert_eq!(rows[1].chain.perception, ["A striped cat is on a bed with a blanket."]);
    assert!(rows[3].chain.is_empty(), "qA3 has no annotation and is kept");
    assert_eq!(rows[8].chain.reasoning, ["Lamps are lit for it.", "So, the answer is 'Diwali'."]);

    // File images are referenced: absolute path, no bytes, the file's blake3 in meta.
    let data = tmp.path().join("data");
    for it in &rows[..6] {
        let img = it.image.as_ref().unwrap();
        assert!(img.bytes.is_none(), "{}", it.id);
        let path = PathBuf::from(img.path.as_deref().unwrap());
        assert!(path.is_absolute() && path.starts_with(std::path::absolute(&data).unwrap()), "{path:?}");
        let want = blake3::hash(&std::fs::read(&path).unwrap()).to_hex().to_string();
        assert_eq!(it.meta["image_blake3"].as_str().unwrap(), want, "{}", it.id);
    }
    assert!(rows[0].image.as_ref().unwrap().path.as_deref().unwrap().ends_with("coco/val2017/000000000101.jpg"));
    // CulturalVQA's images live in its Parquet files: copied into the rows.
    assert!(rows[6..].iter().all(|i| i.image.as_ref().unwrap().bytes.is_some()));

    // The load report lists what was left out and what was noted, per source.
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.path_of(&output(&store, "dataset", "load_report"), mmboundary::store::ArtifactKind::Json)).unwrap(),
    )
    .unwrap();
    assert_eq!(report["items"], 11);
    let src = report["sources"].as_array().unwrap();
    assert_eq!(src.iter().map(|s| s["source"].as_str().unwrap()).collect::<Vec<_>>(), ["aokvqa", "scienceqa", "culturalvqa"]);
    let aok = &src[0]["report"];
    // qZZ (no match) and the annotation with an empty reasoning list.
    assert_eq!(aok["skipped"].as_array().unwrap().len(), 2, "{aok}");
    assert!(aok["skipped"].as_array().unwrap().iter().any(|s| s["reason"].as_str().unwrap().contains("qZZ")));
    assert_eq!(src[1]["report"]["notes"]["text_only"], 1);
    assert_eq!(src[1]["by_split"], serde_json::json!({"train": 1, "val": 1}));
    assert_eq!(src[2]["by_split"], serde_json::json!({"ood": 5}));
    assert_eq!(
        src[2]["report"]["notes"]["unannotated_items"],
        serde_json::Value::Null,
        "kept unannotated items are not counted as dropped"
    );

    // features read the referenced files: the same patch features as from embedded bytes.
    let by_ref = features(&store);
    assert_eq!(by_ref.len(), 11);
    let store2 = Store::open(tmp.path().join("artifacts-embed")).unwrap();
    pipeline(real_params(tmp.path(), ImageMode::Embed), 4).run(&store2, &RunOptions::default()).unwrap();
    let embedded = items(&store2);
    assert!(embedded[..6].iter().all(|i| i.image.as_ref().unwrap().bytes.is_some()));
    let by_bytes = features(&store2);
    for (id, f) in &by_ref {
        assert_eq!(f, &by_bytes[id], "{id}: features from the referenced file differ from those of its bytes");
    }

    // A referenced image changed after the dataset stage read it: the next reader refuses it.
    std::fs::copy(data.join("aokvqa/coco/val2017/000000000202.jpg"), data.join("aokvqa/coco/val2017/000000000101.jpg")).unwrap();
    let e = format!("{:#}", pipeline(params, 2).run(&store, &RunOptions::default()).unwrap_err());
    assert!(e.contains("aokvqa:qA1") && e.contains("000000000101.jpg") && e.contains("changed") && e.contains("dataset"), "{e}");
}

#[test]
fn sources_come_from_the_stage_file_and_mistakes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let stages = tmp.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    let write = |text: &str| std::fs::write(stages.join("dataset.toml"), text).unwrap();
    write(
        "[params]\nsource = [\"aokvqa\", \"culturalvqa\"]\n[params.aokvqa]\ndir = \"a\"\ncoco = \"c\"\nimages = \"embed\"\n\
         [params.culturalvqa]\nfiles = [\"x.parquet\"]\nsplit = \"test\"\n",
    );
    let p: DatasetParams = StageConfigs::new(&stages).params("dataset").unwrap();
    assert_eq!(p.source.0, [SourceName::Aokvqa, SourceName::Culturalvqa]);
    let a = p.aokvqa.as_ref().unwrap();
    assert_eq!(
        (a.dir.as_path(), a.coco.as_path(), a.images, &a.splits),
        (Path::new("a"), Path::new("c"), ImageMode::Embed, &vec!["train".to_string(), "val".to_string()])
    );
    assert_eq!(p.culturalvqa.as_ref().unwrap().split, "test");
    // Its key covers the sources, not the generator; its index files are hashed as external files.
    let stage = DatasetStage { params: p };
    let v = stage.params();
    assert!(v.get("seed").is_none() && v["source"] == serde_json::json!(["aokvqa", "culturalvqa"]), "{v}");
    assert_eq!(
        stage.models(),
        [PathBuf::from("a/aokvqa_v1p0_train.json"), PathBuf::from("a/aokvqa_v1p0_val.json"), PathBuf::from("x.parquet")]
    );
    assert_eq!(stage.outputs(), ["items", "sheet", "load_report"]);

    write("[params]\nsource = \"coco\"\n");
    let e = format!("{:#}", StageConfigs::new(&stages).params::<DatasetParams>("dataset").unwrap_err());
    assert!(e.contains("dataset.toml") && e.contains("unknown dataset \"coco\""), "{e}");
    write("[params]\nsource = \"aokvqa\"\n[params.aokvqa]\ndir = \"a\"\ncoco = \"c\"\nimage = \"embed\"\n");
    let e = format!("{:#}", StageConfigs::new(&stages).params::<DatasetParams>("dataset").unwrap_err());
    assert!(e.contains("image"), "a misspelt key is an error: {e}");
    let p = DatasetParams { source: Sources(vec![SourceName::Scienceqa]), ..Default::default() };
    let e = p.real().unwrap().validate().unwrap_err().to_string();
    assert!(e.contains("no [params.scienceqa] table"), "{e}");
    let p = DatasetParams { scienceqa: Some(Default::default()), ..real_params_without_dirs() };
    let e = p.real().unwrap().validate().unwrap_err().to_string();
    assert!(e.contains("[params.scienceqa] is set but `source` does not list scienceqa"), "{e}");
}

fn real_params_without_dirs() -> DatasetParams {
    DatasetParams { source: Sources(vec![SourceName::Aokvqa]), aokvqa: Some(AokvqaSource::default()), ..Default::default() }
}

#[test]
fn penumbra_params_and_outputs_are_those_of_the_generator_alone() {
    // The embedded benchmark's key must not move when sources exist: same params JSON as before.
    let stage = DatasetStage { params: DatasetParams::default() };
    let v = stage.params();
    let mut want = serde_json::to_value(&DatasetParams::default().penumbra).unwrap();
    want["chunk"] = 500.into();
    want["generator_version"] = serde_json::json!(mmboundary::data::penumbra::GENERATOR_VERSION);
    assert_eq!(v, want);
    assert_eq!(stage.outputs(), ["items", "sheet"]);
    assert!(stage.models().is_empty());
    // A dataset table without `source` naming it is a mistake, not a silent penumbra run.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("artifacts")).unwrap();
    let params = DatasetParams { scienceqa: Some(Default::default()), ..Default::default() };
    let stages: Vec<Box<dyn Stage>> = vec![Box::new(DatasetStage { params })];
    let e = format!("{:#}", Pipeline::new(stages).unwrap().run(&store, &RunOptions::default()).unwrap_err());
    assert!(e.contains("[params.scienceqa] is set but `source` is penumbra"), "{e}");
}

/// From configuration alone: `mmb run dataset` with a stage file naming real datasets; a skipped record
/// is reported on stderr (and listed in load_report); editing an index file reruns the stage.
#[test]
fn mmb_run_dataset_from_a_stage_file_reports_skips_and_tracks_index_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixtures().join("data"), &data);
    let stages = tmp.path().join("stages");
    std::fs::create_dir_all(&stages).unwrap();
    let toml = format!(
        "[params]\nsource = [\"aokvqa\", \"culturalvqa\"]\n\
         [params.aokvqa]\ndir = {a:?}\ncoco = {c:?}\nsplits = [\"val\"]\nannotated = {n:?}\non_bad_record = \"skip_and_count\"\n\
         [params.culturalvqa]\ndir = {v:?}\n",
        a = data.join("aokvqa"),
        c = data.join("aokvqa/coco"),
        n = data.join("annotated/aokvqa_val_mmb.json"),
        v = data.join("culturalvqa"),
    );
    std::fs::write(stages.join("dataset.toml"), toml).unwrap();
    let store = tmp.path().join("artifacts");
    let mmb = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mmb"))
            .arg("--store")
            .arg(&store)
            .arg("--stages")
            .arg(&stages)
            .args(args)
            .output()
            .unwrap()
    };
    let o = mmb(&["run", "dataset"]);
    // The log is coloured: drop the escape sequences before reading it.
    let raw = String::from_utf8_lossy(&o.stderr);
    let mut err = String::new();
    let mut in_esc = false;
    for ch in raw.chars() {
        match (in_esc, ch) {
            (false, '\u{1b}') => in_esc = true,
            (true, 'm') => in_esc = false,
            (true, _) => {}
            (false, c) => err.push(c),
        }
    }
    assert!(o.status.success(), "{err}");
    assert!(err.contains("records skipped") && err.contains("skipped=2") && err.contains("aokvqa"), "{err}");
    let s = Store::open(&store).unwrap();
    assert_eq!(items(&s).len(), 9);
    assert!(String::from_utf8_lossy(&mmb(&["run", "dataset"]).stderr).contains("up to date"));
    // The annotated file is an index file: its content is in the key.
    let ann = data.join("annotated/aokvqa_val_mmb.json");
    let text = std::fs::read_to_string(&ann).unwrap().replace("Cats like beds.", "Cats love beds.");
    std::fs::write(&ann, text).unwrap();
    let o = mmb(&["run", "dataset"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("ran dataset"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(items(&Store::open(&store).unwrap())[0].chain.reasoning[0], "Cats love beds.");
}
