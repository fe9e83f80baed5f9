//! A [`PairSimilarity`] from any [`SentenceEmbedder`]: g(a, b) = cos(e(a), e(b)). Lets a bi-encoder
//! (all-MiniLM-L6-v2) stand in for TokenSAR's cross-encoder, and embeds each distinct text once: the
//! TokenSAR pairs of one unit share their first text, so a batch of n pairs costs about n + units
//! embeddings instead of 2n.
//!
//! And [`ExactMatch`], the judge for templated reference chains (the embedded benchmark's), where one word
//! swapped is another fact that a graded similarity still scores near 1.
use std::collections::HashMap;

use super::{EncoderError, PairSimilarity, SentenceEmbedder};

/// Cosine of embeddings as a pair similarity (on [−1, 1]; TokenSAR clamps to [0, 1]).
pub struct CosineOfEmbeddings<E>(pub E);

impl<E: SentenceEmbedder> PairSimilarity for CosineOfEmbeddings<E> {
    fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut texts: Vec<&str> = Vec::new();
        for &(a, b) in pairs {
            for t in [a, b] {
                index.entry(t).or_insert_with(|| {
                    texts.push(t);
                    texts.len() - 1
                });
            }
        }
        let emb = self.0.embed(&texts)?;
        if emb.len() != texts.len() {
            return Err(format!("embedder returned {} vectors for {} texts", emb.len(), texts.len()).into());
        }
        let norms: Vec<f64> = emb.iter().map(|v| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()).collect();
        pairs
            .iter()
            .enumerate()
            .map(|(p, &(a, b))| {
                let (i, j) = (index[a], index[b]);
                if emb[i].len() != emb[j].len() {
                    return Err(format!("pair {p}: embedding lengths differ ({} vs {})", emb[i].len(), emb[j].len()).into());
                }
                for (t, n) in [(a, norms[i]), (b, norms[j])] {
                    if !(n > 0.0 && n.is_finite()) {
                        let shown: String = t.chars().take(80).collect();
                        return Err(format!("pair {p}: the embedding of {shown:?} has norm {n} (expected finite and > 0)").into());
                    }
                }
                let dot: f64 = emb[i].iter().zip(&emb[j]).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
                Ok((dot / (norms[i] * norms[j])) as f32)
            })
            .collect()
    }
}

/// A sentence as [`ExactMatch`] compares it: lower case, each run of white space one space, without the
/// spaces around it and its final full stop (or ! or ?).
pub fn normalized_sentence(s: &str) -> String {
    let words: Vec<String> = s.split_whitespace().map(str::to_lowercase).collect();
    words.join(" ").trim_end_matches(['.', '!', '?', ' ']).to_string()
}

/// [`ExactMatch`]'s score of a pair from a graded similarity `graded` (at most 1) of the same pair.
pub fn exact_or_half(a: &str, b: &str, graded: f64) -> f64 {
    if normalized_sentence(a) == normalized_sentence(b) {
        1.0
    } else {
        0.5 * graded
    }
}

/// 1 for the same sentence (case, spacing and the final full stop aside), else half of a graded similarity
/// `S` of at most 1 (so at most 0.5). With a threshold in [0.5, 1) a sentence is right only when it is a
/// reference sentence word for word, while the reference sentence it is nearest (which gives its level) is
/// still the one `S` finds most similar.
pub struct ExactMatch<S>(pub S);

impl<S: PairSimilarity> PairSimilarity for ExactMatch<S> {
    fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
        let graded = self.0.similarity(pairs)?;
        if graded.len() != pairs.len() {
            return Err(format!("the graded similarity returned {} scores for {} pairs", graded.len(), pairs.len()).into());
        }
        Ok(pairs.iter().zip(graded).map(|(&(a, b), g)| exact_or_half(a, b, f64::from(g)) as f32).collect())
    }
}

#[cfg(test)]
mod exact_match_tests {
    use super::*;

    /// Scores every pair 0.9: a graded similarity that cannot tell one word from another.
    struct AllNear;
    impl PairSimilarity for AllNear {
        fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
            Ok(vec![0.9; pairs.len()])
        }
    }

    #[test]
    fn the_same_sentence_scores_one_and_another_half_its_graded_similarity() {
        assert_eq!(normalized_sentence("  So, the ANSWER is\t yes. "), "so, the answer is yes");
        assert_eq!(normalized_sentence("Is it red?!"), "is it red");
        let pairs = [
            ("So, the answer is yes.", "so, the answer is  yes"),
            ("So, the answer is no.", "So, the answer is yes."),
            ("There are 2 squares.", "There are 3 squares."),
            ("", ""),
        ];
        let got = ExactMatch(AllNear).similarity(&pairs).unwrap();
        assert_eq!(got, [1.0, 0.45, 0.45, 1.0]);
        assert_eq!(exact_or_half("a b", "A  b.", -0.2), 1.0);
        assert_eq!(exact_or_half("a b", "a c", -0.2), -0.1);
    }
}
