//! Qwen2-VL's image processor (`Qwen2VLImageProcessor`, the PIL one), bit for bit: `smart_resize` (sides
//! rounded to multiples of patch·merge with Python's half-to-even `round`, then scaled into
//! [min_pixels, max_pixels]), Pillow bicubic resize on uint8, rescale and normalize as CLIP does, and the
//! patchification into rows of `C · temporal_patch · patch · patch` values in merge-window order (each
//! 2×2 window of patches on consecutive rows; a still image is repeated over the temporal patch).
use std::path::Path;

use serde::Deserialize;

use super::clip::{resize_bicubic_pil, ClipPreprocess, CLIP_MEAN, CLIP_STD};
use super::{EncoderError, Result};

/// transformers' `smart_resize(height, width, factor, min_pixels, max_pixels)` → (height, width).
/// An aspect ratio above 200 is refused, as transformers does; `item` names the image in the error.
pub fn smart_resize(height: i64, width: i64, factor: i64, min_pixels: i64, max_pixels: i64, item: &str) -> Result<(i64, i64)> {
    if height <= 0 || width <= 0 {
        return Err(EncoderError::BadInput { item: item.into(), reason: format!("image of {height}x{width} has no pixels") });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let aspect = h.max(w) / h.min(w);
    if aspect > 200.0 {
        return Err(EncoderError::BadInput {
            item: item.into(),
            reason: format!(
                "aspect ratio {aspect} of a {height}x{width} (height x width) image exceeds 200, which Qwen2-VL's processor refuses"
            ),
        });
    }
    // Python's round() on floats rounds half to even; f64::round would round half away from zero.
    let mut hb = (h / f).round_ties_even() as i64 * factor;
    let mut wb = (w / f).round_ties_even() as i64 * factor;
    if hb * wb > max_pixels {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        hb = factor.max((h / beta / f).floor() as i64 * factor);
        wb = factor.max((w / beta / f).floor() as i64 * factor);
    } else if hb * wb < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() as i64 * factor;
        wb = (w * beta / f).ceil() as i64 * factor;
    }
    Ok((hb, wb))
}

/// The settings of a Qwen2-VL `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlImageProcessor {
    pub patch_size: i64,
    pub merge_size: i64,
    pub temporal_patch_size: i64,
    pub min_pixels: i64,
    pub max_pixels: i64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for Qwen2VlImageProcessor {
    /// transformers' class defaults (the hub's Qwen2-VL-7B-Instruct file raises max_pixels to 12845056).
    fn default() -> Self {
        Self {
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }
}

/// One preprocessed image.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlPixels {
    /// `[grid_h * grid_w, 3 * temporal * patch * patch]` row-major.
    pub patches: Vec<f32>,
    /// (t, h, w) in patches: `image_grid_thw`.
    pub grid_thw: [i64; 3],
    /// The resized (height, width).
    pub resized: (i64, i64),
}

impl Qwen2VlPixels {
    /// LLM tokens the image becomes after the 2×2 merger.
    pub fn num_image_tokens(&self, merge_size: i64) -> i64 {
        self.grid_thw.iter().product::<i64>() / (merge_size * merge_size)
    }
}

#[derive(Debug, Deserialize)]
struct SizeField {
    #[serde(default)]
    shortest_edge: Option<i64>,
    #[serde(default)]
    longest_edge: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    image_processor_type: Option<String>,
    #[serde(default)]
    min_pixels: Option<i64>,
    #[serde(default)]
    max_pixels: Option<i64>,
    #[serde(default)]
    size: Option<SizeField>,
    #[serde(default)]
    patch_size: Option<i64>,
    #[serde(default)]
    merge_size: Option<i64>,
    #[serde(default)]
    temporal_patch_size: Option<i64>,
    #[serde(default)]
    image_mean: Option<[f32; 3]>,
    #[serde(default)]
    image_std: Option<[f32; 3]>,
    #[serde(default)]
    resample: Option<i64>,
    #[serde(default)]
    rescale_factor: Option<f64>,
    #[serde(default)]
    do_resize: Option<bool>,
    #[serde(default)]
    do_rescale: Option<bool>,
    #[serde(default)]
    do_normalize: Option<bool>,
    #[serde(default)]
    do_convert_rgb: Option<bool>,
}

