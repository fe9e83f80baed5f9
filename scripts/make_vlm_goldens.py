#!/usr/bin/env python3
"""Golden fixtures for the paper's backbones (tests/backbones.rs), computed with Hugging Face transformers
as the independent reference: LLaVA-NeXT (`LlavaNextForConditionalGeneration`, any-resolution tiles).

Writes under tests/fixtures/backbones/:
  images/*.png                 crops of the real photos in tests/fixtures/encoders/photos at sizes (H x W)
                               that hit every branch of the processor at tile 56 (ties, odd padding, row
                               and column unpadding, exact fit, the 56x168 canvas)
  llava_next_pixels.safetensors  per image: the processor's pixel values (as the uint8 they encode, checked
                               here to reproduce them exactly) and a strided sample of the float values
  llava_next_pixels.json       per image: file, (H, W), canvas, patches, image-token count
  tiny-llava-next/             Llama text tower, weights in the layout save_pretrained writes
  tiny-llava-next-mistral/     Mistral text tower, weights rewritten to the other key layout
  llava_next_goldens.safetensors / .json   vision features, packed features, logits, greedy tokens, and
                               one LoRA SFT step's gradients

Pinned: transformers 5.23.0, torch 2.11, Pillow 13.0.0 (recorded in the JSON; Pillow 13 changed the
resize pass order, which src/encoders/clip.rs follows), the PIL ("slow") image processor, eager
attention, float32, initializer_range 0.2 so logits are far from uniform.

Run once: .venv/bin/python scripts/make_vlm_goldens.py
"""
import json
import os
import shutil
import types

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    MistralConfig,
    Qwen2VLImageProcessorPil,
)
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "backbones")
PHOTOS = os.path.join(ROOT, "tests", "fixtures", "encoders", "photos")

TILE = 56
PINS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]  # v1.6's shape divided by 6, (height, width)
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_TOKEN = 127

# (name, source photo, top, left, height, width)
CROPS = [
    ("tie_40x40", "chelsea.png", 100, 150, 40, 40),  # every canvas holds it: tie, first = wide (56, 112)
    ("small_tall_50x30", "chelsea.png", 60, 200, 50, 30),  # tie; differs from the (w, h) convention
    ("rows_90x200", "chelsea.png", 20, 100, 90, 200),  # wide: padding rows cut by unpad
    ("cols_200x90", "chelsea.png", 50, 250, 200, 90),  # tall: padding columns cut by unpad
    ("odd_113x157", "coffee.png", 40, 60, 113, 157),  # odd padding (1 px more bottom/right)
    ("exact_56x56", "coffee.png", 100, 100, 56, 56),
    ("canvas56x168_60x170", "chelsea.png", 200, 30, 60, 170),
]
FULL = ["astronaut_portrait.png", "chelsea.png", "coffee.png"]
# Qwen2-VL processor inputs: odd multiples of 14 (half-to-even rounding), an exact grid, one below
# min_pixels (upscaled); the whole photos exceed max_pixels = 28*28*80 (downscaled), except the portrait.
QWEN_CROPS = [
    ("halfeven_70x126", "chelsea.png", 30, 40, 70, 126),
    ("halfeven_182x300", "chelsea.png", 60, 100, 182, 300),
    ("grid_56x84", "coffee.png", 50, 90, 56, 84),
    ("small_20x20", "coffee.png", 120, 150, 20, 20),
]
QWEN_MAX_PIXELS = 28 * 28 * 80


def processor():
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        image_grid_pinpoints=PINS,
        image_mean=MEAN,
        image_std=STD,
        do_pad=True,
    )


def token_count(ip, h, w):
    """LlavaNextProcessor's own arithmetic (hub processor_config: patch_size 14, 1 additional token, default)."""
    ns = types.SimpleNamespace(image_processor=ip, patch_size=14, num_additional_image_tokens=1)
    ns._get_unpadded_features = lambda *a: LlavaNextProcessor._get_unpadded_features(ns, *a)
    return LlavaNextProcessor._get_number_of_features(ns, h, w, TILE, TILE) - 1  # "default" drops CLS


