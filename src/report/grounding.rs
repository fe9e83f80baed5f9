//! Do a policy's chains name what their image holds? On the embedded benchmark every perception sentence of
//! eval's chains ("There is a large teal solid hexagon at the top left.") is read for the attribute values it
//! names, and each value is checked against the objects of the item's scene, and against the scene of the next
//! item of the same split (the image swap's partner, [`crate::stages::image_swap::partners`]): the share a
//! sentence that ignored its image would reach. The answer-level image swap says whether the image changes the
//! answer; this says whether it changes what the chain describes, which is where a decoder's grounding starts.
use crate::data::penumbra::{Attribute, Object, Scene};
use crate::data::Item;
use arrow::array::{Array, AsArray, RecordBatch};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// The attributes checked, in the order of [`Grounding`]'s arrays (then "all four" at index 4).
const CHECKED: [Attribute; 4] = [Attribute::Color, Attribute::Shape, Attribute::Texture, Attribute::Size];

/// One policy's perception sentences on one split. Index k < 4: [`CHECKED`]`[k]`; 4: all four named and one
/// object having all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grounding {
    /// Perception sentences that describe something present (not "There is no …").
    pub sentences: usize,
    /// Sentences naming exactly one value of the attribute.
    pub named: [usize; 5],
    /// … whose value some object of the item's own scene has.
    pub own: [usize; 5],
    /// … whose value some object of the partner item's scene has.
    pub other: [usize; 5],
}

/// The value of each checked attribute a sentence names, when it names exactly one; None for a sentence that
/// denies ("no", "not").
fn named_values(sentence: &str) -> Option<[Option<&'static str>; 4]> {
    let lower = sentence.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    if words.iter().any(|w| *w == "no" || *w == "not") {
        return None;
    }
    Some(CHECKED.map(|a| {
        let found: Vec<&'static str> = a.values().into_iter().filter(|v| words.contains(v)).collect();
        (found.len() == 1).then(|| found[0])
    }))
}

/// Whether some object of `objects` has every value named (the unnamed ones match anything).
fn has(objects: &[Object], values: &[Option<&str>; 4]) -> bool {
    objects.iter().any(|o| CHECKED.iter().zip(values).all(|(a, v)| v.is_none_or(|v| a.value_of(o) == v)))
}

/// By (variant, split), from eval's `sentences` (columns variant, item_id, sentence, level); None when no item
/// has a Penumbra scene. Items pair with the next item of their split in `items`' order.
pub fn chain_grounding(items: &[Item], sentences: &RecordBatch) -> anyhow::Result<Option<BTreeMap<(String, String), Grounding>>> {
    if !items.iter().any(|it| it.meta.contains_key("scene")) {
        return Ok(None);
    }
    let splits: Vec<&str> = items.iter().map(|it| it.split.as_str()).collect();
    let partner = crate::stages::image_swap::partners(&splits);
    let index: HashMap<&str, usize> = items.iter().enumerate().map(|(i, it)| (it.id.as_str(), i)).collect();
    let mut scenes: HashMap<usize, Scene> = HashMap::new();
    let mut scene_of = |i: usize| -> anyhow::Result<Vec<Object>> {
        if let Some(s) = scenes.get(&i) {
            return Ok(s.objects.clone());
        }
        let it = &items[i];
        let s = it.meta.get("scene").ok_or_else(|| anyhow::anyhow!("item {}: no meta.scene", it.id))?;
        let s: Scene = serde_json::from_value(s.clone()).map_err(|e| anyhow::anyhow!("item {}: meta.scene: {e}", it.id))?;
        let objects = s.objects.clone();
        scenes.insert(i, s);
        Ok(objects)
    };
    let col = |n: &str| sentences.column_by_name(n).ok_or_else(|| anyhow::anyhow!("eval sentences have no column `{n}`"));
    let text =
        |n: &str| col(n)?.as_string_opt::<i32>().ok_or_else(|| anyhow::anyhow!("eval sentences: column `{n}` is not a string column"));
    let (variant, item, sentence, level) = (text("variant")?, text("item_id")?, text("sentence")?, text("level")?);
    let mut out: BTreeMap<(String, String), Grounding> = BTreeMap::new();
    for r in (0..sentences.num_rows()).filter(|&r| level.is_valid(r) && level.value(r) == "perception") {
        let Some(values) = named_values(sentence.value(r)) else { continue };
        let i = *index
            .get(item.value(r))
            .ok_or_else(|| anyhow::anyhow!("eval sentences row {r}: item {} is not in the dataset", item.value(r)))?;
        let (own, other) = (scene_of(i)?, scene_of(partner[i])?);
        let g = out.entry((variant.value(r).to_string(), items[i].split.clone())).or_default();
        g.sentences += 1;
        for (k, v) in values.iter().enumerate() {
            if v.is_some() {
                let mut one = [None; 4];
                one[k] = *v;
                g.named[k] += 1;
                g.own[k] += usize::from(has(&own, &one));
                g.other[k] += usize::from(has(&other, &one));
            }
        }
        if values.iter().all(Option::is_some) {
            g.named[4] += 1;
            g.own[4] += usize::from(has(&own, &values));
            g.other[4] += usize::from(has(&other, &values));
        }
    }
    Ok(Some(out))
}

