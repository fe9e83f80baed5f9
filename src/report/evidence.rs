//! The report's two "is there anything to calibrate?" tables: whether the model uses its image (eval's
//! `image_swap` table, summarized by [`crate::stages::image_swap::summarize`]), and whether the internal
//! signals tell wrong sentences from right ones (AUROC of each signal and of the fused U_Final on bin's
//! `levels`, which carries the scored columns, the judge's `correct` and `u_final`). And, for the comparison
//! of methods, whether a policy writes statements at all (eval's `sentences`).
use crate::metrics::accuracy::AccuracyParams;
use crate::stages::image_swap::SwapCell;
use arrow::array::{Array, AsArray, BooleanArray, Float64Array, StringArray};
use arrow::datatypes::{Float64Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Signal names in the order of [`SignalAurocs::values`].
pub const SIGNALS: [&str; 5] = ["LNLP", "MTE", "TokenSAR", "1 − CLIPScore", "U_Final (fused)"];

/// One split's signal AUROCs: each signal's (growing with uncertainty) AUROC for telling wrong sentences
/// from right ones; None where a class is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalAurocs {
    pub split: String,
    pub judged: usize,
    pub right: usize,
    pub values: [Option<f64>; 5],
}

/// Per split of bin's `levels` table (sentences the judge could not label are left out), then `all`. Each split
/// is followed by its sentences of each role: with `accuracy` (eval's answer reading), perception, reasoning and
/// the answer sentence of each chain ([`crate::report::roles::roles`]); without it, the two chain levels.
pub fn signal_aurocs(levels: &RecordBatch, accuracy: Option<&AccuracyParams>) -> anyhow::Result<Vec<SignalAurocs>> {
    let col = |n: &str| levels.column_by_name(n).cloned().ok_or_else(|| anyhow::anyhow!("bin levels have no column `{n}`"));
    let f = |n: &str| -> anyhow::Result<Vec<f64>> {
        let c = col(n)?;
        Ok(c.as_primitive_opt::<Float64Type>().ok_or_else(|| anyhow::anyhow!("bin levels column `{n}` is not Float64"))?.values().to_vec())
    };
    let text = |n: &str| -> anyhow::Result<StringArray> {
        Ok(col(n)?.as_string_opt::<i32>().ok_or_else(|| anyhow::anyhow!("bin levels column `{n}` is not a string column"))?.clone())
    };
    let (lnlp, mte, sar, clip, u) = (f("lnlp")?, f("mte")?, f("tokensar")?, f("clipscore")?, f("u_final")?);
    let correct = col("correct")?;
    let correct = correct.as_boolean_opt().ok_or_else(|| anyhow::anyhow!("bin levels column `correct` is not Boolean"))?.clone();
    let split = text("split")?;
    // Each sentence's chain level, where score recorded it (`chain_level`, score code version 3).
    let chain_level = match levels.column_by_name("chain_level") {
        Some(_) => Some(text("chain_level")?),
        None => None,
    };
    let n = levels.num_rows();
    let level_of = |i: usize| chain_level.as_ref().filter(|c| c.is_valid(i)).map(|c| c.value(i));
    let roles: Vec<Option<&str>> = match accuracy {
        Some(acc) => {
            let (item, body) = (text("item_id")?, text("text")?);
            let u32s = |n: &str| -> anyhow::Result<Vec<u32>> {
                Ok(col(n)?
                    .as_primitive_opt::<UInt32Type>()
                    .ok_or_else(|| anyhow::anyhow!("bin levels column `{n}` is not UInt32"))?
                    .values()
                    .to_vec())
            };
            let (sample, sentence) = (u32s("sample")?, u32s("sentence")?);
            let chain: Vec<(&str, u32)> = (0..n).map(|i| (item.value(i), sample[i])).collect();
            let texts: Vec<&str> = (0..n).map(|i| body.value(i)).collect();
            let lv: Vec<Option<&str>> = (0..n).map(level_of).collect();
            crate::report::roles::roles(&chain, &sentence, &texts, &lv, acc)
                .map_err(|e| anyhow::anyhow!("bin levels: {e}"))?
                .into_iter()
                .map(|r| r.map(crate::report::roles::Role::name))
                .collect()
        }
        None => (0..n).map(level_of).collect(),
    };
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut by_role: BTreeMap<(String, &str), Vec<usize>> = BTreeMap::new();
    for i in (0..n).filter(|&i| correct.is_valid(i)) {
        groups.entry(split.value(i).to_string()).or_default().push(i);
        if let Some(r) = roles[i] {
            by_role.entry((split.value(i).to_string(), r)).or_default().push(i);
        }
    }
    let all: Vec<usize> = groups.values().flatten().copied().collect();
    let mut out = Vec::new();
    let mut one = |name: &str, ix: &[usize]| -> anyhow::Result<()> {
        let rows: Vec<[f64; 4]> = ix.iter().map(|&i| [lnlp[i], mte[i], sar[i], clip[i]]).collect();
        let labels: Vec<bool> = ix.iter().map(|&i| correct.value(i)).collect();
        let four = crate::stages::score::signal_aurocs(&rows, &labels)?;
        let wrong: Vec<bool> = labels.iter().map(|c| !c).collect();
        let fused =
            if four[0].is_some() { Some(crate::metrics::auroc(&ix.iter().map(|&i| u[i]).collect::<Vec<_>>(), &wrong)?) } else { None };
        out.push(SignalAurocs {
            split: name.to_string(),
            judged: ix.len(),
            right: labels.iter().filter(|&&c| c).count(),
            values: [four[0], four[1], four[2], four[3], fused],
        });
        Ok(())
    };
    for (s, ix) in &groups {
        one(s, ix)?;
        for role in ["perception", "reasoning", "answer"] {
            if let Some(ix) = by_role.get(&(s.clone(), role)) {
                one(&format!("{s} · {role}"), ix)?;
            }
        }
    }
    if groups.len() > 1 {
        one("all", &all)?;
    }
    Ok(out)
}

