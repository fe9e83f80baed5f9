//! `eval`: chains from three policies — `vanilla` (the base model), `sft` (base + the SFT checkpoint,
//! the paper's "w/o RL") and `full` (base + the PPO checkpoint) — on the val, test and out-of-domain
//! splits, judged sentence by sentence and summarized as the paper's metrics (ECE, MECE, accuracy,
//! chain F1, AUROC; MECE and chain F1 also per level, perception vs reasoning, Figure 4).
//! Generation runs in the `mmb-torch` worker; judging and metrics are here ([`evaluate`]).
//!
//! Choices (paper: silent): a sentence is correct when its judge's best score against a reference
//! sentence is above `match_threshold` (`judge`: MiniLM cosine, or the paper's cross-encoder; both
//! recorded in every row); a sentence
//! without statement gets `missing_confidence`; the answer is read after the last "the answer is" of the
//! chain with its statements stripped, and scored as its benchmark does ([`answer_correct`]).
use super::chain_judge::ChainJudge;
use super::judges::JudgeParams;
use crate::confidence::parser::ParserParams;
use crate::confidence::rewards::sentence_correctness;
use crate::confidence::statements::BackwardParams;
use crate::data::Item;
use crate::encoders::minilm::DEFAULT_MODEL_DIR;
use crate::encoders::runtime::{ExecutionProvider, SessionOptions};
use crate::engine::{InputSpec, Stage, StageContext};
use crate::metrics::accuracy::{aokvqa_direct, choice_accuracy, choice_from_answer, cultural_match, extract_final_answer, AokvqaSetting};
use crate::metrics::auroc::auroc;
use crate::metrics::by_level::{assign_levels, chain_f1_by_level, level_subset, ChainLevel};
use crate::metrics::calibration::{answer_confidence, ece, mece, step_brier};
use crate::metrics::chain::{chain_f1, ChainItem};
use crate::metrics::MetricsParams;
use arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, ListBuilder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, UInt32Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

pub const VARIANTS: [&str; 3] = ["vanilla", "sft", "full"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalParams {
    pub model: Option<PathBuf>,
    /// The prompt template (see `generate`; unset: the model's own).
    pub prompt: Option<String>,
    /// A line closing the user's turn after the options (the prompted baselines' request for confidences,
    /// stages/baselines.toml), in the model's own chat format; left out of the key when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    pub device: String,
    pub dtype: String,
    /// Which of `vanilla`, `sft`, `full` to evaluate (or a baseline's policy: `sc`, `dpo`).
    pub variants: Vec<String>,
    /// The paper's val/test and the out-of-domain split.
    pub splits: Vec<String>,
    /// At most this many questions per split (None: all).
    pub limit: Option<usize>,
    pub max_new_tokens: usize,
    /// Paper: unstated for evaluation. We chose greedy (0), so the three policies are compared on their
    /// modes and a rerun is exact.
    pub temperature: f64,
    /// Chains per generation batch (left-padded, each row masked: the batch sets the speed, not the chains).
    pub batch: usize,
    pub seed: u64,
    pub minilm: PathBuf,
    pub pool: PathBuf,
    pub parser: ParserParams,
    pub backward: BackwardParams,
    /// What judges a generated sentence against the reference sentences: MiniLM cosine (default) or a
    /// cross-encoder folder (the paper's cross-encoder/stsb-roberta-large, exported with
    /// `scripts/export_onnx.py cross-encoder`). Recorded with the threshold in every row.
    pub judge: JudgeParams,
    /// I(z) = 1 when the judge's best score against a reference sentence is strictly above this (the
    /// paper's 0.64 is for the stsb cross-encoder; with MiniLM cosine it is a stand-in).
    pub match_threshold: f64,
    /// Where the judge's ONNX encoders run (as `score`'s `execution_provider`; no silent fallback).
    pub execution_provider: ExecutionProvider,
    /// Confidence given to a sentence that carries no statement (None: such sentences are left out of
    /// the calibration metrics). We chose 0.5, "no information".
    pub missing_confidence: Option<f64>,
    /// ECE bins, chain-F1 threshold, answer matching, answer-level confidence.
    pub metrics: MetricsParams,
    /// The SC baseline's sampling (policy `sc`, [`super::self_consistency`]). Left out of the params (and
    /// so of the cache key) when it is the default.
    #[serde(skip_serializing_if = "super::self_consistency::ScParams::is_default")]
    pub sc: super::self_consistency::ScParams,
    /// A response-level confidence (the SaySelf baseline writes one, after the answer) stands for every
    /// sentence of its chain that has no statement of its own, instead of `missing_confidence`: the chain's
    /// last stated confidence, broadcast. Left out of the params (and the key) when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub broadcast_last_statement: bool,
    /// Also answer every question with another item's image (`stages::image_swap`; doubles the
    /// generation): the `image_swap` table, which says whether each variant uses its image.
    pub image_swap: bool,
}

impl Default for EvalParams {
    fn default() -> Self {
        let g = super::generate::GenerateParams::default();
        Self {
            model: g.model,
            prompt: g.prompt,
            instruction: None,
            device: g.device,
            dtype: g.dtype,
            variants: VARIANTS.map(String::from).to_vec(),
            splits: vec!["val".into(), "test".into(), "ood".into()],
            limit: None,
            max_new_tokens: g.max_new_tokens,
            temperature: 0.0,
            batch: g.batch,
            seed: 0,
            minilm: PathBuf::from(DEFAULT_MODEL_DIR),
            pool: super::map::MapParams::default().pool,
            parser: ParserParams::default(),
            backward: BackwardParams::default(),
            judge: JudgeParams::default(),
            match_threshold: 0.64,
            execution_provider: ExecutionProvider::Cpu,
            missing_confidence: Some(0.5),
            metrics: MetricsParams::default(),
            sc: Default::default(),
            broadcast_last_statement: false,
            image_swap: true,
        }
    }
}

/// `eval_chains`: the policies' chains on the selected questions, each judged sentence by sentence (and
/// answered again with another item's image): per-item rows, so it may run on shards of its items.
pub struct EvalChainsStage {
    pub params: EvalParams,
}

/// `eval`: the metrics, computed from eval_chains' merged rows (cheap; runs here).
pub struct EvalStage {
    pub params: EvalParams,
}

/// eval_chains, then eval (both configured by `stages/eval.toml`).
pub fn stages(params: EvalParams) -> Vec<Box<dyn Stage>> {
    vec![Box::new(EvalChainsStage { params: params.clone() }), Box::new(EvalStage { params })]
}

impl EvalParams {
    /// The session options of the execution provider (no CPU fallback).
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions { provider: self.execution_provider.clone(), allow_cpu_fallback: false, ..SessionOptions::default() }
    }

    /// The MLLM this stage runs (`super::models::ModelSettings`).
    pub fn mllm(&self) -> super::models::ModelSettings<'_> {
        super::models::ModelSettings { model: &self.model, prompt: &self.prompt, device: &self.device, dtype: &self.dtype }
    }
}

