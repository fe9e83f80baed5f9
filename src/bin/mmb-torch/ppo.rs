//! The `ppo` stage's model work: the SFT policy, K PPO iterations over mini-batches of training
//! questions with the reward model of `mmboundary::stages::ppo`, and the three artifacts.
use crate::inputs::{Features, Prompter};
use crate::policy;
use anyhow::Context;
use arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, ListBuilder, StringBuilder, UInt32Builder, UInt8Builder};
use arrow::datatypes::Float32Type;
use arrow::record_batch::RecordBatch;
use mllm::generate::Generated;
use mllm::ppo::{PpoParams, PpoPrompt, PpoTrainer, Score};
use mllm::weights::write_safetensors;
use mmboundary::confidence::levels::LevelModel;
use mmboundary::confidence::uncertainty::TokenInfo;
use mmboundary::data::{items_from_record_batch, Item};
use mmboundary::engine::StageContext;
use mmboundary::stages::ppo::{
    judge_name, ppo_log_schema, rollouts_schema, PpoStageParams, ReferencePolicy, RewardModel, RolloutScore, RolloutTokens,
};
use mmboundary::store::ArtifactKind;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;

/// Decoded text of a rollout and each token's byte end in it.
pub fn decode_with_ends(tok: &tokenizers::Tokenizer, tokens: &[i64]) -> anyhow::Result<(String, Vec<usize>)> {
    let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    let dec = |n: usize| tok.decode(&ids[..n], true).map_err(|e| anyhow::anyhow!("decoding a rollout: {e}"));
    let text = dec(ids.len())?;
    let mut ends = Vec::with_capacity(ids.len());
    let mut last = 0usize;
    for i in 0..ids.len() {
        let n = dec(i + 1)?.len().min(text.len()).max(last);
        ends.push(n);
        last = n;
    }
    Ok((text, ends))
}

struct RolloutRow {
    iteration: u32,
    item: String,
    sample: u32,
    text: String,
    score: RolloutScore,
}

