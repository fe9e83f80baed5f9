#!/usr/bin/env python3
"""Golden outputs for tests/encoders.rs, from the reference implementations (sentence-transformers,
transformers' CLIPModel / CLIPImageProcessorPil / CLIPTokenizer, sentence-transformers' CrossEncoder).

Run once (needs `scripts/export_onnx.py minilm` done first, i.e. scripts/setup.sh):
    .venv/bin/python scripts/make_encoder_goldens.py
Writes tests/fixtures/encoders/: minilm_golden.json, clip_tiny/ (ONNX + tokenizer, re-exported here so the
goldens come from the very weights in the ONNX files), clip_tiny_golden.json, photos/*.png|jpg,
clip_preprocess_golden.json + photos/*.codes224.u8, cross_encoder_tiny/, cross_encoder_golden.json.
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_onnx  # noqa: E402

ROOT = export_onnx.ROOT
FX = ROOT / "tests" / "fixtures" / "encoders"
MINILM = ROOT / ".deps" / "models" / "all-MiniLM-L6-v2"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def f32list(a):
    # 7 significant digits: below every tolerance the tests use, and half the fixture size
    return [float(f"{x:.7g}") for x in np.asarray(a, dtype=np.float32).reshape(-1)]


def write_json(name, obj):
    path = FX / name
    path.write_text(json.dumps(obj))
    print(f"goldens: wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def long_text(lines, n_words):
    words = " ".join(lines).split()
    return " ".join(words[:n_words])


# ---------------------------------------------------------------- MiniLM ------------------------------------
def minilm():
    from sentence_transformers import SentenceTransformer
    lines = export_onnx.corpus_lines()
    picked = lines[::64][:60]  # 60 real sentences spread over the corpus
    over_long = long_text(lines[100:200], 400)  # > 256 word pieces: truncated by both sides
    sentences = picked + [over_long, "Café naïve résumé — “quoted” text, 3.14 & 100%."]
    model = SentenceTransformer(str(MINILM), device="cpu")
    emb = model.encode(sentences, batch_size=16, convert_to_numpy=True, normalize_embeddings=False)
    n_tokens = [len(model.tokenizer(s)["input_ids"]) for s in sentences]
    write_json("minilm_golden.json", {
        "reference": "sentence-transformers " + __import__("sentence_transformers").__version__,
        "max_seq_length": model.max_seq_length, "dim": int(emb.shape[1]),
        "sentences": sentences, "untruncated_tokens": n_tokens, "embeddings": f32list(emb)})


# ---------------------------------------------------------------- photos + preprocessing --------------------
def photos():
    import skimage.data as d
    out = FX / "photos"
    out.mkdir(parents=True, exist_ok=True)
    imgs = {
        # landscape, 451x300 as shipped: downscaled to 224 on the short side
        "chelsea.png": Image.fromarray(d.chelsea()),
        # landscape 600x400 reduced to 330x220 (short side just under 224) (keeps the fixture small)
        "coffee.png": Image.fromarray(d.coffee()).resize((330, 220), Image.LANCZOS),
        # portrait crop 300x512 reduced to 180x307: short side < 224, so CLIP upsamples
        "astronaut_portrait.png": Image.fromarray(d.astronaut()[:, 100:400]).resize((180, 307), Image.LANCZOS),
    }
    for name, im in imgs.items():
        im.save(out / name, optimize=True)
    # a JPEG for the decode path and the truncated-file test
    Image.fromarray(d.rocket()).resize((320, 214), Image.LANCZOS).save(out / "rocket.jpg", quality=85)
    return sorted(imgs)


def preprocess_golden(names):
    """CLIPImageProcessor (PIL backend = the classic CLIPImageProcessor) at ViT-B/32's 224. Its pixel values are
    (k/255 - mean_c)/std_c with k the uint8 of the bicubic-resized, center-cropped image, so they are stored
    losslessly as those k (asserted below) and the test rebuilds the floats with the mean/std recorded here."""
    from transformers import CLIPImageProcessorPil
    proc = CLIPImageProcessorPil()
    assert proc.size == {"shortest_edge": 224} and proc.crop_size == {"height": 224, "width": 224}
    mean = np.array(proc.image_mean, dtype=np.float32)
    std = np.array(proc.image_std, dtype=np.float32)
    entries = []
    for name in names:
        im = Image.open(FX / "photos" / name).convert("RGB")
        pv = proc(images=im, return_tensors="np")["pixel_values"][0]  # [3, 224, 224] float32
        k = np.rint((pv * std[:, None, None] + mean[:, None, None]) * 255.0)
        assert k.min() >= 0 and k.max() <= 255
        k = k.astype(np.uint8)
        rebuilt = ((k.astype(np.float64) * (1 / 255)).astype(np.float32) - mean[:, None, None]) / std[:, None, None]
        err = float(np.abs(rebuilt - pv).max())
        assert err < 1e-6, f"{name}: pixel values are not (k/255-mean)/std exactly (max err {err})"
        # stored as a lossless PNG (height x width x RGB) so the fixture stays small
        codes = name.rsplit(".", 1)[0] + ".codes224.png"
        Image.fromarray(np.ascontiguousarray(k.transpose(1, 2, 0))).save(FX / "photos" / codes, optimize=True)
        entries.append({"photo": f"photos/{name}", "codes": f"photos/{codes}", "width": im.width, "height": im.height,
                        "pixel_sum": float(pv.astype(np.float64).sum()), "pixel_first8": f32list(pv.reshape(-1)[:8])})
    write_json("clip_preprocess_golden.json", {
        "reference": "transformers CLIPImageProcessorPil", "shortest_edge": 224, "crop": 224,
        "image_mean": f32list(mean), "image_std": f32list(std), "images": entries})


# ---------------------------------------------------------------- tiny CLIP ----------------------------------
def tiny_clip(names):
    from transformers import CLIPImageProcessorPil
    model, tok = export_onnx.export_tiny_clip(FX / "clip_tiny")
    lines = export_onnx.corpus_lines()
    texts = ["A photo depicts a cat on a sofa", "a red rocket on the launch pad", lines[7], lines[1234],
             "Two  people\tin SPACE suits!", long_text(lines[300:340], 120)]
    enc = tok(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    full = [len(tok(t)["input_ids"]) for t in texts]
    with torch.no_grad():
        text_embeds = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        if not torch.is_tensor(text_embeds):
            text_embeds = text_embeds.pooler_output
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ims = [Image.open(FX / "photos" / n).convert("RGB") for n in names]
    pv = proc(images=ims, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        vo = model.vision_model(pixel_values=pv, output_hidden_states=True)
        image_embeds = model.visual_projection(vo.pooler_output)
        penult = vo.hidden_states[-2]
    cos = torch.nn.functional.cosine_similarity(image_embeds[:, None, :], text_embeds[None, :, :], dim=-1)
    ids = [[int(i) for i, m in zip(row, mask) if m] for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
    write_json("clip_tiny_golden.json", {
        "reference": "transformers CLIPModel + CLIPTokenizer + CLIPImageProcessorPil(shortest_edge=32)",
        "texts": texts, "input_ids": ids, "untruncated_tokens": full, "text_embeds": f32list(text_embeds),
        "photos": [f"photos/{n}" for n in names], "pixel_values": f32list(pv), "image_embeds": f32list(image_embeds),
        "penultimate_shape": list(penult.shape), "penultimate": f32list(penult),
        "cosine_image_text": f32list(cos), "embed_dim": int(image_embeds.shape[1])})


# ---------------------------------------------------------------- tiny cross-encoder -------------------------
def tiny_cross_encoder():
    from sentence_transformers import CrossEncoder
    model, tok = export_onnx.export_tiny_cross_encoder(FX / "cross_encoder_tiny")
    lines = export_onnx.corpus_lines()
    pairs = [[lines[i], lines[i + 1]] for i in range(0, 40, 5)]
    pairs += [[lines[50], lines[50]], ["The cat sleeps.", "A rocket launches."],
              [long_text(lines[400:430], 90), lines[431]]]  # over 64 tokens: truncated longest-first
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        tok.save_pretrained(d)
        ce = CrossEncoder(d, device="cpu", max_length=64)
        scores = ce.predict([tuple(p) for p in pairs], batch_size=4, convert_to_numpy=True)
    full = [len(tok(a, b)["input_ids"]) for a, b in pairs]
    write_json("cross_encoder_golden.json", {
        "reference": "sentence-transformers CrossEncoder (sigmoid over 1 logit)", "max_length": 64,
        "pairs": pairs, "untruncated_tokens": full, "scores": f32list(scores)})


def main():
    torch.manual_seed(0)
    FX.mkdir(parents=True, exist_ok=True)
    what = sys.argv[1:] or ["minilm", "photos", "clip", "cross"]
    names = photos() if ("photos" in what or "clip" in what) else None
    if "minilm" in what:
        minilm()
    if "photos" in what:
        preprocess_golden(names)
    if "clip" in what:
        tiny_clip(names)
    if "cross" in what:
        tiny_cross_encoder()


if __name__ == "__main__":
    main()