impl Stage for EvalChainsStage {
    fn name(&self) -> &str {
        "eval_chains"
    }
    /// 1: eval's per-item half (was `eval` 5: each item's chain seeded by its id; the `image_swap` output),
    /// rows item by item, with each sentence's `similarity` and a `chains` table.
    /// 2: only items with a reference chain are evaluated ([`select`]; one without stopped the stage).
    fn code_version(&self) -> &str {
        "2"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        // A checkpoint is an input only when a policy reads it (a baseline of `mmb compare` that evaluates
        // the vanilla model alone needs no training); the default three policies read both.
        let wants = |v: &str| self.params.variants.iter().any(|x| x == v);
        vec![InputSpec::new("items", "dataset", "items"), InputSpec::new("features", "features", "features")]
            .into_iter()
            // The whole dataset, unsharded: the image-swap partners are drawn from the whole selection.
            .chain(self.params.image_swap.then(|| InputSpec::new("all_items", "dataset", "items")))
            .chain(wants("sft").then(|| InputSpec::new("sft_checkpoint", "sft", "checkpoint")))
            .chain(wants("full").then(|| InputSpec::new("ppo_checkpoint", "ppo", "checkpoint")))
            .chain(wants(super::dpo::DPO_POLICY).then(|| InputSpec::new("dpo_checkpoint", "dpo", "checkpoint")))
            .chain(self.params.mllm().input())
            .collect()
    }
    fn outputs(&self) -> Vec<String> {
        vec!["chains".into(), "sentences".into(), "image_swap".into()]
    }
    /// With the prompt resolved ([`super::models::prompt`]).
    fn params(&self) -> serde_json::Value {
        let p = EvalParams { prompt: self.params.mllm().prompt(), ..self.params.clone() };
        serde_json::to_value(&p).expect("params serialize")
    }
    fn models(&self) -> Vec<PathBuf> {
        let mut v = vec![self.params.minilm.join("onnx/model.onnx"), self.params.minilm.join("tokenizer.json"), self.params.pool.clone()];
        v.extend(self.params.mllm().files());
        v.extend(self.params.judge.model_files());
        v
    }
    fn device(&self) -> String {
        self.params.mllm().device_key()
    }
    /// Each item's chains (greedy, or sampled from its own seed streams), their judging and its image-swap
    /// chain depend on the item alone (its swap partner comes from the whole selection, `all_items`).
    fn shard(&self) -> Option<crate::engine::ShardSpec> {
        Some(crate::engine::ShardSpec::new("items", "item_id").with_input_key("id"))
    }
    /// The questions [`select`] picks, in its order (split by split).
    fn shard_items(&self, items: &RecordBatch) -> anyhow::Result<RecordBatch> {
        let all = crate::data::items_from_record_batch(items)?;
        let ids = crate::engine::shard::key_column(items, "id", "eval_chains: input `items`")?;
        let row: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let chosen = selection(&all, &self.params.splits, self.params.limit);
        if let Some(note) = chosen.note() {
            tracing::warn!("{note}");
        }
        let take: Vec<u32> = chosen.items.iter().map(|it| row[it.id.as_str()] as u32).collect();
        Ok(arrow::compute::take_record_batch(items, &arrow::array::UInt32Array::from(take))?)
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        super::worker::run_in_worker(ctx)
    }
}

