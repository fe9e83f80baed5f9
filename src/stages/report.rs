//! `report`: what a person reads after a run — the Table-1-style table, perception vs reasoning, reliability
//! diagrams, stated-confidence histograms and example chains with each statement colored by whether its
//! sentence was right; Markdown plus one self-contained HTML page, stored as a folder artifact.
use super::judges::JudgeParams;
use crate::data::Item;
use crate::engine::{InputSpec, Stage, StageContext};
use crate::metrics::bootstrap::BootstrapParams;
use crate::metrics::calibration::{AnswerConfidence, EceParams};
use crate::report::evidence;
use crate::report::intervals::{cell_intervals, paired_differences, CellRule, ItemScores, Metric};
use crate::report::page::{
    brier_markdown, differences_markdown, escape, examples_html, html_page, levels_markdown, md_table_html, mece_anatomy_markdown,
    ordered_splits, table1_ci_markdown, ExampleSentence, MetricsRow,
};
use crate::report::plots::{confidence_histogram_svg, reliability_bins, reliability_svg};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, UInt32Type, UInt64Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportParams {
    /// The split of the reliability diagrams and the perception/reasoning table.
    pub split: String,
    /// Equal-width bins of the reliability diagrams, binned as ECE bins (`metrics.ece.bins` of `eval`
    /// defaults to 20, as here).
    pub bins: usize,
    /// Example chains shown (from the `full` variant).
    pub examples: usize,
    /// The 95 % intervals of Table 1 and of the full − SFT differences.
    pub bootstrap: BootstrapParams,
    /// The paper's Table 3 (|C_ICE − C_SCE|, [`super::ice_sce`]) from `generate`'s chains and `bin`'s
    /// levels, which needs `generate.samples` ≥ 2. Unset (default): no Table 3, and left out of the params
    /// (and the key), so a run without it keeps its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ice_sce: Option<super::ice_sce::IceSceParams>,
}

impl Default for ReportParams {
    fn default() -> Self {
        Self {
            split: "val".into(),
            bins: crate::metrics::calibration::EceParams::default().bins,
            examples: 6,
            bootstrap: BootstrapParams::default(),
            ice_sce: None,
        }
    }
}

/// Why the report shows the Brier score next to MECE.
const BRIER_NOTE: &str = "Mean over responses of the mean over sentences of (I(z) − Conf(c))², MECE's averaging with \
the squared error. Unlike MECE's absolute error it is a proper score: lowest for calibrated confidence, which R_EC \
and R_CS reward; MECE is lowest for confident statements whenever most sentences are right.";

/// The rows of an eval `metrics` artifact.
pub fn metrics_rows(m: &RecordBatch) -> anyhow::Result<Vec<MetricsRow>> {
    let col = |n: &str| m.column_by_name(n).cloned().ok_or_else(|| anyhow::anyhow!("eval metrics have no column `{n}`"));
    let s = |n: &str| -> anyhow::Result<Vec<String>> {
        let c = col(n)?;
        let c = c.as_string_opt::<i32>().ok_or_else(|| anyhow::anyhow!("eval metrics column `{n}` is not a string column"))?;
        Ok(c.iter().map(|v| v.unwrap_or_default().to_string()).collect())
    };
    let u = |n: &str| -> anyhow::Result<Vec<u64>> {
        let c = col(n)?;
        let c = c.as_primitive_opt::<UInt64Type>().ok_or_else(|| anyhow::anyhow!("eval metrics column `{n}` is not UInt64"))?;
        Ok(c.iter().map(|v| v.unwrap_or_default()).collect())
    };
    let f = |n: &str| -> anyhow::Result<Vec<Option<f64>>> {
        let c = col(n)?;
        let c = c.as_primitive_opt::<Float64Type>().ok_or_else(|| anyhow::anyhow!("eval metrics column `{n}` is not Float64"))?;
        Ok(c.iter().collect())
    };
    let (variant, split, level, responses, sentences) = (s("variant")?, s("split")?, s("level")?, u("responses")?, u("sentences")?);
    let (ece, mece, brier, acc, f1, auroc) = (f("ece")?, f("mece")?, f("brier")?, f("accuracy")?, f("chain_f1")?, f("auroc")?);
    Ok((0..m.num_rows())
        .map(|i| MetricsRow {
            variant: variant[i].clone(),
            split: split[i].clone(),
            level: level[i].clone(),
            responses: responses[i],
            sentences: sentences[i],
            ece: ece[i],
            mece: mece[i],
            brier: brier[i],
            accuracy: acc[i],
            chain_f1: f1[i],
            auroc: auroc[i],
        })
        .collect())
}

/// How to read the MECE anatomy table.
pub const ANATOMY_NOTE: &str = "Sentences with a statement, their share judged right, and the mean stated confidence; then \
MECE and the Brier score as stated, and as they would be if every statement said \"fully confident\". Where most \
sentences are right and the statements cannot tell right from wrong (AUROC near 0.5), MECE falls as confidence \
rises toward 1.0 while the Brier score is lowest at the share of right sentences: a policy trained on R_EC and R_CS \
moves toward the latter.";

/// Labels of the variants none of whose sentences carries a statement, from eval's `sentences` table:
/// their metrics give every sentence eval's `missing_confidence` (0.5 by default), i.e. they are a
/// constant predictor, and the label says so ("vanilla (no statements: constant missing_confidence)").
pub fn constant_labels(s: &RecordBatch) -> anyhow::Result<BTreeMap<String, String>> {
    let col = |n: &str| s.column_by_name(n).cloned().ok_or_else(|| anyhow::anyhow!("eval sentences have no column `{n}`"));
    let (variant, statement) = (col("variant")?, col("statement")?);
    let (variant, statement) = (variant.as_string::<i32>(), statement.as_string::<i32>());
    let mut any_statement: BTreeMap<&str, bool> = BTreeMap::new();
    for i in 0..s.num_rows() {
        *any_statement.entry(variant.value(i)).or_default() |= statement.is_valid(i);
    }
    Ok(any_statement
        .into_iter()
        .filter(|(_, any)| !any)
        .map(|(v, _)| (v.to_string(), format!("{v} (no statements: constant missing_confidence)")))
        .collect())
}

