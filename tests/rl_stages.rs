//! The RL stages on tiny models, end to end through the engine: dataset → features → generate → score →
//! bin → map → sft → ppo → eval; and the reward model of `ppo` on a hand-made chain.
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, UInt32Type};
use mmboundary::confidence::level_value;
use mmboundary::confidence::levels::{FusionParams, Intervals, LevelModel};
use mmboundary::data::{Item, ReferenceChain};
use mmboundary::engine::{Pipeline, RunOptions};
use mmboundary::stages::eval::EvalParams;
use mmboundary::stages::ppo::{InternalLevels, InternalValue, PpoStageParams, RewardModel};
use mmboundary::store::{ArtifactId, ArtifactKind};

mod common;
#[path = "common/worker.rs"]
mod worker;
use common::tiny::{pipeline, pipeline_k, pool_path};
use common::{fixtures, tokens_of};

fn f64s(b: &arrow::record_batch::RecordBatch, col: &str) -> Vec<Option<f64>> {
    b.column_by_name(col).unwrap_or_else(|| panic!("no column {col}")).as_primitive::<Float64Type>().iter().collect()
}

#[test]
fn sft_ppo_eval_run_through_the_engine_and_rl_iterations_are_cached_one_by_one() {
    // A private copy of the worker: the target folder may be shared, and a concurrent build of another
    // checkout would replace the binary under a running test.
    worker::worker();
    let (_dir, store, model) = common::tiny_llava_store();
    let s = pipeline(&model, 1.0 / 3.0).run(&store, &RunOptions::default()).unwrap();
    eprintln!("first run: {:.1} s", s.seconds);
    let rl = ["rollout_0", "update_0", "rollout_1", "update_1", "ppo"];
    let expected: Vec<&str> = ["dataset", "features", "generate", "score", "bin", "map", "sft"]
        .into_iter()
        .chain(rl)
        .chain(["eval_chains", "eval", "report"])
        .collect();
    assert_eq!(s.ran, expected);
    // The report: a folder artifact with the table, the figures and the page.
    let rep = mmboundary::engine::LockFile::load(store.root()).unwrap().stages["report"].outputs["report"].id.clone();
    let dir = store.materialize(&mmboundary::store::ArtifactId::parse(&rep).unwrap()).unwrap();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("Table 1") && html.contains("<svg"), "report.html lacks its table or figures");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("## Does the model use its image?") && md.contains("## Do the internal signals carry information?"), "{md}");
    // The statements and signals by sentence role, read with eval's answer markers.
    assert!(md.contains("### By sentence role") && md.contains("| statement AUROC | AUROC, same-role pairs |"), "{md}");
    assert!(
        md.lines().any(|l| l.starts_with("| val | vanilla | ")
            && l.split('|').nth(3).is_some_and(|r| ["perception", "reasoning", "answer"].contains(&r.trim()))),
        "{md}"
    );
    // Penumbra scenes: the per-object probes of the features, one row per attribute.
    assert!(md.contains("### What the image tower sees (per-object linear probes of the features)"), "{md}");
    // … and whether the chains' perception sentences name what the scene holds, per policy.
    assert!(md.contains("### What the chains say they see (perception sentences against the scene)"), "{md}");
    assert!(md.contains("| split | variant | perception sentences | colour: own / other image |"), "{md}");
    for a in ["colour", "shape", "texture", "size"] {
        assert!(md.lines().any(|l| l.starts_with(&format!("| {a} | "))), "no probe row for {a}: {md}");
    }
    for v in ["sft", "full"] {
        assert!(md.contains(&format!("| {v} |")) || md.contains(&format!("| {v} (no statements: constant missing_confidence) |")), "{md}");
    }
    // The judge of I(z) and its threshold are stated.
    assert!(md.contains("judged by: minilm-cosine > 0.64."), "{md}");
    // The vanilla model writes no statements: its row is the constant it is.
    assert!(md.contains("| vanilla (no statements: constant missing_confidence) |"), "{md}");
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let table = |stage: &str, out: &str| {
        store.read_table(&ArtifactId::parse(&lock.stages[stage].outputs[out].id).unwrap()).unwrap().concat().unwrap()
    };

    // ppo log: one row per iteration, every statistic finite, reward parts in their ranges.
    let log = table("ppo", "log");
    assert_eq!(log.num_rows(), 2);
    for col in [
        "score_mean",
        "kl",
        "policy_entropy",
        "clip_fraction",
        "value_loss",
        "policy_loss",
        "approx_kl",
        "response_length",
        "r_ka",
        "r_ec",
        "r_cs",
        "reward",
    ] {
        assert!(f64s(&log, col).iter().all(|v| v.unwrap().is_finite()), "{col}");
    }
    assert!(f64s(&log, "clip_fraction").iter().all(|v| (0.0..=1.0).contains(&v.unwrap())));
    assert!(f64s(&log, "r_ka").iter().all(|v| (0.0..=1.0).contains(&v.unwrap())));
    for col in ["r_ec", "r_cs", "reward"] {
        assert!(f64s(&log, col).iter().all(|v| (-1.0..=1.0).contains(&v.unwrap())), "{col}");
    }
    // rollouts: iterations × questions × N = 2 × 2 × 3, aligned per-sentence lists, EV and IV on [0, 1].
    let ro = table("ppo", "rollouts");
    assert_eq!(ro.num_rows(), 12);
    let it = ro.column_by_name("iteration").unwrap().as_primitive::<UInt32Type>();
    assert_eq!((0..12).filter(|&r| it.value(r) == 1).count(), 6);
    let samples = ro.column_by_name("sample").unwrap().as_primitive::<UInt32Type>();
    assert!(samples.values().iter().all(|s| *s < 3));
    let sents = ro.column_by_name("sentences").unwrap().as_list::<i32>();
    let (ev, iv) = (ro.column_by_name("ev").unwrap().as_list::<i32>(), ro.column_by_name("iv").unwrap().as_list::<i32>());
    let corr = ro.column_by_name("correct").unwrap().as_list::<i32>();
    let reward = f64s(&ro, "reward");
    for r in 0..ro.num_rows() {
        let n = sents.value(r).len();
        assert_eq!(ev.value(r).len(), n);
        assert_eq!(iv.value(r).len(), n);
        assert_eq!(corr.value(r).len(), n);
        let iv_r = iv.value(r);
        assert!(iv_r.as_primitive::<Float64Type>().values().iter().all(|v| [0.0, 0.25, 0.5, 0.75, 1.0].contains(v)));
        let ev_r = ev.value(r);
        assert!(ev_r.as_primitive::<Float64Type>().iter().flatten().all(|v| (0.0..=1.0).contains(&v)));
        let rw = reward[r].unwrap();
        assert!(rw == -1.0 || (-2.0 / 3.0 - 1e-9..=1.0 + 1e-9).contains(&rw), "reward {rw}");
    }
    // The mean reward per iteration in the log is the mean over that iteration's rollouts.
    for i in 0..2u32 {
        let rows: Vec<f64> = (0..12).filter(|&r| it.value(r) == i).map(|r| reward[r].unwrap()).collect();
        let mean = rows.iter().sum::<f64>() / rows.len() as f64;
        assert!((mean - f64s(&log, "reward")[i as usize].unwrap()).abs() < 1e-9);
    }
    // checkpoint: adapters and value head, with the SFT set-up in its metadata.
    let ck = &lock.stages["ppo"].outputs["checkpoint"];
    let path = store.path_of(&ArtifactId::parse(&ck.id).unwrap(), ArtifactKind::Safetensors);
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md = meta.metadata().clone().unwrap();
    assert_eq!(md["format"], "mmboundary-ppo-v1");
    assert!(md["params"].contains("Lora"));
    let names: Vec<String> = meta.tensors().keys().cloned().collect();
    assert!(names.iter().any(|n| n.starts_with("param.v_head.summary")));
    assert!(names.iter().any(|n| n.contains("lora_A")));
    assert!(names.iter().all(|n| n.starts_with("param.")), "the final policy carries no trainer state: {names:?}");
    // Each update's checkpoint carries the trainer state the next iteration resumes from.
    let ck0 = &lock.stages["update_0"].outputs["checkpoint"];
    let bytes = std::fs::read(store.path_of(&ArtifactId::parse(&ck0.id).unwrap(), ArtifactKind::Safetensors)).unwrap();
    let (_, meta0) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert!(meta0.tensors().contains_key("ppo.step") && meta0.tensors().keys().any(|n| n.starts_with("adam.m.")));

    // eval: per-sentence rows of the three variants; metrics in range for every variant and split.
    let sent = table("eval_chains", "sentences");
    let variants = sent.column_by_name("variant").unwrap().as_string::<i32>();
    assert!(variants.iter().flatten().all(|v| ["vanilla", "sft", "full"].contains(&v)));
    let m = table("eval", "metrics");
    let (mv, ms, ml) = (
        m.column_by_name("variant").unwrap().as_string::<i32>(),
        m.column_by_name("split").unwrap().as_string::<i32>(),
        m.column_by_name("level").unwrap().as_string::<i32>(),
    );
    let mut cells = std::collections::BTreeSet::new();
    for r in 0..m.num_rows() {
        cells.insert((mv.value(r).to_string(), ms.value(r).to_string(), ml.value(r).to_string()));
    }
    for v in ["vanilla", "sft", "full"] {
        for s in ["val", "test", "ood"] {
            for l in ["all", "perception", "reasoning"] {
                assert!(cells.contains(&(v.into(), s.into(), l.into())), "no metrics row for {v}/{s}/{l}");
            }
        }
    }
    for col in ["ece", "mece", "accuracy", "chain_f1", "auroc"] {
        assert!(f64s(&m, col).iter().flatten().all(|v| (0.0..=1.0).contains(v)), "{col} out of [0, 1]");
    }
    let acc = f64s(&m, "accuracy");
    assert!((0..m.num_rows()).all(|r| (ml.value(r) == "all") == acc[r].is_some()), "accuracy is an answer-level metric");
    // image_swap: one row per evaluated chain; its own-image accuracy (scored apart from `evaluate`) is
    // eval's accuracy, and every item was also answered with another item's image.
    let sw = table("eval_chains", "image_swap");
    let (wv, wsp, wid, wfrom) = (
        sw.column_by_name("variant").unwrap().as_string::<i32>(),
        sw.column_by_name("split").unwrap().as_string::<i32>(),
        sw.column_by_name("item_id").unwrap().as_string::<i32>(),
        sw.column_by_name("swapped_from").unwrap().as_string::<i32>(),
    );
    let own = f64s(&sw, "own_correct");
    let mut by: std::collections::BTreeMap<(String, String), (f64, usize)> = Default::default();
    let mut per_split: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for r in 0..sw.num_rows() {
        *per_split.entry((wv.value(r).to_string(), wsp.value(r).to_string())).or_default() += 1;
    }
    for r in 0..sw.num_rows() {
        // A split of one item has nothing to swap with and keeps its image (stages::image_swap::partners).
        let alone = per_split[&(wv.value(r).to_string(), wsp.value(r).to_string())] == 1;
        assert_eq!(wid.value(r) == wfrom.value(r), alone, "row {r}: swapped_from {}", wfrom.value(r));
        let e = by.entry((wv.value(r).to_string(), wsp.value(r).to_string())).or_default();
        e.0 += own[r].unwrap();
        e.1 += 1;
    }
    for r in (0..m.num_rows()).filter(|&r| ml.value(r) == "all") {
        let (sum, n) = by[&(mv.value(r).to_string(), ms.value(r).to_string())];
        assert!((sum / n as f64 - acc[r].unwrap()).abs() < 1e-12, "{}/{}: image_swap own accuracy vs eval", mv.value(r), ms.value(r));
    }

    // Changing one reward weight reruns only the RL stages, eval and the report drawn from them.
    assert!(pipeline(&model, 1.0 / 3.0).run(&store, &RunOptions::default()).unwrap().ran.is_empty());
    // (Checked on the status, which is what a run acts on, to keep the test short.)
    let stale =
        |p: Pipeline| -> Vec<String> { p.status(&store, &[]).unwrap().into_iter().filter(|s| !s.is_fresh()).map(|s| s.stage).collect() };
    let tail: Vec<&str> = rl.iter().copied().chain(["eval_chains", "eval", "report"]).collect();
    assert_eq!(stale(pipeline(&model, 0.5)), tail);
    // One more iteration keeps the first two: only iteration 2 and what gathers it are stale.
    assert_eq!(stale(pipeline_k(&model, 1.0 / 3.0, 3)), vec!["rollout_2", "update_2", "ppo", "eval_chains", "eval", "report"]);
}

