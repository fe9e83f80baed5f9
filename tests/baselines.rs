//! The paper's baselines (`stages/baselines.toml`, `mmb compare`): each baseline's file entry builds its
//! pipeline, its prompt's output is parsed as eval reads it, and DRL's PPO starts from (and is anchored to)
//! the vanilla model on the tiny pipeline.
use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use mmboundary::engine::RunOptions;
use mmboundary::stages::chain_judge::ChainJudge;
use mmboundary::stages::eval::EvalParams;
use mmboundary::stages::ppo::{PolicyStart, PpoStageParams};
use mmboundary::stages::{StageConfigs, SweepFile};
use mmboundary::store::ArtifactId;
use std::path::{Path, PathBuf};

mod common;
#[path = "common/worker.rs"]
mod worker;
use common::tiny::pool_path;

fn stages_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("stages")
}

fn baselines() -> SweepFile {
    SweepFile::load(&stages_dir().join("baselines.toml")).unwrap()
}

fn judge() -> ChainJudge {
    ChainJudge::load(
        &mmboundary::encoders::minilm::default_model_dir(),
        &pool_path(),
        Default::default(),
        Default::default(),
        &Default::default(),
    )
    .unwrap()
}

#[test]
fn every_baseline_builds_its_pipeline_and_names_its_eval_row() {
    let f = baselines();
    let names: Vec<&str> = f.variant.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["dpv", "dps", "drl", "sc", "multisample", "sayself", "conf_csr", "rce"]);
    for v in &f.variant {
        let configs = StageConfigs { dir: stages_dir(), overrides: v.params.clone() };
        let p = mmboundary::stages::pipeline_with(&configs).unwrap_or_else(|e| panic!("{}: {e:#}", v.name));
        let eval: EvalParams = configs.params("eval").unwrap();
        // The policy the table reads is the one the variant's eval generates.
        assert_eq!(eval.variants, vec![v.row().to_string()], "{}", v.name);
        // The table reads no image-swap pass: it would double the baseline's evaluation.
        assert!(!eval.image_swap, "{}: image_swap", v.name);
        let rollout_inputs: Vec<String> = p.get("rollout_0").unwrap().inputs().iter().map(|i| i.stage.clone()).collect();
        let ppo: PpoStageParams = configs.params("ppo").unwrap();
        match v.name.as_str() {
            "dpv" => {
                assert_eq!(v.row(), "vanilla");
                assert!(eval.instruction.as_deref().unwrap_or_default().contains("(Confidence: x/100)"), "{:?}", eval.instruction);
                assert_eq!(eval.prompt, None, "the shared prompt, not a baseline's own");
            }
            "dps" => {
                assert_eq!(v.row(), "vanilla");
                assert!(eval.instruction.as_deref().unwrap_or_default().contains("how confident you are"), "{:?}", eval.instruction);
            }
            "drl" => {
                assert_eq!(v.row(), "full");
                assert_eq!(ppo.start, PolicyStart::Vanilla);
                // No warm-up: the RL stages do not read the SFT checkpoint.
                assert!(!rollout_inputs.contains(&"sft".to_string()), "{rollout_inputs:?}");
                assert_eq!(ppo.instruction, eval.instruction);
            }
            "sc" => {
                assert_eq!(v.row(), "sc");
                assert_eq!((eval.sc.samples, eval.sc.temperature), (5, 0.7));
            }
            "multisample" => {
                assert_eq!(v.row(), "sft");
                let map: mmboundary::stages::map::MapParams = configs.params("map").unwrap();
                assert_eq!(map.levels_from, mmboundary::stages::map::LevelSource::AnswerConsistency);
                let map_inputs: Vec<String> = p.get("map").unwrap().inputs().iter().map(|i| i.stage.clone()).collect();
                assert_eq!(map_inputs, ["generate", "dataset"]);
                let g: mmboundary::stages::generate::GenerateParams = configs.params("generate").unwrap();
                assert!(g.samples > 1 && g.temperature > 0.1);
            }
            "sayself" => {
                assert_eq!(v.row(), "full");
                assert_eq!(ppo.reward, mmboundary::stages::ppo::RewardKind::Sayself);
                assert!(eval.broadcast_last_statement);
                // Table 3 in its report, from its sampled chains: the report reads generate's chains.
                let report: mmboundary::stages::report::ReportParams = configs.params("report").unwrap();
                assert_eq!(report.ice_sce, Some(Default::default()));
                let report_inputs: Vec<String> = p.get("report").unwrap().inputs().iter().map(|i| i.stage.clone()).collect();
                assert!(report_inputs.contains(&"generate".to_string()), "{report_inputs:?}");
                let map: mmboundary::stages::map::MapParams = configs.params("map").unwrap();
                assert_eq!(map.format, mmboundary::stages::map::StatementFormat::ResponseNumeric);
                // The same sampled chains as Multisample: one generate for both.
                let ms = f.variant.iter().find(|v| v.name == "multisample").unwrap();
                assert_eq!(v.params["generate"], ms.params["generate"]);
            }
            "conf_csr" => {
                assert_eq!(v.row(), "dpo");
                // The same sampled (and scored) chains as Multisample and SaySelf.
                let ms = f.variant.iter().find(|v| v.name == "multisample").unwrap();
                assert_eq!(v.params["generate"], ms.params["generate"]);
                let inputs = |s: &str| -> Vec<String> { p.get(s).unwrap().inputs().iter().map(|i| i.name.clone()).collect() };
                assert_eq!(inputs("csr_pairs"), ["scored"]);
                assert_eq!(inputs("dpo"), ["pairs", "items", "features", "model"]);
                assert!(inputs("eval_chains").contains(&"dpo_checkpoint".to_string()), "{:?}", inputs("eval_chains"));
                let pairs: mmboundary::stages::csr_pairs::CsrPairsParams = configs.params("csr_pairs").unwrap();
                assert_eq!(pairs.clip_alpha, 0.9);
            }
            "rce" => {
                use mmboundary::confidence::parser::Layout;
                assert_eq!(v.row(), "full");
                let map: mmboundary::stages::map::MapParams = configs.params("map").unwrap();
                assert_eq!(map.format, mmboundary::stages::map::StatementFormat::AfterResponse);
                assert_eq!(map.levels_from, mmboundary::stages::map::LevelSource::Signals);
                // MMBoundary's warm-up data (bin's levels), SFT, then PPO from SFT with MMBoundary's reward.
                let map_inputs: Vec<String> = p.get("map").unwrap().inputs().iter().map(|i| i.stage.clone()).collect();
                assert_eq!(map_inputs, ["bin"]);
                assert!(rollout_inputs.contains(&"sft".to_string()), "{rollout_inputs:?}");
                assert_eq!(ppo.start, PolicyStart::Sft);
                assert_eq!(ppo.reward, mmboundary::stages::ppo::RewardKind::default());
                // Both readers of the policy's output read the block after the response.
                assert_eq!((ppo.parser.layout, eval.parser.layout), (Layout::AfterResponse, Layout::AfterResponse));
                assert_eq!(eval.instruction, None, "MMBoundary's prompt: the format is learned in SFT");
                // Only the format differs from the main run's generate, score and bin: all shared.
                let main = mmboundary::stages::pipeline(&stages_dir()).unwrap();
                for st in ["generate", "score", "bin"] {
                    assert_eq!(p.get(st).unwrap().params(), main.get(st).unwrap().params(), "{st}");
                }
            }
            other => panic!("untested baseline {other}"),
        }
    }
    // The main pipeline's RL stages still start from SFT, and its params (so its cache keys) do not
    // mention the new `start` switch.
    let main = mmboundary::stages::pipeline(&stages_dir()).unwrap();
    let r0 = main.get("rollout_0").unwrap();
    assert!(r0.inputs().iter().any(|i| i.stage == "sft"));
    let params = r0.params().to_string();
    assert!(!params.contains("\"start\"") && !params.contains("start_mode"), "{params}");
    let eval_params = main.get("eval").unwrap().params().to_string();
    assert!(!eval_params.contains("\"sc\""), "{eval_params}");
    let report_params = main.get("report").unwrap().params().to_string();
    assert!(!report_params.contains("ice_sce"), "{report_params}");
    assert!(!main.get("report").unwrap().inputs().iter().any(|i| i.stage == "generate"));
    // RCE's switches (map.format, the parser's layout) are left out of the main run's params.
    assert!(main.get("map").unwrap().params().get("format").is_none());
    assert!(main.get("rollout_0").unwrap().params()["ppo"]["parser"].get("layout").is_none());
    assert!(main.get("eval_chains").unwrap().params()["parser"].get("layout").is_none());
    // Conf-CSR's stages are not part of the main run (nothing there reads them), and eval's inputs are the
    // checkpoints of sft and ppo only.
    let names: Vec<&str> = main.ordered().map(|s| s.name()).collect();
    assert!(!names.contains(&"dpo") && !names.contains(&"csr_pairs"), "{names:?}");
    let eval_inputs: Vec<String> = main.get("eval_chains").unwrap().inputs().iter().map(|i| i.name.clone()).collect();
    assert_eq!(eval_inputs, ["items", "features", "all_items", "sft_checkpoint", "ppo_checkpoint", "model"]);
}

