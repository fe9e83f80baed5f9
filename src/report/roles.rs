//! A sentence's role in its chain (perception, reasoning, or the answer), and what the judge, the statements
//! and the internal signals say within each role.
//!
//! Why: on the embedded benchmark a perception sentence is right about 1 time in 100 and an answer sentence
//! about 45 in 100. A confidence that only names the role then tells right from wrong at a pooled AUROC
//! near 0.75 without knowing anything about the sentence itself. The AUROC over pairs of the same role is what
//! is left once the role is known, and it compares policies that state confidence on different mixes of roles.
use crate::metrics::accuracy::{extract_final_answer, AccuracyParams};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, UInt32Type};
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Not the answer sentence, nearest a perception sentence of the reference chain.
    Perception,
    /// Not the answer sentence, nearest a reasoning sentence of the reference chain.
    Reasoning,
    /// The sentence the chain's answer is read from.
    Answer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Perception, Role::Reasoning, Role::Answer];

    pub fn name(self) -> &'static str {
        match self {
            Role::Perception => "perception",
            Role::Reasoning => "reasoning",
            Role::Answer => "answer",
        }
    }
}

/// Each row's role. `chain[i]` groups the rows into chains and `index[i]` orders a chain. A chain's answer
/// sentence is the last one from which an answer can be read after an answer marker (as eval reads the
/// answer, [`extract_final_answer`]); any other sentence takes its `level` (`perception` or `reasoning`: that
/// of the nearest reference sentence). None: not the answer, and no level.
pub fn roles<K: Ord>(
    chain: &[K],
    index: &[u32],
    text: &[&str],
    level: &[Option<&str>],
    accuracy: &AccuracyParams,
) -> anyhow::Result<Vec<Option<Role>>> {
    anyhow::ensure!(
        chain.len() == index.len() && chain.len() == text.len() && chain.len() == level.len(),
        "sentence roles: {} chain keys, {} indices, {} texts and {} levels",
        chain.len(),
        index.len(),
        text.len(),
        level.len()
    );
    let mut answer_at: BTreeMap<&K, u32> = BTreeMap::new();
    for i in (0..chain.len()).filter(|&i| extract_final_answer(text[i], accuracy).is_some()) {
        let at = answer_at.entry(&chain[i]).or_insert(index[i]);
        *at = (*at).max(index[i]);
    }
    (0..chain.len())
        .map(|i| {
            if answer_at.get(&chain[i]) == Some(&index[i]) {
                return Ok(Some(Role::Answer));
            }
            match level[i] {
                None => Ok(None),
                Some("perception") => Ok(Some(Role::Perception)),
                Some("reasoning") => Ok(Some(Role::Reasoning)),
                Some(other) => anyhow::bail!("row {i}: level `{other}` is neither `perception` nor `reasoning`"),
            }
        })
        .collect()
}

/// One policy's sentences of one role on one split.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleCell {
    pub sentences: usize,
    /// Judged right (all sentences of the role, stated or not).
    pub right: usize,
    /// Sentences with a statement.
    pub stated: usize,
    pub confidence_sum: f64,
    /// AUROC of the stated confidence for telling right stated sentences from wrong ones (None: one class).
    pub auroc: Option<f64>,
    /// The (right, wrong) pairs among the stated sentences: the weight of `auroc` in [`same_role_auroc`].
    pub pairs: usize,
}

/// By (variant, split, role).
pub type RoleCells = BTreeMap<(String, String, Role), RoleCell>;

/// [`RoleCell`]s from eval's `sentences` table; `accuracy` is eval's answer reading (its params'
/// `metrics.accuracy`). A sentence with no role is left out.
pub fn eval_role_cells(s: &RecordBatch, accuracy: &AccuracyParams) -> anyhow::Result<RoleCells> {
    let col = |n: &str| s.column_by_name(n).ok_or_else(|| anyhow::anyhow!("eval sentences have no column `{n}`"));
    let wrong = |n: &str, t: &str| anyhow::anyhow!("eval sentences: column `{n}` is not {t}");
    let text = |n: &str| col(n)?.as_string_opt::<i32>().ok_or_else(|| wrong(n, "a string column"));
    let (variant, split, item, sentence, level) = (text("variant")?, text("split")?, text("item_id")?, text("sentence")?, text("level")?);
    let index = col("sentence_index")?.as_primitive_opt::<UInt32Type>().ok_or_else(|| wrong("sentence_index", "a uint32 column"))?;
    let confidence = col("confidence")?.as_primitive_opt::<Float64Type>().ok_or_else(|| wrong("confidence", "a float64 column"))?;
    let correct = col("correct")?.as_boolean_opt().ok_or_else(|| wrong("correct", "a boolean column"))?;
    let n = s.num_rows();
    let chain: Vec<(&str, &str, &str)> = (0..n).map(|i| (variant.value(i), split.value(i), item.value(i))).collect();
    let texts: Vec<&str> = (0..n).map(|i| sentence.value(i)).collect();
    let levels: Vec<Option<&str>> = (0..n).map(|i| level.is_valid(i).then(|| level.value(i))).collect();
    let roles = roles(&chain, index.values(), &texts, &levels, accuracy).map_err(|e| anyhow::anyhow!("eval sentences: {e}"))?;
    let mut stated: BTreeMap<(String, String, Role), (Vec<f64>, Vec<bool>)> = BTreeMap::new();
    let mut cells = RoleCells::new();
    for (i, role) in roles.into_iter().enumerate() {
        let Some(role) = role else { continue };
        let key = (variant.value(i).to_string(), split.value(i).to_string(), role);
        let c = cells.entry(key.clone()).or_default();
        c.sentences += 1;
        c.right += usize::from(correct.value(i));
        if confidence.is_valid(i) {
            c.stated += 1;
            c.confidence_sum += confidence.value(i);
            let e = stated.entry(key).or_default();
            e.0.push(confidence.value(i));
            e.1.push(correct.value(i));
        }
    }
    for (key, (conf, right)) in stated {
        let c = cells.get_mut(&key).expect("every stated sentence has its cell");
        let r = right.iter().filter(|&&x| x).count();
        c.pairs = r * (right.len() - r);
        c.auroc = if c.pairs == 0 { None } else { Some(crate::metrics::auroc::auroc(&conf, &right)?) };
    }
    Ok(cells)
}

