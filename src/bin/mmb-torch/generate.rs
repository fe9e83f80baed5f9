//! The `generate` stage's model work: LLaVA-style generation with per-token log-probs and entropies.
use crate::inputs::{Features, Prompter};
use arrow::array::{ArrayRef, Float32Builder, Int64Builder, ListBuilder, StringBuilder, UInt32Builder};
use arrow::record_batch::RecordBatch;
use mllm::generate::{generate_multimodal, GenerationParams};
use mllm::llava::Llava;
use mmboundary::data::items_from_record_batch;
use mmboundary::engine::StageContext;
use mmboundary::stages::generate::{chains_schema, GenerateParams};
use std::str::FromStr;
use std::sync::Arc;

pub fn run(ctx: &StageContext) -> anyhow::Result<()> {
    let p: GenerateParams = ctx.params()?;
    let model_dir = mmboundary::stages::models::resolve(ctx, &p.model, "model")?;
    let device = mllm::DeviceChoice::from_str(&p.device)?.resolve()?;
    let dtype = mllm::DType::from_str(&p.dtype)?;
    let (_vs, model) = Llava::load(&model_dir, device, dtype)?;
    let tok_path = model_dir.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
    let mllm::config::ModelConfig::Llava(cfg) = mllm::config::ModelConfig::from_dir(&model_dir)? else {
        anyhow::bail!("{}: generate needs a LLaVA-style model (LlavaForConditionalGeneration)", model_dir.display());
    };

    let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
    let feats = Features::from_batch(&ctx.input_table("features")?.concat()?)?;
    let prompter = Prompter { tok: &tok, image_token: cfg.image_token_index, template: &p.prompt };

    let mut selected: Vec<_> = items.iter().filter(|it| p.splits.iter().any(|s| s == &it.split)).collect();
    if let Some(n) = p.limit {
        selected.truncate(n);
    }
    anyhow::ensure!(!selected.is_empty(), "no items in splits {:?}", p.splits);

    let (mut c_id, mut c_split, mut c_sample, mut c_text, mut c_finish) =
        (StringBuilder::new(), StringBuilder::new(), UInt32Builder::new(), StringBuilder::new(), StringBuilder::new());
    let mut c_tokens = ListBuilder::new(Int64Builder::new());
    let mut c_tt = ListBuilder::new(StringBuilder::new());
    let (mut c_lp, mut c_ent) = (ListBuilder::new(Float32Builder::new()), ListBuilder::new(Float32Builder::new()));
    let mut c_sent = ListBuilder::new(StringBuilder::new());
    let (mut c_first, mut c_last) = (ListBuilder::new(UInt32Builder::new()), ListBuilder::new(UInt32Builder::new()));

    let bar = ctx.progress((selected.len() * p.samples) as u64, "generating chains");
    for sample in 0..p.samples {
        for (b, chunk) in selected.chunks(p.batch.max(1)).enumerate() {
            let mut prompts = Vec::with_capacity(chunk.len());
            for it in chunk {
                let (n, feat) = feats.tensor(&it.id)?;
                prompts.push((prompter.prompt(&it.question, &it.choices, n)?, vec![feat]));
            }
            let gp = GenerationParams {
                max_new_tokens: p.max_new_tokens,
                temperature: p.temperature,
                top_p: p.top_p,
                // A different stream per sample and batch, reproducible from the seed.
                seed: p.seed.wrapping_add((sample * 1_000_003 + b * 7919) as u64),
                // An image token in a chain would break the splice wherever the chain is fed back.
                suppress_token_ids: vec![cfg.image_token_index],
                ..GenerationParams::default()
            };
            let out = generate_multimodal(&model, &prompts, &gp, Some(&tok))?;
            for (it, g) in chunk.iter().zip(out) {
                c_id.append_value(&it.id);
                c_split.append_value(&it.split);
                c_sample.append_value(sample as u32);
                c_text.append_value(&g.text);
                c_finish.append_value(format!("{:?}", g.finish).to_lowercase());
                c_tokens.values().append_slice(&g.tokens);
                c_tokens.append(true);
                for &t in &g.tokens {
                    c_tt.values().append_value(tok.id_to_token(t as u32).unwrap_or_default());
                }
                c_tt.append(true);
                anyhow::ensure!(
                    g.logprobs.iter().chain(&g.entropies).all(|v| v.is_finite()),
                    "item {}: the model produced non-finite log-probs or entropies",
                    it.id
                );
                c_lp.values().append_slice(&g.logprobs);
                c_lp.append(true);
                c_ent.values().append_slice(&g.entropies);
                c_ent.append(true);
                for s in &g.sentences {
                    c_sent.values().append_value(&s.text);
                    c_first.values().append_value(s.first_token as u32);
                    c_last.values().append_value(s.last_token as u32);
                }
                c_sent.append(true);
                c_first.append(true);
                c_last.append(true);
            }
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(c_id.finish()),
        Arc::new(c_split.finish()),
        Arc::new(c_sample.finish()),
        Arc::new(c_text.finish()),
        Arc::new(c_tokens.finish()),
        Arc::new(c_tt.finish()),
        Arc::new(c_lp.finish()),
        Arc::new(c_ent.finish()),
        Arc::new(c_sent.finish()),
        Arc::new(c_first.finish()),
        Arc::new(c_last.finish()),
        Arc::new(c_finish.finish()),
    ];
    let batch = RecordBatch::try_new(chains_schema(), cols)?;
    ctx.write_table("chains", chains_schema(), &[batch], None)?;
    Ok(())
}