#[test]
fn a_row_that_is_not_an_eval_policy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.toml");
    std::fs::write(&path, "[[variant]]\nname = \"x\"\nrow = \"greedy\"\n").unwrap();
    let e = SweepFile::load(&path).unwrap_err().to_string();
    assert!(e.contains("row \"greedy\"") && e.contains("b.toml"), "{e}");
}

/// DPV: the numeric confidence the prompt asks for, "(Confidence: x/100)" after each sentence, is read
/// back by value for its sentence, as eval reads it.
#[test]
fn dpv_output_is_parsed_into_per_sentence_scores() {
    let j = judge();
    let text = "There is a red circle on the left. (Confidence: 80/100) It is larger than the square. \
                (Confidence: 35/100) So the answer is A. (Confidence: 60/100)";
    let pairs = j.judge(text, &["There is a red circle."]).unwrap();
    let got: Vec<(&str, Option<f64>)> = pairs.iter().map(|p| (p.pair.sentence.as_str(), p.expressed)).collect();
    assert_eq!(
        got,
        vec![
            ("There is a red circle on the left.", Some(0.8)),
            ("It is larger than the square.", Some(0.35)),
            ("So the answer is A.", Some(0.6)),
        ]
    );
}

/// DPS: a free-form confidence sentence after each sentence is found (a paraphrase: the pool's
/// statements are clauses, "and I am entirely sure of it.") and mapped by the backward map to its nearest
/// pool statement's level: level 5 (1.0) and level 1 (0.0) here. (Measured, not asserted: MiniLM puts
/// "I am very sure about this." nearest a level-3 statement, so DPS's phrasing matters.)
#[test]
fn dps_output_is_parsed_into_statements_and_mapped() {
    let j = judge();
    let text = "There is a red circle on the left. I am entirely sure of it. It is larger than the square. \
                I have serious doubts about it. So the answer is A.";
    let pairs = j.judge(text, &["There is a red circle."]).unwrap();
    let sentences: Vec<&str> = pairs.iter().map(|p| p.pair.sentence.as_str()).collect();
    assert_eq!(sentences, ["There is a red circle on the left.", "It is larger than the square.", "So the answer is A."]);
    assert_eq!(pairs[0].pair.statement.as_deref(), Some("I am entirely sure of it."));
    assert_eq!(pairs[1].pair.statement.as_deref(), Some("I have serious doubts about it."));
    assert_eq!(pairs[2].pair.statement, None);
    assert_eq!((pairs[0].expressed, pairs[1].expressed, pairs[2].expressed), (Some(1.0), Some(0.0), None));
}

/// DRL on the tiny pipeline: PPO from the vanilla model runs without the SFT stage, its reference is
/// the model it starts from (so the first iteration's KL is 0: with the SFT model as reference it is
/// not), and eval loads its checkpoint.
#[test]
fn drl_trains_from_the_vanilla_model_without_sft() {
    worker::worker();
    let (_dir, store, model) = common::tiny_llava_store();
    let build = |start: PolicyStart| {
        common::tiny::pipeline_with(&model, |p| {
            p.ppo.start = start;
            p.eval.variants = vec!["full".into()];
        })
    };
    let s = build(PolicyStart::Vanilla).run(&store, &RunOptions { target: Some("ppo".into()), ..Default::default() }).unwrap();
    assert!(!s.ran.iter().any(|r| r == "sft" || r == "map"), "DRL ran the warm-up: {:?}", s.ran);
    assert!(s.ran.iter().any(|r| r == "update_1"), "{:?}", s.ran);
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let log = store.read_table(&ArtifactId::parse(&lock.stages["ppo"].outputs["log"].id).unwrap()).unwrap().concat().unwrap();
    let kl: Vec<f64> = log.column_by_name("kl").unwrap().as_primitive::<Float64Type>().values().to_vec();
    // Not exactly 0: the policy's log-probs come from the rollout batches and the reference's from other
    // batches, and on an Intel Xeon with AVX-512 the rounding differs by ~1e-4 (a fresh-clone run gave
    // 9.6e-5); a wrong reference (the SFT model) is far off.
    assert!(kl[0].abs() < 1e-3, "iteration 0: policy and reference are both the vanilla model, KL {}", kl[0]);
    // eval of the DRL policy.
    let s = build(PolicyStart::Vanilla).run(&store, &RunOptions { target: Some("eval".into()), ..Default::default() }).unwrap();
    assert!(s.ran.iter().any(|r| r == "eval"));
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let m = store.read_table(&ArtifactId::parse(&lock.stages["eval"].outputs["metrics"].id).unwrap()).unwrap().concat().unwrap();
    let variants = m.column_by_name("variant").unwrap().as_string::<i32>();
    assert!(variants.iter().flatten().all(|v| v == "full") && m.num_rows() > 0);
    // SC on the same store: only eval reruns (the vanilla model samples; no training is read).
    let sc = common::tiny::pipeline_with(&model, |p| {
        p.eval.variants = vec!["sc".into()];
        p.eval.sc.samples = 2;
    });
    let s = sc.run(&store, &RunOptions { target: Some("eval".into()), ..Default::default() }).unwrap();
    assert_eq!(s.ran, ["eval_chains", "eval"], "SC reads no checkpoint");
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let rows =
        store.read_table(&ArtifactId::parse(&lock.stages["eval_chains"].outputs["sentences"].id).unwrap()).unwrap().concat().unwrap();
    let conf: Vec<Option<f64>> = rows.column_by_name("confidence").unwrap().as_primitive::<Float64Type>().iter().collect();
    // With K = 2 every confidence is 0, 1/2 or 1, and every sentence has one (its numeric statement).
    assert!(!conf.is_empty());
    assert!(conf.iter().all(|c| c.is_some_and(|c| [0.0, 0.5, 1.0].contains(&c))), "{conf:?}");
    // DRL and SC never needed the warm-up.
    assert!(!mmboundary::engine::LockFile::load(store.root()).unwrap().stages.contains_key("sft"));
    // Multisample: m = 2 sampled chains per question, SFT data from their answer consistency (no scoring),
    // SFT, and eval of the SFT policy.
    let ms = common::tiny::pipeline_with(&model, |p| {
        common::tiny::sample_twice(p);
        p.map.levels_from = mmboundary::stages::map::LevelSource::AnswerConsistency;
        p.eval.variants = vec!["sft".into()];
    });
    let s = ms.run(&store, &RunOptions { target: Some("eval".into()), ..Default::default() }).unwrap();
    assert_eq!(s.ran, ["generate", "map", "sft", "eval_chains", "eval"]);
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let data = store.read_table(&ArtifactId::parse(&lock.stages["map"].outputs["sft_data"].id).unwrap()).unwrap().concat().unwrap();
    assert_eq!(data.num_rows(), 8, "4 questions × 2 samples");
    // SaySelf: the same sampled chains (generate is cached), consistency SFT with one numeric statement,
    // PPO with SaySelf's reward, eval broadcasting the response's confidence.
    let ss = common::tiny::pipeline_with(&model, |p| {
        common::tiny::sample_twice(p);
        p.map.levels_from = mmboundary::stages::map::LevelSource::AnswerConsistency;
        p.map.format = mmboundary::stages::map::StatementFormat::ResponseNumeric;
        p.ppo.reward = mmboundary::stages::ppo::RewardKind::Sayself;
        p.eval.variants = vec!["full".into()];
        p.eval.broadcast_last_statement = true;
    });
    let s = ss.run(&store, &RunOptions { target: Some("eval".into()), ..Default::default() }).unwrap();
    assert!(!s.ran.iter().any(|r| r == "generate") && s.ran.iter().any(|r| r == "update_1"), "{:?}", s.ran);
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let data = store.read_table(&ArtifactId::parse(&lock.stages["map"].outputs["sft_data"].id).unwrap()).unwrap().concat().unwrap();
    let targets = data.column_by_name("target").unwrap().as_string::<i32>();
    assert!(targets.iter().all(|t| t.unwrap().ends_with("/10.")), "{targets:?}");
    let ro = store.read_table(&ArtifactId::parse(&lock.stages["ppo"].outputs["rollouts"].id).unwrap()).unwrap().concat().unwrap();
    let rewards: Vec<f64> = ro.column_by_name("reward").unwrap().as_primitive::<Float64Type>().values().to_vec();
    assert!(rewards.iter().all(|r| *r == -1.0 || (-1.0..=1.0).contains(r)), "{rewards:?}");
    let rows =
        store.read_table(&ArtifactId::parse(&lock.stages["eval_chains"].outputs["sentences"].id).unwrap()).unwrap().concat().unwrap();
    let (ids, stated, used) = (
        rows.column_by_name("item_id").unwrap().as_string::<i32>(),
        rows.column_by_name("confidence").unwrap().as_primitive::<Float64Type>(),
        rows.column_by_name("metric_confidence").unwrap().as_primitive::<Float64Type>(),
    );
    for r in 0..rows.num_rows() {
        // A sentence without statement takes its chain's last stated confidence (0.5 when it has none).
        let chain: Vec<usize> = (0..rows.num_rows()).filter(|&q| ids.value(q) == ids.value(r)).collect();
        let last = chain.iter().rev().find(|&&q| !stated.is_null(q)).map(|&q| stated.value(q));
        let want = if stated.is_null(r) { last.unwrap_or(0.5) } else { stated.value(r) };
        assert_eq!(used.value(r), want, "row {r}");
    }
    // The same pipeline from SFT is another run: its RL stages are stale, nothing of DRL's is reused.
    let stale: Vec<String> =
        build(PolicyStart::Sft).status(&store, &[]).unwrap().into_iter().filter(|s| !s.is_fresh()).map(|s| s.stage).collect();
    assert!(stale.contains(&"rollout_0".to_string()), "{stale:?}");
}

