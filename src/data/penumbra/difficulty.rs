//! Difficulty knobs, graded into levels.
//!
//! Each knob removes visual evidence a model needs, so that answers at higher levels are
//! genuinely uncertain from the pixels while the scene graph still knows the truth:
//! more objects and same-shape distractors (longer references, more to count), similar colors
//! (red beside orange), smaller objects (tiny at the top level), occlusion, lower contrast
//! against the background, blur (textures and small shapes merge) and pixel noise.

use serde::{Deserialize, Serialize};

/// The knobs of one difficulty level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelKnobs {
    /// Fewest objects in a scene.
    pub min_objects: usize,
    /// Most objects in a scene (fewer when the canvas is full).
    pub max_objects: usize,
    /// Radius of a small object as a fraction of the image side.
    pub small_radius: f32,
    /// Radius of a large object over that of a small one.
    pub large_ratio: f32,
    /// Probability that a new object is placed to overlap an earlier one.
    pub occlusion_prob: f32,
    /// Probability that a new object takes a color similar to an earlier object's.
    pub similar_color_prob: f32,
    /// Probability that a new object repeats an earlier object's shape.
    pub distractor_prob: f32,
    /// Gaussian pixel noise, standard deviation in 0–255 units.
    pub noise_sigma: f32,
    /// Gaussian blur, standard deviation in pixels (0 = sharp).
    pub blur_sigma: f32,
    /// Share of the object's color kept against the background (1 = full contrast).
    pub contrast: f32,
}

/// The ladder of levels, easiest first. The default has five levels, as the paper has five
/// confidence levels; nothing ties the two together, and any number of levels works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DifficultyLadder {
    pub levels: Vec<LevelKnobs>,
}

impl Default for DifficultyLadder {
    fn default() -> Self {
        let level = |objs: (usize, usize), r: f32, occ: f32, sim: f32, dis: f32, noise: f32, blur: f32, contrast: f32| LevelKnobs {
            min_objects: objs.0,
            max_objects: objs.1,
            small_radius: r,
            large_ratio: 1.7,
            occlusion_prob: occ,
            similar_color_prob: sim,
            distractor_prob: dis,
            noise_sigma: noise,
            blur_sigma: blur,
            contrast,
        };
        DifficultyLadder {
            levels: vec![
                // 0: a few large, clean, saturated, well-separated objects.
                level((3, 4), 0.085, 0.0, 0.0, 0.1, 0.0, 0.0, 1.0),
                // 1: more objects, a little noise, some similar colors.
                level((4, 5), 0.075, 0.1, 0.2, 0.25, 8.0, 0.0, 0.9),
                // 2: smaller, some occlusion, mild blur, washed-out colors.
                level((5, 6), 0.062, 0.25, 0.4, 0.4, 16.0, 0.6, 0.7),
                // 3: crowded, small, clearly blurred and noisy.
                level((6, 8), 0.05, 0.4, 0.6, 0.5, 26.0, 1.0, 0.5),
                // 4: tiny objects, heavy noise and blur, low contrast: perception is a guess at times.
                level((7, 9), 0.04, 0.5, 0.8, 0.6, 32.0, 1.2, 0.42),
            ],
        }
    }
}

impl DifficultyLadder {
    pub fn validate(&self) -> Result<(), String> {
        if self.levels.is_empty() {
            return Err("difficulty ladder: expected at least one level, found none".into());
        }
        for (i, k) in self.levels.iter().enumerate() {
            let unit = |v: f32, name: &str| {
                if !(0.0..=1.0).contains(&v) || !v.is_finite() {
                    Err(format!("level {i}: `{name}` must be in [0, 1], found {v}"))
                } else {
                    Ok(())
                }
            };
            unit(k.occlusion_prob, "occlusion_prob")?;
            unit(k.similar_color_prob, "similar_color_prob")?;
            unit(k.distractor_prob, "distractor_prob")?;
            unit(k.contrast, "contrast")?;
            if k.min_objects == 0 || k.min_objects > k.max_objects || k.max_objects > 32 {
                return Err(format!("level {i}: expected 1 ≤ min_objects ≤ max_objects ≤ 32, found {}..{}", k.min_objects, k.max_objects));
            }
            if !(k.small_radius > 0.0 && k.small_radius < 0.25) {
                return Err(format!("level {i}: `small_radius` must be in (0, 0.25), found {}", k.small_radius));
            }
            if !(k.large_ratio >= 1.2 && k.large_ratio <= 3.0) {
                return Err(format!("level {i}: `large_ratio` must be in [1.2, 3], found {}", k.large_ratio));
            }
            if !(k.noise_sigma >= 0.0 && k.noise_sigma <= 128.0) {
                return Err(format!("level {i}: `noise_sigma` must be in [0, 128], found {}", k.noise_sigma));
            }
            if !(k.blur_sigma >= 0.0 && k.blur_sigma <= 8.0) {
                return Err(format!("level {i}: `blur_sigma` must be in [0, 8], found {}", k.blur_sigma));
            }
        }
        Ok(())
    }
}
