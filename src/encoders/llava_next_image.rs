//! LLaVA-NeXT's image processor (`LlavaNextImageProcessor`, the PIL one transformers calls "slow"), bit for
//! bit: pick the best (height, width) canvas from `image_grid_pinpoints`, resize the image into it keeping
//! its aspect (Pillow bicubic on uint8), pad with black (odd pixel right/bottom), cut the canvas into
//! row-major tiles, put the whole image squashed to one tile first, then run each tile through CLIP's
//! preprocessing (shortest-edge resize, center crop, rescale, normalize). The resolution arithmetic is
//! `mllm::llava_next`'s (shared with the model's unpadding and token count); the resampling and the
//! normalization are [`super::clip`]'s.
use std::path::Path;

use anyres::{patch_output_size, patch_padding, select_best_resolution};
use serde::Deserialize;

use super::clip::{resize_bicubic_pil, ClipPreprocess};
use super::{EncoderError, Result};

/// The settings of `preprocessor_config.json` that the processor uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaNextImageProcessor {
    /// The per-tile CLIP preprocessing (`size.shortest_edge`, `crop_size`, mean, std).
    pub clip: ClipPreprocess,
    /// (height, width) canvases.
    pub pinpoints: Vec<(i64, i64)>,
}

/// One preprocessed image.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyresPixels {
    /// Channel-first pixel values of the base image then the tiles: `[n_patches, 3, tile, tile]` flat.
    pub pixel_values: Vec<f32>,
    pub n_patches: usize,
    /// The original (height, width): `image_sizes` in transformers.
    pub size: (i64, i64),
    /// The chosen (height, width) canvas.
    pub canvas: (i64, i64),
}

#[derive(Debug, Deserialize)]
struct SizeField {
    #[serde(default)]
    shortest_edge: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
    #[serde(default)]
    width: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    image_processor_type: Option<String>,
    size: SizeField,
    crop_size: SizeField,
    image_grid_pinpoints: Vec<Vec<i64>>,
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
    do_center_crop: Option<bool>,
    #[serde(default)]
    do_rescale: Option<bool>,
    #[serde(default)]
    do_normalize: Option<bool>,
    #[serde(default)]
    do_convert_rgb: Option<bool>,
}

