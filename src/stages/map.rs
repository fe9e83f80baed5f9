//! `map`: the warm-up (SFT) data (§3.1.2): every generated sentence followed by a confidence statement
//! drawn from the pool of its level, keyed by item and sentence so the draw is reproducible.
use crate::confidence::parser::{interleave, render, render_after_response, ParsedPair};
use crate::confidence::statements::StatementPool;
use crate::engine::{InputSpec, Stage, StageContext};
use arrow::array::{ArrayRef, AsArray, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt8Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapParams {
    /// The statement pools (5 levels × 40), a file a user can swap; its hash is part of the key.
    pub pool: PathBuf,
    /// Seed of the forward map's draws.
    pub seed: u64,
    /// Splits that become SFT examples.
    pub splits: Vec<String>,
    /// Where each sentence's level comes from: the fused signals (`bin`'s levels, the paper's method) or
    /// the answer consistency of the item's sampled chains (the Multisample baseline). Left out of the
    /// params (and the cache key) when it is the default.
    #[serde(skip_serializing_if = "LevelSource::is_signals")]
    pub levels_from: LevelSource,
    /// How the confidence is written: a pool statement after every sentence (default); with
    /// `levels_from = "answer_consistency"`, once after the response as "Confidence: N/10." (N = the
    /// consistency on SaySelf's 0–10 scale, rounded), SaySelf's `sft_without_reason_with_conf` target: the
    /// self-reflective rationale SaySelf has GPT-4 write is left out (it needs an outside LLM); or every
    /// sentence's pool statement after the whole response, "<chain>\nConfidence: [1] <statement> [2] …"
    /// (`after_response`, the RCE baseline; [`render_after_response`]).
    #[serde(skip_serializing_if = "StatementFormat::is_pool")]
    pub format: StatementFormat,
}

/// How [`consistency_sft_data`] writes a chain's confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementFormat {
    #[default]
    Pool,
    ResponseNumeric,
    AfterResponse,
}

impl StatementFormat {
    fn is_pool(&self) -> bool {
        *self == StatementFormat::Pool
    }
}

/// The levels of the SFT statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelSource {
    /// `bin`'s levels of the four fused signals (MMBoundary).
    #[default]
    Signals,
    /// The Multisample baseline (Yang et al. 2023, as MMBoundary reads it: "train to output confidence that
    /// matches self-consistency"): a chain's confidence is the share of its item's sampled chains (the
    /// `generate` samples, itself included) that give its answer, k/m as Yang's CONFIDENCE-VERB with
    /// self-consistency in place of ground truth; the statement of the nearest level follows every
    /// sentence (a response-level confidence, broadcast). Reads `generate`'s chains and the items, not `bin`.
    AnswerConsistency,
}

impl LevelSource {
    fn is_signals(&self) -> bool {
        *self == LevelSource::Signals
    }
}

impl Default for MapParams {
    fn default() -> Self {
        Self {
            pool: PathBuf::from("stages/statements.toml"),
            seed: 0,
            splits: vec!["train".into()],
            levels_from: LevelSource::Signals,
            format: StatementFormat::Pool,
        }
    }
}

pub struct MapStage {
    pub params: MapParams,
}

/// One SFT example per chain: the target is the chain with statements interleaved.
pub fn sft_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("sample", DataType::UInt32, false),
        Field::new("target", DataType::Utf8, false),
    ]))
}

impl Stage for MapStage {
    fn name(&self) -> &str {
        "map"
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        match self.params.levels_from {
            LevelSource::Signals => vec![InputSpec::new("levels", "bin", "levels")],
            LevelSource::AnswerConsistency => {
                vec![InputSpec::new("chains", "generate", "chains"), InputSpec::new("items", "dataset", "items")]
            }
        }
    }
    fn outputs(&self) -> Vec<String> {
        vec!["sft_data".into()]
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
        if self.params.levels_from == LevelSource::AnswerConsistency {
            let chains = ctx.input_table_as("chains", &super::generate::chains_schema())?.concat()?;
            let items = crate::data::items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
            let batch = consistency_sft_data(&pool, &self.params, &items, &chains)?;
            ctx.write_table("sft_data", sft_schema(), &[batch], None)?;
            return Ok(());
        }
        anyhow::ensure!(
            self.params.format != StatementFormat::ResponseNumeric,
            "map: format = \"response_numeric\" needs levels_from = \"answer_consistency\" (a response-level confidence)"
        );
        let t = ctx.input_table_as("levels", &super::bin::levels_schema())?.concat()?;
        let col = |n: &str| t.column_by_name(n).ok_or_else(|| anyhow::anyhow!("levels artifact has no column `{n}`"));
        let (ids, splits, texts) = (col("item_id")?.as_string::<i32>(), col("split")?.as_string::<i32>(), col("text")?.as_string::<i32>());
        let (samples, sentence, level) = (
            col("sample")?.as_primitive::<UInt32Type>(),
            col("sentence")?.as_primitive::<UInt32Type>(),
            col("level")?.as_primitive::<UInt8Type>(),
        );
        // Group sentences by chain, in sentence order.
        let mut chains: BTreeMap<(String, u32), Vec<(u32, String, u8)>> = BTreeMap::new();
        for r in 0..t.num_rows() {
            if !self.params.splits.iter().any(|s| s == splits.value(r)) {
                continue;
            }
            chains.entry((ids.value(r).to_string(), samples.value(r))).or_default().push((
                sentence.value(r),
                texts.value(r).to_string(),
                level.value(r),
            ));
        }
        anyhow::ensure!(!chains.is_empty(), "no scored chains in splits {:?}", self.params.splits);
        let mut rows = Vec::with_capacity(chains.len());
        for ((id, sample), mut sents) in chains {
            sents.sort_by_key(|s| s.0);
            let texts: Vec<String> = sents.iter().map(|s| s.1.clone()).collect();
            let levels: Vec<u8> = sents.iter().map(|s| s.2).collect();
            let target = signals_target(&pool, &self.params, &format!("{id}#{sample}"), &texts, &levels)?;
            rows.push((id, sample, target));
        }
        let (mut o_id, mut o_sample, mut o_target) = (StringBuilder::new(), UInt32Builder::new(), StringBuilder::new());
        for (id, sample, target) in rows {
            o_id.append_value(&id);
            o_sample.append_value(sample);
            o_target.append_value(target);
        }
        let cols: Vec<ArrayRef> = vec![Arc::new(o_id.finish()), Arc::new(o_sample.finish()), Arc::new(o_target.finish())];
        ctx.write_table("sft_data", sft_schema(), &[RecordBatch::try_new(sft_schema(), cols)?], None)?;
        Ok(())
    }
}

