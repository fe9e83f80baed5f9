//! The paper's backbones against transformers (fixtures from scripts/make_vlm_goldens.py): LLaVA-NeXT's
//! image processor on real photos of awkward sizes, its CLIP tower, packing, logits, greedy generation
//! and one LoRA SFT step's gradients, with Llama and Mistral text towers in both weight layouts; and the
//! bad inputs it must refuse by name.
use mllm::generate::{generate_multimodal, GenerationParams};
use mllm::llava_next::{num_image_tokens, AnyresLayout, LlavaNext};
use mllm::lora::{attach, LoraParams};
use mllm::sft::{loss_backward, make_batch, SftExample};
use mllm::{DType, MllmError};
use mmboundary::encoders::clip::decode_image_file;
use mmboundary::encoders::llava_next_image::LlavaNextImageProcessor;
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
fn backbones() -> PathBuf {
    fixtures().join("backbones")
}
fn json(name: &str) -> Value {
    let p = backbones().join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}
/// Every tensor of a fixture safetensors file as (shape, f32 values) or raw u8.
fn tensors(name: &str) -> HashMap<String, (Vec<i64>, Vec<u8>, safetensors::Dtype)> {
    let p = backbones().join(name);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(k, v)| (k, (v.shape().iter().map(|&d| d as i64).collect(), v.data().to_vec(), v.dtype()))).collect()
}
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
fn tensor(t: &(Vec<i64>, Vec<u8>, safetensors::Dtype)) -> Tensor {
    assert_eq!(t.2, safetensors::Dtype::F32);
    Tensor::from_slice(&f32s(&t.1)).view(t.0.as_slice())
}
fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap()
}
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
fn ivec(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn processor() -> LlavaNextImageProcessor {
    LlavaNextImageProcessor::from_dir(&backbones().join("tiny-llava-next")).unwrap()
}

/// Pixel values, canvases, patch counts and image-token counts of LlavaNextImageProcessor (PIL) on real
/// photos: crops that hit every branch (ties, odd padding, row and column unpadding, exact fit, the
/// 56x168 canvas) and three whole photos.
#[test]
fn llava_next_pixels_and_token_counts_match_transformers_on_real_photos() {
    let meta = json("llava_next_pixels.json");
    let px = tensors("llava_next_pixels.safetensors");
    let proc_ = processor();
    let tile = meta["tile"].as_i64().unwrap();
    let rows = meta["images"].as_array().unwrap();
    assert_eq!(rows.len(), 15, "fixture images (10 PNG, 5 JPEG)");
    for row in rows {
        let key = row["key"].as_str().unwrap();
        let img = decode_image_file(&fixtures().join(row["file"].as_str().unwrap())).unwrap();
        let size = (row["size"][0].as_i64().unwrap(), row["size"][1].as_i64().unwrap());
        let ours = proc_.preprocess(&img);
        assert_eq!(ours.size, size, "{key}: image size (H, W)");
        assert_eq!([ours.canvas.0, ours.canvas.1], ivec(&row["canvas"])[..], "{key}: best canvas");
        assert_eq!(ours.n_patches as i64, row["patches"].as_i64().unwrap(), "{key}: patches");
        // Every value against what transformers' uint8 decode to (checked exact in the script) ...
        let (_, u8s, _) = &px[&format!("{key}.u8")];
        let n = (tile * tile) as usize;
        let mean = [0.48145466f64, 0.4578275, 0.40821073];
        let std = [0.26862954f64, 0.26130258, 0.27577711];
        let want: Vec<f32> =
            u8s.iter().enumerate().map(|(i, &b)| ((b as f64 / 255.0 - mean[(i / n) % 3]) / std[(i / n) % 3]) as f32).collect();
        let d = max_abs_diff(&ours.pixel_values, &want);
        assert!(d < 1e-5, "{key}: max |Δ pixel| {d}");
        // ... and a strided sample of transformers' float values directly.
        let sample = f32s(&px[&format!("{key}.sample")].1);
        let ours_sample: Vec<f32> = ours.pixel_values.iter().step_by(97).copied().collect();
        let d = max_abs_diff(&ours_sample, &sample);
        assert!(d < 1e-5, "{key}: max |Δ pixel| (float sample) {d}");
        let layout = AnyresLayout::new(size, &proc_.pinpoints, tile, tile / 14).unwrap();
        assert_eq!(num_image_tokens(&layout, (tile / 14) * (tile / 14)), row["tokens"].as_i64().unwrap(), "{key}: image tokens");
    }
}

/// The (base, grid) inputs of every image of a golden prompt, from the image files.
fn image_inputs(model: &LlavaNext, images: &Value) -> Vec<Tensor> {
    let meta = json("llava_next_pixels.json");
    let proc_ = processor();
    let mut out = vec![];
    for k in images.as_array().unwrap() {
        let row = meta["images"].as_array().unwrap().iter().find(|r| r["key"] == *k).unwrap();
        let img = decode_image_file(&fixtures().join(row["file"].as_str().unwrap())).unwrap();
        let p = proc_.preprocess(&img);
        let t = tile_tensor(&p.pixel_values, p.n_patches, proc_.clip.crop as i64);
        out.extend(tch::no_grad(|| model.image_inputs(&t, p.size).unwrap()));
    }
    out
}

fn tile_tensor(v: &[f32], n: usize, tile: i64) -> Tensor {
    Tensor::from_slice(v).view([n as i64, 3, tile, tile])
}

fn check_logits_and_greedy(model: &LlavaNext, name: &str) {
    let meta = json("llava_next_goldens.json");
    let g = tensors("llava_next_goldens.safetensors");
    let m = &meta[name];
    let images = image_inputs(model, &m["images"]);
    let ids = ivec(&m["input_ids"]);
    let n = ids.len() as i64;
    let logits = tch::no_grad(|| model.forward(&Tensor::from_slice(&ids).view([1, n]), &images, None).unwrap());
    let want = tensor(&g[&format!("{name}.logits")]);
    let d = max_abs_diff(&to_vec(&logits), &to_vec(&want));
    let scale = to_vec(&want).iter().fold(0f32, |a, x| a.max(x.abs()));
    assert!(scale > 2.0, "{name}: logits near uniform ({scale}), the golden could not fail");
    assert!(d < 1e-4, "{name}: max |Δlogit| {d}");
    let params = GenerationParams { max_new_tokens: 32, eos_token_ids: vec![-1], ..Default::default() };
    let out = generate_multimodal(model, &[(ids, images)], &params, None).unwrap();
    assert_eq!(out[0].tokens, ivec(&m["greedy"]), "{name}: 32 greedy tokens");
}

/// Llama text tower, hub weight layout: the CLIP tower's features of every tile, the packed features
/// (unpad, newline, base first), the logits of a two-image prompt and 32 greedy tokens.
#[test]
fn llava_next_llama_features_logits_and_greedy_match_transformers() {
    let meta = json("llava_next_goldens.json");
    assert_eq!(meta["llama_layout"], "hub");
    let g = tensors("llava_next_goldens.safetensors");
    let (_vs, model) = LlavaNext::load(&backbones().join("tiny-llava-next"), Device::Cpu, DType::F32, true).unwrap();
    let m = &meta["llama"];
    assert_eq!(ivec(&m["image_tokens"]), vec![70, 28]);
    // image 0: tiles through the tower, then packing
    let row = json("llava_next_pixels.json")["images"].as_array().unwrap().iter().find(|r| r["key"] == m["images"][0]).cloned().unwrap();
    let img = decode_image_file(&fixtures().join(row["file"].as_str().unwrap())).unwrap();
    let p = processor().preprocess(&img);
    let feats = tch::no_grad(|| model.tile_features(&tile_tensor(&p.pixel_values, p.n_patches, 56)).unwrap());
    let d = max_abs_diff(&to_vec(&feats), &to_vec(&tensor(&g["llama.vision_features0"])));
    assert!(d < 1e-4, "vision features: max |Δ| {d}");
    let [base, grid] = tch::no_grad(|| model.image_inputs(&tile_tensor(&p.pixel_values, p.n_patches, 56), p.size).unwrap());
    let packed = tch::no_grad(|| model.packed_rows(&base, &grid).unwrap());
    let want = tensor(&g["llama.packed0"]);
    assert_eq!(packed.size(), want.size());
    let d = max_abs_diff(&to_vec(&packed), &to_vec(&want));
    assert!(d < 1e-4, "packed features: max |Δ| {d}");
    check_logits_and_greedy(&model, "llama");
}

/// Mistral text tower with the weights in transformers 5's layout (`model.language_model.*`, ...).
#[test]
fn llava_next_mistral_other_layout_logits_and_greedy_match_transformers() {
    assert_eq!(json("llava_next_goldens.json")["mistral_layout"], "transformers5");
    let (_vs, model) = LlavaNext::load(&backbones().join("tiny-llava-next-mistral"), Device::Cpu, DType::F32, true).unwrap();
    assert_eq!(model.cfg.text_config.model_type, "mistral");
    check_logits_and_greedy(&model, "mistral");
}

/// One LoRA SFT step (adapters on every projection, A and B set to the script's values): the gradient of
/// every adapter matrix within 1e-4 relative of torch's, plain and with gradient checkpointing.
#[test]
fn llava_next_lora_sft_gradients_match_torch() {
    let meta = json("llava_next_goldens.json");
    let g = tensors("llava_next_goldens.safetensors");
    let m = &meta["llama"];
    let (vs, mut model) = LlavaNext::load(&backbones().join("tiny-llava-next"), Device::Cpu, DType::F32, true).unwrap();
    let lora = LoraParams { rank: m["lora"]["rank"].as_i64().unwrap(), alpha: m["lora"]["alpha"].as_f64().unwrap(), ..Default::default() };
    let names = attach(&vs, mllm::sft::AsMutLm::lm_mut(&mut model), &lora).unwrap();
    assert_eq!(names.len(), 2 * 7 * 2);
    let vars = vs.variables();
    for n in &names {
        let want = tensor(g.get(&format!("llama.lora.{n}")).unwrap_or_else(|| panic!("no golden adapter {n}")));
        tch::no_grad(|| vars[n].shallow_clone().copy_(&want));
    }
    let images = image_inputs(&model, &m["images"]);
    let ex = SftExample { prompt: ivec(&m["input_ids"]), response: ivec(&m["response"]), images };
    let batch = make_batch(&[&ex], Device::Cpu).unwrap();
    let n_tok = batch.target_mask.sum(Kind::Double).double_value(&[]);
    for checkpointed in [false, true] {
        for n in &names {
            let mut gr = vars[n].grad();
            if gr.defined() {
                let _ = gr.zero_();
            }
        }
        let loss = loss_backward(&model, &batch, n_tok, checkpointed).unwrap();
        assert!((loss - m["sft_loss"].as_f64().unwrap()).abs() < 1e-4, "loss {loss} vs {}", m["sft_loss"]);
        for n in &names {
            let got = to_vec(&vars[n].grad());
            let want = f32s(&g[&format!("llama.grad.{n}")].1);
            let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
            assert!(scale > 1e-6, "{n}: zero golden gradient");
            let d = max_abs_diff(&got, &want);
            assert!(d <= 1e-4 * scale, "{n} (checkpointed {checkpointed}): max |Δgrad| {d}, max |grad| {scale}");
        }
    }
}

/// Copies the tiny folder to a temp dir, lets `edit` change its config.json, and returns the load error.
fn load_edited(edit: impl FnOnce(&mut Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = backbones().join("tiny-llava-next");
    for f in ["config.json", "model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let p = dir.path().join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    match LlavaNext::load(dir.path(), Device::Cpu, DType::F32, true) {
        Ok(_) => panic!("the edited config loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn llava_next_refuses_unsupported_configs_naming_file_and_field() {
    let e = load_edited(|v| v["vision_feature_select_strategy"] = "full".into());
    assert!(e.contains("config.json") && e.contains("vision_feature_select_strategy") && e.contains("\"full\""), "{e}");
    let e = load_edited(|v| v["vision_feature_layer"] = (-5).into());
    assert!(e.contains("config.json") && e.contains("vision_feature_layer -5") && e.contains("3 layers"), "{e}");
    let e = load_edited(|v| v["vision_feature_layer"] = serde_json::json!([-2, 7]));
    assert!(e.contains("vision_feature_layer 7"), "{e}");
    let e = load_edited(|v| v["image_grid_pinpoints"] = serde_json::json!([[56, 112], [100, 56]]));
    assert!(e.contains("image_grid_pinpoints[1]") && e.contains("[100, 56]"), "{e}");
    let e = load_edited(|v| v["vision_config"]["model_type"] = "siglip_vision_model".into());
    assert!(e.contains("vision_config.model_type") && e.contains("siglip"), "{e}");
    let e = load_edited(|v| v["use_image_newline_parameter"] = false.into());
    assert!(e.contains("use_image_newline_parameter"), "{e}");
    let e = load_edited(|v| v["model_type"] = "llava".into());
    assert!(e.contains("llava_next") && e.contains("config.json"), "{e}");
}

#[test]
fn llava_next_checkpoint_without_image_newline_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = backbones().join("tiny-llava-next");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let (all, meta) = mllm::weights::read_safetensors(&src.join("model.safetensors")).unwrap();
    assert!(all.contains_key("image_newline"));
    let kept: Vec<(String, Tensor)> = all.into_iter().filter(|(k, _)| k != "image_newline").collect();
    mllm::weights::write_safetensors(&dir.path().join("model.safetensors"), &kept, meta).unwrap();
    let e = LlavaNext::load(dir.path(), Device::Cpu, DType::F32, false).unwrap_err();
    assert!(matches!(e, MllmError::Weights { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("image_newline") && e.contains(&dir.path().display().to_string()), "{e}");
}

#[test]
fn llava_next_processor_refuses_unsupported_preprocessor_settings() {
    let src = backbones().join("tiny-llava-next/preprocessor_config.json");
    let edited = |edit: &dyn Fn(&mut Value)| {
        let dir = tempfile::tempdir().unwrap();
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(dir.path().join("preprocessor_config.json"), v.to_string()).unwrap();
        LlavaNextImageProcessor::from_dir(dir.path()).unwrap_err().to_string()
    };
    let e = edited(&|v| v["resample"] = 2.into());
    assert!(e.contains("preprocessor_config.json") && e.contains("resample"), "{e}");
    let e = edited(&|v| v["crop_size"] = serde_json::json!({"height": 56, "width": 48}));
    assert!(e.contains("crop_size"), "{e}");
    let e = edited(&|v| v["image_grid_pinpoints"] = serde_json::json!([[56, 100]]));
    assert!(e.contains("image_grid_pinpoints[0]"), "{e}");
    let e = edited(&|v| v["do_normalize"] = false.into());
    assert!(e.contains("do_normalize"), "{e}");
}

/// Images whose features do not fill the prompt's image tokens, and tile counts that do not fit the
/// image's canvas, are errors with the counts.
#[test]
fn llava_next_mismatched_images_are_refused_with_counts() {
    let (_vs, model) = LlavaNext::load(&backbones().join("tiny-llava-next"), Device::Cpu, DType::F32, true).unwrap();
    let p = processor().preprocess(&decode_image_file(&backbones().join("images/odd_113x157.png")).unwrap());
    let tiles = tile_tensor(&p.pixel_values, p.n_patches, 56);
    let e = model.image_inputs(&tiles.narrow(0, 0, 3), p.size).unwrap_err().to_string();
    assert!(e.contains("expected 5 tiles"), "{e}");
    let inputs = tch::no_grad(|| model.image_inputs(&tiles, p.size).unwrap());
    let ids = Tensor::from_slice(&[5i64; 10]).view([1, 10]).masked_fill(&Tensor::from_slice(&[true; 10]).view([1, 10]), 127);
    let e = model.forward(&ids, &inputs, None).unwrap_err().to_string();
    assert!(e.contains("10 image-token positions") && e.contains("70 feature rows"), "{e}");
    let e = model.forward(&ids, &inputs[..1], None).unwrap_err().to_string();
    assert!(e.contains("two tensors per image"), "{e}");
}

/// Qwen2VLImageProcessor (PIL) on real photos: half-to-even rounding (70x126, 182x300), an exact grid,
/// an image below min_pixels (upscaled) and photos above max_pixels (downscaled). Every patch value is
/// checked through the sum and a position-weighted sum (any changed value), plus a strided sample of
/// transformers' values (any reordering of the merge-window layout).
#[test]
fn qwen2_vl_patches_grids_and_token_counts_match_transformers_on_real_photos() {
    use mmboundary::encoders::qwen2_vl_image::Qwen2VlImageProcessor;
    let meta = json("qwen2_vl_pixels.json");
    let px = tensors("qwen2_vl_pixels.safetensors");
    let proc_ = Qwen2VlImageProcessor::from_dir(&backbones().join("qwen2-vl-processor")).unwrap();
    assert_eq!(proc_.max_pixels, meta["max_pixels"].as_i64().unwrap());
    let rows = meta["images"].as_array().unwrap();
    assert_eq!(rows.len(), 12, "fixture images (7 PNG, 5 JPEG)");
    for row in rows {
        let key = row["key"].as_str().unwrap();
        let file = fixtures().join(row["file"].as_str().unwrap());
        let ours = proc_.preprocess(&decode_image_file(&file).unwrap(), key).unwrap();
        assert_eq!(ours.grid_thw.to_vec(), ivec(&row["grid_thw"]), "{key}: grid (t, h, w)");
        assert_eq!([ours.resized.0, ours.resized.1], ivec(&row["resized"])[..], "{key}: resized (h, w)");
        assert_eq!(ours.num_image_tokens(2), row["tokens"].as_i64().unwrap(), "{key}: tokens");
        let sum: f64 = ours.patches.iter().map(|&x| x as f64).sum();
        let wsum: f64 = ours.patches.iter().enumerate().map(|(i, &x)| x as f64 * ((i % 1000) + 1) as f64).sum();
        let (want, wwant) = (row["sum"].as_f64().unwrap(), row["weighted_sum"].as_f64().unwrap());
        assert!((sum - want).abs() < 1e-3, "{key}: Σ patches {sum} vs {want}");
        assert!((wsum - wwant).abs() < 1e-1, "{key}: position-weighted Σ {wsum} vs {wwant}");
        let sample = f32s(&px[&format!("{key}.sample")].1);
        let ours_sample: Vec<f32> = ours.patches.iter().step_by(31).copied().collect();
        let d = max_abs_diff(&ours_sample, &sample);
        assert!(d < 1e-5, "{key}: max |Δ| of the strided sample {d}");
    }
}

/// Real JPEG photos (baseline 4:2:0 and 4:4:4, progressive, grayscale, and the encoders' rocket.jpg)
/// decode to exactly Pillow's bytes (count, sum and position-weighted sum of the RGB bytes), and
/// CLIPImageProcessor's pixel values on them match within 1e-5 (the LLaVA-NeXT and Qwen2-VL tests above
/// include the same JPEGs).
#[test]
fn jpegs_decode_as_pillow_and_clip_pixels_match_transformers() {
    use mmboundary::encoders::clip::ClipPreprocess;
    let meta = json("jpeg_pixels.json");
    let px = tensors("jpeg_pixels.safetensors");
    let rows = meta["images"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "fixture JPEGs");
    let clip = ClipPreprocess { shortest_edge: 224, crop: 224, ..Default::default() };
    for row in rows {
        let key = row["key"].as_str().unwrap();
        let img = decode_image_file(&fixtures().join(row["file"].as_str().unwrap())).unwrap();
        assert_eq!([img.height() as i64, img.width() as i64], ivec(&row["size"])[..], "{key}: size");
        let raw = img.as_raw();
        let sum: i64 = raw.iter().map(|&b| b as i64).sum();
        let wsum: i64 = raw.iter().enumerate().map(|(i, &b)| b as i64 * ((i as i64 % 65521) + 1)).sum();
        assert_eq!(
            vec![raw.len() as i64, sum, wsum],
            ivec(&row["rgb_bytes"]),
            "{key}: decoded bytes (count, Σ, weighted Σ) differ from Pillow's"
        );
        let pv = clip.pixel_values(&img);
        let total: f64 = pv.iter().map(|&x| x as f64).sum();
        assert!((total - row["clip_sum"].as_f64().unwrap()).abs() < 1e-3, "{key}: Σ CLIP pixels {total} vs {}", row["clip_sum"]);
        let sample = f32s(&px[&format!("{key}.clip_sample")].1);
        let ours: Vec<f32> = pv.iter().step_by(31).copied().collect();
        let d = max_abs_diff(&ours, &sample);
        assert!(d < 1e-5, "{key}: CLIP pixels max |Δ| {d}");
    }
}

/// A JPEG libjpeg refuses (here: a frame header declaring 7-bit samples) is an error naming the item,
/// never a panic or a grey image.
#[test]
fn a_jpeg_libjpeg_refuses_is_an_error_naming_the_item() {
    let mut bytes = std::fs::read(backbones().join("jpeg/chelsea_q90_420.jpg")).unwrap();
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline frame header");
    bytes[sof + 4] = 7; // sample precision
    let e = mmboundary::encoders::clip::decode_image_bytes(&bytes, "bad-precision.jpg").unwrap_err().to_string();
    assert!(e.contains("bad-precision.jpg") && e.contains("JPEG"), "{e}");
}

/// Qwen2-VL's vision transformer (patch embedding, 2-D rotary, attention within each image, 2x2 merger)
/// on two real images of different grids, from the image files through our processor, and the M-RoPE
/// position ids and rope delta of a prompt holding both, against transformers.
#[test]
fn qwen2_vl_vision_tower_and_rope_index_match_transformers() {
    use mllm::qwen2_vl::{rope_index, Qwen2VlVision};
    use mmboundary::encoders::qwen2_vl_image::Qwen2VlImageProcessor;
    let meta = json("llava_next_goldens.json");
    let m = &meta["qwen2_vl"];
    let g = tensors("llava_next_goldens.safetensors");
    let proc_ = Qwen2VlImageProcessor::from_dir(&backbones().join("qwen2-vl-processor")).unwrap();
    let (_vs, vision) = Qwen2VlVision::load(&backbones().join("tiny-qwen2-vl"), Device::Cpu).unwrap();
    let (mut rows, mut grids) = (vec![], vec![]);
    for k in m["images"].as_array().unwrap() {
        let file = backbones().join(format!("images/{}.png", k.as_str().unwrap()));
        let p = proc_.preprocess(&decode_image_file(&file).unwrap(), k.as_str().unwrap()).unwrap();
        rows.extend(p.patches);
        grids.push(p.grid_thw);
    }
    let want_grids: Vec<Vec<i64>> = m["grid_thw"].as_array().unwrap().iter().map(ivec).collect();
    assert_eq!(grids.iter().map(|g| g.to_vec()).collect::<Vec<_>>(), want_grids);
    let n = rows.len() as i64 / vision.cfg.patch_dim();
    let feats = tch::no_grad(|| vision.forward(&Tensor::from_slice(&rows).view([n, -1]), &grids).unwrap());
    let want = tensor(&g["qwen2_vl.visual"]);
    assert_eq!(feats.size(), want.size());
    let d = max_abs_diff(&to_vec(&feats), &to_vec(&want));
    assert!(d < 1e-4, "merged vision features: max |Δ| {d}");
    let ids = ivec(&m["input_ids"]);
    let (pos, delta) = rope_index(&ids, 152, &grids, 2).unwrap();
    for a in 0..3 {
        let got: Vec<i64> = pos.iter().map(|p| p[a]).collect();
        assert_eq!(got, ivec(&m["position_ids"][a]), "axis {a}");
    }
    assert_eq!(delta, m["rope_delta"].as_i64().unwrap());
    // the grid count must match the prompt's images
    assert!(rope_index(&ids, 152, &grids[..1], 2).unwrap_err().to_string().contains("only 1 image grid"));
    // the whole prompt: image features spliced in, Qwen2 decoder with M-RoPE
    let (_vs, model) = mllm::qwen2_vl::Qwen2Vl::load(&backbones().join("tiny-qwen2-vl"), Device::Cpu).unwrap();
    assert_eq!(model.mrope_section, vec![2, 3, 3]);
    let patches = Tensor::from_slice(&rows).view([n, -1]);
    let logits = tch::no_grad(|| model.forward(&ids, Some(&patches), &grids).unwrap());
    let want = tensor(&g["qwen2_vl.logits"]);
    let scale = to_vec(&want).iter().fold(0f32, |a, x| a.max(x.abs()));
    assert!(scale > 2.0, "logits near uniform ({scale})");
    let d = max_abs_diff(&to_vec(&logits), &to_vec(&want));
    assert!(d < 1e-4, "Qwen2-VL logits: max |Δ| {d}");
    // 32 greedy tokens, decoded at `cache position + rope delta`
    let out = model.greedy(&ids, Some(&patches), &grids, 32).unwrap();
    assert_eq!(out, ivec(&m["greedy"]), "Qwen2-VL greedy tokens");
}

/// The other Qwen2-VL layouts: the hub's config (text keys at the top level, `rope_scaling` with
/// `type: mrope`, `in_chans`) with weights under transformers 5's names (`model.language_model.*`,
/// `model.visual.*`) gives the same logits; bad M-RoPE sections and a missing image token id are refused
/// naming the file and field.
#[test]
fn qwen2_vl_hub_config_layout_and_bad_configs() {
    use mllm::qwen2_vl::Qwen2Vl;
    let src = backbones().join("tiny-qwen2-vl");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut hub = cfg.as_object().unwrap().clone();
    let text = hub.remove("text_config").unwrap();
    for (k, v) in text.as_object().unwrap() {
        if k != "rope_parameters" && k != "model_type" {
            hub.insert(k.clone(), v.clone());
        }
    }
    hub.insert("rope_theta".into(), 1e6.into());
    hub.insert("rope_scaling".into(), serde_json::json!({"type": "mrope", "mrope_section": [2, 3, 3]}));
    let vc = hub["vision_config"].as_object_mut().unwrap();
    let ch = vc.remove("in_channels").unwrap();
    vc.insert("in_chans".into(), ch);
    vc.remove("rope_parameters");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), Value::Object(hub.clone()).to_string()).unwrap();
    let (all, meta) = mllm::weights::read_safetensors(&src.join("model.safetensors")).unwrap();
    let renamed: Vec<(String, Tensor)> = all
        .into_iter()
        .map(|(k, t)| {
            let k = if let Some(r) = k.strip_prefix("visual.") {
                format!("model.visual.{r}")
            } else if let Some(r) = k.strip_prefix("model.") {
                format!("model.language_model.{r}")
            } else {
                k
            };
            (k, t)
        })
        .collect();
    assert!(renamed.iter().any(|(k, _)| k.starts_with("model.language_model.layers.")));
    mllm::weights::write_safetensors(&dir.path().join("model.safetensors"), &renamed, meta).unwrap();
    let (_vs, a) = Qwen2Vl::load(dir.path(), Device::Cpu).unwrap();
    let (_vs2, b) = Qwen2Vl::load(&src, Device::Cpu).unwrap();
    let ids = ivec(&json("llava_next_goldens.json")["qwen2_vl"]["input_ids"]);
    let text_only: Vec<i64> = ids.iter().copied().filter(|&t| t != 152).collect();
    let la = tch::no_grad(|| a.forward(&text_only, None, &[]).unwrap());
    let lb = tch::no_grad(|| b.forward(&text_only, None, &[]).unwrap());
    assert!(max_abs_diff(&to_vec(&la), &to_vec(&lb)) < 1e-6, "the two layouts give different logits");
    // bad configs
    let write = |v: &Value| {
        std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
        Qwen2Vl::load(dir.path(), Device::Cpu).unwrap_err().to_string()
    };
    let mut bad = Value::Object(hub.clone());
    bad["rope_scaling"]["mrope_section"] = serde_json::json!([2, 3, 4]);
    let e = write(&bad);
    assert!(e.contains("config.json") && e.contains("mrope_section") && e.contains("head_dim / 2 = 8"), "{e}");
    let mut bad = Value::Object(hub.clone());
    bad.as_object_mut().unwrap().remove("image_token_id");
    let e = write(&bad);
    assert!(e.contains("config.json") && e.contains("image_token_id"), "{e}");
    let mut bad = Value::Object(hub);
    bad["vision_config"]["num_heads"] = 3.into();
    let e = write(&bad);
    assert!(e.contains("config.json") && e.contains("num_heads"), "{e}");
}

/// The cached-features path: a model loaded without its CLIP tower takes tile features computed elsewhere
/// (here by the tower-carrying model, standing in for the ONNX features stage), arranged by `pack_tiles`,
/// and gives the same logits; asking it for tile features names what is missing.
#[test]
fn llava_next_without_tower_takes_precomputed_tile_features() {
    use mllm::llava_next::pack_tiles;
    let dir = backbones().join("tiny-llava-next");
    let (_vs, full) = LlavaNext::load(&dir, Device::Cpu, DType::F32, true).unwrap();
    let (_vs2, bare) = LlavaNext::load(&dir, Device::Cpu, DType::F32, false).unwrap();
    assert!(bare.vision.is_none());
    let p = processor().preprocess(&decode_image_file(&backbones().join("images/rows_90x200.png")).unwrap());
    let tiles = tile_tensor(&p.pixel_values, p.n_patches, 56);
    let e = bare.tile_features(&tiles).unwrap_err().to_string();
    assert!(e.contains("without its vision tower"), "{e}");
    let feats = tch::no_grad(|| full.tile_features(&tiles).unwrap());
    let layout = bare.layout(p.size).unwrap();
    let (base, grid) = pack_tiles(&feats, &layout, 4).unwrap();
    let n_img = num_image_tokens(&layout, 16);
    let ids: Vec<i64> = [5, 6].into_iter().chain(std::iter::repeat_n(127, n_img as usize)).chain([7, 8]).collect();
    let ids = Tensor::from_slice(&ids).view([1, -1]);
    let a = tch::no_grad(|| bare.forward(&ids, &[base, grid], None).unwrap());
    let b = tch::no_grad(|| full.forward(&ids, &Vec::from(full.image_inputs(&tiles, p.size).unwrap()), None).unwrap());
    assert_eq!(max_abs_diff(&to_vec(&a), &to_vec(&b)), 0.0);
}

/// Qwen2-VL through the shared generation loop and the trainers' forward pass, against transformers: the
/// golden two-image prompt, left-padded in a batch beside a longer one-image prompt, decodes transformers'
/// 32 greedy tokens (M-RoPE tables for the padded prompt, each row's own rope delta while decoding); in a
/// right-padded SFT batch beside the same longer prompt, its next-token log-probs are the log-softmax of
/// transformers' logits. Loaded as the stages load it (`mllm::family::Mllm`, from config.json).
#[test]
fn qwen2_vl_batched_generation_and_training_forward_match_transformers() {
    use mllm::family::{Family, Mllm};
    use mllm::llava::EmbedInputs;
    use mmboundary::encoders::qwen2_vl_image::Qwen2VlImageProcessor;
    let meta = json("llava_next_goldens.json");
    let m = &meta["qwen2_vl"];
    let g = tensors("llava_next_goldens.safetensors");
    let dir = backbones().join("tiny-qwen2-vl");
    assert_eq!(Family::of_dir(&dir).unwrap(), Family::Qwen2Vl);
    let (_vs, model) = Mllm::load(&dir, Device::Cpu, DType::F32).unwrap();
    let Mllm::Qwen2Vl(q) = &model else { panic!("not loaded as Qwen2-VL") };
    let proc_ = Qwen2VlImageProcessor::from_dir(&backbones().join("qwen2-vl-processor")).unwrap();
    let mut images = vec![];
    for k in m["images"].as_array().unwrap() {
        let file = backbones().join(format!("images/{}.png", k.as_str().unwrap()));
        let p = proc_.preprocess(&decode_image_file(&file).unwrap(), k.as_str().unwrap()).unwrap();
        let n = p.grid_thw.iter().product::<i64>();
        images.extend(q.image_inputs(&Tensor::from_slice(&p.patches).view([n, -1]), p.grid_thw).unwrap());
    }
    let ids = ivec(&m["input_ids"]);
    // A longer prompt with the second image only: text, vision start, its image tokens, vision end, text.
    let n2 = images[2].size()[0] as usize;
    let mut other: Vec<i64> = (3..40).collect();
    other.push(150);
    other.extend(std::iter::repeat_n(152, n2));
    other.push(151);
    other.extend(10..30);
    assert!(other.len() > ids.len(), "the other prompt must be the longer one, so the golden one is padded");
    let other_images = vec![images[2].shallow_clone(), images[3].shallow_clone()];
    let golden_images: Vec<Tensor> = images.iter().map(|t| t.shallow_clone()).collect();
    let params = GenerationParams { max_new_tokens: 32, eos_token_ids: vec![-1], ..Default::default() };
    let out = generate_multimodal(&model, &[(other.clone(), other_images), (ids.clone(), golden_images)], &params, None).unwrap();
    assert_eq!(out[1].tokens, ivec(&m["greedy"]), "Qwen2-VL greedy tokens, left-padded in a batch");

    // The trainers' forward: right padding, the golden prompt split into prompt and response.
    let k = ids.len() - 5;
    let ex = [
        SftExample { prompt: other.clone(), response: vec![5, 6], images: vec![images[2].shallow_clone(), images[3].shallow_clone()] },
        SftExample { prompt: ids[..k].to_vec(), response: ids[k..].to_vec(), images: images.iter().map(|t| t.shallow_clone()).collect() },
    ];
    let batch = make_batch(&ex.iter().collect::<Vec<_>>(), Device::Cpu).unwrap();
    let (lp, _) = tch::no_grad(|| mllm::sft::next_token_logprobs(&model, &batch).unwrap());
    let want = tensor(&g["qwen2_vl.logits"]).squeeze_dim(0).log_softmax(-1, Kind::Float);
    let n = ids.len() as i64;
    let want_lp = want.narrow(0, 0, n - 1).gather(1, &Tensor::from_slice(&ids[1..]).view([n - 1, 1]), false).squeeze_dim(1);
    let got = lp.get(1).narrow(0, 0, n - 1);
    let d = max_abs_diff(&to_vec(&got), &to_vec(&want_lp));
    assert!(d < 1e-4, "Qwen2-VL next-token log-probs in a right-padded batch: max |Δ| {d}");
    // Without its M-RoPE tables (the text tower's 1-D positions) the same batch differs: the test can fail.
    let e = model.embed_inputs(&batch.ids, &batch.images).unwrap();
    let plain = tch::no_grad(|| model.text_model().forward_embeds(&e, Some(&batch.mask), None).unwrap());
    let lp1 = model.text_model().logits(&plain.get(1).narrow(0, 0, n - 1)).log_softmax(-1, Kind::Float);
    let lp1 = lp1.gather(1, &Tensor::from_slice(&ids[1..]).view([n - 1, 1]), false).squeeze_dim(1);
    assert!(max_abs_diff(&to_vec(&lp1), &to_vec(&want_lp)) > 1e-2, "1-D positions should not match M-RoPE");
}

/// Qwen2-VL training as the trainers run it: one LoRA step's adapter gradients on a right-padded
/// two-image batch are the same with gradient checkpointing (which must take the M-RoPE tables too) as
/// without; in bf16 an SFT trainer step with checkpointing keeps the weights bf16 (its f32 masters take
/// the update) and moves the adapters.
#[test]
fn qwen2_vl_lora_training_checkpointed_and_bf16() {
    use mllm::family::Mllm;
    use mllm::sft::{SftParams, SftTrainer};
    use mmboundary::encoders::qwen2_vl_image::Qwen2VlImageProcessor;
    let meta = json("llava_next_goldens.json");
    let m = &meta["qwen2_vl"];
    let proc_ = Qwen2VlImageProcessor::from_dir(&backbones().join("qwen2-vl-processor")).unwrap();
    let ids = ivec(&m["input_ids"]);
    let k = ids.len() - 6;
    let run = |dtype: DType, with_lora: bool| {
        let (vs, mut model) = Mllm::load(&backbones().join("tiny-qwen2-vl"), Device::Cpu, dtype).unwrap();
        let Mllm::Qwen2Vl(q) = &model else { panic!("not Qwen2-VL") };
        let mut images = vec![];
        for key in m["images"].as_array().unwrap() {
            let file = backbones().join(format!("images/{}.png", key.as_str().unwrap()));
            let p = proc_.preprocess(&decode_image_file(&file).unwrap(), key.as_str().unwrap()).unwrap();
            let n = p.grid_thw.iter().product::<i64>();
            images.extend(q.image_inputs(&Tensor::from_slice(&p.patches).view([n, -1]), p.grid_thw).unwrap());
        }
        if !with_lora {
            return (vs, model, vec![], images);
        }
        let names = attach(&vs, mllm::sft::AsMutLm::lm_mut(&mut model), &LoraParams { rank: 4, alpha: 8.0, ..Default::default() }).unwrap();
        // B starts at zero (no gradient reaches A): give it values so every adapter matrix has a gradient.
        tch::no_grad(|| {
            for (n, v) in vs.variables() {
                if n.contains("lora_B") {
                    let _ = v.shallow_clone().copy_(&(Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.1));
                }
            }
        });
        (vs, model, names, images)
    };
    let examples = |images: &[Tensor]| {
        [
            SftExample {
                prompt: ids[..k].to_vec(),
                response: ids[k..].to_vec(),
                images: images.iter().map(|t| t.shallow_clone()).collect(),
            },
            SftExample { prompt: vec![5, 6, 7], response: vec![8, 9], images: vec![] },
        ]
    };
    tch::manual_seed(0);
    let (vs, model, names, images) = run(DType::F32, true);
    let ex = examples(&images);
    let batch = make_batch(&ex.iter().collect::<Vec<_>>(), Device::Cpu).unwrap();
    let n_tok = batch.target_mask.sum(Kind::Double).double_value(&[]);
    let vars = vs.variables();
    let mut grads: Vec<Vec<Vec<f32>>> = vec![];
    let mut losses = vec![];
    for checkpointed in [false, true] {
        for n in &names {
            let mut gr = vars[n].grad();
            if gr.defined() {
                let _ = gr.zero_();
            }
        }
        losses.push(loss_backward(&model, &batch, n_tok, checkpointed).unwrap());
        grads.push(names.iter().map(|n| to_vec(&vars[n].grad())).collect());
    }
    assert!((losses[0] - losses[1]).abs() < 1e-6, "{losses:?}");
    for (i, n) in names.iter().enumerate() {
        let scale = grads[0][i].iter().fold(0f32, |a, x| a.max(x.abs()));
        assert!(scale > 1e-7, "{n}: no gradient");
        let d = max_abs_diff(&grads[0][i], &grads[1][i]);
        assert!(d <= 1e-4 * scale, "{n}: checkpointed gradient differs by {d} (max |grad| {scale})");
    }
    // bf16: a LoRA trainer step (with checkpointing) on the same batch keeps the weights bf16, its f32
    // masters take the update, and every adapter moves. (tests/mllm.rs checks bf16 logits against
    // transformers and bf16 SFT against f32 on a trained task.)
    let (vs16, mut model16, _, images16) = run(DType::Bf16, false);
    let ex16 = examples(&images16);
    let l16 = tch::no_grad(|| mllm::sft::evaluate_loss(&model16, &ex16, 2).unwrap());
    let l32 = tch::no_grad(|| mllm::sft::evaluate_loss(&model, &ex, 2).unwrap());
    eprintln!("loss bf16 {l16:.4}, f32 with random adapters {l32:.4}");
    assert!(l16.is_finite());
    let params = SftParams {
        epochs: 1,
        batch_size: 2,
        max_steps: Some(1),
        learning_rate: 1e-2,
        warmup_ratio: 0.0,
        gradient_checkpointing: true,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut tr = SftTrainer::new(&vs16, &mut model16, params).unwrap();
    let lora: Vec<(String, Vec<f32>)> =
        vs16.variables().into_iter().filter(|(n, _)| n.contains(".lora_B.")).map(|(n, t)| (n, to_vec(&t))).collect();
    assert!(!lora.is_empty(), "the trainer attached no adapters");
    let rep = tr.train(&model16, &ex16, dir.path()).unwrap();
    assert!(rep.rows.iter().all(|r| r.loss.is_finite()));
    let v16 = vs16.variables();
    assert!(v16.iter().filter(|(n, _)| !n.starts_with("visual.")).all(|(_, t)| t.kind() == Kind::BFloat16), "weights stay bf16");
    // B starts at zero, so after one step it holds the (clipped, Adam-normalised) update itself.
    let moved = lora.iter().filter(|(n, b)| to_vec(&v16[n]) != *b).count();
    assert_eq!(moved, lora.len(), "every adapter's B moves in one step");
}
