//! LLaVA-NeXT (`LlavaNextForConditionalGeneration`, "LLaVA-1.6"): any-resolution images. The image
//! processor (in the main crate, `encoders::llava_next`) cuts an image into a base image squashed to one
//! tile plus the row-major tiles of the best canvas from `image_grid_pinpoints`; each tile goes through the
//! CLIP tower (here in tch, [`ClipVision`], or outside through ONNX Runtime); the tiles' patch features are
//! arranged into one grid, the padding rows or columns the processor added are cut off again (`unpad`),
//! everything is projected, an `image_newline` vector ends every grid row, and the base image's features
//! come first. This is transformers' `LlavaNextModel.get_image_features` + `pack_image_features`.
//!
//! The projector is a per-token MLP, so it commutes with the reordering and cropping: [`pack_tiles`]
//! arranges and crops the *vision* features (what a cached features stage can store), and the model
//! projects, appends the newlines and splices. An image therefore enters [`EmbedInputs::embed_inputs`] as
//! two tensors: its base-image features [tokens_per_tile, d_v] (2-D) followed by its unpadded grid
//! [rows, cols, d_v] (3-D); it takes `tokens_per_tile + rows · (cols + 1)` image tokens
//! ([`num_image_tokens`], equal to what `LlavaNextProcessor` inserts).
//!
//! All resolution arithmetic copies transformers exactly: sizes are (height, width), pinpoints are read as
//! (height, width) and ties go to the first pinpoint in the list, the odd pixel of padding goes
//! right/bottom, and floating-point steps are done in f64 as Python does.
//!
//! Text towers: Llama/Vicuna and Mistral (any text tower [`CausalLm`] supports). Weight layouts: the hub's
//! (`language_model.model.*`, `vision_tower.vision_model.*`, `image_newline`) and transformers 5's
//! (`model.language_model.*`, `model.vision_tower.*`, `model.image_newline`, `lm_head.*`).
use super::clip_vision::{resolve_layer, ClipVision, ClipVisionConfig};
use super::config::{LlamaConfig, LlavaConfig, VisionConfig};
use super::llama::CausalLm;
use super::llava::{llava_key_rename, EmbedInputs, Llava};
use super::weights::{load_safetensors_dir, KeyPolicy};
use super::{DType, MllmError, Result};
pub use anyres::{patch_output_size, patch_padding, select_best_resolution};
use serde::Deserialize;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// `LlavaNextConfig` as read from `config.json`. Fields transformers uses are honoured; values this
/// implementation does not support are refused by [`LlavaNextConfig::validate`] naming the field.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaNextConfig {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub text_config: LlamaConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(alias = "image_token_id")]
    pub image_token_index: i64,
    /// (height, width) canvases, each a multiple of the tile size.
    pub image_grid_pinpoints: Vec<Vec<i64>>,
    #[serde(default = "default_feature_layer")]
    pub vision_feature_layer: FeatureLayer,
    #[serde(default = "default_strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "default_proj_act")]
    pub projector_hidden_act: String,
    #[serde(default = "default_true")]
    pub multimodal_projector_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Informational in transformers (the processor computes the real count per image).
    #[serde(default)]
    pub image_seq_length: Option<i64>,
    /// Present in hub files; transformers ignores it and always has `image_newline`, as we do (a false
    /// value is refused rather than silently ignored).
    #[serde(default)]
    pub use_image_newline_parameter: Option<bool>,
}

/// `vision_feature_layer`: one hidden-state index or a list whose states are concatenated.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum FeatureLayer {
    One(i64),
    Many(Vec<i64>),
}

impl FeatureLayer {
    pub fn indices(&self) -> Vec<i64> {
        match self {
            Self::One(k) => vec![*k],
            Self::Many(v) => v.clone(),
        }
    }
}

fn default_feature_layer() -> FeatureLayer {
    FeatureLayer::One(-2)
}
fn default_strategy() -> String {
    "default".into()
}
fn default_proj_act() -> String {
    "gelu".into()
}
fn default_true() -> bool {
    true
}

pub const ARCHITECTURE: &str = "llava_next (LlavaNextForConditionalGeneration)";

