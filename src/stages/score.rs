//! `score`: the paper's four uncertainty signals for every sentence of every generated chain (§3.1.1):
//! U_LNLP and U_MTE from the generation's log-probs and entropies, U_TokenSAR with every token deletion of
//! the dataset judged in one batched similarity call, U_CLIPScore between the image and the sentence.
//! This is the scored dataset teams share.
//!
//! x for a sentence is the question plus the earlier sentences; a sentence's tokens are the generated
//! tokens in its span (tokens outside every sentence, such as the end token, belong to none), each with
//! its decoded piece clipped to the sentence ([`chain_responses`], [`crate::confidence::spans`]).
use super::judges::{Judge, JudgeParams};
use crate::confidence::rewards::sentence_correctness;
use crate::confidence::similarity::{CosineOfEmbeddings, ExactMatch};
use crate::confidence::spans::{floors_after_previous, locate, response_sentences, GeneratedToken};
use crate::confidence::uncertainty::{
    clip_score_from_embeddings, likelihood_signals, token_sar_batched, ResponseTokens, UncertaintyParams,
};
use crate::confidence::{Location, PairSimilarity};
use crate::data::{items_from_record_batch, Item};
use crate::encoders::clip::Clip;
use crate::encoders::minilm::{SentenceEncoder, SentenceEncoderParams, DEFAULT_MODEL_DIR};
use crate::encoders::runtime::{ExecutionProvider, SessionOptions};
use crate::engine::{InputSpec, Stage, StageContext};
use crate::metrics::by_level::{assign_levels, ChainLevel};
use arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, StringArray, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreParams {
    /// The sentence encoder whose cosine is TokenSAR's similarity g with the default judge.
    pub minilm: PathBuf,
    /// TokenSAR's similarity g: MiniLM cosine (default; the stand-in where no cross-encoder can be had)
    /// or a cross-encoder folder (lm-polygraph's and the paper's stsb-roberta-large). Every row records it.
    pub judge: JudgeParams,
    /// I(z) of each scored sentence (the `correct` column, which tells how well each signal separates
    /// right from wrong sentences): the judge's best score against a reference sentence above this.
    pub match_threshold: f64,
    /// The CLIP folder (the same as `features`; unset: the demo CLIP).
    pub clip: Option<PathBuf>,
    /// CLIPScore text prefix: "" (the paper's formula) or "A photo depicts " (the CLIPScore reference).
    pub clip_prefix: String,
    pub uncertainty: UncertaintyParams,
    /// Where the ONNX encoders (MiniLM or the cross-encoder, CLIP) run: `{ kind = "cpu" }` (default),
    /// `{ kind = "cuda", device_id = 0 }` or `{ kind = "tensor_rt", … }`. A GPU provider that cannot
    /// register is an error naming the model, never a silent CPU run; the provider is keyed.
    pub execution_provider: ExecutionProvider,
}

impl Default for ScoreParams {
    fn default() -> Self {
        Self {
            minilm: PathBuf::from(DEFAULT_MODEL_DIR),
            judge: JudgeParams::default(),
            match_threshold: 0.64,
            clip: super::features::FeaturesParams::default().clip,
            clip_prefix: String::new(),
            uncertainty: UncertaintyParams::default(),
            execution_provider: ExecutionProvider::Cpu,
        }
    }
}

pub struct ScoreStage {
    pub params: ScoreParams,
    pub session: SessionOptions,
}

impl ScoreStage {
    /// The session options with the params' execution provider (no CPU fallback).
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions { provider: self.params.execution_provider.clone(), allow_cpu_fallback: false, ..self.session.clone() }
    }
}

