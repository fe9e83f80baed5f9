//! CLIP: image preprocessing identical to Hugging Face's `CLIPImageProcessor`, the image tower (projected
//! embedding + penultimate-layer patch features, what LLaVA's projector reads), the text tower with CLIP's
//! BPE tokenizer (77 tokens, truncation keeping the end token), and CLIPScore.
//!
//! A model folder holds `image.onnx`, `text.onnx`, `tokenizer.json` and `clip_config.json`
//! (`scripts/export_onnx.py clip --src HF_FOLDER --out DIR` writes them for ViT-B/32, ViT-L/14-336, …).
use std::path::{Path, PathBuf};

use ort::value::TensorElementType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::batching::{self, BatchPolicy};
use super::runtime::{f32_input, i64_input, OnnxModel, Port, SessionOptions};
use super::text::TextTokenizer;
use super::{check_finite, Embeddings, EncoderError, Result};

/// OpenAI CLIP's normalization constants (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// `CLIPImageProcessor`'s settings: resize the shortest side (bicubic, Pillow's fixed-point kernel), center
/// crop, rescale by 1/255, normalize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipPreprocess {
    pub shortest_edge: u32,
    pub crop: u32,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for ClipPreprocess {
    fn default() -> Self {
        Self { shortest_edge: 224, crop: 224, image_mean: CLIP_MEAN, image_std: CLIP_STD }
    }
}

/// `clip_config.json` written by `scripts/export_onnx.py`.
#[derive(Debug, Clone, Deserialize)]
struct ClipFolderConfig {
    shortest_edge: u32,
    crop_size: u32,
    image_mean: [f32; 3],
    image_std: [f32; 3],
    #[serde(default = "default_max_text")]
    max_text_tokens: usize,
}

fn default_max_text() -> usize {
    77
}

// ------------------------------------------------------------------ decoding ---------------------------------

/// Decodes an image file to RGB8, as `PIL.Image.open(p).convert("RGB")` (alpha composited on white, as
/// transformers' `convert_to_rgb` does; JPEGs through libjpeg as Pillow, see [`super::jpeg`]). Unreadable, truncated or empty images are errors naming the file.
pub fn decode_image_file(path: &Path) -> Result<image::RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| EncoderError::Image { item: path.display().to_string(), reason: e.to_string() })?;
    decode_image_bytes(&bytes, &path.display().to_string())
}