/// `mmb compare`'s table: the baselines' heading, every row's cells by split, the number of items behind
/// each row, and the baselines not run yet listed with the command that runs them.
#[test]
fn the_comparison_table_has_every_row_with_its_items_and_lists_what_is_missing() {
    use mmboundary::report::page::{variants_markdown, MetricsRow, BASELINE_HEADING};
    let row = |variant: &str, split: &str, responses: u64, ece: f64| MetricsRow {
        variant: variant.into(),
        split: split.into(),
        level: "all".into(),
        responses,
        sentences: 3 * responses,
        ece: Some(ece),
        mece: Some(0.3),
        brier: Some(0.2),
        accuracy: Some(0.5),
        chain_f1: Some(0.4),
        auroc: Some(0.6),
    };
    let entries = vec![
        (
            "`mmb run`".to_string(),
            "MMBoundary".to_string(),
            Some(vec![row("MMBoundary", "val", 40, 0.25), row("MMBoundary", "ood", 20, 0.5)]),
        ),
        ("`mmb compare --only dpv`".to_string(), "DPV".to_string(), Some(vec![row("DPV", "val", 40, 0.125)])),
        ("`mmb compare --only drl`".to_string(), "DRL".to_string(), None),
    ];
    let md = variants_markdown(BASELINE_HEADING, &entries, &Default::default());
    assert!(md.starts_with("# Baselines (Table 1's upper half; AUROC: Table 8)"), "{md}");
    assert!(md.contains("| MMBoundary | 40 | 20 |"), "{md}");
    assert!(md.contains("| DPV | 40 | – |"), "{md}");
    assert!(md.contains("0.125") && md.contains("0.250") && md.contains("0.600"), "{md}");
    assert!(md.contains("- DRL: `mmb compare --only drl`"), "{md}");
}

fn item() -> mmboundary::data::Item {
    let mut it = mmboundary::data::Item::new("x1", "test", "val", "What shape is the red object?");
    it.choices = vec!["circle".into(), "square".into()];
    it.correct_choice = Some(0);
    it.chain = mmboundary::data::ReferenceChain {
        perception: vec!["There is a red circle in the image.".into()],
        reasoning: vec!["So, the answer is circle.".into()],
    };
    it
}

/// SC's agreement rules on hand-computed values.
#[test]
fn sc_confidences_from_known_samples() {
    use mmboundary::confidence::consistency::{answer_agreement, chain_confidences, render_with_confidences, sentence_agreement};
    let s = |v: &str| Some(v.to_string());
    // 2 of 4 samples give the greedy answer; one gives none.
    assert_eq!(answer_agreement(Some("choice:0"), &[s("choice:0"), s("choice:1"), None, s("choice:0")]).unwrap(), 0.5);
    assert_eq!(answer_agreement(None, &[s("choice:0")]).unwrap(), 0.0);
    assert!(answer_agreement(Some("a"), &[]).is_err());
    // Sentence 0 is matched in samples 0 and 2 (0.9, 0.7 > 0.64), sentence 1 only in sample 1; a score equal
    // to the threshold is no match; sample 2 has one sentence.
    let sims = vec![vec![vec![0.9, 0.1], vec![0.2, 0.64]], vec![vec![0.3, 0.5], vec![0.65, 0.0]], vec![vec![0.7], vec![0.1]]];
    assert_eq!(sentence_agreement(2, &sims, 0.64).unwrap(), vec![2.0 / 3.0, 1.0 / 3.0]);
    assert!(sentence_agreement(3, &sims, 0.64).is_err(), "a sample with the wrong number of rows is an error");
    assert_eq!(chain_confidences(vec![2.0 / 3.0, 1.0 / 3.0], Some(1), 0.5).unwrap(), vec![2.0 / 3.0, 0.5]);
    let text = render_with_confidences(&["There is a red circle.".into(), "So the answer is A.".into()], &[2.0 / 3.0, 0.5]).unwrap();
    assert_eq!(text, "There is a red circle. Confidence: 0.67. So the answer is A. Confidence: 0.50.");
    // …and eval reads the values back.
    let pairs = judge().judge(&text, &["There is a red circle."]).unwrap();
    assert_eq!(pairs.iter().map(|p| p.expressed).collect::<Vec<_>>(), vec![Some(0.67), Some(0.5)]);
}

/// SC end to end on one item with hand-written samples: the answer sentence takes the answer agreement
/// (2 of 3 samples choose the circle), the other sentence the share of samples that repeat it (2 of 3).
#[test]
fn sc_rewrites_the_greedy_chain_with_its_agreement() {
    use mmboundary::stages::self_consistency::{answer_key, sc_chain_text};
    let it = item();
    let acc = mmboundary::metrics::accuracy::AccuracyParams::default();
    assert_eq!(answer_key(&it, &["So the answer is (A) circle."], &acc).as_deref(), Some("choice:0"));
    assert_eq!(answer_key(&it, &["So the answer is square."], &acc).as_deref(), Some("choice:1"));
    assert_eq!(answer_key(&it, &["I see a shape."], &acc), None);
    let greedy = "There is a red circle in the image. So the answer is circle.";
    let samples = vec![
        "There is a red circle in the image. So the answer is circle.".to_string(),
        "The weather today is rainy and cold. So the answer is square.".to_string(),
        "There is a red circle in the image. So the answer is (A).".to_string(),
    ];
    let text = sc_chain_text(&judge(), &it, greedy, &samples, 0.64, &acc).unwrap();
    assert_eq!(text, "There is a red circle in the image. Confidence: 0.67. So the answer is circle. Confidence: 0.67.");
}