impl LlavaNextConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(super::io_err(&path))?;
        let at = path.display().to_string();
        let mut cfg: Self = serde_json::from_str(&text).map_err(|e| MllmError::Config { path: at.clone(), msg: e.to_string() })?;
        if let Some(t) = cfg.tie_word_embeddings {
            cfg.text_config.tie_word_embeddings |= t;
        }
        cfg.validate(&at)?;
        Ok(cfg)
    }

    /// Refuses settings this implementation does not compute as transformers does, naming file and field.
    pub fn validate(&self, at: &str) -> Result<()> {
        let bad = |msg: String| Err(MllmError::Config { path: at.to_string(), msg });
        if self.model_type != "llava_next" {
            return Err(MllmError::UnsupportedArchitecture {
                found: format!("model_type {:?} {:?}", self.model_type, self.architectures),
                path: at.to_string(),
                supported: ARCHITECTURE,
            });
        }
        self.text_config.validate(&format!("{at} (text_config)"))?;
        self.vision_config.validate(at)?;
        if self.vision_feature_select_strategy != "default" {
            return bad(format!(
                "vision_feature_select_strategy: only \"default\" (drop the CLS token) is supported with a CLIP tower, found {:?} \
                 (\"full\" keeps CLS, which transformers' packing cannot reshape into the tile grid)",
                self.vision_feature_select_strategy
            ));
        }
        let layers = self.vision_config.num_hidden_layers;
        let idx = self.vision_feature_layer.indices();
        if idx.is_empty() {
            return bad("vision_feature_layer: an empty list selects no features".into());
        }
        for k in idx {
            resolve_layer(k, layers).map_err(|e| MllmError::Config { path: at.to_string(), msg: format!("vision_feature_layer: {e}") })?;
        }
        if !matches!(self.projector_hidden_act.as_str(), "gelu" | "gelu_pytorch_tanh") {
            return bad(format!("projector_hidden_act: expected gelu or gelu_pytorch_tanh, found {:?}", self.projector_hidden_act));
        }
        if self.use_image_newline_parameter == Some(false) {
            return bad("use_image_newline_parameter = false is not supported (transformers always appends image_newline)".into());
        }
        let tile = self.vision_config.image_size;
        if self.image_grid_pinpoints.is_empty() {
            return bad("image_grid_pinpoints: expected a non-empty list of [height, width] canvases".into());
        }
        for (i, p) in self.image_grid_pinpoints.iter().enumerate() {
            if p.len() != 2 || p[0] <= 0 || p[1] <= 0 || p[0] % tile != 0 || p[1] % tile != 0 {
                return bad(format!(
                    "image_grid_pinpoints[{i}]: expected [height, width], positive multiples of vision_config.image_size {tile}, found {p:?}"
                ));
            }
        }
        if self.image_token_index < 0 || self.image_token_index >= self.text_config.vocab_size {
            return bad(format!(
                "image_token_index {} lies outside the text vocabulary [0, {})",
                self.image_token_index, self.text_config.vocab_size
            ));
        }
        Ok(())
    }

    /// Pinpoints as (height, width) pairs.
    pub fn pinpoints(&self) -> Vec<(i64, i64)> {
        self.image_grid_pinpoints.iter().map(|p| (p[0], p[1])).collect()
    }

    /// Width of the vision features the projector reads (hidden size × number of selected layers).
    pub fn vision_feature_dim(&self) -> i64 {
        self.vision_config.hidden_size * self.vision_feature_layer.indices().len() as i64
    }

    /// Patch tokens per tile with the CLS token dropped.
    pub fn tokens_per_tile(&self) -> i64 {
        self.vision_config.grid() * self.vision_config.grid()
    }
}

// ------------------------------------------------------------------ resolution arithmetic ----------------------

/// Which rows and columns of the full feature grid (`grid_h` × `grid_w` patches) survive `unpad_image`
/// for an original image of `size` (height, width): (row start, row end, column start, column end).
/// transformers computes `int(round(H · cur_w / W, 7))`; for any image under 10⁷ pixels a side this is
/// exactly the integer floor used here.
pub fn unpad_window(size: (i64, i64), grid_h: i64, grid_w: i64) -> (i64, i64, i64, i64) {
    let (h0, w0) = size;
    // original aspect w0/h0 > current aspect grid_w/grid_h, compared exactly as Python does in floats
    if (w0 as f64 / h0 as f64) > (grid_w as f64 / grid_h as f64) {
        let new_h = h0 * grid_w / w0;
        let pad = (grid_h - new_h) / 2;
        (pad, grid_h - pad, 0, grid_w)
    } else {
        let new_w = w0 * grid_h / h0;
        let pad = (grid_w - new_w) / 2;
        (0, grid_h, pad, grid_w - pad)
    }
}

/// The anyres layout of one image: canvas, tile grid, and the unpadded feature grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnyresLayout {
    /// Best canvas (height, width).
    pub canvas: (i64, i64),
    /// Tiles down and across.
    pub tiles: (i64, i64),
    /// Kept rows [start, end) and columns [start, end) of the (tiles·grid) feature grid.
    pub window: (i64, i64, i64, i64),
}

