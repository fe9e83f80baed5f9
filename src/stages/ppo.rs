//! `ppo`: the paper's RL stage (§3.2). The policy is the SFT model (base + the `sft` checkpoint); K
//! iterations each draw a mini-batch of training questions, sample N = 3 chains per question, score
//! every chain with R = α R_KA + β R_EC + γ R_CS (eq. 10–13) and take a PPO step (GAE, clipped policy
//! and value losses, KL penalty to the reference). The model runs in the `mmb-torch` worker; the reward
//! model (parsing, backward map, internal confidence, correctness) is here, plain Rust, testable alone.
//!
//! Where the reward lands (paper: silent): sentence t's share of R (α·ka_t/T + β·ec_t/n_EC + γ·cs_t/n_CS,
//! so the shares sum to R) is placed on the token that ends its confidence statement, or the sentence's
//! last token when it has none; GAE carries it back to the tokens that produced the statement. IV(z_t)
//! is the level value of the sentence's level under the `bin` stage's fitted model, from the same four
//! signals as `score` computed on the rollout's own log-probs, entropies, TokenSAR and CLIPScore.
//!
//! Each iteration is two cached stages, so a longer run reuses the iterations it shares with a shorter
//! one and a crash loses at most one iteration:
//! - `rollout_k`: the policy after k updates samples N chains per question of iteration k's draw, and the
//!   reward model scores them → `rollouts` (tokens, sentences, statements, IV/EV, correctness, rewards and
//!   where they land);
//! - `update_k`: one PPO update on those rollouts, continuing the trainer state `update_{k-1}` left
//!   (optimizer moments, step counter) → `checkpoint` (policy weights, value head, trainer state), `log`.
//! Their params are the `ppo` params without `iterations` (plus k), so raising K keeps every earlier key.
//! `ppo` then gathers the K iterations: `checkpoint` (the last policy, without trainer state), `log` (one
//! row per iteration) and `rollouts` (every scored chain).
use super::chain_judge::{sentence_floors, token_at_byte, ChainJudge, EmbedderRef, JudgedPair};
use super::judges::{Judge, JudgeParams};
use crate::confidence::levels::LevelModel;
use crate::confidence::parser::ParserParams;
use crate::confidence::rewards::{response_reward, sentence_correctness, RewardParams, SentenceSignals};
use crate::confidence::similarity::CosineOfEmbeddings;
use crate::confidence::spans::{response_sentences, GeneratedToken};
use crate::confidence::statements::BackwardParams;
use crate::confidence::uncertainty::{
    clip_score_from_embeddings, likelihood_signals, token_sar_batched, ResponseTokens, TokenInfo, UncertaintyParams,
};
use crate::confidence::{level_value, ConfidenceError, Location};
use crate::data::Item;
use crate::encoders::clip::Clip;
use crate::encoders::minilm::DEFAULT_MODEL_DIR;
use crate::encoders::runtime::{ExecutionProvider, SessionOptions};
use crate::engine::{InputSpec, Stage, StageContext};
use crate::metrics::accuracy::well_formed;
use crate::metrics::MetricsParams;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The policy PPO starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyStart {
    /// The SFT model (the paper's method: warm-up, then RL).
    #[default]
    Sft,
    /// The vanilla model, no warm-up: the paper's DRL baseline (§4.4, "MMBoundary's RL applied directly").
    /// `sft` is then not an input of the RL stages; the KL reference (`reference = "sft"`, the model PPO
    /// starts from) is the vanilla model, a second frozen copy.
    Vanilla,
}

impl PolicyStart {
    fn is_sft(&self) -> bool {
        *self == PolicyStart::Sft
    }
}

fn is_full_mode(v: &serde_json::Value) -> bool {
    v == &default_start_mode()
}

fn default_start_mode() -> serde_json::Value {
    serde_json::json!("Full")
}

/// The reward PPO maximizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// MMBoundary's R = α R_KA + β R_EC + γ R_CS (eq. 10–13).
    #[default]
    Mmboundary,
    /// The SaySelf baseline's R = 1 − 2·(correct − confidence)² on the final answer
    /// ([`crate::confidence::rewards::sayself_reward`]): correctness as eval scores the answer, confidence
    /// the statement of the last sentence that has one (−1 when none), placed on that statement's last
    /// token. Logged as r_ka = answer correctness, r_ec = R, r_cs = 0.
    Sayself,
}

impl RewardKind {
    fn is_mmboundary(&self) -> bool {
        *self == RewardKind::Mmboundary
    }
}

/// What the reward model's internal levels (IV, R_CS's target) are cut by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InternalLevels {
    /// `bin`'s level model, fitted on the warm-up chains (§3.1.1 read literally).
    #[default]
    WarmUp,
    /// Normalizer and cuts refitted (with `bin`'s fusion params) on each iteration's rollout sentences. Our
    /// addition: the warm-up chains are sampled at temperature 0.1 and the rollouts at 1, whose tokens'
    /// log-probs and entropies sit far higher, so the warm-up cuts put most rollout sentences in level 1.
    Rollouts,
}

