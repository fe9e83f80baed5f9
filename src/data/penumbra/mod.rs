//! Penumbra: the embedded benchmark. Scenes of simple objects are drawn from a seeded scene
//! graph, degraded by difficulty knobs until what a model can see is genuinely uncertain, and
//! asked about with questions whose answers and two-level reference chains come from the graph.
//!
//! Deterministic: item `i` depends only on (`seed`, `i`, the params), through its own ChaCha8
//! stream, so generation is parallel (rayon) and any subset can be regenerated alone.
//!
//! Splits: `train`/`val`/`test` share one distribution; `ood` scenes use a style never seen
//! there (a dark background) and (shape, color) combinations held out of the other splits, as
//! CulturalVQA is out of domain for the paper.

pub mod captions;
pub mod difficulty;
pub mod questions;
pub mod render;
pub mod scene;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};

pub use difficulty::{DifficultyLadder, LevelKnobs};
pub use questions::{Question, QuestionKind};
pub use scene::{Attribute, Color, Desc, Object, Relation, Scene, Shape, Size, Style, Texture};

use super::{DataError, ImageData, Item, ReferenceChain, Result};

/// The source name in [`Item::source`].
pub const SOURCE: &str = "penumbra";
/// Bumped whenever the same params would give different items.
pub const GENERATOR_VERSION: u32 = 1;

/// Shares of the four splits; they must sum to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitFractions {
    pub train: f64,
    pub val: f64,
    pub test: f64,
    pub ood: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions { train: 0.7, val: 0.1, test: 0.1, ood: 0.1 }
    }
}

/// Everything that decides the generated items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PenumbraParams {
    pub seed: u64,
    pub n_items: usize,
    /// Side of the square images, in pixels. 96 keeps tiny objects a few pixels wide at the top
    /// level while 100k items stay about 1–2 GB of PNG.
    pub image_size: u32,
    pub splits: SplitFractions,
    pub ladder: DifficultyLadder,
    /// (shape, color) combinations that appear only in the `ood` split.
    pub held_out: Vec<(Shape, Color)>,
    /// A relation (left of, above, …) is asserted only when centers are at least this far apart
    /// on its axis, as a fraction of the image side; closer pairs are never asked about.
    pub relation_margin: f32,
    /// Occlusion never covers more of an object than 1 − this fraction.
    pub min_visible: f32,
    /// Relative frequency of each question kind, aligned with [`QuestionKind::ALL`].
    pub question_weights: Vec<f32>,
    /// Objects per scene that get a caption (plus one relational caption).
    pub caption_objects: usize,
}

impl Default for PenumbraParams {
    fn default() -> Self {
        PenumbraParams {
            seed: 0,
            n_items: 1000,
            image_size: 96,
            splits: SplitFractions::default(),
            ladder: DifficultyLadder::default(),
            held_out: vec![
                (Shape::Circle, Color::Green),
                (Shape::Square, Color::Purple),
                (Shape::Triangle, Color::Blue),
                (Shape::Diamond, Color::Red),
                (Shape::Hexagon, Color::Yellow),
            ],
            relation_margin: 0.08,
            min_visible: 0.5,
            question_weights: vec![1.0; QuestionKind::ALL.len()],
            caption_objects: 4,
        }
    }
}

impl PenumbraParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::Params(m));
        self.ladder.validate().map_err(DataError::Params)?;
        if !(32..=1024).contains(&self.image_size) {
            return bad(format!("image_size: expected 32..=1024 pixels, found {}", self.image_size));
        }
        let s = &self.splits;
        let parts = [s.train, s.val, s.test, s.ood];
        if parts.iter().any(|p| !p.is_finite() || *p < 0.0) || ((parts.iter().sum::<f64>()) - 1.0).abs() > 1e-6 {
            return bad(format!("splits: expected non-negative fractions summing to 1, found {parts:?}"));
        }
        if s.ood > 0.0 && self.held_out.is_empty() {
            return bad("held_out: the ood split needs at least one held-out (shape, color) pair".into());
        }
        if !(0.0..0.5).contains(&self.relation_margin) {
            return bad(format!("relation_margin: expected [0, 0.5), found {}", self.relation_margin));
        }
        if !(0.05..=1.0).contains(&self.min_visible) {
            return bad(format!("min_visible: expected [0.05, 1], found {}", self.min_visible));
        }
        if self.question_weights.len() != QuestionKind::ALL.len()
            || self.question_weights.iter().any(|w| !w.is_finite() || *w < 0.0)
            || self.question_weights.iter().sum::<f32>() <= 0.0
        {
            return bad(format!(
                "question_weights: expected {} non-negative weights with a positive sum, found {:?}",
                QuestionKind::ALL.len(),
                self.question_weights
            ));
        }
        Ok(())
    }

    /// The split of item `index`: contiguous blocks train, val, test, ood.
    pub fn split_of(&self, index: usize) -> &'static str {
        let n = self.n_items as f64;
        let s = &self.splits;
        let val_start = (n * s.train).round() as usize;
        let test_start = (n * (s.train + s.val)).round() as usize;
        let ood_start = (n * (s.train + s.val + s.test)).round() as usize;
        if index < val_start {
            "train"
        } else if index < test_start {
            "val"
        } else if index < ood_start {
            "test"
        } else {
            "ood"
        }
    }
}

