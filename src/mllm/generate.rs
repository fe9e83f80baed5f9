//! KV-cache generation: greedy, temperature, top-p, seeded; batched with left padding; stop strings.
//! For every generated token: the chosen token's log-prob and the entropy of the full-vocabulary
//! distribution, both under the model's own distribution (temperature 1, before top-p), which is what the
//! score stage's I(z) needs and what PPO's old log-probs are; plus each token's decoded piece.
//!
//! Sentences are not split here: the one sentence splitter is `mmboundary::confidence::parser` (which
//! the callers apply to `Generated::text`, locating each sentence's tokens through `pieces`).
use super::llama::{CausalLm, KvCache};
use super::llava::{EmbedInputs, Llava, Rotary};
use super::{MllmError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Decoding settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    /// 0 = greedy. The paper samples with vLLM; it does not state its temperature.
    pub temperature: f64,
    /// Nucleus mass kept when sampling (1 = off).
    pub top_p: f64,
    /// Seed of the per-row samplers (row i uses seed + i), so a batch is reproducible.
    pub seed: u64,
    /// When not empty, one seed per row (row i samples from `row_seeds[i]`, `seed` unused): a caller that
    /// derives each row's seed from its item gets the same tokens for an item whichever batch it is in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub row_seeds: Vec<u64>,
    /// Generation of a row stops once its decoded text contains one of these (kept in the output).
    pub stop_strings: Vec<String>,
    /// End-of-sequence ids; empty = the config's `eos_token_id`.
    pub eos_token_ids: Vec<i64>,
    /// Id fed for left padding and finished rows (always masked out).
    pub pad_token_id: i64,
    /// Ids never chosen (e.g. LLaVA's image token: one in a response would break the image splice when
    /// the response is fed back for training). Log-probs and entropies stay those of the full distribution.
    #[serde(default)]
    pub suppress_token_ids: Vec<i64>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_strings: vec![],
            eos_token_ids: vec![],
            pad_token_id: 0,
            suppress_token_ids: vec![],
            row_seeds: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    Eos,
    Stop,
    Length,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    pub tokens: Vec<i64>,
    pub logprobs: Vec<f32>,
    pub entropies: Vec<f32>,
    /// Decoded text (special tokens skipped); empty without a tokenizer.
    pub text: String,
    /// Each token's decoded piece ([`decode_pieces`]): their concatenation is `text`; empty without a
    /// tokenizer.
    pub pieces: Vec<String>,
    pub finish: FinishReason,
}

/// Left-pads prompts: ids [b, t] and mask [b, t].
pub fn left_pad(prompts: &[Vec<i64>], pad: i64) -> (Vec<i64>, Vec<i64>, i64) {
    let t = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * t);
    let mut mask = Vec::with_capacity(prompts.len() * t);
    for p in prompts {
        let n = t - p.len();
        ids.extend(std::iter::repeat_n(pad, n).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0, n).chain(std::iter::repeat_n(1, p.len())));
    }
    (ids, mask, t as i64)
}

/// Generates from token-id prompts (one row per prompt).
pub fn generate(
    lm: &CausalLm,
    prompts: &[Vec<i64>],
    params: &GenerationParams,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<Vec<Generated>> {
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(MllmError::Input("generate: expected at least one prompt, each with at least one token".into()));
    }
    let (ids, mask, t) = left_pad(prompts, params.pad_token_id);
    let b = prompts.len() as i64;
    let dev = lm.device();
    let ids = Tensor::from_slice(&ids).view([b, t]).to_device(dev);
    let mask = Tensor::from_slice(&mask).view([b, t]).to_device(dev);
    let embeds = tch::no_grad(|| lm.embed(&ids))?;
    generate_from_embeds(lm, &embeds, &mask, params, tokenizer)
}

