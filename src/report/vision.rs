//! What the image tower hands the decoder, on the embedded benchmark: can an object's colour, shape,
//! texture and size be read from the feature token its centre falls in? For every object of a Penumbra
//! scene that is at least half visible, the token of the `features` grid under its centre; a linear probe
//! ([`crate::metrics::probe`]) per attribute, fitted on the train split's objects and scored on each other
//! split's, beside the majority baseline. What the probe cannot read, the decoder cannot ground a sentence
//! in: it can only name it from the question and its priors, which the image-swap table then shows.
use crate::data::penumbra::{Color, Object, Scene, Shape, Size, Texture};
use crate::data::Item;
use crate::metrics::probe::{majority_share, RidgeProbe};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// Ridge strength of the probes: standardized features, so one value serves any tower.
pub const LAMBDA: f64 = 1.0;
/// Objects hidden more than this are left out (their token may show the object on top).
pub const MIN_VISIBLE: f32 = 0.5;

pub const VISION_NOTE: &str = "For each object at least half visible, the `features` token its centre falls in; a \
    linear probe (ridge classifier on the standardized token) per attribute, fitted on the train split's objects, \
    reads the attribute on each other split's objects. Majority: the accuracy of always naming the train split's \
    most common value. A probe near its majority means the token does not carry the attribute, so the decoder \
    cannot see it and answers questions about it from the question alone.";

/// One attribute's probe: its accuracy and the majority baseline on each held-out split.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeProbe {
    pub attribute: &'static str,
    pub classes: usize,
    pub train_objects: usize,
    /// split → (objects, probe accuracy, majority baseline)
    pub splits: BTreeMap<String, (usize, f64, f64)>,
}

/// The attributes probed.
pub const ATTRIBUTES: [&str; 4] = ["colour", "shape", "texture", "size"];

/// An object's class under `attribute` (its index in the attribute's vocabulary), and the number of classes.
fn class_of(attribute: &str, o: &Object) -> (usize, usize) {
    match attribute {
        "colour" => (o.color as usize, Color::ALL.len()),
        "shape" => (o.shape as usize, Shape::ALL.len()),
        "texture" => (o.texture as usize, Texture::ALL.len()),
        _ => (o.size as usize, Size::ALL.len()),
    }
}

/// The probes, or None when no item has a Penumbra scene (real datasets: nothing to probe against).
pub fn object_probes(items: &[Item], features: &RecordBatch) -> anyhow::Result<Option<Vec<AttributeProbe>>> {
    let scenes: Vec<(&Item, Scene)> = items
        .iter()
        .filter_map(|it| it.meta.get("scene").map(|s| (it, s)))
        .map(|(it, s)| {
            serde_json::from_value::<Scene>(s.clone()).map(|sc| (it, sc)).map_err(|e| anyhow::anyhow!("item {}: meta.scene: {e}", it.id))
        })
        .collect::<anyhow::Result<_>>()?;
    if scenes.is_empty() {
        return Ok(None);
    }
    let col = |n: &str| features.column_by_name(n).ok_or_else(|| anyhow::anyhow!("features have no column `{n}`"));
    let wrong = |n: &str, t: &str| anyhow::anyhow!("features column `{n}` is not {t}");
    let ids = col("item_id")?.as_string_opt::<i32>().ok_or_else(|| wrong("item_id", "a string column"))?;
    let n_p = col("n_patches")?.as_primitive_opt::<UInt32Type>().ok_or_else(|| wrong("n_patches", "UInt32"))?;
    let dims = col("dim")?.as_primitive_opt::<UInt32Type>().ok_or_else(|| wrong("dim", "UInt32"))?;
    let patches = col("patches")?.as_list_opt::<i32>().ok_or_else(|| wrong("patches", "a list column"))?;
    let row_of: HashMap<&str, usize> = (0..ids.len()).map(|i| (ids.value(i), i)).collect();
    // Per split: (token, object) pairs.
    let mut by_split: BTreeMap<String, (Vec<Vec<f32>>, Vec<&Object>)> = BTreeMap::new();
    for (it, scene) in &scenes {
        let r = *row_of.get(it.id.as_str()).ok_or_else(|| anyhow::anyhow!("features have no row for item {}", it.id))?;
        let (n, d) = (n_p.value(r) as usize, dims.value(r) as usize);
        let side = (n as f64).sqrt().round() as usize;
        anyhow::ensure!(side * side == n, "features of item {}: {n} patch tokens are not a square grid", it.id);
        let values = patches.value(r);
        let values = values.as_primitive_opt::<Float32Type>().ok_or_else(|| wrong("patches", "a list of Float32"))?.values();
        anyhow::ensure!(values.len() == n * d, "features of item {}: {} values for {n} × {d} patches", it.id, values.len());
        let entry = by_split.entry(it.split.clone()).or_default();
        for o in scene.objects.iter().filter(|o| o.visible_fraction >= MIN_VISIBLE) {
            let cell = |v: f32, extent: u32| ((v / extent as f32 * side as f32).floor().max(0.0) as usize).min(side - 1);
            let t = cell(o.y, scene.height) * side + cell(o.x, scene.width);
            entry.0.push(values[t * d..(t + 1) * d].to_vec());
            entry.1.push(o);
        }
    }
    let (train_x, train_objects) =
        by_split.remove("train").ok_or_else(|| anyhow::anyhow!("no train-split objects to fit the probes on"))?;
    anyhow::ensure!(!train_x.is_empty(), "no train-split object is at least {MIN_VISIBLE} visible");
    let mut out = Vec::new();
    for attribute in ATTRIBUTES {
        let classes = class_of(attribute, train_objects[0]).1;
        let train_y: Vec<usize> = train_objects.iter().map(|o| class_of(attribute, o).0).collect();
        let probe = RidgeProbe::fit(&train_x, &train_y, classes, LAMBDA)?;
        let mut splits = BTreeMap::new();
        for (split, (x, objects)) in by_split.iter().filter(|(_, (x, _))| !x.is_empty()) {
            let y: Vec<usize> = objects.iter().map(|o| class_of(attribute, o).0).collect();
            splits.insert(split.clone(), (x.len(), probe.accuracy(x, &y)?, majority_share(&train_y, &y)?));
        }
        out.push(AttributeProbe { attribute, classes, train_objects: train_x.len(), splits });
    }
    Ok(Some(out))
}