def make_images(crops=CROPS):
    d = os.path.join(OUT, "images")
    os.makedirs(d, exist_ok=True)
    files = []
    for name, src, top, left, h, w in crops:
        im = Image.open(os.path.join(PHOTOS, src)).convert("RGB").crop((left, top, left + w, top + h))
        assert im.size == (w, h)
        path = os.path.join(d, name + ".png")
        im.save(path, optimize=True)
        files.append(("backbones/images/" + name + ".png", path))
    for f in FULL:
        files.append(("encoders/photos/" + f, os.path.join(PHOTOS, f)))
    return files


def pixels(ip, files):
    tensors, rows = {}, []
    for rel, path in files:
        im = Image.open(path).convert("RGB")
        out = ip(images=[im], return_tensors="pt")
        pv = out["pixel_values"][0]  # (n, 3, T, T) float32
        h, w = [int(x) for x in out["image_sizes"][0]]
        # The uint8 each value encodes, and a check that they reproduce the float values exactly.
        mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
        std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
        u8 = torch.round((pv * std + mean) * 255).clamp(0, 255).to(torch.uint8)
        again = ((u8.double() * (1 / 255)).float() - mean) / std
        assert (again - pv).abs().max().item() < 1e-6, rel
        key = os.path.basename(rel).rsplit(".", 1)[0]
        tensors[key + ".u8"] = u8.contiguous()
        tensors[key + ".sample"] = pv.reshape(-1)[::97].contiguous()
        canvas = select_best_resolution((h, w), PINS)
        rows.append(
            {
                "key": key,
                "file": rel,
                "size": [h, w],
                "canvas": list(canvas),
                "patches": int(pv.shape[0]),
                "tokens": token_count(ip, h, w),
            }
        )
    return tensors, rows


def clip_vision():
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=TILE,
        patch_size=14,
        projection_dim=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        initializer_range=0.2,
    )


def build(text, seed):
    torch.manual_seed(seed)
    cfg = LlavaNextConfig(
        vision_config=clip_vision().to_dict(),
        text_config=text.to_dict(),
        image_token_index=IMAGE_TOKEN,
        image_grid_pinpoints=PINS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_seq_length=16,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    model = LlavaNextForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # far from uniform logits
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif n.endswith("bias"):
                p.normal_(0, 0.1)
    model.config._attn_implementation = "eager"
    return model


def llama_text():
    return LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=0.2,
        pad_token_id=0,
    )


def mistral_text():
    return MistralConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        sliding_window=4096,
        tie_word_embeddings=False,
        initializer_range=0.2,
        pad_token_id=0,
    )


def save_folder(model, ip, path):
    if os.path.exists(path):
        shutil.rmtree(path)
    model.save_pretrained(path)
    ip.save_pretrained(path)


def other_layout(path):
    """Rewrites the saved weights to the other key layout (hub <-> transformers 5 in-memory)."""
    f = os.path.join(path, "model.safetensors")
    sd = load_file(f)
    hub = any(k.startswith("language_model.") for k in sd)
    out = {}
    for k, v in sd.items():
        if hub:
            if k.startswith("language_model.model."):
                k = "model.language_model." + k[len("language_model.model."):]
            elif k == "language_model.lm_head.weight":
                k = "lm_head.weight"
            else:
                k = "model." + k
        else:
            if k.startswith("model.language_model."):
                k = "language_model.model." + k[len("model.language_model."):]
            elif k == "lm_head.weight":
                k = "language_model.lm_head.weight"
            elif k.startswith("model."):
                k = k[len("model."):]
        out[k] = v.contiguous()
    save_file(out, f, metadata={"format": "pt"})
    return "hub" if not hub else "transformers5"


def layout_of(path):
    sd = load_file(os.path.join(path, "model.safetensors"))
    return "hub" if any(k.startswith("language_model.") for k in sd) else "transformers5"


def prompt(g, counts):
    """[4 text] <image 1> [3 text] <image 2> ... [5 text], token ids avoiding the image token."""
    parts = [torch.randint(3, IMAGE_TOKEN, (4,), generator=g)]
    for i, n in enumerate(counts):
        parts.append(torch.full((n,), IMAGE_TOKEN))
        parts.append(torch.randint(3, IMAGE_TOKEN, (3 if i + 1 < len(counts) else 5,), generator=g))
    return torch.cat(parts)[None]