impl AnyresLayout {
    /// Layout for an image of `size` (height, width) with tiles of `tile` pixels and `grid` patches a side.
    pub fn new(size: (i64, i64), pinpoints: &[(i64, i64)], tile: i64, grid: i64) -> Result<Self> {
        if size.0 <= 0 || size.1 <= 0 {
            return Err(MllmError::Input(format!("image of size {}x{} (height x width) has no pixels", size.0, size.1)));
        }
        if pinpoints.is_empty() {
            return Err(MllmError::Input("image_grid_pinpoints is empty".into()));
        }
        let canvas = select_best_resolution(size, pinpoints);
        let tiles = (canvas.0 / tile, canvas.1 / tile);
        let window = unpad_window(size, tiles.0 * grid, tiles.1 * grid);
        Ok(Self { canvas, tiles, window })
    }
    /// Rows and columns of the unpadded grid.
    pub fn grid_shape(&self) -> (i64, i64) {
        (self.window.1 - self.window.0, self.window.3 - self.window.2)
    }
    /// Tiles including the base image.
    pub fn num_patches(&self) -> i64 {
        self.tiles.0 * self.tiles.1 + 1
    }
}

/// Image tokens one image takes: base tokens + rows · (columns + 1 newline). Equals
/// `LlavaNextProcessor._get_number_of_features` with `num_additional_image_tokens = 1` minus the CLS
/// it drops for the "default" strategy.
pub fn num_image_tokens(layout: &AnyresLayout, tokens_per_tile: i64) -> i64 {
    let (r, c) = layout.grid_shape();
    tokens_per_tile + r * (c + 1)
}

/// Arranges per-tile vision features [1 + tiles, grid², d] (base first, then tiles in row-major order, CLS
/// already dropped) into the base features [grid², d] and the unpadded grid [rows, cols, d], as
/// `pack_image_features` does before the newline column.
pub fn pack_tiles(features: &Tensor, layout: &AnyresLayout, grid: i64) -> Result<(Tensor, Tensor)> {
    let s = features.size();
    let (th, tw) = layout.tiles;
    if s.len() != 3 || s[0] != th * tw + 1 || s[1] != grid * grid {
        return Err(MllmError::Input(format!(
            "tile features: expected [{} (base + {th}x{tw} tiles), {} patches, dim], found {s:?}",
            th * tw + 1,
            grid * grid
        )));
    }
    let d = s[2];
    let base = features.get(0);
    let full = features.narrow(0, 1, th * tw).view([th, tw, grid, grid, d]).permute([0, 2, 1, 3, 4]).reshape([th * grid, tw * grid, d]);
    let (r0, r1, c0, c1) = layout.window;
    Ok((base, full.narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0)))
}

/// Writes `rows` [n, h] (already in the text tower's width) over the `image_token` positions of the
/// embeddings of `ids` [b, t], in row-major order; the counts must match.
pub fn splice_rows(lm: &CausalLm, ids: &Tensor, image_token: i64, rows: Option<&Tensor>) -> Result<Tensor> {
    let is_image = ids.eq(image_token);
    let n_slots = is_image.sum(Kind::Int64).int64_value(&[]);
    let n_rows = rows.map(|r| r.size()[0]).unwrap_or(0);
    if n_slots != n_rows {
        return Err(MllmError::Input(format!(
            "{n_slots} image-token positions (id {image_token}) but the images give {n_rows} feature rows"
        )));
    }
    let embeds = lm.embed(&ids.masked_fill(&is_image, 0))?;
    let Some(rows) = rows else { return Ok(embeds) };
    let mask = is_image.to_device(embeds.device()).unsqueeze(-1).expand_as(&embeds);
    Ok(embeds.masked_scatter(&mask, &rows.to_kind(embeds.kind()).reshape([-1])))
}

// ------------------------------------------------------------------ the model ----------------------------------

/// `LlavaNextForConditionalGeneration`: text tower + projector (a [`Llava`] with the projector's input
/// widened to the selected layers), `image_newline`, and optionally the CLIP tower.
#[derive(Debug)]
pub struct LlavaNext {
    pub cfg: LlavaNextConfig,
    pub llava: Llava,
    pub image_newline: Tensor,
    /// None when loaded without the tower (features computed elsewhere, e.g. ONNX Runtime).
    pub vision: Option<ClipVision>,
}

