//! `report`: what a person reads after a run — the Table-1-style table, perception vs reasoning, reliability
//! diagrams, stated-confidence histograms and example chains with each statement colored by whether its
//! sentence was right; Markdown plus one self-contained HTML page, stored as a folder artifact.
use crate::engine::{InputSpec, Stage, StageContext};
use crate::report::page::{
    brier_markdown, escape, examples_html, html_page, levels_markdown, mece_anatomy_markdown, ordered_splits, pre, table1_markdown,
    ExampleSentence, MetricsRow,
};
use crate::report::plots::{level_histogram_svg, reliability_bins, reliability_svg};
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
}

impl Default for ReportParams {
    fn default() -> Self {
        Self { split: "val".into(), bins: crate::metrics::calibration::EceParams::default().bins, examples: 6 }
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
const ANATOMY_NOTE: &str = "Sentences with a statement, their share judged right, and the mean stated confidence; then \
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

pub struct ReportStage {
    pub params: ReportParams,
}

const VARIANT_ORDER: [&str; 3] = ["vanilla", "sft", "full"];

impl Stage for ReportStage {
    fn name(&self) -> &str {
        "report"
    }
    /// 4: a variant without statements is labeled as the constant it is; reliability bins as ECE.
    fn code_version(&self) -> &str {
        "4"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::new("metrics", "eval", "metrics"), InputSpec::new("sentences", "eval", "sentences")]
    }
    fn outputs(&self) -> Vec<String> {
        vec!["report".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let p = &self.params;
        let mut rows = metrics_rows(&ctx.input_table("metrics")?.concat()?)?;
        let col = |b: &RecordBatch, n: &str| b.column_by_name(n).cloned().ok_or_else(|| anyhow::anyhow!("eval output has no column `{n}`"));
        let mut variants: Vec<String> = rows.iter().map(|r| r.variant.clone()).collect();
        variants.sort_by_key(|v| (VARIANT_ORDER.iter().position(|o| o == v).unwrap_or(9), v.clone()));
        variants.dedup();

        // Per-sentence (stated confidence, right?) for the diagrams and examples.
        let s = ctx.input_table("sentences")?.concat()?;
        let (sv, ss, si) = (col(&s, "variant")?, col(&s, "split")?, col(&s, "item_id")?);
        let (sidx, st, stmt) = (col(&s, "sentence_index")?, col(&s, "sentence")?, col(&s, "statement")?);
        let (conf, correct) = (col(&s, "confidence")?, col(&s, "correct")?);
        let (conf, correct) = (conf.as_primitive::<Float64Type>(), correct.as_boolean());
        let mut pairs: BTreeMap<String, Vec<(f64, bool)>> = BTreeMap::new();
        let mut by_level: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut responses: BTreeMap<String, BTreeMap<String, Vec<(bool, f64)>>> = BTreeMap::new();
        let mut chains: BTreeMap<String, Vec<(u32, ExampleSentence)>> = BTreeMap::new();
        for i in 0..s.num_rows() {
            let v = sv.as_string::<i32>().value(i);
            if ss.as_string::<i32>().value(i) != p.split {
                continue;
            }
            let c = (!conf.is_null(i)).then(|| conf.value(i));
            if let Some(c) = c {
                let item = si.as_string::<i32>().value(i).to_string();
                responses.entry(v.to_string()).or_default().entry(item).or_default().push((correct.value(i), c));
                pairs.entry(v.to_string()).or_default().push((c, correct.value(i)));
                by_level.entry(v.to_string()).or_default().push(c);
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
        // A variant whose sentences carry no statement gives every sentence the same confidence (eval's
        // `missing_confidence`): it is a constant predictor, not a model's calibration, and says so.
        let labels = constant_labels(&s)?;
        // Which judge decided I(z) (and at which threshold), as eval recorded it.
        let mut judges: Vec<String> = col(&s, "judge")?.as_string::<i32>().iter().flatten().map(String::from).collect();
        judges.sort();
        judges.dedup();
        let judge_note = format!("I(z), MECE and chain F1 judged by: {}.", if judges.is_empty() { "-".into() } else { judges.join(", ") });
        let relabel = |v: &str| labels.get(v).cloned().unwrap_or_else(|| v.to_string());
        for r in &mut rows {
            r.variant = relabel(&r.variant);
        }
        let variants: Vec<String> = variants.iter().map(|v| relabel(v)).collect();
        let pairs: BTreeMap<String, Vec<(f64, bool)>> = pairs.into_iter().map(|(k, v)| (relabel(&k), v)).collect();
        let by_level: BTreeMap<String, Vec<f64>> = by_level.into_iter().map(|(k, v)| (relabel(&k), v)).collect();
        let responses: BTreeMap<String, BTreeMap<String, Vec<(bool, f64)>>> =
            responses.into_iter().map(|(k, v)| (relabel(&k), v)).collect();
        let splits = ordered_splits(&rows);
        let series: Vec<(&str, _)> =
            variants.iter().filter_map(|v| pairs.get(v).map(|ps| (v.as_str(), reliability_bins(ps, p.bins)))).collect();
        let reliability = reliability_svg(&format!("Reliability ({})", p.split), &series).map_err(anyhow::Error::msg)?;
        let hist_groups: Vec<(u8, Vec<f64>)> =
            variants.iter().enumerate().filter_map(|(k, v)| by_level.get(v).map(|c| (k as u8 + 1, c.clone()))).collect();
        let hist = level_histogram_svg(&format!("Stated confidence ({}; 1 = {})", p.split, variants.join(", 2 = ")), &hist_groups, p.bins)
            .map_err(anyhow::Error::msg)?;
        let examples: Vec<(String, Vec<ExampleSentence>)> = chains
            .into_iter()
            .take(p.examples)
            .map(|(id, mut v)| {
                v.sort_by_key(|x| x.0);
                (id, v.into_iter().map(|x| x.1).collect())
            })
            .collect();

        let table = table1_markdown(&rows, &splits, &variants);
        let levels = levels_markdown(&rows, &p.split, &variants);
        let brier = brier_markdown(&rows, &splits, &variants);
        let anatomy: Vec<(String, Vec<Vec<(bool, f64)>>)> =
            variants.iter().filter_map(|v| responses.get(v).map(|r| (v.clone(), r.values().cloned().collect()))).collect();
        let anatomy = mece_anatomy_markdown(&anatomy)?;
        let md = format!(
            "# MMBoundary report\n\n## Table 1 (ECE, MECE, accuracy, chain F1, AUROC; level `all`)\n\n{judge_note}\n\n{table}\n\
             ## Step-level Brier score\n\n{BRIER_NOTE}\n\n{brier}\n\
             ## What MECE rewards ({split})\n\n{ANATOMY_NOTE}\n\n{anatomy}\n\
             ## Perception vs reasoning ({split})\n\n{levels}\n## Figures\n\n![reliability](reliability.svg)\n![confidence](confidence.svg)\n",
            split = p.split
        );
        let html = html_page(
            "MMBoundary report",
            &[
                ("Table 1".into(), format!("<p>{}</p>{}", escape(&judge_note), pre(&table))),
                ("Step-level Brier score".into(), format!("<p>{BRIER_NOTE}</p>{}", pre(&brier))),
                (format!("What MECE rewards ({})", p.split), format!("<p>{ANATOMY_NOTE}</p>{}", pre(&anatomy))),
                (format!("Perception vs reasoning ({})", p.split), pre(&levels)),
                ("Calibration".into(), format!("<div class=\"figs\">{reliability}{hist}</div>")),
                ("Example chains (full method; green: the sentence was right)".into(), examples_html(&examples)),
            ],
        );
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("report.md"), md)?;
        std::fs::write(dir.path().join("report.html"), html)?;
        std::fs::write(dir.path().join("reliability.svg"), reliability)?;
        std::fs::write(dir.path().join("confidence.svg"), hist)?;
        ctx.write_dir("report", dir.path())?;
        Ok(())
    }
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
}
