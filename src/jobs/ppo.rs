//! The PPO iterations' model work (see `mmboundary::stages::ppo`):
//! - `rollout_k`: the policy after k updates samples N chains per question of iteration k's draw; the
//!   reward model scores them all at once;
//! - `update_k`: one PPO update on those rollouts, from the trainer state `update_{k-1}` left, so that K
//!   iterations split over 2K processes take the same steps as one process would;
//! - `ppo`: the last policy (trainer state dropped), every iteration's log row and rollouts.
use super::inputs::{ImageInputs, Prompter};
use super::policy::{self, Policy};
use super::{JobError, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder, UInt32Builder, UInt8Builder,
};
use arrow::datatypes::{Float32Type, Float64Type, Int64Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use mllm::llava::EmbedInputs;
use mllm::ppo::{PpoParams, PpoPrompt, PpoTrainer, Score};
use mllm::weights::{read_safetensors, write_safetensors};
use mmboundary::confidence::levels::LevelModel;
use mmboundary::confidence::uncertainty::TokenInfo;
use mmboundary::data::{items_from_record_batch, Item};
use mmboundary::engine::{item_seed, StageContext};
use mmboundary::stages::ppo::{
    iteration_items, judge_name, ppo_log_schema, rollouts_schema, IterationParams, PolicyStart, PpoStageParams, ReferencePolicy,
    RewardModel, RolloutScore, RolloutTokens,
};
use mmboundary::store::ArtifactKind;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use tch::Tensor;

/// What both iteration stages set up: params, model, tokenizer, and iteration k's questions as prompts.
struct Iteration {
    k: usize,
    p: PpoStageParams,
    tp: PpoParams,
    model_dir: PathBuf,
    device: tch::Device,
    dtype: mllm::DType,
    tok: tokenizers::Tokenizer,
    /// Iteration k's questions, in draw order, with their prompts (made by [`Self::policy`], which has
    /// the model whose vision tower or features they need).
    items: Vec<Item>,
    prompts: Vec<PpoPrompt>,
    /// The `features` artifact, read once (rollout_k also needs its image embeddings).
    features: RecordBatch,
}

impl Iteration {
    fn load(ctx: &StageContext) -> Result<Self> {
        let ip: IterationParams = ctx.params()?;
        let (k, p) = (ip.iteration, ip.ppo);
        if p.prompts_per_iteration == 0 {
            return Err(JobError::param("ppo.prompts_per_iteration", "must be ≥ 1"));
        }
        let tp = super::inputs::overlay_params::<PpoParams>(&p.trainer, "ppo.trainer")?;
        let super::policy::ModelRun { dir: model_dir, device, dtype } =
            super::policy::ModelRun::resolve(ctx, &format!("ppo iteration {k}"), &p.mllm())?;
        let tok = Prompter::tokenizer(&model_dir)?;

        let all = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
        let items: Vec<Item> = iteration_items(&all, &p, k)?.into_iter().cloned().collect();
        let features = ctx.input_table_as("features", &mmboundary::stages::features::features_schema())?.concat()?;
        Ok(Self { k, p, tp, model_dir, device, dtype, tok, items, prompts: vec![], features })
    }

    /// The policy after k updates and a trainer in the state the k-th update left (a fresh one for k = 0).
    /// Also makes the iteration's prompts.
    fn policy(&mut self, ctx: &StageContext) -> Result<(Policy, PpoTrainer)> {
        let ck = match (self.k, self.p.start) {
            (0, PolicyStart::Sft) => Some(ctx.input_path("sft_checkpoint")?),
            (0, PolicyStart::Vanilla) => None,
            _ => Some(ctx.input_path("previous")?),
        };
        let pol = match &ck {
            Some(ck) => policy::load(&self.model_dir, self.device, self.dtype, Some(ck))?,
            None => policy::load_trainable_base(&self.model_dir, self.device, self.dtype, &self.p.start_mode)?,
        };
        let ck = ck.unwrap_or_default();
        // Rollouts are fed back through the splice: they must never contain the image token.
        self.tp.generation.suppress_token_ids.push(pol.model.image_token_id());
        let images = ImageInputs::new(&pol.model, &self.model_dir, &self.features)?;
        let template = super::inputs::prompt_template(&self.p.model, &self.p.prompt, &self.model_dir, pol.model.image_token_id())?;
        let prompter = Prompter::new(&self.tok, &pol.model, &template).with_instruction(self.p.instruction.as_deref());
        let mut prompts = Vec::with_capacity(self.items.len());
        for it in &self.items {
            let (n, feat) = images.get(&pol.model, it)?;
            let images = feat.into_iter().map(|t| t.to_device(self.device)).collect();
            prompts.push(PpoPrompt { ids: prompter.prompt(&it.question, &it.choices, n)?, images });
        }
        self.prompts = prompts;
        let mut trainer = PpoTrainer::new(&pol.vs, pol.model.text_model().cfg.hidden_size, self.tp.clone())?;
        if self.k > 0 {
            let at = ck.display().to_string();
            let (tensors, _) = read_safetensors(&ck)?;
            let vars = pol.vs.variables();
            tch::no_grad(|| -> Result<()> {
                for (name, var) in vars.iter().filter(|(n, _)| n.starts_with("v_head.")) {
                    let src =
                        tensors.get(&format!("param.{name}")).ok_or_else(|| JobError::file(&ck, format!("no value head weight {name}")))?;
                    if src.size() != var.size() {
                        return Err(JobError::file(&ck, format!("{name}: expected shape {:?}, found {:?}", var.size(), src.size())));
                    }
                    var.shallow_clone().f_copy_(&src.to_kind(var.kind()).to_device(var.device()))?;
                }
                Ok(())
            })?;
            trainer.load_state(&tensors, &at)?;
            if trainer.steps_done() != self.k {
                return Err(JobError::file(&ck, format!("the trainer state is after step {}, expected {}", trainer.steps_done(), self.k)));
            }
        }
        Ok((pol, trainer))
    }
}

pub fn rollout(ctx: &StageContext) -> Result<()> {
    let mut it = Iteration::load(ctx)?;
    let (pol, mut trainer) = it.policy(ctx)?;
    let level_path = ctx.input_path("level_model")?;
    let levels: LevelModel = serde_json::from_slice(&std::fs::read(&level_path).map_err(JobError::io(&level_path))?)
        .map_err(|e| JobError::file(&level_path, format!("not a level model: {e}")))?;
    let session = RewardModel::session_options(&it.p);
    let rewards = RewardModel::load(&it.p, &mmboundary::stages::models::resolve(ctx, &it.p.clip, "clip")?, levels, &session)?;
    let feats = &it.features;
    let f_ids = feats.column_by_name("item_id").ok_or_else(|| JobError::column("features artifact", "item_id"))?.as_string::<i32>();
    let f_emb = feats.column_by_name("embedding").ok_or_else(|| JobError::column("features artifact", "embedding"))?.as_list::<i32>();
    let image: HashMap<&str, Vec<f32>> =
        (0..f_ids.len()).map(|i| (f_ids.value(i), f_emb.value(i).as_primitive::<Float32Type>().values().to_vec())).collect();

    let bar = ctx.progress(2, &format!("PPO iteration {}: sampling, scoring", it.k));
    // Each rollout samples from its own stream, seeded by its item's id, the step and its sample index,
    // so an item's rollouts do not depend on which other questions share the draw.
    let gen_seed = it.tp.generation.seed;
    let seed_of = |i: usize, j: usize, step: usize| item_seed(gen_seed, &it.items[i].id, ((step as u64) << 32) | j as u64);
    let sampled = trainer.sample_seeded(&pol.model, &it.prompts, Some(&seed_of))?;
    bar.inc(1);
    let eos = pol.model.text_model().cfg.eos_token_ids();
    let mut decoded = Vec::with_capacity(sampled.len());
    for (_, g) in &sampled {
        let (text, pieces) = mllm::generate::decode_pieces(&it.tok, &g.tokens)?;
        let ends = mmboundary::confidence::spans::token_ends(&pieces);
        let tokens = g
            .tokens
            .iter()
            .enumerate()
            .zip(pieces)
            .map(|((k, &t), piece)| TokenInfo {
                id: t as u32,
                text: piece,
                log_prob: g.logprobs[k] as f64,
                entropy: g.entropies[k] as f64,
                is_special: eos.contains(&t),
            })
            .collect();
        decoded.push(RolloutTokens { text, tokens, token_ends: ends });
    }
    let mut inputs = Vec::with_capacity(sampled.len());
    for ((o, _), r) in sampled.iter().zip(&decoded) {
        let item = &it.items[*o];
        let emb = image.get(item.id.as_str()).ok_or_else(|| JobError::item(&item.id, "no CLIP image embedding"))?;
        inputs.push((item, emb.as_slice(), r));
    }
    let scores = rewards.score_batch(&inputs).map_err(JobError::step(format!("scoring the rollouts of PPO iteration {}", it.k)))?;
    bar.finish_and_clear();

    let mut samples: HashMap<usize, u32> = HashMap::new();
    let rows: Vec<RolloutRow> = sampled
        .iter()
        .zip(decoded)
        .zip(scores)
        .map(|(((o, g), r), score)| {
            let n = samples.entry(*o).or_default();
            *n += 1;
            RolloutRow {
                iteration: it.k as u32,
                item: it.items[*o].id.clone(),
                sample: *n - 1,
                text: r.text,
                tokens: g.tokens.clone(),
                score,
            }
        })
        .collect();
    ctx.write_table("rollouts", rollouts_schema(), &[rollouts_batch(&rows, &judge_name(&it.p))?], None)?;
    Ok(())
}

pub fn update(ctx: &StageContext) -> Result<()> {
    let started = std::time::Instant::now();
    let mut it = Iteration::load(ctx)?;
    let (pol, mut trainer) = it.policy(ctx)?;
    let reference = match it.p.reference {
        ReferencePolicy::Sft => {
            let start = match it.p.start {
                PolicyStart::Sft => Some(ctx.input_path("sft_checkpoint")?),
                PolicyStart::Vanilla => None,
            };
            let r = policy::load(&it.model_dir, it.device, it.dtype, start.as_deref())?;
            policy::freeze(&r);
            Some(r)
        }
        ReferencePolicy::Base => {
            if !pol.has_lora() {
                return Err(JobError::param(
                    "ppo.reference",
                    "\"base\" needs a LoRA SFT checkpoint (the base is the policy with its adapters off)",
                ));
            }
            None
        }
    };
    let (sampled, scores) = read_rollouts(ctx, &it)?;
    trainer.mark_sampled();
    let bar = ctx.progress(1, &format!("PPO iteration {}: update", it.k));
    let stats = trainer.update(&pol.model, reference.as_ref().map(|r| &r.model), &it.prompts, &sampled, &scores)?;
    bar.finish_and_clear();
    for (name, v) in
        [("kl", stats.kl), ("value_loss", stats.value_loss), ("policy_loss", stats.policy_loss), ("policy_entropy", stats.policy_entropy)]
    {
        if !v.is_finite() {
            return Err(JobError::stage(format!("ppo iteration {}", it.k), format!("{name} is {v}")));
        }
    }

    // The policy's trainable weights (adapters or all) and value head, and the trainer's state.
    let dir = tempfile::tempdir().map_err(JobError::io(std::env::temp_dir()))?;
    let path = dir.path().join("update.safetensors");
    let mut tensors: Vec<(String, Tensor)> = trainer.opt.params.iter().map(|(n, t)| (format!("param.{n}"), t.detach())).collect();
    tensors.extend(trainer.state());
    write_safetensors(&path, &tensors, checkpoint_meta(&pol, &it.tp, it.k + 1)?)?;
    ctx.write_file("checkpoint", ArtifactKind::Safetensors, &path)?;
    let log = log_batch(&[(it.k as u32, stats, started.elapsed().as_secs_f64())])?;
    ctx.write_table("log", ppo_log_schema(), &[log], None)?;
    Ok(())
}

/// The `ppo` stage: the last update's policy without its trainer state, and every iteration's log and rollouts.
pub fn gather(ctx: &StageContext) -> Result<()> {
    let k = ctx.params::<serde_json::Value>()?["iterations"]
        .as_u64()
        .ok_or_else(|| JobError::param("ppo.iterations", "missing from the params"))?;
    let k = k as usize;
    let mut logs = Vec::with_capacity(k);
    let mut rollouts = Vec::with_capacity(k);
    // Rebuilt on the canonical schemas (what was read carries the files' own metadata).
    let with = |schema: arrow::datatypes::SchemaRef, t: mmboundary::store::Table| -> Result<Vec<RecordBatch>> {
        t.batches
            .iter()
            .map(|b| {
                RecordBatch::try_new(schema.clone(), b.columns().to_vec())
                    .map_err(|e| JobError::file(&t.path, format!("unexpected schema: {e}")))
            })
            .collect()
    };
    for i in 0..k {
        logs.extend(with(ppo_log_schema(), ctx.input_table(&format!("log_{i}"))?)?);
        rollouts.extend(with(rollouts_schema(), ctx.input_table(&format!("rollouts_{i}"))?)?);
    }
    ctx.write_table("log", ppo_log_schema(), &logs, None)?;
    ctx.write_table("rollouts", rollouts_schema(), &rollouts, None)?;
    let last = ctx.input_path("last")?;
    let (tensors, meta) = read_safetensors(&last)?;
    let mut policy: Vec<(String, Tensor)> = tensors.into_iter().filter(|(n, _)| n.starts_with("param.")).collect();
    policy.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = tempfile::tempdir().map_err(JobError::io(std::env::temp_dir()))?;
    let path = dir.path().join("ppo.safetensors");
    write_safetensors(&path, &policy, meta)?;
    ctx.write_file("checkpoint", ArtifactKind::Safetensors, &path)?;
    Ok(())
}

fn checkpoint_meta(pol: &Policy, tp: &PpoParams, iterations: usize) -> Result<HashMap<String, String>> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "mmboundary-ppo-v1".to_string());
    meta.insert("params".to_string(), pol.sft_meta.clone().unwrap_or_default());
    meta.insert("ppo".to_string(), serde_json::to_string(tp)?);
    meta.insert("iterations".to_string(), iterations.to_string());
    Ok(meta)
}

