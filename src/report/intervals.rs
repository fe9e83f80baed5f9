//! The report's 95 % intervals: per (variant, split) cell, each answer- and sentence-level metric
//! recomputed from eval's per-sentence rows on bootstrap resamples of the ITEMS
//! ([`crate::metrics::bootstrap`]), and the paired interval of full − SFT per split.
//!
//! The metrics are recomputed exactly as `eval` computes its level-`all` row (the same functions, the
//! confidence eval's metrics used per sentence, eval's ECE bins and answer-confidence rule, recorded in
//! its artifacts); [`cell_intervals`] checks that the recomputed value on the original items equals eval's
//! and fails naming the cell when it does not, so an interval never describes another number.
use crate::metrics::bootstrap::{interval, paired_interval, resample_indices, BootstrapParams, Interval};
use crate::metrics::calibration::{answer_confidence, ece, mece, step_brier, AnswerConfidence, EceParams};
use crate::metrics::{auroc, MetricsError};
use crate::report::page::MetricsRow;
use std::collections::BTreeMap;

/// One item's chain as eval scored it: answer correctness and the (sentence right?, confidence the
/// metrics used) pairs of the sentences that entered the calibration metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemScores {
    pub item_id: String,
    pub answer_correct: f64,
    pub sentences: Vec<(bool, f64)>,
}

/// The metrics with intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Ece,
    Mece,
    Brier,
    Accuracy,
    Auroc,
}

impl Metric {
    pub const ALL: [Metric; 5] = [Metric::Ece, Metric::Mece, Metric::Brier, Metric::Accuracy, Metric::Auroc];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Ece => "ECE",
            Metric::Mece => "MECE",
            Metric::Brier => "Brier",
            Metric::Accuracy => "Acc",
            Metric::Auroc => "AUROC",
        }
    }

    /// ECE, MECE and Brier are errors; accuracy and AUROC are higher-is-better.
    pub fn lower_is_better(self) -> bool {
        matches!(self, Metric::Ece | Metric::Mece | Metric::Brier)
    }

    /// Eval's value of this metric in a metrics row.
    pub fn of_row(self, r: &MetricsRow) -> Option<f64> {
        match self {
            Metric::Ece => r.ece,
            Metric::Mece => r.mece,
            Metric::Brier => r.brier,
            Metric::Accuracy => r.accuracy,
            Metric::Auroc => r.auroc,
        }
    }
}

/// How eval turned sentences into answer-level numbers (from its metrics artifact).
#[derive(Debug, Clone, PartialEq)]
pub struct CellRule {
    pub ece: EceParams,
    pub answer_confidence: AnswerConfidence,
}

/// `metric` on a drawn multiset of items, as eval's level-`all` row computes it: MECE and Brier over
/// the items with at least one scored sentence, ECE and AUROC on their answer-level confidence
/// (AUROC: answer right when its correctness ≥ 0.5; None with one class), accuracy over all items.
pub fn metric_of(drawn: &[&ItemScores], metric: Metric, rule: &CellRule) -> Result<Option<f64>, MetricsError> {
    let prepared = prepare(drawn, rule)?;
    metric_prepared(&prepared.iter().collect::<Vec<_>>(), metric, rule)
}

/// One item reduced to what the metrics read: its MECE and Brier terms (the mean over its sentences, as
/// `mece` / `step_brier` compute them for one response, so sums over items are those functions' sums in
/// the same order), its answer-level confidence, its answer correctness. Computed once per cell, so a
/// resample costs one pass over the drawn items.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    kept: bool,
    mece: f64,
    brier: f64,
    confidence: f64,
    correct: f64,
}

fn prepare(items: &[&ItemScores], rule: &CellRule) -> Result<Vec<Prepared>, MetricsError> {
    items
        .iter()
        .enumerate()
        .map(|(k, i)| {
            if i.sentences.is_empty() {
                return Ok(Prepared { kept: false, mece: 0.0, brier: 0.0, confidence: 0.0, correct: i.answer_correct });
            }
            let one = std::slice::from_ref(&i.sentences);
            let c: Vec<f64> = i.sentences.iter().map(|x| x.1).collect();
            Ok(Prepared {
                kept: true,
                mece: mece(one)?,
                brier: step_brier(one)?,
                confidence: answer_confidence(k, &c, rule.answer_confidence)?,
                correct: i.answer_correct,
            })
        })
        .collect()
}

