//! The paper's Table 3 (§5.2): |C_ICE − C_SCE| on a sample of items, internal confidence estimation (the
//! four fused signals, as `bin` maps them) against self-consistency estimation (answer agreement among
//! sampled responses, Yang et al. 2023; Xu et al. 2024), per split: mean, variance, standard deviation and
//! the share of items under 0.1. The report shows it when its `ice_sce` params are set
//! ([`super::report::ReportParams::ice_sce`]), computed from the cached `generate` chains and `bin` levels.
//!
//! Choices (the paper gives only "we randomly sample 50 data from three datasets and compare the
//! confidence scores of the model's responses"):
//! - **The response** of an item is its `generate` chain of sample 0; the item's other chains (samples
//!   1..K−1, drawn at generate's temperature) are the self-consistency samples, as the SC policy samples
//!   K chains besides the chain it scores.
//! - **C_SCE** = the share of those samples whose answer equals the response's
//!   ([`crate::confidence::consistency::answer_agreement`] on [`super::self_consistency::answer_key`]s),
//!   exactly the SC policy's answer confidence; 0 when the response has no answer.
//! - **C_ICE** = the response's answer-level internal confidence: each scored sentence's `bin` level as
//!   its value (level − 1)/4 ([`crate::confidence::level_value`], the internal confidence of the RL
//!   rewards), read as a response confidence by `answer_confidence` (default: the final sentence's, eval's
//!   default rule for ECE).
//! - **The sample**: per split, the `items` items (default 50) with a scored response and at least one
//!   sample, ordered by [`crate::engine::item_seed`]`(seed, id, 0)` (so the draw does not depend on the
//!   order of the artifacts); fewer when the split has fewer.
//! - **Variance** is the population variance (over n), the standard deviation its square root.
use crate::confidence::consistency::answer_agreement;
use crate::confidence::level_value;
use crate::data::Item;
use crate::metrics::accuracy::AccuracyParams;
use crate::metrics::calibration::{answer_confidence, AnswerConfidence};
use arrow::array::AsArray;
use arrow::datatypes::{UInt32Type, UInt8Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Table 3's params (the report's `ice_sce`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceSceParams {
    /// Items drawn per split (the paper: 50).
    pub items: usize,
    /// Seed of the draw.
    pub seed: u64,
    /// How the response's sentence levels become one confidence.
    pub answer_confidence: AnswerConfidence,
}

impl Default for IceSceParams {
    fn default() -> Self {
        Self { items: 50, seed: 0, answer_confidence: AnswerConfidence::default() }
    }
}

/// One drawn item.
#[derive(Debug, Clone, PartialEq)]
pub struct IceSceRow {
    pub item_id: String,
    pub split: String,
    /// Self-consistency samples besides the response.
    pub samples: usize,
    pub c_ice: f64,
    pub c_sce: f64,
}

impl IceSceRow {
    pub fn gap(&self) -> f64 {
        (self.c_ice - self.c_sce).abs()
    }
}

/// One split's line of Table 3.
#[derive(Debug, Clone, PartialEq)]
pub struct IceSceSummary {
    pub split: String,
    pub items: usize,
    pub mean: f64,
    pub var: f64,
    pub std: f64,
    /// Share of items with |C_ICE − C_SCE| < 0.1.
    pub below_0_1: f64,
}

/// The drawn items of every split with their two confidences, from `generate`'s `chains` and `bin`'s
/// `levels`. Errors (naming the artifact, row and column) on a missing column, a chain of an item not in
/// `items`, or a chain without scored sentences being drawn; errors when no item has samples (a `generate`
/// with `samples = 1` cannot give self-consistency).
pub fn ice_sce_rows(items: &[Item], chains: &RecordBatch, levels: &RecordBatch, p: &IceSceParams) -> anyhow::Result<Vec<IceSceRow>> {
    let by_id: HashMap<&str, &Item> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    let col = |b: &RecordBatch, what: &str, n: &str| {
        b.column_by_name(n).cloned().ok_or_else(|| anyhow::anyhow!("{what} artifact has no column `{n}`"))
    };
    // Every chain's answer key, per item, by sample.
    let (ids, splits) = (col(chains, "chains", "item_id")?, col(chains, "chains", "split")?);
    let (ids, splits) = (ids.as_string::<i32>(), splits.as_string::<i32>());
    let samples = col(chains, "chains", "sample")?;
    let samples = samples.as_primitive::<UInt32Type>();
    let sentences = col(chains, "chains", "sentences")?;
    let sentences = sentences.as_list::<i32>();
    let accuracy = AccuracyParams::default();
    let mut keys: BTreeMap<String, (String, BTreeMap<u32, Option<String>>)> = BTreeMap::new();
    for r in 0..chains.num_rows() {
        let id = ids.value(r);
        let item = by_id.get(id).ok_or_else(|| anyhow::anyhow!("chains row {r}: item {id} is not in the dataset"))?;
        let list = sentences.value(r);
        let sents: Vec<&str> = list.as_string::<i32>().iter().map(|s| s.unwrap_or_default()).collect();
        let key = super::self_consistency::answer_key(item, &sents, &accuracy);
        let entry = keys.entry(id.to_string()).or_insert_with(|| (splits.value(r).to_string(), BTreeMap::new()));
        anyhow::ensure!(entry.1.insert(samples.value(r), key).is_none(), "chains row {r}: item {id} has sample {} twice", samples.value(r));
    }
    // The response's (sample 0) sentence levels, in sentence order.
    let (lid, lsample) = (col(levels, "levels", "item_id")?, col(levels, "levels", "sample")?);
    let (lid, lsample) = (lid.as_string::<i32>(), lsample.as_primitive::<UInt32Type>());
    let (lsent, llevel) = (col(levels, "levels", "sentence")?, col(levels, "levels", "level")?);
    let (lsent, llevel) = (lsent.as_primitive::<UInt32Type>(), llevel.as_primitive::<UInt8Type>());
    let mut response_levels: HashMap<String, Vec<(u32, u8)>> = HashMap::new();
    for r in 0..levels.num_rows() {
        if lsample.value(r) == 0 {
            response_levels.entry(lid.value(r).to_string()).or_default().push((lsent.value(r), llevel.value(r)));
        }
    }
    // The draw: per split, items with a scored response and samples, by their seeded order.
    let mut candidates: BTreeMap<String, Vec<(u64, &str)>> = BTreeMap::new();
    for (id, (split, chain_keys)) in &keys {
        if chain_keys.len() >= 2 && chain_keys.contains_key(&0) && response_levels.contains_key(id) {
            candidates.entry(split.clone()).or_default().push((crate::engine::item_seed(p.seed, id, 0), id.as_str()));
        }
    }
    anyhow::ensure!(
        !candidates.is_empty(),
        "Table 3 (ice_sce) needs items with a scored response and at least one more sampled chain: set `generate.samples` to 2 or more"
    );
    let mut out = Vec::new();
    for (split, mut cands) in candidates {
        cands.sort_unstable();
        for (_, id) in cands.into_iter().take(p.items) {
            let chain_keys = &keys[id].1;
            let own = chain_keys[&0].as_deref();
            let others: Vec<Option<String>> = chain_keys.iter().filter(|(s, _)| **s != 0).map(|(_, k)| k.clone()).collect();
            let c_sce = answer_agreement(own, &others).map_err(|e| anyhow::anyhow!("item {id}: {e}"))?;
            let mut lv = response_levels[id].clone();
            lv.sort_unstable();
            let values: Vec<f64> = lv.iter().map(|&(_, l)| level_value(l)).collect();
            let c_ice = answer_confidence(0, &values, p.answer_confidence).map_err(|e| anyhow::anyhow!("item {id}: {e}"))?;
            out.push(IceSceRow { item_id: id.to_string(), split: split.clone(), samples: others.len(), c_ice, c_sce });
        }
    }
    Ok(out)
}

/// Table 3's line per split, in the order the splits first appear in `rows`.
pub fn summarize(rows: &[IceSceRow]) -> Vec<IceSceSummary> {
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.split.as_str()) {
            order.push(&r.split);
        }
    }
    order
        .into_iter()
        .map(|split| {
            let gaps: Vec<f64> = rows.iter().filter(|r| r.split == split).map(IceSceRow::gap).collect();
            let n = gaps.len() as f64;
            let mean = gaps.iter().sum::<f64>() / n;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
            let below = gaps.iter().filter(|&&g| g < 0.1).count() as f64 / n;
            IceSceSummary { split: split.to_string(), items: gaps.len(), mean, var, std: var.sqrt(), below_0_1: below }
        })
        .collect()
}

