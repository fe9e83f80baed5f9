//! LLaVA-NeXT's any-resolution geometry as transformers computes it: the best canvas for an image, the size
//! it is resized to on that canvas, and the padding around it. Plain integer arithmetic shared by the image
//! processor (`mmboundary::encoders::llava_next_image`, in the `mmb` binary) and the model
//! (`mllm::llava_next`, for token counts and unpadding), in a crate of its own so that the `mmb` binary
//! can use it without linking libtorch through `mllm`.

/// transformers' `select_best_resolution`: the (height, width) canvas keeping the most of the image
/// (downscaled area capped at the original area), then the least wasted area, then the first in the list.
pub fn select_best_resolution(size: (i64, i64), pinpoints: &[(i64, i64)]) -> (i64, i64) {
    let (h0, w0) = size;
    let mut best = pinpoints[0];
    let (mut max_eff, mut min_waste) = (0i64, i64::MAX);
    for &(h, w) in pinpoints {
        let (sw, sh) = (w as f64 / w0 as f64, h as f64 / h0 as f64);
        let scale = if sh < sw { sh } else { sw };
        let (dw, dh) = ((w0 as f64 * scale) as i64, (h0 as f64 * scale) as i64);
        let eff = (dw * dh).min(w0 * h0);
        let waste = h * w - eff;
        if eff > max_eff || (eff == max_eff && waste < min_waste) {
            max_eff = eff;
            min_waste = waste;
            best = (h, w);
        }
    }
    best
}

/// transformers' `get_patch_output_size`: the (height, width) an image of `size` is resized to before
/// being padded onto the `target` canvas.
pub fn patch_output_size(size: (i64, i64), target: (i64, i64)) -> (i64, i64) {
    let (h0, w0) = size;
    let (th, tw) = target;
    let (sw, sh) = (tw as f64 / w0 as f64, th as f64 / h0 as f64);
    if sw < sh {
        (((h0 as f64 * sw).ceil() as i64).min(th), tw)
    } else {
        (th, ((w0 as f64 * sh).ceil() as i64).min(tw))
    }
}

/// The (top, bottom, left, right) zero padding `_pad_for_patching` adds: the odd pixel goes bottom/right.
pub fn patch_padding(resized: (i64, i64), target: (i64, i64)) -> (i64, i64, i64, i64) {
    let (dy, dx) = (target.0 - resized.0, target.1 - resized.1);
    (dy / 2, dy / 2 + dy % 2, dx / 2, dx / 2 + dx % 2)
}
