//! The pipeline's stages on tiny models, end to end through the engine: dataset → features (CLIP on
//! ONNX Runtime) → generate (a LLaVA-style model in the `mmb-torch` worker).
use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use mmboundary::data::penumbra::PenumbraParams;
use mmboundary::engine::{Pipeline, RunOptions, Stage};
use mmboundary::stages::bin::{BinParams, BinStage};
use mmboundary::stages::dataset::{DatasetParams, DatasetStage};
use mmboundary::stages::features::{FeaturesParams, FeaturesStage};
use mmboundary::stages::generate::{GenerateParams, GenerateStage};
use mmboundary::stages::map::{MapParams, MapStage};
use mmboundary::stages::score::{ScoreParams, ScoreStage};
use mmboundary::stages::sft::{SftStage, SftStageParams};
use mmboundary::store::{ArtifactId, Store};
use std::path::Path;

mod common;
use common::fixtures;

fn lock_now(store: &Store) -> mmboundary::engine::LockFile {
    mmboundary::engine::LockFile::load(store.root()).unwrap()
}

#[test]
fn dataset_features_generate_run_through_the_engine_and_cache() {
    std::env::set_var("MMB_TORCH", env!("CARGO_BIN_EXE_mmb-torch"));
    let (_dir, store, model) = common::tiny_llava_store();
    let build = |max_new_tokens: usize| {
        let stages: Vec<Box<dyn Stage>> = vec![
            Box::new(DatasetStage {
                params: DatasetParams {
                    penumbra: PenumbraParams { n_items: 12, image_size: 32, ..Default::default() },
                    chunk: 5,
                    ..Default::default()
                },
            }),
            Box::new(FeaturesStage {
                params: FeaturesParams {
                    clip: Some(fixtures().join("encoders/clip_tiny")),
                    batch: 4,
                    merge: Some(1),
                    ..Default::default()
                },
                session: Default::default(),
            }),
            Box::new(GenerateStage {
                params: GenerateParams {
                    model: Some(model.clone()),
                    limit: Some(5),
                    batch: 2,
                    max_new_tokens,
                    device: "cpu".into(),
                    ..Default::default()
                },
            }),
            Box::new(ScoreStage {
                params: ScoreParams {
                    minilm: mmboundary::encoders::minilm::default_model_dir(),
                    clip: Some(fixtures().join("encoders/clip_tiny")),
                    ..Default::default()
                },
                session: Default::default(),
            }),
            Box::new(BinStage { params: BinParams::default() }),
            Box::new(MapStage {
                params: MapParams { pool: Path::new(env!("CARGO_MANIFEST_DIR")).join("stages/statements.toml"), ..Default::default() },
            }),
            Box::new(SftStage {
                params: SftStageParams {
                    model: Some(model.clone()),
                    trainer: serde_json::json!({ "epochs": 1, "batch_size": 2, "max_steps": 2, "learning_rate": 1e-3 }),
                    device: "cpu".into(),
                    ..Default::default()
                },
            }),
        ];
        Pipeline::new(stages).unwrap()
    };
    let s = build(16).run(&store, &RunOptions::default()).unwrap();
    assert_eq!(s.ran, vec!["dataset", "features", "generate", "score", "bin", "map", "sft"]);

    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let feats = store.read_table(&ArtifactId::parse(&lock.stages["features"].outputs["features"].id).unwrap()).unwrap().concat().unwrap();
    assert_eq!(feats.num_rows(), 12);
    let chains = store.read_table(&ArtifactId::parse(&lock.stages["generate"].outputs["chains"].id).unwrap()).unwrap();
    let lineage = chains.lineage.clone().unwrap();
    assert_eq!(lineage.stage, "generate");
    assert!(lineage.models.keys().any(|k| k.contains("tiny-llava")), "model hashes are in the lineage");
    let c = chains.concat().unwrap();
    assert_eq!(c.num_rows(), 5);
    let lp = c.column_by_name("logprobs").unwrap().as_list::<i32>();
    let ent = c.column_by_name("entropies").unwrap().as_list::<i32>();
    let toks = c.column_by_name("tokens").unwrap().as_list::<i32>();
    for r in 0..c.num_rows() {
        let (l, e) = (lp.value(r), ent.value(r));
        let (l, e) = (l.as_primitive::<Float32Type>(), e.as_primitive::<Float32Type>());
        assert_eq!(l.len(), toks.value(r).len());
        // The image token (99) is never generated: a chain containing it would break the splice in sft/ppo.
        assert!(!toks.value(r).as_primitive::<arrow::datatypes::Int64Type>().values().contains(&99));
        assert!(l.len() >= 1 && l.len() <= 16);
        assert!(l.values().iter().all(|v| *v <= 1e-6 && v.is_finite()));
        // Entropy over the full vocabulary of 100 is at most ln 100.
        assert!(e.values().iter().all(|v| *v >= -1e-5 && *v <= (100f32).ln() + 1e-4));
    }

    // score: one row per generated sentence, every signal finite, CLIPScore in [0, 1].
    let n_sentences: usize = (0..c.num_rows()).map(|r| c.column_by_name("sentences").unwrap().as_list::<i32>().value(r).len()).sum();
    let table = |stage: &str, out: &str| {
        store.read_table(&ArtifactId::parse(&lock_now(&store).stages[stage].outputs[out].id).unwrap()).unwrap().concat().unwrap()
    };
    let scored = table("score", "scored");
    assert_eq!(scored.num_rows(), n_sentences);
    for col in ["lnlp", "mte", "tokensar", "clipscore"] {
        let v = scored.column_by_name(col).unwrap().as_primitive::<arrow::datatypes::Float64Type>();
        assert!(v.values().iter().all(|x| x.is_finite() && *x >= 0.0), "{col}");
    }
    let clip = scored.column_by_name("clipscore").unwrap().as_primitive::<arrow::datatypes::Float64Type>();
    assert!(clip.values().iter().all(|x| *x <= 1.0));
    // bin: levels 1..=5; map: every target carries statements from the pool.
    let levels = table("bin", "levels");
    let lv = levels.column_by_name("level").unwrap().as_primitive::<arrow::datatypes::UInt8Type>();
    assert!(lv.values().iter().all(|l| (1..=5).contains(l)));
    let pool = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("stages/statements.toml")).unwrap();
    let sft = table("map", "sft_data");
    let targets = sft.column_by_name("target").unwrap().as_string::<i32>();
    assert!(sft.num_rows() > 0);
    for t in targets.iter().flatten() {
        let found = pool
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"').and_then(|l| l.trim_end_matches(',').strip_suffix('"')))
            .any(|st| t.contains(st.trim_end_matches('.')));
        assert!(found, "no pool statement in {t:?}");
    }

    // sft: a checkpoint artifact with lineage, and a finite loss per optimizer step.
    let log = table("sft", "log");
    assert!(log.num_rows() >= 1 && log.num_rows() <= 2);
    let loss = log.column_by_name("loss").unwrap().as_primitive::<arrow::datatypes::Float64Type>();
    assert!(loss.values().iter().all(|l| l.is_finite() && *l > 0.0));
    let ck = &lock_now(&store).stages["sft"].outputs["checkpoint"];
    let ck_path = store.path_of(&ArtifactId::parse(&ck.id).unwrap(), mmboundary::store::ArtifactKind::Safetensors);
    assert!(ck_path.exists());
    assert_eq!(store.sidecar_lineage(&ck_path).unwrap().unwrap().stage, "sft");

    // Cached: nothing reruns; a generation param reruns generate and, if its chains change, what follows.
    assert!(build(16).run(&store, &RunOptions::default()).unwrap().ran.is_empty());
    assert_eq!(build(4).run(&store, &RunOptions::default()).unwrap().ran[0], "generate");
}