/// [`decode_image_file`] on bytes; `item` names them in errors.
pub fn decode_image_bytes(bytes: &[u8], item: &str) -> Result<image::RgbImage> {
    let err = |reason: String| EncoderError::Image { item: item.to_string(), reason };
    if bytes.is_empty() {
        return Err(err("empty file".into()));
    }
    let format = image::guess_format(bytes).map_err(|e| err(format!("unrecognised image format: {e}")))?;
    if format == image::ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // JPEG decoders fill a cut-off scan with grey instead of failing: catch it here.
        return Err(err("truncated JPEG (no end-of-image marker)".into()));
    }
    if format == image::ImageFormat::Jpeg {
        if let Some(rgb) = super::jpeg::decode_jpeg_like_pil(bytes, item)? {
            return Ok(rgb);
        }
    }
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| err(format!("cannot decode {format:?}: {e}")))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(err(format!("image has no pixels ({}x{})", img.width(), img.height())));
    }
    Ok(match img {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        other if other.color().has_alpha() => {
            let rgba = other.to_rgba8();
            let (w, h) = rgba.dimensions();
            image::RgbImage::from_fn(w, h, |x, y| {
                let p = rgba.get_pixel(x, y).0;
                let a = p[3] as u32;
                let c = |v: u8| ((v as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
                image::Rgb([c(p[0]), c(p[1]), c(p[2])])
            })
        }
        other => other.to_rgb8(),
    })
}

fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    // the EOI marker FF D9, allowing trailing padding bytes some writers add
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

// ------------------------------------------------------------------ Pillow's bicubic resample --------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first source index, tap count, and fixed-point weights (`ksize` per pixel).
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` (libImaging/Resample.c), box = the whole image.
fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero, as `as` does
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let count = xmax.max(0) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(count) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..count {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin as usize, count));
    }
    Coefficients { ksize, bounds, weights }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass: rows `rows` of `src` (`in_w` wide, RGB) resampled to `out_w`, 8-bit.
fn horizontal_pass(src: &[u8], in_w: usize, rows: std::ops::Range<usize>, out_w: usize) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let horiz = coefficients(in_w, out_w);
    let first = rows.start;
    let mut out = vec![0u8; rows.len() * out_w * 3];
    out.par_chunks_mut(out_w * 3).enumerate().for_each(|(r, out_row)| {
        let in_row = &src[(first + r) * in_w * 3..(first + r + 1) * in_w * 3];
        for xx in 0..out_w {
            let (xmin, count) = horiz.bounds[xx];
            let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + count];
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (x, &w) in k.iter().enumerate() {
                let p = (xmin + x) * 3;
                s0 += in_row[p] as i64 * w as i64;
                s1 += in_row[p + 1] as i64 * w as i64;
                s2 += in_row[p + 2] as i64 * w as i64;
            }
            out_row[xx * 3] = clip8(s0);
            out_row[xx * 3 + 1] = clip8(s1);
            out_row[xx * 3 + 2] = clip8(s2);
        }
    });
    out
}

/// Vertical pass: `src` (`width` wide, RGB, its first row being source row `row_offset`) resampled
/// with `vert` to `vert.bounds.len()` rows, 8-bit.
fn vertical_pass(src: &[u8], width: usize, vert: &Coefficients, row_offset: usize) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let out_h = vert.bounds.len();
    let mut out = vec![0u8; out_h * width * 3];
    out.par_chunks_mut(width * 3).enumerate().for_each(|(yy, out_row)| {
        let (ymin, count) = vert.bounds[yy];
        let ymin = ymin - row_offset;
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + count];
        for c in 0..width * 3 {
            let mut s = half;
            for (y, &w) in k.iter().enumerate() {
                s += src[(ymin + y) * width * 3 + c] as i64 * w as i64;
            }
            out_row[c] = clip8(s);
        }
    });
    out
}

/// Resizes like `PIL.Image.resize((w, h), Image.BICUBIC)` on an RGB image, bit for bit, with Pillow 13's
/// pass order: when the height shrinks by more than twice what the width shrinks
/// (`in_h - out_h > 2 · (in_w - out_w)`), the vertical pass runs first over every column, then the
/// horizontal pass; otherwise the horizontal pass runs first (over only the rows the vertical pass
/// reads), then the vertical pass. Each pass rounds to 8 bits, so the order changes results by ±1.
/// (Pillow ≤ 12 always ran the horizontal pass first.)
pub fn resize_bicubic_pil(src: &image::RgbImage, out_w: u32, out_h: u32) -> image::RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let (out_w, out_h) = (out_w as usize, out_h as usize);
    let src_raw = src.as_raw();
    let (need_h, need_v) = (in_w != out_w, in_h != out_h);
    let shrink_h = in_h as i64 - out_h as i64;
    let vertical_first = shrink_h > 0 && shrink_h > (in_w as i64 - out_w as i64) * 2;
    let out = if vertical_first {
        let v = vertical_pass(src_raw, in_w, &coefficients(in_h, out_h), 0);
        if need_h {
            horizontal_pass(&v, in_w, 0..out_h, out_w)
        } else {
            v
        }
    } else if need_v {
        let vert = coefficients(in_h, out_h);
        let first = vert.bounds[0].0;
        let last = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;
        if need_h {
            vertical_pass(&horizontal_pass(src_raw, in_w, first..last, out_w), out_w, &vert, first)
        } else {
            vertical_pass(src_raw, in_w, &vert, 0)
        }
    } else if need_h {
        horizontal_pass(src_raw, in_w, 0..in_h, out_w)
    } else {
        src_raw.clone()
    };
    image::RgbImage::from_raw(out_w as u32, out_h as u32, out).expect("sizes match")
}

// ------------------------------------------------------------------ CLIPImageProcessor -------------------------

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side becomes `edge`,
/// the long side `int(edge * long / short)`. Returns (width, height).
pub fn shortest_edge_size(width: u32, height: u32, edge: u32) -> (u32, u32) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = (edge as f64 * long as f64 / short as f64) as u32;
    if width <= height {
        (edge, new_long)
    } else {
        (new_long, edge)
    }
}

/// Center crop as transformers' `center_crop` (zero padding when the image is smaller than the crop).
/// Returns `[crop*crop*3]` bytes, row-major RGB.
fn center_crop(img: &image::RgbImage, crop: u32) -> Vec<u8> {
    let (w, h, c) = (img.width() as i64, img.height() as i64, crop as i64);
    let offset = |size: i64| if size >= c { (size - c) / 2 } else { -((c - size + 1) / 2) };
    let (top, left) = (offset(h), offset(w));
    let raw = img.as_raw();
    let mut out = vec![0u8; (c * c * 3) as usize];
    for y in 0..c {
        let sy = y + top;
        if sy < 0 || sy >= h {
            continue;
        }
        for x in 0..c {
            let sx = x + left;
            if sx < 0 || sx >= w {
                continue;
            }
            let s = ((sy * w + sx) * 3) as usize;
            let d = ((y * c + x) * 3) as usize;
            out[d..d + 3].copy_from_slice(&raw[s..s + 3]);
        }
    }
    out
}

impl ClipPreprocess {
    /// Resized, center-cropped RGB bytes `[crop, crop, 3]` (before rescaling): the integer stage of
    /// `CLIPImageProcessor`.
    pub fn resize_and_crop(&self, img: &image::RgbImage) -> Vec<u8> {
        let (w, h) = shortest_edge_size(img.width(), img.height(), self.shortest_edge);
        let resized = if (w, h) == img.dimensions() { img.clone() } else { resize_bicubic_pil(img, w, h) };
        center_crop(&resized, self.crop)
    }

    /// Channel-first pixel values `[3, crop, crop]`: `(k/255 - mean) / std`, computed in the same float
    /// types as transformers (rescale in f64 then f32, normalize in f32).
    pub fn pixel_values(&self, img: &image::RgbImage) -> Vec<f32> {
        let bytes = self.resize_and_crop(img);
        self.normalize(&bytes)
    }

    /// Row-major RGB bytes (`[crop*crop*3]` here; any `[h*w*3]` for other processors) to channel-first
    /// normalized floats.
    pub fn normalize(&self, bytes: &[u8]) -> Vec<f32> {
        let n = bytes.len() / 3;
        let mut out = vec![0f32; 3 * n];
        for c in 0..3 {
            let (mean, std) = (self.image_mean[c], self.image_std[c]);
            let lut: Vec<f32> = (0..256).map(|k| ((k as f64 * (1.0 / 255.0)) as f32 - mean) / std).collect();
            for (i, o) in out[c * n..(c + 1) * n].iter_mut().enumerate() {
                *o = lut[bytes[i * 3 + c] as usize];
            }
        }
        out
    }

    /// Decodes and preprocesses files in parallel; `[n, 3, crop, crop]` flat.
    pub fn load_batch(&self, paths: &[PathBuf]) -> Result<Vec<f32>> {
        let per: Vec<Vec<f32>> =
            paths.par_iter().map(|p| decode_image_file(p).map(|img| self.pixel_values(&img))).collect::<Result<_>>()?;
        Ok(per.concat())
    }
}

// ------------------------------------------------------------------ towers ----------------------------------

/// Output of the image tower for `n` images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageFeatures {
    /// Projected image embeddings (unnormalized, as `CLIPModel.get_image_features`).
    pub embeddings: Embeddings,
    /// Penultimate encoder layer's hidden states, `[n, tokens, hidden]` with the CLS token first.
    pub penultimate: Vec<f32>,
    pub tokens: usize,
    pub hidden: usize,
}

impl ImageFeatures {
    /// Patch features of image `i` without the CLS token, `[tokens-1, hidden]`: LLaVA's
    /// `vision_feature_select_strategy = "default"` on `vision_feature_layer = -2`.
    pub fn patch_features(&self, i: usize) -> &[f32] {
        let per = self.tokens * self.hidden;
        &self.penultimate[i * per + self.hidden..(i + 1) * per]
    }

    /// All tokens of image `i` (CLS first), `[tokens, hidden]` (LLaVA's "full" strategy).
    pub fn penultimate_with_cls(&self, i: usize) -> &[f32] {
        let per = self.tokens * self.hidden;
        &self.penultimate[i * per..(i + 1) * per]
    }
}

/// Text-tower output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextFeatures {
    pub embeddings: Embeddings,
    /// Input indices cut to 77 tokens (the end token is kept).
    pub truncated: Vec<usize>,
    pub non_pad_tokens: usize,
}

/// CLIP's image tower over ONNX Runtime.
pub struct ClipImageEncoder {
    model: OnnxModel,
    preprocess: ClipPreprocess,
    /// Images per model call.
    pub batch_size: usize,
}

impl ClipImageEncoder {
    pub fn load(onnx: &Path, preprocess: ClipPreprocess, options: &SessionOptions) -> Result<Self> {
        let model = OnnxModel::load(onnx, options)?;
        model.expect_signature(
            "CLIP image tower",
            &[Port { name: "pixel_values", elem: TensorElementType::Float32, rank: 4, required: true }],
            &[
                Port { name: "image_embeds", elem: TensorElementType::Float32, rank: 2, required: true },
                Port { name: "penultimate_hidden_state", elem: TensorElementType::Float32, rank: 3, required: true },
            ],
        )?;
        Ok(Self { model, preprocess, batch_size: 16 })
    }

    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    pub fn preprocess(&self) -> &ClipPreprocess {
        &self.preprocess
    }

    /// Decodes, preprocesses (in parallel, rayon) and encodes image files, `batch_size` at a time so memory
    /// stays bounded. An unreadable file is an error naming it.
    pub fn encode_files(&self, paths: &[PathBuf]) -> Result<ImageFeatures> {
        let crop = self.preprocess.crop as usize;
        let mut features =
            ImageFeatures { embeddings: Embeddings { dim: 0, data: Vec::new() }, penultimate: Vec::new(), tokens: 0, hidden: 0 };
        for chunk in paths.chunks(self.batch_size.max(1)) {
            let pixels = self.preprocess.load_batch(chunk)?;
            let (dim, tokens, hidden, embeds, penult) = self.run(&pixels, chunk.len(), crop)?;
            (features.embeddings.dim, features.tokens, features.hidden) = (dim, tokens, hidden);
            features.embeddings.data.extend(embeds);
            features.penultimate.extend(penult);
        }
        Ok(features)
    }

    /// Encodes already preprocessed pixel values `[n, 3, crop, crop]`.
    pub fn encode_pixels(&self, pixels: &[f32], n: usize) -> Result<ImageFeatures> {
        let crop = self.preprocess.crop as usize;
        if n == 0 || pixels.len() != n * 3 * crop * crop {
            return Err(EncoderError::BadInput {
                item: "pixel values".into(),
                reason: format!("expected {n} × 3 × {crop} × {crop} = {} floats, found {}", n * 3 * crop * crop, pixels.len()),
            });
        }
        if let Some(i) = pixels.iter().position(|v| !v.is_finite()) {
            return Err(EncoderError::BadInput { item: format!("pixel value #{i}"), reason: "not finite".into() });
        }
        let mut embeds = Vec::new();
        let mut penult = Vec::new();
        let (mut dim, mut tokens, mut hidden) = (0, 0, 0);
        let per = 3 * crop * crop;
        for start in (0..n).step_by(self.batch_size.max(1)) {
            let rows = self.batch_size.max(1).min(n - start);
            let out = self.run(&pixels[start * per..(start + rows) * per], rows, crop)?;
            (dim, tokens, hidden) = (out.0, out.1, out.2);
            embeds.extend(out.3);
            penult.extend(out.4);
        }
        Ok(ImageFeatures { embeddings: Embeddings { dim, data: embeds }, penultimate: penult, tokens, hidden })
    }

    #[allow(clippy::type_complexity)]
    fn run(&self, pixels: &[f32], rows: usize, crop: usize) -> Result<(usize, usize, usize, Vec<f32>, Vec<f32>)> {
        let input = f32_input([rows, 3, crop, crop], pixels.to_vec()).map_err(self.model.ort_error("building inputs"))?;
        let mut out = self.model.run(vec![("pixel_values", input)], &["image_embeds", "penultimate_hidden_state"])?;
        let (pshape, pen) = out.pop().expect("two outputs");
        let (eshape, emb) = out.pop().expect("two outputs");
        if eshape.len() != 2 || eshape[0] != rows || pshape.len() != 3 || pshape[0] != rows {
            return Err(EncoderError::ModelSignature {
                path: self.model.path().to_path_buf(),
                encoder: "CLIP image tower",
                detail: format!("outputs have shapes {eshape:?} and {pshape:?} for a batch of {rows}"),
            });
        }
        check_finite(&emb, self.model.path(), "image_embeds")?;
        check_finite(&pen, self.model.path(), "penultimate_hidden_state")?;
        Ok((eshape[1], pshape[1], pshape[2], emb, pen))
    }
}

/// CLIP's text tower over ONNX Runtime, with CLIP's BPE tokenizer.
pub struct ClipTextEncoder {
    model: OnnxModel,
    tokenizer: TextTokenizer,
    pub batch: BatchPolicy,
}

impl ClipTextEncoder {
    /// `max_tokens` is CLIP's context (77); the end token survives truncation because the tokenizer's
    /// post-processor adds it after cutting.
    pub fn load(onnx: &Path, tokenizer_json: &Path, max_tokens: usize, options: &SessionOptions) -> Result<Self> {
        let tokenizer = TextTokenizer::load(tokenizer_json, max_tokens, "<|endoftext|>")?;
        let model = OnnxModel::load(onnx, options)?;
        model.expect_signature(
            "CLIP text tower",
            &[
                Port { name: "input_ids", elem: TensorElementType::Int64, rank: 2, required: true },
                Port { name: "attention_mask", elem: TensorElementType::Int64, rank: 2, required: false },
            ],
            &[Port { name: "text_embeds", elem: TensorElementType::Float32, rank: 2, required: true }],
        )?;
        Ok(Self { model, tokenizer, batch: BatchPolicy::default() })
    }

    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// Token ids as the model sees them (special tokens included, truncated, unpadded).
    pub fn token_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        Ok(self.tokenizer.encode_texts(texts)?.ids)
    }

    pub fn encode(&self, texts: &[&str]) -> Result<TextFeatures> {
        let tokens = self.tokenizer.encode_texts(texts)?;
        let lengths = tokens.lengths();
        let with_mask = self.model.has_input("attention_mask");
        let rows = batching::run_in_batches(&lengths, &self.batch, |batch| {
            let padded = tokens.pad_batch(batch, self.tokenizer.pad_id());
            let shape = [padded.rows, padded.len];
            let ort_err = self.model.ort_error("building inputs");
            let mut inputs = vec![("input_ids", i64_input(shape, padded.input_ids).map_err(ort_err)?)];
            if with_mask {
                inputs.push(("attention_mask", i64_input(shape, padded.attention_mask).map_err(ort_err)?));
            }
            let (shape, data) = self.model.run(inputs, &["text_embeds"])?.remove(0);
            if shape.len() != 2 || shape[0] != padded.rows {
                return Err(EncoderError::ModelSignature {
                    path: self.model.path().to_path_buf(),
                    encoder: "CLIP text tower",
                    detail: format!("text_embeds has shape {shape:?} for a batch of {}", padded.rows),
                });
            }
            check_finite(&data, self.model.path(), "text_embeds")?;
            Ok(data.chunks(shape[1]).map(<[f32]>::to_vec).collect::<Vec<_>>())
        })?;
        let dim = rows.first().map_or(0, Vec::len);
        Ok(TextFeatures {
            embeddings: Embeddings { dim, data: rows.into_iter().flatten().collect() },
            truncated: tokens.truncated,
            non_pad_tokens: lengths.iter().sum(),
        })
    }
}

/// CLIPScore settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipScoreParams {
    /// Multiplier of `max(cos, 0)`. The paper uses CLIPScore as a cross-modal confidence signal without a
    /// scale; we default to 1 (a score in [0, 1]); the reference metric (Hessel et al., 2021) uses 2.5.
    pub weight: f32,
    /// Text put before every caption; the reference metric uses "A photo depicts ".
    pub prefix: Option<String>,
}

impl Default for ClipScoreParams {
    fn default() -> Self {
        Self { weight: 1.0, prefix: None }
    }
}

impl ClipScoreParams {
    /// The reference CLIP-S of Hessel et al.: `2.5 · max(cos, 0)` with the prompt "A photo depicts ".
    pub fn reference() -> Self {
        Self { weight: 2.5, prefix: Some("A photo depicts ".into()) }
    }
}

/// `weight · max(cos(image, text), 0)`.
pub fn clip_score(image: &[f32], text: &[f32], params: &ClipScoreParams) -> f32 {
    params.weight * super::cosine(image, text).max(0.0)
}

/// Both towers of one CLIP model folder.
pub struct Clip {
    pub image: ClipImageEncoder,
    pub text: ClipTextEncoder,
}

impl Clip {
    /// Loads `dir/{image.onnx, text.onnx, tokenizer.json, clip_config.json}`.
    pub fn load(dir: &Path, options: &SessionOptions) -> Result<Self> {
        let cfg_path = dir.join("clip_config.json");
        if !cfg_path.is_file() {
            return Err(EncoderError::MissingFile {
                what: "CLIP config",
                path: cfg_path,
                hint: " (export the model with scripts/export_onnx.py clip --src HF_FOLDER --out DIR)".into(),
            });
        }
        let text =
            std::fs::read_to_string(&cfg_path).map_err(|e| EncoderError::Config { path: cfg_path.clone(), reason: e.to_string() })?;
        let cfg: ClipFolderConfig =
            serde_json::from_str(&text).map_err(|e| EncoderError::Config { path: cfg_path.clone(), reason: e.to_string() })?;
        let pre =
            ClipPreprocess { shortest_edge: cfg.shortest_edge, crop: cfg.crop_size, image_mean: cfg.image_mean, image_std: cfg.image_std };
        Ok(Self {
            image: ClipImageEncoder::load(&dir.join("image.onnx"), pre, options)?,
            text: ClipTextEncoder::load(&dir.join("text.onnx"), &dir.join("tokenizer.json"), cfg.max_text_tokens, options)?,
        })
    }

    /// CLIPScore of each (image file, caption) pair.
    pub fn score_pairs(&self, images: &[PathBuf], captions: &[&str], params: &ClipScoreParams) -> Result<Vec<f32>> {
        if images.len() != captions.len() {
            return Err(EncoderError::BadInput {
                item: "CLIPScore pairs".into(),
                reason: format!("{} images but {} captions", images.len(), captions.len()),
            });
        }
        let prefixed: Vec<String> = captions
            .iter()
            .map(|c| match &params.prefix {
                Some(p) if !c.trim().is_empty() => format!("{p}{c}"),
                _ => c.to_string(),
            })
            .collect();
        let refs: Vec<&str> = prefixed.iter().map(String::as_str).collect();
        let t = self.text.encode(&refs)?;
        let i = self.image.encode_files(images)?;
        Ok((0..images.len()).map(|k| clip_score(i.embeddings.row(k), t.embeddings.row(k), params)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_matches_transformers_rounding() {
        assert_eq!(shortest_edge_size(451, 300, 224), (336, 224)); // int(224*451/300) = 336
        assert_eq!(shortest_edge_size(180, 307, 224), (224, 382));
        assert_eq!(shortest_edge_size(500, 500, 224), (224, 224));
    }

    #[test]
    fn resize_to_same_width_is_identity_horizontally_and_constant_stays_constant() {
        let img = image::RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 99]));
        let out = resize_bicubic_pil(&img, 19, 50);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 99]));
    }

    #[test]
    fn center_crop_pads_small_images_like_transformers() {
        let img = image::RgbImage::from_pixel(2, 3, image::Rgb([9, 9, 9]));
        let out = center_crop(&img, 4);
        // width 2 -> pad left ceil(2/2)=1; height 3 -> pad top ceil(1/2)=1
        let at = |x: usize, y: usize| out[(y * 4 + x) * 3];
        assert_eq!((at(0, 0), at(1, 1), at(2, 3), at(3, 1)), (0, 9, 9, 0));
    }

    #[test]
    fn clip_score_clamps_and_scales() {
        let p = ClipScoreParams::reference();
        assert_eq!(clip_score(&[1.0, 0.0], &[-1.0, 0.0], &p), 0.0);
        assert!((clip_score(&[1.0, 0.0], &[1.0, 0.0], &p) - 2.5).abs() < 1e-6);
    }
}
