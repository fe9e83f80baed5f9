//! PPO for (multimodal) causal LMs, after TRL's PPOTrainer: a value head on the policy's final hidden
//! states, a frozen reference for the KL penalty (with LoRA: the same model with its adapters switched
//! off; otherwise a separate frozen copy), GAE (γ, λ), clipped policy and value losses, optional reward
//! whitening, mini-batches and PPO epochs, N samples per prompt.
//!
//! Rewards: the caller scores each rollout and says on which response tokens each reward lands.
//! MMBoundary rewards every sentence's confidence statement; we place sentence i's reward on the token
//! that ends its confidence statement (the caller's reward model locates it through `Generated::pieces`),
//! so the credit reaches the tokens that produced that statement through GAE,
//! and nothing after it. Per token the reward is also −kl_coef · (log π − log π_ref) (TRL's k1 estimator).
use super::generate::{generate_multimodal, Generated, GenerationParams};
use super::llava::EmbedInputs;
use super::optim::{AdamW, AdamWParams};
use super::sft::{make_batch, SftExample};
use super::{MllmError, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{nn, Kind, Tensor};

/// PPO settings; defaults are TRL's where the paper is silent (method-reference.md), and the paper's
/// N = 3 samples per question and lr 1e-5.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PpoParams {
    pub ppo_epochs: usize,
    /// KL penalty coefficient (TRL 0.05).
    pub kl_coef: f64,
    /// Policy ratio clip ε (TRL 0.2).
    pub clip_range: f64,
    /// Value clip around the rollout values (TRL 0.2).
    pub clip_range_value: f64,
    /// Value-loss weight (TRL 0.1).
    pub vf_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    /// Scale (not shift) rewards to unit variance over the batch (TRL default off).
    pub whiten_rewards: bool,
    /// Rollouts per gradient step.
    pub mini_batch_size: usize,
    /// Samples per prompt (paper: N = 3).
    pub samples_per_prompt: usize,
    /// Paper: 1e-5.
    pub learning_rate: f64,
    pub max_grad_norm: f64,
    pub adamw: AdamWParams,
    /// Sampling settings of the rollouts (temperature 1 = on-policy).
    pub generation: GenerationParams,
    /// Seed of mini-batch shuffling and of the value-head initialisation.
    pub seed: u64,
}

impl Default for PpoParams {
    fn default() -> Self {
        Self {
            ppo_epochs: 4,
            kl_coef: 0.05,
            clip_range: 0.2,
            clip_range_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            whiten_rewards: false,
            mini_batch_size: 8,
            samples_per_prompt: 3,
            learning_rate: 1e-5,
            max_grad_norm: 1.0,
            adamw: AdamWParams::default(),
            generation: GenerationParams { temperature: 1.0, max_new_tokens: 256, ..Default::default() },
            seed: 0,
        }
    }
}

/// A prompt for rollouts: token ids (with image tokens) and its image features.
#[derive(Debug)]
pub struct PpoPrompt {
    pub ids: Vec<i64>,
    pub images: Vec<Tensor>,
}

/// What the reward function says about one rollout.
#[derive(Debug, Clone, Default)]
pub struct Score {
    /// (response token index, reward) pairs; several may share a token.
    pub token_rewards: Vec<(usize, f64)>,
    /// Named parts of the reward (logged as their batch means), e.g. r_ka, r_ec, r_cs.
    pub components: BTreeMap<String, f64>,
}

/// Metrics of one PPO step (one row of the caller's Parquet log).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PpoStats {
    pub step: usize,
    /// Mean over rollouts of the summed reward-function rewards.
    pub score_mean: f64,
    /// Mean over rollouts of Σ_t (log π_old − log π_ref).
    pub kl: f64,
    /// Mean entropy of the policy over response tokens (last PPO epoch).
    pub policy_entropy: f64,
    pub clip_fraction: f64,
    pub value_loss: f64,
    pub policy_loss: f64,
    pub approx_kl: f64,
    pub response_length: f64,
    pub components: BTreeMap<String, f64>,
}

/// The value head `v_head.summary` (TRL's name): hidden → scalar.
#[derive(Debug)]
pub struct ValueHead {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl ValueHead {
    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        hidden.to_kind(Kind::Float).linear(&self.weight, Some(&self.bias)).squeeze_dim(-1)
    }
}

pub struct PpoTrainer {
    pub params: PpoParams,
    pub value_head: ValueHead,
    pub opt: AdamW,
    step: usize,
}