impl InternalLevels {
    fn is_warm_up(&self) -> bool {
        *self == InternalLevels::WarmUp
    }
}

/// What IV, R_CS's target, is for a sentence at internal level l.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InternalValue {
    /// (l − 1) / 4, §3.1.1's level value.
    #[default]
    LevelValue,
    /// The share of right sentences at level l among the iteration's rollout sentences
    /// ([`crate::confidence::rewards::level_accuracy`]). Our addition: with quintile levels the level values
    /// average 0.5 whatever the accuracy, so R_CS pulls statements away from what R_EC rewards; a level's
    /// accuracy keeps its ranking and puts both targets on the scale of being right.
    LevelAccuracy,
    /// The level accuracy made non-decreasing in the level
    /// ([`crate::confidence::rewards::monotone_level_accuracy`]): a sparse level whose share comes out
    /// above the next level's is pooled with it, so R_CS never orders two levels against the signals.
    MonotoneLevelAccuracy,
}

impl InternalValue {
    fn is_level_value(&self) -> bool {
        *self == InternalValue::LevelValue
    }
}

/// Which frozen model the KL penalty compares the policy with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferencePolicy {
    /// The model PPO starts from (TRL's reference): the SFT model, or the vanilla model with
    /// `start = "vanilla"`; a second frozen copy in memory.
    Sft,
    /// The base model: the policy with its LoRA adapters switched off (no second copy; LoRA only).
    Base,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoStageParams {
    /// The base model folder (the same as `generate` and `sft`).
    pub model: Option<PathBuf>,
    /// The prompt template (see `generate`; unset: the model's own).
    pub prompt: Option<String>,
    /// A line closing the user's turn after the options (the prompted baselines' request for confidences,
    /// stages/baselines.toml), in the model's own chat format; left out of the key when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    pub device: String,
    pub dtype: String,
    /// Splits whose questions are the RL prompts.
    pub splits: Vec<String>,
    /// Use only the first N of those questions (None: all).
    pub limit: Option<usize>,
    /// K, the number of PPO iterations (rollout + update). Paper: unstated. We chose 8.
    pub iterations: usize,
    /// Questions per iteration (each sampled N times). Paper: batch 16, unit unstated; we read it as
    /// questions.
    pub prompts_per_iteration: usize,
    /// The trainer's settings as `mllm::ppo::PpoParams` reads them (ppo_epochs, kl_coef, clip_range,
    /// clip_range_value, vf_coef, gamma, lam, whiten_rewards, mini_batch_size, samples_per_prompt,
    /// learning_rate, max_grad_norm, adamw, generation, seed), laid over its defaults: TRL's (4 epochs,
    /// KL 0.05, clip 0.2, value clip 0.2, vf 0.1, γ 1, λ 0.95) and the paper's N = 3 and lr 1e-5.
    pub trainer: serde_json::Value,
    pub reference: ReferencePolicy,
    /// Where PPO starts: the SFT model (default) or the vanilla model (DRL). Left out of the params (and
    /// so of the cache keys) when it is the default, so the main run's RL stages keep their keys.
    #[serde(skip_serializing_if = "PolicyStart::is_sft")]
    pub start: PolicyStart,
    /// With `start = "vanilla"`: which weights train, as `mllm::sft::FineTuneMode` reads it (`"Full"`, the
    /// default, as the demo model's SFT; or `{ Lora = { … } }` as `sft.trainer.mode`). Our choice: the paper
    /// gives DRL "the same hyperparameters" as MMBoundary, so the same fine-tuning mode as its SFT.
    #[serde(skip_serializing_if = "is_full_mode", default = "default_start_mode")]
    pub start_mode: serde_json::Value,
    /// MMBoundary's reward (default) or SaySelf's. Left out of the params (and the cache keys) when default.
    #[serde(skip_serializing_if = "RewardKind::is_mmboundary")]
    pub reward: RewardKind,
    /// The cuts of IV: the warm-up level model (default) or one refitted on each iteration's rollouts.
    /// Left out of the params (and the cache keys) when default.
    #[serde(skip_serializing_if = "InternalLevels::is_warm_up")]
    pub internal_levels: InternalLevels,
    /// IV of a level: its value (default) or its accuracy on the iteration's rollouts. Left out of the
    /// params (and the cache keys) when default.
    #[serde(skip_serializing_if = "InternalValue::is_level_value")]
    pub internal_value: InternalValue,
    /// α, β, γ (1/3 each), the switches of the "w/o R_KA/R_EC/R_CS" ablations, the match threshold of
    /// I(z_t) and what a sentence without statement contributes.
    pub rewards: RewardParams,
    /// Reward of a rollout with no parseable sentence (R's minimum with α = β = γ = 1/3 is −2/3; we chose
    /// −1 so that saying nothing is worse than any chain).
    pub empty_response_reward: f64,
    /// Reward of a rollout whose answer cannot be read (nothing after its last answer marker), in place
    /// of R; unset: R, as the paper has it. Our addition: R_KA averages over sentences, and the first
    /// sentences (perception) are right more often than the answer, so a chain that stops before it can
    /// score higher than one that answers (on the demo benchmark it did, on every seed). Left out of the
    /// params (and the cache keys) when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unanswered_response_reward: Option<f64>,
    pub backward: BackwardParams,
    pub parser: ParserParams,
    /// The signals of IV, as in `score`.
    pub uncertainty: UncertaintyParams,
    /// The judge of I(z) (against `rewards.match_threshold`) and TokenSAR's g: MiniLM cosine (default)
    /// or a cross-encoder folder (the paper's, with threshold 0.64).
    pub judge: JudgeParams,
    /// Where the reward model's ONNX encoders run (as `score`'s `execution_provider`; no silent fallback).
    pub execution_provider: ExecutionProvider,
    pub minilm: PathBuf,
    pub clip: Option<PathBuf>,
    pub clip_prefix: String,
    /// The statement pool (as in `map`).
    pub pool: PathBuf,
    /// Seed of the order in which questions are drawn.
    pub seed: u64,
}