/// Each variant's responses on `split`, as eval's `sentences` table holds them: item → the (judged right?,
/// stated confidence) of its sentences that carry a statement (the input of "What MECE rewards").
pub fn stated_responses(s: &RecordBatch, split: &str) -> anyhow::Result<BTreeMap<String, BTreeMap<String, Vec<(bool, f64)>>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<(bool, f64)>>> = BTreeMap::new();
    for r in crate::report::evidence::EvalSentences::new(s)?.rows().filter(|r| r.split == split) {
        if let Some(conf) = r.confidence {
            out.entry(r.variant.to_string()).or_default().entry(r.item_id.to_string()).or_default().push((r.correct, conf));
        }
    }
    Ok(out)
}

pub struct ReportStage {
    pub params: ReportParams,
}

const VARIANT_ORDER: [&str; 3] = ["vanilla", "sft", "full"];
pub const STATEMENTS_HEADING: &str = "Do the statements tell right from wrong?";
const ROLES_HEADING: &str = "By sentence role";
const GROUNDING_HEADING: &str = "What the chains say they see (perception sentences against the scene)";
const VISION_HEADING: &str = "What the image tower sees (per-object linear probes of the features)";

impl Stage for ReportStage {
    fn name(&self) -> &str {
        "report"
    }
    /// 4: a variant without statements is labeled as the constant it is; reliability bins as ECE.
    /// 5: HTML tables, bootstrap intervals, full − SFT paired differences, named histogram legend.
    /// 6: the report names the dataset, the model and the judge ([`about`]); the image-swap and
    /// signal-AUROC tables.
    /// 7: the demo model is named by the decoder demo_mllm trained ([`super::demo_mllm::describe`]).
    /// 8: what the image tower sees (per-object linear probes of the features, [`crate::report::vision`]).
    /// 9: the statements' sentence-level AUROC per split and variant ([`evidence::statement_aurocs`]).
    /// 10: the header says where the run's design leaves the paper's ([`design`]).
    /// 11: … and R_CS's IV when it is not the level's value.
    /// 12: … and R_CS's levels when they are refitted on the rollouts.
    /// 13: sentences by role (perception, reasoning, the answer): the statements' and the signals' AUROCs
    /// within each role, and the statement AUROC over same-role pairs ([`crate::report::roles`]).
    /// 14: whether the perception sentences name what the image holds ([`crate::report::grounding`]).
    fn code_version(&self) -> &str {
        "14"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        let mut v = vec![
            InputSpec::new("metrics", "eval", "metrics"),
            InputSpec::new("sentences", "eval_chains", "sentences"),
            InputSpec::new("image_swap", "eval_chains", "image_swap"),
            InputSpec::new("levels", "bin", "levels"),
            InputSpec::new("items", "dataset", "items"),
            InputSpec::new("features", "features", "features"),
        ];
        if self.params.ice_sce.is_some() {
            v.push(InputSpec::new("chains", "generate", "chains"));
        }
        v
    }
    fn outputs(&self) -> Vec<String> {
        vec!["report".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let metrics = ctx.input_table_as("metrics", &super::eval::metrics_schema())?.concat()?;
        let sentences = ctx.input_table_as("sentences", &super::eval::sentences_schema())?;
        let items_table = ctx.input_table("items")?;
        let items = crate::data::items_from_record_batch(&items_table.concat()?)?;
        let about = about(ctx.store(), &sentences, Some((&items_table.id, &items)))?;
        let image_swap = ctx.input_table_as("image_swap", &super::image_swap::schema())?.concat()?;
        let levels = ctx.input_table_as("levels", &super::bin::levels_schema())?;
        let about = format!("{about} {}", design(ctx.store(), &sentences, &levels)?);
        let answers = answer_reading(&sentences)?;
        let levels = levels.concat()?;
        let sentences = sentences.concat()?;
        let ice_sce = match &self.params.ice_sce {
            Some(p) => Some(super::ice_sce::table(
                &items,
                &ctx.input_table_as("chains", &super::generate::chains_schema())?.concat()?,
                &levels,
                p,
            )?),
            None => None,
        };
        // Read only when there are scenes to probe against (a real dataset's features can be large).
        let vision = match items.iter().any(|it| it.meta.contains_key("scene")) {
            true => crate::report::vision::object_probes(
                &items,
                &ctx.input_table_as("features", &super::features::features_schema())?.concat()?,
            )?,
            false => None,
        };
        let grounding = crate::report::grounding::chain_grounding(&items, &sentences)?;
        let evidence = Evidence {
            image_swap: &image_swap,
            levels: &levels,
            vision: vision.as_deref(),
            answers: &answers,
            grounding: grounding.as_ref(),
        };
        let files = render_all(&metrics, &sentences, &self.params, &about, Some(evidence), ice_sce.as_deref())?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("report.md"), files.markdown)?;
        std::fs::write(dir.path().join("report.html"), files.html)?;
        std::fs::write(dir.path().join("reliability.svg"), files.reliability_svg)?;
        std::fs::write(dir.path().join("confidence.svg"), files.confidence_svg)?;
        ctx.write_dir("report", dir.path())?;
        Ok(())
    }
}

/// How eval read the answers of the chains behind its `sentences` (its params' `metrics.accuracy`, as its
/// lineage records them): the report finds each chain's answer sentence the same way.
pub fn answer_reading(sentences: &crate::store::Table) -> anyhow::Result<crate::metrics::accuracy::AccuracyParams> {
    let lineage = sentences.lineage.as_ref().ok_or_else(|| anyhow::anyhow!("eval sentences {}: no lineage", sentences.id))?;
    let accuracy = lineage
        .params
        .get("metrics")
        .and_then(|m| m.get("accuracy"))
        .ok_or_else(|| anyhow::anyhow!("eval sentences {}: lineage params have no metrics.accuracy", sentences.id))?;
    serde_json::from_value(accuracy.clone()).map_err(|e| anyhow::anyhow!("eval sentences {}: lineage metrics.accuracy: {e}", sentences.id))
}

