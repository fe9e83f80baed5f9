//! The `dpo` stage's model work (the Conf-CSR baseline): (prompt + image, chosen, rejected) pairs from
//! `csr_pairs`, trained by `mllm::dpo::train_resumable`.
use super::inputs::Trainable;
use super::{JobError, Result};
use arrow::array::{ArrayRef, AsArray, Float64Array, UInt64Array};
use arrow::record_batch::RecordBatch;
use mllm::dpo::{train_resumable, DpoExample, DpoParams};
use mmboundary::engine::StageContext;
use mmboundary::stages::dpo::{dpo_log_schema, DpoStageParams};
use mmboundary::store::ArtifactKind;
use std::sync::Arc;

pub fn run(ctx: &StageContext) -> Result<()> {
    let p: DpoStageParams = ctx.params()?;
    let tp = super::inputs::overlay_params::<DpoParams>(&p.trainer, "dpo.trainer")?;
    let mut t = Trainable::load(ctx, "dpo", &p.mllm())?;
    let pairs = ctx.input_table_as("pairs", &mmboundary::stages::csr_pairs::pairs_schema())?.concat()?;
    let col = |n: &str| pairs.column_by_name(n).ok_or_else(|| JobError::column("csr_pairs' pairs", n));
    let (ids, chosen, rejected) =
        (col("item_id")?.as_string::<i32>(), col("chosen")?.as_string::<i32>(), col("rejected")?.as_string::<i32>());
    let mut data = Vec::with_capacity(pairs.num_rows());
    {
        let (prompter, by_id) = (t.prompter(), t.items_by_id());
        let response = |text: &str| -> Result<Vec<i64>> {
            let mut r = prompter.response(text)?;
            r.extend(t.eos);
            Ok(r)
        };
        for r in 0..pairs.num_rows() {
            let it = by_id.get(ids.value(r)).ok_or_else(|| JobError::unknown_item(format!("pairs row {r}"), ids.value(r)))?;
            let (n, feat) = t.images.get(&t.model, it)?;
            let prompt = prompter.prompt(&it.question, &it.choices, n)?;
            data.push(DpoExample { prompt, chosen: response(chosen.value(r))?, rejected: response(rejected.value(r))?, images: feat });
        }
    }
    let (report, last) = train_resumable(&t.vs, &mut t.model, tp, &data, &ctx.work_dir()?)?;
    // One column per field of `dpo_log_schema`, in its order.
    let rows = &report.rows;
    let u64s = |f: &dyn Fn(&mllm::dpo::DpoStepRow) -> u64| -> ArrayRef { Arc::new(UInt64Array::from_iter_values(rows.iter().map(f))) };
    let f64s = |f: &dyn Fn(&mllm::dpo::DpoStepRow) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) };
    let cols = vec![
        u64s(&|r| r.step as u64),
        u64s(&|r| r.epoch as u64),
        f64s(&|r| r.lr),
        f64s(&|r| r.stats.loss),
        f64s(&|r| r.grad_norm),
        u64s(&|r| r.pairs as u64),
        f64s(&|r| r.stats.reward_chosen),
        f64s(&|r| r.stats.reward_rejected),
        f64s(&|r| r.stats.reward_margin),
        f64s(&|r| r.stats.reward_accuracy),
        f64s(&|r| r.seconds),
    ];
    ctx.write_table("log", dpo_log_schema(), &[RecordBatch::try_new(dpo_log_schema(), cols)?], None)?;
    ctx.write_file("checkpoint", ArtifactKind::Safetensors, &last.path)?;
    Ok(())
}