/// Maps a checkpoint key (either layout) to our variable name; None drops it.
pub fn llava_next_key_rename(k: &str, tied: bool, with_vision: bool) -> Option<String> {
    if k == "image_newline" || k == "model.image_newline" {
        return Some("image_newline".into());
    }
    if let Some(r) = k.strip_prefix("model.vision_tower.").or_else(|| k.strip_prefix("vision_tower.")) {
        // the hub nests CLIPVisionModel's modules under `vision_model.`, transformers 5 does not
        let r = r.strip_prefix("vision_model.").unwrap_or(r);
        let unused = r.contains("post_layernorm") || r.ends_with("position_ids");
        return (with_vision && !unused).then(|| format!("vision_tower.{r}"));
    }
    llava_key_rename(k, tied)
}

impl LlavaNext {
    /// Creates the (zero) variables under the root of `vs`.
    pub fn new(vs: &nn::VarStore, cfg: &LlavaNextConfig, with_vision: bool) -> Result<Self> {
        let inner = LlavaConfig {
            model_type: "llava".into(),
            text_config: cfg.text_config.clone(),
            vision_config: VisionConfig { hidden_size: cfg.vision_feature_dim(), model_type: Some(cfg.vision_config.model_type.clone()) },
            image_token_index: cfg.image_token_index,
            projector_hidden_act: cfg.projector_hidden_act.clone(),
            multimodal_projector_bias: cfg.multimodal_projector_bias,
            vision_feature_layer: None,
            vision_feature_select_strategy: Some(cfg.vision_feature_select_strategy.clone()),
            image_seq_length: cfg.image_seq_length,
            tie_word_embeddings: cfg.tie_word_embeddings,
        };
        let llava = Llava::new(vs, &inner)?;
        let root = vs.root();
        let image_newline = root.var("image_newline", &[cfg.text_config.hidden_size], nn::Init::Const(0.));
        let vision = if with_vision { Some(ClipVision::new(&(&root / "vision_tower"), &cfg.vision_config)?) } else { None };
        Ok(Self { cfg: cfg.clone(), llava, image_newline, vision })
    }

    /// Loads a LLaVA-NeXT folder; `with_vision` also loads the CLIP tower (needed for [`Self::image_inputs`]).
    /// A checkpoint without `image_newline` is refused naming the folder and the key.
    pub fn load(dir: &Path, device: Device, dtype: DType, with_vision: bool) -> Result<(nn::VarStore, Self)> {
        let cfg = LlavaNextConfig::from_dir(dir)?;
        let mut vs = nn::VarStore::new(device);
        let model = Self::new(&vs, &cfg, with_vision)?;
        let tied = cfg.text_config.tie_word_embeddings;
        let rename = move |k: &str| llava_next_key_rename(k, tied, with_vision);
        load_safetensors_dir(&vs.variables(), dir, &KeyPolicy { rename: &rename, optional: &|_| false }).map_err(|e| match e {
            MllmError::KeyMismatch { dir, missing, .. } if missing.iter().any(|m| m == "image_newline") => MllmError::Weights {
                path: dir,
                msg: "the checkpoint has no image_newline (expected key image_newline or model.image_newline): \
                      it is not a LLaVA-NeXT checkpoint, or was saved without it"
                    .into(),
            },
            e => e,
        })?;
        vs.set_kind(dtype.kind());
        Ok((vs, model))
    }

    pub fn lm(&self) -> &CausalLm {
        &self.llava.lm
    }