struct Rollout {
    prompt: usize,
    response: Vec<i64>,
    old_lp: Vec<f64>,
    values: Vec<f64>,
    advantages: Vec<f64>,
    returns: Vec<f64>,
}

fn masked_whiten(rows: &mut [Vec<f64>], shift_mean: bool) {
    let all: Vec<f64> = rows.iter().flatten().copied().collect();
    if all.len() < 2 {
        return;
    }
    let n = all.len() as f64;
    let mean = all.iter().sum::<f64>() / n;
    let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    for x in rows.iter_mut().flatten() {
        let w = (*x - mean) / (var + 1e-8).sqrt();
        *x = if shift_mean { w } else { w + mean };
    }
}

/// GAE over one response: advantages and returns.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut last = 0.0;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        last = delta + gamma * lam * last;
        adv[t] = last;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Per-row values laid out on the batch's target positions (row r's response starts at prompt_len − 1).
fn layout(rows: &[&[f64]], starts: &[usize], width: i64, dev: tch::Device) -> Tensor {
    let mut flat = vec![0f32; rows.len() * width as usize];
    for (r, (vals, &s)) in rows.iter().zip(starts).enumerate() {
        for (i, v) in vals.iter().enumerate() {
            flat[r * width as usize + s + i] = *v as f32;
        }
    }
    Tensor::from_slice(&flat).view([rows.len() as i64, width]).to_device(dev)
}

fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    (x * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
}

/// Forward for PPO: (token log-probs, entropies, values), each [b, T-1].
fn policy_forward<M: EmbedInputs>(model: &M, vh: &ValueHead, batch: &super::sft::Batch) -> Result<(Tensor, Tensor, Tensor)> {
    let lm = model.text_model();
    let e = model.embed_inputs(&batch.ids, &batch.images)?;
    let rot = model.rotary(&batch.ids, &batch.mask, &batch.images)?;
    let hidden = lm.forward_embeds_rotary(&e, Some(&batch.mask), None, rot.as_ref().map(|r| r.tables()))?;
    let t = hidden.size()[1];
    let h = hidden.narrow(1, 0, t - 1);
    let logp = lm.logits(&h).to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    let lp = logp.gather(2, &batch.ids.narrow(1, 1, t - 1).unsqueeze(-1), false).squeeze_dim(-1);
    let ent = -(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float);
    Ok((lp, ent, vh.forward(&h)))
}

impl PpoTrainer {
    /// Adds the value head to `vs` and an optimizer over every trainable variable of `vs` (LoRA adapters
    /// when attached, otherwise the whole policy) plus the value head.
    pub fn new(vs: &nn::VarStore, hidden_size: i64, params: PpoParams) -> Result<Self> {
        if params.mini_batch_size == 0 || params.samples_per_prompt == 0 || params.ppo_epochs == 0 {
            return Err(MllmError::Input("PPO: mini_batch_size, samples_per_prompt and ppo_epochs must be ≥ 1".into()));
        }
        // Seeded N(0, 0.02²) from our own RNG, independent of torch's global generator.
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let normal = rand_distr::Normal::new(0.0f32, 0.02).map_err(|e| MllmError::Input(e.to_string()))?;
        let init: Vec<f32> = (0..hidden_size).map(|_| rand_distr::Distribution::sample(&normal, &mut rng)).collect();
        let p = vs.root() / "v_head" / "summary";
        let weight = p.var_copy("weight", &Tensor::from_slice(&init).view([1, hidden_size]).to_device(vs.device()));
        let bias = p.var("bias", &[1], nn::Init::Const(0.0));
        let mut trainable: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        let opt = AdamW::new(trainable, params.adamw);
        Ok(Self { params, value_head: ValueHead { weight, bias }, opt, step: 0 })
    }

    /// One PPO step: N rollouts per prompt, scoring, advantages, then `ppo_epochs` passes of mini-batch
    /// updates. `reference`: None = the policy with its LoRA adapters off (needs adapters), or a frozen model.
    /// The same as [`Self::sample`], then `reward_fn` on every rollout at once, then [`Self::update`].
    pub fn step<M: EmbedInputs>(
        &mut self,
        model: &M,
        reference: Option<&M>,
        prompts: &[PpoPrompt],
        reward_fn: &mut dyn FnMut(&[(usize, &Generated)]) -> Result<Vec<Score>>,
    ) -> Result<PpoStats> {
        let rollouts = self.sample(model, prompts)?;
        // One call for every rollout of the step, so the reward model batches its encoders across them.
        let batch: Vec<(usize, &Generated)> = rollouts.iter().map(|(o, g)| (*o, g)).collect();
        let scores = reward_fn(&batch)?;
        let sampled: Vec<(usize, Vec<i64>)> = rollouts.into_iter().map(|(o, g)| (o, g.tokens)).collect();
        self.update(model, reference, prompts, &sampled, &scores)
    }