/// The AUROC of a policy's stated confidence over the pairs of a right and a wrong sentence of the same role:
/// each role's AUROC weighted by its pairs. None when no role has both classes.
pub fn same_role_auroc(cells: &RoleCells, variant: &str, split: &str) -> Option<f64> {
    let (mut sum, mut pairs) = (0.0, 0usize);
    for role in Role::ALL {
        if let Some(c) = cells.get(&(variant.to_string(), split.to_string(), role)) {
            if let Some(a) = c.auroc {
                sum += a * c.pairs as f64;
                pairs += c.pairs;
            }
        }
    }
    (pairs > 0).then(|| sum / pairs as f64)
}

pub const ROLES_NOTE: &str = "Each policy's sentences by their role in the chain: the answer sentence (the last one an \
answer can be read from), and the others by the level of the reference sentence each is nearest. Judged right: the \
share the judge holds right, stated or not. Then the sentences with a statement, their mean stated confidence, and the \
statement AUROC within the role. A role whose sentences are rarely right (perception) beside one whose sentences \
often are (the answer) lets a statement that only names the role tell right from wrong in the pooled AUROC above; \
within a role, 0.5 means the statement says nothing about the sentence itself. Same-role pairs (the table above): the \
roles' AUROCs weighted by their pairs of a right and a wrong sentence, the like-for-like comparison of policies that \
state confidence on different mixes of roles.";