fn item() -> Item {
    let mut it = Item::new("x1", "test", "train", "What shape is the red object?");
    it.choices = vec!["circle".into(), "square".into()];
    it.correct_choice = Some(0);
    it.chain = ReferenceChain {
        perception: vec!["There is a red circle in the image.".into()],
        reasoning: vec!["So, the answer is circle.".into()],
    };
    it
}

#[test]
fn rewards_land_on_statement_ends_and_sum_to_r() {
    let rows: Vec<[f64; 4]> =
        (0..20).map(|i| [1.0 + i as f64 * 0.1, 0.5 + (i % 7) as f64 * 0.2, (i % 5) as f64 * 0.1, 0.2 + (i % 3) as f64 * 0.05]).collect();
    let levels = LevelModel::fit(&rows, &FusionParams::default()).unwrap();
    let mut params = PpoStageParams {
        minilm: mmboundary::encoders::minilm::default_model_dir(),
        clip: Some(fixtures().join("encoders/clip_tiny")),
        pool: pool_path(),
        ..Default::default()
    };
    let rm = RewardModel::load(&params, params.clip.as_deref().unwrap(), levels.clone(), &Default::default()).unwrap();
    let image = rm.clip.text.encode(&["a red circle"]).unwrap().embeddings.data;
    let text =
        "There is a red circle in the image and I am completely certain of this. So, the answer is circle. I am far from sure of this.";
    let r = tokens_of(text);
    let s = rm.score(&item(), &image, &r).unwrap();
    assert_eq!(s.sentences.len(), 2, "{s:?}");
    assert_eq!(s.statements[0].as_deref(), Some("and I am completely certain of this."));
    assert_eq!(s.expressed, vec![Some(1.0), Some(0.0)]);
    // Both sentences restate a reference sentence almost verbatim: correct under MiniLM cosine 0.64.
    assert_eq!(s.correct, vec![true, true]);
    // R = (R_KA + R_EC + R_CS) / 3 with the paper's eq. 10-12, from the reported parts.
    let ec = ((1.0 - 2.0 * (1.0f64 - 1.0).powi(2)) + (1.0 - 2.0 * (1.0f64 - 0.0).powi(2))) / 2.0;
    assert!((s.ka - 1.0).abs() < 1e-12 && (s.ec - ec).abs() < 1e-12);
    let cs: f64 = s.internal.iter().zip(&s.expressed).map(|(iv, ev)| 1.0 - 2.0 * (iv - ev.unwrap()).powi(2)).sum::<f64>() / 2.0;
    assert!((s.cs - cs).abs() < 1e-12);
    assert!((s.total - (s.ka + s.ec + s.cs) / 3.0).abs() < 1e-12);
    // One share per sentence, on the token ending its statement ("this." twice), summing to R.
    let this = |n: usize| r.tokens.iter().enumerate().filter(|(_, t)| t.text == " this.").nth(n).unwrap().0;
    assert_eq!(s.token_rewards.iter().map(|x| x.0).collect::<Vec<_>>(), vec![this(0), this(1)]);
    assert!((s.token_rewards.iter().map(|x| x.1).sum::<f64>() - s.total).abs() < 1e-12);

    // The "w/o R_EC" ablation drops its term and nothing else.
    params.rewards.enable_ec = false;
    let rm = RewardModel::load(&params, params.clip.as_deref().unwrap(), levels.clone(), &Default::default()).unwrap();
    let s2 = rm.score(&item(), &image, &r).unwrap();
    assert!((s2.total - (s.ka + s.cs) / 3.0).abs() < 1e-12);
    assert!((s2.token_rewards.iter().map(|x| x.1).sum::<f64>() - s2.total).abs() < 1e-12);
    // A rollout with no sentence gets the empty-response reward on its last token.
    let e = rm.score(&item(), &image, &tokens_of("")).unwrap();
    assert_eq!(e.total, -1.0);
    // With `unanswered_response_reward`, a rollout whose answer cannot be read gets it, whole, on its last
    // token (its parts stay as computed); an answered rollout keeps R.
    let unanswered = tokens_of("There is a red circle in the image and I am completely certain of this.");
    let plain = rm.score(&item(), &image, &unanswered).unwrap();
    assert!(plain.total > 0.0, "without the option the unanswered chain scores R: {plain:?}");
    params.unanswered_response_reward = Some(-0.5);
    let rm_u = RewardModel::load(&params, params.clip.as_deref().unwrap(), levels.clone(), &Default::default()).unwrap();
    let u = rm_u.score(&item(), &image, &unanswered).unwrap();
    assert_eq!(u.total, -0.5);
    assert_eq!(u.token_rewards, vec![(unanswered.tokens.len() - 1, -0.5)]);
    assert_eq!((u.ka, u.cs), (plain.ka, plain.cs));
    let answered = rm_u.score(&item(), &image, &r).unwrap();
    assert!((answered.total - s2.total).abs() < 1e-12);
    params.unanswered_response_reward = None;

    // Scoring rollouts together (one encoder call for all) gives what scoring each alone gives.
    let r2 = tokens_of("So, the answer is circle. I am far from sure of this. There is a red circle.");
    let (empty, it) = (tokens_of(""), item());
    let together = rm.score_batch(&[(&it, &image, &r), (&it, &image, &empty), (&it, &image, &r2)]).unwrap();
    let alone = [&r, &empty, &r2].map(|x| rm.score(&it, &image, x).unwrap());
    assert_eq!(together.len(), 3);
    for (a, b) in together.iter().zip(&alone) {
        assert_eq!(a.levels, b.levels);
        assert_eq!(a.correct, b.correct);
        assert!((a.total - b.total).abs() < 1e-9, "{} vs {}", a.total, b.total);
        assert_eq!(a.token_rewards.len(), b.token_rewards.len());
    }
    // A rollout whose token ends do not match its tokens fails the batch, naming its item.
    let mut broken = tokens_of("There is a red circle.");
    broken.token_ends.pop();
    let mut other = item();
    other.id = "broken-item".into();
    let err = rm.score_batch(&[(&it, &image, &r), (&other, &image, &broken)]).unwrap_err().to_string();
    assert!(err.contains("broken-item") && err.contains("token ends"), "{err}");
}