    /// Steps taken so far (sample calls); it seeds each step's sampling and mini-batch order.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Counts a step whose rollouts [`Self::sample`] drew in another process (the pipeline's `rollout_k`),
    /// before [`Self::update`] on them here.
    pub fn mark_sampled(&mut self) {
        self.step += 1;
    }

    /// The trainer's state beyond the model's weights: the optimizer's moments and step counts, and the
    /// PPO step counter (`ppo.step`), so that a step run in a later process continues exactly.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut v = self.opt.state();
        v.push(("ppo.step".to_string(), Tensor::from_slice(&[self.step as i64])));
        v.push(("adam.t".to_string(), Tensor::from_slice(&[self.opt.t])));
        v
    }

    /// Restores [`Self::state`]; `at` names the file in errors.
    pub fn load_state(&mut self, tensors: &std::collections::HashMap<String, Tensor>, at: &str) -> Result<()> {
        let counter = |k: &str| -> Result<i64> {
            let t = tensors
                .get(k)
                .ok_or_else(|| MllmError::Checkpoint { path: at.into(), msg: format!("no `{k}` in the PPO trainer state") })?;
            match t.int64_value(&[0]) {
                v if v >= 0 => Ok(v),
                v => Err(MllmError::Checkpoint { path: at.into(), msg: format!("`{k}` is {v}") }),
            }
        };
        let step = counter("ppo.step")?;
        self.opt.load_state(tensors, counter("adam.t")?, at)?;
        self.step = step as usize;
        Ok(())
    }

    /// N rollouts per prompt from the current policy, as (prompt index, generation); counts a step.
    pub fn sample<M: EmbedInputs>(&mut self, model: &M, prompts: &[PpoPrompt]) -> Result<Vec<(usize, Generated)>> {
        self.sample_seeded(model, prompts, None)
    }

    /// [`Self::sample`] with each rollout's sampling seed given by `seed_of(prompt index, sample index, step)`
    /// (None: the step's seed plus the rollout's row), so that a caller deriving it from the prompt's item
    /// gets the same rollouts for an item whatever other prompts share its step.
    pub fn sample_seeded<M: EmbedInputs>(
        &mut self,
        model: &M,
        prompts: &[PpoPrompt],
        seed_of: Option<&dyn Fn(usize, usize, usize) -> u64>,
    ) -> Result<Vec<(usize, Generated)>> {
        let p = &self.params;
        if prompts.is_empty() {
            return Err(MllmError::Input("PPO step: no prompts".into()));
        }
        self.step += 1;
        let mut gen_inputs = Vec::new();
        let mut owners = Vec::new();
        let mut row_seeds = Vec::new();
        for (i, pr) in prompts.iter().enumerate() {
            for j in 0..p.samples_per_prompt {
                gen_inputs.push((pr.ids.clone(), pr.images.iter().map(|t| t.shallow_clone()).collect::<Vec<_>>()));
                owners.push(i);
                if let Some(f) = seed_of {
                    row_seeds.push(f(i, j, self.step));
                }
            }
        }
        let gparams =
            GenerationParams { seed: p.generation.seed.wrapping_add(self.step as u64 * 1_000_003), row_seeds, ..p.generation.clone() };
        let gens = generate_multimodal(model, &gen_inputs, &gparams, None)?;
        Ok(owners.into_iter().zip(gens).collect())
    }

    /// The update of the step [`Self::sample`] started: given its rollouts (prompt index, response token
    /// ids) and their scores, advantages and `ppo_epochs` passes of mini-batch updates.
    pub fn update<M: EmbedInputs>(
        &mut self,
        model: &M,
        reference: Option<&M>,
        prompts: &[PpoPrompt],
        sampled: &[(usize, Vec<i64>)],
        scores: &[Score],
    ) -> Result<PpoStats> {
        let p = self.params.clone();
        let lm = model.text_model();
        let dev = lm.device();
        if sampled.is_empty() {
            return Err(MllmError::Input("PPO update: no rollouts".into()));
        }
        if reference.is_none() && !lm.has_lora() {
            return Err(MllmError::Input(
                "PPO without a reference model needs LoRA adapters (the reference is the base with them off)".into(),
            ));
        }
        if scores.len() != sampled.len() {
            return Err(MllmError::Input(format!("{} scores for {} rollouts", scores.len(), sampled.len())));
        }
        let mut stats = PpoStats { step: self.step, ..Default::default() };
        for ((o, tokens), s) in sampled.iter().zip(scores) {
            if *o >= prompts.len() {
                return Err(MllmError::Input(format!("a rollout of prompt {o}, but there are {} prompts", prompts.len())));
            }
            for &(t, r) in &s.token_rewards {
                if t >= tokens.len() || !r.is_finite() {
                    return Err(MllmError::Input(format!("reward ({r}) placed at token {t} of a {}-token response", tokens.len())));
                }
            }
            for (k, v) in &s.components {
                *stats.components.entry(k.clone()).or_default() += v / sampled.len() as f64;
            }
            stats.score_mean += s.token_rewards.iter().map(|x| x.1).sum::<f64>() / sampled.len() as f64;
        }
        // 3. Old log-probs, reference log-probs and values (no gradient), in mini-batch chunks.
        let mut rollouts: Vec<Rollout> = sampled
            .iter()
            .map(|(o, tokens)| Rollout {
                prompt: *o,
                response: tokens.clone(),
                old_lp: vec![],
                values: vec![],
                advantages: vec![],
                returns: vec![],
            })
            .collect();
        let mut ref_lps: Vec<Vec<f64>> = vec![vec![]; rollouts.len()];
        let idx: Vec<usize> = (0..rollouts.len()).collect();
        for chunk in idx.chunks(p.mini_batch_size) {
            let (batch, starts) = self.batch(prompts, &rollouts, chunk, dev)?;
            tch::no_grad(|| -> Result<()> {
                let (lp, _, v) = policy_forward(model, &self.value_head, &batch)?;
                let rlp = match reference {
                    Some(r) => policy_forward(r, &self.value_head, &batch)?.0,
                    None => {
                        lm.set_lora_enabled(false);
                        let out = policy_forward(model, &self.value_head, &batch);
                        lm.set_lora_enabled(true);
                        out?.0
                    }
                };
                for (j, &r) in chunk.iter().enumerate() {
                    let n = rollouts[r].response.len() as i64;
                    let take = |t: &Tensor| {
                        Vec::<f64>::try_from(t.get(j as i64).narrow(0, starts[j] as i64, n).to_kind(Kind::Double)).map_err(MllmError::Torch)
                    };
                    rollouts[r].old_lp = take(&lp)?;
                    rollouts[r].values = take(&v)?;
                    ref_lps[r] = take(&rlp)?;
                }
                Ok(())
            })?;
        }
        // 4. Rewards (KL penalty + placed scores), GAE, whitened advantages.
        let mut rewards: Vec<Vec<f64>> = Vec::new();
        for (r, ro) in rollouts.iter().enumerate() {
            let kl: Vec<f64> = ro.old_lp.iter().zip(&ref_lps[r]).map(|(a, b)| a - b).collect();
            stats.kl += kl.iter().sum::<f64>() / rollouts.len() as f64;
            let mut rw: Vec<f64> = kl.iter().map(|k| -p.kl_coef * k).collect();
            for &(t, s) in &scores[r].token_rewards {
                rw[t] += s;
            }
            rewards.push(rw);
        }
        if p.whiten_rewards {
            masked_whiten(&mut rewards, false);
        }
        let mut advs = Vec::new();
        for (ro, rw) in rollouts.iter_mut().zip(&rewards) {
            let (a, ret) = gae(rw, &ro.values, p.gamma, p.lam);
            ro.returns = ret;
            advs.push(a);
        }
        masked_whiten(&mut advs, true);
        for (ro, a) in rollouts.iter_mut().zip(advs) {
            ro.advantages = a;
        }
        stats.response_length = rollouts.iter().map(|r| r.response.len() as f64).sum::<f64>() / rollouts.len() as f64;
        // 5. PPO epochs over shuffled mini-batches.
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ (self.step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (mut n_mb, mut clip, mut vl, mut pl, mut akl, mut ent) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for epoch in 0..p.ppo_epochs {
            let mut order = idx.clone();
            order.shuffle(&mut rng);
            for chunk in order.chunks(p.mini_batch_size) {
                let (batch, starts) = self.batch(prompts, &rollouts, chunk, dev)?;
                let w = batch.target_mask.size()[1];
                let field = |f: fn(&Rollout) -> &Vec<f64>| {
                    let rows: Vec<&[f64]> = chunk.iter().map(|&r| f(&rollouts[r]).as_slice()).collect();
                    layout(&rows, &starts, w, dev)
                };
                let (old_lp, old_v, adv, ret) =
                    (field(|r| &r.old_lp), field(|r| &r.values), field(|r| &r.advantages), field(|r| &r.returns));
                let mask = &batch.target_mask;
                self.opt.zero_grad();
                let (lp, en, v) = policy_forward(model, &self.value_head, &batch)?;
                let ratio = (&lp - &old_lp).exp();
                let pg1 = -&adv * &ratio;
                let pg2 = -&adv * ratio.clamp(1.0 - p.clip_range, 1.0 + p.clip_range);
                let pg_loss = masked_mean(&pg1.maximum(&pg2), mask);
                let v_clipped = &old_v + (&v - &old_v).clamp(-p.clip_range_value, p.clip_range_value);
                let vf = (&v - &ret).square().maximum(&(&v_clipped - &ret).square());
                let vf_loss = masked_mean(&vf, mask) * 0.5;
                let loss = &pg_loss + &vf_loss * p.vf_coef;
                let lv = loss.double_value(&[]);
                if !lv.is_finite() {
                    return Err(MllmError::NonFiniteLoss { step: self.step, loss: lv, last_good: "(PPO keeps no checkpoint)".into() });
                }
                loss.backward();
                self.opt.clip_grad_norm(p.max_grad_norm);
                self.opt.step(p.learning_rate);
                n_mb += 1.0;
                clip += masked_mean(&pg2.gt_tensor(&pg1).to_kind(Kind::Float), mask).double_value(&[]);
                vl += vf_loss.double_value(&[]);
                pl += pg_loss.double_value(&[]);
                akl += (masked_mean(&(&lp - &old_lp).square(), mask) * 0.5).double_value(&[]);
                if epoch + 1 == p.ppo_epochs {
                    ent += masked_mean(&en.detach(), mask).double_value(&[]) * chunk.len() as f64 / rollouts.len() as f64;
                }
            }
        }
        stats.clip_fraction = clip / n_mb;
        stats.value_loss = vl / n_mb;
        stats.policy_loss = pl / n_mb;
        stats.approx_kl = akl / n_mb;
        stats.policy_entropy = ent;
        Ok(stats)
    }

    fn batch(
        &self,
        prompts: &[PpoPrompt],
        rollouts: &[Rollout],
        chunk: &[usize],
        dev: tch::Device,
    ) -> Result<(super::sft::Batch, Vec<usize>)> {
        let ex: Vec<SftExample> = chunk
            .iter()
            .map(|&r| SftExample {
                prompt: prompts[rollouts[r].prompt].ids.clone(),
                response: rollouts[r].response.clone(),
                images: prompts[rollouts[r].prompt].images.iter().map(|t| t.shallow_clone()).collect(),
            })
            .collect();
        let starts = ex.iter().map(|e| e.prompt.len() - 1).collect();
        Ok((make_batch(&ex.iter().collect::<Vec<_>>(), dev)?, starts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_with_lambda_one_gives_reward_to_go_minus_value() {
        let (a, r) = gae(&[0.0, 0.0, 1.0], &[0.2, 0.5, 0.1], 1.0, 1.0);
        assert!((a[0] - 0.8).abs() < 1e-12 && (a[1] - 0.5).abs() < 1e-12 && (a[2] - 0.9).abs() < 1e-12, "{a:?}");
        assert!(r.iter().all(|x| (x - 1.0).abs() < 1e-12));
        // λ = 0: one-step TD errors.
        let (a, _) = gae(&[0.0, 1.0], &[0.3, 0.4], 1.0, 0.0);
        assert!((a[0] - 0.1).abs() < 1e-12 && (a[1] - 0.6).abs() < 1e-12);
    }

    #[test]
    fn whitening_gives_zero_mean_unit_variance() {
        let mut rows = vec![vec![1.0, 2.0], vec![3.0, 4.0, 5.0]];
        masked_whiten(&mut rows, true);
        let all: Vec<f64> = rows.concat();
        let m = all.iter().sum::<f64>() / 5.0;
        let v = all.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 4.0;
        assert!(m.abs() < 1e-12 && (v - 1.0).abs() < 1e-6);
    }
}