pub const SIGNAL_NOTE: &str = "AUROC of each internal signal (oriented to grow with uncertainty) and of the fused \
U_Final for telling the judge's wrong sentences from right ones, on the chains the `generate` stage wrote (the \
sentences the levels and the SFT data come from), and on each split's sentences of each role: the answer sentence of \
each chain (the last one an answer can be read from), and the others by the level of the reference sentence each is \
nearest, as eval assigns levels. The roles differ in how often they are right, so a signal that only tells the roles \
apart scores well on a whole split without knowing anything about a sentence. 0.5: no information.";

pub fn signals_markdown(rows: &[SignalAurocs]) -> String {
    let mut s = String::from("| split | sentences judged | right |");
    for n in SIGNALS {
        let _ = write!(s, " {n} |");
    }
    s.push_str("\n|---|---|---|");
    s.push_str(&"---|".repeat(SIGNALS.len()));
    s.push('\n');
    for r in rows {
        let _ = write!(s, "| {} | {} | {} |", r.split, r.judged, r.right);
        for v in r.values {
            let _ = write!(s, " {} |", v.map_or("–".to_string(), |v| format!("{v:.3}")));
        }
        s.push('\n');
    }
    s
}

pub const SWAP_NOTE: &str = "Answer accuracy with the question's own image and with another item's image of the same \
split (greedy both times), and own − swapped with its 95 % paired bootstrap interval over items. A model that \
answers from the question alone loses nothing. Well-formed: share of own-image chains whose answer can be read \
after the last answer marker.";

fn swap_cell(c: &SwapCell) -> String {
    let iv = c.interval.map_or(String::new(), |i| format!(" [{:.3}, {:.3}]", i.lo, i.hi));
    format!("{:.3} / {:.3} / {:+.3}{iv}", c.own, c.swapped, c.difference)
}

/// Per variant and split (kind `all`): items, own / swapped / difference, well-formed share.
pub fn swap_overview_markdown(cells: &BTreeMap<(String, String, String), SwapCell>, variants: &[String], splits: &[String]) -> String {
    let mut s = String::from("| split | variant | items | accuracy own / swapped / own − swapped | well-formed |\n|---|---|---|---|---|\n");
    for sp in splits {
        for v in variants {
            if let Some(c) = cells.get(&(v.clone(), sp.clone(), "all".into())) {
                let _ = writeln!(s, "| {sp} | {v} | {} | {} | {:.3} |", c.items, swap_cell(c), c.well_formed);
            }
        }
    }
    s
}