/// The SFT target of one chain from its sentences' levels (`levels_from = "signals"`): each level's pool
/// statement (drawn keyed by `key`, the chain, and the sentence index) after its sentence (`pool`) or all
/// after the response (`after_response`, RCE).
pub fn signals_target(pool: &StatementPool, params: &MapParams, key: &str, sentences: &[String], levels: &[u8]) -> anyhow::Result<String> {
    let pairs = interleave(pool, params.seed, key, sentences, levels)?;
    Ok(match params.format {
        StatementFormat::AfterResponse => render_after_response(&pairs),
        _ => render(&pairs),
    })
}

/// The Multisample baseline's SFT data ([`LevelSource::AnswerConsistency`]) from `generate`'s chains:
/// per chain, the share of its item's chains with the same answer, said after every sentence.
pub fn consistency_sft_data(
    pool: &StatementPool,
    params: &MapParams,
    items: &[crate::data::Item],
    chains: &RecordBatch,
) -> anyhow::Result<RecordBatch> {
    use crate::confidence::consistency::{answer_agreement, consistency_level};
    let col = |n: &str| chains.column_by_name(n).ok_or_else(|| anyhow::anyhow!("chains artifact has no column `{n}`"));
    let (ids, splits) = (col("item_id")?.as_string::<i32>(), col("split")?.as_string::<i32>());
    let (samples, sentences) = (col("sample")?.as_primitive::<UInt32Type>(), col("sentences")?.as_list::<i32>());
    let by_id: std::collections::HashMap<&str, &crate::data::Item> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    let accuracy = crate::metrics::accuracy::AccuracyParams::default();
    // Item → its chains (sample, sentences, answer key), in sample order.
    let mut groups: BTreeMap<String, Vec<(u32, Vec<String>, Option<String>)>> = BTreeMap::new();
    for r in 0..chains.num_rows() {
        if !params.splits.iter().any(|s| s == splits.value(r)) {
            continue;
        }
        let id = ids.value(r);
        let item = by_id.get(id).ok_or_else(|| anyhow::anyhow!("chains row {r}: item {id} is not in the dataset"))?;
        let list = sentences.value(r);
        let sents: Vec<String> = list.as_string::<i32>().iter().map(|s| s.unwrap_or_default().to_string()).collect();
        let refs: Vec<&str> = sents.iter().map(String::as_str).collect();
        let key = super::self_consistency::answer_key(item, &refs, &accuracy);
        groups.entry(id.to_string()).or_default().push((samples.value(r), sents, key));
    }
    anyhow::ensure!(!groups.is_empty(), "no generated chains in splits {:?}", params.splits);
    let (mut o_id, mut o_sample, mut o_target) = (StringBuilder::new(), UInt32Builder::new(), StringBuilder::new());
    for (id, mut group) in groups {
        group.sort_by_key(|g| g.0);
        let keys: Vec<Option<String>> = group.iter().map(|g| g.2.clone()).collect();
        for (sample, sents, key) in &group {
            if sents.is_empty() {
                continue;
            }
            let consistency = answer_agreement(key.as_deref(), &keys)?;
            let target = match params.format {
                StatementFormat::Pool => {
                    let level = consistency_level(consistency)?;
                    render(&interleave(pool, params.seed, &format!("{id}#{sample}"), sents, &vec![level; sents.len()])?)
                }
                StatementFormat::AfterResponse => {
                    let level = consistency_level(consistency)?;
                    render_after_response(&interleave(pool, params.seed, &format!("{id}#{sample}"), sents, &vec![level; sents.len()])?)
                }
                StatementFormat::ResponseNumeric => {
                    let pairs: Vec<ParsedPair> = sents.iter().map(|s| ParsedPair { sentence: s.clone(), statement: None }).collect();
                    format!("{} Confidence: {}/10.", render(&pairs), (consistency * 10.0).round() as u32)
                }
            };
            o_id.append_value(&id);
            o_sample.append_value(*sample);
            o_target.append_value(target);
        }
    }
    let cols: Vec<ArrayRef> = vec![Arc::new(o_id.finish()), Arc::new(o_sample.finish()), Arc::new(o_target.finish())];
    Ok(RecordBatch::try_new(sft_schema(), cols)?)
}