/// Multisample's SFT data from known chains: 4 samples of one item answer circle, circle, square and
/// nothing, so their consistencies are 2/4, 2/4, 1/4 and 0: levels 3, 3, 2 and 1 (nearest of 0, .25, …, 1),
/// the level's statement after every sentence.
#[test]
fn multisample_targets_say_the_answer_consistency() {
    use arrow::array::{ArrayRef, ListBuilder, StringArray, StringBuilder, UInt32Array};
    use mmboundary::confidence::consistency::consistency_level;
    use mmboundary::confidence::statements::StatementPool;
    use mmboundary::stages::map::{consistency_sft_data, LevelSource, MapParams};
    assert_eq!([0.0, 0.1, 0.125, 0.25, 0.5, 0.6, 0.9, 1.0].map(|c| consistency_level(c).unwrap()), [1, 1, 2, 2, 3, 3, 5, 5]);
    assert!(consistency_level(1.5).is_err());
    let mut it = item();
    it.split = "train".into();
    let chains_sents = [
        vec!["There is a red circle.", "So the answer is circle."],
        vec!["I see a circle.", "So the answer is (A)."],
        vec!["There is a square.", "So the answer is square."],
        vec!["The object is red."],
    ];
    let mut sb = ListBuilder::new(StringBuilder::new());
    for c in &chains_sents {
        for s in c {
            sb.values().append_value(s);
        }
        sb.append(true);
    }
    let n = chains_sents.len();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("item_id", std::sync::Arc::new(StringArray::from(vec!["x1"; n]))),
        ("split", std::sync::Arc::new(StringArray::from(vec!["train"; n]))),
        ("sample", std::sync::Arc::new(UInt32Array::from((0..n as u32).collect::<Vec<_>>()))),
        ("sentences", std::sync::Arc::new(sb.finish())),
    ];
    let batch = arrow::record_batch::RecordBatch::try_from_iter(cols).unwrap();
    let pool_text = std::fs::read_to_string(pool_path()).unwrap();
    let pool = StatementPool::from_toml(&pool_text, "statements.toml").unwrap();
    let params = MapParams { pool: pool_path(), levels_from: LevelSource::AnswerConsistency, ..Default::default() };
    let out = consistency_sft_data(&pool, &params, &[it], &batch).unwrap();
    let targets: Vec<String> = out.column_by_name("target").unwrap().as_string::<i32>().iter().map(|t| t.unwrap().to_string()).collect();
    assert_eq!(targets.len(), 4);
    let level_of = |statement: &str| -> Vec<u8> {
        let norm = |x: &str| x.trim().trim_end_matches('.').to_lowercase();
        pool.iter().filter(|(_, t)| norm(t) == norm(statement)).map(|(l, _)| l).collect()
    };
    let parser = mmboundary::confidence::parser::Parser::new(&pool, Default::default());
    for (target, (want, sents)) in targets.iter().zip([3u8, 3, 2, 1].iter().zip(&chains_sents)) {
        let parsed = parser.parse(target);
        assert_eq!(parsed.pairs.len(), sents.len(), "{target}");
        for p in &parsed.pairs {
            let st = p.statement.as_deref().unwrap_or_else(|| panic!("no statement in {target}"));
            assert_eq!(level_of(st), vec![*want], "{st:?} in {target}");
        }
    }
}

/// SaySelf's reward on hand-computed values, and on a scored rollout: "So, the answer is circle." is right
/// and says 8/10, so R = 1 − 2·(1 − 0.8)² = 0.92, all of it on the token that ends "8/10.".
#[test]
fn sayself_reward_on_hand_computed_values() {
    use mmboundary::confidence::levels::{FusionParams, LevelModel};
    use mmboundary::confidence::rewards::sayself_reward;
    use mmboundary::stages::ppo::{RewardKind, RewardModel};
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(sayself_reward(1.0, Some(0.8)).unwrap(), 0.92));
    assert!(close(sayself_reward(0.0, Some(0.8)).unwrap(), -0.28));
    assert!(close(sayself_reward(0.5, Some(0.5)).unwrap(), 1.0));
    assert_eq!(sayself_reward(1.0, None).unwrap(), -1.0);
    assert!(sayself_reward(1.0, Some(1.2)).is_err());

    let rows: Vec<[f64; 4]> =
        (0..20).map(|i| [1.0 + i as f64 * 0.1, 0.5 + (i % 7) as f64 * 0.2, (i % 5) as f64 * 0.1, 0.2 + (i % 3) as f64 * 0.05]).collect();
    let levels = LevelModel::fit(&rows, &FusionParams::default()).unwrap();
    let params = PpoStageParams {
        minilm: mmboundary::encoders::minilm::default_model_dir(),
        clip: Some(common::fixtures().join("encoders/clip_tiny")),
        pool: pool_path(),
        reward: RewardKind::Sayself,
        ..Default::default()
    };
    let rm = RewardModel::load(&params, params.clip.as_deref().unwrap(), levels, &Default::default()).unwrap();
    let image = rm.clip.text.encode(&["a red circle"]).unwrap().embeddings.data;
    let mut it = item();
    it.source = "test".into();
    let r = common::tokens_of("There is a red circle in the image. So, the answer is circle. Confidence: 8/10.");
    let s = rm.score(&it, &image, &r).unwrap();
    assert_eq!(s.expressed, vec![None, Some(0.8)], "{s:?}");
    assert!(close(s.total, 0.92) && close(s.ka, 1.0) && close(s.ec, 0.92), "{s:?}");
    let last = r.tokens.iter().position(|t| t.text == " 8/10.").unwrap();
    assert_eq!(s.token_rewards, vec![(last, s.total)]);
    // The wrong answer with the same confidence: 1 − 2·0.8² = −0.28.
    let s = rm
        .score(&it, &image, &common::tokens_of("There is a red circle in the image. So, the answer is square. Confidence: 8/10."))
        .unwrap();
    assert!(close(s.total, -0.28) && close(s.ka, 0.0), "{s:?}");
    // No confidence at all: −1.
    let s = rm.score(&it, &image, &common::tokens_of("There is a red circle in the image. So, the answer is circle.")).unwrap();
    assert_eq!(s.total, -1.0);
}

/// SaySelf's SFT target: the chain, then its consistency once on 0–10 ("Confidence: 5/10." for 2 of 4).
#[test]
fn sayself_targets_say_the_consistency_once_after_the_response() {
    use arrow::array::{ArrayRef, ListBuilder, StringArray, StringBuilder, UInt32Array};
    use mmboundary::confidence::statements::StatementPool;
    use mmboundary::stages::map::{consistency_sft_data, LevelSource, MapParams, StatementFormat};
    let mut it = item();
    it.split = "train".into();
    let chains =
        [vec!["A circle.", "So the answer is circle."], vec!["So the answer is square."], vec!["So the answer is (A)."], vec!["Hmm."]];
    let mut sb = ListBuilder::new(StringBuilder::new());
    for c in &chains {
        for s in c {
            sb.values().append_value(s);
        }
        sb.append(true);
    }
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("item_id", std::sync::Arc::new(StringArray::from(vec!["x1"; 4]))),
        ("split", std::sync::Arc::new(StringArray::from(vec!["train"; 4]))),
        ("sample", std::sync::Arc::new(UInt32Array::from(vec![0u32, 1, 2, 3]))),
        ("sentences", std::sync::Arc::new(sb.finish())),
    ];
    let batch = arrow::record_batch::RecordBatch::try_from_iter(cols).unwrap();
    let pool = StatementPool::from_toml(&std::fs::read_to_string(pool_path()).unwrap(), "statements.toml").unwrap();
    let params = MapParams {
        pool: pool_path(),
        levels_from: LevelSource::AnswerConsistency,
        format: StatementFormat::ResponseNumeric,
        ..Default::default()
    };
    let out = consistency_sft_data(&pool, &params, &[it], &batch).unwrap();
    let targets: Vec<&str> = out.column_by_name("target").unwrap().as_string::<i32>().iter().map(|t| t.unwrap()).collect();
    assert_eq!(
        targets,
        [
            "A circle. So the answer is circle. Confidence: 5/10.",
            "So the answer is square. Confidence: 3/10.",
            "So the answer is (A). Confidence: 5/10.",
            "Hmm. Confidence: 0/10."
        ]
    );
}

