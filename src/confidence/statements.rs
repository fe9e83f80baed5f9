//! The confidence statement pools (§3.1.2, Figure 3, Table 4) and their two-way mapping: the forward
//! map samples a statement of a level (seeded, order-independent); the backward map embeds a generated
//! statement and takes the level of the most similar pool statement (cosine), plus a soft expected value.
//!
//! The pool is data (`stages/statements.toml`), so a user can swap it:
//! ```toml
//! [[level]]
//! level = 1
//! name = "uncertain"
//! statements = ["but I can't vouch for this.", ...]
//! ```
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::uncertainty::cosine;
use super::{level_value, ConfidenceError, Location, Result, SentenceEmbedder};

/// One level's statements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolLevel {
    /// 1 (uncertain) ..= 5 (fully confident).
    pub level: u8,
    pub name: String,
    pub statements: Vec<String>,
}

/// The five pools, ordered by level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementPool {
    pub level: Vec<PoolLevel>,
}

impl StatementPool {
    /// Parses and validates a pool file's text; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self> {
        let err = |message: String| ConfidenceError::Pool { source_name: source_name.to_string(), message };
        let mut pool: StatementPool = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        pool.level.sort_by_key(|l| l.level);
        let found: Vec<u8> = pool.level.iter().map(|l| l.level).collect();
        if found != [1, 2, 3, 4, 5] {
            return Err(err(format!("expected one [[level]] for each of 1, 2, 3, 4, 5, found levels {found:?}")));
        }
        let mut seen = std::collections::HashMap::new();
        for l in &pool.level {
            if l.statements.is_empty() {
                return Err(err(format!("level {} has no statements", l.level)));
            }
            for (i, s) in l.statements.iter().enumerate() {
                if s.trim().is_empty() || s.trim() != s {
                    return Err(err(format!("level {} statement {i} ({s:?}) is empty or has leading/trailing whitespace", l.level)));
                }
                if let Some(prev) = seen.insert(s.to_lowercase(), l.level) {
                    return Err(err(format!("statement {s:?} appears twice (levels {prev} and {})", l.level)));
                }
            }
        }
        Ok(pool)
    }

    /// The statements of `level` (1..=5).
    pub fn statements(&self, level: u8) -> Option<&[String]> {
        self.level.iter().find(|l| l.level == level).map(|l| l.statements.as_slice())
    }

    /// Every (level, statement) in level order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &str)> {
        self.level.iter().flat_map(|l| l.statements.iter().map(move |s| (l.level, s.as_str())))
    }

    /// The level of a statement that is in the pool verbatim (case-insensitive, ’ = ', trailing
    /// terminator ignored): the backward map without an encoder, for statements the pool produced.
    pub fn level_of(&self, statement: &str) -> Option<u8> {
        let key = |s: &str| s.trim().trim_end_matches(['.', '!', '?']).to_lowercase().replace('’', "'");
        let k = key(statement);
        self.iter().find(|(_, s)| key(s) == k).map(|(l, _)| l)
    }

    /// Forward map: a statement of `level`, drawn uniformly by a ChaCha8 stream seeded from
    /// blake3(seed, item key, sentence index), so the draw does not depend on processing order.
    pub fn sample(&self, level: u8, seed: u64, item_key: &str, sentence: usize) -> Result<&str> {
        let pool = self
            .statements(level)
            .ok_or_else(|| ConfidenceError::InvalidParams(format!("statement level must be 1..=5, found {level}")))?;
        let mut h = blake3::Hasher::new();
        h.update(b"mmboundary.statement.v1");
        h.update(&seed.to_le_bytes());
        h.update(&(item_key.len() as u64).to_le_bytes());
        h.update(item_key.as_bytes());
        h.update(&(sentence as u64).to_le_bytes());
        h.update(&[level]);
        let mut rng = ChaCha8Rng::from_seed(*h.finalize().as_bytes());
        Ok(&pool[rng.random_range(0..pool.len())])
    }
}

/// Which number the backward map reports as EV(c) / Conf(c).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpressedValue {
    /// The nearest pool statement's level value, (level − 1) / 4.
    Nearest,
    /// The softmax (over levels, of each level's best cosine / temperature) expected level value.
    Soft,
}

/// Backward-map params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackwardParams {
    /// Paper: the level of the most similar pool statement, "normalized between 0 and 1". We chose
    /// `Nearest` as EV(c); `Soft` is a smoother alternative for the rewards.
    pub value: ExpressedValue,
    /// Softmax temperature of the soft value. Paper: none. We chose 0.05 (MiniLM cosines between
    /// statements differ by ~0.1, so this separates levels without being a hard max).
    pub temperature: f64,
    /// If set, a statement whose best cosine is below this maps to no level (an error naming it).
    /// Paper: always maps to the nearest. We chose None.
    pub min_cosine: Option<f64>,
}

impl Default for BackwardParams {
    fn default() -> Self {
        BackwardParams { value: ExpressedValue::Nearest, temperature: 0.05, min_cosine: None }
    }
}

