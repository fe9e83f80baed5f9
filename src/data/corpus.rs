//! A sentence corpus made from items: the text an encoder meets in this pipeline (questions, reference-chain
//! sentences, captions). The project's own benchmark and int8-calibration corpus
//! (`benches/corpus/penumbra_sentences.txt`) is this, over the embedded benchmark: see `mmb data corpus`.
use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::Item;

/// Up to `n` distinct sentences of `items` in a seeded random order (so any prefix is a spread sample,
/// not the first items' sentences).
pub fn sentences(items: &[Item], n: usize, seed: u64) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut all: Vec<String> = items
        .iter()
        .flat_map(|it| {
            std::iter::once(&it.question)
                .chain(it.chain.perception.iter())
                .chain(it.chain.reasoning.iter())
                .chain(it.captions.iter())
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty() && seen.insert(s.clone()))
        .collect();
    all.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    all.truncate(n);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_sentences_in_a_seeded_order() {
        let mut a = Item::new("a", "t", "train", "What is red?");
        a.chain.perception = vec!["A red circle.".into(), " A red circle. ".into()];
        a.chain.reasoning = vec!["So, the answer is circle.".into()];
        let mut b = Item::new("b", "t", "train", "What is red?");
        b.captions = vec!["A red circle and a blue square.".into(), "".into()];
        let s = sentences(&[a.clone(), b.clone()], 10, 7);
        let mut sorted = s.clone();
        sorted.sort();
        assert_eq!(sorted, ["A red circle and a blue square.", "A red circle.", "So, the answer is circle.", "What is red?"]);
        assert_eq!(s, sentences(&[a.clone(), b.clone()], 10, 7), "same seed, same order");
        assert_eq!(sentences(&[a, b], 2, 7), s[..2]);
    }
}
