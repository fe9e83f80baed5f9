//! Direct Preference Optimization (Rafailov et al. 2023), the training of the Conf-CSR baseline: on
//! (prompt, chosen, rejected) pairs, the sigmoid loss
//! `−(1−ε)·log σ(β·Δ) − ε·log σ(−β·Δ)`, `Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))`,
//! averaged over the examples of an optimizer step (TRL's `loss_type="sigmoid"` with `label_smoothing` ε;
//! ε = 0 is plain DPO). A sequence's log-prob is the sum of its response tokens' log-probs (TRL's default).
//! The reference is the model before training: its sequence log-probs are computed once, up front
//! ([`reference_logps`]), so no second copy of the model is held.
//!
//! Batching ([`make_batch`]: prompt + response, images spliced), the optimizer (AdamW with f32 masters for
//! half-precision weights), the schedule, the data order and the checkpoint format are SFT's
//! ([`super::sft`]); a DPO micro-batch of n pairs is one SFT batch of 2n rows, the chosen responses first.
use super::checkpoint::{latest_checkpoint, read_checkpoint, write_checkpoint, Checkpoint, CheckpointKind, Position};
use super::llava::EmbedInputs;
use super::lora;
use super::optim::{linear_warmup_decay, AdamW, AdamWParams};
use super::sft::{data_order, make_batch, shifted_logprobs, trainable, AsMutLm, Batch, FineTuneMode, SftExample};
use super::{MllmError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// One preference pair: a prompt (with its images) and two responses, the preferred one first.
#[derive(Debug)]
pub struct DpoExample {
    pub prompt: Vec<i64>,
    pub chosen: Vec<i64>,
    pub rejected: Vec<i64>,
    pub images: Vec<Tensor>,
}

/// The reference model's sequence log-probs of one pair's responses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RefLogps {
    pub chosen: f64,
    pub rejected: f64,
}

/// DPO settings. β = 0.1 and ε = 0 are TRL's defaults; the rest as [`super::sft::SftParams`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpoParams {
    pub mode: FineTuneMode,
    /// Inverse temperature of the implicit reward (> 0).
    pub beta: f64,
    /// Probability ε in [0, 0.5) that a pair's preference label is flipped (conservative DPO).
    pub label_smoothing: f64,
    pub learning_rate: f64,
    pub epochs: usize,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum_steps: usize,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f64,
    pub warmup_ratio: f64,
    pub adamw: AdamWParams,
    /// Seed of the per-epoch data order.
    pub seed: u64,
    /// Stop (after checkpointing) once this many optimizer steps have run in total.
    pub max_steps: Option<usize>,
    /// Recompute each decoder layer in the backward pass (same gradients, less activation memory).
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

impl Default for DpoParams {
    fn default() -> Self {
        Self {
            mode: FineTuneMode::Lora(lora::LoraParams::default()),
            beta: 0.1,
            label_smoothing: 0.0,
            learning_rate: 5e-6,
            epochs: 1,
            batch_size: 4,
            grad_accum_steps: 1,
            max_grad_norm: 1.0,
            warmup_ratio: 0.1,
            adamw: AdamWParams::default(),
            seed: 0,
            max_steps: None,
            gradient_checkpointing: false,
        }
    }
}

/// Statistics of a set of pairs (TRL's `rewards/*` and loss). Rewards are β·(log π − log π_ref).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoStats {
    pub loss: f64,
    pub reward_chosen: f64,
    pub reward_rejected: f64,
    /// Mean of reward_chosen − reward_rejected.
    pub reward_margin: f64,
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    pub reward_accuracy: f64,
}

/// One optimizer step's metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpoStepRow {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    pub grad_norm: f64,
    pub pairs: usize,
    pub stats: DpoStats,
    pub seconds: f64,
}

/// Per-pair DPO losses [n] (differentiable through the policy log-probs) for policy and reference
/// sequence log-probs [n] each.
pub fn dpo_losses(pol_c: &Tensor, pol_r: &Tensor, ref_c: &Tensor, ref_r: &Tensor, beta: f64, label_smoothing: f64) -> Tensor {
    let logits = ((pol_c - ref_c) - (pol_r - ref_r)) * beta;
    -(logits.log_sigmoid() * (1.0 - label_smoothing)) - (-&logits).log_sigmoid() * label_smoothing
}

