//! `dataset`: the items every later stage reads, as a Parquet artifact (one row per question), plus a
//! contact sheet of samples for people to look at.
//!
//! `source = "penumbra"` (the default) generates the embedded benchmark (images inside, a sheet row per
//! difficulty level); its params and cache key are those of the generator alone. `source` = `aokvqa`,
//! `scienceqa`, `culturalvqa` or a list of them loads the real datasets from the paths in
//! `[params.<source>]` (official layouts; see [`crate::data::sources`]), joined with the paper's annotated
//! chains where `annotated` is set; it also writes `load_report` (JSON: rows per source and split, every
//! skipped record with its file and reason, counted quirks), and logs the counts. The index files
//! (JSON, Parquet, annotations) are hashed into the key; the images by the hash in each row.
use crate::data::penumbra::{self, PenumbraParams};
use crate::data::sources::{AokvqaSource, CulturalvqaSource, RealSources, ScienceqaSource, Sources};
use crate::data::{hf_features, item_schema, items_to_record_batch};
use crate::engine::{InputSpec, Stage, StageContext};
use crate::store::ArtifactKind;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetParams {
    /// `penumbra` (default), or one or more of `aokvqa`, `scienceqa`, `culturalvqa`.
    pub source: Sources,
    /// The generator's params (seed, size, splits, difficulty ladder, held-out combinations…).
    #[serde(flatten)]
    pub penumbra: PenumbraParams,
    /// Items per Parquet record batch (and per progress step).
    pub chunk: usize,
    /// Paths and options of each real dataset listed in `source`.
    pub aokvqa: Option<AokvqaSource>,
    pub scienceqa: Option<ScienceqaSource>,
    pub culturalvqa: Option<CulturalvqaSource>,
}

impl Default for DatasetParams {
    fn default() -> Self {
        Self {
            source: Sources::default(),
            penumbra: PenumbraParams { n_items: 2000, ..PenumbraParams::default() },
            chunk: 500,
            aokvqa: None,
            scienceqa: None,
            culturalvqa: None,
        }
    }
}

impl DatasetParams {
    /// The real datasets to load; None for the embedded benchmark.
    pub fn real(&self) -> Option<RealSources> {
        (!self.source.is_penumbra()).then(|| RealSources {
            sources: self.source.0.clone(),
            aokvqa: self.aokvqa.clone(),
            scienceqa: self.scienceqa.clone(),
            culturalvqa: self.culturalvqa.clone(),
        })
    }
}

/// Bump when the real-data loaders change what they produce from the same files.
const LOADER_VERSION: &str = "1";

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
        match self.params.real() {
            None => vec!["items".into(), "sheet".into()],
            Some(_) => vec!["items".into(), "sheet".into(), "load_report".into()],
        }
    }
    fn params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).expect("params serialize");
        let obj = v.as_object_mut().expect("params are a table");
        if self.params.real().is_none() {
            // The embedded benchmark's key is its generator's params alone (as before sources existed).
            for k in ["source", "aokvqa", "scienceqa", "culturalvqa"] {
                obj.remove(k);
            }
            v["generator_version"] = serde_json::json!(penumbra::GENERATOR_VERSION);
            return v;
        }
        serde_json::json!({
            "source": obj["source"],
            "aokvqa": obj["aokvqa"],
            "scienceqa": obj["scienceqa"],
            "culturalvqa": obj["culturalvqa"],
            "chunk": obj["chunk"],
            "loader_version": LOADER_VERSION,
        })
    }
    fn models(&self) -> Vec<PathBuf> {
        // An unreadable configuration yields no files here; `run` reports it.
        self.params.real().and_then(|r| r.index_files().ok()).unwrap_or_default()
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        match self.params.real() {
            None => self.run_penumbra(ctx),
            Some(real) => self.run_real(ctx, &real),
        }
    }
}

impl DatasetStage {
    fn run_real(&self, ctx: &StageContext, real: &RealSources) -> anyhow::Result<()> {
        let loaded = real.load()?;
        for s in &loaded.summaries {
            tracing::info!(source = %s.source, items = s.items, by_split = ?s.by_split, notes = ?s.report.notes, "dataset loaded");
            if !s.report.skipped.is_empty() {
                let first = &s.report.skipped[0];
                tracing::warn!(source = %s.source, skipped = s.report.skipped.len(), first = %first.reason,
                    "records skipped (every one is listed in the load_report artifact)");
            }
        }
        anyhow::ensure!(
            !loaded.items.is_empty(),
            "dataset: no items loaded from {} (skipped: {})",
            real.sources.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            loaded.summaries.iter().map(|s| s.report.skipped.len()).sum::<usize>()
        );
        let chunk = self.params.chunk.max(1);
        let batches = loaded.items.chunks(chunk).map(items_to_record_batch).collect::<Result<Vec<_>, _>>()?;
        ctx.write_table("items", item_schema(), &batches, Some(&hf_features()))?;
        let sheet = crate::data::sheet::contact_sheet_by_split(&loaded.items, &Default::default())?;
        let mut png = Vec::new();
        sheet.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        ctx.write_bytes("sheet", ArtifactKind::Png, &png)?;
        let report = serde_json::json!({"items": loaded.items.len(), "sources": loaded.summaries});
        ctx.write_bytes("load_report", ArtifactKind::Json, &serde_json::to_vec_pretty(&report)?)?;
        Ok(())
    }

    fn run_penumbra(&self, ctx: &StageContext) -> anyhow::Result<()> {
        for (name, set) in [
            ("aokvqa", self.params.aokvqa.is_some()),
            ("scienceqa", self.params.scienceqa.is_some()),
            ("culturalvqa", self.params.culturalvqa.is_some()),
        ] {
            anyhow::ensure!(!set, "dataset: [params.{name}] is set but `source` is penumbra (add source = \"{name}\" to load it)");
        }
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