/// What eval's metrics depend on beyond eval_chains' rows (the threshold, missing-statement rule and
/// answer scoring are already in those rows).
#[derive(Serialize)]
struct EvalMetricsKey<'a> {
    metrics: &'a MetricsParams,
}

impl Stage for EvalStage {
    fn name(&self) -> &str {
        "eval"
    }
    /// 6: the metrics alone, from eval_chains' rows (5: the whole eval in the worker).
    fn code_version(&self) -> &str {
        "6"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec::new("items", "dataset", "items"),
            InputSpec::new("chains", "eval_chains", "chains"),
            InputSpec::new("sentences", "eval_chains", "sentences"),
        ]
    }
    fn outputs(&self) -> Vec<String> {
        vec!["metrics".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(EvalMetricsKey { metrics: &self.params.metrics }).expect("params serialize")
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let items = crate::data::items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
        let (chains, sentences) =
            (ctx.input_table_as("chains", &chains_schema())?.concat()?, ctx.input_table_as("sentences", &sentences_schema())?.concat()?);
        let metrics = metrics_from_rows(&items, &chains, &sentences, &self.params.metrics)?;
        ctx.write_table("metrics", metrics_schema(), &[metrics], None)?;
        Ok(())
    }
}

/// eval_chains' outputs from the generated chains (the worker's part ends here): judged, scored and
/// written item by item.
pub fn write_judged(
    ctx: &StageContext,
    judge: &ChainJudge,
    items: &[Item],
    chains: &[EvalChain],
    swap: (&[EvalChain], &[EvalChain], &[String]),
    params: &EvalParams,
) -> anyhow::Result<()> {
    let t = judge_chains(judge, items, chains, swap, params)?;
    ctx.write_table("chains", chains_schema(), &[t.chains], None)?;
    ctx.write_table("sentences", sentences_schema(), &[t.sentences], None)?;
    ctx.write_table("image_swap", super::image_swap::schema(), &[t.image_swap], None)?;
    Ok(())
}

/// One generated chain to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalChain {
    pub variant: String,
    pub item_id: String,
    pub text: String,
}

/// One row per judged sentence.
pub fn sentences_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("variant", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("sentence_index", DataType::UInt32, false),
        Field::new("sentence", DataType::Utf8, false),
        Field::new("statement", DataType::Utf8, true),
        Field::new("confidence", DataType::Float64, true),
        Field::new("correct", DataType::Boolean, false),
        Field::new("level", DataType::Utf8, false),
        Field::new("answer_correct", DataType::Float64, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("judge", DataType::Utf8, false),
        // The confidence the calibration metrics used (the statement's, or `missing_confidence`; null when
        // the sentence was left out), so the report can recompute them on bootstrap resamples.
        Field::new("metric_confidence", DataType::Float64, true),
        // The judge's score of the sentence against each reference sentence (perception first), from which
        // eval computes the sentence's level and chain F1.
        Field::new("similarity", DataType::List(Arc::new(Field::new("item", DataType::Float64, true))), false),
    ]))
}

/// One row per (variant, split, level); `level` is `all`, `perception` or `reasoning`. Metrics that
/// are not defined for a cell (AUROC with one class, answer-level metrics by level) are null.
pub fn metrics_schema() -> SchemaRef {
    let f = |n: &str| Field::new(n, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        Field::new("variant", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("level", DataType::Utf8, false),
        Field::new("responses", DataType::UInt64, false),
        Field::new("sentences", DataType::UInt64, false),
        f("ece"),
        f("mece"),
        f("brier"),
        f("accuracy"),
        f("chain_f1"),
        f("auroc"),
        // How ECE and AUROC were computed from the sentences (the report's intervals recompute them).
        Field::new("ece_bins", DataType::UInt64, false),
        Field::new("answer_confidence", DataType::Utf8, false),
    ]))
}

/// Answer accuracy of a chain as its benchmark scores it, from the chain's sentences with their
/// statements already stripped (so "…the answer is hot and I believe this is right." answers "hot"):
/// the answer is the text after the last answer marker ([`extract_final_answer`]), then
/// - A-OKVQA: the chosen option (`metrics.accuracy.aokvqa = "multiple_choice"`, the default) or the
///   official direct-answer score min(#annotators who gave it / 3, 1) (`"direct_answer"`);
/// - ScienceQA: the chosen option;
/// - CulturalVQA: its paper's judge is an LLM (LAVE), unavailable here; a reference answer contained in
///   the answer (or equal to it, `metrics.accuracy.cultural_match`);
/// - other sources (the embedded benchmark): the chosen option when the item has options, else as
///   CulturalVQA.
pub fn answer_correct(item: &Item, sentences: &[&str], params: &MetricsParams) -> f64 {
    let stripped = sentences.iter().map(|s| s.trim()).collect::<Vec<_>>().join(" ");
    let Some(answer) = extract_final_answer(&stripped, &params.accuracy) else { return 0.0 };
    let norm = &params.accuracy.normalization;
    let choice = |item: &Item| match item.correct_choice {
        Some(c) if !item.choices.is_empty() => choice_accuracy(choice_from_answer(&answer, &item.choices, norm), c as usize),
        _ => 0.0,
    };
    let free_text = |item: &Item| {
        let mut refs = item.direct_answers.clone();
        refs.extend(item.answer.clone());
        cultural_match(&answer, &refs, &params.accuracy)
    };
    match item.source.as_str() {
        "aokvqa" => match params.accuracy.aokvqa {
            AokvqaSetting::MultipleChoice => choice(item),
            AokvqaSetting::DirectAnswer => aokvqa_direct(&answer, &item.direct_answers, norm),
        },
        "scienceqa" => choice(item),
        "culturalvqa" => free_text(item),
        _ if item.correct_choice.is_some() && !item.choices.is_empty() => choice(item),
        _ => free_text(item),
    }
}