/// Generates from multimodal prompts (token ids with image tokens, and each prompt's image features) on
/// any model that embeds its inputs (LLaVA, or a text model with no images).
pub fn generate_multimodal<M: EmbedInputs>(
    model: &M,
    prompts: &[(Vec<i64>, Vec<Tensor>)],
    params: &GenerationParams,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<Vec<Generated>> {
    if prompts.is_empty() || prompts.iter().any(|p| p.0.is_empty()) {
        return Err(MllmError::Input("generate: expected at least one prompt, each with at least one token".into()));
    }
    let lm = model.text_model();
    let dev = lm.device();
    let t = prompts.iter().map(|p| p.0.len()).max().unwrap_or(0) as i64;
    let mut rows = Vec::new();
    let mut mask = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (ids, images) in prompts {
            let n = ids.len() as i64;
            let e = model.embed_inputs(&Tensor::from_slice(ids).view([1, n]).to_device(dev), images)?;
            let h = e.size()[2];
            rows.push(Tensor::cat(&[Tensor::zeros([1, t - n, h], (e.kind(), dev)), e], 1));
            mask.extend(std::iter::repeat_n(0i64, (t - n) as usize).chain(std::iter::repeat_n(1, n as usize)));
        }
        Ok(())
    })?;
    let b = prompts.len() as i64;
    let mask = Tensor::from_slice(&mask).view([b, t]).to_device(dev);
    let (padded, _, _) = left_pad(&prompts.iter().map(|p| p.0.clone()).collect::<Vec<_>>(), params.pad_token_id);
    let images: Vec<Tensor> = prompts.iter().flat_map(|p| p.1.iter().map(|x| x.shallow_clone())).collect();
    let rotary = model.rotary(&Tensor::from_slice(&padded).view([b, t]), &mask, &images)?;
    generate_from_embeds_rotary(lm, &Tensor::cat(&rows, 0), &mask, rotary.as_ref(), params, tokenizer)
}