impl PpoStageParams {
    /// The MLLM this stage runs (`super::models::ModelSettings`).
    pub fn mllm(&self) -> super::models::ModelSettings<'_> {
        super::models::ModelSettings { model: &self.model, prompt: &self.prompt, device: &self.device, dtype: &self.dtype }
    }
}

impl Default for PpoStageParams {
    fn default() -> Self {
        let g = super::generate::GenerateParams::default();
        let s = super::score::ScoreParams::default();
        Self {
            model: g.model,
            prompt: g.prompt,
            instruction: None,
            device: g.device,
            dtype: g.dtype,
            splits: vec!["train".into()],
            limit: None,
            iterations: 8,
            prompts_per_iteration: 16,
            trainer: serde_json::json!({}),
            reference: ReferencePolicy::Sft,
            start: PolicyStart::Sft,
            start_mode: default_start_mode(),
            reward: RewardKind::Mmboundary,
            internal_levels: InternalLevels::WarmUp,
            internal_value: InternalValue::LevelValue,
            rewards: RewardParams::default(),
            empty_response_reward: -1.0,
            unanswered_response_reward: None,
            backward: BackwardParams::default(),
            parser: ParserParams::default(),
            uncertainty: s.uncertainty,
            judge: s.judge,
            execution_provider: s.execution_provider,
            minilm: PathBuf::from(DEFAULT_MODEL_DIR),
            clip: s.clip,
            clip_prefix: s.clip_prefix,
            pool: super::map::MapParams::default().pool,
            seed: 0,
        }
    }
}

pub struct PpoStage {
    pub params: PpoStageParams,
}

/// One row per PPO iteration (its update; `seconds` is the update's wall time).
pub fn ppo_log_schema() -> SchemaRef {
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        Field::new("iteration", DataType::UInt32, false),
        f("score_mean"),
        f("kl"),
        f("policy_entropy"),
        f("clip_fraction"),
        f("value_loss"),
        f("policy_loss"),
        f("approx_kl"),
        f("response_length"),
        f("r_ka"),
        f("r_ec"),
        f("r_cs"),
        f("reward"),
        f("seconds"),
    ]))
}

