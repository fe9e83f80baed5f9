//! `csr_pairs`: the Conf-CSR baseline's preference data. On `score`'s sentences of the sampled chains
//! (`generate.samples` > 1), each sentence's CSR self-reward R = (1 − α)·rank(U_LNLP) + α·rank(CLIPScore)
//! ([`crate::confidence::csr`]; ranks among the sentences of its question's chains, lower is better),
//! its confidence (R min-max over the dataset, flipped), its level (the nearest of the five level values)
//! and a statement of that level from the pool after the sentence, as `map` writes the warm-up data;
//! then per question the path with the best mean R (chosen) and the worst (rejected), for `dpo`.
//! Questions with fewer than two chains, or whose chains all score the same, give no pair.
use crate::confidence::consistency::consistency_level;
use crate::confidence::csr::{best_worst, confidences, path_score, sentence_rewards, CLIP_ALPHA};
use crate::confidence::parser::{interleave, render};
use crate::confidence::statements::StatementPool;
use crate::engine::{InputSpec, Stage, StageContext};
use arrow::array::{ArrayRef, AsArray, Float64Builder, StringBuilder, UInt32Builder, UInt8Builder};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, UInt32Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CsrPairsParams {
    /// The statement pools (as `map`'s; its hash is part of the key).
    pub pool: PathBuf,
    /// Seed of the statements' draws (keyed by item, sample and sentence, as `map`'s).
    pub seed: u64,
    /// Splits whose questions become pairs.
    pub splits: Vec<String>,
    /// CSR's α (`clip_alpha`): the weight of the image rank.
    pub clip_alpha: f64,
}

impl Default for CsrPairsParams {
    fn default() -> Self {
        let m = super::map::MapParams::default();
        Self { pool: m.pool, seed: m.seed, splits: m.splits, clip_alpha: CLIP_ALPHA }
    }
}

pub struct CsrPairsStage {
    pub params: CsrPairsParams,
}

/// One preference pair per question: the responses with their statements.
pub fn pairs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("chosen_sample", DataType::UInt32, false),
        Field::new("rejected_sample", DataType::UInt32, false),
        Field::new("chosen_score", DataType::Float64, false),
        Field::new("rejected_score", DataType::Float64, false),
        Field::new("chosen", DataType::Utf8, false),
        Field::new("rejected", DataType::Utf8, false),
    ]))
}

/// One row per scored sentence: its self-reward, confidence and level.
pub fn rewards_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("sample", DataType::UInt32, false),
        Field::new("sentence", DataType::UInt32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("reward", DataType::Float64, false),
        Field::new("confidence", DataType::Float64, false),
        Field::new("level", DataType::UInt8, false),
    ]))
}

impl Stage for CsrPairsStage {
    fn name(&self) -> &str {
        "csr_pairs"
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::new("scored", "score", "scored")]
    }
    fn outputs(&self) -> Vec<String> {
        vec!["pairs".into(), "rewards".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }
    fn models(&self) -> Vec<PathBuf> {
        vec![self.params.pool.clone()]
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.params.pool).map_err(|e| anyhow::anyhow!("{}: {e}", self.params.pool.display()))?;
        let pool = StatementPool::from_toml(&text, &self.params.pool.display().to_string())?;
        let (pairs, rewards) = csr_pairs(&pool, &self.params, &ctx.input_table_as("scored", &super::score::scored_schema())?.concat()?)?;
        anyhow::ensure!(
            pairs.num_rows() > 0,
            "csr_pairs: no question in splits {:?} has two chains that score differently (set generate.samples ≥ 2)",
            self.params.splits
        );
        ctx.write_table("rewards", rewards_schema(), &[rewards], None)?;
        ctx.write_table("pairs", pairs_schema(), &[pairs], None)?;
        Ok(())
    }
}

/// One sentence of a chain, as `score` wrote it.
struct Sentence {
    index: u32,
    text: String,
    lnlp: f64,
    clipscore: f64,
}

