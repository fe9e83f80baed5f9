//! `bin`: min-max normalization, fusion into U_Final and the five levels (§3.1.1). The normalizer and
//! cut points are fitted on the chosen splits (the training chains) and applied to every row; the fitted
//! model is an artifact of its own, so other datasets can be binned exactly the same way.
use crate::confidence::levels::{FusionParams, LevelModel, SignalScores};
use crate::engine::{InputSpec, Stage, StageContext};
use crate::store::ArtifactKind;
use arrow::array::{ArrayRef, AsArray, Float64Builder, UInt8Builder};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BinParams {
    /// Weights, pooling (the "w U_Max" ablation), intervals (the UIC ablation), enabled signals.
    pub fusion: FusionParams,
    /// Splits whose sentences fit the normalizer and μ/σ (empty: all rows).
    pub fit_splits: Vec<String>,
}

pub struct BinStage {
    pub params: BinParams,
}

impl Stage for BinStage {
    fn name(&self) -> &str {
        "bin"
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::new("scored", "score", "scored")]
    }
    fn outputs(&self) -> Vec<String> {
        vec!["levels".into(), "level_model".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let scored = ctx.input_table_as("scored", &super::score::scored_schema())?.concat()?;
        let f = |n: &str| -> anyhow::Result<Vec<f64>> {
            let c = scored.column_by_name(n).ok_or_else(|| anyhow::anyhow!("scored artifact has no column `{n}`"))?;
            Ok(c.as_primitive::<Float64Type>().values().to_vec())
        };
        let (lnlp, mte, sar, clip) = (f("lnlp")?, f("mte")?, f("tokensar")?, f("clipscore")?);
        let rows: Vec<SignalScores> = (0..scored.num_rows()).map(|i| [lnlp[i], mte[i], sar[i], clip[i]]).collect();
        let splits =
            scored.column_by_name("split").ok_or_else(|| anyhow::anyhow!("scored artifact has no column `split`"))?.as_string::<i32>();
        let fit_rows: Vec<SignalScores> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| self.params.fit_splits.is_empty() || self.params.fit_splits.iter().any(|s| s == splits.value(*i)))
            .map(|(_, r)| *r)
            .collect();
        anyhow::ensure!(!fit_rows.is_empty(), "no scored sentences in splits {:?} to fit the levels on", self.params.fit_splits);
        let model = LevelModel::fit(&fit_rows, &self.params.fusion)?;
        let out = model.apply(&rows)?;
        let (mut u, mut lv) = (Float64Builder::new(), UInt8Builder::new());
        for s in &out {
            u.append_value(s.u_final);
            lv.append_value(s.level);
        }
        // The scored columns travel along, so a levels artifact is self-contained.
        let schema = with_levels(&scored.schema());
        let mut cols: Vec<ArrayRef> = scored.columns().to_vec();
        cols.push(Arc::new(u.finish()));
        cols.push(Arc::new(lv.finish()));
        ctx.write_table("levels", schema.clone(), &[RecordBatch::try_new(schema, cols)?], None)?;
        ctx.write_bytes("level_model", ArtifactKind::Json, &serde_json::to_vec_pretty(&model)?)?;
        Ok(())
    }
}

/// A levels table: the scored columns, then each sentence's fused uncertainty and level.
pub fn levels_schema() -> SchemaRef {
    with_levels(&super::score::scored_schema())
}

fn with_levels(scored: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = scored.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("u_final", DataType::Float64, false));
    fields.push(Field::new("level", DataType::UInt8, false));
    Arc::new(Schema::new(fields))
}
