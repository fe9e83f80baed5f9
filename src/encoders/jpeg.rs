//! JPEG decoding as Pillow does it. Pillow decodes with libjpeg-turbo's defaults (accurate integer IDCT,
//! fancy upsampling, YCbCr → RGB by libjpeg); the `image` crate's own decoder rounds differently (up to
//! 3/255 per value on real photos). This uses the same libjpeg code (mozjpeg, which keeps libjpeg-turbo's
//! decoder), compiled from source without SIMD (libjpeg-turbo's SIMD paths are bit-exact with its C
//! paths for these settings).
use super::{EncoderError, Result};

/// Decodes a baseline or progressive JPEG to RGB8 as `PIL.Image.open(f).convert("RGB")`. Grayscale
/// images are replicated to three channels (what `convert("RGB")` does). Returns `None` for CMYK/YCCK
/// files, whose conversion Pillow does itself (Adobe-inverted CMYK), so the caller decodes those otherwise.
pub fn decode_jpeg_like_pil(bytes: &[u8], item: &str) -> Result<Option<image::RgbImage>> {
    let err = |reason: String| EncoderError::Image { item: item.to_string(), reason };
    // libjpeg reports fatal errors through mozjpeg as panics: contain them and report them as errors.
    let run = std::panic::catch_unwind(|| -> std::io::Result<Option<(usize, usize, Vec<u8>)>> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        use mozjpeg::ColorSpace;
        if !matches!(d.color_space(), ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB) {
            return Ok(None);
        }
        let mut started = d.rgb()?;
        let (w, h) = (started.width(), started.height());
        let px: Vec<[u8; 3]> = started.read_scanlines()?;
        started.finish()?;
        Ok(Some((w, h, px.into_iter().flatten().collect())))
    });
    match run {
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some((w, h, raw)))) => {
            if raw.len() != w * h * 3 || w == 0 || h == 0 {
                return Err(err(format!("JPEG decoded to {} bytes for {w}x{h} pixels (truncated scan?)", raw.len())));
            }
            Ok(Some(image::RgbImage::from_raw(w as u32, h as u32, raw).expect("length checked")))
        }
        Ok(Err(e)) => Err(err(format!("cannot decode JPEG: {e}"))),
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(err(format!("cannot decode JPEG: {}", msg.unwrap_or_else(|| "libjpeg error".into()))))
        }
    }
}