/// One row per sentence of every chain.
pub fn scored_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("sample", DataType::UInt32, false),
        Field::new("sentence", DataType::UInt32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("lnlp", DataType::Float64, false),
        Field::new("mte", DataType::Float64, false),
        Field::new("tokensar", DataType::Float64, false),
        Field::new("clipscore", DataType::Float64, false),
        Field::new("judge", DataType::Utf8, false),
        // I(z): the judge's best score against a sentence of the item's reference chain above
        // `match_threshold` (null when the item has no reference chain).
        Field::new("correct", DataType::Boolean, true),
        // The level of the reference sentence it is most similar to, as eval assigns levels:
        // `perception` or `reasoning` (null with `correct`).
        Field::new("chain_level", DataType::Utf8, true),
    ]))
}

/// Per chain of a `chains` table: x (the item's question) and each sentence's tokens, with their decoded
/// pieces clipped to the sentence as [`crate::confidence::spans`] says (so TokenSAR compares decoded
/// text); and the sentence texts. A sentence that cannot be located in its chain's tokens, or a token
/// range that disagrees with the one `generate` recorded, is an error naming the chain.
pub fn chain_responses(chains: &RecordBatch, question: &HashMap<&str, &str>) -> anyhow::Result<(Vec<ResponseTokens>, Vec<Vec<String>>)> {
    let col = |n: &str| chains.column_by_name(n).ok_or_else(|| anyhow::anyhow!("chains artifact has no column `{n}`"));
    let ids = col("item_id")?.as_string::<i32>();
    let text = col("text")?.as_string::<i32>();
    let tokens = col("tokens")?.as_list::<i32>();
    let token_text = col("token_text")?.as_list::<i32>();
    let logprobs = col("logprobs")?.as_list::<i32>();
    let entropies = col("entropies")?.as_list::<i32>();
    let sentences = col("sentences")?.as_list::<i32>();
    let firsts = col("sentence_first")?.as_list::<i32>();
    let lasts = col("sentence_last")?.as_list::<i32>();
    let mut responses = Vec::with_capacity(chains.num_rows());
    let mut texts: Vec<Vec<String>> = Vec::with_capacity(chains.num_rows());
    for r in 0..chains.num_rows() {
        let id = ids.value(r);
        let q = question.get(id).ok_or_else(|| anyhow::anyhow!("chain row {r}: item {id} is not in the dataset"))?;
        let (tok, tt) = (tokens.value(r), token_text.value(r));
        let (tok, tt) = (tok.as_primitive::<Int64Type>(), tt.as_string::<i32>());
        let (lp, en) = (logprobs.value(r), entropies.value(r));
        let (lp, en) = (lp.as_primitive::<Float32Type>(), en.as_primitive::<Float32Type>());
        let (s_text, s_first, s_last) = (sentences.value(r), firsts.value(r), lasts.value(r));
        let (s_text, s_first, s_last) =
            (s_text.as_string::<i32>(), s_first.as_primitive::<UInt32Type>(), s_last.as_primitive::<UInt32Type>());
        anyhow::ensure!(
            tt.len() == tok.len() && lp.len() == tok.len() && en.len() == tok.len(),
            "chain row {r} (item {id}): {} tokens, {} token texts, {} log-probs, {} entropies",
            tok.len(),
            tt.len(),
            lp.len(),
            en.len()
        );
        let toks: Vec<GeneratedToken> = (0..tok.len())
            .map(|k| GeneratedToken {
                id: tok.value(k) as u32,
                piece: tt.value(k),
                log_prob: f64::from(lp.value(k)),
                entropy: f64::from(en.value(k)),
                is_special: false,
            })
            .collect();
        let st: Vec<&str> = (0..s_text.len()).map(|s| s_text.value(s)).collect();
        let chain = text.value(r);
        let located = locate(r, chain, &st)
            .and_then(|spans| response_sentences(r, chain, &toks, &floors_after_previous(&spans)))
            .map_err(|e| anyhow::anyhow!("chain row {r} (item {id}): {e}"))?;
        let mut sents = Vec::with_capacity(located.len());
        for (s, (sentence, range)) in located.into_iter().enumerate() {
            let recorded = (s_first.value(s) as usize, s_last.value(s) as usize);
            anyhow::ensure!(
                range == recorded,
                "chain row {r} (item {id}), sentence {s}: its text spans tokens {}..={}, but generate recorded {}..={}",
                range.0,
                range.1,
                recorded.0,
                recorded.1
            );
            sents.push(sentence);
        }
        responses.push(ResponseTokens { prompt: q.to_string(), sentences: sents });
        texts.push(st.into_iter().map(String::from).collect());
    }
    Ok((responses, texts))
}