impl Qwen2VlImageProcessor {
    /// Reads `dir/preprocessor_config.json`: `min_pixels`/`max_pixels` (older files) or
    /// `size.shortest_edge`/`size.longest_edge` (newer ones); refuses settings computed otherwise here.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let bad = |reason: String| EncoderError::Config { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = &raw.image_processor_type {
            if !t.starts_with("Qwen2VLImageProcessor") {
                return Err(bad(format!("image_processor_type: expected Qwen2VLImageProcessor, found {t:?}")));
            }
        }
        for (field, v) in [
            ("do_resize", raw.do_resize),
            ("do_rescale", raw.do_rescale),
            ("do_normalize", raw.do_normalize),
            ("do_convert_rgb", raw.do_convert_rgb),
        ] {
            if v == Some(false) {
                return Err(bad(format!("{field} = false is not supported")));
            }
        }
        if raw.resample.is_some_and(|r| r != 3) {
            return Err(bad(format!("resample: only 3 (PIL bicubic) is implemented, found {:?}", raw.resample)));
        }
        if raw.rescale_factor.is_some_and(|f| (f - 1.0 / 255.0).abs() > 1e-12) {
            return Err(bad(format!("rescale_factor: only 1/255 is implemented, found {:?}", raw.rescale_factor)));
        }
        let d = Self::default();
        let size = raw.size.as_ref();
        let p = Self {
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            merge_size: raw.merge_size.unwrap_or(d.merge_size),
            temporal_patch_size: raw.temporal_patch_size.unwrap_or(d.temporal_patch_size),
            min_pixels: raw.min_pixels.or(size.and_then(|s| s.shortest_edge)).unwrap_or(d.min_pixels),
            max_pixels: raw.max_pixels.or(size.and_then(|s| s.longest_edge)).unwrap_or(d.max_pixels),
            image_mean: raw.image_mean.unwrap_or(d.image_mean),
            image_std: raw.image_std.unwrap_or(d.image_std),
        };
        if p.patch_size <= 0 || p.merge_size <= 0 || p.temporal_patch_size <= 0 {
            return Err(bad(format!(
                "patch_size, merge_size and temporal_patch_size must be positive, found {} {} {}",
                p.patch_size, p.merge_size, p.temporal_patch_size
            )));
        }
        if !(0 < p.min_pixels && p.min_pixels <= p.max_pixels) {
            return Err(bad(format!("min_pixels {} and max_pixels {} must satisfy 0 < min <= max", p.min_pixels, p.max_pixels)));
        }
        Ok(p)
    }

    /// The resized size of an image of (height, width).
    pub fn resized_size(&self, height: i64, width: i64, item: &str) -> Result<(i64, i64)> {
        smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels, item)
    }

    /// `pixel_values` rows and `image_grid_thw` of one image.
    pub fn preprocess(&self, img: &image::RgbImage, item: &str) -> Result<Qwen2VlPixels> {
        let (h0, w0) = (img.height() as i64, img.width() as i64);
        let (h, w) = self.resized_size(h0, w0, item)?;
        let resized = if (h, w) == (h0, w0) { img.clone() } else { resize_bicubic_pil(img, w as u32, h as u32) };
        let norm =
            ClipPreprocess { image_mean: self.image_mean, image_std: self.image_std, ..Default::default() }.normalize(resized.as_raw());
        let (p, m, t) = (self.patch_size as usize, self.merge_size as usize, self.temporal_patch_size as usize);
        let (gh, gw) = (h as usize / p, w as usize / p);
        let (w, hw) = (w as usize, (h * w as i64) as usize);
        let row_len = 3 * t * p * p;
        let mut patches = Vec::with_capacity(gh * gw * row_len);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (py0, px0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                        for c in 0..3 {
                            for _ in 0..t {
                                for py in 0..p {
                                    let s = c * hw + (py0 + py) * w + px0;
                                    patches.extend_from_slice(&norm[s..s + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Qwen2VlPixels { patches, grid_thw: [1, gh as i64, gw as i64], resized: (h, w as i64) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: sides that are odd multiples of 14 round half to even (70/28 = 2.5 → 2).
    #[test]
    fn smart_resize_rounds_half_to_even_and_scales_into_the_pixel_range() {
        let r = |h, w| smart_resize(h, w, 28, 56 * 56, 28 * 28 * 1280, "t").unwrap();
        assert_eq!(r(70, 126), (56, 112));
        assert_eq!(r(182, 300), (168, 308));
        assert_eq!(r(56, 84), (56, 84));
        // below min_pixels: 20x20 → beta = sqrt(3136/400) = 2.8, ceil(20*2.8/28) = 2 → 56
        assert_eq!(r(20, 20), (56, 56));
        // above max_pixels (28*28*64 = 50176): 500x400, beta = sqrt(200000/50176) = 1.9965..,
        // floor(500/beta/28) = 8 → 224, floor(400/beta/28) = 7 → 196
        assert_eq!(smart_resize(500, 400, 28, 3136, 28 * 28 * 64, "t").unwrap(), (224, 196));
        let e = smart_resize(30, 6030, 28, 3136, 1 << 30, "img.png").unwrap_err().to_string();
        assert!(e.contains("img.png") && e.contains("aspect ratio 201"), "{e}");
    }
}
