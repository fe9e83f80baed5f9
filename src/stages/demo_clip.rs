//! `demo_clip`: the small CLIP of the embedded benchmark, trained contrastively on its image–caption pairs
//! (with one-wrong-attribute hard negatives) by `scripts/train_clip.py` (the venv's torch), exported to ONNX
//! by the same script as any real CLIP, and then used only through ONNX Runtime. No CLIP weights can be
//! had on these machines; this makes CLIPScore measure real image–text agreement on the benchmark.
use crate::data::{items_from_record_batch, Item};
use crate::engine::{InputSpec, Stage, StageContext};
use crate::store::ArtifactKind;
use arrow::array::{ArrayRef, BinaryBuilder, BooleanBuilder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoClipParams {
    pub seed: u64,
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub patch_size: u32,
    /// Hidden size of both towers.
    pub width: u32,
    /// Encoder layers of each tower.
    pub layers: u32,
    pub projection_dim: u32,
    /// BPE vocabulary trained on the captions (CLIP's own cannot be downloaded here).
    pub vocab_size: u32,
    pub threads: u32,
    /// Python with torch and transformers (scripts/setup.sh makes it).
    pub python: PathBuf,
    /// The training script; its content (and the export script's) is part of the cache key.
    pub script: PathBuf,
}

impl Default for DemoClipParams {
    fn default() -> Self {
        Self {
            seed: 0,
            epochs: 12,
            batch_size: 32,
            lr: 1e-3,
            // 8-pixel patches (a 12 × 12 grid): with 16-pixel ones the features hold colour but next to no
            // shape (a probe on them reads shape at chance), and the decoder cannot find "the circle".
            patch_size: 8,
            width: 64,
            layers: 2,
            projection_dim: 64,
            vocab_size: 800,
            threads: 2,
            python: PathBuf::from(".venv/bin/python"),
            script: PathBuf::from("scripts/train_clip.py"),
        }
    }
}

/// The training script's input: one row per (image, true caption, hard negative), the PNG only on each
/// image's first row; images outside the `train` split are held out (retrieval accuracy is measured on them).
pub fn pairs_batch(items: &[Item]) -> anyhow::Result<RecordBatch> {
    let (mut id, mut img, mut cap, mut neg, mut held) =
        (Int64Builder::new(), BinaryBuilder::new(), StringBuilder::new(), StringBuilder::new(), BooleanBuilder::new());
    for (i, it) in items.iter().enumerate() {
        let bytes = crate::data::image_bytes(it)?;
        let bytes = bytes.as_ref();
        anyhow::ensure!(it.captions.len() == it.hard_negatives.len(), "item {}: captions and hard negatives are not aligned", it.id);
        for (k, (c, n)) in it.captions.iter().zip(&it.hard_negatives).enumerate() {
            id.append_value(i as i64);
            if k == 0 {
                img.append_value(bytes);
            } else {
                img.append_null();
            }
            cap.append_value(c);
            neg.append_value(n);
            held.append_value(it.split != "train");
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::Int64, false),
        Field::new("image", DataType::Binary, true),
        Field::new("caption", DataType::Utf8, false),
        Field::new("negative", DataType::Utf8, false),
        Field::new("heldout", DataType::Boolean, false),
    ]));
    let cols: Vec<ArrayRef> =
        vec![Arc::new(id.finish()), Arc::new(img.finish()), Arc::new(cap.finish()), Arc::new(neg.finish()), Arc::new(held.finish())];
    Ok(RecordBatch::try_new(schema, cols)?)
}

pub struct DemoClipStage {
    pub params: DemoClipParams,
}

impl Stage for DemoClipStage {
    fn name(&self) -> &str {
        "demo_clip"
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::new("items", "dataset", "items")]
    }
    fn outputs(&self) -> Vec<String> {
        vec!["clip".into(), "report".into()]
    }
    fn params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).expect("params serialize");
        // Where the interpreter lives does not change the model.
        v.as_object_mut().expect("object").remove("python");
        v
    }
    fn models(&self) -> Vec<PathBuf> {
        let dir = self.params.script.parent().map(PathBuf::from).unwrap_or_default();
        vec![self.params.script.clone(), dir.join("export_onnx.py")]
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let p = &self.params;
        let items = items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
        let batch = pairs_batch(&items)?;
        anyhow::ensure!(batch.num_rows() > 0, "the dataset has no captions to train a CLIP on");
        let work = tempfile::tempdir()?;
        let pairs = work.path().join("pairs.parquet");
        let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&pairs)?, batch.schema(), None)?;
        w.write(&batch)?;
        w.close()?;
        let out = work.path().join("clip");
        let bar = ctx.progress(1, "training the demo CLIP");
        let o = Command::new(&p.python)
            .arg(&p.script)
            .arg("--pairs")
            .arg(&pairs)
            .arg("--out")
            .arg(&out)
            .args(["--seed", &p.seed.to_string(), "--epochs", &p.epochs.to_string(), "--batch-size", &p.batch_size.to_string()])
            .args(["--lr", &p.lr.to_string(), "--patch-size", &p.patch_size.to_string(), "--width", &p.width.to_string()])
            .args(["--layers", &p.layers.to_string(), "--projection-dim", &p.projection_dim.to_string()])
            .args(["--vocab-size", &p.vocab_size.to_string(), "--threads", &p.threads.to_string()])
            .output()
            .map_err(|e| anyhow::anyhow!("could not run {} (run scripts/setup.sh first): {e}", p.python.display()))?;
        bar.finish_and_clear();
        anyhow::ensure!(
            o.status.success(),
            "{} {} failed ({}):\n{}",
            p.python.display(),
            p.script.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        let report: serde_json::Value = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| anyhow::anyhow!("{} printed no JSON report: {stdout}", p.script.display()))?;
        // The folder Clip::load reads (the HF folder it was exported from stays out of the artifact).
        let _ = std::fs::remove_dir_all(out.join("hf"));
        ctx.write_bytes("report", ArtifactKind::Json, &serde_json::to_vec_pretty(&report)?)?;
        ctx.write_dir("clip", &out)?;
        Ok(())
    }
}