/// CSR's self-reward on hand-computed values: ranks best first over n (best 1/n; ties in input order),
/// R = 0.1·rank(U_LNLP, lower first) + 0.9·rank(CLIPScore, higher first), a path's mean R, the first
/// lowest path chosen and the last highest rejected, and the confidences R min-max flipped.
#[test]
fn conf_csr_self_reward_on_hand_computed_values() {
    use mmboundary::confidence::csr::{best_worst, confidences, path_score, rank_normalize, sentence_rewards, CLIP_ALPHA};
    let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
    assert!(close(&rank_normalize(&[3.0, 1.0, 2.0], false).unwrap(), &[1.0, 1.0 / 3.0, 2.0 / 3.0]));
    // Descending, the tie (0.2, 0.2) in input order.
    assert!(close(&rank_normalize(&[0.2, 0.5, 0.2, 0.1], true).unwrap(), &[0.5, 0.25, 0.75, 1.0]));
    assert!(rank_normalize(&[0.1, f64::NAN], true).is_err());
    assert_eq!(CLIP_ALPHA, 0.9);
    // rank_T = [1, 1/3, 2/3], rank_I = [1/3, 1, 2/3]: the image decides.
    let r = sentence_rewards(&[3.0, 1.0, 2.0], &[0.3, 0.1, 0.2], CLIP_ALPHA).unwrap();
    assert!(close(&r, &[0.1 + 0.3, 0.1 / 3.0 + 0.9, 0.2 / 3.0 + 0.6]), "{r:?}");
    // α = 0: the likelihood alone.
    assert!(close(&sentence_rewards(&[3.0, 1.0, 2.0], &[0.3, 0.1, 0.2], 0.0).unwrap(), &[1.0, 1.0 / 3.0, 2.0 / 3.0]));
    assert!(sentence_rewards(&[1.0], &[0.1, 0.2], 0.9).is_err());
    assert!(sentence_rewards(&[1.0], &[0.1], 1.5).is_err());
    assert!((path_score(&[0.4, 0.9]).unwrap() - 0.65).abs() < 1e-12);
    assert!(path_score(&[]).is_err());
    assert_eq!(best_worst(&[0.5, 0.3, 0.7, 0.3, 0.7]).unwrap(), Some((1, 4)));
    assert_eq!(best_worst(&[0.5]).unwrap(), None);
    assert_eq!(best_worst(&[0.2, 0.2]).unwrap(), None);
    assert!(close(&confidences(&[0.4, 0.9, 0.65]).unwrap(), &[1.0, 0.0, 0.5]));
    assert_eq!(confidences(&[0.3, 0.3]).unwrap(), vec![0.5, 0.5]);
}

/// Conf-CSR's pairs on known `score` rows. Item a has three chains (ranked among its five sentences):
/// U_LNLP [1.0, 2.0 | 1.5, 3.0 | 1.2] → rank_T [.2, .8 | .6, 1 | .4]; CLIPScore [.30, .25 | .10, .05 | .20]
/// → rank_I [.2, .4 | .8, 1 | .6]; R = [.20, .44 | .78, 1.0 | .58], paths .32, .89, .58: chain 0 chosen,
/// chain 1 rejected. Item b has one chain (R = 1, no pair); item c is in val (left out). Confidences over
/// the dataset (lo .2, hi 1): [1, .7 | .275, 0 | .525] and b's 0 → levels [5, 4 | 2, 1 | 3], 1.
#[test]
fn conf_csr_pairs_are_the_best_and_worst_chains_of_known_rows() {
    use arrow::array::{ArrayRef, Float64Array, StringArray, UInt32Array};
    use arrow::datatypes::{UInt32Type, UInt8Type};
    use mmboundary::confidence::statements::StatementPool;
    use mmboundary::stages::csr_pairs::{csr_pairs, CsrPairsParams};
    // (item, split, sample, sentence, text, lnlp, clipscore); a's chain 0 out of order.
    let rows = [
        ("a", "train", 0u32, 1u32, "It is round.", 2.0, 0.25),
        ("a", "train", 0, 0, "There is a red circle.", 1.0, 0.30),
        ("a", "train", 1, 0, "There is a blue square.", 1.5, 0.10),
        ("a", "train", 1, 1, "It has corners.", 3.0, 0.05),
        ("a", "train", 2, 0, "I see a shape.", 1.2, 0.20),
        ("b", "train", 0, 0, "A dog.", 1.0, 0.5),
        ("c", "val", 0, 0, "A cat.", 1.0, 0.5),
        ("c", "val", 1, 0, "A bird.", 2.0, 0.1),
    ];
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("item_id", std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0)))),
        ("split", std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1)))),
        ("sample", std::sync::Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.2)))),
        ("sentence", std::sync::Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.3)))),
        ("text", std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.4)))),
        ("lnlp", std::sync::Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.5)))),
        ("clipscore", std::sync::Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.6)))),
    ];
    let scored = arrow::record_batch::RecordBatch::try_from_iter(cols).unwrap();
    let pool = StatementPool::from_toml(&std::fs::read_to_string(pool_path()).unwrap(), "statements.toml").unwrap();
    let params = CsrPairsParams { pool: pool_path(), ..Default::default() };
    let (pairs, rewards) = csr_pairs(&pool, &params, &scored).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    // Per-sentence rewards, in (item, sample, sentence) order.
    let r: Vec<f64> = rewards.column_by_name("reward").unwrap().as_primitive::<Float64Type>().values().to_vec();
    let want_r = [0.2, 0.44, 0.78, 1.0, 0.58, 1.0];
    assert!(r.len() == 6 && r.iter().zip(want_r).all(|(a, b)| close(*a, b)), "{r:?}");
    let c: Vec<f64> = rewards.column_by_name("confidence").unwrap().as_primitive::<Float64Type>().values().to_vec();
    assert!(c.iter().zip([1.0, 0.7, 0.275, 0.0, 0.525, 0.0]).all(|(a, b)| close(*a, b)), "{c:?}");
    let levels: Vec<u8> = rewards.column_by_name("level").unwrap().as_primitive::<UInt8Type>().values().to_vec();
    assert_eq!(levels, [5, 4, 2, 1, 3, 1]);
    let texts: Vec<&str> = rewards.column_by_name("text").unwrap().as_string::<i32>().iter().map(|t| t.unwrap()).collect();
    assert_eq!(texts[..2], ["There is a red circle.", "It is round."]);
    // One pair: a's chain 0 over its chain 1.
    assert_eq!(pairs.num_rows(), 1);
    assert_eq!(pairs.column_by_name("item_id").unwrap().as_string::<i32>().value(0), "a");
    assert_eq!(pairs.column_by_name("chosen_sample").unwrap().as_primitive::<UInt32Type>().value(0), 0);
    assert_eq!(pairs.column_by_name("rejected_sample").unwrap().as_primitive::<UInt32Type>().value(0), 1);
    assert!(close(pairs.column_by_name("chosen_score").unwrap().as_primitive::<Float64Type>().value(0), 0.32));
    assert!(close(pairs.column_by_name("rejected_score").unwrap().as_primitive::<Float64Type>().value(0), 0.89));
    // The responses carry a statement of each sentence's level, as the parser reads them back.
    let parser = mmboundary::confidence::parser::Parser::new(&pool, Default::default());
    let level_of = |statement: &str| -> Vec<u8> {
        let norm = |x: &str| x.trim().trim_end_matches('.').to_lowercase();
        pool.iter().filter(|(_, t)| norm(t) == norm(statement)).map(|(l, _)| l).collect()
    };
    for (col, want) in [
        ("chosen", [("There is a red circle", 5u8), ("It is round", 4)]),
        ("rejected", [("There is a blue square", 2), ("It has corners", 1)]),
    ] {
        let text = pairs.column_by_name(col).unwrap().as_string::<i32>().value(0).to_string();
        let parsed = parser.parse(&text);
        assert_eq!(parsed.pairs.len(), 2, "{text}");
        for (p, (sentence, level)) in parsed.pairs.iter().zip(want) {
            assert!(p.sentence.starts_with(sentence), "{text}");
            let st = p.statement.as_deref().unwrap_or_else(|| panic!("no statement in {text}"));
            assert_eq!(level_of(st), vec![level], "{st:?} in {text}");
        }
    }
    // Only val rows: nothing to pair, a clear error.
    let only_val = CsrPairsParams { splits: vec!["test".into()], ..params };
    let e = csr_pairs(&pool, &only_val, &scored).unwrap_err().to_string();
    assert!(e.contains("no scored sentences") && e.contains("test"), "{e}");
}

