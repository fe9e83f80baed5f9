//! The `eval` stage's model work: greedy chains from the vanilla, SFT and full policies; judging and
//! metrics are `mmboundary::stages::eval::evaluate`.
use crate::inputs::{ImageInputs, Prompter};
use crate::policy;
use mllm::generate::{generate_multimodal, GenerationParams};
use mmboundary::data::items_from_record_batch;
use mmboundary::engine::StageContext;
use mmboundary::stages::chain_judge::ChainJudge;
use mmboundary::stages::eval::{evaluate, metrics_schema, sentences_schema, EvalChain, EvalParams};
use std::str::FromStr;

pub fn run(ctx: &StageContext) -> anyhow::Result<()> {
    let p: EvalParams = ctx.params()?;
    let model_dir = mmboundary::stages::models::resolve(ctx, &p.model, "model")?;
    let device = crate::policy::device("eval", &p.device)?;
    let dtype = mllm::DType::from_str(&p.dtype)?;
    let tok = Prompter::tokenizer(&model_dir)?;
    let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
    let features = ctx.input_table("features")?.concat()?;
    let mut selected = Vec::new();
    for split in &p.splits {
        let mut s: Vec<_> = items.iter().filter(|it| &it.split == split).collect();
        if let Some(n) = p.limit {
            s.truncate(n);
        }
        selected.extend(s);
    }
    anyhow::ensure!(!selected.is_empty(), "eval: no items in splits {:?}", p.splits);

    let mut chains = Vec::new();
    let bar = ctx.progress((selected.len() * p.variants.len()) as u64, "evaluating policies");
    for variant in &p.variants {
        let ck = match variant.as_str() {
            "vanilla" => None,
            "sft" => Some(ctx.input_path("sft_checkpoint")?),
            "full" => Some(ctx.input_path("ppo_checkpoint")?),
            other => anyhow::bail!("eval.variants: unknown variant `{other}` (expected vanilla, sft or full)"),
        };
        let pol = policy::load(&model_dir, device, dtype, ck.as_deref())?;
        let images = ImageInputs::new(&pol.model, &model_dir, &features)?;
        let prompter = Prompter::new(&tok, &pol.model, &p.prompt);
        for (b, chunk) in selected.chunks(p.batch.max(1)).enumerate() {
            let mut prompts = Vec::with_capacity(chunk.len());
            for it in chunk {
                let (n, feat) = images.get(&pol.model, it)?;
                prompts.push((prompter.prompt(&it.question, &it.choices, n)?, feat));
            }
            let gp = GenerationParams {
                max_new_tokens: p.max_new_tokens,
                temperature: p.temperature,
                seed: p.seed.wrapping_add(b as u64 * 7919),
                suppress_token_ids: vec![pol.model.image_token_id()],
                ..GenerationParams::default()
            };
            for (it, g) in chunk.iter().zip(generate_multimodal(&pol.model, &prompts, &gp, Some(&tok))?) {
                chains.push(EvalChain { variant: variant.clone(), item_id: it.id.clone(), text: g.text });
            }
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    let judge =
        ChainJudge::load_with_judge(&p.minilm, &p.pool, p.parser.clone(), p.backward.clone(), &p.judge, "eval", &p.session_options())?;
    let (rows, metrics) = evaluate(&judge, &items, &chains, &p)?;
    ctx.write_table("sentences", sentences_schema(), &[rows], None)?;
    ctx.write_table("metrics", metrics_schema(), &[metrics], None)?;
    Ok(())
}