/// A quintile level model fitted on 20 made-up warm-up rows, and the reward model's params on the tiny encoders.
fn quintile_reward_setup() -> (LevelModel, PpoStageParams) {
    let warm_up: Vec<[f64; 4]> = (0..20).map(|i| [3.0 + i as f64 * 0.1, 2.0 + (i % 7) as f64 * 0.2, 0.5, 0.9]).collect();
    let quintiles = FusionParams { intervals: Intervals::Quantile, ..Default::default() };
    let params = PpoStageParams {
        minilm: mmboundary::encoders::minilm::default_model_dir(),
        clip: Some(fixtures().join("encoders/clip_tiny")),
        pool: pool_path(),
        ..Default::default()
    };
    (LevelModel::fit(&warm_up, &quintiles).unwrap(), params)
}

/// `internal_levels = "rollouts"`: the levels are refitted on the batch's own sentences. With quintile cuts, ten
/// sentences of distinct signals land two in each level (the cuts sit between the 2nd and 3rd, 4th and 5th, …
/// smallest U_Final), and IV is each level's value; the warm-up model's cuts, fitted on other rows, do not.
#[test]
fn rollout_levels_are_refitted_on_the_iteration_when_asked() {
    let (levels, mut params) = quintile_reward_setup();
    let texts = [
        "There is a red circle in the image. I am far from sure of this. So, the answer is circle.",
        "There is a small blue square at the top left of it. So, the answer is square and I am certain.",
        "A red circle. The answer is circle.",
        "There are two objects in the image and both are round. So, the answer is circle, I think.",
        "The circle is red and large and sits at the bottom right. So, the answer is circle.",
    ];
    let rollouts: Vec<_> = texts.iter().map(|t| tokens_of(t)).collect();
    let it = item();
    let counts = |rm: &RewardModel| {
        let image = rm.clip.text.encode(&["a red circle"]).unwrap().embeddings.data;
        let batch: Vec<_> = rollouts.iter().map(|r| (&it, image.as_slice(), r)).collect();
        let mut counts = [0usize; 5];
        for s in rm.score_batch(&batch).unwrap() {
            for (&l, &iv) in s.levels.iter().zip(&s.internal) {
                counts[l as usize - 1] += 1;
                assert_eq!(iv, level_value(l));
            }
        }
        counts
    };
    params.internal_levels = InternalLevels::Rollouts;
    let rm = RewardModel::load(&params, params.clip.as_deref().unwrap(), levels.clone(), &Default::default()).unwrap();
    assert_eq!(counts(&rm), [2; 5]);
    params.internal_levels = InternalLevels::WarmUp;
    let rm = RewardModel::load(&params, params.clip.as_deref().unwrap(), levels, &Default::default()).unwrap();
    let warm = counts(&rm);
    assert_eq!(warm.iter().sum::<usize>(), 10);
    assert_ne!(warm, [2; 5]);
}