/// | attribute | values | <split>: probe / majority (objects) | …
pub fn probes_markdown(probes: &[AttributeProbe]) -> String {
    let mut splits: Vec<&String> = probes.iter().flat_map(|p| p.splits.keys()).collect();
    splits.sort_by_key(|s| (["val", "test", "ood"].iter().position(|o| o == s).unwrap_or(9), s.to_string()));
    splits.dedup();
    let mut s = String::from("| attribute | values | train objects |");
    for sp in &splits {
        let _ = write!(s, " {sp}: probe / majority (objects) |");
    }
    s.push_str(&format!("\n|---|---|---|{}\n", "---|".repeat(splits.len())));
    for p in probes {
        let _ = write!(s, "| {} | {} | {} |", p.attribute, p.classes, p.train_objects);
        for sp in &splits {
            match p.splits.get(*sp) {
                Some((n, acc, maj)) => {
                    let _ = write!(s, " {acc:.3} / {maj:.3} ({n}) |");
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float32Builder, ListBuilder, StringArray, UInt32Array};
    use std::sync::Arc;

    pub(crate) fn object(color: Color, shape: Shape, x: f32, y: f32, visible_fraction: f32) -> Object {
        Object { id: 0, shape, color, size: Size::Small, texture: Texture::Solid, x, y, radius: 4.0, visible_fraction }
    }

    /// An item of `split` whose meta holds a 32 × 32 scene of `objects`.
    pub(crate) fn item(id: &str, split: &str, objects: Vec<Object>) -> Item {
        let scene = Scene {
            width: 32,
            height: 32,
            style: crate::data::penumbra::Style::Plain,
            level: 0,
            objects,
            noise_sigma: 0.0,
            blur_sigma: 0.0,
            contrast: 1.0,
            noise_seed: 0,
        };
        let mut meta = serde_json::Map::new();
        meta.insert("scene".into(), serde_json::to_value(scene).unwrap());
        Item {
            id: id.into(),
            source: "penumbra".into(),
            split: split.into(),
            question: String::new(),
            image: None,
            choices: vec![],
            correct_choice: None,
            direct_answers: vec![],
            answer: None,
            chain: Default::default(),
            difficulty: None,
            captions: vec![],
            hard_negatives: vec![],
            meta,
        }
    }

    /// A 2 × 2 grid of 2-dim tokens (16-pixel cells of a 32-pixel image), zero except where given.
    fn features(rows: &[(&str, Vec<(usize, [f32; 2])>)]) -> RecordBatch {
        let mut patches = ListBuilder::new(Float32Builder::new());
        for (_, set) in rows {
            let mut v = [0f32; 8];
            for (t, x) in set {
                v[t * 2..t * 2 + 2].copy_from_slice(x);
            }
            patches.values().append_slice(&v);
            patches.append(true);
        }
        let ids: ArrayRef = Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>()));
        let n: ArrayRef = Arc::new(UInt32Array::from(vec![4; rows.len()]));
        let d: ArrayRef = Arc::new(UInt32Array::from(vec![2; rows.len()]));
        RecordBatch::try_from_iter([("item_id", ids), ("n_patches", n), ("dim", d), ("patches", Arc::new(patches.finish()) as ArrayRef)])
            .unwrap()
    }

    #[test]
    fn the_probe_reads_the_token_under_each_objects_centre() {
        let (red, blue) = ([1.0, 0.0], [0.0, 1.0]);
        // Token t = row · 2 + column, row from y: (8, 24) is row 1, column 0, t = 2. The colour is written
        // only there, so a token taken with x and y swapped reads zeros and the colour probe fails.
        let items = vec![
            item("t1", "train", vec![object(Color::Red, Shape::Circle, 8.0, 24.0, 1.0)]),
            item("t2", "train", vec![object(Color::Blue, Shape::Square, 24.0, 8.0, 1.0)]),
            item("t3", "train", vec![object(Color::Red, Shape::Square, 24.0, 24.0, 1.0)]),
            item("t4", "train", vec![object(Color::Blue, Shape::Circle, 8.0, 8.0, 1.0)]),
            // Off the diagonal, so that swapped coordinates read another token.
            item("v1", "val", vec![object(Color::Blue, Shape::Triangle, 24.0, 8.0, 1.0)]),
            // The hexagon is mostly hidden: left out, whatever its token says.
            item(
                "v2",
                "val",
                vec![object(Color::Red, Shape::Circle, 8.0, 24.0, 1.0), object(Color::Green, Shape::Hexagon, 24.0, 8.0, 0.3)],
            ),
        ];
        let f = features(&[
            ("t1", vec![(2, red)]),
            ("t2", vec![(1, blue)]),
            ("t3", vec![(3, red)]),
            ("t4", vec![(0, blue)]),
            ("v1", vec![(1, blue)]),
            ("v2", vec![(2, red), (1, [5.0, 5.0])]),
        ]);
        let probes = object_probes(&items, &f).unwrap().unwrap();
        let colour = &probes[0];
        assert_eq!((colour.attribute, colour.classes, colour.train_objects), ("colour", 8, 4));
        // Both val objects read right; the majority (red and blue tie in training; the lower class, red,
        // wins) is right on v2 only.
        assert_eq!(colour.splits["val"], (2, 1.0, 0.5));
        // Every object is small and solid: the probes say so, as does the majority.
        assert_eq!(probes[2].splits["val"], (2, 1.0, 1.0));
        assert_eq!(probes[3].splits["val"], (2, 1.0, 1.0));
        let md = probes_markdown(&probes);
        assert!(md.contains("| colour | 8 | 4 | 1.000 / 0.500 (2) |"), "{md}");
        assert!(md.starts_with("| attribute | values | train objects | val: probe / majority (objects) |"), "{md}");
    }

    #[test]
    fn no_scene_no_probe_and_a_missing_row_is_named() {
        let mut plain = item("a", "train", vec![]);
        plain.meta.clear();
        assert_eq!(object_probes(&[plain], &features(&[])).unwrap(), None);
        let items = vec![item("t1", "train", vec![object(Color::Red, Shape::Circle, 8.0, 24.0, 1.0)])];
        let e = object_probes(&items, &features(&[("other", vec![])])).unwrap_err().to_string();
        assert!(e.contains("features have no row for item t1"), "{e}");
        // A column of the wrong type is named, not a panic.
        let f = features(&[("t1", vec![])]);
        let dims: ArrayRef = Arc::new(StringArray::from(vec!["2"]));
        let bad =
            RecordBatch::try_from_iter([("item_id", f.column(0).clone()), ("n_patches", f.column(1).clone()), ("dim", dims)]).unwrap();
        let e = object_probes(&items, &bad).unwrap_err().to_string();
        assert!(e.contains("features column `dim` is not UInt32"), "{e}");
    }
}
