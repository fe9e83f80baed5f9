//! Does a model use its image? `eval` answers every question twice per variant: with the question's own
//! image features and with those of another item of the same split (a fixed derangement, [`partners`]),
//! both greedy. The per-item answer correctness of both (and whether each chain is well-formed, i.e. an
//! answer can be read after its last answer marker) is the `image_swap` table; the report gives accuracy
//! with own minus with swapped image per split and question kind, with a paired bootstrap interval over
//! items. A model that answers from the question alone loses nothing when the image is swapped.
use super::eval::{answer_correct, EvalChain};
use crate::confidence::parser::Parser;
use crate::data::Item;
use crate::metrics::accuracy::well_formed;
use crate::metrics::bootstrap::{paired_interval, resample_indices, BootstrapParams, Interval};
use crate::metrics::MetricsParams;
use arrow::array::{ArrayRef, AsArray, BooleanBuilder, Float64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// For items listed by split (in eval's order), the index of the item whose image each one gets: the next
/// item of the same split, the last one taking the split's first. No item keeps its own image when its
/// split has at least two items; a split of one item keeps it (nothing to swap with).
pub fn partners(splits: &[&str]) -> Vec<usize> {
    let mut by_split: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in splits.iter().enumerate() {
        by_split.entry(s).or_default().push(i);
    }
    let mut out = vec![0; splits.len()];
    for list in by_split.values() {
        for (k, &i) in list.iter().enumerate() {
            out[i] = list[(k + 1) % list.len()];
        }
    }
    out
}

/// The question kind an item is reported under: Penumbra's `meta.question_kind`, else its source.
pub fn question_kind(item: &Item) -> String {
    item.meta.get("question_kind").and_then(|v| v.as_str()).map(String::from).unwrap_or_else(|| item.source.clone())
}

/// One chain's answer correctness (as eval scores it, statements stripped by the parser) and whether it
/// is well-formed: an answer can be read after its last answer marker.
pub fn score_chain(item: &Item, text: &str, parser: &Parser, metrics: &MetricsParams) -> (f64, bool) {
    let parsed = parser.parse(text);
    let sentences: Vec<&str> = parsed.pairs.iter().map(|p| p.sentence.as_str()).collect();
    (answer_correct(item, &sentences, metrics), well_formed(&sentences, &metrics.accuracy))
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("variant", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("question_kind", DataType::Utf8, false),
        // Whose image features the swapped run saw.
        Field::new("swapped_from", DataType::Utf8, false),
        Field::new("own_correct", DataType::Float64, false),
        Field::new("swapped_correct", DataType::Float64, false),
        Field::new("own_well_formed", DataType::Boolean, false),
        Field::new("swapped_well_formed", DataType::Boolean, false),
    ]))
}

/// The image-swap pass gave one swapped chain and one partner for every chain with its own image.
pub fn check_pass(own: &[EvalChain], swapped: &[EvalChain], swapped_from: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        own.len() == swapped.len() && own.len() == swapped_from.len(),
        "image swap: {} chains with own images, {} with swapped ones, {} partners",
        own.len(),
        swapped.len(),
        swapped_from.len()
    );
    Ok(())
}

/// The `image_swap` table from the chains with own images and with swapped ones (`swapped[i]` answers
/// the same item and variant as `own[i]`, with the image of `swapped_from[i]`).
pub fn table(
    items: &[Item],
    own: &[EvalChain],
    swapped: &[EvalChain],
    swapped_from: &[String],
    parser: &Parser,
    metrics: &MetricsParams,
) -> anyhow::Result<RecordBatch> {
    check_pass(own, swapped, swapped_from)?;
    let by_id: HashMap<&str, &Item> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    let (mut v, mut sp, mut id, mut kind, mut from) =
        (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let (mut oc, mut sc, mut ow, mut sw) = (Float64Builder::new(), Float64Builder::new(), BooleanBuilder::new(), BooleanBuilder::new());
    for (n, (o, s)) in own.iter().zip(swapped).enumerate() {
        anyhow::ensure!(
            o.item_id == s.item_id && o.variant == s.variant,
            "image swap chain {n}: own ({}, {}) and swapped ({}, {}) differ",
            o.variant,
            o.item_id,
            s.variant,
            s.item_id
        );
        let item = by_id
            .get(o.item_id.as_str())
            .ok_or_else(|| anyhow::anyhow!("image swap chain {n}: item {} is not in the dataset", o.item_id))?;
        let (a, wa) = score_chain(item, &o.text, parser, metrics);
        let (b, wb) = score_chain(item, &s.text, parser, metrics);
        v.append_value(&o.variant);
        sp.append_value(&item.split);
        id.append_value(&item.id);
        kind.append_value(question_kind(item));
        from.append_value(&swapped_from[n]);
        oc.append_value(a);
        sc.append_value(b);
        ow.append_value(wa);
        sw.append_value(wb);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(v.finish()),
        Arc::new(sp.finish()),
        Arc::new(id.finish()),
        Arc::new(kind.finish()),
        Arc::new(from.finish()),
        Arc::new(oc.finish()),
        Arc::new(sc.finish()),
        Arc::new(ow.finish()),
        Arc::new(sw.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), cols)?)
}