/// Conf-CSR end to end on the tiny pipeline: m = 2 sampled chains per question, scored, paired by CSR's
/// self-reward, DPO from the vanilla model (the first step's loss is ln 2: the policy is its reference),
/// a checkpoint whose LoRA adapters moved off their zero start, and eval of the DPO policy. Nothing of
/// the warm-up runs.
#[test]
fn conf_csr_trains_with_dpo_and_its_policy_is_evaluated() {
    worker::worker();
    let (_dir, store, model) = common::tiny_llava_store();
    let csr = common::tiny::pipeline_with(&model, |p| {
        common::tiny::sample_twice(p);
        p.eval.variants = vec!["dpo".into()];
    });
    let s = csr.run(&store, &RunOptions { target: Some("eval".into()), ..Default::default() }).unwrap();
    for st in ["generate", "score", "csr_pairs", "dpo", "eval"] {
        assert!(s.ran.iter().any(|r| r == st), "{st} did not run: {:?}", s.ran);
    }
    assert!(!s.ran.iter().any(|r| ["bin", "map", "sft"].contains(&r.as_str())), "{:?}", s.ran);
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let table = |stage: &str, out: &str| {
        store.read_table(&ArtifactId::parse(&lock.stages[stage].outputs[out].id).unwrap()).unwrap().concat().unwrap()
    };
    let pairs = table("csr_pairs", "pairs");
    assert!(pairs.num_rows() >= 1 && pairs.num_rows() <= 4, "{}", pairs.num_rows());
    let (cs, rs) = (
        pairs.column_by_name("chosen_score").unwrap().as_primitive::<Float64Type>(),
        pairs.column_by_name("rejected_score").unwrap().as_primitive::<Float64Type>(),
    );
    assert!((0..pairs.num_rows()).all(|r| cs.value(r) < rs.value(r)));
    let log = table("dpo", "log");
    assert_eq!(log.num_rows(), 1, "max_steps = 1");
    let loss = log.column_by_name("loss").unwrap().as_primitive::<Float64Type>().value(0);
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-5, "first DPO step: policy = reference, loss ln 2, found {loss}");
    let ck = store
        .path_of(&ArtifactId::parse(&lock.stages["dpo"].outputs["checkpoint"].id).unwrap(), mmboundary::store::ArtifactKind::Safetensors);
    let (tensors, meta) = mllm::weights::read_safetensors(&ck).unwrap();
    assert_eq!(meta["format"], "mmboundary-dpo-v1");
    let lora_b: Vec<&String> = tensors.keys().filter(|k| k.starts_with("param.") && k.contains("lora_B")).collect();
    assert!(!lora_b.is_empty(), "{:?}", tensors.keys().collect::<Vec<_>>());
    let moved = lora_b.iter().filter(|k| tensors[**k].abs().max().double_value(&[]) > 0.0).count();
    assert_eq!(moved, lora_b.len(), "every LoRA B starts at zero and must have moved after one step");
    let m = table("eval", "metrics");
    let variants = m.column_by_name("variant").unwrap().as_string::<i32>();
    assert!(m.num_rows() > 0 && variants.iter().flatten().all(|v| v == "dpo"));
    // A rerun is up to date (the dpo stage is cached like sft).
    let s = csr.run(&store, &RunOptions { target: Some("eval".into()), ..Default::default() }).unwrap();
    assert!(s.ran.is_empty(), "{:?}", s.ran);
}

/// SC's K draws of one item come from distinct seed streams: draw k is the item's stream k + 1 (stream 0
/// is the greedy chain's), different from every other draw, from the greedy chain and from another
/// item's draws, and the same whatever else is generated with it.
#[test]
fn sc_draws_of_an_item_use_distinct_seed_streams() {
    use mmboundary::engine::item_seed;
    use mmboundary::stages::self_consistency::draw_seed;
    let k = mmboundary::stages::self_consistency::ScParams::default().samples;
    assert_eq!(k, 5);
    let x1: Vec<u64> = (0..k).map(|d| draw_seed(0, "x1", d)).collect();
    assert_eq!(x1, (1..=k as u64).map(|s| item_seed(0, "x1", s)).collect::<Vec<_>>());
    let mut all: Vec<u64> = x1.clone();
    all.push(item_seed(0, "x1", 0));
    all.extend((0..k).map(|d| draw_seed(0, "x2", d)));
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "K draws, the greedy chain and another item's draws: all distinct seeds");
    // Another eval seed moves every stream.
    assert!((0..k).all(|d| draw_seed(1, "x1", d) != x1[d]));
}

/// A pool with one statement per level, so every draw is known by hand.
fn one_statement_pool() -> mmboundary::confidence::statements::StatementPool {
    let text = r#"
[[level]]
level = 1
name = "uncertain"
statements = ["but I doubt this."]
[[level]]
level = 2
name = "slightly uncertain"
statements = ["though it may be wrong."]
[[level]]
level = 3
name = "moderately confident"
statements = ["I am fairly sure of this."]
[[level]]
level = 4
name = "highly confident"
statements = ["and this seems right."]
[[level]]
level = 5
name = "fully confident"
statements = ["with no doubts at all."]
"#;
    mmboundary::confidence::statements::StatementPool::from_toml(text, "one_statement_pool").unwrap()
}

fn rce_parser() -> mmboundary::confidence::parser::Parser {
    use mmboundary::confidence::parser::{Layout, Parser, ParserParams};
    Parser::new(&one_statement_pool(), ParserParams { layout: Layout::AfterResponse, ..Default::default() })
}

/// RCE's warm-up target: the chain as written, then every sentence's statement (its level's pool
/// statement) numbered by sentence after the whole response; the same levels written inline for
/// MMBoundary's target.
#[test]
fn rce_map_writes_every_statement_after_the_chain() {
    use mmboundary::stages::map::{signals_target, MapParams, StatementFormat};
    let pool = one_statement_pool();
    let sentences: Vec<String> = ["There is a red circle.", "It is big", "So the answer is A."].map(String::from).to_vec();
    let levels = [5, 1, 3];
    let rce = MapParams { format: StatementFormat::AfterResponse, ..Default::default() };
    assert_eq!(
        signals_target(&pool, &rce, "q1#0", &sentences, &levels).unwrap(),
        "There is a red circle. It is big. So the answer is A.\nConfidence: [1] with no doubts at all. [2] but I doubt this. \
         [3] I am fairly sure of this."
    );
    assert_eq!(
        signals_target(&pool, &MapParams::default(), "q1#0", &sentences, &levels).unwrap(),
        "There is a red circle with no doubts at all. It is big but I doubt this. So the answer is A. I am fairly sure of this."
    );
    // One level per sentence, or a clear error.
    let e = signals_target(&pool, &rce, "q1#0", &sentences, &[5, 1]).unwrap_err().to_string();
    assert!(e.contains("q1#0") && e.contains('3') && e.contains('2'), "{e}");
}