/// `internal_value = "level_accuracy"`: IV of a sentence is the smoothed share of right sentences at its level
/// over the whole batch, (right + 1) / (n + 2), counted here from the scores' own levels and I(z); and R_CS is
/// the mean of 1 − 2 (IV − EV)² over the sentences with a statement, on those IVs. With
/// `monotone_level_accuracy`, the levels stay and each IV is those shares pooled in order.
#[test]
fn level_accuracy_sets_each_sentences_internal_value_from_the_batch() {
    let (levels, mut params) = quintile_reward_setup();
    params.internal_levels = InternalLevels::Rollouts;
    params.internal_value = InternalValue::LevelAccuracy;
    params.rewards.missing_statement = mmboundary::confidence::rewards::MissingStatement::Skip;
    let texts = [
        "There is a red circle in the image. I am far from sure of this. So, the answer is circle.",
        "There is a small blue square at the top left of it. So, the answer is square and I am certain.",
        "A red circle. I am quite sure. The answer is circle.",
        "There are two objects in the image and both are round. So, the answer is circle, I think.",
        "The circle is red and large and sits at the bottom right. So, the answer is circle.",
    ];
    let rollouts: Vec<_> = texts.iter().map(|t| tokens_of(t)).collect();
    let it = item();
    let rm = RewardModel::load(&params, params.clip.as_deref().unwrap(), levels.clone(), &Default::default()).unwrap();
    let image = rm.clip.text.encode(&["a red circle"]).unwrap().embeddings.data;
    let batch: Vec<_> = rollouts.iter().map(|r| (&it, image.as_slice(), r)).collect();
    let scores = rm.score_batch(&batch).unwrap();
    let (mut right, mut n) = ([0.0; 5], [0.0; 5]);
    for s in &scores {
        for (&l, &c) in s.levels.iter().zip(&s.correct) {
            n[l as usize - 1] += 1.0;
            right[l as usize - 1] += if c { 1.0 } else { 0.0 };
        }
    }
    assert_eq!(n, [2.0; 5], "quintiles of ten sentences");
    assert!(right.iter().sum::<f64>() > 0.0 && right.iter().sum::<f64>() < 10.0, "the batch needs right and wrong sentences: {right:?}");
    let mut with_statement = 0;
    for s in &scores {
        let mut cs = Vec::new();
        for (t, &l) in s.levels.iter().enumerate() {
            let iv = (right[l as usize - 1] + 1.0) / (n[l as usize - 1] + 2.0);
            assert!((s.internal[t] - iv).abs() < 1e-12, "IV {} against {iv} at level {l}", s.internal[t]);
            if let Some(ev) = s.expressed[t] {
                cs.push(1.0 - 2.0 * (s.internal[t] - ev).powi(2));
            }
        }
        with_statement += cs.len();
        if !cs.is_empty() {
            let want = cs.iter().sum::<f64>() / cs.len() as f64;
            assert!((s.cs - want).abs() < 1e-12, "R_CS {} against {want}", s.cs);
        }
    }
    assert!(with_statement >= 2, "the texts carry statements: {with_statement}");
    // `monotone_level_accuracy` on the same batch: the same levels, each IV the pooled share of these counts.
    params.internal_value = InternalValue::MonotoneLevelAccuracy;
    let rm = RewardModel::load(&params, params.clip.as_deref().unwrap(), levels, &Default::default()).unwrap();
    let monotone = rm.score_batch(&batch).unwrap();
    let judged = || scores.iter().map(|s| (s.levels.as_slice(), s.correct.as_slice()));
    let want = mmboundary::confidence::rewards::monotone_level_accuracy(judged()).unwrap();
    for (s, m) in scores.iter().zip(&monotone) {
        assert_eq!(s.levels, m.levels);
        for (&l, &iv) in m.levels.iter().zip(&m.internal) {
            assert!((iv - want[l as usize - 1]).abs() < 1e-12, "IV {iv} against {} at level {l}", want[l as usize - 1]);
        }
    }
    // This batch has a level out of order (level 2's share above level 3's), so pooling shows.
    let shares = mmboundary::confidence::rewards::level_accuracy(judged()).unwrap();
    assert_ne!(want, shares);
    assert!(want.windows(2).all(|w| w[0] <= w[1]), "{want:?}");
}

