//! `features`: CLIP image features of every item, computed once (the vision tower is frozen) and cached:
//! the projected embedding (for CLIPScore) and the penultimate-layer patch features (what a LLaVA-style
//! projector consumes). Runs on ONNX Runtime in the `mmb` process.
use crate::data::items_from_record_batch;
use crate::encoders::clip::Clip;
use crate::encoders::runtime::{ExecutionProvider, SessionOptions};
use crate::engine::{InputSpec, Stage, StageContext};
use arrow::array::{ArrayRef, Float32Builder, ListBuilder, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesParams {
    /// An exported CLIP folder (`image.onnx`, `text.onnx`, `tokenizer.json`, `clip_config.json`, as
    /// `scripts/export_onnx.py clip` writes), whose files' hashes are part of the cache key; unset: the
    /// demo CLIP the pipeline trains on the embedded benchmark.
    pub clip: Option<PathBuf>,
    /// Images per ONNX Runtime call.
    pub batch: usize,
    /// Merge each `merge × merge` block of neighbouring patches into one token by concatenating their
    /// features (space-to-depth, as Qwen2-VL's merger does), so a fine-grained patch grid costs the decoder
    /// no more tokens. Unset, it follows the CLIP ([`FeaturesParams::merge`]): 1 for a CLIP folder (a
    /// Hugging Face LLaVA expects its CLIP's own patches), 2 for the demo CLIP (8-pixel patches, a 12 × 12
    /// grid). The key always holds the value used, so leaving it unset keys as setting it.
    pub merge: Option<usize>,
    /// Where the CLIP image tower runs (as `score`'s `execution_provider`: a GPU provider that cannot
    /// register is an error, never a silent CPU run). Left out of the key when it is the CPU, so
    /// artifacts made before this parameter existed stay valid.
    #[serde(skip_serializing_if = "ExecutionProvider::is_cpu")]
    pub execution_provider: ExecutionProvider,
}

/// The demo CLIP's merge: its 12 × 12 grid of 8-pixel patches in 2 × 2 blocks, 36 tokens per image.
pub const DEMO_CLIP_MERGE: usize = 2;

impl FeaturesParams {
    /// The merge used: as set, or derived from the CLIP (1 for a CLIP folder, [`DEMO_CLIP_MERGE`] for
    /// the demo CLIP).
    pub fn merge(&self) -> usize {
        self.merge.unwrap_or(if self.clip.is_some() { 1 } else { DEMO_CLIP_MERGE })
    }

    /// The params as keyed: `merge` resolved.
    pub fn keyed(&self) -> serde_json::Value {
        serde_json::to_value(Self { merge: Some(self.merge()), ..self.clone() }).expect("params serialize")
    }
}

impl Default for FeaturesParams {
    fn default() -> Self {
        Self { clip: None, batch: 64, merge: None, execution_provider: ExecutionProvider::Cpu }
    }
}

/// `[g·g, dim]` patch features (row-major grid) → `[(g/k)·(g/k), k·k·dim]`: token (i, j) is the
/// concatenation of patches (k·i + a, k·j + b) for a, then b, in 0..k.
pub fn merge_patches(patches: &[f32], dim: usize, k: usize) -> anyhow::Result<Vec<f32>> {
    anyhow::ensure!(
        k >= 1 && dim >= 1 && patches.len() % dim == 0,
        "merge_patches: {} floats are not whole {dim}-wide patches",
        patches.len()
    );
    let n = patches.len() / dim;
    let g = (n as f64).sqrt().round() as usize;
    anyhow::ensure!(g * g == n, "merge_patches: {n} patches do not form a square grid");
    anyhow::ensure!(g % k == 0, "merge_patches: a {g} × {g} patch grid cannot be merged in {k} × {k} blocks");
    let mut out = Vec::with_capacity(patches.len());
    for i in 0..g / k {
        for j in 0..g / k {
            for a in 0..k {
                for b in 0..k {
                    let p = (k * i + a) * g + (k * j + b);
                    out.extend_from_slice(&patches[p * dim..(p + 1) * dim]);
                }
            }
        }
    }
    Ok(out)
}

pub struct FeaturesStage {
    pub params: FeaturesParams,
    pub session: SessionOptions,
}

impl FeaturesStage {
    /// The session options with the params' execution provider (no CPU fallback).
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions { provider: self.params.execution_provider.clone(), allow_cpu_fallback: false, ..self.session.clone() }
    }
}

/// One row per item: `patches` is `[n_patches × dim]` row-major.
pub fn features_schema() -> SchemaRef {
    let floats = || DataType::List(Arc::new(Field::new("item", DataType::Float32, true)));
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("n_patches", DataType::UInt32, false),
        Field::new("dim", DataType::UInt32, false),
        Field::new("patches", floats(), false),
        Field::new("embedding", floats(), false),
    ]))
}