/// What the metrics need of one judged chain (read back from eval_chains' rows by [`metrics_from_rows`]).
struct Judged {
    split: String,
    sentence_correct: Vec<bool>,
    /// The confidence the metrics use (`metric_confidence`): the statement's, or the missing-statement value.
    confidence: Vec<Option<f64>>,
    levels: Vec<ChainLevel>,
    ref_levels: Vec<ChainLevel>,
    similarity: Vec<Vec<f64>>,
    answer_correct: f64,
}

fn level_of(name: &str) -> Option<ChainLevel> {
    match name {
        "perception" => Some(ChainLevel::Perception),
        "reasoning" => Some(ChainLevel::Reasoning),
        _ => None,
    }
}

/// An item's reference sentences' levels: its perception sentences, then its reasoning ones.
pub fn reference_levels(item: &Item) -> Vec<ChainLevel> {
    item.chain.perception.iter().map(|_| ChainLevel::Perception).chain(item.chain.reasoning.iter().map(|_| ChainLevel::Reasoning)).collect()
}

/// The questions eval answers: for each of `splits` in turn, that split's items with a reference chain
/// (every chain is judged against it) in the dataset's order, the first `limit` of them. This order is
/// eval_chains' row order (and a shard's, restricted to its items). [`selection`] also counts the items
/// left out.
pub fn select<'a>(items: &'a [Item], splits: &[String], limit: Option<usize>) -> Vec<&'a Item> {
    selection(items, splits, limit).items
}

/// [`select`]'s questions, and how many items of each split it left out for want of a reference chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection<'a> {
    pub items: Vec<&'a Item>,
    /// (split, its items without a reference chain), for the splits that have any, in `splits` order.
    pub unjudgeable: Vec<(String, usize)>,
}

impl Selection<'_> {
    /// A line saying how many items were left out, by split (None when none was).
    pub fn note(&self) -> Option<String> {
        let total: usize = self.unjudgeable.iter().map(|(_, n)| n).sum();
        (total > 0).then(|| {
            let by: Vec<String> = self.unjudgeable.iter().map(|(s, n)| format!("{s}: {n}")).collect();
            format!("eval: {total} items without a reference chain to judge against are not evaluated ({})", by.join(", "))
        })
    }
}

/// [`select`], with the count of items it left out (the limit counts evaluated questions).
pub fn selection<'a>(items: &'a [Item], splits: &[String], limit: Option<usize>) -> Selection<'a> {
    let (mut selected, mut unjudgeable) = (Vec::new(), Vec::new());
    for split in splits {
        let (mut s, left_out): (Vec<&Item>, Vec<&Item>) = items.iter().filter(|it| &it.split == split).partition(|it| !it.chain.is_empty());
        if !left_out.is_empty() {
            unjudgeable.push((split.clone(), left_out.len()));
        }
        if let Some(n) = limit {
            s.truncate(n);
        }
        selected.extend(s);
    }
    Selection { items: selected, unjudgeable }
}

/// For each item of `selected` (all of them, or one shard's), the item whose image it gets in the
/// image-swap pass: its partner ([`super::image_swap::partners`]) within the whole selection of `all`
/// (the dataset), so an item gets the same image however the items are sharded.
pub fn swap_partners<'a>(all: &'a [Item], selected: &[&Item], p: &EvalParams) -> anyhow::Result<Vec<&'a Item>> {
    let whole = select(all, &p.splits, p.limit);
    let splits: Vec<&str> = whole.iter().map(|it| it.split.as_str()).collect();
    let partners = super::image_swap::partners(&splits);
    let of: HashMap<&str, &'a Item> = whole.iter().zip(&partners).map(|(it, &k)| (it.id.as_str(), whole[k])).collect();
    selected
        .iter()
        .map(|it| {
            of.get(it.id.as_str()).copied().ok_or_else(|| anyhow::anyhow!("eval: item {} is not among the selected questions", it.id))
        })
        .collect()
}

/// One row per evaluated chain (variant × item): what the metrics need beyond its sentences' rows (a
/// chain may have no sentence at all and still counts as a response).
pub fn chains_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("variant", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("answer_correct", DataType::Float64, false),
        Field::new("sentences", DataType::UInt32, false),
    ]))
}

