//! Batching by a token budget over length-sorted inputs; results go back in input order.
//!
//! Sorting by length before batching keeps padding small (a batch is as long as its longest item); the
//! budget bounds `batch size × padded length`, so long texts come in small batches and short ones in big.
use serde::{Deserialize, Serialize};

use super::{EncoderError, Result};

/// How texts are grouped into model calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchPolicy {
    /// Upper bound on `items × padded length` per call (tokens, padding included).
    pub max_tokens: usize,
    /// Upper bound on items per call.
    pub max_items: usize,
    /// Sort by length before batching (off: input order, for comparisons).
    pub sort_by_length: bool,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        // 64 sentences of ~16 tokens: big enough to amortise call overhead, small enough to stay in cache.
        Self { max_tokens: 2048, max_items: 128, sort_by_length: true }
    }
}

impl BatchPolicy {
    pub fn describe(&self) -> String {
        format!(
            "{} by <= {} tokens, <= {} items",
            if self.sort_by_length { "length-sorted" } else { "input-order" },
            self.max_tokens,
            self.max_items
        )
    }

    fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 || self.max_items == 0 {
            return Err(EncoderError::BadInput {
                item: "batch policy".into(),
                reason: format!("max_tokens and max_items must be > 0, found {} and {}", self.max_tokens, self.max_items),
            });
        }
        Ok(())
    }
}

/// Groups item indices into batches. Each batch lists indices into `lengths`; every index appears once.
/// An item longer than the budget alone still gets a batch of its own.
pub fn plan(lengths: &[usize], policy: &BatchPolicy) -> Result<Vec<Vec<usize>>> {
    policy.validate()?;
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    if policy.sort_by_length {
        // longest first: the first item of a batch fixes its padded length
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    }
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_max = 0usize;
    for i in order {
        let len = lengths[i].max(1);
        let new_max = current_max.max(len);
        if !current.is_empty() && (current.len() == policy.max_items || (current.len() + 1) * new_max > policy.max_tokens) {
            batches.push(std::mem::take(&mut current));
            current_max = 0;
        }
        current_max = current_max.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    Ok(batches)
}

/// Runs `f` on every batch of `plan(lengths, policy)` and returns its per-item results in input order.
/// `f` gets the batch's indices and must return one result per index, in that order.
pub fn run_in_batches<T, F>(lengths: &[usize], policy: &BatchPolicy, mut f: F) -> Result<Vec<T>>
where
    F: FnMut(&[usize]) -> Result<Vec<T>>,
{
    let mut slots: Vec<Option<T>> = (0..lengths.len()).map(|_| None).collect();
    for batch in plan(lengths, policy)? {
        let results = f(&batch)?;
        if results.len() != batch.len() {
            return Err(EncoderError::BadInput {
                item: "batch".into(),
                reason: format!("expected {} results, found {}", batch.len(), results.len()),
            });
        }
        for (i, r) in batch.into_iter().zip(results) {
            slots[i] = Some(r);
        }
    }
    Ok(slots.into_iter().map(|s| s.expect("plan() covers every index exactly once")).collect())
}

/// Padded and non-padded token counts of a set of batches (for throughput reports).
pub fn token_counts(lengths: &[usize], batches: &[Vec<usize>]) -> (usize, usize) {
    let mut padded = 0;
    let mut real = 0;
    for b in batches {
        let max = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        padded += max * b.len();
        real += b.iter().map(|&i| lengths[i]).sum::<usize>();
    }
    (real, padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_and_budget_respected() {
        let lengths: Vec<usize> = (0..500).map(|i| (i * 37) % 90 + 3).collect();
        let policy = BatchPolicy { max_tokens: 600, max_items: 32, sort_by_length: true };
        let batches = plan(&lengths, &policy).unwrap();
        let mut seen = vec![0; lengths.len()];
        for b in &batches {
            let max = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(b.len() <= 32);
            assert!(b.len() == 1 || b.len() * max <= 600, "batch of {} × {max}", b.len());
            for &i in b {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        // sorting cuts padding well below input order
        let (real, padded) = token_counts(&lengths, &batches);
        let unsorted = plan(&lengths, &BatchPolicy { sort_by_length: false, ..policy }).unwrap();
        let (_, padded_unsorted) = token_counts(&lengths, &unsorted);
        assert!(padded < padded_unsorted && (padded as f64) < 1.1 * real as f64);
    }

    #[test]
    fn results_come_back_in_input_order() {
        let lengths = vec![5, 1, 9, 3, 9, 2, 7];
        let policy = BatchPolicy { max_tokens: 12, max_items: 4, sort_by_length: true };
        let out = run_in_batches(&lengths, &policy, |b| Ok(b.iter().map(|&i| i * 10).collect())).unwrap();
        assert_eq!(out, vec![0, 10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn oversized_item_gets_its_own_batch_and_zero_budget_is_an_error() {
        let batches = plan(&[100, 2, 2], &BatchPolicy { max_tokens: 10, max_items: 8, sort_by_length: true }).unwrap();
        assert_eq!(batches, vec![vec![0], vec![1, 2]]);
        assert!(plan(&[1], &BatchPolicy { max_tokens: 0, ..Default::default() }).is_err());
    }
}
