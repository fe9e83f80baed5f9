//! `demo_clip`: the small CLIP of the embedded benchmark, trained contrastively on its image–caption pairs
//! (with one-wrong-attribute hard negatives) by `scripts/train_clip.py` (the venv's torch), exported to ONNX
//! by the same script as any real CLIP, and then used only through ONNX Runtime. No CLIP weights can be
//! had on these machines; this makes CLIPScore measure real image–text agreement on the benchmark.
use crate::data::penumbra::Scene;
use crate::data::{items_from_record_batch, Item};
use crate::engine::{InputSpec, Stage, StageContext};
use crate::store::ArtifactKind;
use arrow::array::{ArrayRef, BinaryBuilder, BooleanBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder};
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
    /// Channels of the first convolution of a convolutional stem that replaces CLIP's linear patch
    /// embedding (the ViT paper's hybrid; 0: CLIP's own). A 2-layer ViT trained from scratch on 1,400 images
    /// never learns shape from 8-pixel patches: a linear probe reads shape from its tokens at chance.
    pub stem_channels: u32,
    /// Weight of a dense auxiliary loss beside CLIP's: each patch's owner object's colour, shape, texture
    /// and size (`Scene::patch_owners`), predicted from the penultimate layer (the features the decoder
    /// gets); 0: CLIP's loss alone. The scene graphs are the benchmark's region labels, as detection labels
    /// are for region-aware CLIPs.
    pub attribute_weight: f64,
    /// Share of the training images whose background is recoloured at random at each step (the script's
    /// `recolour_backgrounds`), so that the tokens describe objects on any background; 0: none.
    pub background_jitter: f64,
    /// BPE vocabulary trained on the captions (CLIP's own cannot be downloaded here).
    pub vocab_size: u32,
    pub threads: u32,
    /// Python with torch and transformers (scripts/setup.sh makes it).
    pub python: PathBuf,
    /// The training script; its content (and the export script's) is part of the cache key.
    pub script: PathBuf,
}

