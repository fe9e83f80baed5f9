//! `score`: the paper's four uncertainty signals for every sentence of every generated chain (§3.1.1):
//! U_LNLP and U_MTE from the generation's log-probs and entropies, U_TokenSAR with every token deletion of
//! the dataset judged in one batched similarity call, U_CLIPScore between the image and the sentence.
//! This is the scored dataset teams share.
//!
//! x for a sentence is the question plus the earlier sentences; a sentence's tokens are the generated
//! tokens in its span (tokens outside every sentence, such as the end token, belong to none).
use crate::confidence::similarity::CosineOfEmbeddings;
use crate::confidence::uncertainty::{
    clip_score_from_embeddings, likelihood_signals, token_sar_batched, ResponseTokens, SentenceTokens, TokenInfo, UncertaintyParams,
};
use crate::confidence::Location;
use crate::data::items_from_record_batch;
use crate::encoders::clip::Clip;
use crate::encoders::minilm::{SentenceEncoder, SentenceEncoderParams, DEFAULT_MODEL_DIR};
use crate::encoders::runtime::SessionOptions;
use crate::engine::{InputSpec, Stage, StageContext};
use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreParams {
    /// The sentence encoder whose cosine is TokenSAR's similarity g. The paper's g is a cross-encoder
    /// (stsb-roberta-large, lm-polygraph); none can be had here, so MiniLM cosine stands in, and every
    /// row records which judge was used.
    pub minilm: PathBuf,
    /// The CLIP folder (the same as `features`; unset: the demo CLIP).
    pub clip: Option<PathBuf>,
    /// CLIPScore text prefix: "" (the paper's formula) or "A photo depicts " (the CLIPScore reference).
    pub clip_prefix: String,
    pub uncertainty: UncertaintyParams,
}

impl Default for ScoreParams {
    fn default() -> Self {
        Self {
            minilm: PathBuf::from(DEFAULT_MODEL_DIR),
            clip: super::features::FeaturesParams::default().clip,
            clip_prefix: String::new(),
            uncertainty: UncertaintyParams::default(),
        }
    }
}

pub struct ScoreStage {
    pub params: ScoreParams,
    pub session: SessionOptions,
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
    ]))
}

impl Stage for ScoreStage {
    fn name(&self) -> &str {
        "score"
    }
    fn code_version(&self) -> &str {
        "1"
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
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }
    fn models(&self) -> Vec<PathBuf> {
        let mut v = vec![self.params.minilm.join("onnx/model.onnx"), self.params.minilm.join("tokenizer.json")];
        v.extend(super::models::model_files(&self.params.clip));
        v
    }
    /// Each chain's rows depend on that chain alone: `score` may run on shards of the chains.
    fn shard(&self) -> Option<crate::engine::ShardSpec> {
        Some(crate::engine::ShardSpec::new("chains", "item_id"))
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let chains = ctx.input_table("chains")?.concat()?;
        let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
        let question: HashMap<&str, &str> = items.iter().map(|i| (i.id.as_str(), i.question.as_str())).collect();
        let feats = ctx.input_table("features")?.concat()?;
        let f_ids = feats.column_by_name("item_id").expect("features schema").as_string::<i32>();
        let f_emb = feats.column_by_name("embedding").expect("features schema").as_list::<i32>();
        let image_row: HashMap<&str, usize> = (0..f_ids.len()).map(|i| (f_ids.value(i), i)).collect();

        let col = |n: &str| chains.column_by_name(n).ok_or_else(|| anyhow::anyhow!("chains artifact has no column `{n}`"));
        let ids = col("item_id")?.as_string::<i32>();
        let splits = col("split")?.as_string::<i32>();
        let samples = col("sample")?.as_primitive::<UInt32Type>();
        let tokens = col("tokens")?.as_list::<i32>();
        let token_text = col("token_text")?.as_list::<i32>();
        let logprobs = col("logprobs")?.as_list::<i32>();
        let entropies = col("entropies")?.as_list::<i32>();
        let sentences = col("sentences")?.as_list::<i32>();
        let firsts = col("sentence_first")?.as_list::<i32>();
        let lasts = col("sentence_last")?.as_list::<i32>();

        // Per chain: the prompt x and each sentence's tokens.
        let mut responses = Vec::with_capacity(chains.num_rows());
        let mut texts: Vec<Vec<String>> = Vec::with_capacity(chains.num_rows());
        for r in 0..chains.num_rows() {
            let q =
                question.get(ids.value(r)).ok_or_else(|| anyhow::anyhow!("chain row {r}: item {} is not in the dataset", ids.value(r)))?;
            let (tok, tt) = (tokens.value(r), token_text.value(r));
            let (tok, tt) = (tok.as_primitive::<Int64Type>(), tt.as_string::<i32>());
            let (lp, en) = (logprobs.value(r), entropies.value(r));
            let (lp, en) = (lp.as_primitive::<Float32Type>(), en.as_primitive::<Float32Type>());
            let (s_text, s_first, s_last) = (sentences.value(r), firsts.value(r), lasts.value(r));
            let (s_text, s_first, s_last) =
                (s_text.as_string::<i32>(), s_first.as_primitive::<UInt32Type>(), s_last.as_primitive::<UInt32Type>());
            let mut sents = Vec::new();
            let mut st = Vec::new();
            for s in 0..s_text.len() {
                let (a, b) = (s_first.value(s) as usize, s_last.value(s) as usize);
                anyhow::ensure!(a <= b && b < tok.len(), "chain row {r}, sentence {s}: token span {a}..={b} outside {} tokens", tok.len());
                let toks = (a..=b)
                    .map(|k| TokenInfo {
                        id: tok.value(k) as u32,
                        text: tt.value(k).to_string(),
                        log_prob: lp.value(k) as f64,
                        entropy: en.value(k) as f64,
                        is_special: false,
                    })
                    .collect();
                sents.push(SentenceTokens { tokens: toks });
                st.push(s_text.value(s).to_string());
            }
            responses.push(ResponseTokens { prompt: q.to_string(), sentences: sents });
            texts.push(st);
        }
        let u = &self.params.uncertainty;
        let likelihood = likelihood_signals(&responses, u)?;
        let encoder = SentenceEncoder::load(&self.params.minilm, SentenceEncoderParams::default(), &self.session)?;
        let sim = CosineOfEmbeddings(super::judges::MiniLmEmbedder(encoder));
        let bar = ctx.progress(responses.len() as u64, "TokenSAR + CLIPScore");
        let tokensar = token_sar_batched(&responses, &sim, &u.token_sar)?;
        let clip = Clip::load(&super::models::resolve(ctx, &self.params.clip, "clip")?, &self.session)?;

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
                let cs = clip_score_from_embeddings(Location::sentence(r, s), &img_emb, &te.embeddings.data[s * d..(s + 1) * d])?;
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
                o_judge.append_value("minilm-cosine");
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
        ];
        ctx.write_table("scored", scored_schema(), &[RecordBatch::try_new(scored_schema(), cols)?], None)?;
        Ok(())
    }
}
