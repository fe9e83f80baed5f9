//! A [`PairSimilarity`] from any [`SentenceEmbedder`]: g(a, b) = cos(e(a), e(b)). Lets a bi-encoder
//! (all-MiniLM-L6-v2) stand in for TokenSAR's cross-encoder, and embeds each distinct text once: the
//! TokenSAR pairs of one unit share their first text, so a batch of n pairs costs about n + units
//! embeddings instead of 2n.
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
