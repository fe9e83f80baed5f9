//! The `eval` stage's model work: greedy chains from the vanilla, SFT and full policies; judging and
//! metrics are `mmboundary::stages::eval::evaluate`.
use crate::inputs::{Features, Prompter};
use crate::policy;
use mllm::generate::{generate_multimodal, GenerationParams};
use mmboundary::data::items_from_record_batch;
use mmboundary::engine::StageContext;
use mmboundary::stages::chain_judge::ChainJudge;
use mmboundary::stages::image_swap;
use mmboundary::stages::eval::{evaluate, metrics_schema, sentences_schema, EvalChain, EvalParams};
use std::str::FromStr;

pub fn run(ctx: &StageContext) -> anyhow::Result<()> {
    let p: EvalParams = ctx.params()?;
    let model_dir = mmboundary::stages::models::resolve(ctx, &p.model, "model")?;
    let device = crate::policy::device("eval", &p.device)?;
    let dtype = mllm::DType::from_str(&p.dtype)?;
    let mllm::config::ModelConfig::Llava(cfg) = mllm::config::ModelConfig::from_dir(&model_dir)? else {
        anyhow::bail!("{}: eval needs a LLaVA-style model", model_dir.display());
    };
    let tok_path = model_dir.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
    let prompter = Prompter { tok: &tok, image_token: cfg.image_token_index, template: &p.prompt };
    let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
    let feats = Features::from_batch(&ctx.input_table("features")?.concat()?)?;
    let mut selected = Vec::new();
    for split in &p.splits {
        let mut s: Vec<_> = items.iter().filter(|it| &it.split == split).collect();
        if let Some(n) = p.limit {
            s.truncate(n);
        }
        selected.extend(s);
    }
    anyhow::ensure!(!selected.is_empty(), "eval: no items in splits {:?}", p.splits);

    // With image_swap, each item is answered a second time with the image of `partners[i]` (same split).
    let split_names: Vec<&str> = selected.iter().map(|it| it.split.as_str()).collect();
    let partners = image_swap::partners(&split_names);
    let passes: &[bool] = if p.image_swap { &[false, true] } else { &[false] };
    let (mut chains, mut swapped, mut swapped_from) = (Vec::new(), Vec::new(), Vec::new());
    let bar = ctx.progress((selected.len() * p.variants.len() * passes.len()) as u64, "evaluating policies");
    for variant in &p.variants {
        let ck = match variant.as_str() {
            "vanilla" => None,
            "sft" => Some(ctx.input_path("sft_checkpoint")?),
            "full" => Some(ctx.input_path("ppo_checkpoint")?),
            other => anyhow::bail!("eval.variants: unknown variant `{other}` (expected vanilla, sft or full)"),
        };
        let pol = policy::load(&model_dir, device, dtype, ck.as_deref())?;
        for &swap in passes {
            let order: Vec<usize> = (0..selected.len()).collect();
            for (b, chunk) in order.chunks(p.batch.max(1)).enumerate() {
                let mut prompts = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let it = selected[i];
                    let image_of = if swap { selected[partners[i]] } else { it };
                    let (n, feat) = feats.tensor(&image_of.id)?;
                    prompts.push((prompter.prompt(&it.question, &it.choices, n)?, vec![feat]));
                }
                let gp = GenerationParams {
                    max_new_tokens: p.max_new_tokens,
                    temperature: p.temperature,
                    seed: p.seed.wrapping_add(b as u64 * 7919),
                    suppress_token_ids: vec![cfg.image_token_index],
                    ..GenerationParams::default()
                };
                for (&i, g) in chunk.iter().zip(generate_multimodal(&pol.model, &prompts, &gp, Some(&tok))?) {
                    let c = EvalChain { variant: variant.clone(), item_id: selected[i].id.clone(), text: g.text };
                    if swap {
                        swapped.push(c);
                        swapped_from.push(selected[partners[i]].id.clone());
                    } else {
                        chains.push(c);
                    }
                }
                bar.inc(chunk.len() as u64);
            }
        }
    }
    bar.finish_and_clear();
    let judge =
        ChainJudge::load_with_judge(&p.minilm, &p.pool, p.parser.clone(), p.backward.clone(), &p.judge, "eval", &p.session_options())?;
    let (rows, metrics) = evaluate(&judge, &items, &chains, &p)?;
    ctx.write_table("sentences", sentences_schema(), &[rows], None)?;
    ctx.write_table("metrics", metrics_schema(), &[metrics], None)?;
    let own: Vec<EvalChain> = if p.image_swap { chains } else { Vec::new() };
    let swap_table = image_swap::table(&items, &own, &swapped, &swapped_from, &judge.parser, &p.metrics)?;
    ctx.write_table("image_swap", image_swap::schema(), &[swap_table], None)?;
    Ok(())
}