def lora_grads(model, ids, pv, sizes, response, rank=4, alpha=8.0):
    """One SFT step's gradients with LoRA on every projection of the text tower (A and B both random so
    both get gradients). Loss: summed response-token NLL over the number of response tokens."""
    g = torch.Generator().manual_seed(11)
    adapters, hooks = {}, []
    for name, mod in model.model.language_model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in (
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
        ):
            a = (torch.randn(rank, mod.in_features, generator=g) * 0.2).requires_grad_(True)
            b = (torch.randn(mod.out_features, rank, generator=g) * 0.2).requires_grad_(True)
            ours = "language_model.model." + name
            adapters[ours] = (a, b)

            def hook(m, inp, out, a=a, b=b):
                return out + (inp[0] @ a.T @ b.T) * (alpha / rank)

            hooks.append(mod.register_forward_hook(hook))
    for p in model.parameters():
        p.requires_grad_(False)
    full = torch.cat([ids, response], 1)
    logits = model(input_ids=full, pixel_values=pv, image_sizes=sizes).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(1, full[0, 1:, None])[:, 0]
    n_prompt, n = ids.shape[1], full.shape[1]
    target = torch.tensor([1.0 if (i + 1 >= n_prompt and i + 1 < n) else 0.0 for i in range(n - 1)])
    loss = -(lp * target).sum() / target.sum()
    loss.backward()
    for h in hooks:
        h.remove()
    out = {}
    for k, (a, b) in adapters.items():
        out["lora." + k + ".lora_A.weight"] = a.detach().clone()
        out["lora." + k + ".lora_B.weight"] = b.detach().clone()
        out["grad." + k + ".lora_A.weight"] = a.grad.clone()
        out["grad." + k + ".lora_B.weight"] = b.grad.clone()
    return out, loss.item(), {"rank": rank, "alpha": alpha}