    /// Vision features of tiles [n, 3, S, S]: the selected hidden state(s) (concatenated), CLS dropped:
    /// [n, grid², vision_feature_dim].
    pub fn tile_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let tower = self.vision.as_ref().ok_or_else(|| {
            MllmError::Input("LLaVA-NeXT was loaded without its vision tower: load with with_vision = true, or pass features".into())
        })?;
        let states = tower.hidden_states(&pixel_values.to_device(self.image_newline.device()), &self.cfg.vision_feature_layer.indices())?;
        let n = states[0].size()[1];
        Ok(Tensor::cat(&states, -1).narrow(1, 1, n - 1))
    }

    /// The layout of an image of `size` (height, width).
    pub fn layout(&self, size: (i64, i64)) -> Result<AnyresLayout> {
        AnyresLayout::new(size, &self.cfg.pinpoints(), self.cfg.vision_config.image_size, self.cfg.vision_config.grid())
    }

    /// The two input tensors of one image (base features, unpadded grid) from its preprocessed tiles
    /// [1 + tiles, 3, S, S] (base first) and original size.
    pub fn image_inputs(&self, pixel_values: &Tensor, size: (i64, i64)) -> Result<[Tensor; 2]> {
        let layout = self.layout(size)?;
        if pixel_values.size().first() != Some(&layout.num_patches()) {
            return Err(MllmError::Input(format!(
                "image of {}x{}: expected {} tiles (base + {}x{}), found pixel values {:?}",
                size.0,
                size.1,
                layout.num_patches(),
                layout.tiles.0,
                layout.tiles.1,
                pixel_values.size()
            )));
        }
        let (base, grid) = pack_tiles(&self.tile_features(pixel_values)?, &layout, self.cfg.vision_config.grid())?;
        Ok([base, grid])
    }

    /// Projected, packed rows of one image: base, then each grid row followed by `image_newline`.
    pub fn packed_rows(&self, base: &Tensor, grid: &Tensor) -> Result<Tensor> {
        let dv = self.cfg.vision_feature_dim();
        let (bs, gs) = (base.size(), grid.size());
        if bs.len() != 2 || bs[1] != dv || gs.len() != 3 || gs[2] != dv {
            return Err(MllmError::Input(format!(
                "LLaVA-NeXT image: expected base features [n, {dv}] then a grid [rows, cols, {dv}], found {bs:?} and {gs:?}"
            )));
        }
        for (what, t) in [("base", base), ("grid", grid)] {
            if t.isfinite().logical_not().any().int64_value(&[]) != 0 {
                return Err(MllmError::Input(format!("image {what} features contain NaN or infinity")));
            }
        }
        let dev = self.image_newline.device();
        let kind = self.image_newline.kind();
        let base = self.llava.project(&base.to_device(dev).to_kind(kind));
        let g = self.llava.project(&grid.to_device(dev).to_kind(kind));
        let (r, h) = (gs[0], self.cfg.text_config.hidden_size);
        let nl = self.image_newline.view([1, 1, h]).expand([r, 1, h], false).to_kind(g.kind());
        let g = Tensor::cat(&[g, nl], 1).reshape([-1, h]);
        Ok(Tensor::cat(&[base.to_kind(g.kind()), g], 0))
    }

    /// Embeddings of `ids` [b, t] with the images spliced in; `images` holds (base, grid) per image.
    pub fn embed_multimodal(&self, ids: &Tensor, images: &[Tensor]) -> Result<Tensor> {
        if images.len() % 2 != 0 {
            return Err(MllmError::Input(format!(
                "LLaVA-NeXT takes two tensors per image (base features, unpadded grid), found {} tensors",
                images.len()
            )));
        }
        let rows = images.chunks(2).map(|p| self.packed_rows(&p[0], &p[1])).collect::<Result<Vec<_>>>()?;
        let rows = (!rows.is_empty()).then(|| Tensor::cat(&rows, 0));
        splice_rows(self.lm(), ids, self.cfg.image_token_index, rows.as_ref())
    }

    /// Logits [b, t, vocab].
    pub fn forward(&self, ids: &Tensor, images: &[Tensor], attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let e = self.embed_multimodal(ids, images)?;
        let lm = self.lm();
        Ok(lm.logits(&lm.forward_embeds(&e, attention_mask, None)?))
    }
}

impl EmbedInputs for LlavaNext {
    fn text_model(&self) -> &CausalLm {
        &self.llava.lm
    }
    fn embed_inputs(&self, ids: &Tensor, images: &[Tensor]) -> Result<Tensor> {
        self.embed_multimodal(ids, images)
    }
}

impl super::sft::AsMutLm for LlavaNext {
    fn lm_mut(&mut self) -> &mut CausalLm {
        &mut self.llava.lm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V16: [(i64, i64); 5] = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];

    fn tokens(h: i64, w: i64) -> i64 {
        num_image_tokens(&AnyresLayout::new((h, w), &V16, 336, 24).unwrap(), 576)
    }

    /// Token counts computed by hand from LlavaNextProcessor's arithmetic (v1.6 pinpoints).
    #[test]
    fn token_counts_match_the_processor_arithmetic() {
        assert_eq!(tokens(480, 640), 2340);
        assert_eq!(tokens(640, 480), 2352);
        assert_eq!(tokens(1000, 1000), 2928);
        assert_eq!(tokens(500, 1000), 1752);
        assert_eq!(tokens(400, 1000), 2040);
        assert_eq!(tokens(300, 300), 1176);
        // small and tall: every pinpoint holds it whole, the tie goes to the first, (336, 672) = wide
        assert_eq!(select_best_resolution((300, 200), &V16), (336, 672));
        assert_eq!(tokens(300, 200), 984);
    }

    #[test]
    fn padding_puts_the_odd_pixel_bottom_right() {
        assert_eq!(patch_padding((55, 112), (112, 112)), (28, 29, 0, 0));
        assert_eq!(patch_output_size((113, 157), (112, 168)), (112, 156));
    }
}