/// One row per scored rollout; per-sentence columns are aligned lists.
pub fn rollouts_schema() -> SchemaRef {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    Arc::new(Schema::new(vec![
        Field::new("iteration", DataType::UInt32, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("sample", DataType::UInt32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("sentences", list(DataType::Utf8), false),
        Field::new("statements", list(DataType::Utf8), false),
        Field::new("ev", list(DataType::Float64), false),
        Field::new("iv", list(DataType::Float64), false),
        Field::new("level", list(DataType::UInt8), false),
        Field::new("correct", list(DataType::Boolean), false),
        Field::new("r_ka", DataType::Float64, false),
        Field::new("r_ec", DataType::Float64, false),
        Field::new("r_cs", DataType::Float64, false),
        Field::new("reward", DataType::Float64, false),
        Field::new("judge", DataType::Utf8, false),
        // What update_k trains on: the sampled token ids, and each reward share with the token it lands on.
        Field::new("tokens", list(DataType::Int64), false),
        Field::new("reward_tokens", list(DataType::UInt32), false),
        Field::new("reward_values", list(DataType::Float64), false),
    ]))
}

/// The stages of K PPO iterations and the `ppo` stage that gathers them, in dependency order.
pub fn stages(params: PpoStageParams) -> Vec<Box<dyn Stage>> {
    let mut v: Vec<Box<dyn Stage>> = Vec::new();
    for k in 0..params.iterations {
        for (part, name) in [(IterationPart::Rollout, "rollout"), (IterationPart::Update, "update")] {
            v.push(Box::new(IterationStage { params: params.clone(), iteration: k, part, name: format!("{name}_{k}") }));
        }
    }
    v.push(Box::new(PpoStage { params }));
    v
}

/// Which questions iteration `k` draws: without replacement, reshuffled whenever the set is used up, so
/// iteration k's draw depends only on the seed, the set size and k (not on K).
pub fn draw(n_questions: usize, per_iteration: usize, seed: u64, k: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = Vec::new();
    let mut batch = Vec::new();
    for _ in 0..=k {
        batch.clear();
        while batch.len() < per_iteration.min(n_questions) {
            if order.is_empty() {
                order = (0..n_questions).collect();
                order.shuffle(&mut rng);
            }
            batch.push(order.pop().expect("refilled"));
        }
    }
    batch
}

/// Iteration `k`'s questions, in draw order: the items of `p.splits`, the first `p.limit`, those with a
/// reference chain (the rewards judge every rollout against it), drawn by [`draw`].
/// Drawn again from only the questions it returned (as a shard of `rollout_k` is), it returns them all.
pub fn iteration_items<'a>(items: &'a [Item], p: &PpoStageParams, k: usize) -> anyhow::Result<Vec<&'a Item>> {
    let in_splits = super::generate::select(items, &p.splits, p.limit);
    anyhow::ensure!(!in_splits.is_empty(), "ppo: no items in splits {:?}", p.splits);
    let selected: Vec<&Item> = in_splits.into_iter().filter(|it| !it.chain.is_empty()).collect();
    anyhow::ensure!(
        !selected.is_empty(),
        "ppo: no item of splits {:?} has a reference chain, which the rewards judge rollouts against",
        p.splits
    );
    Ok(draw(selected.len(), p.prompts_per_iteration, p.seed, k).into_iter().map(|i| selected[i]).collect())
}

/// What `rollout_k` and `update_k` are keyed by and read: the iteration and the `ppo` params without K.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IterationParams {
    pub iteration: usize,
    pub ppo: PpoStageParams,
}

/// Which half of PPO iteration k a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IterationPart {
    /// `rollout_k`: sampling and scoring.
    Rollout,
    /// `update_k`: the PPO update on those rollouts.
    Update,
}

/// `rollout_k` or `update_k`.
pub struct IterationStage {
    pub params: PpoStageParams,
    pub iteration: usize,
    pub part: IterationPart,
    name: String,
}

impl Stage for IterationStage {
    fn name(&self) -> &str {
        &self.name
    }
    /// 3: each rollout seeded by its item's id, step and sample (was: by its row in the step).
    /// 4: questions drawn only among items with a reference chain.
    fn code_version(&self) -> &str {
        "4"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        let (p, k) = (&self.params, self.iteration);
        let mut v = vec![InputSpec::new("items", "dataset", "items"), InputSpec::new("features", "features", "features")];
        if p.start == PolicyStart::Sft {
            v.insert(0, InputSpec::new("sft_checkpoint", "sft", "checkpoint"));
        }
        if k > 0 {
            v.push(InputSpec::new("previous", &format!("update_{}", k - 1), "checkpoint"));
        }
        v.extend(p.mllm().input());
        match self.part {
            IterationPart::Rollout => {
                v.push(InputSpec::new("level_model", "bin", "level_model"));
                v.extend(super::models::model_input(&p.clip, "clip", super::models::DEMO_CLIP));
            }
            IterationPart::Update => v.push(InputSpec::new("rollouts", &format!("rollout_{k}"), "rollouts")),
        }
        v
    }
    /// `rollout_k`'s rollouts of a question depend on that question alone (each seeded by its id): it may
    /// run on shards of iteration k's draw. `update_k` is one optimizer step over all of them.
    fn shard(&self) -> Option<crate::engine::ShardSpec> {
        match self.part {
            IterationPart::Rollout => Some(crate::engine::ShardSpec::new("items", "item_id").with_input_key("id")),
            IterationPart::Update => None,
        }
    }
    /// Iteration k's draw ([`iteration_items`]), in draw order.
    fn shard_items(&self, items: &arrow::record_batch::RecordBatch) -> anyhow::Result<arrow::record_batch::RecordBatch> {
        let all = crate::data::items_from_record_batch(items)?;
        let row: std::collections::HashMap<&str, u32> = all.iter().enumerate().map(|(i, it)| (it.id.as_str(), i as u32)).collect();
        let drawn = iteration_items(&all, &self.params, self.iteration)?;
        let idx = arrow::array::UInt32Array::from(drawn.iter().map(|it| row[it.id.as_str()]).collect::<Vec<_>>());
        Ok(arrow::compute::take_record_batch(items, &idx)?)
    }
    fn outputs(&self) -> Vec<String> {
        match self.part {
            IterationPart::Rollout => vec!["rollouts".into()],
            IterationPart::Update => vec!["checkpoint".into(), "log".into()],
        }
    }
    /// The `ppo` params without `iterations`, and k.
    fn params(&self) -> serde_json::Value {
        let p = PpoStageParams { prompt: self.params.mllm().prompt(), ..self.params.clone() };
        let mut ppo = serde_json::to_value(&p).expect("params serialize");
        ppo.as_object_mut().expect("a struct").remove("iterations");
        serde_json::json!({ "iteration": self.iteration, "ppo": ppo })
    }
    fn models(&self) -> Vec<PathBuf> {
        let p = &self.params;
        let mut v = p.mllm().files();
        if self.part == IterationPart::Rollout {
            v.extend([p.minilm.join("onnx/model.onnx"), p.minilm.join("tokenizer.json"), p.pool.clone()]);
            v.extend(p.judge.model_files());
            v.extend(super::models::model_files(&p.clip));
        }
        v
    }
    fn device(&self) -> String {
        self.params.mllm().device_key()
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        super::worker::run_in_worker(ctx)
    }
}