/// The batch statistics of `dpo_losses` (mean over the n pairs).
pub fn dpo_stats(pol_c: &Tensor, pol_r: &Tensor, ref_c: &Tensor, ref_r: &Tensor, beta: f64, label_smoothing: f64) -> DpoStats {
    let (pc, pr, rc, rr) = (pol_c.detach(), pol_r.detach(), ref_c.detach(), ref_r.detach());
    let rw_c = (&pc - &rc) * beta;
    let rw_r = (&pr - &rr) * beta;
    let mean = |t: &Tensor| t.mean(Kind::Double).double_value(&[]);
    DpoStats {
        loss: mean(&dpo_losses(&pc, &pr, &rc, &rr, beta, label_smoothing)),
        reward_chosen: mean(&rw_c),
        reward_rejected: mean(&rw_r),
        reward_margin: mean(&(&rw_c - &rw_r)),
        reward_accuracy: mean(&rw_c.gt_tensor(&rw_r).to_kind(Kind::Double)),
    }
}

/// The SFT batch of `pairs`: rows 0..n hold prompt + chosen, rows n..2n prompt + rejected (images repeated).
pub fn pair_batch(pairs: &[&DpoExample], device: tch::Device) -> Result<Batch> {
    let rows: Vec<SftExample> = pairs
        .iter()
        .map(|p| (p, &p.chosen))
        .chain(pairs.iter().map(|p| (p, &p.rejected)))
        .map(|(p, r)| SftExample {
            prompt: p.prompt.clone(),
            response: r.clone(),
            images: p.images.iter().map(|t| t.shallow_clone()).collect(),
        })
        .collect();
    make_batch(&rows.iter().collect::<Vec<_>>(), device)
}

/// Sequence log-probs [2n] of a pair batch from token log-probs [2n, T-1]: chosen (first n), rejected.
fn seq_logps(token_lp: &Tensor, batch: &Batch) -> (Tensor, Tensor) {
    let s = (token_lp * &batch.target_mask).sum_dim_intlist(1, false, Kind::Float);
    let n = s.size()[0] / 2;
    (s.narrow(0, 0, n), s.narrow(0, n, n))
}

/// The policy's sequence log-probs (chosen, rejected) of `pairs`, with gradient.
pub fn policy_logps<M: EmbedInputs>(model: &M, batch: &Batch) -> Result<(Tensor, Tensor)> {
    let (lp, _) = super::sft::next_token_logprobs(model, batch)?;
    Ok(seq_logps(&lp, batch))
}

/// The reference log-probs of every pair (no gradient), `batch_size` pairs at a time.
pub fn reference_logps<M: EmbedInputs>(model: &M, data: &[DpoExample], batch_size: usize) -> Result<Vec<RefLogps>> {
    let dev = model.text_model().device();
    tch::no_grad(|| {
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.iter().collect::<Vec<_>>().chunks(batch_size.max(1)) {
            let b = pair_batch(chunk, dev)?;
            let (c, r) = policy_logps(model, &b)?;
            let (c, r) = (Vec::<f64>::try_from(c.to_kind(Kind::Double))?, Vec::<f64>::try_from(r.to_kind(Kind::Double))?);
            out.extend(c.into_iter().zip(r).map(|(chosen, rejected)| RefLogps { chosen, rejected }));
        }
        Ok(out)
    })
}

/// The DPO loss of `pairs` (reference log-probs `refs`, one per pair) summed and divided by `n_pairs`
/// (the pairs of the whole optimizer step), back-propagated; returns (loss value, statistics of these pairs).
pub fn loss_backward<M: EmbedInputs>(
    model: &M,
    pairs: &[&DpoExample],
    refs: &[RefLogps],
    n_pairs: usize,
    params: &DpoParams,
) -> Result<(f64, DpoStats)> {
    if pairs.len() != refs.len() {
        return Err(MllmError::Input(format!("DPO: {} pairs but {} reference log-prob pairs", pairs.len(), refs.len())));
    }
    let lm = model.text_model();
    let dev = lm.device();
    let batch = pair_batch(pairs, dev)?;
    let rc = Tensor::from_slice(&refs.iter().map(|r| r.chosen).collect::<Vec<_>>()).to_kind(Kind::Float).to_device(dev);
    let rr = Tensor::from_slice(&refs.iter().map(|r| r.rejected).collect::<Vec<_>>()).to_kind(Kind::Float).to_device(dev);
    let (beta, ls) = (params.beta, params.label_smoothing);
    let mut stats = None;
    let mut loss_of = |token_lp: Tensor| {
        let (pc, pr) = seq_logps(&token_lp, &batch);
        stats = Some(dpo_stats(&pc, &pr, &rc, &rr, beta, ls));
        dpo_losses(&pc, &pr, &rc, &rr, beta, ls).sum(Kind::Float) / n_pairs.max(1) as f64
    };
    let v = if params.gradient_checkpointing {
        let e = model.embed_inputs(&batch.ids, &batch.images)?;
        // The family's own positions (Qwen2-VL's M-RoPE), as SFT's checkpointed pass.
        let rot = model.rotary(&batch.ids, &batch.mask, &batch.images)?;
        lm.backward_checkpointed(&e, Some(&batch.mask), rot.as_ref().map(|r| r.tables()), |hidden| {
            Ok(loss_of(shifted_logprobs(lm, hidden, &batch.ids)))
        })?
    } else {
        let (lp, _) = super::sft::next_token_logprobs(model, &batch)?;
        let loss = loss_of(lp);
        let v = loss.double_value(&[]);
        if v.is_finite() {
            loss.backward();
        }
        v
    };
    let stats = stats.ok_or_else(|| MllmError::Input("DPO: the loss was not evaluated".into()))?;
    Ok((v, stats))
}