fn metric_prepared(drawn: &[&Prepared], metric: Metric, rule: &CellRule) -> Result<Option<f64>, MetricsError> {
    let kept: Vec<&Prepared> = drawn.iter().copied().filter(|i| i.kept).collect();
    Ok(match metric {
        Metric::Accuracy => {
            if drawn.is_empty() {
                None
            } else {
                Some(drawn.iter().map(|i| i.correct).sum::<f64>() / drawn.len() as f64)
            }
        }
        Metric::Mece | Metric::Brier => {
            if kept.is_empty() {
                return Ok(None);
            }
            let total: f64 = kept.iter().map(|i| if metric == Metric::Mece { i.mece } else { i.brier }).sum();
            Some(total / kept.len() as f64)
        }
        Metric::Ece | Metric::Auroc => {
            if kept.is_empty() {
                return Ok(None);
            }
            let conf: Vec<f64> = kept.iter().map(|i| i.confidence).collect();
            let corr: Vec<f64> = kept.iter().map(|i| i.correct).collect();
            if metric == Metric::Ece {
                Some(ece(&conf, &corr, &rule.ece)?)
            } else {
                let labels: Vec<bool> = corr.iter().map(|&c| c >= 0.5).collect();
                if labels.iter().all(|&l| l) || labels.iter().all(|&l| !l) {
                    None
                } else {
                    Some(auroc(&conf, &labels)?)
                }
            }
        }
    })
}

/// Point value and interval of one cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub interval: Option<Interval>,
}

/// Per (variant, split) its items (from eval's sentence rows) and per metric its estimate.
pub type Cells = BTreeMap<(String, String, Metric), Estimate>;

/// The intervals of every (variant, split) cell of `items`; each recomputed value on the original items
/// must equal eval's value in `rows` (level `all`) to 1e-9, else an error names the cell.
pub fn cell_intervals(
    items: &BTreeMap<(String, String), Vec<ItemScores>>,
    rows: &[MetricsRow],
    rule: &CellRule,
    params: &BootstrapParams,
) -> anyhow::Result<Cells> {
    let mut out = Cells::new();
    for ((variant, split), its) in items {
        let row = rows
            .iter()
            .find(|r| &r.variant == variant && &r.split == split && r.level == "all")
            .ok_or_else(|| anyhow::anyhow!("eval metrics have no level-`all` row for variant `{variant}`, split `{split}`"))?;
        let all: Vec<&ItemScores> = its.iter().collect();
        let indices = resample_indices(its.len(), params.resamples, params.seed)?;
        for metric in Metric::ALL {
            let value = metric_of(&all, metric, rule)?;
            let expected = metric.of_row(row);
            let same = match (value, expected) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9,
                (None, None) => true,
                _ => false,
            };
            anyhow::ensure!(
                same,
                "report: {} of variant `{variant}`, split `{split}` recomputed from eval's sentences is {value:?}, eval's metrics say \
                 {expected:?} (the eval artifacts disagree; rerun eval)",
                metric.name()
            );
            let Some(value) = value else { continue };
            let ci = cell_interval(its, metric, rule, &indices, params.level)?;
            out.insert((variant.clone(), split.clone(), metric), Estimate { value, interval: ci });
        }
    }
    Ok(out)
}

/// The interval of `metric` over `indices` (lists of indices into `items`). Call it after the point
/// estimate on all items succeeded: that checked every input value, so a resample cannot err (and its
/// errors are read as "undefined").
pub fn cell_interval(
    items: &[ItemScores],
    metric: Metric,
    rule: &CellRule,
    indices: &[Vec<usize>],
    level: f64,
) -> Result<Option<Interval>, MetricsError> {
    if let Some(bad) = indices.iter().flatten().find(|&&k| k >= items.len()) {
        return Err(MetricsError::InvalidParams(format!("bootstrap: resample index {bad} is out of range for {} items", items.len())));
    }
    let prepared = prepare(&items.iter().collect::<Vec<_>>(), rule)?;
    interval(indices, level, |ix| {
        let drawn: Vec<&Prepared> = ix.iter().map(|&i| &prepared[i]).collect();
        metric_prepared(&drawn, metric, rule).ok().flatten()
    })
}