/// Table 3's heading in the report.
pub const HEADING: &str = "Internal vs self-consistency confidence (Table 3)";

/// Why Table 3 is what it is (shown above it).
pub const NOTE: &str = "|C_ICE − C_SCE| per item (the paper's Table 3): C_ICE is the response's internal confidence (its \
sentences' bin levels as (level − 1)/4, read as an answer confidence); C_SCE is the share of the item's other sampled \
chains (generate's samples 1..K−1) that give the response's answer, the SC policy's answer confidence. The response is \
generate's sample 0. Var is over n.";

/// Table 3 as Markdown: one line per split with the number of items; `samples` says how many
/// self-consistency samples each item had.
pub fn markdown(summaries: &[IceSceSummary], samples: &str) -> String {
    let mut s = format!(
        "Self-consistency samples per item: {samples}.\n\n| split | items | Mean | Var | Std | <0.1 |\n|---|---|---|---|---|---|\n"
    );
    for r in summaries {
        s.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:.4} | {:.0} % |\n",
            r.split,
            r.items,
            r.mean,
            r.var,
            r.std,
            100.0 * r.below_0_1
        ));
    }
    s
}

/// Table 3 (Markdown) from the artifacts.
pub fn table(items: &[Item], chains: &RecordBatch, levels: &RecordBatch, p: &IceSceParams) -> anyhow::Result<String> {
    let rows = ice_sce_rows(items, chains, levels, p)?;
    let mut ks: Vec<usize> = rows.iter().map(|r| r.samples).collect();
    ks.sort_unstable();
    ks.dedup();
    let samples = ks.iter().map(usize::to_string).collect::<Vec<_>>().join(" or ");
    Ok(markdown(&summarize(&rows), &samples))
}