impl Stage for PpoStage {
    fn name(&self) -> &str {
        "ppo"
    }
    fn code_version(&self) -> &str {
        "2"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        let k = self.params.iterations;
        let mut v: Vec<InputSpec> = (0..k)
            .flat_map(|i| {
                [
                    InputSpec::new(&format!("rollouts_{i}"), &format!("rollout_{i}"), "rollouts"),
                    InputSpec::new(&format!("log_{i}"), &format!("update_{i}"), "log"),
                ]
            })
            .collect();
        if k > 0 {
            v.push(InputSpec::new("last", &format!("update_{}", k - 1), "checkpoint"));
        }
        v
    }
    fn outputs(&self) -> Vec<String> {
        vec!["checkpoint".into(), "log".into(), "rollouts".into()]
    }
    /// Only K: everything else reaches this stage through its inputs' keys.
    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "iterations": self.params.iterations })
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        anyhow::ensure!(self.params.iterations > 0, "ppo: iterations must be ≥ 1");
        super::worker::run_in_worker(ctx)
    }
}

/// A rollout as the reward model sees it: the decoded chain and its tokens (each `TokenInfo::text` the
/// token's decoded piece, `mllm::generate::decode_pieces`, so that they concatenate to `text`), each
/// token's byte end in the decoded text (the length of the pieces up to it).
#[derive(Debug, Clone)]
pub struct RolloutTokens {
    pub text: String,
    pub tokens: Vec<TokenInfo>,
    pub token_ends: Vec<usize>,
}

/// Everything the rewards said about one rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutScore {
    pub sentences: Vec<String>,
    pub statements: Vec<Option<String>>,
    pub expressed: Vec<Option<f64>>,
    pub internal: Vec<f64>,
    pub levels: Vec<u8>,
    pub correct: Vec<bool>,
    pub ka: f64,
    pub ec: f64,
    pub cs: f64,
    pub total: f64,
    /// (response token, reward) pairs; they sum to `total`.
    pub token_rewards: Vec<(usize, f64)>,
}

/// The reward model of §3.2: parser, backward map, correctness judge, IV from the four signals.
pub struct RewardModel {
    pub judge: ChainJudge,
    pub clip: Clip,
    pub levels: LevelModel,
    pub params: PpoStageParams,
    /// How answers are read and judged (eval's rules: the unanswered rule and SaySelf's reward use them).
    pub metrics: MetricsParams,
}

impl RewardModel {
    /// The session options of the params' execution provider (no CPU fallback).
    pub fn session_options(params: &PpoStageParams) -> SessionOptions {
        SessionOptions { provider: params.execution_provider.clone(), allow_cpu_fallback: false, ..SessionOptions::default() }
    }

    /// `clip_dir`: the CLIP folder (`params.clip`, or the demo CLIP the stage resolved).
    pub fn load(params: &PpoStageParams, clip_dir: &std::path::Path, levels: LevelModel, session: &SessionOptions) -> anyhow::Result<Self> {
        params.judge.check_threshold("ppo", "rewards.match_threshold", params.rewards.match_threshold)?;
        let judge = ChainJudge::load_with_judge(
            &params.minilm,
            &params.pool,
            params.parser.clone(),
            params.backward.clone(),
            &params.judge,
            "ppo",
            session,
        )?;
        let clip = Clip::load(clip_dir, session)?;
        Ok(Self { judge, clip, levels, params: params.clone(), metrics: MetricsParams::default() })
    }