#[test]
fn eval_metrics_match_hand_computed_values() {
    use mmboundary::stages::chain_judge::ChainJudge;
    use mmboundary::stages::eval::{answer_correct, evaluate, EvalChain};
    let params = EvalParams { minilm: mmboundary::encoders::minilm::default_model_dir(), pool: pool_path(), ..Default::default() };
    let judge =
        ChainJudge::load(&params.minilm, &params.pool, params.parser.clone(), params.backward.clone(), &Default::default()).unwrap();
    let mut a = item();
    a.id = "a".into();
    a.split = "val".into();
    let mut b = a.clone();
    b.id = "b".into();
    let chains = vec![
        // Two correct sentences, stated fully confident then uncertain; the answer is right.
        EvalChain {
            variant: "sft".into(),
            item_id: "a".into(),
            text: "There is a red circle in the image and I am completely certain of this. So, the answer is circle. I am far from sure of this.".into(),
        },
        // One wrong sentence stated fully confident; no answer.
        EvalChain { variant: "sft".into(), item_id: "b".into(), text: "Bananas grow on tall trees and I am completely certain of this.".into() },
    ];
    let answer = |it: &Item, text: &str| {
        let s: Vec<String> = judge.parser.parse(text).pairs.into_iter().map(|p| p.sentence).collect();
        answer_correct(it, &s.iter().map(String::as_str).collect::<Vec<_>>(), &params.metrics)
    };
    assert_eq!(answer(&a, &chains[0].text), 1.0);
    assert_eq!(answer(&b, &chains[1].text), 0.0);
    let (rows, m) = evaluate(&judge, &[a, b], &chains, &params).unwrap();
    assert_eq!(rows.num_rows(), 3);
    let correct: Vec<bool> = rows.column_by_name("correct").unwrap().as_boolean().iter().flatten().collect();
    assert_eq!(correct, vec![true, true, false]);
    assert_eq!(f64s(&rows, "confidence"), vec![Some(1.0), Some(0.0), Some(1.0)]);
    let level = m.column_by_name("level").unwrap().as_string::<i32>();
    let all = (0..m.num_rows()).find(|&r| level.value(r) == "all").unwrap();
    let get = |c: &str| f64s(&m, c)[all].unwrap();
    // MECE = mean over chains of mean |I − conf| = (0.5 + 1) / 2.
    assert!((get("mece") - 0.75).abs() < 1e-12);
    // Answer confidence = the last sentence's: (0, right) and (1, wrong): ECE over 20 bins = 1, AUROC 0.
    assert!((get("ece") - 1.0).abs() < 1e-12);
    assert!(get("auroc").abs() < 1e-12);
    assert!((get("accuracy") - 0.5).abs() < 1e-12);
    // Chain F1: P = 2/3 (2 of 3 sentences match), R = 2/4 (2 of 4 reference sentences covered).
    assert!((get("chain_f1") - 4.0 / 7.0).abs() < 1e-12);
}

