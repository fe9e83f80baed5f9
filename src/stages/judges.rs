//! The encoders as the confidence module's judges: the adapters from `encoders` types to the traits in
//! `confidence` (which knows no encoder), in the one place that sees both.
use crate::confidence::{EncoderError, SentenceEmbedder};
use crate::encoders::minilm::SentenceEncoder;

/// all-MiniLM-L6-v2 (or any mean-pooled bi-encoder) as a [`SentenceEmbedder`].
pub struct MiniLmEmbedder(pub SentenceEncoder);

impl SentenceEmbedder for MiniLmEmbedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError> {
        let e = self.0.encode(texts)?;
        Ok(e.embeddings.data.chunks(e.embeddings.dim.max(1)).map(<[f32]>::to_vec).collect())
    }
}