impl DemoClipParams {
    /// The training script's arguments for these params (besides `--pairs` and `--out`).
    pub fn script_args(&self) -> Vec<String> {
        let p = self;
        [
            ("--seed", p.seed.to_string()),
            ("--epochs", p.epochs.to_string()),
            ("--batch-size", p.batch_size.to_string()),
            ("--lr", p.lr.to_string()),
            ("--patch-size", p.patch_size.to_string()),
            ("--width", p.width.to_string()),
            ("--layers", p.layers.to_string()),
            ("--projection-dim", p.projection_dim.to_string()),
            ("--vocab-size", p.vocab_size.to_string()),
            ("--threads", p.threads.to_string()),
            ("--stem-channels", p.stem_channels.to_string()),
            ("--attribute-weight", p.attribute_weight.to_string()),
            ("--background-jitter", p.background_jitter.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }
}

impl Default for DemoClipParams {
    fn default() -> Self {
        Self {
            seed: 0,
            epochs: 24,
            batch_size: 32,
            lr: 2e-3,
            // 8-pixel patches (a 12 × 12 grid), so that an object spans several tokens.
            patch_size: 8,
            width: 64,
            layers: 2,
            projection_dim: 64,
            stem_channels: 16,
            attribute_weight: 4.0,
            background_jitter: 0.0,
            vocab_size: 800,
            threads: 2,
            python: PathBuf::from(".venv/bin/python"),
            script: PathBuf::from("scripts/train_clip.py"),
        }
    }
}

/// The training script's input: one row per (image, true caption, hard negative), the PNG only on each
/// image's first row; images outside the `train` split are held out (retrieval accuracy is measured on them).
/// `attributes`, on each image's first row where the item has a Penumbra scene: per `patch`-pixel patch
/// (row-major), the colour, shape, texture and size of the object owning it ([`Scene::patch_owners`]) as
/// indices into their vocabularies, −1 four times for background.
pub fn pairs_batch(items: &[Item], patch: u32) -> anyhow::Result<RecordBatch> {
    let (mut id, mut img, mut cap, mut neg, mut held) =
        (Int64Builder::new(), BinaryBuilder::new(), StringBuilder::new(), StringBuilder::new(), BooleanBuilder::new());
    let mut attrs = ListBuilder::new(Int32Builder::new());
    for (i, it) in items.iter().enumerate() {
        let bytes = crate::data::image_bytes(it)?;
        let bytes = bytes.as_ref();
        anyhow::ensure!(it.captions.len() == it.hard_negatives.len(), "item {}: captions and hard negatives are not aligned", it.id);
        for (k, (c, n)) in it.captions.iter().zip(&it.hard_negatives).enumerate() {
            id.append_value(i as i64);
            if k == 0 {
                img.append_value(bytes);
                match it.meta.get("scene") {
                    Some(v) => {
                        let scene: Scene =
                            serde_json::from_value(v.clone()).map_err(|e| anyhow::anyhow!("item {}: meta.scene: {e}", it.id))?;
                        let owners = scene.patch_owners(patch).map_err(|e| anyhow::anyhow!("item {}: {e}", it.id))?;
                        for o in owners {
                            let a = o.map(|k| {
                                let o = &scene.objects[k];
                                [o.color as i32, o.shape as i32, o.texture as i32, o.size as i32]
                            });
                            attrs.values().append_slice(&a.unwrap_or([-1; 4]));
                        }
                        attrs.append(true);
                    }
                    None => attrs.append(false),
                }
            } else {
                img.append_null();
                attrs.append(false);
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
        Field::new("attributes", DataType::List(Arc::new(Field::new("item", DataType::Int32, true))), true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(img.finish()),
        Arc::new(cap.finish()),
        Arc::new(neg.finish()),
        Arc::new(held.finish()),
        Arc::new(attrs.finish()),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

pub struct DemoClipStage {
    pub params: DemoClipParams,
}

impl Stage for DemoClipStage {
    fn name(&self) -> &str {
        "demo_clip"
    }
    /// 2: the pairs carry each patch's object attributes (the stem and the dense loss are params).
    fn code_version(&self) -> &str {
        "2"
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
        let batch = pairs_batch(&items, p.patch_size)?;
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
            .args(p.script_args())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::penumbra::{Color, Object, Shape, Size, Style, Texture};
    use crate::data::ImageData;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int32Type;

    #[test]
    fn pairs_carry_each_patchs_object_attributes_on_the_images_first_row() {
        // 8 × 8, one large purple striped square of half-side 3.4 at (4, 4): it covers 9 pixels of each
        // 4-pixel patch (Scene::patch_owners' own test), so every patch is the object's.
        let object = Object {
            id: 0,
            shape: Shape::Square,
            color: Color::Purple,
            size: Size::Large,
            texture: Texture::Striped,
            x: 4.0,
            y: 4.0,
            radius: 4.0,
            visible_fraction: 1.0,
        };
        let scene = Scene {
            width: 8,
            height: 8,
            style: Style::Plain,
            level: 0,
            objects: vec![object],
            noise_sigma: 0.0,
            blur_sigma: 0.0,
            contrast: 1.0,
            noise_seed: 0,
        };
        let mut it = Item::new("a", "penumbra", "train", "q");
        it.image = Some(ImageData { bytes: Some(vec![1, 2, 3]), path: None });
        it.captions = vec!["one".into(), "two".into()];
        it.hard_negatives = vec!["uno".into(), "dos".into()];
        it.meta.insert("scene".into(), serde_json::to_value(&scene).unwrap());
        let mut plain = it.clone();
        plain.id = "b".into();
        plain.meta.clear();
        let b = pairs_batch(&[it, plain], 4).unwrap();
        assert_eq!(b.num_rows(), 4);
        let attrs = b.column_by_name("attributes").unwrap().as_list::<i32>();
        // Purple = 6, square = 1, striped = 1, large = 1 (the vocabularies' orders), for each of 4 patches.
        let first: Vec<i32> = attrs.value(0).as_primitive::<Int32Type>().values().to_vec();
        assert_eq!(first, [6, 1, 1, 1].repeat(4));
        // Only on an image's first row; an item without a scene has none.
        assert!(attrs.is_null(1) && attrs.is_null(2) && attrs.is_null(3));
        let e = pairs_batch(&b_items_with_bad_patch(), 3).unwrap_err().to_string();
        assert!(e.contains("item a: a 8×8 image does not split into 3-pixel patches"), "{e}");

        fn b_items_with_bad_patch() -> Vec<Item> {
            let mut it = Item::new("a", "penumbra", "train", "q");
            it.image = Some(ImageData { bytes: Some(vec![1]), path: None });
            (it.captions, it.hard_negatives) = (vec!["one".into()], vec!["uno".into()]);
            let scene = serde_json::json!({"width": 8, "height": 8, "style": "plain", "level": 0, "objects": [],
                "noise_sigma": 0.0, "blur_sigma": 0.0, "contrast": 1.0, "noise_seed": 0});
            it.meta.insert("scene".into(), scene);
            vec![it]
        }
    }
}