/// Answers are read from the chain without its statements and scored as each benchmark does; the eval
/// stage's accuracy and MECE equal hand-computed values on chains with statements attached.
#[test]
fn eval_scores_answers_as_the_benchmarks_do_with_statements_stripped() {
    use mmboundary::metrics::accuracy::AokvqaSetting;
    use mmboundary::stages::chain_judge::ChainJudge;
    use mmboundary::stages::eval::{answer_correct, evaluate, EvalChain};
    let mut params = EvalParams { minilm: mmboundary::encoders::minilm::default_model_dir(), pool: pool_path(), ..Default::default() };
    let judge =
        ChainJudge::load(&params.minilm, &params.pool, params.parser.clone(), params.backward.clone(), &Default::default()).unwrap();
    let chain = |p: &str, r: &str| ReferenceChain { perception: vec![p.into()], reasoning: vec![r.into()] };
    let mut a = Item::new("a", "aokvqa", "val", "How is the soup served?");
    a.choices = vec!["cold".into(), "hot".into()];
    a.correct_choice = Some(1);
    a.direct_answers = ["hot", "hot", "warm", "warm", "warm", "warm", "warm", "warm", "warm", "warm"].map(String::from).to_vec();
    a.chain = chain("The soup is steaming in the bowl.", "So, the answer is hot.");
    let mut b = Item::new("b", "scienceqa", "val", "Which is a metal?");
    b.choices = vec!["iron".into(), "wood".into()];
    b.correct_choice = Some(0);
    b.chain = chain("Iron is a metal.", "So, the answer is iron.");
    let mut c = Item::new("c", "culturalvqa", "val", "What is this dish?");
    c.answer = Some("dumplings".into());
    c.chain = chain("The dish is steamed.", "So, the answer is dumplings.");
    let chains = vec![
        EvalChain {
            variant: "full".into(),
            item_id: "a".into(),
            text: "The soup is steaming in the bowl and I am completely certain of this. So, the answer is hot and I am completely certain of this.".into(),
        },
        EvalChain { variant: "full".into(), item_id: "b".into(), text: "Iron is a metal. So, the answer is iron. I am far from sure of this.".into() },
        EvalChain {
            variant: "full".into(),
            item_id: "c".into(),
            text: "Bananas grow on tall trees and I am completely certain of this. So, the answer is dumplings but I may well be wrong here.".into(),
        },
    ];
    let items = [a.clone(), b, c];
    // The statement glued to the answer is not part of it: A-OKVQA's direct-answer score of "hot" is
    // min(2 / 3, 1) (the raw text's "hot and I am completely certain of this" would score 0).
    params.metrics.accuracy.aokvqa = AokvqaSetting::DirectAnswer;
    assert!((answer_correct(&a, &["So, the answer is hot"], &params.metrics) - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(answer_correct(&a, &["So, the answer is hot and I am completely certain of this."], &params.metrics), 0.0);
    let (rows, m) = evaluate(&judge, &items, &chains, &params).unwrap();
    let sentences: Vec<&str> = rows.column_by_name("sentence").unwrap().as_string::<i32>().iter().flatten().collect();
    assert_eq!(
        sentences,
        vec![
            "The soup is steaming in the bowl",
            "So, the answer is hot",
            "Iron is a metal.",
            "So, the answer is iron.",
            "Bananas grow on tall trees",
            "So, the answer is dumplings"
        ]
    );
    let correct: Vec<bool> = rows.column_by_name("correct").unwrap().as_boolean().iter().flatten().collect();
    assert_eq!(correct, vec![true, true, true, true, false, true]);
    assert_eq!(f64s(&rows, "confidence"), vec![Some(1.0), Some(1.0), None, Some(0.0), Some(1.0), Some(0.0)]);
    let level = m.column_by_name("level").unwrap().as_string::<i32>();
    let all = (0..m.num_rows()).find(|&r| level.value(r) == "all").unwrap();
    let get = |m: &arrow::record_batch::RecordBatch, col: &str| f64s(m, col)[all].unwrap();
    // Accuracy: A-OKVQA direct answer 2/3, ScienceQA choice 1, CulturalVQA contains 1.
    assert!((get(&m, "accuracy") - (2.0 / 3.0 + 1.0 + 1.0) / 3.0).abs() < 1e-12, "{}", get(&m, "accuracy"));
    // MECE: a = (0 + 0) / 2; b = (|1 − 0.5| + |1 − 0|) / 2 (no statement: missing_confidence 0.5);
    // c = (|0 − 1| + |1 − 0|) / 2.
    assert!((get(&m, "mece") - (0.0 + 0.75 + 1.0) / 3.0).abs() < 1e-12, "{}", get(&m, "mece"));
    // Multiple choice: the chosen option "hot" is right.
    params.metrics.accuracy.aokvqa = AokvqaSetting::MultipleChoice;
    let (_, m) = evaluate(&judge, &items, &chains, &params).unwrap();
    assert!((get(&m, "accuracy") - 1.0).abs() < 1e-12);
}