#[test]
fn generate_without_the_worker_or_model_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("MMB_TORCH", env!("CARGO_BIN_EXE_mmb-torch"));
    let store = Store::open(dir.path().join("artifacts")).unwrap();
    let stages: Vec<Box<dyn Stage>> = vec![
        Box::new(DatasetStage {
            params: DatasetParams {
                penumbra: PenumbraParams { n_items: 4, image_size: 32, ..Default::default() },
                chunk: 4,
                ..Default::default()
            },
        }),
        Box::new(FeaturesStage {
            params: FeaturesParams { clip: Some(fixtures().join("encoders/clip_tiny")), batch: 4, merge: Some(1), ..Default::default() },
            session: Default::default(),
        }),
        Box::new(GenerateStage {
            params: GenerateParams { model: Some(dir.path().join("no-such-model")), device: "cpu".into(), ..Default::default() },
        }),
    ];
    let e = Pipeline::new(stages).unwrap().run(&store, &RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("no-such-model"), "{e}");
}

/// eval's metrics from eval_chains' rows (`stages::eval::metrics_from_rows`), against values computed by
/// hand from three chains of split `val`: A (2 sentences, both right), B (3 sentences, one without a
/// confidence), C (no sentence at all, still a response). Reference chains: A and C [P, R], B [P, P, R].
#[test]
fn eval_metrics_from_rows_match_hand_computed_values() {
    use arrow::array::{BooleanArray, Float64Array, Float64Builder, ListBuilder, RecordBatch, StringArray, UInt32Array};
    use arrow::datatypes::Float64Type;
    use mmboundary::data::{Item, ReferenceChain};
    use mmboundary::metrics::MetricsParams;
    use mmboundary::stages::eval::{chains_schema, metrics_from_rows, sentences_schema};
    use std::sync::Arc;

    let item = |id: &str, p: &[&str], r: &[&str]| {
        let mut it = Item::new(id, "penumbra", "val", "What is shown?");
        it.chain =
            ReferenceChain { perception: p.iter().map(|s| s.to_string()).collect(), reasoning: r.iter().map(|s| s.to_string()).collect() };
        it
    };
    let items = vec![item("A", &["a p"], &["a r"]), item("B", &["b p1", "b p2"], &["b r"]), item("C", &["c p"], &["c r"])];
    let chains = RecordBatch::try_new(
        chains_schema(),
        vec![
            Arc::new(StringArray::from(vec!["full"; 3])),
            Arc::new(StringArray::from(vec!["val"; 3])),
            Arc::new(StringArray::from(vec!["A", "B", "C"])),
            Arc::new(StringArray::from(vec!["a", "b", ""])),
            Arc::new(Float64Array::from(vec![1.0, 0.0, 0.0])),
            Arc::new(UInt32Array::from(vec![2, 3, 0])),
        ],
    )
    .unwrap();
    // (item, index, level, correct, metric confidence, similarity to each reference sentence)
    type Row<'a> = (&'a str, u32, &'a str, bool, Option<f64>, Vec<f64>);
    let rows: Vec<Row> = vec![
        ("A", 0, "perception", true, Some(0.8), vec![0.9, 0.1]),
        ("A", 1, "reasoning", true, Some(0.6), vec![0.2, 0.7]),
        ("B", 0, "perception", false, Some(0.9), vec![0.5, 0.3, 0.1]),
        ("B", 1, "reasoning", true, None, vec![0.1, 0.2, 0.95]),
        ("B", 2, "perception", true, Some(0.3), vec![0.66, 0.1, 0.2]),
    ];
    let sentences = |rows: &[Row]| {
        let n = rows.len();
        let mut sim = ListBuilder::new(Float64Builder::new());
        for r in rows {
            sim.values().append_slice(&r.5);
            sim.append(true);
        }
        let ans: Vec<f64> = rows.iter().map(|r| if r.0 == "A" { 1.0 } else { 0.0 }).collect();
        RecordBatch::try_new(
            sentences_schema(),
            vec![
                Arc::new(StringArray::from(vec!["full"; n])),
                Arc::new(StringArray::from(vec!["val"; n])),
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(UInt32Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(StringArray::from(vec!["s"; n])),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                Arc::new(Float64Array::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
                Arc::new(BooleanArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(ans)),
                Arc::new(StringArray::from(vec!["t"; n])),
                Arc::new(StringArray::from(vec!["minilm > 0.64"; n])),
                Arc::new(Float64Array::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
                Arc::new(sim.finish()),
            ],
        )
        .unwrap()
    };
    let m = metrics_from_rows(&items, &chains, &sentences(&rows), &MetricsParams::default()).unwrap();
    assert_eq!(m.num_rows(), 3);
    let level: Vec<&str> = m.column_by_name("level").unwrap().as_string::<i32>().iter().flatten().collect();
    assert_eq!(level, ["all", "perception", "reasoning"]);
    let u = |c: &str| m.column_by_name(c).unwrap().as_primitive::<arrow::datatypes::UInt64Type>().values().to_vec();
    assert_eq!(u("responses"), [3, 3, 3]);
    assert_eq!(u("sentences"), [5, 3, 2]);
    let f = |c: &str| m.column_by_name(c).unwrap().as_primitive::<Float64Type>().iter().collect::<Vec<_>>();
    let close = |got: Vec<Option<f64>>, want: [Option<f64>; 3], what: &str| {
        for (g, w) in got.iter().zip(want) {
            match (g, w) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "{what}: {got:?} vs {want:?}"),
                (None, None) => {}
                _ => panic!("{what}: {got:?} vs {want:?}"),
            }
        }
    };
    // MECE over A (|1-.8|+|1-.6|)/2 = .3 and B (|0-.9|+|1-.3|)/2 = .8 (B's sentence 1 has no confidence,
    // C no sentence); perception: A .2, B .8; reasoning: A .4 (B has none with a confidence).
    close(f("mece"), [Some(0.55), Some(0.5), Some(0.4)], "mece");
    close(f("brier"), [Some((0.1 + 0.65) / 2.0), Some((0.04 + 0.65) / 2.0), Some(0.16)], "brier");
    // ECE (20 bins) on the final sentences' confidences: A .6 right, B .3 wrong → .5·.4 + .5·.3.
    close(f("ece"), [Some(0.35), None, None], "ece");
    close(f("auroc"), [Some(1.0), None, None], "auroc");
    close(f("accuracy"), [Some(1.0 / 3.0), None, None], "accuracy");
    // Chain F1 (s > 0.64): precise 4 of 5 predicted, covered 4 of 7 reference → 2/3; perception: 2 of
    // 3, 2 of 4 → 4/7; reasoning: 2 of 2, 2 of 3 → 4/5.
    close(f("chain_f1"), [Some(2.0 / 3.0), Some(4.0 / 7.0), Some(0.8)], "chain_f1");

    // Rows that do not add up are refused, naming the chain.
    let e = metrics_from_rows(&items, &chains, &sentences(&rows[..4]), &MetricsParams::default()).unwrap_err().to_string();
    assert!(e.contains("(full, B)") && e.contains("says 3"), "{e}");
    let mut stray = rows.clone();
    stray.push(("D", 0, "perception", true, Some(0.5), vec![0.1]));
    let e = metrics_from_rows(&items, &chains, &sentences(&stray), &MetricsParams::default()).unwrap_err().to_string();
    assert!(e.contains("(full, D)") && e.contains("no row in `chains`"), "{e}");
}