/// One row per split, variant (in the orders given) and role that has sentences.
pub fn roles_markdown(cells: &RoleCells, variants: &[String], splits: &[String]) -> String {
    let mut s = String::from(
        "| split | variant | role | sentences | judged right | with a statement | mean stated conf. | statement AUROC |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for split in splits {
        for v in variants {
            for role in Role::ALL {
                let Some(c) = cells.get(&(v.clone(), split.clone(), role)) else { continue };
                let right = if c.sentences == 0 { "–".to_string() } else { format!("{:.3}", c.right as f64 / c.sentences as f64) };
                let mean = if c.stated == 0 { "–".to_string() } else { format!("{:.3}", c.confidence_sum / c.stated as f64) };
                let auroc = c.auroc.map_or("–".to_string(), |a| format!("{a:.3}"));
                let _ = writeln!(s, "| {split} | {v} | {} | {} | {right} | {} | {mean} | {auroc} |", role.name(), c.sentences, c.stated);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array};
    use std::sync::Arc;

    /// The answer is the last sentence holding an answer marker, wherever the markers are; the others keep
    /// their level, and a sentence without one has no role.
    #[test]
    fn the_answer_sentence_is_the_last_one_an_answer_is_read_from() {
        let acc = AccuracyParams::default();
        let chain = ["a", "a", "a", "a", "b", "b", "c"];
        let index = [0, 1, 2, 3, 1, 0, 0];
        let text = [
            "There is a red circle.",
            "So, the answer is 2.",
            "Answer: 3.",
            "I am sure.",
            "So, the answer is yes.",
            "The answer is",
            "Counting gives 2.",
        ];
        let level = [Some("perception"), Some("reasoning"), Some("reasoning"), None, Some("reasoning"), Some("perception"), None];
        let r = roles(&chain, &index, &text, &level, &acc).unwrap();
        use Role::*;
        // Chain a: "Answer: 3." at index 2 is the last; b: the row at index 1 (the other has no answer after
        // its marker); c: no answer and no level.
        assert_eq!(r, [Some(Perception), Some(Reasoning), Some(Answer), None, Some(Answer), Some(Perception), None]);
        let bad = roles(&["a"], &[0], &["x"], &[Some("vision")], &acc).unwrap_err().to_string();
        assert_eq!(bad, "row 0: level `vision` is neither `perception` nor `reasoning`");
    }

    fn sentences() -> RecordBatch {
        let s = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        // Policy p on val: chain q1 = perception (wrong, 0.25), answer (right, 1.0); chain q2 = perception
        // (right, 0.25), reasoning (wrong, no statement), answer (wrong, 0.75); chain q3 = perception (wrong,
        // 0.5), answer (right, 0.5).
        RecordBatch::try_from_iter([
            ("variant", s(vec!["p"; 7])),
            ("split", s(vec!["val"; 7])),
            ("item_id", s(vec!["q1", "q1", "q2", "q2", "q2", "q3", "q3"])),
            ("sentence_index", Arc::new(UInt32Array::from(vec![0, 1, 0, 1, 2, 0, 1])) as ArrayRef),
            (
                "sentence",
                s(vec![
                    "There is a red circle.",
                    "So, the answer is 2.",
                    "There is a blue square.",
                    "2 is more than 1.",
                    "So, the answer is yes.",
                    "There is a big star.",
                    "So, the answer is no.",
                ]),
            ),
            ("level", s(vec!["perception", "reasoning", "perception", "reasoning", "reasoning", "perception", "perception"])),
            (
                "confidence",
                Arc::new(Float64Array::from(vec![Some(0.25), Some(1.0), Some(0.25), None, Some(0.75), Some(0.5), Some(0.5)])) as ArrayRef,
            ),
            ("correct", Arc::new(BooleanArray::from(vec![false, true, true, false, false, false, true])) as ArrayRef),
        ])
        .unwrap()
    }

    /// Hand-counted cells, and the same-role AUROC against the pooled one.
    #[test]
    fn role_cells_and_the_same_role_auroc_are_the_hand_counted_ones() {
        let cells = eval_role_cells(&sentences(), &AccuracyParams::default()).unwrap();
        let get = |r: Role| cells[&("p".to_string(), "val".to_string(), r)].clone();
        // Perception: stated 0.25 (wrong), 0.25 (right), 0.5 (wrong): right 0.25 vs wrong {0.25, 0.5} → a
        // tie and a loss → 0.5 / 2 = 0.25, over 2 pairs.
        assert_eq!(get(Role::Perception), RoleCell { sentences: 3, right: 1, stated: 3, confidence_sum: 1.0, auroc: Some(0.25), pairs: 2 });
        // Reasoning: one wrong sentence, no statement.
        assert_eq!(get(Role::Reasoning), RoleCell { sentences: 1, right: 0, stated: 0, confidence_sum: 0.0, auroc: None, pairs: 0 });
        // Answer: right {1.0, 0.5} vs wrong {0.75}: one win, one loss → 0.5, over 2 pairs.
        assert_eq!(get(Role::Answer), RoleCell { sentences: 3, right: 2, stated: 3, confidence_sum: 2.25, auroc: Some(0.5), pairs: 2 });
        // Same-role pairs: (0.25 × 2 + 0.5 × 2) / 4 = 0.375. Pooled over the six stated sentences it is
        // right {1.0, 0.25, 0.5} vs wrong {0.25, 0.75, 0.5}: 3 + (0.5 + 0 + 0) + (1 + 0 + 0.5) = 5 of 9.
        assert_eq!(same_role_auroc(&cells, "p", "val"), Some(0.375));
        let pooled = crate::report::evidence::statement_aurocs(&sentences()).unwrap();
        assert!((pooled[&("p".to_string(), "val".to_string())].auroc.unwrap() - 5.0 / 9.0).abs() < 1e-12);
        assert_eq!(same_role_auroc(&cells, "p", "test"), None);
        // The statements' table gains the same-role column.
        let table = crate::report::evidence::statement_aurocs_markdown(&pooled, Some(&cells), &["p".into()], &["val".into()]);
        assert!(
            table.ends_with("| AUROC, same-role pairs |\n|---|---|---|---|---|---|\n| val | p | 6 | 0.500 | 0.556 | 0.375 |\n"),
            "{table}"
        );
        let md = roles_markdown(&cells, &["p".into()], &["val".into()]);
        assert_eq!(
            md,
            "| split | variant | role | sentences | judged right | with a statement | mean stated conf. | statement AUROC |\n\
             |---|---|---|---|---|---|---|---|\n\
             | val | p | perception | 3 | 0.333 | 3 | 0.333 | 0.250 |\n\
             | val | p | reasoning | 1 | 0.000 | 0 | – | – |\n\
             | val | p | answer | 3 | 0.667 | 3 | 0.750 | 0.500 |\n"
        );
    }

    #[test]
    fn eval_sentences_without_their_text_are_named() {
        let s = sentences();
        let without = s.project(&[0, 1, 2, 3, 5, 6, 7]).unwrap();
        assert_eq!(
            eval_role_cells(&without, &AccuracyParams::default()).unwrap_err().to_string(),
            "eval sentences have no column `sentence`"
        );
    }
}