/// The RCE parser reads the block back: entry k is sentence k's statement, whatever the order; a
/// sentence without an entry has none (the missing-confidence rule); an entry numbered beyond the chain,
/// a second entry for the same sentence and text before the first `[k]` are dropped; the end-of-text
/// marker closes the block.
#[test]
fn rce_parser_assigns_each_statement_to_its_sentence() {
    use mmboundary::confidence::parser::{render_after_response, ParsedPair};
    let p = rce_parser();
    let pair = |s: &str, c: Option<&str>| ParsedPair { sentence: s.into(), statement: c.map(String::from) };
    // Well formed: a round trip of the map's target.
    let pairs = vec![
        pair("There is a red circle.", Some("with no doubts at all.")),
        pair("It is big.", Some("but I doubt this.")),
        pair("So the answer is A.", Some("I am fairly sure of this.")),
    ];
    let text = render_after_response(&pairs);
    let l = p.parse_after_response(&text);
    assert_eq!(l.parsed.pairs, pairs);
    assert!(l.parsed.dropped_statements.is_empty());
    assert_eq!(l.sentence_spans, vec![(0, 22), (23, 33), (34, 53)]);
    let at = |s: &str| text.find(s).map(|i| (i, i + s.len()));
    assert_eq!(l.statement_spans, vec![at("with no doubts at all."), at("but I doubt this."), at("I am fairly sure of this.")]);
    assert_eq!(p.parse(&text), l.parsed, "parse() follows the layout");
    // Malformed: out of order, a duplicate, a number beyond the chain, text before [1], a marker after.
    let text = "There is a red circle. It is big. So the answer is A.\nconfidence: high [2] but I doubt this. \
                [1] with no doubts at all. [2] and this seems right. [7] I am fairly sure of this.</s> [3] x";
    let l = p.parse_after_response(text);
    assert_eq!(
        l.parsed.pairs,
        vec![
            pair("There is a red circle.", Some("with no doubts at all.")),
            pair("It is big.", Some("but I doubt this.")),
            pair("So the answer is A.", None),
        ]
    );
    assert_eq!(l.parsed.dropped_statements, ["high", "and this seems right.", "I am fairly sure of this."]);
    // No block: every sentence without statement (and an inline statement is not read in this layout).
    let l = p.parse_after_response("There is a red circle with no doubts at all. So the answer is A.");
    assert_eq!(l.parsed.pairs, vec![pair("There is a red circle with no doubts at all.", None), pair("So the answer is A.", None)]);
    // A label with nothing after it.
    let l = p.parse_after_response("It is big.\nConfidence:");
    assert_eq!((l.parsed.pairs, l.parsed.dropped_statements), (vec![pair("It is big.", None)], Vec::<String>::new()));
}

/// What eval and the PPO rollouts read of an RCE response (the chain judge with the RCE layout): each
/// sentence's statement from the block, mapped to its level's value (exact pool statements of levels 5
/// and 1: 1.0 and 0.0; a numeric entry by value), the statement's end where its reward goes, and a
/// sentence without an entry with no confidence.
#[test]
fn rce_response_is_judged_sentence_by_sentence() {
    use mmboundary::confidence::parser::{Layout, ParserParams};
    let pool_text = std::fs::read_to_string(pool_path()).unwrap();
    let pool = mmboundary::confidence::statements::StatementPool::from_toml(&pool_text, "pool").unwrap();
    let (sure, unsure) = (&pool.statements(5).unwrap()[0], &pool.statements(1).unwrap()[0]);
    let j = ChainJudge::load(
        &mmboundary::encoders::minilm::default_model_dir(),
        &pool_path(),
        ParserParams { layout: Layout::AfterResponse, ..Default::default() },
        Default::default(),
        &Default::default(),
    )
    .unwrap();
    let text = format!(
        "There is a red circle on the left. It is larger than the square. The square is blue. So the answer is A.\n\
         Confidence: [1] {sure} [2] {unsure} [4] 0.75"
    );
    let pairs = j.judge(&text, &["There is a red circle."]).unwrap();
    let got: Vec<(&str, Option<f64>)> = pairs.iter().map(|p| (p.pair.sentence.as_str(), p.expressed)).collect();
    assert_eq!(
        got,
        vec![
            ("There is a red circle on the left.", Some(1.0)),
            ("It is larger than the square.", Some(0.0)),
            ("The square is blue.", None),
            ("So the answer is A.", Some(0.75)),
        ]
    );
    let end_of = |s: &str| text.find(s).unwrap() + s.len();
    let ends: Vec<Option<usize>> = pairs.iter().map(|p| p.statement_end).collect();
    assert_eq!(ends, vec![Some(end_of(sure)), Some(end_of(unsure)), None, Some(text.len())]);
    assert_eq!(pairs[3].sentence_span, (text.find("So the").unwrap(), text.find("\n").unwrap()));
}

/// RCE end to end on the tiny pipeline: MMBoundary's warm-up data written after the response, SFT, PPO
/// (from SFT, MMBoundary's rewards) and eval of the PPO policy, both reading the RCE layout.
#[test]
fn rce_trains_sft_then_ppo_on_the_tiny_pipeline() {
    use mmboundary::confidence::parser::Layout;
    worker::worker();
    let (_dir, store, model) = common::tiny_llava_store();
    let rce = common::tiny::pipeline_with(&model, |p| {
        p.map.format = mmboundary::stages::map::StatementFormat::AfterResponse;
        p.ppo.parser.layout = Layout::AfterResponse;
        p.eval.parser.layout = Layout::AfterResponse;
        p.eval.variants = vec!["full".into()];
    });
    assert_eq!(rce.get("rollout_0").unwrap().params()["ppo"]["parser"]["layout"], "after_response");
    assert_eq!(rce.get("eval_chains").unwrap().params()["parser"]["layout"], "after_response");
    let s = rce.run(&store, &RunOptions { target: Some("eval".into()), ..Default::default() }).unwrap();
    for st in ["generate", "score", "bin", "map", "sft", "rollout_0", "update_1", "ppo", "eval"] {
        assert!(s.ran.iter().any(|r| r == st), "{st} did not run: {:?}", s.ran);
    }
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let table = |stage: &str, out: &str| {
        store.read_table(&ArtifactId::parse(&lock.stages[stage].outputs[out].id).unwrap()).unwrap().concat().unwrap()
    };
    // Every SFT target is its chain, then one statement per scored sentence after it, read back whole.
    let (data, levels) = (table("map", "sft_data"), table("bin", "levels"));
    let targets = data.column_by_name("target").unwrap().as_string::<i32>();
    let (lids, lsample) = (levels.column_by_name("item_id").unwrap().as_string::<i32>(), levels.column_by_name("sample").unwrap());
    let lsample = lsample.as_primitive::<arrow::datatypes::UInt32Type>();
    let (ids, samples) = (
        data.column_by_name("item_id").unwrap().as_string::<i32>(),
        data.column_by_name("sample").unwrap().as_primitive::<arrow::datatypes::UInt32Type>(),
    );
    let pool_text = std::fs::read_to_string(pool_path()).unwrap();
    let pool = mmboundary::confidence::statements::StatementPool::from_toml(&pool_text, "pool").unwrap();
    let parser = mmboundary::confidence::parser::Parser::new(
        &pool,
        mmboundary::confidence::parser::ParserParams { layout: Layout::AfterResponse, ..Default::default() },
    );
    assert!(data.num_rows() > 0);
    for r in 0..data.num_rows() {
        let t = targets.value(r);
        assert!(t.contains("\nConfidence: [1] "), "{t:?}");
        let n = (0..levels.num_rows()).filter(|&q| lids.value(q) == ids.value(r) && lsample.value(q) == samples.value(r)).count();
        let parsed = parser.parse(t);
        assert_eq!(parsed.pairs.len(), n, "{t:?}");
        assert!(parsed.pairs.iter().all(|p| p.statement.is_some()) && parsed.dropped_statements.is_empty(), "{t:?}");
    }
    let m = table("eval", "metrics");
    let variants = m.column_by_name("variant").unwrap().as_string::<i32>();
    assert!(m.num_rows() > 0 && variants.iter().flatten().all(|v| v == "full"));
}

