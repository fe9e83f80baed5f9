//! Looking at items: a contact sheet (one row of samples per difficulty level) and a plain-text
//! rendering of an item (image path, question, options, chain).

use std::fmt::Write as _;

use image::{imageops, Rgb, RgbImage};
use imageproc::drawing::draw_filled_rect_mut;
use imageproc::rect::Rect;

use super::{DataError, Item, Result};

/// Layout of a contact sheet.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SheetParams {
    /// Samples per row (per level).
    pub per_level: usize,
    /// Side of each tile in pixels (images are resized to it).
    pub tile: u32,
    /// Gap between tiles.
    pub pad: u32,
}

impl Default for SheetParams {
    fn default() -> Self {
        SheetParams { per_level: 8, tile: 96, pad: 4 }
    }
}

/// One row per difficulty level present in `items` (ascending), the first `per_level` items of
/// that level in order. The left margin marks the level with level+1 stacked squares.
pub fn contact_sheet(items: &[Item], params: &SheetParams) -> Result<RgbImage> {
    let mut levels: Vec<u32> = items.iter().filter_map(|i| i.difficulty).collect();
    levels.sort_unstable();
    levels.dedup();
    if levels.is_empty() || params.per_level == 0 || params.tile == 0 {
        return Err(DataError::Params(format!(
            "contact sheet: expected items with a difficulty level, per_level > 0 and tile > 0; found {} items, {} levels, per_level {}, tile {}",
            items.len(),
            levels.len(),
            params.per_level,
            params.tile
        )));
    }
    let rows: Vec<(u32, Vec<&Item>)> =
        levels.iter().map(|&l| (l, items.iter().filter(|i| i.difficulty == Some(l)).take(params.per_level).collect())).collect();
    draw_rows(&rows, params)
}

/// One row per (source, split) group in order of first appearance (for datasets without difficulty
/// levels), the first `per_level` items of each; the margin marks the row's position with stacked squares.
pub fn contact_sheet_by_split(items: &[Item], params: &SheetParams) -> Result<RgbImage> {
    let mut groups: Vec<((&str, &str), Vec<&Item>)> = Vec::new();
    for it in items.iter().filter(|i| i.image.is_some()) {
        let key = (it.source.as_str(), it.split.as_str());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                if v.len() < params.per_level {
                    v.push(it)
                }
            }
            None => groups.push((key, vec![it])),
        }
    }
    if groups.is_empty() || params.per_level == 0 || params.tile == 0 {
        return Err(DataError::Params(format!(
            "contact sheet: expected items with images, per_level > 0 and tile > 0; found {} items, per_level {}, tile {}",
            items.len(),
            params.per_level,
            params.tile
        )));
    }
    let rows: Vec<(u32, Vec<&Item>)> = groups.into_iter().enumerate().map(|(k, (_, v))| (k as u32, v)).collect();
    draw_rows(&rows, params)
}

fn draw_rows(rows: &[(u32, Vec<&Item>)], params: &SheetParams) -> Result<RgbImage> {
    let (tile, pad) = (params.tile, params.pad);
    let margin = 16 + pad;
    let width = margin + params.per_level as u32 * (tile + pad) + pad;
    let height = pad + rows.len() as u32 * (tile + pad);
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (row, (level, chosen)) in rows.iter().enumerate() {
        let y = pad + row as u32 * (tile + pad);
        // Level marker: level+1 small squares, up to the tile height.
        let sq = 6u32;
        for k in 0..=(*level).min((tile / (sq + 2)).saturating_sub(1)) {
            let r = Rect::at((pad + 2) as i32, (y + k * (sq + 2)) as i32).of_size(sq, sq);
            draw_filled_rect_mut(&mut sheet, r, Rgb([40, 40, 40]));
        }
        for (col, item) in chosen.iter().enumerate() {
            let bytes = super::image_bytes(item).map_err(|e| DataError::Params(format!("contact sheet: {e}")))?;
            let img = image::load_from_memory(&bytes)
                .map_err(|e| DataError::Image { what: format!("item {}", item.id), reason: e.to_string() })?
                .to_rgb8();
            let img = if img.width() == tile && img.height() == tile {
                img
            } else {
                imageops::resize(&img, tile, tile, imageops::FilterType::Triangle)
            };
            let x = margin + col as u32 * (tile + pad);
            imageops::replace(&mut sheet, &img, x as i64, y as i64);
        }
    }
    Ok(sheet)
}

/// A plain-text view of an item, for a person: where its image is, the question, the options
/// (the correct one marked), the answer and the chain by level.
pub fn show(item: &Item, image_path: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "── {} [{} / {}]{}",
        item.id,
        item.source,
        item.split,
        item.difficulty.map(|d| format!(" difficulty {d}")).unwrap_or_default()
    );
    let path =
        image_path.map(str::to_string).or_else(|| item.image.as_ref().and_then(|i| i.path.clone())).unwrap_or_else(|| "(no image)".into());
    let _ = writeln!(s, "image:    {path}");
    let _ = writeln!(s, "question: {}", item.question);
    for (i, c) in item.choices.iter().enumerate() {
        let mark = if item.correct_choice == Some(i as u32) { "*" } else { " " };
        let _ = writeln!(s, "  {mark} ({}) {c}", (b'A' + (i as u8 % 26)) as char);
    }
    if let Some(a) = &item.answer {
        let _ = writeln!(s, "answer:   {a}");
    }
    let _ = writeln!(s, "perception (Image_level):");
    for p in &item.chain.perception {
        let _ = writeln!(s, "  - {p}");
    }
    let _ = writeln!(s, "reasoning (Reasoning_level):");
    for r in &item.chain.reasoning {
        let _ = writeln!(s, "  - {r}");
    }
    s
}