/// eval_chains' tables: `chains`, `sentences` (with each sentence's judge scores against the reference
/// sentences, `similarity`) and `image_swap`.
#[derive(Debug, Clone)]
pub struct JudgedTables {
    pub chains: RecordBatch,
    pub sentences: RecordBatch,
    pub image_swap: RecordBatch,
}

/// The order eval_chains writes rows in: item by item (in the order the chains first name them, i.e. the
/// selection's), each item's variants in the order they came. The merge of shards writes the same.
fn item_major(chains: &[EvalChain]) -> Vec<usize> {
    let mut rank: HashMap<&str, usize> = HashMap::new();
    for c in chains {
        let n = rank.len();
        rank.entry(c.item_id.as_str()).or_insert(n);
    }
    let mut idx: Vec<usize> = (0..chains.len()).collect();
    idx.sort_by_key(|&i| rank[chains[i].item_id.as_str()]);
    idx
}

/// Judges every chain sentence by sentence and scores its answer: the `chains` and `sentences` tables,
/// item-major ([`item_major`]); and the `image_swap` table from the own-image chains `own` (empty when
/// the pass is off) and the `swapped` ones (`swapped_from[i]`: whose image `swapped[i]` saw).
pub fn judge_chains(
    judge: &ChainJudge,
    items: &[Item],
    chains: &[EvalChain],
    own_and_swapped: (&[EvalChain], &[EvalChain], &[String]),
    params: &EvalParams,
) -> anyhow::Result<JudgedTables> {
    let by_id: HashMap<&str, &Item> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    let judge_name = format!("{} > {}", params.judge.name(), params.match_threshold);
    let (mut o_var, mut o_split, mut o_id, mut o_idx, mut o_sent, mut o_stmt) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        UInt32Builder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut o_conf, mut o_corr, mut o_level, mut o_ans, mut o_text, mut o_judge) = (
        Float64Builder::new(),
        BooleanBuilder::new(),
        StringBuilder::new(),
        Float64Builder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut o_metric_conf, mut o_sim) = (Float64Builder::new(), ListBuilder::new(Float64Builder::new()));
    let (mut c_var, mut c_split, mut c_id, mut c_text, mut c_ans, mut c_n) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        Float64Builder::new(),
        UInt32Builder::new(),
    );
    let order = item_major(chains);
    let mut references = Vec::with_capacity(order.len());
    for &n in &order {
        let c = &chains[n];
        let item = by_id.get(c.item_id.as_str()).ok_or_else(|| anyhow::anyhow!("chain {n}: item {} is not in the dataset", c.item_id))?;
        let reference: Vec<&str> = item.chain.sentences().collect();
        anyhow::ensure!(!reference.is_empty(), "item {}: no reference chain to judge against", item.id);
        references.push((*item, reference));
    }
    // Every chain judged in one encoder call (per chain, ONNX Runtime's call overhead dominated eval).
    let inputs: Vec<(&str, &[&str])> = order.iter().zip(&references).map(|(&n, (_, r))| (chains[n].text.as_str(), r.as_slice())).collect();
    let all_judged = judge.judge_all(&inputs).map_err(|e| anyhow::anyhow!("judging the {} chains: {e}", inputs.len()))?;
    for ((&n, (item, reference)), judged) in order.iter().zip(&references).zip(all_judged) {
        let c = &chains[n];
        let ref_levels = reference_levels(item);
        let judged = judged.map_err(|e| anyhow::anyhow!("judging chain {n} (item {}, {}): {e}", item.id, c.variant))?;
        let similarity: Vec<Vec<f64>> = judged.iter().map(|j| j.similarity.clone()).collect();
        let correct = sentence_correctness(n, &similarity, reference.len(), params.match_threshold)?;
        let levels = assign_levels(n, &similarity, &ref_levels)?;
        let sentences: Vec<&str> = judged.iter().map(|j| j.pair.sentence.as_str()).collect();
        let ans = answer_correct(item, &sentences, &params.metrics);
        // The value of a sentence without statement: the chain's last statement (broadcast), or the default.
        let broadcast = if params.broadcast_last_statement { judged.iter().rev().find_map(|j| j.expressed) } else { None };
        let missing = broadcast.or(params.missing_confidence);
        for (t, j) in judged.iter().enumerate() {
            o_var.append_value(&c.variant);
            o_split.append_value(&item.split);
            o_id.append_value(&item.id);
            o_idx.append_value(t as u32);
            o_sent.append_value(&j.pair.sentence);
            o_stmt.append_option(j.pair.statement.as_deref());
            o_conf.append_option(j.expressed);
            o_corr.append_value(correct[t]);
            o_level.append_value(levels[t].name());
            o_ans.append_value(ans);
            o_text.append_value(&c.text);
            o_judge.append_value(&judge_name);
            o_metric_conf.append_option(j.expressed.or(missing));
            o_sim.values().append_slice(&similarity[t]);
            o_sim.append(true);
        }
        c_var.append_value(&c.variant);
        c_split.append_value(&item.split);
        c_id.append_value(&item.id);
        c_text.append_value(&c.text);
        c_ans.append_value(ans);
        c_n.append_value(judged.len() as u32);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(o_var.finish()),
        Arc::new(o_split.finish()),
        Arc::new(o_id.finish()),
        Arc::new(o_idx.finish()),
        Arc::new(o_sent.finish()),
        Arc::new(o_stmt.finish()),
        Arc::new(o_conf.finish()),
        Arc::new(o_corr.finish()),
        Arc::new(o_level.finish()),
        Arc::new(o_ans.finish()),
        Arc::new(o_text.finish()),
        Arc::new(o_judge.finish()),
        Arc::new(o_metric_conf.finish()),
        Arc::new(o_sim.finish()),
    ];
    let sentences = RecordBatch::try_new(sentences_schema(), cols)?;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(c_var.finish()),
        Arc::new(c_split.finish()),
        Arc::new(c_id.finish()),
        Arc::new(c_text.finish()),
        Arc::new(c_ans.finish()),
        Arc::new(c_n.finish()),
    ];
    let chains_table = RecordBatch::try_new(chains_schema(), cols)?;
    let (own, swapped, swapped_from) = own_and_swapped;
    super::image_swap::check_pass(own, swapped, swapped_from)?;
    let order = item_major(own);
    let pick = |v: &[EvalChain]| order.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
    let from: Vec<String> = order.iter().map(|&i| swapped_from[i].clone()).collect();
    let image_swap = super::image_swap::table(items, &pick(own), &pick(swapped), &from, &judge.parser, &params.metrics)?;
    Ok(JudgedTables { chains: chains_table, sentences, image_swap })
}