impl Stage for FeaturesStage {
    fn name(&self) -> &str {
        "features"
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        let mut v = vec![InputSpec::new("items", "dataset", "items")];
        v.extend(super::models::model_input(&self.params.clip, "clip", super::models::DEMO_CLIP));
        v
    }
    fn outputs(&self) -> Vec<String> {
        vec!["features".into()]
    }
    fn params(&self) -> serde_json::Value {
        self.params.keyed()
    }
    fn models(&self) -> Vec<PathBuf> {
        super::models::model_files(&self.params.clip)
    }
    fn device(&self) -> String {
        format!("ort-{}/f32", self.params.execution_provider.name())
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let clip = Clip::load(&super::models::resolve(ctx, &self.params.clip, "clip")?, &self.session_options())?;
        let table = ctx.input_table("items")?;
        let items = items_from_record_batch(&table.concat()?)?;
        let bar = ctx.progress(items.len() as u64, "CLIP image features");
        let (mut ids, mut n_p, mut dims) = (StringBuilder::new(), UInt32Builder::new(), UInt32Builder::new());
        let (mut patches, mut embeds) = (ListBuilder::new(Float32Builder::new()), ListBuilder::new(Float32Builder::new()));
        for chunk in items.chunks(self.params.batch.max(1)) {
            use rayon::prelude::*;
            let pixels: Vec<Vec<f32>> = chunk
                .par_iter()
                .map(|it| {
                    // Embedded bytes, or a referenced file checked against the hash the dataset stage recorded.
                    let bytes = crate::data::image_bytes(it)?;
                    let img = crate::encoders::clip::decode_image_bytes(&bytes, &it.id)?;
                    Ok(clip.image.preprocess().pixel_values(&img))
                })
                .collect::<anyhow::Result<_>>()?;
            let f = clip.image.encode_pixels(&pixels.concat(), chunk.len())?;
            let k = self.params.merge().max(1);
            for (i, it) in chunk.iter().enumerate() {
                let merged = merge_patches(f.patch_features(i), f.hidden, k)
                    .map_err(|e| anyhow::anyhow!("item {}: features.merge = {k}: {e}", it.id))?;
                ids.append_value(&it.id);
                n_p.append_value(((f.tokens - 1) / (k * k)) as u32);
                dims.append_value((f.hidden * k * k) as u32);
                patches.values().append_slice(&merged);
                patches.append(true);
                let d = f.embeddings.dim;
                embeds.values().append_slice(&f.embeddings.data[i * d..(i + 1) * d]);
                embeds.append(true);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(n_p.finish()),
            Arc::new(dims.finish()),
            Arc::new(patches.finish()),
            Arc::new(embeds.finish()),
        ];
        let batch = RecordBatch::try_new(features_schema(), cols)?;
        ctx.write_table("features", features_schema(), &[batch], None)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{merge_patches, FeaturesParams};

    #[test]
    fn merge_unset_follows_the_clip_and_keys_as_the_value_used() {
        let demo = FeaturesParams::default();
        assert_eq!(demo.merge(), 2);
        // The demo run's features params as keyed while stages/features.toml set `merge = 2` by hand.
        assert_eq!(demo.keyed(), serde_json::json!({"clip": null, "batch": 64, "merge": 2}));
        let folder = FeaturesParams { clip: Some("models/clip".into()), ..Default::default() };
        assert_eq!(folder.merge(), 1);
        assert_eq!(folder.keyed()["merge"], 1);
        let set = FeaturesParams { clip: Some("models/clip".into()), merge: Some(3), ..Default::default() };
        assert_eq!(set.merge(), 3);
    }

    #[test]
    fn merges_two_by_two_blocks_in_reading_order() {
        // A 4 × 4 grid of 1-wide patches numbered 0..16 row by row.
        let grid: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let merged = merge_patches(&grid, 1, 2).unwrap();
        let expect = [0., 1., 4., 5., 2., 3., 6., 7., 8., 9., 12., 13., 10., 11., 14., 15.];
        assert_eq!(merged, expect);
        // 2-wide patches keep each patch's features together.
        let wide: Vec<f32> = (0..8).map(|v| v as f32).collect(); // 2 × 2 grid, dim 2
        assert_eq!(merge_patches(&wide, 2, 2).unwrap(), wide);
        assert_eq!(merge_patches(&grid, 1, 1).unwrap(), grid);
    }

    #[test]
    fn refuses_grids_that_do_not_divide() {
        let e = merge_patches(&[0.0; 9], 1, 2).unwrap_err().to_string();
        assert!(e.contains("3 × 3") && e.contains("2 × 2"), "{e}");
        let e = merge_patches(&[0.0; 12], 1, 2).unwrap_err().to_string();
        assert!(e.contains("square"), "{e}");
    }
}