/// One (variant, split, kind) cell of the report's image-swap table; kind `all` pools every kind.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapCell {
    pub items: usize,
    pub own: f64,
    pub swapped: f64,
    /// own − swapped, and its paired bootstrap interval over items.
    pub difference: f64,
    pub interval: Option<Interval>,
    /// Share of own-image chains that are well-formed.
    pub well_formed: f64,
}

/// Aggregates an `image_swap` table by (variant, split, kind), kind `all` included.
pub fn summarize(t: &RecordBatch, p: &BootstrapParams) -> anyhow::Result<BTreeMap<(String, String, String), SwapCell>> {
    let col = |n: &str| t.column_by_name(n).cloned().ok_or_else(|| anyhow::anyhow!("image_swap table has no column `{n}`"));
    let s = |n: &str| -> anyhow::Result<Vec<String>> {
        let c = col(n)?;
        let c = c.as_string_opt::<i32>().ok_or_else(|| anyhow::anyhow!("image_swap column `{n}` is not a string column"))?;
        Ok(c.iter().map(|x| x.unwrap_or_default().to_string()).collect())
    };
    let f = |n: &str| -> anyhow::Result<Vec<f64>> {
        let c = col(n)?;
        let c = c.as_primitive_opt::<Float64Type>().ok_or_else(|| anyhow::anyhow!("image_swap column `{n}` is not Float64"))?;
        Ok(c.values().to_vec())
    };
    let (variant, split, kind) = (s("variant")?, s("split")?, s("question_kind")?);
    let (own, swapped) = (f("own_correct")?, f("swapped_correct")?);
    let wf = col("own_well_formed")?;
    let wf = wf.as_boolean_opt().ok_or_else(|| anyhow::anyhow!("image_swap column `own_well_formed` is not Boolean"))?.clone();
    let mut groups: BTreeMap<(String, String, String), Vec<usize>> = BTreeMap::new();
    for i in 0..t.num_rows() {
        groups.entry((variant[i].clone(), split[i].clone(), kind[i].clone())).or_default().push(i);
        groups.entry((variant[i].clone(), split[i].clone(), "all".into())).or_default().push(i);
    }
    let mut out = BTreeMap::new();
    for (key, rows) in groups {
        let n = rows.len();
        let mean = |v: &[f64], ix: &[usize]| ix.iter().map(|&k| v[rows[k]]).sum::<f64>() / ix.len() as f64;
        let all: Vec<usize> = (0..n).collect();
        let (a, b) = (mean(&own, &all), mean(&swapped, &all));
        let draws = resample_indices(n, p.resamples, p.seed)?;
        let interval = paired_interval(&draws, p.level, |ix| Some(mean(&own, ix)), |ix| Some(mean(&swapped, ix)))?;
        let well_formed = rows.iter().filter(|&&r| wf.value(r)).count() as f64 / n as f64;
        out.insert(key, SwapCell { items: n, own: a, swapped: b, difference: a - b, interval, well_formed });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partners_rotate_within_each_split() {
        // val: items 0, 2, 3; test: 1, 4; ood: 5 alone.
        let p = partners(&["val", "test", "val", "val", "test", "ood"]);
        assert_eq!(p, vec![2, 4, 3, 0, 1, 5]);
    }

    fn parser() -> Parser {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/stages/statements.toml");
        let pool = crate::confidence::statements::StatementPool::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        Parser::new(&pool, Default::default())
    }

    fn chain(item: &Item, variant: &str, right: Option<bool>) -> EvalChain {
        let text = match right {
            Some(true) => format!("I see the scene. I am fairly sure. So, the answer is {}.", item.answer.as_deref().unwrap()),
            Some(false) => "I see the scene. So, the answer is zzzz.".to_string(),
            None => "blue hex blue hex beyond beyond".to_string(),
        };
        EvalChain { variant: variant.into(), item_id: item.id.clone(), text }
    }

    /// Four items, answered right/wrong by hand; every figure below is counted from these lists.
    #[test]
    fn table_and_summary_count_right_answers_and_well_formed_chains() {
        let items =
            crate::data::penumbra::generate(&crate::data::penumbra::PenumbraParams { seed: 3, n_items: 40, ..Default::default() }).unwrap();
        let val: Vec<&Item> = items.iter().filter(|i| i.split == "train").take(4).collect();
        // own: right, right, wrong, not well-formed; swapped: wrong, right, wrong, wrong
        let own_r = [Some(true), Some(true), Some(false), None];
        let sw_r = [Some(false), Some(true), Some(false), Some(false)];
        let own: Vec<EvalChain> = val.iter().zip(own_r).map(|(it, r)| chain(it, "vanilla", r)).collect();
        let swapped: Vec<EvalChain> = val.iter().zip(sw_r).map(|(it, r)| chain(it, "vanilla", r)).collect();
        let from: Vec<String> = (0..4).map(|i| val[(i + 1) % 4].id.clone()).collect();
        let t = table(&items, &own, &swapped, &from, &parser(), &MetricsParams::default()).unwrap();
        assert_eq!(t.num_rows(), 4);
        let oc = t.column_by_name("own_correct").unwrap().as_primitive::<Float64Type>().values().to_vec();
        let sc = t.column_by_name("swapped_correct").unwrap().as_primitive::<Float64Type>().values().to_vec();
        assert_eq!(oc, vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(sc, vec![0.0, 1.0, 0.0, 0.0]);
        let wf = t.column_by_name("own_well_formed").unwrap().as_boolean().clone();
        assert_eq!((0..4).map(|i| wf.value(i)).collect::<Vec<_>>(), vec![true, true, true, false]);
        assert_eq!(t.column_by_name("swapped_from").unwrap().as_string::<i32>().value(3), val[0].id);

        let cells = summarize(&t, &BootstrapParams::default()).unwrap();
        let all = &cells[&("vanilla".to_string(), "train".to_string(), "all".to_string())];
        assert_eq!(all.items, 4);
        assert!((all.own - 0.5).abs() < 1e-12 && (all.swapped - 0.25).abs() < 1e-12 && (all.difference - 0.25).abs() < 1e-12);
        assert!((all.well_formed - 0.75).abs() < 1e-12);
        // Per-item differences are 1, 0, 0, 0: a resample's mean difference is k/4 for k ∈ 0..=4.
        let i = all.interval.unwrap();
        assert!(i.lo >= 0.0 && i.hi <= 1.0 && i.lo <= 0.25 && i.hi >= 0.25, "{i:?}");
        // Each kind's cell counts only its items.
        let kinds: usize = cells.iter().filter(|(k, _)| k.2 != "all").map(|(_, c)| c.items).sum();
        assert_eq!(kinds, 4);
        // Every item answered right with its own image and wrong with the swapped one: a certain +1.
        let own: Vec<EvalChain> = val.iter().map(|it| chain(it, "sft", Some(true))).collect();
        let swapped: Vec<EvalChain> = val.iter().map(|it| chain(it, "sft", Some(false))).collect();
        let t = table(&items, &own, &swapped, &from, &parser(), &MetricsParams::default()).unwrap();
        let c = &summarize(&t, &BootstrapParams::default()).unwrap()[&("sft".to_string(), "train".to_string(), "all".to_string())];
        assert_eq!((c.own, c.swapped, c.difference), (1.0, 0.0, 1.0));
        let i = c.interval.unwrap();
        assert_eq!((i.lo, i.hi), (1.0, 1.0));
        // Mismatched lists are refused.
        assert!(table(&items, &own, &swapped[..3], &from[..3], &parser(), &MetricsParams::default()).is_err());
    }
}