/// Judges every chain and computes the metrics: (per-sentence rows, metrics rows) — [`judge_chains`]
/// then [`metrics_from_rows`], what eval_chains and eval do in turn.
pub fn evaluate(
    judge: &ChainJudge,
    items: &[Item],
    chains: &[EvalChain],
    params: &EvalParams,
) -> anyhow::Result<(RecordBatch, RecordBatch)> {
    let t = judge_chains(judge, items, chains, (&[], &[], &[]), params)?;
    let metrics = metrics_from_rows(items, &t.chains, &t.sentences, &params.metrics)?;
    Ok((t.sentences, metrics))
}

fn column<'a>(b: &'a RecordBatch, name: &str, what: &str) -> anyhow::Result<&'a ArrayRef> {
    b.column_by_name(name).ok_or_else(|| anyhow::anyhow!("{what} has no column `{name}`"))
}

fn strings(b: &RecordBatch, name: &str, what: &str) -> anyhow::Result<Vec<String>> {
    let c = column(b, name, what)?;
    let c = c.as_string_opt::<i32>().ok_or_else(|| anyhow::anyhow!("{what}: column `{name}` is not a string column"))?;
    (0..c.len())
        .map(|r| if c.is_null(r) { Err(anyhow::anyhow!("{what}: row {r}: `{name}` is null")) } else { Ok(c.value(r).to_string()) })
        .collect()
}

fn float64s(b: &RecordBatch, name: &str, what: &str) -> anyhow::Result<Vec<Option<f64>>> {
    let c = column(b, name, what)?;
    let c = c.as_primitive_opt::<Float64Type>().ok_or_else(|| anyhow::anyhow!("{what}: column `{name}` is not Float64"))?;
    Ok(c.iter().collect())
}

