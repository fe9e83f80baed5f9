//! The SC baseline's eval policy (`eval.variants = ["sc"]`): the vanilla model's greedy chain, K chains
//! sampled at `eval.sc.temperature`, and the chain's sentences scored by their agreement with the samples
//! (`confidence::consistency`: answer agreement on the answer sentence, judged sentence agreement on the
//! others). The confidences are written into the chain as numeric statements, so eval judges and scores
//! it as every other policy. The sampling runs in the `mmb-torch` worker; this is the plain-Rust rest.
use super::chain_judge::ChainJudge;
use crate::confidence::consistency::{answer_agreement, chain_confidences, render_with_confidences, sentence_agreement};
use crate::data::Item;
use crate::metrics::accuracy::{choice_from_answer, extract_final_answer, normalize_answer, AccuracyParams};
use serde::{Deserialize, Serialize};

/// The eval policy name of the SC baseline.
pub const SC_POLICY: &str = "sc";

/// SC's sampling. Xiong et al. use about 5 samples; MMBoundary gives no K or temperature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScParams {
    /// K, the sampled chains per question. We chose 5 (Xiong et al.).
    pub samples: usize,
    /// Their temperature. We chose 0.7 (diverse, still on-topic).
    pub temperature: f64,
}

impl Default for ScParams {
    fn default() -> Self {
        Self { samples: 5, temperature: 0.7 }
    }
}

impl ScParams {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// The seed of SC's draw `k` (0-based) of one item: the item's stream k + 1 of [`crate::engine::item_seed`]
/// (stream 0 is its greedy chain's), so the K draws of an item differ from each other and from its greedy
/// chain, and none depends on the batch or shard the item is in.
pub fn draw_seed(seed: u64, item: &str, k: usize) -> u64 {
    crate::engine::item_seed(seed, item, k as u64 + 1)
}

/// The answer a chain gives, as SC compares answers: the chosen option (`choice:i`) when the item has
/// options and the answer names one, else the normalized answer text; None without an answer.
pub fn answer_key(item: &Item, sentences: &[&str], params: &AccuracyParams) -> Option<String> {
    let answer = extract_final_answer(&sentences.join(" "), params)?;
    if !item.choices.is_empty() {
        if let Some(i) = choice_from_answer(&answer, &item.choices, &params.normalization) {
            return Some(format!("choice:{i}"));
        }
    }
    Some(normalize_answer(&answer, &params.normalization)).filter(|a| !a.is_empty())
}

/// The greedy chain rewritten with its SC confidence after each sentence (the text eval judges).
pub fn sc_chain_text(
    judge: &ChainJudge,
    item: &Item,
    greedy: &str,
    samples: &[String],
    match_threshold: f64,
    accuracy: &AccuracyParams,
) -> anyhow::Result<String> {
    let reference: Vec<&str> = item.chain.sentences().collect();
    // The greedy chain and every sample parsed and judged in one encoder call.
    let chains: Vec<(&str, &[&str])> =
        std::iter::once(greedy).chain(samples.iter().map(String::as_str)).map(|t| (t, reference.as_slice())).collect();
    let mut sentences = judge
        .judge_all(&chains)?
        .into_iter()
        .map(|judged| -> anyhow::Result<Vec<String>> { Ok(judged?.into_iter().map(|j| j.pair.sentence).collect()) });
    let own = sentences.next().expect("the greedy chain's judgement")?;
    if own.is_empty() {
        return Ok(greedy.to_string());
    }
    let own_refs: Vec<&str> = own.iter().map(String::as_str).collect();
    let mut sims = Vec::with_capacity(samples.len());
    let mut keys = Vec::with_capacity(samples.len());
    for ss in sentences {
        let ss = ss?;
        let refs: Vec<&str> = ss.iter().map(String::as_str).collect();
        sims.push(if refs.is_empty() { vec![Vec::new(); own.len()] } else { judge.similarity_matrix(&own_refs, &refs)? });
        keys.push(answer_key(item, &refs, accuracy));
    }
    let per_sentence = sentence_agreement(own.len(), &sims, match_threshold)?;
    let own_key = answer_key(item, &own_refs, accuracy);
    let answer = answer_agreement(own_key.as_deref(), &keys)?;
    let answer_sentence = (0..own.len()).rev().find(|&t| extract_final_answer(&own[t], accuracy).is_some());
    let conf = chain_confidences(per_sentence, answer_sentence, answer)?;
    Ok(render_with_confidences(&own, &conf)?)
}