fn responses_ids(ids: &StringArray) -> Vec<&str> {
    (0..ids.len()).map(|i| ids.value(i)).collect()
}

/// I(z) of every sentence of every chain (its best similarity under `g` to a sentence of its item's
/// reference chain above `threshold`) and the level of that nearest reference sentence; None for items
/// without a reference chain. One call of `g`.
pub fn sentence_correct(
    ids: &[&str],
    sentences: &[Vec<String>],
    items: &[Item],
    g: &dyn PairSimilarity,
    threshold: f64,
) -> anyhow::Result<Vec<Vec<Option<(bool, ChainLevel)>>>> {
    let by_id: HashMap<&str, &Item> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut refs: Vec<(Vec<&str>, Vec<ChainLevel>)> = Vec::with_capacity(ids.len());
    for (r, id) in ids.iter().enumerate() {
        let item = by_id.get(id).ok_or_else(|| anyhow::anyhow!("chain row {r}: item {id} is not in the dataset"))?;
        let reference: Vec<&str> = item.chain.sentences().collect();
        for s in &sentences[r] {
            pairs.extend(reference.iter().map(|x| (s.as_str(), *x)));
        }
        refs.push((reference, super::eval::reference_levels(item)));
    }
    let scores =
        if pairs.is_empty() { Vec::new() } else { g.similarity(&pairs).map_err(|e| anyhow::anyhow!("judging scored sentences: {e}"))? };
    anyhow::ensure!(scores.len() == pairs.len(), "the judge returned {} scores for {} pairs", scores.len(), pairs.len());
    let mut at = 0;
    let mut out = Vec::with_capacity(ids.len());
    for (r, (reference, levels)) in refs.iter().enumerate() {
        if reference.is_empty() {
            out.push(vec![None; sentences[r].len()]);
            continue;
        }
        let n = reference.len();
        let sim: Vec<Vec<f64>> =
            (0..sentences[r].len()).map(|t| scores[at + t * n..at + (t + 1) * n].iter().map(|&x| f64::from(x)).collect()).collect();
        at += sentences[r].len() * n;
        let correct = sentence_correctness(r, &sim, n, threshold)?;
        let levels = assign_levels(r, &sim, levels)?;
        out.push(correct.into_iter().zip(levels).map(Some).collect());
    }
    Ok(out)
}

/// AUROC of each signal (LNLP, MTE, TokenSAR, 1 − CLIPScore: each grows with uncertainty) for telling
/// wrong sentences from right ones; None where a class is missing.
pub fn signal_aurocs(rows: &[[f64; 4]], correct: &[bool]) -> anyhow::Result<[Option<f64>; 4]> {
    let wrong: Vec<bool> = correct.iter().map(|c| !c).collect();
    if !(wrong.iter().any(|&w| w) && wrong.iter().any(|&w| !w)) {
        return Ok([None; 4]);
    }
    let mut out = [None; 4];
    for (k, o) in out.iter_mut().enumerate() {
        let scores: Vec<f64> = rows.iter().map(|r| if k == 3 { 1.0 - r[3] } else { r[k] }).collect();
        *o = Some(crate::metrics::auroc(&scores, &wrong)?);
    }
    Ok(out)
}