/// `generate`'s chains and `bin`'s levels for Table 3: (item, split, sample, sentences) and
/// (item, sample, sentence index, level).
fn ice_sce_batches(
    chains: &[(&str, &str, u32, &[&str])],
    levels: &[(&str, u32, u32, u8)],
) -> (arrow::record_batch::RecordBatch, arrow::record_batch::RecordBatch) {
    use arrow::array::{ArrayRef, ListBuilder, StringArray, StringBuilder, UInt32Array, UInt8Array};
    use std::sync::Arc;
    let mut list = ListBuilder::new(StringBuilder::new());
    for c in chains {
        for s in c.3 {
            list.values().append_value(s);
        }
        list.append(true);
    }
    let c = arrow::record_batch::RecordBatch::try_from_iter([
        ("item_id", Arc::new(StringArray::from(chains.iter().map(|c| c.0).collect::<Vec<_>>())) as ArrayRef),
        ("split", Arc::new(StringArray::from(chains.iter().map(|c| c.1).collect::<Vec<_>>())) as ArrayRef),
        ("sample", Arc::new(UInt32Array::from(chains.iter().map(|c| c.2).collect::<Vec<_>>())) as ArrayRef),
        ("sentences", Arc::new(list.finish()) as ArrayRef),
    ])
    .unwrap();
    let l = arrow::record_batch::RecordBatch::try_from_iter([
        ("item_id", Arc::new(StringArray::from(levels.iter().map(|l| l.0).collect::<Vec<_>>())) as ArrayRef),
        ("sample", Arc::new(UInt32Array::from(levels.iter().map(|l| l.1).collect::<Vec<_>>())) as ArrayRef),
        ("sentence", Arc::new(UInt32Array::from(levels.iter().map(|l| l.2).collect::<Vec<_>>())) as ArrayRef),
        ("level", Arc::new(UInt8Array::from(levels.iter().map(|l| l.3).collect::<Vec<_>>())) as ArrayRef),
    ])
    .unwrap();
    (c, l)
}

/// Table 3 on hand-computed values. Item a (val): its response (sample 0) answers red with levels 2, 4
/// (C_ICE = the final sentence's (4 − 1)/4 = 0.75); its samples answer red, blue, red and nothing
/// (C_SCE = 2/4 = 0.5); gap 0.25. Item b (val): blue, level 5 (1.0), its samples blue, blue (1.0); gap 0.
/// Item c (test): red, levels given out of order (sentence 1: level 3, so 0.5), its sample blue (0);
/// gap 0.5. Item d has no sample and item e no scored response: neither is drawn. Val: mean 0.125,
/// variance ((0.125)² + (0.125)²)/2 = 0.015625, std 0.125, half under 0.1; test: 0.5, 0, 0, none under 0.1.
#[test]
fn table_3_on_hand_computed_values() {
    use mmboundary::stages::ice_sce::{ice_sce_rows, markdown, summarize, table, IceSceParams, IceSceSummary};
    let item = |id: &str, split: &str| {
        let mut it = mmboundary::data::Item::new(id, "test", split, "What color is the object?");
        it.choices = vec!["red".into(), "blue".into()];
        it
    };
    let items = vec![item("a", "val"), item("b", "val"), item("c", "test"), item("d", "test"), item("e", "val")];
    let red: &[&str] = &["There is a circle.", "So the answer is red."];
    let blue: &[&str] = &["So the answer is blue."];
    let none: &[&str] = &["Hmm."];
    let (chains, levels) = ice_sce_batches(
        &[
            ("a", "val", 0, red),
            ("a", "val", 1, red),
            ("a", "val", 2, blue),
            ("a", "val", 3, red),
            ("a", "val", 4, none),
            ("b", "val", 0, blue),
            ("b", "val", 1, blue),
            ("b", "val", 2, blue),
            ("c", "test", 0, red),
            ("c", "test", 1, blue),
            ("d", "test", 0, red),
            ("e", "val", 0, red),
            ("e", "val", 1, red),
        ],
        &[("a", 0, 0, 2), ("a", 0, 1, 4), ("a", 1, 0, 1), ("b", 0, 0, 5), ("c", 0, 1, 3), ("c", 0, 0, 1), ("d", 0, 0, 5)],
    );
    let p = IceSceParams::default();
    let rows = ice_sce_rows(&items, &chains, &levels, &p).unwrap();
    let got: Vec<(&str, &str, usize, f64, f64)> =
        rows.iter().map(|r| (r.item_id.as_str(), r.split.as_str(), r.samples, r.c_ice, r.c_sce)).collect();
    let mut want = vec![("c", "test", 1, 0.5, 0.0)];
    let mut val = vec![("a", "val", 4, 0.75, 0.5), ("b", "val", 2, 1.0, 1.0)];
    // Within a split the draw's order is the items' seeded order.
    val.sort_by_key(|r| mmboundary::engine::item_seed(0, r.0, 0));
    want.extend(val);
    assert_eq!(got, want);
    let s = summarize(&rows);
    let line = |split: &str, items, mean, var, std, below| IceSceSummary { split: split.into(), items, mean, var, std, below_0_1: below };
    assert_eq!(s, vec![line("test", 1, 0.5, 0.0, 0.0, 0.0), line("val", 2, 0.125, 0.015625, 0.125, 0.5)]);
    let md = markdown(&s, "1 or 2 or 4");
    assert!(
        md.contains("| val | 2 | 0.1250 | 0.0156 | 0.1250 | 50 % |") && md.contains("| test | 1 | 0.5000 | 0.0000 | 0.0000 | 0 % |"),
        "{md}"
    );
    assert!(table(&items, &chains, &levels, &p).unwrap().starts_with("Self-consistency samples per item: 1 or 2 or 4.\n"));
    // At most `items` per split: the first in the seeded order.
    let one = ice_sce_rows(&items, &chains, &levels, &IceSceParams { items: 1, ..p.clone() }).unwrap();
    let first_val = ["a", "b"].into_iter().min_by_key(|id| mmboundary::engine::item_seed(0, id, 0)).unwrap();
    let ids: Vec<&str> = one.iter().map(|r| r.item_id.as_str()).collect();
    assert_eq!(ids, ["c", first_val]);
    // One chain per item (generate.samples = 1): no self-consistency, a clear error.
    let (single, lv) = ice_sce_batches(&[("a", "val", 0, red)], &[("a", 0, 0, 2)]);
    let e = ice_sce_rows(&items, &single, &lv, &p).unwrap_err().to_string();
    assert!(e.contains("generate.samples"), "{e}");
    // A chain of an unknown item names its row.
    let (bad, lv) = ice_sce_batches(&[("zz", "val", 0, red)], &[]);
    let e = ice_sce_rows(&items, &bad, &lv, &p).unwrap_err().to_string();
    assert!(e.contains("chains row 0") && e.contains("zz"), "{e}");
}

/// Table 3 through the engine on the tiny pipeline: with `report.ice_sce` set and m = 2 sampled chains per
/// question, the report stage reads generate's chains and the items beside bin's levels, and both pages
/// carry the table the library computes from those artifacts, with its items.
#[test]
fn table_3_is_in_the_report_of_a_sampled_run() {
    use mmboundary::stages::ice_sce::{table, IceSceParams, HEADING};
    worker::worker();
    let (_dir, store, model) = common::tiny_llava_store();
    let run = common::tiny::pipeline_with(&model, |p| {
        common::tiny::sample_twice(p);
        p.eval.variants = vec!["vanilla".into()];
        p.report.ice_sce = Some(IceSceParams::default());
    });
    let s = run.run(&store, &RunOptions { target: Some("report".into()), ..Default::default() }).unwrap();
    assert!(s.ran.iter().any(|r| r == "report") && !s.ran.iter().any(|r| r == "sft"), "{:?}", s.ran);
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let read = |stage: &str, out: &str| {
        store.read_table(&ArtifactId::parse(&lock.stages[stage].outputs[out].id).unwrap()).unwrap().concat().unwrap()
    };
    let items = mmboundary::data::items_from_record_batch(&read("dataset", "items")).unwrap();
    let want = table(&items, &read("generate", "chains"), &read("bin", "levels"), &IceSceParams::default()).unwrap();
    assert!(want.contains("| train | "), "{want}");
    let rep = store.materialize(&ArtifactId::parse(&lock.stages["report"].outputs["report"].id).unwrap()).unwrap();
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(md.contains(&format!("## {HEADING}")) && md.ends_with(&want), "{md}");
    let html = std::fs::read_to_string(rep.join("report.html")).unwrap();
    assert!(html.contains(&format!("<h2>{HEADING}</h2>")) && html.contains("<td>train</td>"), "{html}");
}