    /// Scores one rollout of `item` (`image` is the item's CLIP image embedding).
    pub fn score(&self, item: &Item, image: &[f32], r: &RolloutTokens) -> anyhow::Result<RolloutScore> {
        Ok(self.score_batch(&[(item, image, r)])?.pop().expect("one score per rollout"))
    }

    /// Scores rollouts together: TokenSAR's deletions and CLIPScore's sentences of every rollout go to
    /// the encoders in one call each, which is where the reward model spends its time.
    pub fn score_batch(&self, batch: &[(&Item, &[f32], &RolloutTokens)]) -> anyhow::Result<Vec<RolloutScore>> {
        // 1. Per rollout: judge the sentences, locate their tokens (a malformed rollout fails before any encoding).
        let mut plans = Vec::with_capacity(batch.len());
        for &(item, _, r) in batch {
            anyhow::ensure!(
                r.tokens.len() == r.token_ends.len(),
                "item {}: {} tokens but {} token ends",
                item.id,
                r.tokens.len(),
                r.token_ends.len()
            );
        }
        let references: Vec<Vec<&str>> = batch.iter().map(|(item, ..)| item.chain.sentences().collect()).collect();
        // Every rollout with tokens judged in one encoder call.
        let to_judge: Vec<(&str, &[&str])> = batch
            .iter()
            .zip(&references)
            .filter(|((.., r), _)| !r.tokens.is_empty())
            .map(|((.., r), refs)| (r.text.as_str(), refs.as_slice()))
            .collect();
        let mut judged_all =
            self.judge.judge_all(&to_judge).map_err(|e| anyhow::anyhow!("judging {} rollouts: {e}", to_judge.len()))?.into_iter();
        for (&(item, _, r), reference) in batch.iter().zip(&references) {
            let judged = if r.tokens.is_empty() {
                Vec::new()
            } else {
                judged_all
                    .next()
                    .expect("one judgement per rollout with tokens")
                    .map_err(|e| anyhow::anyhow!("judging a rollout of item {}: {e}", item.id))?
            };
            if judged.is_empty() {
                plans.push(None);
                continue;
            }
            // I(z_t).
            let sim: Vec<Vec<f64>> = judged.iter().map(|j| j.similarity.clone()).collect();
            let correct = sentence_correctness(0, &sim, reference.len(), self.params.rewards.match_threshold)
                .map_err(|e| anyhow::anyhow!("item {}: {e}", item.id))?;
            // Each sentence's tokens, pieces clipped to it; its floor is the end of the statement (or
            // sentence) before it (the sentence's when the statement comes later: RCE's layout).
            let located = sentence_floors(&judged);
            let toks: Vec<GeneratedToken> = r
                .tokens
                .iter()
                .map(|t| GeneratedToken { id: t.id, piece: &t.text, log_prob: t.log_prob, entropy: t.entropy, is_special: t.is_special })
                .collect();
            let sentences = response_sentences(0, &r.text, &toks, &located).map_err(|e| anyhow::anyhow!("item {}: {e}", item.id))?;
            let spans: Vec<(usize, usize)> = sentences.iter().map(|s| s.1).collect();
            let response = ResponseTokens { prompt: item.question.clone(), sentences: sentences.into_iter().map(|s| s.0).collect() };
            plans.push(Some((judged, correct, spans, response)));
        }
        // 2. The four signals of every sentence, each encoder called once for the whole batch.
        let responses: Vec<ResponseTokens> = plans.iter().flatten().map(|p| p.3.clone()).collect();
        let owners: Vec<&str> = batch.iter().zip(&plans).filter(|(_, p)| p.is_some()).map(|(b, _)| b.0.id.as_str()).collect();
        let at = |e: ConfidenceError| anyhow::anyhow!("scoring rollouts (items {owners:?}): {e}");
        let u = &self.params.uncertainty;
        let (likelihood, sar, te) = if responses.is_empty() {
            (Vec::new(), Vec::new(), None)
        } else {
            let likelihood = likelihood_signals(&responses, u).map_err(at)?;
            let cosine = CosineOfEmbeddings(EmbedderRef(&self.judge.embedder));
            let sim_model: &dyn crate::confidence::PairSimilarity = match &self.judge.matcher {
                Judge::MinilmCosine | Judge::ExactMatch => &cosine,
                Judge::CrossEncoder(ce) => ce,
            };
            let sar = token_sar_batched(&responses, sim_model, &u.token_sar).map_err(at)?;
            let texts: Vec<String> = plans
                .iter()
                .flatten()
                .flat_map(|p| p.0.iter().map(|j| format!("{}{}", self.params.clip_prefix, j.pair.sentence.trim())))
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            (likelihood, sar, Some(self.clip.text.encode(&refs)?))
        };
        // 3. Per rollout: the four raw signals of each sentence.
        let mut rows: Vec<Vec<[f64; 4]>> = Vec::with_capacity(batch.len());
        let (mut k, mut sentence) = (0, 0);
        for (&(item, image, _), plan) in batch.iter().zip(&plans) {
            let Some((judged, ..)) = plan else {
                rows.push(Vec::new());
                continue;
            };
            let te = te.as_ref().expect("encoded when any rollout has sentences");
            let d = te.embeddings.dim;
            let mut own = Vec::with_capacity(judged.len());
            for t in 0..judged.len() {
                let e = &te.embeddings.data[(sentence + t) * d..(sentence + t + 1) * d];
                let cs =
                    clip_score_from_embeddings(Location::sentence(0, t), image, e).map_err(|e| anyhow::anyhow!("item {}: {e}", item.id))?;
                own.push([likelihood[k][t].0, likelihood[k][t].1, sar[k][t], cs]);
            }
            sentence += judged.len();
            k += 1;
            rows.push(own);
        }
        let refitted = match self.params.internal_levels {
            InternalLevels::WarmUp => None,
            InternalLevels::Rollouts if responses.is_empty() => None,
            InternalLevels::Rollouts => {
                let all: Vec<[f64; 4]> = rows.iter().flatten().copied().collect();
                Some(LevelModel::fit(&all, &self.levels.params).map_err(|e| {
                    anyhow::anyhow!("internal_levels = \"rollouts\": fitting the levels on the {} sentences of {owners:?}: {e}", all.len())
                })?)
            }
        };
        let level_model = refitted.as_ref().unwrap_or(&self.levels);
        // 4. Every sentence's level, and IV of each level.
        let mut levels: Vec<Vec<u8>> = Vec::with_capacity(batch.len());
        for (plan, rows) in plans.iter().zip(&rows) {
            levels.push(if plan.is_some() { level_model.apply(rows)?.iter().map(|s| s.level).collect() } else { Vec::new() });
        }
        // Each judged rollout's levels and I(z), for the IVs read off the batch.
        let judged = || plans.iter().zip(&levels).filter_map(|(p, l)| p.as_ref().map(|p| (l.as_slice(), p.1.as_slice())));
        let values: [f64; 5] = match self.params.internal_value {
            InternalValue::LevelValue => std::array::from_fn(|l| level_value(l as u8 + 1)),
            InternalValue::LevelAccuracy => crate::confidence::rewards::level_accuracy(judged()).map_err(at)?,
            InternalValue::MonotoneLevelAccuracy => crate::confidence::rewards::monotone_level_accuracy(judged()).map_err(at)?,
        };
        // 5. Per rollout: rewards and where they land.
        let mut out = Vec::with_capacity(batch.len());
        for ((&(item, _, r), plan), levels) in batch.iter().zip(plans).zip(levels) {
            let Some((judged, correct, spans, _)) = plan else {
                out.push(self.empty_score(r));
                continue;
            };
            let mut score = self.finish(r, judged, correct, spans, levels, &values)?;
            if self.params.reward == RewardKind::Sayself {
                self.sayself(item, r, &mut score)?;
            }
            if let Some(u) = self.params.unanswered_response_reward.filter(|_| !well_formed(&score.sentences, &self.metrics.accuracy)) {
                // The whole reward on the last token; the parts stay in the log as computed.
                score.total = u;
                score.token_rewards = vec![(r.tokens.len() - 1, u)];
            }
            out.push(score);
        }
        Ok(out)
    }