/// The pairs and per-sentence rewards of `score`'s table (columns item_id, split, sample, sentence, text,
/// lnlp, clipscore).
pub fn csr_pairs(pool: &StatementPool, params: &CsrPairsParams, scored: &RecordBatch) -> anyhow::Result<(RecordBatch, RecordBatch)> {
    let col = |n: &str| scored.column_by_name(n).ok_or_else(|| anyhow::anyhow!("scored artifact has no column `{n}`"));
    let (ids, splits, texts) = (col("item_id")?.as_string::<i32>(), col("split")?.as_string::<i32>(), col("text")?.as_string::<i32>());
    let (samples, sentence) = (col("sample")?.as_primitive::<UInt32Type>(), col("sentence")?.as_primitive::<UInt32Type>());
    let (lnlp, clip) = (col("lnlp")?.as_primitive::<Float64Type>(), col("clipscore")?.as_primitive::<Float64Type>());
    // Item → sample → sentences, in order.
    let mut items: BTreeMap<String, BTreeMap<u32, Vec<Sentence>>> = BTreeMap::new();
    for r in 0..scored.num_rows() {
        if !params.splits.iter().any(|s| s == splits.value(r)) {
            continue;
        }
        items.entry(ids.value(r).to_string()).or_default().entry(samples.value(r)).or_default().push(Sentence {
            index: sentence.value(r),
            text: texts.value(r).to_string(),
            lnlp: lnlp.value(r),
            clipscore: clip.value(r),
        });
    }
    anyhow::ensure!(!items.is_empty(), "csr_pairs: no scored sentences in splits {:?}", params.splits);
    // R of every sentence, ranked among its question's sentences.
    let mut rewards: BTreeMap<(String, u32), Vec<f64>> = BTreeMap::new();
    for (id, chains) in items.iter_mut() {
        let mut flat: Vec<(u32, usize)> = Vec::new();
        for (sample, sents) in chains.iter_mut() {
            sents.sort_by_key(|s| s.index);
            flat.extend((0..sents.len()).map(|i| (*sample, i)));
        }
        let l: Vec<f64> = flat.iter().map(|&(k, i)| chains[&k][i].lnlp).collect();
        let c: Vec<f64> = flat.iter().map(|&(k, i)| chains[&k][i].clipscore).collect();
        let r = sentence_rewards(&l, &c, params.clip_alpha).map_err(|e| anyhow::anyhow!("item {id}: {e}"))?;
        for (&(k, _), r) in flat.iter().zip(r) {
            rewards.entry((id.clone(), k)).or_default().push(r);
        }
    }
    // Confidences and levels over the whole dataset.
    let all: Vec<f64> = rewards.values().flatten().copied().collect();
    let conf = confidences(&all)?;
    let mut conf_iter = conf.into_iter();
    let mut levels: BTreeMap<(String, u32), Vec<(f64, u8)>> = BTreeMap::new();
    for (key, rs) in &rewards {
        let v: Vec<(f64, u8)> = rs
            .iter()
            .map(|_| {
                let c = conf_iter.next().expect("one confidence per reward");
                Ok((c, consistency_level(c)?))
            })
            .collect::<anyhow::Result<_>>()?;
        levels.insert(key.clone(), v);
    }
    let schema = rewards_schema();
    let (mut w_id, mut w_sample, mut w_sent, mut w_text, mut w_r, mut w_c, mut w_l) = (
        StringBuilder::new(),
        UInt32Builder::new(),
        UInt32Builder::new(),
        StringBuilder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        UInt8Builder::new(),
    );
    let pschema = pairs_schema();
    let (mut p_id, mut p_cs, mut p_rs, mut p_cv, mut p_rv, mut p_c, mut p_r) = (
        StringBuilder::new(),
        UInt32Builder::new(),
        UInt32Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for (id, chains) in &items {
        let mut paths: Vec<(u32, f64, String)> = Vec::new();
        for (sample, sents) in chains {
            let key = (id.clone(), *sample);
            let (rs, lv) = (&rewards[&key], &levels[&key]);
            for ((s, r), (c, l)) in sents.iter().zip(rs).zip(lv) {
                w_id.append_value(id);
                w_sample.append_value(*sample);
                w_sent.append_value(s.index);
                w_text.append_value(&s.text);
                w_r.append_value(*r);
                w_c.append_value(*c);
                w_l.append_value(*l);
            }
            let texts: Vec<String> = sents.iter().map(|s| s.text.clone()).collect();
            let lvls: Vec<u8> = lv.iter().map(|x| x.1).collect();
            let target = render(&interleave(pool, params.seed, &format!("{id}#{sample}"), &texts, &lvls)?);
            paths.push((*sample, path_score(rs)?, target));
        }
        let scores: Vec<f64> = paths.iter().map(|p| p.1).collect();
        if let Some((b, w)) = best_worst(&scores).map_err(|e| anyhow::anyhow!("item {id}: {e}"))? {
            p_id.append_value(id);
            p_cs.append_value(paths[b].0);
            p_rs.append_value(paths[w].0);
            p_cv.append_value(paths[b].1);
            p_rv.append_value(paths[w].1);
            p_c.append_value(&paths[b].2);
            p_r.append_value(&paths[w].2);
        }
    }
    let rcols: Vec<ArrayRef> = vec![
        Arc::new(w_id.finish()),
        Arc::new(w_sample.finish()),
        Arc::new(w_sent.finish()),
        Arc::new(w_text.finish()),
        Arc::new(w_r.finish()),
        Arc::new(w_c.finish()),
        Arc::new(w_l.finish()),
    ];
    let pcols: Vec<ArrayRef> = vec![
        Arc::new(p_id.finish()),
        Arc::new(p_cs.finish()),
        Arc::new(p_rs.finish()),
        Arc::new(p_cv.finish()),
        Arc::new(p_rv.finish()),
        Arc::new(p_c.finish()),
        Arc::new(p_r.finish()),
    ];
    Ok((RecordBatch::try_new(pschema, pcols)?, RecordBatch::try_new(schema, rcols)?))
}