pub const GROUNDING_NOTE: &str = "Each policy's perception sentences that describe something present, read for the colour, \
shape, texture and size they name (one value each): the share whose value some object of the question's own image has, \
against the share for the image of the next item of the split (the image swap's partner: what a sentence that ignored \
its image would reach). All four: a sentence naming all four, and one object having them all. A policy that reads \
its image names what is there far more often with its own image than with another.";

/// One row per split and variant (in the orders given): "own / other (sentences naming it)" per attribute.
pub fn grounding_markdown(cells: &BTreeMap<(String, String), Grounding>, variants: &[String], splits: &[String]) -> String {
    let mut s =
        String::from("| split | variant | perception sentences | colour: own / other image | shape | texture | size | all four |\n");
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for split in splits {
        for v in variants {
            let Some(g) = cells.get(&(v.clone(), split.clone())) else { continue };
            let _ = write!(s, "| {split} | {v} | {} |", g.sentences);
            for k in 0..5 {
                let n = g.named[k];
                if n == 0 {
                    s.push_str(" – |");
                } else {
                    let _ = write!(s, " {:.3} / {:.3} ({n}) |", g.own[k] as f64 / n as f64, g.other[k] as f64 / n as f64);
                }
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::penumbra::{Color, Shape, Size, Texture};
    use crate::report::vision::tests::{item, object};
    use arrow::array::{ArrayRef, StringArray};
    use std::sync::Arc;

    #[test]
    fn perception_sentences_are_checked_against_their_own_scene_and_the_partners() {
        let large_checkered = |mut o: Object| {
            o.size = Size::Large;
            o.texture = Texture::Checkered;
            o
        };
        // val: v1 holds a small solid red circle; v2 a large checkered blue square. v1's partner is v2 and
        // v2's is v1. The train item is never paired with a val one.
        let items = vec![
            item("t1", "train", vec![object(Color::Red, Shape::Square, 8.0, 8.0, 1.0)]),
            item("v1", "val", vec![object(Color::Red, Shape::Circle, 8.0, 8.0, 1.0)]),
            item("v2", "val", vec![large_checkered(object(Color::Blue, Shape::Square, 8.0, 8.0, 1.0))]),
        ];
        let s = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        let rows = [
            // All four right for v1; against v2 only nothing matches.
            ("p", "v1", "There is a small red solid circle at the top left.", "perception"),
            // Colour right, shape wrong (v1 has no square), texture and size unnamed; against v2: the square.
            ("p", "v1", "There is a red square.", "perception"),
            // A denial and a reasoning sentence are not read.
            ("p", "v1", "There is no blue circle in the image.", "perception"),
            ("p", "v1", "The red circle is small.", "reasoning"),
            // Two colours named: colour not counted; the shape is v2's.
            ("p", "v2", "There is a red or blue square.", "perception"),
            ("q", "v2", "There is a large blue checkered square.", "perception"),
        ];
        let batch = RecordBatch::try_from_iter([
            ("variant", s(rows.iter().map(|r| r.0).collect())),
            ("item_id", s(rows.iter().map(|r| r.1).collect())),
            ("sentence", s(rows.iter().map(|r| r.2).collect())),
            ("level", s(rows.iter().map(|r| r.3).collect())),
        ])
        .unwrap();
        let g = chain_grounding(&items, &batch).unwrap().unwrap();
        let p = &g[&("p".to_string(), "val".to_string())];
        // colour, shape, texture, size, all four
        assert_eq!(p.sentences, 3);
        assert_eq!(p.named, [2, 3, 1, 1, 1]);
        assert_eq!(p.own, [2, 2, 1, 1, 1], "colour twice (v1 red), shape: circle (v1) and square (v2), not square in v1");
        assert_eq!(p.other, [0, 1, 0, 0, 0], "against v2: no red, a square once (sentence 2), not solid, not small");
        let q = &g[&("q".to_string(), "val".to_string())];
        assert_eq!((q.named, q.own, q.other), ([1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]));
        let md = grounding_markdown(&g, &["p".into(), "q".into()], &["val".into()]);
        assert!(
            md.contains(
                "| val | p | 3 | 1.000 / 0.000 (2) | 0.667 / 0.333 (3) | 1.000 / 0.000 (1) | 1.000 / 0.000 (1) | 1.000 / 0.000 (1) |"
            ),
            "{md}"
        );
        // No scenes: nothing to check against.
        let mut plain = items.clone();
        plain.iter_mut().for_each(|it| {
            it.meta.remove("scene");
        });
        assert_eq!(chain_grounding(&plain, &batch).unwrap(), None);
        // A sentence of an item the dataset lacks is named.
        let stray = RecordBatch::try_from_iter([
            ("variant", s(vec!["p"])),
            ("item_id", s(vec!["x9"])),
            ("sentence", s(vec!["There is a red circle."])),
            ("level", s(vec!["perception"])),
        ])
        .unwrap();
        assert_eq!(chain_grounding(&items, &stray).unwrap_err().to_string(), "eval sentences row 0: item x9 is not in the dataset");
    }
}