impl Stage for ScoreStage {
    fn name(&self) -> &str {
        "score"
    }
    /// 2: TokenSAR on decoded pieces clipped to each sentence; I(z) of each sentence (`correct`).
    /// 3: each sentence's chain level (`chain_level`, the nearest reference sentence's).
    fn code_version(&self) -> &str {
        "3"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        let mut v = vec![
            InputSpec::new("chains", "generate", "chains"),
            InputSpec::new("items", "dataset", "items"),
            InputSpec::new("features", "features", "features"),
        ];
        v.extend(super::models::model_input(&self.params.clip, "clip", super::models::DEMO_CLIP));
        v
    }
    fn outputs(&self) -> Vec<String> {
        vec!["scored".into()]
    }
    /// Where the ONNX encoders run (the params key it too).
    fn device(&self) -> String {
        format!("ort-{}", self.params.execution_provider.name())
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }
    fn models(&self) -> Vec<PathBuf> {
        let mut v = vec![self.params.minilm.join("onnx/model.onnx"), self.params.minilm.join("tokenizer.json")];
        v.extend(self.params.judge.model_files());
        v.extend(super::models::model_files(&self.params.clip));
        v
    }
    /// Each chain's rows depend on that chain alone: `score` may run on shards of the chains.
    fn shard(&self) -> Option<crate::engine::ShardSpec> {
        Some(crate::engine::ShardSpec::new("chains", "item_id"))
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let session = self.session_options();
        let chains = ctx.input_table_as("chains", &super::generate::chains_schema())?.concat()?;
        let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
        let question: HashMap<&str, &str> = items.iter().map(|i| (i.id.as_str(), i.question.as_str())).collect();
        let feats = ctx.input_table_as("features", &super::features::features_schema())?.concat()?;
        let f_ids = feats.column_by_name("item_id").expect("checked by input_table_as").as_string::<i32>();
        let f_emb = feats.column_by_name("embedding").expect("checked by input_table_as").as_list::<i32>();
        let image_row: HashMap<&str, usize> = (0..f_ids.len()).map(|i| (f_ids.value(i), i)).collect();

        let (responses, texts) = chain_responses(&chains, &question)?;
        let ids = chains.column_by_name("item_id").expect("checked by chain_responses").as_string::<i32>();
        let splits =
            chains.column_by_name("split").ok_or_else(|| anyhow::anyhow!("chains artifact has no column `split`"))?.as_string::<i32>();
        let samples = chains
            .column_by_name("sample")
            .ok_or_else(|| anyhow::anyhow!("chains artifact has no column `sample`"))?
            .as_primitive::<UInt32Type>();
        let u = &self.params.uncertainty;
        let likelihood = likelihood_signals(&responses, u)?;
        let bar = ctx.progress(responses.len() as u64, "TokenSAR + CLIPScore");
        self.params.judge.check_threshold("score", "match_threshold", self.params.match_threshold)?;
        let judge = self.params.judge.load("score", &session)?;
        let minilm = match judge {
            Judge::MinilmCosine | Judge::ExactMatch => Some(CosineOfEmbeddings(super::judges::MiniLmEmbedder(SentenceEncoder::load(
                &self.params.minilm,
                SentenceEncoderParams::default(),
                &session,
            )?))),
            Judge::CrossEncoder(_) => None,
        };
        // TokenSAR's g: the cross-encoder, else MiniLM's cosine; I(z): the judge itself.
        let g: &dyn PairSimilarity = match (&judge, &minilm) {
            (Judge::CrossEncoder(ce), _) => ce,
            (_, Some(m)) => m,
            (_, None) => unreachable!("MiniLM loaded for the MiniLM and exact-match judges"),
        };
        let exact = ExactMatch(g);
        let matcher: &dyn PairSimilarity = if matches!(judge, Judge::ExactMatch) { &exact } else { g };
        let tokensar = token_sar_batched(&responses, g, &u.token_sar)?;
        let correct = sentence_correct(&responses_ids(ids), &texts, &items, matcher, self.params.match_threshold)?;
        let judge_name = format!("{} > {}", self.params.judge.name(), self.params.match_threshold);
        let clip = Clip::load(&super::models::resolve(ctx, &self.params.clip, "clip")?, &session)?;

        let (mut o_id, mut o_split, mut o_sample, mut o_sent, mut o_text, mut o_judge) = (
            StringBuilder::new(),
            StringBuilder::new(),
            UInt32Builder::new(),
            UInt32Builder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut o_lnlp, mut o_mte, mut o_sar, mut o_clip) =
            (Float64Builder::new(), Float64Builder::new(), Float64Builder::new(), Float64Builder::new());
        let (mut o_corr, mut o_level) = (BooleanBuilder::new(), StringBuilder::new());
        let mut clip_scores: Vec<Vec<f64>> = vec![Vec::new(); responses.len()];
        for r in 0..responses.len() {
            let id = ids.value(r);
            let &img = image_row.get(id).ok_or_else(|| anyhow::anyhow!("item {id}: no CLIP features"))?;
            let img_emb = f_emb.value(img);
            let img_emb = img_emb.as_primitive::<Float32Type>().values().to_vec();
            let prefixed: Vec<String> = texts[r].iter().map(|t| format!("{}{}", self.params.clip_prefix, t.trim())).collect();
            let refs: Vec<&str> = prefixed.iter().map(String::as_str).collect();
            let text_emb = if refs.is_empty() { None } else { Some(clip.text.encode(&refs)?) };
            for (s, text) in texts[r].iter().enumerate() {
                let te = text_emb.as_ref().expect("sentences present");
                let d = te.embeddings.dim;
                let cs = clip_score_from_embeddings(Location::sentence(r, s), &img_emb, &te.embeddings.data[s * d..(s + 1) * d])
                    .map_err(|e| anyhow::anyhow!("CLIPScore of item {id}, sentence {s} ({text:?}): {e}"))?;
                let (lnlp, mte) = likelihood[r][s];
                o_id.append_value(id);
                o_split.append_value(splits.value(r));
                o_sample.append_value(samples.value(r));
                o_sent.append_value(s as u32);
                o_text.append_value(text);
                o_lnlp.append_value(lnlp);
                o_mte.append_value(mte);
                o_sar.append_value(tokensar[r][s]);
                o_clip.append_value(cs);
                clip_scores[r].push(cs);
                o_judge.append_value(&judge_name);
                o_corr.append_option(correct[r][s].map(|c| c.0));
                o_level.append_option(correct[r][s].map(|c| c.1.name()));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(o_id.finish()),
            Arc::new(o_split.finish()),
            Arc::new(o_sample.finish()),
            Arc::new(o_sent.finish()),
            Arc::new(o_text.finish()),
            Arc::new(o_lnlp.finish()),
            Arc::new(o_mte.finish()),
            Arc::new(o_sar.finish()),
            Arc::new(o_clip.finish()),
            Arc::new(o_judge.finish()),
            Arc::new(o_corr.finish()),
            Arc::new(o_level.finish()),
        ];
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for r in 0..responses.len() {
            for (s, c) in correct[r].iter().enumerate() {
                if let Some((c, _)) = c {
                    labels.push(*c);
                    rows.push([likelihood[r][s].0, likelihood[r][s].1, tokensar[r][s], clip_scores[r][s]]);
                }
            }
        }
        let a = signal_aurocs(&rows, &labels)?;
        let show = |x: Option<f64>| x.map_or("undefined".to_string(), |v| format!("{v:.3}"));
        eprintln!(
            "score: AUROC for telling wrong from right sentences ({} judged by {judge_name}, {} right): LNLP {}, MTE {}, TokenSAR {}, 1 - CLIPScore {}",
            labels.len(),
            labels.iter().filter(|&&c| c).count(),
            show(a[0]),
            show(a[1]),
            show(a[2]),
            show(a[3])
        );
        ctx.write_table("scored", scored_schema(), &[RecordBatch::try_new(scored_schema(), cols)?], None)?;
        Ok(())
    }
}