    /// An empty response (or one with no sentence): the configured reward on its last token.
    fn empty_score(&self, r: &RolloutTokens) -> RolloutScore {
        let last = r.tokens.len().saturating_sub(1);
        let e = self.params.empty_response_reward;
        RolloutScore {
            sentences: vec![],
            statements: vec![],
            expressed: vec![],
            internal: vec![],
            levels: vec![],
            correct: vec![],
            ka: 0.0,
            ec: -1.0,
            cs: -1.0,
            total: e,
            token_rewards: if r.tokens.is_empty() { vec![] } else { vec![(last, e)] },
        }
    }

    fn finish(
        &self,
        r: &RolloutTokens,
        judged: Vec<JudgedPair>,
        correct: Vec<bool>,
        spans: Vec<(usize, usize)>,
        levels: Vec<u8>,
        values: &[f64; 5],
    ) -> anyhow::Result<RolloutScore> {
        let internal: Vec<f64> = levels.iter().map(|&l| values[usize::from(l.clamp(1, 5)) - 1]).collect();
        let signals: Vec<SentenceSignals> = (0..judged.len())
            .map(|t| SentenceSignals { correct: correct[t], expressed: judged[t].expressed, internal: internal[t] })
            .collect();
        let rw = response_reward(0, &signals, &self.params.rewards)?;

        // Place each sentence's share of R; what is left (a term with no counted sentence) goes last.
        let p = &self.params.rewards;
        let on = |b: bool| if b { 1.0 } else { 0.0 };
        let n = judged.len() as f64;
        let n_ec = rw.per_sentence.iter().filter(|s| s.ec.is_some()).count().max(1) as f64;
        let n_cs = rw.per_sentence.iter().filter(|s| s.cs.is_some()).count().max(1) as f64;
        let mut token_rewards = Vec::with_capacity(judged.len() + 1);
        for (t, (j, s)) in judged.iter().zip(&rw.per_sentence).enumerate() {
            let share = on(p.enable_ka) * p.alpha * s.ka / n
                + on(p.enable_ec) * p.beta * s.ec.unwrap_or(0.0) / n_ec
                + on(p.enable_cs) * p.gamma * s.cs.unwrap_or(0.0) / n_cs;
            let at = j.statement_end.map(|e| token_at_byte(&r.token_ends, e)).unwrap_or(spans[t].1);
            token_rewards.push((at, share));
        }
        let placed: f64 = token_rewards.iter().map(|x| x.1).sum();
        if (rw.total - placed).abs() > 1e-12 {
            token_rewards.push((r.tokens.len() - 1, rw.total - placed));
        }
        Ok(RolloutScore {
            sentences: judged.iter().map(|j| j.pair.sentence.clone()).collect(),
            statements: judged.iter().map(|j| j.pair.statement.clone()).collect(),
            expressed: judged.iter().map(|j| j.expressed).collect(),
            internal,
            levels,
            correct,
            ka: rw.ka,
            ec: rw.ec,
            cs: rw.cs,
            total: rw.total,
            token_rewards,
        })
    }
}