/// Generates from LLaVA prompts (see `generate_multimodal`).
pub fn generate_llava(
    model: &Llava,
    prompts: &[(Vec<i64>, Vec<Tensor>)],
    params: &GenerationParams,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<Vec<Generated>> {
    generate_multimodal(model, prompts, params, tokenizer)
}

fn sample_top_p(probs: &[f32], top_p: f64, rng: &mut ChaCha8Rng) -> i64 {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let mut kept = 0;
    let mut mass = 0.0f64;
    for &i in &order {
        mass += probs[i] as f64;
        kept += 1;
        if mass >= top_p {
            break;
        }
    }
    let mut u = rng.random::<f64>() * mass;
    for &i in &order[..kept] {
        u -= probs[i] as f64;
        if u <= 0.0 {
            return i as i64;
        }
    }
    order[kept - 1] as i64
}

/// The generation loop on already-embedded, left-padded prompts: `embeds` [b, t, h], `mask` [b, t].
pub fn generate_from_embeds(
    lm: &CausalLm,
    embeds: &Tensor,
    mask: &Tensor,
    params: &GenerationParams,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<Vec<Generated>> {
    generate_from_embeds_rotary(lm, embeds, mask, None, params, tokenizer)
}

/// [`generate_from_embeds`] with the prompt's rotary tables supplied by the model (Qwen2-VL's M-RoPE):
/// the prompt runs with `rotary`'s tables, and each generated token of row i sits at its 1-D position
/// plus the row's rope delta, as transformers decodes.
pub fn generate_from_embeds_rotary(
    lm: &CausalLm,
    embeds: &Tensor,
    mask: &Tensor,
    rotary: Option<&Rotary>,
    params: &GenerationParams,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<Vec<Generated>> {
    if !(params.temperature >= 0.0 && params.temperature.is_finite()) || !(params.top_p > 0.0 && params.top_p <= 1.0) {
        return Err(MllmError::Input(format!(
            "generation: expected temperature >= 0 and 0 < top_p <= 1, found temperature {} top_p {}",
            params.temperature, params.top_p
        )));
    }
    if !params.stop_strings.is_empty() && tokenizer.is_none() {
        return Err(MllmError::Input("generation: stop strings need a tokenizer".into()));
    }
    let eos: Vec<i64> = if params.eos_token_ids.is_empty() { lm.cfg.eos_token_ids() } else { params.eos_token_ids.clone() };
    let b = embeds.size()[0] as usize;
    let dev = lm.device();
    let mut out: Vec<Generated> = (0..b)
        .map(|_| Generated {
            tokens: vec![],
            logprobs: vec![],
            entropies: vec![],
            text: String::new(),
            pieces: vec![],
            finish: FinishReason::Length,
        })
        .collect();
    if !params.row_seeds.is_empty() && params.row_seeds.len() != b {
        return Err(MllmError::Input(format!("generation: {} row seeds for {b} prompts", params.row_seeds.len())));
    }
    let row_seed = |i: usize| if params.row_seeds.is_empty() { params.seed.wrapping_add(i as u64) } else { params.row_seeds[i] };
    let mut rngs: Vec<ChaCha8Rng> = (0..b).map(|i| ChaCha8Rng::seed_from_u64(row_seed(i))).collect();
    tch::no_grad(|| -> Result<()> {
        let mut cache = KvCache::new();
        let mut mask = mask.to_device(dev).to_kind(Kind::Int64);
        if let Some(r) = rotary {
            if r.deltas.len() != b {
                return Err(MllmError::Input(format!("generation: {} rope deltas for {b} prompts", r.deltas.len())));
            }
        }
        // Each active row's rope delta (None: positions are the text tower's own).
        let mut deltas = rotary.map(|r| Tensor::from_slice(&r.deltas).to_device(dev));
        let hidden = lm.forward_embeds_rotary(embeds, Some(&mask), Some(&mut cache), rotary.map(|r| r.tables()))?;
        let mut logits = lm.logits(&hidden.select(1, -1)).to_kind(Kind::Float);
        // `active[j]` = original row of batch row j; finished rows are dropped from the batch.
        let mut active: Vec<usize> = (0..b).collect();
        for _ in 0..params.max_new_tokens {
            let logp = logits.log_softmax(-1, Kind::Float);
            let ent = -(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float);
            let choose = if params.suppress_token_ids.is_empty() {
                logits.shallow_clone()
            } else {
                logits.index_fill(-1, &Tensor::from_slice(&params.suppress_token_ids).to_device(dev), f64::NEG_INFINITY)
            };
            let next = if params.temperature == 0.0 {
                choose.argmax(-1, false)
            } else {
                let probs = (&choose / params.temperature).softmax(-1, Kind::Float).to_device(tch::Device::Cpu);
                let v = probs.size()[1] as usize;
                let flat = Vec::<f32>::try_from(probs.reshape([-1])).map_err(MllmError::Torch)?;
                let picks: Vec<i64> = active
                    .iter()
                    .enumerate()
                    .map(|(j, &row)| sample_top_p(&flat[j * v..(j + 1) * v], params.top_p, &mut rngs[row]))
                    .collect();
                Tensor::from_slice(&picks).to_device(dev)
            };
            let chosen = logp.gather(1, &next.unsqueeze(1), false).squeeze_dim(1);
            let next_v = Vec::<i64>::try_from(next.to_device(tch::Device::Cpu)).map_err(MllmError::Torch)?;
            let lp_v = Vec::<f32>::try_from(chosen.to_device(tch::Device::Cpu)).map_err(MllmError::Torch)?;
            let ent_v = Vec::<f32>::try_from(ent.to_device(tch::Device::Cpu)).map_err(MllmError::Torch)?;
            let mut keep = Vec::new();
            for (j, &row) in active.iter().enumerate() {
                let g = &mut out[row];
                g.tokens.push(next_v[j]);
                g.logprobs.push(lp_v[j]);
                g.entropies.push(ent_v[j]);
                if eos.contains(&next_v[j]) {
                    g.finish = FinishReason::Eos;
                    continue;
                }
                if let Some(tok) = tokenizer.filter(|_| !params.stop_strings.is_empty()) {
                    let text = decode(tok, &g.tokens)?;
                    if params.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                        g.finish = FinishReason::Stop;
                        continue;
                    }
                }
                keep.push(j as i64);
            }
            if keep.is_empty() {
                break;
            }
            let mut next = next;
            if keep.len() < active.len() {
                let rows = Tensor::from_slice(&keep).to_device(dev);
                cache.select_rows(&rows);
                mask = mask.index_select(0, &rows);
                next = next.index_select(0, &rows);
                deltas = deltas.map(|d| d.index_select(0, &rows));
                active = keep.iter().map(|&j| active[j as usize]).collect();
            }
            if out[active[0]].tokens.len() == params.max_new_tokens {
                break;
            }
            mask = Tensor::cat(&[&mask, &Tensor::ones([active.len() as i64, 1], (Kind::Int64, dev))], 1);
            let e = lm.embed(&next.unsqueeze(1))?;
            let tables = deltas.as_ref().map(|d| {
                let pos = mask.sum_dim_intlist(1, false, Kind::Int64) - 1 + d;
                lm.rope_tables(&pos.unsqueeze(1), e.kind())
            });
            let hidden = lm.forward_embeds_rotary(&e, Some(&mask), Some(&mut cache), tables.as_ref().map(|(c, s)| (c, s)))?;
            logits = lm.logits(&hidden.select(1, 0)).to_kind(Kind::Float);
        }
        Ok(())
    })?;
    if let Some(tok) = tokenizer {
        for g in &mut out {
            (g.text, g.pieces) = decode_pieces(tok, &g.tokens)?;
        }
    }
    Ok(out)
}

fn decode(tok: &tokenizers::Tokenizer, ids: &[i64]) -> Result<String> {
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    tok.decode(&ids, true).map_err(|e| MllmError::Tokenizer(e.to_string()))
}

/// The decoded text of `tokens` (special tokens skipped) and each token's decoded piece: the part of
/// the text that the decoded prefix gains with that token, so that the pieces concatenate to the text.
///
/// A piece is the difference of prefix decodes, measured as the common prefix of the prefix decode with
/// the full text: a byte-level BPE token that ends inside a multi-byte character (its prefix decodes to
/// U+FFFD) gets an empty piece and the token completing the character gets the whole character; a
/// special token gets an empty piece; a SentencePiece tokenizer's dropped first space is dropped here too.
pub fn decode_pieces(tok: &tokenizers::Tokenizer, tokens: &[i64]) -> Result<(String, Vec<String>)> {
    let text = decode(tok, tokens)?;
    let mut pieces = Vec::with_capacity(tokens.len());
    let mut last = 0usize;
    for i in 0..tokens.len() {
        let prefix = decode(tok, &tokens[..=i])?;
        // Length of the common prefix with the text, on a character boundary, never moving back.
        let common = prefix
            .char_indices()
            .zip(text.char_indices())
            .find(|((_, a), (_, b))| a != b)
            .map(|((at, _), _)| at)
            .unwrap_or_else(|| prefix.len().min(text.len()));
        let end = common.max(last);
        pieces.push(text[last..end].to_string());
        last = end;
    }
    if let Some(p) = pieces.last_mut() {
        p.push_str(&text[last..]);
    }
    Ok((text, pieces))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        let probs = [0.5f32, 0.3, 0.15, 0.05];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..200 {
            let i = sample_top_p(&probs, 0.8, &mut rng);
            assert!(i == 0 || i == 1, "sampled {i} outside the 0.8 nucleus");
        }
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample_top_p(&probs, 1.0, &mut rng) as usize] += 1;
        }
        assert!(seen[3] > 40 && seen[0] > 900, "{seen:?}");
    }

    #[test]
    fn left_pad_pads_on_the_left() {
        let (ids, mask, t) = left_pad(&[vec![5, 6, 7], vec![9]], 0);
        assert_eq!(t, 3);
        assert_eq!(ids, vec![5, 6, 7, 0, 0, 9]);
        assert_eq!(mask, vec![1, 1, 1, 0, 0, 1]);
    }
}