/// Iteration k's rollouts as update_k trains on them: (prompt index, tokens) and the placed rewards.
fn read_rollouts(ctx: &StageContext, it: &Iteration) -> Result<(Vec<(usize, Vec<i64>)>, Vec<Score>)> {
    let t = ctx.input_table_as("rollouts", &mmboundary::stages::ppo::rollouts_schema())?;
    let (sampled, scores) = rollouts_for_update(&t.concat()?, &t.path.display().to_string(), &it.items, it.k)?;
    let expected = it.prompts.len() * it.tp.samples_per_prompt;
    if sampled.len() != expected {
        return Err(JobError::file(
            &t.path,
            format!("{} rollouts, expected {expected} ({} questions × N)", sampled.len(), it.prompts.len()),
        ));
    }
    Ok((sampled, scores))
}

/// A rollouts table (`rollouts_batch`) read back for iteration `k`'s update, whose questions are `items`
/// in draw order: each row's (prompt index, response tokens) and its rewards placed on tokens, with the
/// reward's parts (`r_ka`, `r_ec`, `r_cs`, `reward`). `at` names the table in errors.
pub fn rollouts_for_update(b: &RecordBatch, at: &str, items: &[Item], k: usize) -> Result<(Vec<(usize, Vec<i64>)>, Vec<Score>)> {
    let col = |n: &str| b.column_by_name(n).ok_or_else(|| JobError::column(at, n));
    let ids = col("item_id")?.as_string::<i32>();
    let tokens = col("tokens")?.as_list::<i32>();
    let (r_tok, r_val) = (col("reward_tokens")?.as_list::<i32>(), col("reward_values")?.as_list::<i32>());
    let parts: Vec<(&str, &arrow::array::Float64Array)> =
        ["r_ka", "r_ec", "r_cs", "reward"].iter().map(|&n| Ok((n, col(n)?.as_primitive::<Float64Type>()))).collect::<Result<_>>()?;
    let position: HashMap<&str, usize> = items.iter().enumerate().map(|(i, x)| (x.id.as_str(), i)).collect();
    let (mut sampled, mut scores) = (Vec::with_capacity(b.num_rows()), Vec::with_capacity(b.num_rows()));
    for r in 0..b.num_rows() {
        let o = *position.get(ids.value(r)).ok_or_else(|| {
            JobError::file(at, format!("row {r}: item {} is not among iteration {k}'s questions (stale rollouts?)", ids.value(r)))
        })?;
        sampled.push((o, tokens.value(r).as_primitive::<Int64Type>().values().to_vec()));
        let at_tok = r_tok.value(r);
        let vals = r_val.value(r);
        let token_rewards = at_tok
            .as_primitive::<UInt32Type>()
            .values()
            .iter()
            .zip(vals.as_primitive::<Float64Type>().values())
            .map(|(&t, &v)| (t as usize, v))
            .collect();
        let components = parts.iter().map(|(n, a)| (n.to_string(), a.value(r))).collect::<BTreeMap<_, _>>();
        scores.push(Score { token_rewards, components });
    }
    Ok((sampled, scores))
}

