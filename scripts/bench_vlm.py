#!/usr/bin/env python3
"""transformers baseline for LLaVA-NeXT on CPU (2 threads): a small real-architecture configuration with
random weights (SmolLM2-135M's Llama shape as the text tower, CLIP ViT-B/32's shape at 224 px as the
vision tower, v1.6-style pinpoints at 224), one 448x336 photo crop (a 2x2 canvas: 5 tiles).
Writes the folder to target/bench-vlm/ (git-ignored) for the Rust side:
  cargo test --test backbones perf_ -- --ignored --nocapture
Measures: greedy generation of 32 new tokens (prefill included) in tokens/s, and one LoRA SFT step
(r 8 on every projection, batch 1, the image prompt + 32 response tokens) in seconds, f32 and bf16.
"""
import os
import sys
import time

import torch
from PIL import Image
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                          LlavaNextImageProcessorPil)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "target", "bench-vlm")
PINS = [[224, 448], [448, 224], [448, 448], [672, 224], [224, 672]]


def build():
    torch.manual_seed(0)
    text = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       rope_theta=100000.0, tie_word_embeddings=True, initializer_range=0.04)
    vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=224, patch_size=32, hidden_act="quick_gelu")
    cfg = LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=49151,
                          image_grid_pinpoints=PINS, vision_feature_layer=-2, tie_word_embeddings=True)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                    image_grid_pinpoints=PINS)
    model.save_pretrained(OUT)
    ip.save_pretrained(OUT)
    return model, ip


def main():
    torch.set_num_threads(2)
    model, ip = build()
    im = Image.open(os.path.join(ROOT, "tests", "fixtures", "encoders", "photos", "chelsea.png")).convert("RGB")
    im = im.crop((0, 0, 448, 300))
    inp = ip(images=[im], return_tensors="pt")
    n_img = 49 + 0  # placeholder, replaced below by the processor arithmetic through the model
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inp["pixel_values"], image_sizes=inp["image_sizes"]).pooler_output
    n_img = feats[0].shape[0]
    ids = torch.tensor([[1, 2, 3] + [49151] * n_img + [4, 5, 6, 7]])
    print(f"image tokens {n_img}, prompt {ids.shape[1]}")
    for dtype in (torch.float32, torch.bfloat16):
        m = model.to(dtype)
        pv = inp["pixel_values"].to(dtype)
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv, image_sizes=inp["image_sizes"],
                  do_sample=False, pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            m.generate(**kw, max_new_tokens=2)
            t = time.perf_counter()
            m.generate(**kw, max_new_tokens=32, min_new_tokens=32)
            dt = time.perf_counter() - t
        print(f"transformers {dtype} generation: {32 / dt:.1f} tokens/s (32 tokens, prefill included, {dt:.2f} s)")
        # one LoRA step: r 8 on every projection of the text tower via hooks, base frozen
        hooks, params = [], []
        for name, mod in m.model.language_model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in (
                    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                a = (torch.randn(8, mod.in_features) * 0.01).to(dtype).requires_grad_(True)
                b = torch.zeros(mod.out_features, 8, dtype=dtype, requires_grad=True)
                params += [a, b]
                hooks.append(mod.register_forward_hook(lambda mm, i, o, a=a, b=b: o + (i[0] @ a.T @ b.T) * 2.0))
        for p in m.parameters():
            p.requires_grad_(False)
        full = torch.cat([ids, torch.randint(10, 40000, (1, 32))], 1)
        opt = torch.optim.AdamW(params, lr=1e-4)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            logits = m(input_ids=full, pixel_values=pv, image_sizes=inp["image_sizes"]).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(1, full[0, 1:, None])[:, 0]
            loss = -lp[-32:].mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
        for h in hooks:
            h.remove()
        print(f"transformers {dtype} LoRA SFT step: {min(times[1:]):.2f} s (best of steps 2-3)")


if __name__ == "__main__":
    main()
