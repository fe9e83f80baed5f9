//! The `sft` stage's model work: build (prompt + image, interleaved target) examples and train.
use crate::inputs::{Features, Prompter};
use anyhow::Context;
use arrow::array::{ArrayRef, AsArray, Float64Builder, Int64Builder, UInt64Builder};
use arrow::record_batch::RecordBatch;
use mllm::llava::Llava;
use mllm::sft::{SftExample, SftParams, SftTrainer};
use mmboundary::data::items_from_record_batch;
use mmboundary::engine::StageContext;
use mmboundary::stages::sft::{sft_log_schema, SftStageParams};
use mmboundary::store::ArtifactKind;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

pub fn run(ctx: &StageContext) -> anyhow::Result<()> {
    let p: SftStageParams = ctx.params()?;
    let tp = crate::inputs::overlay_params::<SftParams>(&p.trainer, "sft.trainer")?;
    let model_dir = mmboundary::stages::models::resolve(ctx, &p.model, "model")?;
    let device = crate::policy::device("sft", &p.device)?;
    let dtype = mllm::DType::from_str(&p.dtype)?;
    let (vs, mut model) = Llava::load(&model_dir, device, dtype)?;
    let mllm::config::ModelConfig::Llava(cfg) = mllm::config::ModelConfig::from_dir(&model_dir)? else {
        anyhow::bail!("{}: sft needs a LLaVA-style model", model_dir.display());
    };
    let tok_path = model_dir.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
    let eos = cfg.text_config.eos_token_ids().first().copied();
    let template = crate::inputs::prompt_template(&p.model, &p.prompt, &model_dir, cfg.image_token_index)?;
    let prompter = Prompter { tok: &tok, image_token: cfg.image_token_index, template: &template };

    let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
    let by_id: HashMap<&str, _> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    let feats = Features::from_batch(&ctx.input_table("features")?.concat()?)?;
    let data = ctx.input_table("sft_data")?.concat()?;
    let ids = data.column_by_name("item_id").context("sft_data has no item_id")?.as_string::<i32>();
    let targets = data.column_by_name("target").context("sft_data has no target")?.as_string::<i32>();
    let mut examples = Vec::with_capacity(data.num_rows());
    for r in 0..data.num_rows() {
        let it = by_id.get(ids.value(r)).with_context(|| format!("sft_data row {r}: item {} is not in the dataset", ids.value(r)))?;
        let (n, feat) = feats.tensor(&it.id)?;
        let mut response = prompter.encode(&format!(" {}", targets.value(r)))?;
        response.extend(eos);
        examples.push(SftExample { prompt: prompter.prompt(&it.question, &it.choices, n)?, response, images: vec![feat] });
    }

    let mut trainer = SftTrainer::new(&vs, &mut model, tp)?;
    // Checkpoints of this very run (same cache key) survive a crash: resume from the latest one.
    let work = ctx.work_dir()?;
    let mut done: Vec<_> = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    done.sort();
    if let Some(last) = done.last() {
        eprintln!("sft: resuming from {}", last.display());
        trainer.resume(last)?;
    }
    let report = trainer.train(&model, &examples, &work)?;
    let last = trainer.save(&work)?;

    let (mut step, mut epoch, mut lr, mut loss, mut gn, mut rt, mut secs) = (
        UInt64Builder::new(),
        UInt64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        Int64Builder::new(),
        Float64Builder::new(),
    );
    for row in &report.rows {
        step.append_value(row.step as u64);
        epoch.append_value(row.epoch as u64);
        lr.append_value(row.lr);
        loss.append_value(row.loss);
        gn.append_value(row.grad_norm);
        rt.append_value(row.response_tokens);
        secs.append_value(row.seconds);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(step.finish()),
        Arc::new(epoch.finish()),
        Arc::new(lr.finish()),
        Arc::new(loss.finish()),
        Arc::new(gn.finish()),
        Arc::new(rt.finish()),
        Arc::new(secs.finish()),
    ];
    ctx.write_table("log", sft_log_schema(), &[RecordBatch::try_new(sft_log_schema(), cols)?], None)?;
    ctx.write_file("checkpoint", ArtifactKind::Safetensors, &last.path)?;
    Ok(())
}
