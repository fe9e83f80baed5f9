//! `dataset`: the embedded Penumbra benchmark as a Parquet artifact (one row per question, images inside),
//! plus a contact sheet of samples per difficulty level for people to look at.
use crate::data::penumbra::{self, PenumbraParams};
use crate::data::{hf_features, item_schema, items_to_record_batch};
use crate::engine::{InputSpec, Stage, StageContext};
use crate::store::ArtifactKind;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetParams {
    /// The generator's params (seed, size, splits, difficulty ladder, held-out combinations…).
    #[serde(flatten)]
    pub penumbra: PenumbraParams,
    /// Items per Parquet record batch (and per progress step).
    pub chunk: usize,
}

impl Default for DatasetParams {
    fn default() -> Self {
        Self { penumbra: PenumbraParams { n_items: 2000, ..PenumbraParams::default() }, chunk: 500 }
    }
}

pub struct DatasetStage {
    pub params: DatasetParams,
}

impl Stage for DatasetStage {
    fn name(&self) -> &str {
        "dataset"
    }
    fn code_version(&self) -> &str {
        // The generator's own version is part of params() (same params, different items ⇒ new key).
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<String> {
        vec!["items".into(), "sheet".into()]
    }
    fn params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).expect("params serialize");
        v["generator_version"] = serde_json::json!(penumbra::GENERATOR_VERSION);
        v
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let p = &self.params.penumbra;
        p.validate()?;
        let bar = ctx.progress(p.n_items as u64, "rendering scenes");
        let chunk = self.params.chunk.max(1);
        let mut batches = Vec::new();
        let mut all = Vec::with_capacity(p.n_items);
        for start in (0..p.n_items).step_by(chunk) {
            let end = (start + chunk).min(p.n_items);
            let items =
                (start..end).into_par_iter().map(|i| penumbra::generate_one(p, i).map(|g| g.item)).collect::<Result<Vec<_>, _>>()?;
            batches.push(items_to_record_batch(&items)?);
            bar.inc((end - start) as u64);
            all.extend(items);
        }
        bar.finish_and_clear();
        ctx.write_table("items", item_schema(), &batches, Some(&hf_features()))?;
        let sheet = crate::data::sheet::contact_sheet(&all, &Default::default())?;
        let mut png = Vec::new();
        sheet.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        ctx.write_bytes("sheet", ArtifactKind::Png, &png)?;
        Ok(())
    }
}