impl LlavaNextImageProcessor {
    /// Reads a folder's `preprocessor_config.json`, refusing settings computed otherwise than here.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let bad = |reason: String| EncoderError::Config { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = &raw.image_processor_type {
            if !t.starts_with("LlavaNextImageProcessor") {
                return Err(bad(format!("image_processor_type: expected LlavaNextImageProcessor, found {t:?}")));
            }
        }
        for (field, v) in [
            ("do_resize", raw.do_resize),
            ("do_center_crop", raw.do_center_crop),
            ("do_rescale", raw.do_rescale),
            ("do_normalize", raw.do_normalize),
            ("do_convert_rgb", raw.do_convert_rgb),
        ] {
            if v == Some(false) {
                return Err(bad(format!("{field} = false is not supported (LLaVA-NeXT checkpoints use true)")));
            }
        }
        if let Some(r) = raw.resample {
            if r != 3 {
                return Err(bad(format!("resample: only 3 (PIL bicubic) is implemented, found {r}")));
            }
        }
        if let Some(f) = raw.rescale_factor {
            if (f - 1.0 / 255.0).abs() > 1e-12 {
                return Err(bad(format!("rescale_factor: only 1/255 is implemented, found {f}")));
            }
        }
        let edge = raw.size.shortest_edge.ok_or_else(|| bad("size.shortest_edge: missing".into()))?;
        let (ch, cw) = (raw.crop_size.height, raw.crop_size.width);
        let crop = match (ch, cw) {
            (Some(h), Some(w)) if h == w && h > 0 => h,
            _ => return Err(bad(format!("crop_size: expected equal positive height and width, found {ch:?} x {cw:?}"))),
        };
        let mut pinpoints = Vec::new();
        for (i, p) in raw.image_grid_pinpoints.iter().enumerate() {
            if p.len() != 2 || p[0] <= 0 || p[1] <= 0 || p[0] % crop as i64 != 0 || p[1] % crop as i64 != 0 {
                return Err(bad(format!(
                    "image_grid_pinpoints[{i}]: expected [height, width], positive multiples of crop_size {crop}, found {p:?}"
                )));
            }
            pinpoints.push((p[0], p[1]));
        }
        if pinpoints.is_empty() {
            return Err(bad("image_grid_pinpoints: empty".into()));
        }
        let mut clip = ClipPreprocess { shortest_edge: edge, crop, ..Default::default() };
        if let Some(m) = raw.image_mean {
            clip.image_mean = m;
        }
        if let Some(s) = raw.image_std {
            clip.image_std = s;
        }
        Ok(Self { clip, pinpoints })
    }

    /// The tiles as uint8 RGB `[crop*crop*3]` each (base first), before rescaling and normalization.
    pub fn tiles(&self, img: &image::RgbImage) -> (Vec<Vec<u8>>, (i64, i64)) {
        let (h, w) = (img.height() as i64, img.width() as i64);
        let tile = self.clip.crop as i64;
        let canvas = select_best_resolution((h, w), &self.pinpoints);
        let (rh, rw) = patch_output_size((h, w), canvas);
        let resized = if (rh, rw) == (h, w) { img.clone() } else { resize_bicubic_pil(img, rw as u32, rh as u32) };
        let (top, _, left, _) = patch_padding((rh, rw), canvas);
        let (ch, cw) = canvas;
        let mut padded = vec![0u8; (ch * cw * 3) as usize];
        let src = resized.as_raw();
        for y in 0..rh {
            let d = (((y + top) * cw + left) * 3) as usize;
            let s = (y * rw * 3) as usize;
            padded[d..d + (rw * 3) as usize].copy_from_slice(&src[s..s + (rw * 3) as usize]);
        }
        let edge = self.clip.shortest_edge;
        let base = if (edge, edge) == img.dimensions() { img.clone() } else { resize_bicubic_pil(img, edge, edge) };
        let mut out = vec![self.clip.resize_and_crop(&base)];
        for ty in 0..ch / tile {
            for tx in 0..cw / tile {
                let mut t = Vec::with_capacity((tile * tile * 3) as usize);
                for y in 0..tile {
                    let s = ((((ty * tile + y) * cw) + tx * tile) * 3) as usize;
                    t.extend_from_slice(&padded[s..s + (tile * 3) as usize]);
                }
                let t = image::RgbImage::from_raw(tile as u32, tile as u32, t).expect("tile size");
                out.push(self.clip.resize_and_crop(&t));
            }
        }
        (out, canvas)
    }

    /// `pixel_values` of one image, as transformers returns them before batch padding.
    pub fn preprocess(&self, img: &image::RgbImage) -> AnyresPixels {
        let (tiles, canvas) = self.tiles(img);
        let n_patches = tiles.len();
        let pixel_values = tiles.iter().flat_map(|t| self.clip.normalize(t)).collect();
        AnyresPixels { pixel_values, n_patches, size: (img.height() as i64, img.width() as i64), canvas }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processor() -> LlavaNextImageProcessor {
        LlavaNextImageProcessor {
            clip: ClipPreprocess { shortest_edge: 4, crop: 4, ..Default::default() },
            pinpoints: vec![(4, 8), (8, 4), (8, 8)],
        }
    }

    /// A 3x4 (h x w) image: every canvas holds it whole, so the tie goes to the first, (4, 8). It is
    /// resized to 4 high and ceil(4 * 4/3) = 6 wide, padded 1 column left and 1 right; the tiles are the
    /// left and right halves (a constant image stays constant under the resize).
    #[test]
    fn canvas_padding_and_tile_order_by_hand() {
        let img = image::RgbImage::from_fn(4, 3, |_, _| image::Rgb([200, 0, 0]));
        let p = processor();
        let (tiles, canvas) = p.tiles(&img);
        assert_eq!(canvas, (4, 8));
        assert_eq!(tiles.len(), 3);
        // left tile: column 0 is padding (black), columns 1..4 image
        let left = &tiles[1];
        for y in 0..4 {
            assert_eq!(left[(y * 4) * 3], 0, "row {y} left padding");
            assert_ne!(left[(y * 4 + 1) * 3], 0, "row {y} first image pixel");
        }
        let right = &tiles[2];
        for y in 0..4 {
            assert_ne!(right[(y * 4 + 2) * 3], 0, "row {y} last image pixel");
            assert_eq!(right[(y * 4 + 3) * 3], 0, "row {y} right padding");
        }
    }
}
