//! The `generate` stage's model work: generation on any `mllm::family` model with per-token log-probs and entropies.
use super::inputs::{ImageInputs, Prompter};
use super::{JobError, Result};
use mllm::family::Mllm;
use mllm::generate::{generate_multimodal, GenerationParams};
use mmboundary::data::items_from_record_batch;
use mmboundary::engine::{item_seed, StageContext};
use mmboundary::stages::features::features_schema;
use mmboundary::stages::generate::{chains_batch, chains_schema, ChainRow, GenerateParams};

pub fn run(ctx: &StageContext) -> Result<()> {
    let p: GenerateParams = ctx.params()?;
    let super::policy::ModelRun { dir: model_dir, device, dtype } = super::policy::ModelRun::resolve(ctx, "generate", &p.mllm())?;
    let (_vs, model) = Mllm::load(&model_dir, device, dtype)?;
    let tok = Prompter::tokenizer(&model_dir)?;
    let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
    let images = ImageInputs::new(&model, &model_dir, &ctx.input_table_as("features", &features_schema())?.concat()?)?;
    let template = super::inputs::prompt_template(&p.model, &p.prompt, &model_dir, model.image_token_id())?;
    let prompter = Prompter::new(&tok, &model, &template);

    let selected = mmboundary::stages::generate::select(&items, &p.splits, p.limit);
    if selected.is_empty() {
        return Err(JobError::stage("generate", format!("no items in splits {:?}", p.splits)));
    }

    // Every (item, sample) chain, item by item; each samples from its own stream, seeded by the item's id
    // and the sample index alone, so a chain is the same whichever batch or shard its item lands in.
    let pairs: Vec<(&mmboundary::data::Item, usize)> = selected.iter().flat_map(|&it| (0..p.samples).map(move |s| (it, s))).collect();
    let mut rows = Vec::new();
    let bar = ctx.progress(pairs.len() as u64, "generating chains");
    for chunk in pairs.chunks(p.batch.max(1)) {
        let mut prompts = Vec::with_capacity(chunk.len());
        for (it, _) in chunk {
            let (n, feat) = images.get(&model, it)?;
            prompts.push((prompter.prompt(&it.question, &it.choices, n)?, feat));
        }
        let gp = GenerationParams {
            max_new_tokens: p.max_new_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            row_seeds: chunk.iter().map(|(it, s)| item_seed(p.seed, &it.id, *s as u64)).collect(),
            // An image token in a chain would break the splice wherever the chain is fed back.
            suppress_token_ids: vec![model.image_token_id()],
            ..GenerationParams::default()
        };
        let out = generate_multimodal(&model, &prompts, &gp, Some(&tok))?;
        for ((it, sample), g) in chunk.iter().zip(out) {
            if !g.logprobs.iter().chain(&g.entropies).all(|v| v.is_finite()) {
                return Err(JobError::item(&it.id, "the model produced non-finite log-probs or entropies"));
            }
            rows.push(ChainRow {
                item_id: it.id.clone(),
                split: it.split.clone(),
                sample: *sample as u32,
                text: g.text,
                tokens: g.tokens,
                pieces: g.pieces,
                logprobs: g.logprobs,
                entropies: g.entropies,
                finish: format!("{:?}", g.finish).to_lowercase(),
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let batch = chains_batch(&rows)?;
    ctx.write_table("chains", chains_schema(), &[batch], None)?;
    Ok(())
}