/// What the report is about, from the lineage of eval's sentences: the dataset (its items artifact, by
/// source and split), the model (eval's `model`) and the judge (eval's, with its threshold). The items
/// artifact is found by the id eval's lineage records, which is part of the sentences' bytes and so of
/// this stage's key. `known`: items already decoded, with their artifact's id; used when it is that one
/// (the report's own `items` input usually is), instead of decoding the artifact a second time.
pub fn about(
    store: &crate::store::Store,
    sentences: &crate::store::Table,
    known: Option<(&crate::store::ArtifactId, &[Item])>,
) -> anyhow::Result<String> {
    let lineage = sentences.lineage.as_ref().ok_or_else(|| anyhow::anyhow!("eval sentences {}: no lineage", sentences.id))?;
    let items_id =
        lineage.inputs.get("items").ok_or_else(|| anyhow::anyhow!("eval sentences {}: lineage names no items input", sentences.id))?;
    let items_id = crate::store::ArtifactId::parse(items_id)?;
    let read;
    let items: &[Item] = match known {
        Some((id, items)) if *id == items_id => items,
        _ => {
            read = crate::data::items_from_record_batch(&store.read_table(&items_id)?.concat()?)?;
            &read
        }
    };
    let mut counts: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for it in items {
        *counts.entry(&it.source).or_default().entry(&it.split).or_default() += 1;
    }
    let dataset = counts
        .iter()
        .map(|(src, splits)| format!("{src} ({})", splits.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(" + ");
    let model = match lineage.params.get("model").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None => demo_model(store, sentences.id.as_str(), lineage)?,
    };
    let judge = match lineage.params.get("judge") {
        Some(j) => serde_json::from_value::<JudgeParams>(j.clone())
            .map(|j| j.name())
            .map_err(|e| anyhow::anyhow!("eval sentences {}: lineage judge: {e}", sentences.id))?,
        None => "-".into(),
    };
    let threshold = lineage.params.get("match_threshold").map(|t| format!(" > {t}")).unwrap_or_default();
    Ok(format!("Dataset: {dataset}. Model: {model}. Judge: {judge}{threshold}."))
}

/// Where the run's design leaves the paper (README, "Rewarding what a statement says"), as the artifacts
/// record it: bin's level intervals (the `levels` table's lineage), and from the params of the last update
/// behind the PPO checkpoint eval read (left out when eval read none) what R_EC and R_CS do with a sentence
/// without a statement, R_CS's IV and its levels when they are not the paper's.
pub fn design(store: &crate::store::Store, sentences: &crate::store::Table, levels: &crate::store::Table) -> anyhow::Result<String> {
    let param = |l: Option<&crate::store::Lineage>, what: &str, path: &[&str]| -> anyhow::Result<String> {
        let l = l.ok_or_else(|| anyhow::anyhow!("{what}: no lineage"))?;
        path.iter()
            .try_fold(&l.params, |v, k| v.get(*k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("{what}: lineage params have no {}", path.join(".")))
    };
    let intervals = param(levels.lineage.as_ref(), &format!("bin levels {}", levels.id), &["fusion", "intervals"])?;
    let mut out = match intervals.as_str() {
        "mu_sigma" => "Design: levels at U_Final's μ/σ intervals (the paper's)".to_string(),
        "quantile" => "Design: levels at U_Final's quintiles (the paper: μ/σ intervals)".to_string(),
        other => format!("Design: levels at {other} intervals (the paper: μ/σ)"),
    };
    let lineage = sentences.lineage.as_ref().ok_or_else(|| anyhow::anyhow!("eval sentences {}: no lineage", sentences.id))?;
    if let Some(ppo) = lineage.inputs.get("ppo_checkpoint") {
        let sidecar = |id: &str, what: &str| sidecar_of(store, id, crate::store::ArtifactKind::Safetensors, what);
        let ppo_lineage = sidecar(ppo, "eval's PPO checkpoint")?;
        let last = ppo_lineage.inputs.get("last").ok_or_else(|| anyhow::anyhow!("PPO checkpoint {ppo}: lineage names no `last` update"))?;
        let update = sidecar(last, "the last PPO update's checkpoint")?;
        let missing = param(Some(&update), &format!("PPO update checkpoint {last}"), &["ppo", "rewards", "missing_statement"])?;
        out.push_str(match missing.as_str() {
            "skip" => "; R_EC and R_CS leave out a sentence without a statement (the paper: −1)",
            "penalize" => "; a sentence without a statement scores −1 in R_EC and R_CS (the paper's)",
            _ => "; a sentence without a statement is an error in R_EC and R_CS",
        });
        let ppo_param = |key: &str| update.params.get("ppo").and_then(|p| p.get(key)).and_then(|v| v.as_str());
        // Left out of the params when default (the level's value); any other is ours.
        match ppo_param("internal_value") {
            None | Some("level_value") => {}
            Some("level_accuracy") => {
                out.push_str("; R_CS's IV is its level's accuracy on the iteration's rollouts (the paper: the level's value)")
            }
            Some("monotone_level_accuracy") => out.push_str(
                "; R_CS's IV is its level's accuracy on the iteration's rollouts, made non-decreasing in the level (the paper: the level's value)",
            ),
            Some(other) => anyhow::bail!("PPO update checkpoint {last}: unknown ppo.internal_value {other:?}"),
        }
        // Left out when default (the warm-up's level model).
        match ppo_param("internal_levels") {
            None | Some("warm_up") => {}
            Some("rollouts") => out.push_str("; R_CS's levels are refitted on each iteration's rollouts (the paper: the warm-up's)"),
            Some(other) => anyhow::bail!("PPO update checkpoint {last}: unknown ppo.internal_levels {other:?}"),
        }
    }
    out.push('.');
    Ok(out)
}

/// The lineage sidecar of the folder artifact `id` (of `kind`); the error names it as `what`.
fn sidecar_of(
    store: &crate::store::Store,
    id: &str,
    kind: crate::store::ArtifactKind,
    what: &str,
) -> anyhow::Result<crate::store::Lineage> {
    let id = crate::store::ArtifactId::parse(id)?;
    let path = store.path_of(&id, kind);
    store.sidecar_lineage(&path)?.ok_or_else(|| anyhow::anyhow!("{what} {id}: no lineage sidecar at {}", path.display()))
}

/// The demo MLLM eval read (its `model` input, a folder artifact of `demo_mllm`), named by the decoder
/// its params trained ([`super::demo_mllm::describe`]), from the folder's lineage sidecar.
fn demo_model(store: &crate::store::Store, sentences: &str, lineage: &crate::store::Lineage) -> anyhow::Result<String> {
    let id = lineage.inputs.get("model").ok_or_else(|| {
        anyhow::anyhow!("eval sentences {sentences}: lineage names neither a `model` folder in its params nor a `model` input")
    })?;
    let demo = sidecar_of(store, id, crate::store::ArtifactKind::Tar, &format!("eval sentences {sentences}: model"))?;
    anyhow::ensure!(
        demo.stage == super::models::DEMO_MLLM.0,
        "eval sentences {sentences}: model {id} was written by stage `{}`, expected `{}`",
        demo.stage,
        super::models::DEMO_MLLM.0
    );
    super::demo_mllm::describe(&demo.params).map_err(|e| anyhow::anyhow!("eval sentences {sentences}: model {id}: {e:#}"))
}

/// The report's files.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    pub markdown: String,
    pub html: String,
    pub reliability_svg: String,
    pub confidence_svg: String,
}

/// Why the intervals are what they are.
const INTERVAL_NOTE: &str = "Brackets: 95 % percentile bootstrap intervals over items (each resample draws the split's \
items with replacement and carries all of an item's sentences, since the sentences of one chain are correlated). \
Chain F1 has no interval.";

/// How eval computed ECE and AUROC from the sentences, as its metrics artifact records it (one rule for
/// all rows).
pub fn cell_rule(m: &RecordBatch) -> anyhow::Result<CellRule> {
    let bins = m.column_by_name("ece_bins").and_then(|c| c.as_primitive_opt::<UInt64Type>().cloned()).ok_or_else(|| {
        anyhow::anyhow!("eval metrics have no UInt64 column `ece_bins` (written by eval since code version 3; rerun eval)")
    })?;
    let mode = m
        .column_by_name("answer_confidence")
        .and_then(|c| c.as_string_opt::<i32>().cloned())
        .ok_or_else(|| anyhow::anyhow!("eval metrics have no string column `answer_confidence` (rerun eval)"))?;
    anyhow::ensure!(m.num_rows() > 0, "eval metrics are empty");
    let (b0, m0) = (bins.value(0), mode.value(0));
    for i in 0..m.num_rows() {
        anyhow::ensure!(
            bins.value(i) == b0 && mode.value(i) == m0,
            "eval metrics row {i}: ece_bins {} / answer_confidence `{}` differ from row 0's {b0} / `{m0}`",
            bins.value(i),
            mode.value(i)
        );
    }
    let answer_confidence: AnswerConfidence = serde_json::from_value(serde_json::Value::String(m0.to_string()))
        .map_err(|e| anyhow::anyhow!("eval metrics column `answer_confidence`: `{m0}`: {e}"))?;
    Ok(CellRule { ece: EceParams { bins: b0 as usize }, answer_confidence })
}

/// Each (variant, split)'s items as eval scored them, from its sentence rows (in row order), plus one
/// item without sentences per chain eval counted (`responses` in `rows`) that has no sentence row: such a
/// chain had no text to judge, so no answer (correctness 0) and nothing in the calibration metrics.
pub fn report_items(s: &RecordBatch, rows: &[MetricsRow]) -> anyhow::Result<BTreeMap<(String, String), Vec<ItemScores>>> {
    let col = |n: &str| s.column_by_name(n).cloned().ok_or_else(|| anyhow::anyhow!("eval sentences have no column `{n}`"));
    let (v, sp, id) = (col("variant")?, col("split")?, col("item_id")?);
    let (v, sp, id) = (v.as_string::<i32>(), sp.as_string::<i32>(), id.as_string::<i32>());
    let (corr, ans) = (col("correct")?, col("answer_correct")?);
    let (corr, ans) = (corr.as_boolean(), ans.as_primitive::<Float64Type>());
    let mc = col("metric_confidence").map_err(|e| anyhow::anyhow!("{e} (written by eval since code version 3; rerun eval)"))?;
    let mc =
        mc.as_primitive_opt::<Float64Type>().ok_or_else(|| anyhow::anyhow!("eval sentences column `metric_confidence` is not Float64"))?;
    let mut out: BTreeMap<(String, String), Vec<ItemScores>> = BTreeMap::new();
    let mut pos: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for i in 0..s.num_rows() {
        let key = (v.value(i).to_string(), sp.value(i).to_string());
        let list = out.entry(key.clone()).or_default();
        let k = *pos.entry((key.0, key.1, id.value(i).to_string())).or_insert_with(|| {
            list.push(ItemScores { item_id: id.value(i).to_string(), answer_correct: ans.value(i), sentences: vec![] });
            list.len() - 1
        });
        if mc.is_valid(i) {
            list[k].sentences.push((corr.value(i), mc.value(i)));
        }
    }
    for r in rows.iter().filter(|r| r.level == "all") {
        let list = out.entry((r.variant.clone(), r.split.clone())).or_default();
        anyhow::ensure!(
            list.len() as u64 <= r.responses,
            "eval sentences hold {} items of variant `{}`, split `{}`, its metrics count {} responses",
            list.len(),
            r.variant,
            r.split,
            r.responses
        );
        for _ in list.len() as u64..r.responses {
            list.push(ItemScores { item_id: String::new(), answer_correct: 0.0, sentences: vec![] });
        }
    }
    Ok(out)
}

/// What the report shows beside eval's metrics: eval's `image_swap` table, bin's `levels`, and on the
/// embedded benchmark the per-object probes of the image features.
#[derive(Clone, Copy)]
pub struct Evidence<'a> {
    pub image_swap: &'a RecordBatch,
    pub levels: &'a RecordBatch,
    pub vision: Option<&'a [crate::report::vision::AttributeProbe]>,
    /// How eval read the answers ([`answer_reading`]): which sentence of a chain is its answer.
    pub answers: &'a crate::metrics::accuracy::AccuracyParams,
    /// On the embedded benchmark, whether each policy's perception sentences name what the image holds.
    pub grounding: Option<&'a BTreeMap<(String, String), crate::report::grounding::Grounding>>,
}