pub fn run(ctx: &StageContext) -> anyhow::Result<()> {
    let p: PpoStageParams = ctx.params()?;
    let model_dir = mmboundary::stages::models::resolve(ctx, &p.model, "model")?;
    anyhow::ensure!(p.iterations > 0 && p.prompts_per_iteration > 0, "ppo: iterations and prompts_per_iteration must be ≥ 1");
    let mut tp = crate::inputs::overlay_params::<PpoParams>(&p.trainer, "ppo.trainer")?;
    let device = mllm::DeviceChoice::from_str(&p.device)?.resolve()?;
    let dtype = mllm::DType::from_str(&p.dtype)?;
    let mllm::config::ModelConfig::Llava(cfg) = mllm::config::ModelConfig::from_dir(&model_dir)? else {
        anyhow::bail!("{}: ppo needs a LLaVA-style model", model_dir.display());
    };
    let tok_path = model_dir.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
    let eos = cfg.text_config.eos_token_ids();
    let prompter = Prompter { tok: &tok, image_token: cfg.image_token_index, template: &p.prompt };

    let sft_ck = ctx.input_path("sft_checkpoint")?;
    let pol = policy::load(&model_dir, device, dtype, Some(&sft_ck))?;
    let reference = match p.reference {
        ReferencePolicy::Sft => {
            let r = policy::load(&model_dir, device, dtype, Some(&sft_ck))?;
            policy::freeze(&r);
            Some(r)
        }
        ReferencePolicy::Base => {
            anyhow::ensure!(
                pol.has_lora(),
                "ppo.reference = \"base\" needs a LoRA SFT checkpoint (the base is the policy with its adapters off)"
            );
            None
        }
    };
    let level_path = ctx.input_path("level_model")?;
    let levels: LevelModel =
        serde_json::from_slice(&std::fs::read(&level_path)?).with_context(|| format!("{}: not a level model", level_path.display()))?;
    let rewards = RewardModel::load(&p, &mmboundary::stages::models::resolve(ctx, &p.clip, "clip")?, levels, &Default::default())?;

    let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
    let feats_batch = ctx.input_table("features")?.concat()?;
    let feats = Features::from_batch(&feats_batch)?;
    let f_ids = feats_batch.column_by_name("item_id").context("features artifact has no item_id")?.as_string::<i32>();
    let f_emb = feats_batch.column_by_name("embedding").context("features artifact has no embedding")?.as_list::<i32>();
    let image: HashMap<String, Vec<f32>> =
        (0..f_ids.len()).map(|i| (f_ids.value(i).to_string(), f_emb.value(i).as_primitive::<Float32Type>().values().to_vec())).collect();
    let mut selected: Vec<_> = items.iter().filter(|it| p.splits.iter().any(|s| s == &it.split)).collect();
    if let Some(n) = p.limit {
        selected.truncate(n);
    }
    anyhow::ensure!(!selected.is_empty(), "ppo: no items in splits {:?}", p.splits);
    let mut prompts = Vec::with_capacity(selected.len());
    for it in &selected {
        let (n, feat) = feats.tensor(&it.id)?;
        anyhow::ensure!(image.contains_key(&it.id), "item {}: no CLIP image embedding", it.id);
        prompts.push((prompter.prompt(&it.question, &it.choices, n)?, feat.to_device(device)));
    }

    let hidden = cfg.text_config.hidden_size;
    // Rollouts are fed back through the splice: they must never contain the image token.
    tp.generation.suppress_token_ids.push(cfg.image_token_index);
    let mut trainer = PpoTrainer::new(&pol.vs, hidden, tp.clone())?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(p.seed);
    let mut order: Vec<usize> = Vec::new();
    let mut log: Vec<(u32, mllm::ppo::PpoStats, f64)> = Vec::new();
    let mut rows: Vec<RolloutRow> = Vec::new();
    let bar = ctx.progress(p.iterations as u64, "PPO iterations");
    for iteration in 0..p.iterations {
        let started = std::time::Instant::now();
        // Questions are drawn without replacement, reshuffled when the training set is used up.
        let mut batch = Vec::with_capacity(p.prompts_per_iteration);
        while batch.len() < p.prompts_per_iteration.min(prompts.len()) {
            if order.is_empty() {
                order = (0..prompts.len()).collect();
                order.shuffle(&mut rng);
            }
            batch.push(order.pop().expect("refilled"));
        }
        let step_prompts: Vec<PpoPrompt> =
            batch.iter().map(|&i| PpoPrompt { ids: prompts[i].0.clone(), images: vec![prompts[i].1.shallow_clone()] }).collect();
        let mut samples: HashMap<usize, u32> = HashMap::new();
        let mut reward_fn = |gens: &[(usize, &Generated)]| -> mllm::Result<Vec<Score>> {
            let scored = (|| -> anyhow::Result<Vec<(String, RolloutScore)>> {
                let mut decoded = Vec::with_capacity(gens.len());
                for (_, g) in gens {
                    let (text, ends) = decode_with_ends(&tok, &g.tokens)?;
                    let tokens = g
                        .tokens
                        .iter()
                        .enumerate()
                        .map(|(k, &t)| TokenInfo {
                            id: t as u32,
                            text: tok.id_to_token(t as u32).unwrap_or_default(),
                            log_prob: g.logprobs[k] as f64,
                            entropy: g.entropies[k] as f64,
                            is_special: eos.contains(&t),
                        })
                        .collect();
                    decoded.push(RolloutTokens { text, tokens, token_ends: ends });
                }
                let items: Vec<&Item> = gens.iter().map(|(pi, _)| selected[batch[*pi]]).collect();
                let inputs: Vec<(&Item, &[f32], &RolloutTokens)> =
                    items.iter().zip(&decoded).map(|(it, r)| (*it, image[&it.id].as_slice(), r)).collect();
                let scores = rewards.score_batch(&inputs)?;
                Ok(decoded.into_iter().map(|r| r.text).zip(scores).collect())
            })()
            .map_err(|e| mllm::MllmError::Input(format!("scoring the rollouts of PPO iteration {iteration}: {e:#}")))?;
            let mut out = Vec::with_capacity(scored.len());
            for ((pi, _), (text, s)) in gens.iter().zip(scored) {
                let it = selected[batch[*pi]];
                let sample = samples.entry(*pi).or_default();
                let mut components = BTreeMap::new();
                components.insert("r_ka".to_string(), s.ka);
                components.insert("r_ec".to_string(), s.ec);
                components.insert("r_cs".to_string(), s.cs);
                components.insert("reward".to_string(), s.total);
                out.push(Score { token_rewards: s.token_rewards.clone(), components });
                rows.push(RolloutRow { iteration: iteration as u32, item: it.id.clone(), sample: *sample, text, score: s });
                *sample += 1;
            }
            Ok(out)
        };
        let stats = trainer.step(&pol.model, reference.as_ref().map(|r| &r.model), &step_prompts, &mut reward_fn)?;
        for (name, v) in [
            ("kl", stats.kl),
            ("value_loss", stats.value_loss),
            ("policy_loss", stats.policy_loss),
            ("policy_entropy", stats.policy_entropy),
        ] {
            anyhow::ensure!(v.is_finite(), "ppo iteration {iteration}: {name} is {v}");
        }
        log.push((iteration as u32, stats, started.elapsed().as_secs_f64()));
        bar.inc(1);
    }
    bar.finish_and_clear();

    // The policy checkpoint: trainable weights (adapters or all) and the value head.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ppo.safetensors");
    let tensors: Vec<(String, tch::Tensor)> = trainer.opt.params.iter().map(|(n, t)| (format!("param.{n}"), t.detach())).collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "mmboundary-ppo-v1".to_string());
    meta.insert("params".to_string(), pol.sft_meta.clone().unwrap_or_default());
    meta.insert("ppo".to_string(), serde_json::to_string(&tp)?);
    meta.insert("iterations".to_string(), p.iterations.to_string());
    write_safetensors(&path, &tensors, meta)?;

    let comp = |s: &mllm::ppo::PpoStats, k: &str| s.components.get(k).copied().unwrap_or(f64::NAN);
    let mut c: Vec<Float64Builder> = (0..13).map(|_| Float64Builder::new()).collect();
    let mut it_col = UInt32Builder::new();
    for (i, s, secs) in &log {
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
    ctx.write_table("log", ppo_log_schema(), &[RecordBatch::try_new(ppo_log_schema(), cols)?], None)?;

    let (mut o_it, mut o_id, mut o_sample, mut o_text) =
        (UInt32Builder::new(), StringBuilder::new(), UInt32Builder::new(), StringBuilder::new());
    let (mut o_sent, mut o_stmt) = (ListBuilder::new(StringBuilder::new()), ListBuilder::new(StringBuilder::new()));
    let (mut o_ev, mut o_iv) = (ListBuilder::new(Float64Builder::new()), ListBuilder::new(Float64Builder::new()));
    let (mut o_lv, mut o_corr) = (ListBuilder::new(UInt8Builder::new()), ListBuilder::new(BooleanBuilder::new()));
    let (mut o_ka, mut o_ec, mut o_cs, mut o_r, mut o_judge) =
        (Float64Builder::new(), Float64Builder::new(), Float64Builder::new(), Float64Builder::new(), StringBuilder::new());
    for r in &rows {
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
        o_judge.append_value(judge_name());
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
    ];
    ctx.write_table("rollouts", rollouts_schema(), &[RecordBatch::try_new(rollouts_schema(), cols)?], None)?;
    ctx.write_file("checkpoint", ArtifactKind::Safetensors, &path)?;
    Ok(())
}