/// The metrics table from eval_chains' `chains` and `sentences` rows (merged from shards or not): one row
/// per (variant, split, level) — see [`metrics_schema`]. Each chain's sentences are its rows in
/// `sentence_index` order; the reference levels come from the item (`items`, the dataset).
pub fn metrics_from_rows(
    items: &[Item],
    chains: &RecordBatch,
    sentences: &RecordBatch,
    metrics: &MetricsParams,
) -> anyhow::Result<RecordBatch> {
    let (cw, sw) = ("eval_chains `chains`", "eval_chains `sentences`");
    let by_id: HashMap<&str, &Item> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    // Each (variant, item)'s sentence rows, by sentence index.
    let (s_var, s_id, s_level) = (strings(sentences, "variant", sw)?, strings(sentences, "item_id", sw)?, strings(sentences, "level", sw)?);
    let s_idx = column(sentences, "sentence_index", sw)?
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| anyhow::anyhow!("{sw}: column `sentence_index` is not UInt32"))?
        .clone();
    let s_corr =
        column(sentences, "correct", sw)?.as_boolean_opt().ok_or_else(|| anyhow::anyhow!("{sw}: column `correct` is not Boolean"))?.clone();
    let s_conf = float64s(sentences, "metric_confidence", sw)?;
    let s_sim = column(sentences, "similarity", sw)?
        .as_list_opt::<i32>()
        .ok_or_else(|| anyhow::anyhow!("{sw}: column `similarity` is not a list"))?
        .clone();
    let mut rows_of: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for r in 0..sentences.num_rows() {
        rows_of.entry((s_var[r].as_str(), s_id[r].as_str())).or_default().push(r);
    }
    let (c_var, c_split, c_id) = (strings(chains, "variant", cw)?, strings(chains, "split", cw)?, strings(chains, "item_id", cw)?);
    let c_ans = float64s(chains, "answer_correct", cw)?;
    let c_n = column(chains, "sentences", cw)?
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| anyhow::anyhow!("{cw}: column `sentences` is not UInt32"))?
        .clone();
    let mut groups: BTreeMap<(String, String), Vec<Judged>> = BTreeMap::new();
    for r in 0..chains.num_rows() {
        let item = by_id.get(c_id[r].as_str()).ok_or_else(|| anyhow::anyhow!("{cw}: row {r}: item {} is not in the dataset", c_id[r]))?;
        anyhow::ensure!(
            item.split == c_split[r],
            "{cw}: row {r}: item {} is in split `{}`, the row says `{}`",
            item.id,
            item.split,
            c_split[r]
        );
        let mut rows = rows_of.remove(&(c_var[r].as_str(), c_id[r].as_str())).unwrap_or_default();
        rows.sort_by_key(|&k| s_idx.value(k));
        anyhow::ensure!(
            rows.len() == c_n.value(r) as usize && rows.iter().enumerate().all(|(t, &k)| s_idx.value(k) as usize == t),
            "{sw}: chain ({}, {}) has {} sentence rows with indexes {:?}; `chains` row {r} says {}",
            c_var[r],
            c_id[r],
            rows.len(),
            rows.iter().map(|&k| s_idx.value(k)).collect::<Vec<_>>(),
            c_n.value(r)
        );
        let ref_levels = reference_levels(item);
        let mut levels = Vec::with_capacity(rows.len());
        let mut similarity = Vec::with_capacity(rows.len());
        for &k in &rows {
            levels.push(
                level_of(&s_level[k])
                    .ok_or_else(|| anyhow::anyhow!("{sw}: row {k}: level `{}` is neither perception nor reasoning", s_level[k]))?,
            );
            anyhow::ensure!(!s_sim.is_null(k), "{sw}: row {k}: `similarity` is null");
            let v = s_sim.value(k);
            let v = v
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| anyhow::anyhow!("{sw}: row {k}: `similarity` is not a list of Float64"))?;
            anyhow::ensure!(
                v.len() == ref_levels.len(),
                "{sw}: row {k}: {} similarities for {} reference sentences of item {}",
                v.len(),
                ref_levels.len(),
                item.id
            );
            similarity.push(v.values().to_vec());
        }
        groups.entry((c_var[r].clone(), item.split.clone())).or_default().push(Judged {
            split: item.split.clone(),
            sentence_correct: rows.iter().map(|&k| s_corr.value(k)).collect(),
            confidence: rows.iter().map(|&k| s_conf[k]).collect(),
            levels,
            ref_levels,
            similarity,
            answer_correct: c_ans[r].ok_or_else(|| anyhow::anyhow!("{cw}: row {r}: `answer_correct` is null"))?,
        });
    }
    if let Some(((v, id), rows)) = rows_of.into_iter().next() {
        anyhow::bail!("{sw}: {} row(s) of chain ({v}, {id}) (row {}) have no row in `chains`", rows.len(), rows[0]);
    }
    metrics_table(&groups, metrics)
}