/// The whole report from eval's `metrics` and `sentences` tables (without the image-swap and signal tables).
/// `about`: the dataset, model and judge line ([`about`]).
pub fn render(metrics: &RecordBatch, s: &RecordBatch, p: &ReportParams, about: &str) -> anyhow::Result<ReportFiles> {
    render_with(metrics, s, p, about, None)
}

/// The whole report; with `extra`, also whether the model uses its image and the signals' AUROCs.
pub fn render_with(
    metrics: &RecordBatch,
    s: &RecordBatch,
    p: &ReportParams,
    about: &str,
    extra: Option<Evidence>,
) -> anyhow::Result<ReportFiles> {
    render_all(metrics, s, p, about, extra, None)
}

/// [`render_with`], plus the paper's Table 3 (`ice_sce`: [`super::ice_sce::table`]'s Markdown) as the last
/// section of both pages when given.
pub fn render_all(
    metrics: &RecordBatch,
    s: &RecordBatch,
    p: &ReportParams,
    about: &str,
    extra: Option<Evidence>,
    ice_sce: Option<&str>,
) -> anyhow::Result<ReportFiles> {
    let rows = metrics_rows(metrics)?;
    let col = |b: &RecordBatch, n: &str| b.column_by_name(n).cloned().ok_or_else(|| anyhow::anyhow!("eval output has no column `{n}`"));
    let mut variants: Vec<String> = rows.iter().map(|r| r.variant.clone()).collect();
    variants.sort_by_key(|v| (VARIANT_ORDER.iter().position(|o| o == v).unwrap_or(9), v.clone()));
    variants.dedup();
    let splits = ordered_splits(&rows);

    // Per-sentence (stated confidence, right?) for the diagrams and examples.
    let (sv, ss, si) = (col(s, "variant")?, col(s, "split")?, col(s, "item_id")?);
    let (sidx, st, stmt) = (col(s, "sentence_index")?, col(s, "sentence")?, col(s, "statement")?);
    let (conf, correct) = (col(s, "confidence")?, col(s, "correct")?);
    let (conf, correct) = (conf.as_primitive::<Float64Type>(), correct.as_boolean());
    let mut pairs: BTreeMap<String, Vec<(f64, bool)>> = BTreeMap::new();
    let mut stated: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let responses = stated_responses(s, &p.split)?;
    let mut chains: BTreeMap<String, Vec<(u32, ExampleSentence)>> = BTreeMap::new();
    for i in 0..s.num_rows() {
        let v = sv.as_string::<i32>().value(i);
        if ss.as_string::<i32>().value(i) != p.split {
            continue;
        }
        let c = (!conf.is_null(i)).then(|| conf.value(i));
        if let Some(c) = c {
            pairs.entry(v.to_string()).or_default().push((c, correct.value(i)));
            stated.entry(v.to_string()).or_default().push(c);
        }
        if v == "full" {
            let e = ExampleSentence {
                sentence: st.as_string::<i32>().value(i).into(),
                statement: stmt.as_string::<i32>().is_valid(i).then(|| stmt.as_string::<i32>().value(i).to_string()),
                confidence: c,
                correct: correct.value(i),
            };
            chains.entry(si.as_string::<i32>().value(i).to_string()).or_default().push((sidx.as_primitive::<UInt32Type>().value(i), e));
        }
    }
    // Intervals (on eval's variant names): every cell, and full − sft paired per split.
    let rule = cell_rule(metrics)?;
    let items = report_items(s, &rows)?;
    let cells = cell_intervals(&items, &rows, &rule, &p.bootstrap)?;
    let calibration = [Metric::Ece, Metric::Mece, Metric::Brier];
    let diffs = paired_differences(&items, "full", "sft", &splits, &calibration, &rule, &p.bootstrap)?;

    // A variant whose sentences carry no statement gives every sentence the same confidence (eval's
    // `missing_confidence`): it is a constant predictor, not a model's calibration, and says so.
    let labels = constant_labels(s)?;
    // Which judge decided I(z) (and at which threshold), as eval recorded it.
    let mut judges: Vec<String> = col(s, "judge")?.as_string::<i32>().iter().flatten().map(String::from).collect();
    judges.sort();
    judges.dedup();
    let judge_note = format!("I(z), MECE and chain F1 judged by: {}.", if judges.is_empty() { "-".into() } else { judges.join(", ") });
    let relabel = |v: &str| labels.get(v).cloned().unwrap_or_else(|| v.to_string());
    let mut rows = rows;
    for r in &mut rows {
        r.variant = relabel(&r.variant);
    }
    let cells: crate::report::intervals::Cells = cells.into_iter().map(|((v, sp, m), e)| ((relabel(&v), sp, m), e)).collect();
    let variants: Vec<String> = variants.iter().map(|v| relabel(v)).collect();
    let pairs: BTreeMap<String, Vec<(f64, bool)>> = pairs.into_iter().map(|(k, v)| (relabel(&k), v)).collect();
    let stated: BTreeMap<String, Vec<f64>> = stated.into_iter().map(|(k, v)| (relabel(&k), v)).collect();
    let responses: BTreeMap<String, BTreeMap<String, Vec<(bool, f64)>>> = responses.into_iter().map(|(k, v)| (relabel(&k), v)).collect();

    let series: Vec<(&str, _)> =
        variants.iter().filter_map(|v| pairs.get(v).map(|ps| (v.as_str(), reliability_bins(ps, p.bins)))).collect();
    let reliability = reliability_svg(&format!("Reliability ({})", p.split), &series).map_err(anyhow::Error::msg)?;
    let hist_groups: Vec<(&str, Vec<f64>)> = variants.iter().filter_map(|v| stated.get(v).map(|c| (v.as_str(), c.clone()))).collect();
    let hist = confidence_histogram_svg(&format!("Stated confidence ({})", p.split), &hist_groups, p.bins).map_err(anyhow::Error::msg)?;
    let examples: Vec<(String, Vec<ExampleSentence>)> = chains
        .into_iter()
        .take(p.examples)
        .map(|(id, mut v)| {
            v.sort_by_key(|x| x.0);
            (id, v.into_iter().map(|x| x.1).collect())
        })
        .collect();

    let table = table1_ci_markdown(&rows, &splits, &variants, &cells);
    let diff_table = differences_markdown(&diffs, "full", "sft", &calibration);
    let levels = levels_markdown(&rows, &p.split, &variants);
    let brier = brier_markdown(&rows, &splits, &variants);
    let anatomy: Vec<(String, Vec<Vec<(bool, f64)>>)> =
        variants.iter().filter_map(|v| responses.get(v).map(|r| (v.clone(), r.values().cloned().collect()))).collect();
    let anatomy = mece_anatomy_markdown(&anatomy)?;
    // With eval's answer reading, the statements by sentence role as well.
    let role_cells = extra.map(|e| crate::report::roles::eval_role_cells(s, e.answers)).transpose()?;
    let statement_aurocs = evidence::statement_aurocs_markdown(&evidence::statement_aurocs(s)?, role_cells.as_ref(), &variants, &splits);
    let roles_table = role_cells.as_ref().map(|c| {
        let raw: Vec<String> = VARIANT_ORDER.iter().map(|v| v.to_string()).filter(|v| c.keys().any(|k| &k.0 == v)).collect();
        crate::report::roles::roles_markdown(c, &raw, &splits)
    });
    let diff_note = format!(
        "Paired bootstrap: each resample draws one list of items and scores both variants on it. Negative: the full \
         method's error is lower (better). {} resamples, seed {}.",
        p.bootstrap.resamples, p.bootstrap.seed
    );
    let evidence_tables = match extra {
        Some(e) => {
            let cells = crate::stages::image_swap::summarize(e.image_swap, &p.bootstrap)?;
            let eval_variants: Vec<String> =
                VARIANT_ORDER.iter().map(|v| v.to_string()).filter(|v| cells.keys().any(|k| &k.0 == v)).collect();
            let overview = evidence::swap_overview_markdown(&cells, &eval_variants, &splits);
            let by_kind = evidence::swap_by_kind_markdown(&cells, "vanilla", &splits);
            let signals = evidence::signals_markdown(&evidence::signal_aurocs(e.levels, Some(e.answers))?);
            let vision = e.vision.map(crate::report::vision::probes_markdown);
            let grounding = e.grounding.map(|g| crate::report::grounding::grounding_markdown(g, &eval_variants, &splits));
            Some((overview, by_kind, signals, vision, grounding))
        }
        None => None,
    };
    let mut md = format!(
        "# MMBoundary report\n\n{about}\n\n## Table 1 (ECE, MECE, step-level Brier, accuracy, chain F1, AUROC; level `all`)\n\n\
         {judge_note} {INTERVAL_NOTE}\n\n{table}\n\
         ## Does RL calibrate? Full − SFT, paired\n\n{diff_note}\n\n{diff_table}\n\
         ## Step-level Brier score\n\n{BRIER_NOTE}\n\n{brier}\n\
         ## What MECE rewards ({split})\n\n{ANATOMY_NOTE}\n\n{anatomy}\n\
         ## {STATEMENTS_HEADING}\n\n{statement_note}\n\n{statement_aurocs}\n{roles}\
         ## Perception vs reasoning ({split})\n\n{levels}\n## Figures\n\n![reliability](reliability.svg)\n![confidence](confidence.svg)\n",
        split = p.split,
        statement_note = evidence::STATEMENT_NOTE,
        roles =
            roles_table.as_ref().map_or(String::new(), |t| format!("### {ROLES_HEADING}\n\n{}\n\n{t}\n", crate::report::roles::ROLES_NOTE)),
    );
    if let Some((overview, by_kind, signals, vision, grounding)) = &evidence_tables {
        md.push_str(&format!(
            "\n## Does the model use its image?\n\n{}\n\n{overview}\n### By question kind (vanilla)\n\n{by_kind}\n",
            evidence::SWAP_NOTE,
        ));
        if let Some(g) = grounding {
            md.push_str(&format!("### {GROUNDING_HEADING}\n\n{}\n\n{g}\n", crate::report::grounding::GROUNDING_NOTE));
        }
        if let Some(v) = vision {
            md.push_str(&format!("### {VISION_HEADING}\n\n{}\n\n{v}\n", crate::report::vision::VISION_NOTE));
        }
        md.push_str(&format!("## Do the internal signals carry information?\n\n{}\n\n{signals}", evidence::SIGNAL_NOTE));
    }
    if let Some(t3) = ice_sce {
        md.push_str(&format!("\n## {}\n\n{}\n\n{t3}", super::ice_sce::HEADING, super::ice_sce::NOTE));
    }
    let note = |t: &str| format!("<p class=\"note\">{}</p>", escape(t));
    let mut sections: Vec<(String, String)> = vec![
        ("About".into(), note(about)),
        ("Table 1".into(), format!("{}{}{}", note(&judge_note), note(INTERVAL_NOTE), md_table_html(&table))),
        ("Does RL calibrate? Full − SFT, paired".into(), format!("{}{}", note(&diff_note), md_table_html(&diff_table))),
        ("Step-level Brier score".into(), format!("{}{}", note(BRIER_NOTE), md_table_html(&brier))),
        (format!("What MECE rewards ({})", p.split), format!("{}{}", note(ANATOMY_NOTE), md_table_html(&anatomy))),
        (
            STATEMENTS_HEADING.into(),
            format!(
                "{}{}{}",
                note(evidence::STATEMENT_NOTE),
                md_table_html(&statement_aurocs),
                roles_table.as_ref().map_or(String::new(), |t| format!(
                    "<h3>{ROLES_HEADING}</h3>{}{}",
                    note(crate::report::roles::ROLES_NOTE),
                    md_table_html(t)
                ))
            ),
        ),
        (format!("Perception vs reasoning ({})", p.split), md_table_html(&levels)),
        ("Calibration".into(), format!("<div class=\"figs\">{reliability}{hist}</div>")),
        ("Example chains (full method; green: the sentence was right)".into(), examples_html(&examples)),
    ];
    if let Some((overview, by_kind, signals, vision, grounding)) = &evidence_tables {
        // After "About", Table 1 and the full − SFT differences.
        let grounding = grounding
            .as_ref()
            .map(|g| format!("<h3>{GROUNDING_HEADING}</h3>{}{}", note(crate::report::grounding::GROUNDING_NOTE), md_table_html(g)))
            .unwrap_or_default();
        let vision = vision
            .as_ref()
            .map(|v| format!("<h3>{VISION_HEADING}</h3>{}{}", note(crate::report::vision::VISION_NOTE), md_table_html(v)))
            .unwrap_or_default();
        let at = 3.min(sections.len());
        sections.insert(
            at,
            (
                "Does the model use its image?".into(),
                format!(
                    "{}{}<h3>By question kind (vanilla)</h3>{}{grounding}{vision}",
                    note(evidence::SWAP_NOTE),
                    md_table_html(overview),
                    md_table_html(by_kind)
                ),
            ),
        );
        sections.insert(
            at + 1,
            ("Do the internal signals carry information?".into(), format!("{}{}", note(evidence::SIGNAL_NOTE), md_table_html(signals))),
        );
    }
    if let Some(t3) = ice_sce {
        let (head, table) = t3.split_once("\n\n").unwrap_or(("", t3));
        sections.push((super::ice_sce::HEADING.into(), format!("{}{}{}", note(super::ice_sce::NOTE), note(head), md_table_html(table))));
    }
    let html = html_page("MMBoundary report", &sections);
    Ok(ReportFiles { markdown: md, html, reliability_svg: reliability, confidence_svg: hist })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, StringArray};
    use std::sync::Arc;

    #[test]
    fn a_variant_without_statements_is_labeled_a_constant() {
        let variant: ArrayRef = Arc::new(StringArray::from(vec!["vanilla", "vanilla", "sft", "sft", "full"]));
        let statement: ArrayRef = Arc::new(StringArray::from(vec![None, None, None, Some("I am sure."), None]));
        let s = RecordBatch::try_from_iter([("variant", variant), ("statement", statement)]).unwrap();
        let labels = constant_labels(&s).unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["vanilla"], "vanilla (no statements: constant missing_confidence)");
        assert!(labels.contains_key("full") && !labels.contains_key("sft"));
    }

    /// The report reads the answers as eval did, from the sentences' lineage; a lineage without them is named.
    #[test]
    fn the_answer_reading_comes_from_evals_lineage() {
        use crate::store::{Lineage, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("artifacts")).unwrap();
        let t = || RecordBatch::try_from_iter([("item_id", Arc::new(StringArray::from(vec!["q1"])) as ArrayRef)]).unwrap();
        let table = |params: serde_json::Value| {
            let lineage = Lineage { stage: "eval_chains".into(), params, ..Default::default() };
            store.read_table(&store.put_table(t().schema(), &[t()], &lineage, None).unwrap()).unwrap()
        };
        let mut acc = crate::metrics::accuracy::AccuracyParams::default();
        acc.answer_markers = vec!["final:".into()];
        let with = table(serde_json::json!({ "metrics": { "accuracy": serde_json::to_value(&acc).unwrap() } }));
        assert_eq!(answer_reading(&with).unwrap(), acc);
        let without = table(serde_json::json!({ "metrics": {} }));
        assert_eq!(
            answer_reading(&without).unwrap_err().to_string(),
            format!("eval sentences {}: lineage params have no metrics.accuracy", without.id)
        );
    }

    /// The header's design sentence, from bin's levels lineage and the last PPO update behind eval's checkpoint.
    #[test]
    fn the_header_says_where_the_design_leaves_the_papers() {
        use crate::store::{ArtifactKind, Lineage, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("artifacts")).unwrap();
        let t = || RecordBatch::try_from_iter([("item_id", Arc::new(StringArray::from(vec!["q1"])) as ArrayRef)]).unwrap();
        let table = |stage: &str, params: serde_json::Value, inputs: Vec<(&str, String)>| {
            let lineage = Lineage {
                stage: stage.into(),
                params,
                inputs: inputs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                ..Default::default()
            };
            store.read_table(&store.put_table(t().schema(), &[t()], &lineage, None).unwrap()).unwrap()
        };
        // eval's PPO checkpoint → its `last` input, the last update's checkpoint, whose params hold the rewards.
        let ppo_run_with = |ppo: serde_json::Value, bytes: &[u8]| {
            let params = serde_json::json!({ "ppo": ppo });
            let update = Lineage { stage: "update_15".into(), params, ..Default::default() };
            let update = store.put_bytes(ArtifactKind::Safetensors, bytes, Some(&update)).unwrap();
            let ppo = Lineage { stage: "ppo".into(), inputs: [("last".to_string(), update.to_string())].into(), ..Default::default() };
            store.put_bytes(ArtifactKind::Safetensors, &[bytes, b"ppo"].concat(), Some(&ppo)).unwrap().to_string()
        };
        let ppo_run = |missing: &str, bytes: &[u8]| ppo_run_with(serde_json::json!({ "rewards": { "missing_statement": missing } }), bytes);
        let levels = |intervals: &str| table("bin", serde_json::json!({ "fusion": { "intervals": intervals } }), vec![]);
        let header = |intervals: &str, ppo: Option<String>| {
            let sentences = table("eval_chains", serde_json::json!({}), ppo.into_iter().map(|id| ("ppo_checkpoint", id)).collect());
            design(&store, &sentences, &levels(intervals))
        };
        assert_eq!(
            header("quantile", Some(ppo_run("skip", b"a"))).unwrap(),
            "Design: levels at U_Final's quintiles (the paper: μ/σ intervals); R_EC and R_CS leave out a sentence without a \
             statement (the paper: −1)."
        );
        assert_eq!(
            header("mu_sigma", Some(ppo_run("penalize", b"b"))).unwrap(),
            "Design: levels at U_Final's μ/σ intervals (the paper's); a sentence without a statement scores −1 in R_EC and R_CS \
             (the paper's)."
        );
        let accuracy = serde_json::json!({ "rewards": { "missing_statement": "skip" }, "internal_value": "level_accuracy" });
        assert_eq!(
            header("quantile", Some(ppo_run_with(accuracy, b"c"))).unwrap(),
            "Design: levels at U_Final's quintiles (the paper: μ/σ intervals); R_EC and R_CS leave out a sentence without a \
             statement (the paper: −1); R_CS's IV is its level's accuracy on the iteration's rollouts (the paper: the level's value)."
        );
        let monotone = serde_json::json!({ "rewards": { "missing_statement": "skip" }, "internal_value": "monotone_level_accuracy" });
        assert!(header("quantile", Some(ppo_run_with(monotone, b"e"))).unwrap().ends_with(
            "; R_CS's IV is its level's accuracy on the iteration's rollouts, made non-decreasing in the level (the paper: the level's value)."
        ));
        let refitted = serde_json::json!({ "rewards": { "missing_statement": "skip" }, "internal_levels": "rollouts" });
        assert_eq!(
            header("quantile", Some(ppo_run_with(refitted, b"f"))).unwrap(),
            "Design: levels at U_Final's quintiles (the paper: μ/σ intervals); R_EC and R_CS leave out a sentence without a \
             statement (the paper: −1); R_CS's levels are refitted on each iteration's rollouts (the paper: the warm-up's)."
        );
        let unknown = serde_json::json!({ "rewards": { "missing_statement": "skip" }, "internal_levels": "oracle" });
        let err = header("quantile", Some(ppo_run_with(unknown, b"g"))).unwrap_err().to_string();
        assert!(err.contains("internal_levels") && err.contains("oracle"), "{err}");
        let unknown = serde_json::json!({ "rewards": { "missing_statement": "skip" }, "internal_value": "oracle" });
        let err = header("quantile", Some(ppo_run_with(unknown, b"d"))).unwrap_err().to_string();
        assert!(err.contains("internal_value") && err.contains("oracle"), "{err}");
        // A run that evaluated no PPO policy says nothing of its rewards.
        assert_eq!(header("uniform", None).unwrap(), "Design: levels at uniform intervals (the paper: μ/σ).");
        // What the lineage lacks is an error naming the artifact.
        let bare = table("bin", serde_json::json!({}), vec![]);
        let sentences = table("eval_chains", serde_json::json!({}), vec![]);
        let err = design(&store, &sentences, &bare).unwrap_err().to_string();
        assert!(err.contains(&bare.id.to_string()) && err.contains("fusion.intervals"), "{err}");
        let orphan = table("eval_chains", serde_json::json!({}), vec![("ppo_checkpoint", "0".repeat(64))]);
        let err = design(&store, &orphan, &levels("quantile")).unwrap_err().to_string();
        assert!(err.contains("eval's PPO checkpoint") && err.contains("no lineage sidecar"), "{err}");
    }

    /// Without a model folder, the header names the decoder the demo MLLM was trained on, read from the
    /// lineage of the model folder eval read (demo_mllm's params): SmolLM2-135M-Instruct under
    /// `--preset smollm2-135m`, the scratch decoder otherwise.
    #[test]
    fn the_header_names_the_demo_mllms_decoder() {
        use crate::stages::demo_mllm::{DemoMllmParams, DemoMllmStage};
        use crate::store::{Lineage, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("artifacts")).unwrap();
        let items = crate::data::items_to_record_batch(&[crate::data::Item::new("q1", "penumbra", "val", "Which color?")]).unwrap();
        let items_id = store.put_table(items.schema(), &[items], &Lineage { stage: "dataset".into(), ..Default::default() }, None).unwrap();
        let header = |name: &str, trainer: serde_json::Value| {
            let demo = DemoMllmStage { params: DemoMllmParams { trainer, ..Default::default() } };
            let folder = dir.path().join(name);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("config.json"), demo.params.trainer.to_string()).unwrap();
            let lineage = Lineage { stage: "demo_mllm".into(), output: "mllm".into(), params: demo.params(), ..Default::default() };
            let model_id = store.put_dir(&folder, Some(&lineage)).unwrap();
            let s = RecordBatch::try_from_iter([("item_id", Arc::new(StringArray::from(vec!["q1"])) as ArrayRef)]).unwrap();
            let lineage = Lineage {
                stage: "eval_chains".into(),
                output: "sentences".into(),
                inputs: [("items".to_string(), items_id.to_string()), ("model".to_string(), model_id.to_string())].into(),
                ..Default::default()
            };
            let id = store.put_table(s.schema(), &[s], &lineage, None).unwrap();
            let sentences = store.read_table(&id).unwrap();
            let header = about(&store, &sentences, None).unwrap();
            // Items already decoded are used when they are the artifact eval read, and only then.
            let other = [Item::new("o1", "other", "test", "?"), Item::new("o2", "other", "test", "?")];
            let known = about(&store, &sentences, Some((&items_id, &other))).unwrap();
            assert!(known.starts_with("Dataset: other (test 2). "), "{known}");
            let stranger = crate::store::ArtifactId::parse(&"0".repeat(64)).unwrap();
            assert_eq!(about(&store, &sentences, Some((&stranger, &other))).unwrap(), header);
            header
        };
        assert_eq!(
            header("smollm2", serde_json::json!({ "decoder": "smollm2_gguf", "epochs": 1 })),
            "Dataset: penumbra (val 1). Model: the demo MLLM on SmolLM2-135M-Instruct (stage demo_mllm). Judge: -."
        );
        assert_eq!(
            header("default", serde_json::json!({ "epochs": 6 })),
            "Dataset: penumbra (val 1). Model: the demo MLLM with a decoder trained from scratch (stage demo_mllm). Judge: -."
        );
        assert_eq!(
            header("scratch", serde_json::json!({ "decoder": { "scratch": { "hidden_size": 64 } } })),
            "Dataset: penumbra (val 1). Model: the demo MLLM with a decoder trained from scratch (stage demo_mllm). Judge: -."
        );
    }
}