/// The backward map of one generated statement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BackwardMatch {
    /// Level of the nearest pool statement.
    pub level: u8,
    /// Index of the nearest statement in [`StatementPool::iter`] order.
    pub nearest: usize,
    pub cosine: f64,
    /// (level − 1) / 4.
    pub level_value: f64,
    /// Softmax-weighted expected level value on [0, 1].
    pub soft_value: f64,
}

impl BackwardMatch {
    /// EV(c) as the params ask.
    pub fn expressed(&self, params: &BackwardParams) -> f64 {
        match params.value {
            ExpressedValue::Nearest => self.level_value,
            ExpressedValue::Soft => self.soft_value,
        }
    }
}

/// The pool embedded once, for the backward map.
#[derive(Debug, Clone)]
pub struct PoolIndex {
    levels: Vec<u8>,
    embeddings: Vec<Vec<f32>>,
}

impl PoolIndex {
    pub fn build(pool: &StatementPool, embedder: &dyn SentenceEmbedder) -> Result<Self> {
        let (levels, texts): (Vec<u8>, Vec<&str>) = pool.iter().unzip();
        let embeddings = embed(embedder, &texts, "embedding the statement pool")?;
        Ok(PoolIndex { levels, embeddings })
    }

    /// From precomputed embeddings (one per pool statement, [`StatementPool::iter`] order).
    pub fn from_embeddings(levels: Vec<u8>, embeddings: Vec<Vec<f32>>) -> Result<Self> {
        if levels.len() != embeddings.len() || levels.is_empty() {
            return Err(ConfidenceError::Shape {
                what: "pool embeddings (one per statement)".into(),
                expected: levels.len(),
                found: embeddings.len(),
            });
        }
        if let Some(&bad) = levels.iter().find(|l| !(1..=5).contains(*l)) {
            return Err(ConfidenceError::InvalidParams(format!("pool level must be 1..=5, found {bad}")));
        }
        Ok(PoolIndex { levels, embeddings })
    }

    /// Backward map of generated statements (one embedder call for all of them).
    pub fn map(&self, statements: &[&str], embedder: &dyn SentenceEmbedder, params: &BackwardParams) -> Result<Vec<BackwardMatch>> {
        for (i, s) in statements.iter().enumerate() {
            if s.trim().is_empty() {
                return Err(ConfidenceError::NoLevel { index: i, text: s.to_string(), reason: "the statement is empty".into() });
            }
        }
        let emb = embed(embedder, statements, "embedding generated statements")?;
        emb.iter().enumerate().map(|(i, e)| self.map_embedding(i, statements[i], e, params)).collect()
    }

    /// Backward map of one statement embedding; `index`/`text` only name it in errors.
    pub fn map_embedding(&self, index: usize, text: &str, embedding: &[f32], params: &BackwardParams) -> Result<BackwardMatch> {
        if !(params.temperature.is_finite() && params.temperature > 0.0) {
            return Err(ConfidenceError::InvalidParams(format!(
                "backward.temperature must be finite and > 0, found {}",
                params.temperature
            )));
        }
        let no_level = |reason: String| ConfidenceError::NoLevel { index, text: text.to_string(), reason };
        let mut best_per_level = [f64::NEG_INFINITY; 5];
        let (mut nearest, mut best) = (0usize, f64::NEG_INFINITY);
        for (j, p) in self.embeddings.iter().enumerate() {
            let c = cosine(Location::item(index), embedding, p).map_err(|e| no_level(e.to_string()))?;
            if c > best {
                best = c;
                nearest = j;
            }
            let l = usize::from(self.levels[j] - 1);
            best_per_level[l] = best_per_level[l].max(c);
        }
        if let Some(floor) = params.min_cosine {
            if best < floor {
                return Err(no_level(format!("best cosine {best:.4} is below backward.min_cosine {floor}")));
            }
        }
        // Softmax over the levels present in the pool, shifted by the max for stability.
        let present: Vec<(usize, f64)> = best_per_level.iter().enumerate().filter(|(_, c)| c.is_finite()).map(|(l, &c)| (l, c)).collect();
        let z: Vec<f64> = present.iter().map(|&(_, c)| ((c - best) / params.temperature).exp()).collect();
        let total: f64 = z.iter().sum();
        let soft_value = present.iter().zip(&z).map(|(&(l, _), w)| w / total * level_value(l as u8 + 1)).sum();
        let level = self.levels[nearest];
        Ok(BackwardMatch { level, nearest, cosine: best, level_value: level_value(level), soft_value })
    }
}

fn embed(embedder: &dyn SentenceEmbedder, texts: &[&str], during: &'static str) -> Result<Vec<Vec<f32>>> {
    let out = embedder.embed(texts).map_err(|source| ConfidenceError::Encoder { during, source })?;
    if out.len() != texts.len() {
        return Err(ConfidenceError::Shape { what: format!("embeddings while {during}"), expected: texts.len(), found: out.len() });
    }
    Ok(out)
}