/// One variant by question kind (rows) and split (columns): "own / swapped / difference [interval] (n)".
pub fn swap_by_kind_markdown(cells: &BTreeMap<(String, String, String), SwapCell>, variant: &str, splits: &[String]) -> String {
    let kinds: BTreeSet<&str> = cells.keys().filter(|k| k.0 == variant && k.2 != "all").map(|k| k.2.as_str()).collect();
    let mut s = String::from("| question kind |");
    for sp in splits {
        let _ = write!(s, " {sp}: own / swapped / own − swapped (items) |");
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(splits.len()));
    s.push('\n');
    for k in kinds.into_iter().chain(["all"]) {
        let _ = write!(s, "| {k} |");
        for sp in splits {
            match cells.get(&(variant.to_string(), sp.clone(), k.to_string())) {
                Some(c) => {
                    let _ = write!(s, " {} ({}) |", swap_cell(c), c.items);
                }
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// How many of a variant's sentences on a split carry a statement, and what they say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatementCount {
    pub sentences: usize,
    /// Sentences with a statement (a parsed confidence).
    pub stated: usize,
    /// Sentences the judge holds right (all of them, stated or not).
    pub right: usize,
    /// The sum of the stated confidences.
    pub confidence_sum: f64,
}

/// Eval's `sentences` table as the report reads it: one type check of the columns, then rows.
pub struct EvalSentences<'a> {
    variant: &'a StringArray,
    split: &'a StringArray,
    item_id: &'a StringArray,
    confidence: &'a Float64Array,
    correct: &'a BooleanArray,
}

/// One sentence of eval's `sentences`: its confidence is None when it carries no statement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalSentence<'a> {
    pub variant: &'a str,
    pub split: &'a str,
    pub item_id: &'a str,
    pub confidence: Option<f64>,
    pub correct: bool,
}

impl<'a> EvalSentences<'a> {
    pub fn new(s: &'a RecordBatch) -> anyhow::Result<Self> {
        let col = |n: &str| s.column_by_name(n).ok_or_else(|| anyhow::anyhow!("eval sentences have no column `{n}`"));
        let wrong = |n: &str, t: &str| anyhow::anyhow!("eval sentences: column `{n}` is not {t}");
        let text = |n: &str| col(n)?.as_string_opt::<i32>().ok_or_else(|| wrong(n, "a string column"));
        Ok(EvalSentences {
            variant: text("variant")?,
            split: text("split")?,
            item_id: text("item_id")?,
            confidence: col("confidence")?.as_primitive_opt::<Float64Type>().ok_or_else(|| wrong("confidence", "a float64 column"))?,
            correct: col("correct")?.as_boolean_opt().ok_or_else(|| wrong("correct", "a boolean column"))?,
        })
    }

    pub fn rows(&self) -> impl Iterator<Item = EvalSentence<'a>> + '_ {
        (0..self.variant.len()).map(move |i| EvalSentence {
            variant: self.variant.value(i),
            split: self.split.value(i),
            item_id: self.item_id.value(i),
            confidence: self.confidence.is_valid(i).then(|| self.confidence.value(i)),
            correct: self.correct.value(i),
        })
    }
}

/// [`StatementCount`] by (variant, split), from eval's `sentences` table.
pub fn statement_counts(s: &RecordBatch) -> anyhow::Result<BTreeMap<(String, String), StatementCount>> {
    let mut out: BTreeMap<(String, String), StatementCount> = BTreeMap::new();
    for r in EvalSentences::new(s)?.rows() {
        let c = out.entry((r.variant.to_string(), r.split.to_string())).or_default();
        c.sentences += 1;
        c.right += usize::from(r.correct);
        if let Some(conf) = r.confidence {
            c.stated += 1;
            c.confidence_sum += conf;
        }
    }
    Ok(out)
}

/// Per (label, split): the sentences, the share carrying a statement, the mean stated confidence and the
/// share judged right. A policy that writes no statement gets eval's constant `missing_confidence` for every
/// sentence, whatever its training: MECE 0.5 and AUROC 0.5 in the tables say that, not calibration.
pub fn statements_markdown(rows: &[(String, String, StatementCount)]) -> String {
    let mut s = String::from(
        "| variant | split | sentences | with a statement | mean stated confidence | judged right |\n|---|---|---|---|---|---|\n",
    );
    for (label, split, c) in rows {
        let share = |k: usize| if c.sentences == 0 { "–".to_string() } else { format!("{:.3}", k as f64 / c.sentences as f64) };
        let mean = if c.stated == 0 { "–".to_string() } else { format!("{:.3}", c.confidence_sum / c.stated as f64) };
        let _ = writeln!(s, "| {label} | {split} | {} | {} | {mean} | {} |", c.sentences, share(c.stated), share(c.right));
    }
    s
}

/// A policy's stated confidence read as a signal, on one split: the sentences that carry a statement, how
/// many the judge holds right, and the AUROC of the stated confidence for telling right sentences from wrong
/// ones (None with one class).
#[derive(Debug, Clone, PartialEq)]
pub struct StatementAuroc {
    pub stated: usize,
    pub right: usize,
    pub auroc: Option<f64>,
}

/// [`StatementAuroc`] by (variant, split) from eval's `sentences` table, for the variants that state any.
pub fn statement_aurocs(s: &RecordBatch) -> anyhow::Result<BTreeMap<(String, String), StatementAuroc>> {
    let mut by: BTreeMap<(String, String), (Vec<f64>, Vec<bool>)> = BTreeMap::new();
    for r in EvalSentences::new(s)?.rows() {
        if let Some(conf) = r.confidence {
            let e = by.entry((r.variant.to_string(), r.split.to_string())).or_default();
            e.0.push(conf);
            e.1.push(r.correct);
        }
    }
    by.into_iter()
        .map(|(k, (c, r))| {
            let right = r.iter().filter(|&&x| x).count();
            let auroc = if right == 0 || right == r.len() { None } else { Some(crate::metrics::auroc::auroc(&c, &r)?) };
            Ok((k, StatementAuroc { stated: c.len(), right, auroc }))
        })
        .collect()
}

pub const STATEMENT_NOTE: &str = "AUROC of each policy's stated confidence for telling the judge's right sentences from \
wrong ones, over eval's sentences that carry a statement: the statements read as a signal, to set beside the internal \
signals' AUROCs. Unlike Table 1's answer-level AUROC, a chain cut off before its answer does not count against its \
last statement. 0.5: no information.";

/// One row per split and variant (in the orders given) that has statements; with `roles`, also the AUROC over
/// pairs of the same role ([`crate::report::roles::same_role_auroc`]).
pub fn statement_aurocs_markdown(
    cells: &BTreeMap<(String, String), StatementAuroc>,
    roles: Option<&crate::report::roles::RoleCells>,
    variants: &[String],
    splits: &[String],
) -> String {
    let mut s = String::from("| split | variant | sentences with a statement | judged right | statement AUROC |");
    s.push_str(if roles.is_some() { " AUROC, same-role pairs |\n|---|---|---|---|---|---|\n" } else { "\n|---|---|---|---|---|\n" });
    for split in splits {
        for v in variants {
            if let Some(c) = cells.get(&(v.clone(), split.clone())) {
                let auroc = c.auroc.map_or("–".to_string(), |a| format!("{a:.3}"));
                let _ = write!(s, "| {split} | {v} | {} | {:.3} | {auroc} |", c.stated, c.right as f64 / c.stated as f64);
                if let Some(r) = roles {
                    let same = crate::report::roles::same_role_auroc(r, v, split).map_or("–".to_string(), |a| format!("{a:.3}"));
                    let _ = write!(s, " {same} |");
                }
                s.push('\n');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray};
    use std::sync::Arc;

    /// Eval's sentences: variant `a` writes statements on 2 of its 3 val sentences (0.9 and 0.6; 2 right)
    /// and none on test; `b` writes none.
    fn sentences() -> RecordBatch {
        let s = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        RecordBatch::try_from_iter([
            ("variant", s(vec!["a", "a", "a", "a", "b"])),
            ("split", s(vec!["val", "val", "val", "test", "val"])),
            ("item_id", s(vec!["q1", "q1", "q2", "q3", "q1"])),
            ("confidence", Arc::new(Float64Array::from(vec![Some(0.9), None, Some(0.6), None, None])) as ArrayRef),
            ("correct", Arc::new(BooleanArray::from(vec![true, false, true, true, false])) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn statement_counts_and_their_table_are_the_hand_counted_ones() {
        let c = statement_counts(&sentences()).unwrap();
        let key = |v: &str, sp: &str| (v.to_string(), sp.to_string());
        assert_eq!(c[&key("a", "val")], StatementCount { sentences: 3, stated: 2, right: 2, confidence_sum: 0.9 + 0.6 });
        assert_eq!(c[&key("a", "test")], StatementCount { sentences: 1, stated: 0, right: 1, confidence_sum: 0.0 });
        assert_eq!(c[&key("b", "val")], StatementCount { sentences: 1, stated: 0, right: 0, confidence_sum: 0.0 });
        let rows: Vec<(String, String, StatementCount)> = c.into_iter().map(|((v, sp), c)| (v, sp, c)).collect();
        assert_eq!(
            statements_markdown(&rows),
            "| variant | split | sentences | with a statement | mean stated confidence | judged right |\n|---|---|---|---|---|---|\n\
             | a | test | 1 | 0.000 | – | 1.000 |\n\
             | a | val | 3 | 0.667 | 0.750 | 0.667 |\n\
             | b | val | 1 | 0.000 | – | 0.000 |\n"
        );
        // The stated responses of a split, by item: only sentences with a statement.
        let r = crate::stages::report::stated_responses(&sentences(), "val").unwrap();
        assert_eq!(r["a"]["q1"], [(true, 0.9)]);
        assert_eq!(r["a"]["q2"], [(true, 0.6)]);
        assert!(!r.contains_key("b"));
    }

    /// A table of another shape is named, column and type, not a panic.
    #[test]
    fn eval_sentences_of_the_wrong_shape_are_named() {
        let good = sentences();
        let mut cols: Vec<(&str, ArrayRef)> =
            good.schema_ref().fields().iter().map(|f| f.name().as_str()).zip(good.columns().iter().cloned()).collect();
        cols[3].1 = Arc::new(StringArray::from(vec!["0.9", "", "0.6", "", ""]));
        let batch = RecordBatch::try_from_iter(cols).unwrap();
        let err = statement_aurocs(&batch).unwrap_err().to_string();
        assert_eq!(err, "eval sentences: column `confidence` is not a float64 column");
        let without_ids = sentences().project(&[0, 1, 3, 4]).unwrap();
        assert_eq!(statement_counts(&without_ids).unwrap_err().to_string(), "eval sentences have no column `item_id`");
    }

    /// Stated confidences 0.9 (right), 0.6 (right), 0.6 (wrong), 0.3 (wrong) and one unstated wrong
    /// sentence: right above wrong in 3 of 4 pairs, the tie half → 3.5 / 4. One class → no AUROC.
    #[test]
    fn statement_aurocs_are_the_hand_counted_ones() {
        let s = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        let batch = RecordBatch::try_from_iter([
            ("variant", s(vec!["sft", "sft", "sft", "sft", "sft", "sft", "vanilla"])),
            ("split", s(vec!["val", "val", "val", "val", "val", "test", "val"])),
            ("item_id", s(vec!["q1", "q1", "q2", "q2", "q3", "q4", "q1"])),
            (
                "confidence",
                Arc::new(Float64Array::from(vec![Some(0.9), Some(0.6), Some(0.6), Some(0.3), None, Some(0.8), None])) as ArrayRef,
            ),
            ("correct", Arc::new(BooleanArray::from(vec![true, true, false, false, false, true, true])) as ArrayRef),
        ])
        .unwrap();
        let a = statement_aurocs(&batch).unwrap();
        let key = |v: &str, sp: &str| (v.to_string(), sp.to_string());
        assert_eq!(a[&key("sft", "val")], StatementAuroc { stated: 4, right: 2, auroc: Some(0.875) });
        assert_eq!(a[&key("sft", "test")], StatementAuroc { stated: 1, right: 1, auroc: None });
        assert!(!a.contains_key(&key("vanilla", "val")), "a variant without statements has no row");
        let names = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            statement_aurocs_markdown(&a, None, &names(&["vanilla", "sft"]), &names(&["val", "test"])),
            "| split | variant | sentences with a statement | judged right | statement AUROC |\n|---|---|---|---|---|\n\
             | val | sft | 4 | 0.500 | 0.875 |\n\
             | test | sft | 1 | 1.000 | – |\n"
        );
    }

    /// Hand-counted AUROCs (wrong sentences positive, ties half): train has right {0, 1}, wrong {2, 3};
    /// one unjudged sentence (null `correct`) is left out.
    #[test]
    fn signal_aurocs_are_the_hand_counted_ones() {
        let f = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
        let split: ArrayRef = Arc::new(StringArray::from(vec!["train", "train", "train", "train", "train", "val", "val"]));
        let correct: ArrayRef =
            Arc::new(BooleanArray::from(vec![Some(true), Some(true), Some(false), Some(false), None, Some(true), Some(false)]));
        let levels = RecordBatch::try_from_iter([
            ("split", split),
            // wrong above right in all 4 pairs → 1.0 (val: wrong 0.2 < right 0.9 → 0.0)
            ("lnlp", f(vec![0.1, 0.2, 0.3, 0.4, 9.0, 0.9, 0.2])),
            // wrong below right everywhere → 0.0 (val: 1.0)
            ("mte", f(vec![0.4, 0.3, 0.2, 0.1, 9.0, 0.1, 0.2])),
            // wrong {0.2, 0.4} vs right {0.1, 0.3}: 3 of 4 pairs → 0.75
            ("tokensar", f(vec![0.1, 0.3, 0.2, 0.4, 9.0, 0.5, 0.5])),
            // 1 − CLIPScore = 0.1, 0.2, 0.3, 0.4 → 1.0 (val: tie → 0.5)
            ("clipscore", f(vec![0.9, 0.8, 0.7, 0.6, 9.0, 0.5, 0.5])),
            // all tied → 0.5 (val: 1.0)
            ("u_final", f(vec![0.5, 0.5, 0.5, 0.5, 9.0, 0.1, 0.7])),
            ("correct", correct),
        ])
        .unwrap();
        let rows = signal_aurocs(&levels, None).unwrap();
        assert_eq!(rows.len(), 3);
        let train = &rows[0];
        assert_eq!((train.split.as_str(), train.judged, train.right), ("train", 4, 2));
        assert_eq!(train.values, [Some(1.0), Some(0.0), Some(0.75), Some(1.0), Some(0.5)]);
        assert_eq!(rows[1].values, [Some(0.0), Some(1.0), Some(0.5), Some(0.5), Some(1.0)]);
        // all: 6 judged (3 right: 0.1, 0.2, 0.9; 3 wrong: 0.3, 0.4, 0.2). LNLP pairs wrong > right:
        // 0.3 > {0.1, 0.2}, 0.4 > {0.1, 0.2}, 0.2 > 0.1 and ties 0.2 = 0.2 (half) → 5.5 / 9.
        assert_eq!((rows[2].split.as_str(), rows[2].judged, rows[2].right), ("all", 6, 3));
        assert!((rows[2].values[0].unwrap() - 5.5 / 9.0).abs() < 1e-12, "{:?}", rows[2].values);
        let md = signals_markdown(&rows);
        assert!(md.contains("| train | 4 | 2 | 1.000 | 0.000 | 0.750 | 1.000 | 0.500 |"), "{md}");
        // A table without the judge's labels is refused, naming the column.
        let no_correct = levels.project(&[0, 1, 2, 3, 4, 5]).unwrap();
        assert!(signal_aurocs(&no_correct, None).unwrap_err().to_string().contains("`correct`"));
    }

    /// With eval's answer reading, each chain's answer sentence is its own role and leaves the reasoning rows.
    #[test]
    fn signal_aurocs_per_role_are_the_hand_counted_ones() {
        use arrow::array::UInt32Array;
        let f = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
        let s = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        let u = |v: Vec<u32>| -> ArrayRef { Arc::new(UInt32Array::from(v)) };
        // Chains (q1, 0), (q1, 1) and (q2, 0): two perception sentences (right 0.5, wrong 0.1), two answers
        // (wrong 0.9, right 0.2) and two other reasoning sentences (right 0.3, wrong 0.25).
        let lnlp = f(vec![0.5, 0.9, 0.1, 0.2, 0.3, 0.25]);
        let levels = RecordBatch::try_from_iter([
            ("item_id", s(vec!["q1", "q1", "q1", "q1", "q2", "q2"])),
            ("split", s(vec!["train"; 6])),
            ("sample", u(vec![0, 0, 1, 1, 0, 0])),
            ("sentence", u(vec![0, 1, 0, 1, 0, 1])),
            (
                "text",
                s(vec![
                    "There is a red circle.",
                    "So, the answer is 2.",
                    "There is a blue square.",
                    "So, the answer is 3.",
                    "Counting gives 2.",
                    "2 is more than 1.",
                ]),
            ),
            ("lnlp", lnlp.clone()),
            ("mte", lnlp.clone()),
            ("tokensar", lnlp.clone()),
            ("clipscore", f(vec![0.5; 6])),
            ("u_final", lnlp),
            ("correct", Arc::new(BooleanArray::from(vec![true, false, false, true, true, false])) as ArrayRef),
            ("chain_level", s(vec!["perception", "reasoning", "perception", "reasoning", "reasoning", "reasoning"])),
        ])
        .unwrap();
        let acc = crate::metrics::accuracy::AccuracyParams::default();
        let rows = signal_aurocs(&levels, Some(&acc)).unwrap();
        let got: Vec<(&str, usize, usize, Option<f64>)> = rows.iter().map(|r| (r.split.as_str(), r.judged, r.right, r.values[0])).collect();
        // perception: wrong 0.1 below right 0.5 → 0; reasoning: wrong 0.25 below right 0.3 → 0; answer: wrong
        // 0.9 above right 0.2 → 1. The whole split: wrong {0.9, 0.1, 0.25} vs right {0.5, 0.2, 0.3} → 4 of 9.
        assert_eq!(
            got[1..],
            [("train · perception", 2, 1, Some(0.0)), ("train · reasoning", 2, 1, Some(0.0)), ("train · answer", 2, 1, Some(1.0))]
        );
        assert_eq!((got[0].0, got[0].1), ("train", 6));
        assert!((got[0].3.unwrap() - 4.0 / 9.0).abs() < 1e-12, "{got:?}");
        // Without the answer reading the answers stay reasoning: wrong {0.9, 0.25} vs right {0.2, 0.3} → 3 of 4.
        let rows = signal_aurocs(&levels, None).unwrap();
        assert_eq!((rows[2].split.as_str(), rows[2].judged, rows[2].values[0]), ("train · reasoning", 4, Some(0.75)));
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn signal_aurocs_per_chain_level_are_the_hand_counted_ones() {
        let f = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
        let split: ArrayRef = Arc::new(StringArray::from(vec!["train", "train", "train", "train", "val", "val"]));
        let correct: ArrayRef =
            Arc::new(BooleanArray::from(vec![Some(true), Some(true), Some(false), Some(false), Some(true), Some(false)]));
        // Perception pairs right row 0 with wrong row 3, reasoning right row 1 with wrong row 2; val's wrong
        // sentence has no level.
        let level: ArrayRef = Arc::new(StringArray::from(vec![
            Some("perception"),
            Some("reasoning"),
            Some("reasoning"),
            Some("perception"),
            Some("perception"),
            None,
        ]));
        let levels = RecordBatch::try_from_iter([
            ("split", split),
            ("lnlp", f(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6])),
            ("mte", f(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6])),
            // TokenSAR: perception right 0.1 < wrong 0.4 → 1.0; reasoning right 0.3 > wrong 0.2 → 0.0; train 0.75
            ("tokensar", f(vec![0.1, 0.3, 0.2, 0.4, 0.5, 0.6])),
            ("clipscore", f(vec![0.5; 6])),
            ("u_final", f(vec![0.5; 6])),
            ("correct", correct),
            ("chain_level", level),
        ])
        .unwrap();
        let rows = signal_aurocs(&levels, None).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.split.as_str()).collect();
        assert_eq!(names, ["train", "train · perception", "train · reasoning", "val", "val · perception", "all"]);
        assert_eq!(rows[0].values[2], Some(0.75));
        assert_eq!((rows[1].judged, rows[1].right, rows[1].values[2]), (2, 1, Some(1.0)));
        assert_eq!((rows[2].judged, rows[2].right, rows[2].values[2]), (2, 1, Some(0.0)));
        // One class only: undefined.
        assert_eq!((rows[4].judged, rows[4].values), (1, [None; 5]));
        assert!(signals_markdown(&rows).contains("| train · reasoning | 2 | 1 | 1.000 | 1.000 | 0.000 | 0.500 | 0.500 |"));
    }
}