fn check_params(p: &DpoParams) -> Result<()> {
    if p.batch_size == 0 || p.grad_accum_steps == 0 || p.epochs == 0 || !(p.learning_rate > 0.0) {
        return Err(MllmError::Input(format!(
            "DPO: batch_size, grad_accum_steps and epochs must be ≥ 1 and learning_rate > 0, found {} {} {} {}",
            p.batch_size, p.grad_accum_steps, p.epochs, p.learning_rate
        )));
    }
    if !(p.beta > 0.0) || !(0.0..0.5).contains(&p.label_smoothing) {
        return Err(MllmError::Input(format!(
            "DPO: beta must be > 0 and label_smoothing in [0, 0.5), found {} and {}",
            p.beta, p.label_smoothing
        )));
    }
    Ok(())
}

/// The trainer: AdamW over the trainable variables, the reference log-probs fixed at construction time.
pub struct DpoTrainer {
    pub params: DpoParams,
    pub opt: AdamW,
    /// Optimizer steps done so far, and where in the data the next one starts.
    pos: Position,
}

/// What a run did: one row per optimizer step and the checkpoints written (one per epoch end, and at
/// `max_steps`).
#[derive(Debug)]
pub struct DpoReport {
    pub rows: Vec<DpoStepRow>,
    pub checkpoints: Vec<Checkpoint>,
}

impl DpoTrainer {
    /// Prepares `model` for training (with LoRA, attaches adapters: the reference is then the model with
    /// zero adapters, i.e. the base model — compute [`reference_logps`] before or after, same values).
    pub fn new<M: EmbedInputs + AsMutLm>(vs: &nn::VarStore, model: &mut M, params: DpoParams) -> Result<Self> {
        check_params(&params)?;
        if let FineTuneMode::Lora(lp) = &params.mode {
            lora::attach(vs, model.lm_mut(), lp)?;
        }
        let opt = AdamW::new(trainable(vs), params.adamw);
        Ok(Self { params, opt, pos: Position::default() })
    }