/// One rollout as the `rollouts` table stores it.
pub struct RolloutRow {
    pub iteration: u32,
    pub item: String,
    /// The rollout's index among its item's rollouts in this iteration.
    pub sample: u32,
    pub text: String,
    pub tokens: Vec<i64>,
    pub score: RolloutScore,
}

/// The `log` table (`ppo_log_schema`): one row per (iteration, step stats, seconds); a reward part the
/// stats lack is NaN.
pub fn log_batch(log: &[(u32, mllm::ppo::PpoStats, f64)]) -> Result<RecordBatch> {
    let comp = |s: &mllm::ppo::PpoStats, k: &str| s.components.get(k).copied().unwrap_or(f64::NAN);
    let mut c: Vec<Float64Builder> = (0..13).map(|_| Float64Builder::new()).collect();
    let mut it_col = UInt32Builder::new();
    for (i, s, secs) in log {
        it_col.append_value(*i);
        let vals = [
            s.score_mean,
            s.kl,
            s.policy_entropy,
            s.clip_fraction,
            s.value_loss,
            s.policy_loss,
            s.approx_kl,
            s.response_length,
            comp(s, "r_ka"),
            comp(s, "r_ec"),
            comp(s, "r_cs"),
            comp(s, "reward"),
            *secs,
        ];
        for (b, v) in c.iter_mut().zip(vals) {
            b.append_value(v);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(it_col.finish())];
    cols.extend(c.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    Ok(RecordBatch::try_new(ppo_log_schema(), cols)?)
}

/// The `rollouts` table (`rollouts_schema`) of `rows`, each scored by `judge`.
pub fn rollouts_batch(rows: &[RolloutRow], judge: &str) -> Result<RecordBatch> {
    let (mut o_it, mut o_id, mut o_sample, mut o_text) =
        (UInt32Builder::new(), StringBuilder::new(), UInt32Builder::new(), StringBuilder::new());
    let (mut o_sent, mut o_stmt) = (ListBuilder::new(StringBuilder::new()), ListBuilder::new(StringBuilder::new()));
    let (mut o_ev, mut o_iv) = (ListBuilder::new(Float64Builder::new()), ListBuilder::new(Float64Builder::new()));
    let (mut o_lv, mut o_corr) = (ListBuilder::new(UInt8Builder::new()), ListBuilder::new(BooleanBuilder::new()));
    let (mut o_ka, mut o_ec, mut o_cs, mut o_r, mut o_judge) =
        (Float64Builder::new(), Float64Builder::new(), Float64Builder::new(), Float64Builder::new(), StringBuilder::new());
    let (mut o_tok, mut o_rt, mut o_rv) =
        (ListBuilder::new(Int64Builder::new()), ListBuilder::new(UInt32Builder::new()), ListBuilder::new(Float64Builder::new()));
    for r in rows {
        let s = &r.score;
        o_it.append_value(r.iteration);
        o_id.append_value(&r.item);
        o_sample.append_value(r.sample);
        o_text.append_value(&r.text);
        for t in &s.sentences {
            o_sent.values().append_value(t);
        }
        o_sent.append(true);
        for t in &s.statements {
            o_stmt.values().append_option(t.as_deref());
        }
        o_stmt.append(true);
        for v in &s.expressed {
            o_ev.values().append_option(*v);
        }
        o_ev.append(true);
        o_iv.values().append_slice(&s.internal);
        o_iv.append(true);
        o_lv.values().append_slice(&s.levels);
        o_lv.append(true);
        for &b in &s.correct {
            o_corr.values().append_value(b);
        }
        o_corr.append(true);
        o_ka.append_value(s.ka);
        o_ec.append_value(s.ec);
        o_cs.append_value(s.cs);
        o_r.append_value(s.total);
        o_judge.append_value(judge);
        o_tok.values().append_slice(&r.tokens);
        o_tok.append(true);
        for &(t, v) in &s.token_rewards {
            o_rt.values().append_value(t as u32);
            o_rv.values().append_value(v);
        }
        o_rt.append(true);
        o_rv.append(true);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(o_it.finish()),
        Arc::new(o_id.finish()),
        Arc::new(o_sample.finish()),
        Arc::new(o_text.finish()),
        Arc::new(o_sent.finish()),
        Arc::new(o_stmt.finish()),
        Arc::new(o_ev.finish()),
        Arc::new(o_iv.finish()),
        Arc::new(o_lv.finish()),
        Arc::new(o_corr.finish()),
        Arc::new(o_ka.finish()),
        Arc::new(o_ec.finish()),
        Arc::new(o_cs.finish()),
        Arc::new(o_r.finish()),
        Arc::new(o_judge.finish()),
        Arc::new(o_tok.finish()),
        Arc::new(o_rt.finish()),
        Arc::new(o_rv.finish()),
    ];
    Ok(RecordBatch::try_new(rollouts_schema(), cols)?)
}
