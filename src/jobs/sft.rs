//! The `sft` stage's model work: build (prompt + image, interleaved target) examples and train.
use super::inputs::Trainable;
use super::{JobError, Result};
use arrow::array::{ArrayRef, AsArray, Float64Builder, Int64Builder, UInt64Builder};
use arrow::record_batch::RecordBatch;
use mllm::sft::{SftExample, SftParams, SftTrainer};
use mmboundary::engine::StageContext;
use mmboundary::stages::sft::{sft_log_schema, SftStageParams};
use mmboundary::store::ArtifactKind;
use std::collections::HashMap;
use std::sync::Arc;

pub fn run(ctx: &StageContext) -> Result<()> {
    let p: SftStageParams = ctx.params()?;
    let tp = super::inputs::overlay_params::<SftParams>(&p.trainer, "sft.trainer")?;
    let mut t = Trainable::load(ctx, "sft", &p.mllm())?;
    let data = ctx.input_table_as("sft_data", &mmboundary::stages::map::sft_schema())?.concat()?;
    let ids = data.column_by_name("item_id").ok_or_else(|| JobError::column("sft_data", "item_id"))?.as_string::<i32>();
    let targets = data.column_by_name("target").ok_or_else(|| JobError::column("sft_data", "target"))?.as_string::<i32>();
    let mut examples = Vec::with_capacity(data.num_rows());
    {
        let (prompter, by_id) = (t.prompter(), t.items_by_id());
        // An item's image inputs, computed once however many targets it has.
        let mut cache: HashMap<String, (i64, Vec<tch::Tensor>)> = HashMap::new();
        for r in 0..data.num_rows() {
            let it = by_id.get(ids.value(r)).ok_or_else(|| JobError::unknown_item(format!("sft_data row {r}"), ids.value(r)))?;
            if !cache.contains_key(&it.id) {
                cache.insert(it.id.clone(), t.images.get(&t.model, it)?);
            }
            let (n, feat) = &cache[&it.id];
            let (n, feat) = (*n, feat.iter().map(|t| t.shallow_clone()).collect());
            let mut response = prompter.response(targets.value(r))?;
            response.extend(t.eos);
            examples.push(SftExample { prompt: prompter.prompt(&it.question, &it.choices, n)?, response, images: feat });
        }
    }

    let mut trainer = SftTrainer::new(&t.vs, &mut t.model, tp)?;
    // Checkpoints of this very run (same cache key) survive a crash: resume from the latest one.
    let work = ctx.work_dir()?;
    if let Some(last) = mllm::checkpoint::latest_checkpoint(&work, "sft")? {
        eprintln!("sft: resuming from {}", last.display());
        trainer.resume(&last)?;
    }
    let report = trainer.train(&t.model, &examples, &work)?;
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
