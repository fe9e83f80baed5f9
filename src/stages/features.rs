//! `features`: CLIP image features of every item, computed once (the vision tower is frozen) and cached:
//! the projected embedding (for CLIPScore) and the penultimate-layer patch features (what a LLaVA-style
//! projector consumes). Runs on ONNX Runtime in the `mmb` process.
use crate::data::items_from_record_batch;
use crate::encoders::clip::Clip;
use crate::encoders::runtime::SessionOptions;
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
}

impl Default for FeaturesParams {
    fn default() -> Self {
        Self { clip: None, batch: 64 }
    }
}

pub struct FeaturesStage {
    pub params: FeaturesParams,
    pub session: SessionOptions,
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
        serde_json::to_value(&self.params).expect("params serialize")
    }
    fn models(&self) -> Vec<PathBuf> {
        super::models::model_files(&self.params.clip)
    }
    fn device(&self) -> String {
        format!("ort-{:?}/f32", self.session.provider).to_lowercase()
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let clip = Clip::load(&super::models::resolve(ctx, &self.params.clip, "clip")?, &self.session)?;
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
                    let bytes =
                        it.image.as_ref().and_then(|i| i.bytes.as_deref()).ok_or_else(|| {
                            anyhow::anyhow!("item {}: no image bytes (features need the images inside the dataset)", it.id)
                        })?;
                    let img = crate::encoders::clip::decode_image_bytes(bytes, &it.id)?;
                    Ok(clip.image.preprocess().pixel_values(&img))
                })
                .collect::<anyhow::Result<_>>()?;
            let f = clip.image.encode_pixels(&pixels.concat(), chunk.len())?;
            for (i, it) in chunk.iter().enumerate() {
                ids.append_value(&it.id);
                n_p.append_value((f.tokens - 1) as u32);
                dims.append_value(f.hidden as u32);
                patches.values().append_slice(f.patch_features(i));
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