def model_goldens(model, ip, name, files_by_key, keys, seed, with_grads):
    ims = [Image.open(files_by_key[k]).convert("RGB") for k in keys]
    inputs = ip(images=ims, return_tensors="pt")
    pv, sizes = inputs["pixel_values"], inputs["image_sizes"]
    counts = [token_count(ip, int(s[0]), int(s[1])) for s in sizes]
    g = torch.Generator().manual_seed(seed)
    ids = prompt(g, counts)
    t = {}
    with torch.no_grad():
        ch, cw = select_best_resolution(sizes[0].tolist(), PINS)
        n0 = (ch // TILE) * (cw // TILE) + 1  # patches of image 0
        hs = model.model.vision_tower(pv[0, :n0], output_hidden_states=True).hidden_states
        t[name + ".vision_features0"] = hs[-2][:, 1:].contiguous()
        feats = model.model.get_image_features(pixel_values=pv, image_sizes=sizes).pooler_output
        assert [f.shape[0] for f in feats] == counts, ([f.shape[0] for f in feats], counts)
        t[name + ".packed0"] = feats[0].contiguous()
        logits = model(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits[0]
        t[name + ".logits"] = logits.contiguous()
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pv,
            image_sizes=sizes,
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[0, ids.shape[1]:]
    meta = {"images": keys, "image_tokens": counts, "input_ids": ids[0].tolist(), "greedy": gen.tolist()}
    if with_grads:
        response = torch.randint(3, IMAGE_TOKEN, (1, 6), generator=g)
        grads, loss, lora = lora_grads(model, ids, pv, sizes, response)
        t.update({name + "." + k: v.contiguous() for k, v in grads.items()})
        meta.update({"response": response[0].tolist(), "sft_loss": loss, "lora": lora})
    return t, meta


def qwen2_vl_pixels():
    """Qwen2VLImageProcessor (PIL): grid, resized size, token count, and the patch rows checked through a
    strided sample (catches any reordering) plus plain and position-weighted sums (catch any changed value)."""
    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=QWEN_MAX_PIXELS, patch_size=14, merge_size=2,
                                  temporal_patch_size=2)
    d = os.path.join(OUT, "qwen2-vl-processor")
    if os.path.exists(d):
        shutil.rmtree(d)
    ip.save_pretrained(d)
    tensors, rows = {}, []
    for rel, path in make_images(QWEN_CROPS) + jpegs():
        im = Image.open(path).convert("RGB")
        out = ip(images=[im], return_tensors="pt")
        pv = out["pixel_values"].double()
        thw = [int(x) for x in out["image_grid_thw"][0]]
        assert pv.shape == (thw[0] * thw[1] * thw[2], 3 * 2 * 14 * 14), pv.shape
        flat = pv.reshape(-1)
        w = (torch.arange(flat.numel(), dtype=torch.float64) % 1000) + 1
        key = os.path.basename(rel).rsplit(".", 1)[0]
        tensors[key + ".sample"] = out["pixel_values"].reshape(-1)[::31].contiguous()
        rows.append({"key": key, "file": rel, "size": [im.height, im.width], "grid_thw": thw,
                     "resized": [thw[1] * 14, thw[2] * 14], "tokens": thw[0] * thw[1] * thw[2] // 4,
                     "sum": flat.sum().item(), "weighted_sum": (flat * w).sum().item()})
    save_file(tensors, os.path.join(OUT, "qwen2_vl_pixels.safetensors"))
    with open(os.path.join(OUT, "qwen2_vl_pixels.json"), "w") as fh:
        json.dump({"transformers": transformers.__version__, "pillow": PIL.__version__, "max_pixels": QWEN_MAX_PIXELS, "images": rows}, fh, indent=1)
    for r in rows:
        print(r)


JPEGS = [  # (name, source, save options): real photos encoded by libjpeg-turbo through Pillow
    ("chelsea_q90_420", "chelsea.png", {"quality": 90}),
    ("coffee_q95_444", "coffee.png", {"quality": 95, "subsampling": 0}),
    ("astronaut_progressive", "astronaut_portrait.png", {"quality": 85, "progressive": True}),
    ("chelsea_gray", "chelsea.png", {"quality": 80, "gray": True}),
]


def byte_sums(a):
    """Exact integer checks of decoded bytes: count, sum, and a position-weighted sum."""
    flat = np.asarray(a, dtype=np.uint8).reshape(-1).astype(np.int64)
    w = (np.arange(flat.size, dtype=np.int64) % 65521) + 1
    return [int(flat.size), int(flat.sum()), int((flat * w).sum())]


def jpegs():
    """JPEG photos decoded by Pillow (libjpeg-turbo), and CLIPImageProcessor (PIL) on them."""
    from transformers import CLIPImageProcessorPil
    d = os.path.join(OUT, "jpeg")
    os.makedirs(d, exist_ok=True)
    files = [("encoders/photos/rocket.jpg", os.path.join(PHOTOS, "rocket.jpg"))]
    for name, src, opts in JPEGS:
        opts = dict(opts)
        im = Image.open(os.path.join(PHOTOS, src)).convert("RGB")
        if opts.pop("gray", False):
            im = im.convert("L")
        path = os.path.join(d, name + ".jpg")
        im.save(path, "JPEG", **opts)
        files.append(("backbones/jpeg/" + name + ".jpg", path))
    clip = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    rows, tensors = [], {}
    for rel, path in files:
        im = Image.open(path)
        mode = im.mode
        rgb = im.convert("RGB")
        key = os.path.basename(rel).rsplit(".", 1)[0]
        pv = clip(images=[rgb], return_tensors="pt")["pixel_values"][0]
        tensors[key + ".clip_sample"] = pv.reshape(-1)[::31].contiguous()
        rows.append({"key": key, "file": rel, "mode": mode, "size": [rgb.height, rgb.width],
                     "rgb_bytes": byte_sums(np.array(rgb)), "clip_sum": pv.double().sum().item()})
    save_file(tensors, os.path.join(OUT, "jpeg_pixels.safetensors"))
    with open(os.path.join(OUT, "jpeg_pixels.json"), "w") as fh:
        json.dump({"pillow": PIL.__version__, "images": rows}, fh, indent=1)
    return files


def qwen2_vl_model():
    """Tiny Qwen2-VL (merge 2, so the merger and merge-window order are exercised): the vision tower's
    merged features for two images of one prompt, and get_rope_index's 3-axis positions and delta."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    torch.manual_seed(5)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False, use_sliding_window=False,
                         initializer_range=0.2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config={"depth": 2, "embed_dim": 32, "num_heads": 4, "mlp_ratio": 2, "hidden_size": 64,
                       "hidden_act": "quick_gelu", "in_channels": 3, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "initializer_range": 0.2},
        vision_start_token_id=150, vision_end_token_id=151, image_token_id=152, video_token_id=153,
    )
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
            elif n.endswith("bias"):
                p.normal_(0, 0.1)
    path = os.path.join(OUT, "tiny-qwen2-vl")
    if os.path.exists(path):
        shutil.rmtree(path)
    model.save_pretrained(path)
    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=QWEN_MAX_PIXELS, patch_size=14, merge_size=2,
                                  temporal_patch_size=2)
    ims = [Image.open(os.path.join(OUT, "images", k + ".png")).convert("RGB") for k in ("grid_56x84", "halfeven_70x126")]
    inp = ip(images=ims, return_tensors="pt")
    pv, thw = inp["pixel_values"], inp["image_grid_thw"]
    counts = (thw.prod(-1) // 4).tolist()
    ids = [5, 6, 7, 150] + [152] * counts[0] + [151, 8, 150] + [152] * counts[1] + [151, 9, 10]
    ids_t = torch.tensor([ids])
    types = (ids_t == 152).int()
    with torch.no_grad():
        feats = model.model.visual(pv, grid_thw=thw).pooler_output
        pos, delta = model.model.get_rope_index(ids_t, types, image_grid_thw=thw)
        logits = model(input_ids=ids_t, pixel_values=pv, image_grid_thw=thw, mm_token_type_ids=types).logits[0]
        gen = model.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), pixel_values=pv,
                             image_grid_thw=thw, mm_token_type_ids=types, max_new_tokens=32, do_sample=False,
                             pad_token_id=0, eos_token_id=None)[0, ids_t.shape[1]:]
    t = {"qwen2_vl.visual": feats.contiguous(), "qwen2_vl.logits": logits.contiguous()}
    meta = {"images": ["grid_56x84", "halfeven_70x126"], "grid_thw": thw.tolist(), "input_ids": ids,
            "position_ids": pos[:, 0].tolist(), "rope_delta": int(delta[0, 0]), "greedy": gen.tolist(),
            "layout": "hub" if any(k.startswith("visual.") for k in load_file(os.path.join(path, "model.safetensors"))) else "transformers5"}
    return t, meta


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    ip = processor()
    files = make_images() + jpegs()
    ptensors, prows = pixels(ip, files)
    save_file(ptensors, os.path.join(OUT, "llava_next_pixels.safetensors"))
    with open(os.path.join(OUT, "llava_next_pixels.json"), "w") as fh:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "pillow": PIL.__version__, "tile": TILE,
                   "pinpoints": PINS, "images": prows}, fh, indent=1)
    by_key = {os.path.basename(rel).rsplit(".", 1)[0]: path for rel, path in files}

    tensors, meta = {}, {"transformers": transformers.__version__, "torch": torch.__version__}
    llama = build(llama_text(), 0)
    p = os.path.join(OUT, "tiny-llava-next")
    save_folder(llama, ip, p)
    meta["llama_layout"] = layout_of(p)
    t, m = model_goldens(llama, ip, "llama", by_key, ["odd_113x157", "small_tall_50x30"], 1, True)
    tensors.update(t)
    meta["llama"] = m

    mistral = build(mistral_text(), 2)
    p = os.path.join(OUT, "tiny-llava-next-mistral")
    save_folder(mistral, ip, p)
    meta["mistral_layout"] = other_layout(p)
    # the rewritten folder must load in transformers to the same model
    again = LlavaNextForConditionalGeneration.from_pretrained(p, attn_implementation="eager").eval()
    for (n1, p1), (n2, p2) in zip(mistral.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    t, m = model_goldens(mistral, ip, "mistral", by_key, ["rows_90x200"], 3, False)
    tensors.update(t)
    meta["mistral"] = m

    t, m = qwen2_vl_model()
    tensors.update(t)
    meta["qwen2_vl"] = m
    save_file(tensors, os.path.join(OUT, "llava_next_goldens.safetensors"))
    with open(os.path.join(OUT, "llava_next_goldens.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    print(json.dumps({k: v for k, v in meta.items() if not isinstance(v, dict)}, indent=1))
    for r in prows:
        print(r)
    qwen2_vl_pixels()


if __name__ == "__main__":
    main()
