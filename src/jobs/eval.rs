//! The `eval_chains` stage's model work: greedy chains from the vanilla, SFT and full policies; judging
//! is `mmboundary::stages::eval::write_judged` (the metrics are the `eval` stage's).
use super::inputs::{ImageInputs, Prompter};
use super::policy;
use super::{JobError, Result};
use mllm::generate::{generate_multimodal, GenerationParams};
use mmboundary::data::items_from_record_batch;
use mmboundary::engine::{item_seed, StageContext};
use mmboundary::stages::chain_judge::ChainJudge;
use mmboundary::stages::eval::{write_judged, EvalChain, EvalParams};
use mmboundary::stages::self_consistency::{draw_seed as sc_draw_seed, sc_chain_text, SC_POLICY};
use std::collections::HashMap;

pub fn run(ctx: &StageContext) -> Result<()> {
    let p: EvalParams = ctx.params()?;
    // Before any generation: a threshold the judge cannot use.
    p.judge.check_threshold("eval", "match_threshold", p.match_threshold)?;
    let policy::ModelRun { dir: model_dir, device, dtype } = policy::ModelRun::resolve(ctx, "eval", &p.mllm())?;
    let tok = Prompter::tokenizer(&model_dir)?;
    let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
    let features = ctx.input_table_as("features", &mmboundary::stages::features::features_schema())?.concat()?;
    let chosen = mmboundary::stages::eval::selection(&items, &p.splits, p.limit);
    if let Some(note) = chosen.note() {
        eprintln!("{note}");
    }
    let selected = chosen.items;
    if selected.is_empty() {
        return Err(JobError::stage("eval", format!("no items with a reference chain in splits {:?}", p.splits)));
    }

    let mut sc_samples: HashMap<String, Vec<String>> = HashMap::new();
    // With image_swap, each item is answered a second time with the image of `partners[i]` (same split,
    // drawn from the whole selection, so a shard's items get the images they get in a local run).
    let all_items = if p.image_swap { items_from_record_batch(&ctx.input_table("all_items")?.concat()?)? } else { Vec::new() };
    let partners = if p.image_swap { mmboundary::stages::eval::swap_partners(&all_items, &selected, &p)? } else { Vec::new() };
    let passes: &[bool] = if p.image_swap { &[false, true] } else { &[false] };
    let (mut chains, mut swapped, mut swapped_from) = (Vec::new(), Vec::new(), Vec::new());
    let bar = ctx.progress((selected.len() * p.variants.len() * passes.len()) as u64, "evaluating policies");
    for variant in &p.variants {
        let ck = match variant.as_str() {
            "vanilla" => None,
            "sft" => Some(ctx.input_path("sft_checkpoint")?),
            "full" => Some(ctx.input_path("ppo_checkpoint")?),
            mmboundary::stages::dpo::DPO_POLICY => Some(ctx.input_path("dpo_checkpoint")?),
            // The SC baseline samples the vanilla model.
            SC_POLICY => None,
            other => {
                return Err(JobError::param(
                    "eval.variants",
                    format!("unknown variant `{other}` (expected vanilla, sft, full, {SC_POLICY} or dpo)"),
                ))
            }
        };
        let pol = policy::load(&model_dir, device, dtype, ck.as_deref())?;
        let images = ImageInputs::new(&pol.model, &model_dir, &features)?;
        let template = super::inputs::prompt_template(&p.model, &p.prompt, &model_dir, pol.model.image_token_id())?;
        let prompter = Prompter::new(&tok, &pol.model, &template).with_instruction(p.instruction.as_deref());
        for &swap in passes {
            let order: Vec<usize> = (0..selected.len()).collect();
            for chunk in order.chunks(p.batch.max(1)) {
                let mut prompts = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let it = selected[i];
                    let image_of = if swap { partners[i] } else { it };
                    let (n, feat) = images.get(&pol.model, image_of)?;
                    prompts.push((prompter.prompt(&it.question, &it.choices, n)?, feat));
                }
                let gp = GenerationParams {
                    max_new_tokens: p.max_new_tokens,
                    temperature: p.temperature,
                    // Each item samples from its own stream (the same under every variant and image), seeded by its id.
                    row_seeds: chunk.iter().map(|&i| item_seed(p.seed, &selected[i].id, 0)).collect(),
                    suppress_token_ids: vec![pol.model.image_token_id()],
                    ..GenerationParams::default()
                };
                if variant == SC_POLICY && !swap {
                    // K sampled chains per question, draw k from the item's stream k + 1 (stream 0 is the
                    // greedy chain's), so the K draws differ and none depends on the batch.
                    for k in 0..p.sc.samples {
                        let sp = GenerationParams {
                            temperature: p.sc.temperature,
                            row_seeds: chunk.iter().map(|&i| sc_draw_seed(p.seed, &selected[i].id, k)).collect(),
                            ..gp.clone()
                        };
                        for (&i, g) in chunk.iter().zip(generate_multimodal(&pol.model, &prompts, &sp, Some(&tok))?) {
                            sc_samples.entry(selected[i].id.clone()).or_default().push(g.text);
                        }
                    }
                }
                for (&i, g) in chunk.iter().zip(generate_multimodal(&pol.model, &prompts, &gp, Some(&tok))?) {
                    let c = EvalChain { variant: variant.clone(), item_id: selected[i].id.clone(), text: g.text };
                    if swap {
                        swapped.push(c);
                        swapped_from.push(partners[i].id.clone());
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
    // SC: the greedy chain with its agreement confidences written in (plain Rust, in the library).
    let by_id: HashMap<&str, &mmboundary::data::Item> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    for c in chains.iter_mut().filter(|c| c.variant == SC_POLICY) {
        let item = by_id.get(c.item_id.as_str()).ok_or_else(|| JobError::unknown_item("eval", &c.item_id))?;
        let samples = sc_samples.get(&c.item_id).map(Vec::as_slice).unwrap_or_default();
        c.text = sc_chain_text(&judge, item, &c.text, samples, p.match_threshold, &p.metrics.accuracy)?;
    }
    let own: &[EvalChain] = if p.image_swap { &chains } else { &[] };
    Ok(write_judged(ctx, &judge, &items, &chains, (own, &swapped, &swapped_from), &p)?)
}