    /// Trains on `data` (reference log-probs `refs`, one per pair) for the configured epochs.
    pub fn train<M: EmbedInputs>(&mut self, model: &M, data: &[DpoExample], refs: &[RefLogps], ckpt_dir: &Path) -> Result<DpoReport> {
        if data.is_empty() || data.len() != refs.len() {
            return Err(MllmError::Input(format!(
                "DPO: {} pairs and {} reference log-prob pairs (need ≥ 1, equal)",
                data.len(),
                refs.len()
            )));
        }
        std::fs::create_dir_all(ckpt_dir).map_err(super::io_err(ckpt_dir))?;
        let per_epoch = data.len().div_ceil(self.params.batch_size).div_ceil(self.params.grad_accum_steps);
        let total = per_epoch * self.params.epochs;
        let warmup = (self.params.warmup_ratio * total as f64).ceil() as usize;
        let mut report = DpoReport { rows: vec![], checkpoints: vec![] };
        let mut last_good = String::from("(none yet)");
        while self.pos.epoch < self.params.epochs {
            let order = data_order(self.params.seed, self.pos.epoch, data.len());
            let batches: Vec<&[usize]> = order.chunks(self.params.batch_size).collect();
            let groups: Vec<&[&[usize]]> = batches.chunks(self.params.grad_accum_steps).collect();
            while self.pos.group_in_epoch < groups.len() {
                let group = groups[self.pos.group_in_epoch];
                let started = std::time::Instant::now();
                let step = self.pos.step + 1;
                let lr = linear_warmup_decay(self.params.learning_rate, step, total, warmup);
                let n_pairs: usize = group.iter().map(|b| b.len()).sum();
                self.opt.zero_grad();
                let mut acc = DpoStats { loss: 0.0, reward_chosen: 0.0, reward_rejected: 0.0, reward_margin: 0.0, reward_accuracy: 0.0 };
                for idx in group.iter() {
                    let pairs: Vec<&DpoExample> = idx.iter().map(|&i| &data[i]).collect();
                    let r: Vec<RefLogps> = idx.iter().map(|&i| refs[i]).collect();
                    let (v, s) = loss_backward(model, &pairs, &r, n_pairs, &self.params)?;
                    if !v.is_finite() {
                        return Err(MllmError::NonFiniteLoss { step, loss: v, last_good });
                    }
                    let w = idx.len() as f64 / n_pairs as f64;
                    acc.loss += v;
                    acc.reward_chosen += w * s.reward_chosen;
                    acc.reward_rejected += w * s.reward_rejected;
                    acc.reward_margin += w * s.reward_margin;
                    acc.reward_accuracy += w * s.reward_accuracy;
                }
                let grad_norm = self.opt.clip_grad_norm(self.params.max_grad_norm);
                if !grad_norm.is_finite() {
                    return Err(MllmError::NonFiniteLoss { step, loss: grad_norm, last_good });
                }
                self.opt.step(lr);
                let epoch = self.pos.epoch;
                let epoch_end = self.pos.finish_step(step, groups.len());
                report.rows.push(DpoStepRow {
                    step,
                    epoch,
                    lr,
                    grad_norm,
                    pairs: n_pairs,
                    stats: acc,
                    seconds: started.elapsed().as_secs_f64(),
                });
                let stop = self.params.max_steps.is_some_and(|m| self.pos.step >= m);
                if epoch_end || stop {
                    let c = self.save(ckpt_dir)?;
                    last_good = c.path.display().to_string();
                    report.checkpoints.push(c);
                }
                if stop {
                    return Ok(report);
                }
                if epoch_end {
                    break; // next epoch: new data order
                }
            }
        }
        Ok(report)
    }

    /// Writes `dpo-step{N}-{blake3[..16]}.safetensors` (SFT's layout, format `mmboundary-dpo-v1`).
    pub fn save(&self, dir: &Path) -> Result<Checkpoint> {
        write_checkpoint(&self.opt, dir, &self.checkpoint_kind(), self.pos)
    }

    fn checkpoint_kind(&self) -> CheckpointKind<'static> {
        let params_json = serde_json::to_string(&self.params).unwrap_or_default();
        CheckpointKind { stem: "dpo", format: "mmboundary-dpo-v1", seed: self.params.seed, params_json }
    }

    /// Restores weights, optimizer state and data position from a checkpoint of the same run set-up
    /// (the reference log-probs are the caller's: compute them on the model before training).
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let kind = self.checkpoint_kind();
        self.pos = read_checkpoint(&mut self.opt, path, &kind)?;
        Ok(())
    }

    pub fn steps_done(&self) -> usize {
        self.pos.step
    }
}

/// A resumable DPO run in `work` (a stage's work folder, kept across a crash): the trainer on `model`
/// (with LoRA, adapters attached), the reference log-probs of the model as loaded (before any resume:
/// with zero adapters, the base model), the latest checkpoint in `work` restored if there is one, the
/// remaining training, and the final checkpoint. Returns the rows of the steps run now and the final
/// checkpoint.
pub fn train_resumable<M: EmbedInputs + AsMutLm>(
    vs: &nn::VarStore,
    model: &mut M,
    params: DpoParams,
    data: &[DpoExample],
    work: &Path,
) -> Result<(DpoReport, Checkpoint)> {
    std::fs::create_dir_all(work).map_err(super::io_err(work))?;
    let batch = params.batch_size;
    let mut trainer = DpoTrainer::new(vs, model, params)?;
    let refs = reference_logps(&*model, data, batch)?;
    if let Some(last) = latest_checkpoint(work, "dpo")? {
        eprintln!("dpo: resuming from {}", last.display());
        trainer.resume(&last)?;
    }
    let report = trainer.train(&*model, data, &refs, work)?;
    let last = trainer.save(work)?;
    Ok((report, last))
}