impl RewardModel {
    /// Replaces MMBoundary's reward of a scored rollout by SaySelf's ([`RewardKind::Sayself`]).
    fn sayself(&self, item: &Item, r: &RolloutTokens, score: &mut RolloutScore) -> anyhow::Result<()> {
        let sentences: Vec<&str> = score.sentences.iter().map(String::as_str).collect();
        let correct = super::eval::answer_correct(item, &sentences, &self.metrics);
        let last = (0..score.expressed.len()).rev().find(|&t| score.expressed[t].is_some());
        let total = crate::confidence::rewards::sayself_reward(correct, last.and_then(|t| score.expressed[t]))
            .map_err(|e| anyhow::anyhow!("item {}: {e}", item.id))?;
        // On the token that ends the answer's statement (MMBoundary's placement puts each statement's share
        // there), else the last token.
        let at = last.and_then(|t| score.token_rewards.get(t).map(|x| x.0)).unwrap_or(r.tokens.len().saturating_sub(1));
        score.ka = correct;
        score.ec = total;
        score.cs = 0.0;
        score.total = total;
        score.token_rewards = vec![(at, total)];
        Ok(())
    }
}

/// The judge recorded in the rollouts artifact: its name and I(z)'s threshold.
pub fn judge_name(p: &PpoStageParams) -> String {
    format!("{} > {}", p.judge.name(), p.rewards.match_threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PPO's rewards judge each rollout against the item's reference chain, so the draw takes only items
    /// that have one (a ScienceQA item without a solution has none: with the main run's seed the draw
    /// happened to miss it; seed 1's drew it and the rollout failed).
    #[test]
    fn ppo_draws_only_items_with_a_reference_chain() {
        let mut items: Vec<Item> = (0..6).map(|i| Item::new(format!("q{i}"), "scienceqa", "train", "?")).collect();
        for (i, it) in items.iter_mut().enumerate() {
            if i % 2 == 0 {
                it.chain.reasoning.push(format!("step {i}"));
            }
        }
        let p = PpoStageParams { splits: vec!["train".into()], limit: None, prompts_per_iteration: 2, ..Default::default() };
        for seed in 0..8 {
            for k in 0..4 {
                let drawn = iteration_items(&items, &PpoStageParams { seed, ..p.clone() }, k).unwrap();
                assert_eq!(drawn.len(), 2);
                assert!(
                    drawn.iter().all(|it| !it.chain.is_empty()),
                    "seed {seed}, iteration {k}: {:?}",
                    drawn.iter().map(|i| &i.id).collect::<Vec<_>>()
                );
            }
        }
        // none at all: an error naming the splits, not a rollout failing later
        let bare: Vec<Item> = (0..3).map(|i| Item::new(format!("q{i}"), "scienceqa", "train", "?")).collect();
        let err = iteration_items(&bare, &p, 0).unwrap_err().to_string();
        assert!(err.contains("reference chain") && err.contains("train"), "{err}");
    }
}