/// One paired difference a − b of a metric on one split: of one run, or the mean over the runs of several
/// seeds (the same items in each run).
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub split: String,
    pub metric: Metric,
    /// Items resampled (those either variant has a chain for, in any run).
    pub items: usize,
    /// Each run's a − b on all its items, in run order.
    pub per_seed: Vec<f64>,
    /// The mean of `per_seed`, with its interval.
    pub estimate: Estimate,
}

/// The ids the variants are resampled over: the sorted union of their item ids (a resample's index k
/// names `ids[k]`).
pub fn paired_ids(a: &[ItemScores], b: &[ItemScores]) -> Vec<String> {
    union_ids(&[a, b])
}

fn union_ids(sets: &[&[ItemScores]]) -> Vec<String> {
    let mut ids: Vec<String> = sets.iter().flat_map(|s| s.iter()).map(|i| i.item_id.clone()).filter(|id| !id.is_empty()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The paired estimate of `metric(a) − metric(b)` with its interval over `indices` (lists of indices into
/// [`paired_ids`]): items are matched by id, the same drawn ids serve both variants, and an id one variant
/// lacks contributes nothing to it (as a chain without sentences contributes nothing to eval's calibration
/// metrics). None when the metric is undefined for either variant on the original items.
pub fn paired_difference(
    a: &[ItemScores],
    b: &[ItemScores],
    metric: Metric,
    rule: &CellRule,
    indices: &[Vec<usize>],
    level: f64,
) -> anyhow::Result<Option<Estimate>> {
    Ok(seeds_paired_difference(&[(a, b)], metric, rule, indices, level)?.map(|(_, e)| e))
}

/// [`paired_difference`] over several runs (one (a, b) pair per seed, on the same items): each run's
/// difference, and their mean with an interval over resamples of the union of the runs' item ids, the same
/// drawn ids serving every run. None when the metric is undefined for a variant of some run.
pub fn seeds_paired_difference(
    runs: &[(&[ItemScores], &[ItemScores])],
    metric: Metric,
    rule: &CellRule,
    indices: &[Vec<usize>],
    level: f64,
) -> anyhow::Result<Option<(Vec<f64>, Estimate)>> {
    anyhow::ensure!(!runs.is_empty(), "paired bootstrap: no runs");
    let all: Vec<&[ItemScores]> = runs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let ids = union_ids(&all);
    if let Some(bad) = indices.iter().flatten().find(|&&k| k >= ids.len()) {
        anyhow::bail!("paired bootstrap: resample index {bad} is out of range for {} items", ids.len());
    }
    // Each variant of each run: its items reduced once, and where each id is among them.
    let side = |its: &[ItemScores]| -> anyhow::Result<(Vec<Prepared>, Vec<Option<usize>>)> {
        let by_id: BTreeMap<&str, usize> = its.iter().enumerate().map(|(k, i)| (i.item_id.as_str(), k)).collect();
        let aligned = ids.iter().map(|id| by_id.get(id.as_str()).copied()).collect();
        Ok((prepare(&its.iter().collect::<Vec<_>>(), rule)?, aligned))
    };
    let sides: Vec<((Vec<Prepared>, Vec<Option<usize>>), (Vec<Prepared>, Vec<Option<usize>>))> =
        runs.iter().map(|&(a, b)| Ok((side(a)?, side(b)?))).collect::<anyhow::Result<_>>()?;
    let on = |(its, al): &(Vec<Prepared>, Vec<Option<usize>>), ix: &[usize]| {
        let drawn: Vec<&Prepared> = ix.iter().filter_map(|&i| al[i].map(|k| &its[k])).collect();
        metric_prepared(&drawn, metric, rule)
    };
    let identity: Vec<usize> = (0..ids.len()).collect();
    let mut per_seed = Vec::with_capacity(runs.len());
    for (sa, sb) in &sides {
        let (Some(va), Some(vb)) = (on(sa, &identity)?, on(sb, &identity)?) else { return Ok(None) };
        per_seed.push(va - vb);
    }
    // The mean over runs of a, and of b, on the same drawn ids (the mean of differences is their difference).
    // Every input value was checked by `prepare` above, so a resample cannot err.
    let mean_of = |pick: fn(&(_, _)) -> &(Vec<Prepared>, Vec<Option<usize>>), ix: &[usize]| -> Option<f64> {
        let mut sum = 0.0;
        for s in &sides {
            sum += on(pick(s), ix).ok().flatten()?;
        }
        Some(sum / sides.len() as f64)
    };
    let ci = paired_interval(indices, level, |ix| mean_of(|s| &s.0, ix), |ix| mean_of(|s| &s.1, ix))?;
    let mean = per_seed.iter().sum::<f64>() / per_seed.len() as f64;
    Ok(Some((per_seed, Estimate { value: mean, interval: ci })))
}

/// The paired bootstrap differences `a − b` (e.g. full − sft) per split present for both, for `metrics`,
/// on seeded resamples of [`paired_ids`].
pub fn paired_differences(
    items: &BTreeMap<(String, String), Vec<ItemScores>>,
    a: &str,
    b: &str,
    splits: &[String],
    metrics: &[Metric],
    rule: &CellRule,
    params: &BootstrapParams,
) -> anyhow::Result<Vec<Difference>> {
    seeds_paired_differences(&[items], a, b, splits, metrics, rule, params)
}

/// [`paired_differences`] over the runs of several seeds (each run's items per (variant, split)): per split
/// present for both variants in every run, each run's difference and their mean with its interval.
pub fn seeds_paired_differences(
    runs: &[&BTreeMap<(String, String), Vec<ItemScores>>],
    a: &str,
    b: &str,
    splits: &[String],
    metrics: &[Metric],
    rule: &CellRule,
    params: &BootstrapParams,
) -> anyhow::Result<Vec<Difference>> {
    let mut out = Vec::new();
    for split in splits {
        let key = |v: &str| (v.to_string(), split.clone());
        let Some(pairs) =
            runs.iter().map(|items| Some((items.get(&key(a))?.as_slice(), items.get(&key(b))?.as_slice()))).collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let n = union_ids(&pairs.iter().flat_map(|&(x, y)| [x, y]).collect::<Vec<_>>()).len();
        if n == 0 {
            continue;
        }
        let indices = resample_indices(n, params.resamples, params.seed)?;
        for &metric in metrics {
            if let Some((per_seed, estimate)) = seeds_paired_difference(&pairs, metric, rule, &indices, params.level)? {
                out.push(Difference { split: split.clone(), metric, items: n, per_seed, estimate });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(id: &str, ans: f64, s: &[(bool, f64)]) -> ItemScores {
        ItemScores { item_id: id.into(), answer_correct: ans, sentences: s.to_vec() }
    }

    #[test]
    fn metric_of_matches_hand_computed_values() {
        let rule = CellRule { ece: EceParams { bins: 10 }, answer_confidence: AnswerConfidence::FinalSentence };
        let a = it("a", 1.0, &[(true, 0.5), (false, 1.0)]);
        let b = it("b", 0.0, &[(true, 0.75)]);
        let c = it("c", 0.0, &[]);
        let d: Vec<&ItemScores> = vec![&a, &b, &c, &a];
        // Accuracy over all 4 drawn: 2/4. MECE over kept (a, b, a): a = (0.5 + 1.0)/2 = 0.75, b = 0.25 → 1.75/3.
        assert_eq!(metric_of(&d, Metric::Accuracy, &rule).unwrap(), Some(0.5));
        assert!((metric_of(&d, Metric::Mece, &rule).unwrap().unwrap() - 1.75 / 3.0).abs() < 1e-12);
        // Brier: a = (0.25 + 1)/2 = 0.625, b = 0.0625 → 1.3125/3.
        assert!((metric_of(&d, Metric::Brier, &rule).unwrap().unwrap() - 1.3125 / 3.0).abs() < 1e-12);
        // Answer confidences (final sentence) 1.0 (right), 0.75 (wrong), 1.0 (right): bin 9 holds the two
        // 1.0 (error 0), bin 7 the 0.75 (error 0.75, weight 1/3) → 0.25. AUROC: both right at 1.0 above the wrong at 0.75 → 1.
        assert!((metric_of(&d, Metric::Ece, &rule).unwrap().unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(metric_of(&d, Metric::Auroc, &rule).unwrap(), Some(1.0));
        assert_eq!(metric_of(&[&a, &a], Metric::Auroc, &rule).unwrap(), None);
        assert_eq!(metric_of(&[&c], Metric::Mece, &rule).unwrap(), None);
    }
}