fn metrics_table(groups: &BTreeMap<(String, String), Vec<Judged>>, metrics: &MetricsParams) -> anyhow::Result<RecordBatch> {
    let (mut m_var, mut m_split, mut m_level, mut m_resp, mut m_sent) =
        (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), UInt64Builder::new(), UInt64Builder::new());
    let (mut m_ece, mut m_mece, mut m_brier, mut m_acc, mut m_f1, mut m_auroc) = (
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
    );
    let (mut m_bins, mut m_answer_conf) = (UInt64Builder::new(), StringBuilder::new());
    let answer_conf_name = serde_json::to_value(metrics.answer_confidence)?.as_str().unwrap_or_default().to_string();
    for ((variant, split), js) in groups {
        debug_assert!(js.iter().all(|j| &j.split == split));
        // Calibration pairs: sentences with a confidence (a statement, or the missing-statement value).
        let responses: Vec<Vec<(bool, f64)>> =
            js.iter().map(|j| j.sentence_correct.iter().zip(&j.confidence).filter_map(|(&c, v)| v.map(|v| (c, v))).collect()).collect();
        let kept: Vec<usize> = (0..js.len()).filter(|&i| !responses[i].is_empty()).collect();
        let kept_responses: Vec<Vec<(bool, f64)>> = kept.iter().map(|&i| responses[i].clone()).collect();
        let kept_levels: Vec<Vec<ChainLevel>> = kept
            .iter()
            .map(|&i| js[i].levels.iter().zip(&js[i].confidence).filter(|(_, v)| v.is_some()).map(|(l, _)| *l).collect())
            .collect();
        let mece_all = if kept_responses.is_empty() { None } else { Some(mece(&kept_responses)?) };
        let brier_all = if kept_responses.is_empty() { None } else { Some(step_brier(&kept_responses)?) };
        let (mut conf, mut corr) = (Vec::new(), Vec::new());
        for &i in &kept {
            let c: Vec<f64> = responses[i].iter().map(|x| x.1).collect();
            conf.push(answer_confidence(i, &c, metrics.answer_confidence)?);
            corr.push(js[i].answer_correct);
        }
        let ece_all = if conf.is_empty() { None } else { Some(ece(&conf, &corr, &metrics.ece)?) };
        let labels: Vec<bool> = corr.iter().map(|&c| c >= 0.5).collect();
        let auroc_all = if labels.iter().any(|&l| l) && labels.iter().any(|&l| !l) { Some(auroc(&conf, &labels)?) } else { None };
        let accuracy = js.iter().map(|j| j.answer_correct).sum::<f64>() / js.len() as f64;
        let chain_items: Vec<ChainItem> =
            js.iter().map(|j| ChainItem { similarity: j.similarity.clone(), n_reference: j.ref_levels.len() }).collect();
        let f1 = chain_f1(&chain_items, &metrics.chain_f1)?.f1;
        let n_sent: usize = js.iter().map(|j| j.similarity.len()).sum();
        let mut push = |level: &str,
                        n_s: usize,
                        e: Option<f64>,
                        (m, b): (Option<f64>, Option<f64>),
                        a: Option<f64>,
                        f: Option<f64>,
                        r: Option<f64>| {
            m_var.append_value(variant);
            m_split.append_value(split);
            m_level.append_value(level);
            m_resp.append_value(js.len() as u64);
            m_sent.append_value(n_s as u64);
            m_ece.append_option(e);
            m_mece.append_option(m);
            m_brier.append_option(b);
            m_acc.append_option(a);
            m_f1.append_option(f);
            m_auroc.append_option(r);
            m_bins.append_value(metrics.ece.bins as u64);
            m_answer_conf.append_value(&answer_conf_name);
        };
        push("all", n_sent, ece_all, (mece_all, brier_all), Some(accuracy), Some(f1), auroc_all);
        let ref_levels: Vec<Vec<ChainLevel>> = js.iter().map(|j| j.ref_levels.clone()).collect();
        for level in [ChainLevel::Perception, ChainLevel::Reasoning] {
            // The level's sentences once, for both MECE and Brier.
            let subset = level_subset(&kept_levels, &kept_responses, level)?;
            let (m, b) = if subset.is_empty() { (None, None) } else { (Some(mece(&subset)?), Some(step_brier(&subset)?)) };
            let f = chain_f1_by_level(&chain_items, &ref_levels, level, &metrics.chain_f1)?;
            let n_l: usize = js.iter().map(|j| j.levels.iter().filter(|&&l| l == level).count()).sum();
            push(level.name(), n_l, None, (m, b), None, (f.reference > 0).then_some(f.f1), None);
        }
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(m_var.finish()),
        Arc::new(m_split.finish()),
        Arc::new(m_level.finish()),
        Arc::new(m_resp.finish()),
        Arc::new(m_sent.finish()),
        Arc::new(m_ece.finish()),
        Arc::new(m_mece.finish()),
        Arc::new(m_brier.finish()),
        Arc::new(m_acc.finish()),
        Arc::new(m_f1.finish()),
        Arc::new(m_auroc.finish()),
        Arc::new(m_bins.finish()),
        Arc::new(m_answer_conf.finish()),
    ];
    Ok(RecordBatch::try_new(metrics_schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<'a>(v: &[&'a Item]) -> Vec<&'a str> {
        v.iter().map(|i| i.id.as_str()).collect()
    }

    /// eval judges every chain against its item's reference chain, so it evaluates only items that have
    /// one (a ScienceQA val item without a solution has none and stopped eval_chains): the selection, a
    /// shard's items and the swap partners all leave such items out, and the count left out is reported.
    #[test]
    fn eval_selects_only_items_with_a_reference_chain() {
        let split = |i: usize| if i < 4 { "val" } else { "test" };
        let mut items: Vec<Item> = (0..6).map(|i| Item::new(format!("q{i}"), "scienceqa", split(i), "?")).collect();
        for i in [0, 2, 3, 5] {
            items[i].chain.reasoning.push(format!("step {i}"));
        }
        let splits: Vec<String> = vec!["val".into(), "test".into()];
        assert_eq!(ids(&select(&items, &splits, None)), ["q0", "q2", "q3", "q5"]);
        // the limit counts evaluated questions
        assert_eq!(ids(&select(&items, &splits, Some(2))), ["q0", "q2", "q5"]);
        let s = selection(&items, &splits, None);
        assert_eq!(s.unjudgeable, [("val".to_string(), 1), ("test".to_string(), 1)]);
        let note = s.note().expect("items were left out");
        assert!(note.contains("2 items") && note.contains("val: 1") && note.contains("test: 1"), "{note}");
        assert!(selection(&items[..1], &splits, None).note().is_none());

        // a shard's items are the same questions
        let p = EvalParams { splits: splits.clone(), limit: None, ..Default::default() };
        let stage = EvalChainsStage { params: p.clone() };
        let batch = crate::data::items_to_record_batch(&items).unwrap();
        let shard = crate::data::items_from_record_batch(&stage.shard_items(&batch).unwrap()).unwrap();
        assert_eq!(shard.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["q0", "q2", "q3", "q5"]);
        // every selected item has a swap partner, itself judgeable
        let selected = select(&items, &splits, None);
        let partners = swap_partners(&items, &selected, &p).unwrap();
        assert!(partners.iter().all(|it| !it.chain.is_empty()));
    }
}