/// One generated item with the scene graph and question it came from.
#[derive(Debug, Clone)]
pub struct Generated {
    pub item: Item,
    pub scene: Scene,
    pub question: Question,
}

/// The scene, question, captions and hard negatives of item `index`, without rendering.
/// `params` must be valid ([`PenumbraParams::validate`]).
fn sample(params: &PenumbraParams, index: usize) -> (Scene, Question, Vec<String>, Vec<String>) {
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    rng.set_stream(index as u64);
    let split = params.split_of(index);
    let ood = split == "ood";
    let level = rng.random_range(0..params.ladder.levels.len());
    let knobs = &params.ladder.levels[level];
    let style = if ood { Style::Dark } else { Style::Plain };
    let spec = scene::SceneSpec {
        width: params.image_size,
        height: params.image_size,
        knobs,
        held_out: &params.held_out,
        ood,
        min_visible: params.min_visible,
    };
    let objects = scene::sample_objects(&mut rng, &spec);
    let scene = Scene {
        width: params.image_size,
        height: params.image_size,
        style,
        level: level as u32,
        objects,
        noise_sigma: scene::quantize(knobs.noise_sigma),
        blur_sigma: scene::quantize(knobs.blur_sigma),
        contrast: scene::quantize(knobs.contrast),
        noise_seed: rng.random(),
    };
    let margin = params.relation_margin * params.image_size as f32;
    let question = questions::sample_question(&mut rng, &scene, &params.question_weights, margin);
    let (caps, negs) = captions::captions(&mut rng, &scene, margin, params.caption_objects);
    (scene, question, caps, negs)
}

/// Salt of the stream [`extra_questions`] draws from, so that it never repeats the benchmark's own draws.
const EXTRA_QUESTIONS_SALT: u64 = 0x6578_7472_615f_7175; // "extra_qu"

/// `k` more questions on item `index`'s scene, drawn as the benchmark draws its own (the same kind weights and
/// relation margin) but from a stream of their own, so that the benchmark's items stay as they are. The demo
/// MLLM trains on them to see more instructions per training image, as LLaVA's instruction data has several
/// per image: with one question per image, 1,400 chains are too few for a decoder trained from scratch to learn to
/// follow the question rather than its priors.
pub fn extra_questions(params: &PenumbraParams, index: usize, scene: &Scene, k: usize) -> Vec<Question> {
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed ^ EXTRA_QUESTIONS_SALT);
    rng.set_stream(index as u64);
    let margin = params.relation_margin * params.image_size as f32;
    (0..k).map(|_| questions::sample_question(&mut rng, scene, &params.question_weights, margin)).collect()
}

/// Generate item `index` (scene, question, chain, captions, rendered PNG).
pub fn generate_one(params: &PenumbraParams, index: usize) -> Result<Generated> {
    params.validate()?;
    generate_valid(params, index)
}

fn generate_valid(params: &PenumbraParams, index: usize) -> Result<Generated> {
    let (scene, question, caps, negs) = sample(params, index);
    let png = render::encode_png(&render::render(&scene))?;
    let id = format!("penumbra-{}-{index:06}", params.seed);
    let mut meta = Map::new();
    meta.insert("generator".into(), json!({"name": SOURCE, "version": GENERATOR_VERSION, "seed": params.seed, "index": index}));
    meta.insert("question_kind".into(), serde_json::to_value(question.kind).expect("enum serializes"));
    meta.insert("perception_objects".into(), json!(question.perception_objects));
    meta.insert("scene".into(), serde_json::to_value(&scene).expect("scene serializes"));
    let item = Item {
        id: id.clone(),
        source: SOURCE.into(),
        split: params.split_of(index).into(),
        question: question.text.clone(),
        image: Some(ImageData { bytes: Some(png), path: Some(format!("{id}.png")) }),
        choices: question.choices.clone(),
        correct_choice: Some(question.correct_choice as u32),
        direct_answers: question.direct_answers.clone(),
        answer: Some(question.answer.clone()),
        chain: ReferenceChain { perception: question.perception.clone(), reasoning: question.reasoning.clone() },
        difficulty: Some(scene.level),
        captions: caps,
        hard_negatives: negs,
        meta,
    };
    Ok(Generated { item, scene, question })
}

/// Generate all `params.n_items` items in parallel (order = index order, independent of threads).
pub fn generate(params: &PenumbraParams) -> Result<Vec<Item>> {
    generate_range(params, 0..params.n_items)
}

/// Generate the items with indices in `range` (of `params.n_items`), in parallel: for writing a
/// large benchmark in chunks (100k items are about 2 GB of PNG) without holding it all.
pub fn generate_range(params: &PenumbraParams, range: std::ops::Range<usize>) -> Result<Vec<Item>> {
    params.validate()?;
    if range.end > params.n_items || range.start > range.end {
        return Err(DataError::Params(format!("item range {}..{} is not within 0..{} (n_items)", range.start, range.end, params.n_items)));
    }
    range.into_par_iter().map(|i| generate_valid(params, i).map(|g| g.item)).collect()
}

/// Read the scene graph back from an item's `meta` (for checks and display).
pub fn scene_of(item: &Item) -> Result<Scene> {
    let v = item.meta.get("scene").ok_or_else(|| DataError::Schema(format!("item {}: meta has no `scene`", item.id)))?;
    serde_json::from_value(v.clone()).map_err(|e| DataError::Schema(format!("item {}: meta.scene is not a scene graph: {e}", item.id)))
}
