#!/usr/bin/env python3
"""Train a small CLIP contrastively on Penumbra image–caption pairs and export it for `encoders::clip::Clip`.

    train_clip.py --pairs PAIRS.parquet --out DIR [--seed 0] [--epochs 12] [--patch-size 16] ...

Input: a Parquet file with one row per (image, true caption, hard negative) triple:
    image_id (int64)   which image the row belongs to (rows of one image share it)
    image    (binary)  the PNG bytes (square; every image the same size) on the image's first row; later rows of
                       the same image may leave it null
    caption  (string)  a true caption of the image
    negative (string)  the same caption with exactly one attribute or relation made false
    heldout  (bool)    true for rows kept out of training (retrieval accuracy is measured on them)
    attributes (list<int32>, optional) on an image's first row: per patch (row-major), the colour, shape,
                       texture and size index of the object owning it, -1 four times for background (the
                       `demo_clip` stage writes it from the scene graphs); read with --attribute-weight > 0

Output: DIR/hf (a Hugging Face CLIPModel folder: config.json, model.safetensors, tokenizer files; with a stem, the
tokenizer files only, since CLIPModel cannot load the stem) and DIR itself
in the ONNX layout `Clip::load` reads (image.onnx, text.onnx, tokenizer.json, clip_config.json), exported by
scripts/export_onnx.py's `export_clip_model`. Prints one JSON line: held-out retrieval accuracy (true caption
scores above its one-wrong-attribute negative), parameter count, bytes, seconds.

Why these choices: CLIP's own 49k BPE cannot be downloaded here, so the tokenizer is CLIP's pipeline
(transformers' CLIPTokenizer: lowercase, CLIP split regex, byte-level BPE with '</w>' ends, <|startoftext|> …
<|endoftext|>) with merges learned on the caption vocabulary by a deterministic BPE (`build_tokenizer`). The loss is CLIP's symmetric InfoNCE over the batch, with each
image's hard negative added as an extra text column (as NegCLIP does) so attribute binding is learned rather
than just object presence. Deterministic: seeded torch, one thread count, fixed data order per seed.

Two options make the image tower see more than colour, measured by a linear probe of each object's attributes
from the patch tokens (issue 21's notes): `--stem-channels C` replaces the linear patch embedding by a small
convolutional stem (3×3 convolutions halving the resolution down to the patch size, as the ViT paper's hybrid),
since a 2-layer ViT trained from scratch on ~1,400 images learns no shape from 8-pixel patches; and
`--attribute-weight W` adds W times a dense loss: each patch's owner object's colour, shape, texture and size
predicted by a linear head from the penultimate layer (the features the decoder reads), background patches
ignored. The heads are dropped after training; the exported towers are CLIP's.

`--background-jitter P` recolours the background of a share P of the training images at each step to a
uniform random colour (`recolour_backgrounds`), so that the tokens describe the objects whatever they are
drawn on: without it the tower reads every object on a background it never saw (the ood split's dark one)
as noise, and a probe reads shape and size there at chance.
"""
import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_onnx import export_clip_model  # noqa: E402  (same export as any real CLIP)

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


class ConvStem(torch.nn.Sequential):
    """3×3 convolutions, the first at full resolution, then stride 2 until one output per patch, the last with
    `width` channels and no activation (it stands where CLIP's linear patch embedding stood).
    `weight` is read by transformers' CLIP embeddings for its dtype."""

    def __init__(self, patch_size, channels, width):
        layers = [torch.nn.Conv2d(3, channels, 3, 1, 1), torch.nn.GELU()]
        ch, k = channels, patch_size
        while k > 1:
            out = width if k == 2 else min(2 * ch, width)
            layers.append(torch.nn.Conv2d(ch, out, 3, 2, 1))
            if k > 2:
                layers.append(torch.nn.GELU())
            ch, k = out, k // 2
        super().__init__(*layers)

    @property
    def weight(self):
        return self[0].weight


ATTRIBUTES = ("colour", "shape", "texture", "size")


def patch_attributes(d, first, n_patches):
    """[images, patches, 4] int64 from the `attributes` column (-1: background or no labels)."""
    if "attributes" not in d:
        raise SystemExit("--attribute-weight > 0 needs the pairs' `attributes` column (per-patch object attributes)")
    out = np.full((len(first), n_patches, 4), -1, dtype=np.int64)
    for j, i in enumerate(first):
        a = d["attributes"][i]
        if a is None:
            continue
        if len(a) != 4 * n_patches:
            raise SystemExit(f"pairs row {i}: `attributes` has {len(a)} values, expected 4 × {n_patches} patches")
        out[j] = np.asarray(a, dtype=np.int64).reshape(n_patches, 4)
    return out


def read_pairs(path):
    import pyarrow.parquet as pq
    t = pq.read_table(path)
    need = {"image_id", "image", "caption", "negative", "heldout"}  # `attributes` is optional
    missing = need - set(t.column_names)
    if missing:
        raise SystemExit(f"{path}: expected columns {sorted(need)}, missing {sorted(missing)}")
    d = t.to_pydict()
    if not d["image_id"]:
        raise SystemExit(f"{path}: no rows")
    return d


def pixels(png_bytes):
    """PIL decode → RGB → [3, H, W] normalized as CLIPImageProcessor does (the images are already the model's
    size, so resize and crop are identities, on both the Python and the Rust side)."""
    from PIL import Image
    img = Image.open(io.BytesIO(png_bytes)).convert("RGB")
    a = np.asarray(img, dtype=np.float32) / 255.0
    return ((a - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


# How much of the new background a pixel takes falls from 1 to 0 as its 3 × 3 mean leaves the image's median
# colour (largest channel gap, 0–1 scale) from the first value to the second: the benchmark's noise
# (σ ≤ 32/255) averages down to ≤ 0.05 over 9 pixels, and a ramp, not a cut, moves an object's blurred edge
# and a washed-out (low-contrast) object part of the way, as drawing it on the new background would.
BACKGROUND_RAMP = (0.15, 0.45)


def recolour_backgrounds(x, share, rng):
    """Normalized images [b, 3, H, W] with the background of a random `share` of them moved to a uniform random
    colour. The background is the image's median colour (it covers most of every scene); a full-contrast
    object's pixels keep theirs (`BACKGROUND_RAMP`)."""
    pick = rng.random(len(x)) < share
    if not pick.any():
        return x
    mean = torch.from_numpy(CLIP_MEAN)[None, :, None, None]
    std = torch.from_numpy(CLIP_STD)[None, :, None, None]
    raw = x * std + mean
    colour = torch.from_numpy(rng.random((len(x), 3)).astype(np.float32))
    bg = raw.flatten(2).median(dim=2).values
    smooth = torch.nn.functional.avg_pool2d(raw, 3, 1, 1, count_include_pad=False)
    gap = (smooth - bg[:, :, None, None]).abs().amax(1, keepdim=True)
    lo, hi = BACKGROUND_RAMP
    near = ((hi - gap) / (hi - lo)).clamp(0, 1)
    shift = (colour - bg)[:, :, None, None] * near * torch.from_numpy(pick.astype(np.float32))[:, None, None, None]
    return ((raw + shift).clamp(0, 1) - mean) / std


def byte_symbols():
    """The 256 symbols of byte-level BPE (GPT-2's bytes_to_unicode): printable bytes as themselves, the rest
    shifted past 255."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, n = dict(), 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return [out[b] for b in range(256)]


def build_tokenizer(captions, vocab_size):
    """CLIP's tokenizer pipeline (lowercase, CLIP's split regex, byte-level BPE with '</w>' word ends) with merges
    learned on the captions by a deterministic BPE: the most frequent adjacent pair is merged first, ties broken
    by the pair itself. (The `tokenizers` trainer breaks ties in hash order, so its vocabulary changed between
    runs of the same seed, and with it the demo_clip artifact.) Every byte symbol is in the vocabulary, so no
    text maps to the unknown token; the merges fill it up to `vocab_size`."""
    from collections import Counter
    from transformers import CLIPTokenizer
    base = CLIPTokenizer()
    norm, pre = base.backend_tokenizer.normalizer, base.backend_tokenizer.pre_tokenizer
    counts = Counter(w for c in captions for w, _ in pre.pre_tokenize_str(norm.normalize_str(c)))
    words = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in sorted(counts)}
    syms = byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for x in syms + [x + "</w>" for x in syms]:
        vocab.setdefault(x, len(vocab))
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for w, parts in words.items():
            for a, b in zip(parts, parts[1:]):
                pairs[(a, b)] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        for w, parts in words.items():
            i, out = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            words[w] = out
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 77
    return tok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--width", type=int, default=64, help="hidden size of both towers")
    p.add_argument("--layers", type=int, default=2, help="encoder layers of each tower")
    p.add_argument("--projection-dim", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=800, help="byte symbols (514 with the specials) + merges")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stem-channels", type=int, default=0, help="convolutional stem's first channels (0: linear patches)")
    p.add_argument("--attribute-weight", type=float, default=0.0, help="weight of the dense per-patch attribute loss")
    p.add_argument("--background-jitter", type=float, default=0.0,
                   help="share of training images whose background is recoloured at random at each step")
    a = p.parse_args()
    started = time.time()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)

    d = read_pairs(a.pairs)
    image_ids = np.array(d["image_id"], dtype=np.int64)
    heldout = np.array(d["heldout"], dtype=bool)
    uniq, first = np.unique(image_ids, return_index=True)
    for i in first:
        if d["image"][i] is None:
            raise SystemExit(f"{a.pairs}: row {i} (first row of image_id {image_ids[i]}) has no image bytes")
    imgs = np.stack([pixels(d["image"][i]) for i in first])
    size = imgs.shape[-1]
    if imgs.shape[-2] != size or size % a.patch_size:
        raise SystemExit(f"images are {imgs.shape[-2]}×{size}: expected square images whose side is a multiple of "
                         f"--patch-size {a.patch_size}")
    row_img = np.searchsorted(uniq, image_ids)  # row → index into imgs

    from transformers import CLIPConfig, CLIPModel
    tok = build_tokenizer([c for c in d["caption"]] + [n for n in d["negative"]], a.vocab_size)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    bos = tok.convert_tokens_to_ids(tok.bos_token)
    w, heads = a.width, max(1, a.width // 32)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=w, intermediate_size=4 * w, num_hidden_layers=a.layers,
                         num_attention_heads=heads, max_position_embeddings=77, eos_token_id=eos, bos_token_id=bos,
                         pad_token_id=eos, projection_dim=a.projection_dim),
        vision_config=dict(image_size=size, patch_size=a.patch_size, hidden_size=w, intermediate_size=4 * w,
                           num_hidden_layers=a.layers, num_attention_heads=heads, projection_dim=a.projection_dim),
        projection_dim=a.projection_dim)
    model = CLIPModel(cfg)
    if a.stem_channels:
        if a.patch_size & (a.patch_size - 1):
            raise SystemExit(f"--stem-channels needs a power-of-two --patch-size, got {a.patch_size}")
        model.vision_model.embeddings.patch_embedding = ConvStem(a.patch_size, a.stem_channels, w)
    n_patches = (size // a.patch_size) ** 2
    heads, labels = None, None
    if a.attribute_weight > 0:
        labels = torch.from_numpy(patch_attributes(d, first, n_patches))
        classes = [int(labels[..., k].max()) + 1 for k in range(4)]
        heads = torch.nn.ModuleList([torch.nn.Linear(w, max(c, 1)) for c in classes])

    def encode_text(texts):
        enc = tok(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    # Tokenized once: every caption and negative padded to the longest (short captions: ~20 tokens).
    all_ids, all_mask = encode_text(list(d["caption"]) + list(d["negative"]))
    n_rows = len(d["caption"])

    train_rows = np.flatnonzero(~heldout)
    test_rows = np.flatnonzero(heldout)
    if len(train_rows) == 0:
        raise SystemExit(f"{a.pairs}: every row is held out; nothing to train on")
    # Each step: a batch of distinct training images, one random true caption each (+ its hard negative).
    by_image = {}
    for r in train_rows:
        by_image.setdefault(row_img[r], []).append(r)
    train_imgs = np.array(sorted(by_image))
    rng = np.random.default_rng(a.seed)
    steps_per_epoch = max(1, len(train_imgs) // a.batch_size)
    total = steps_per_epoch * a.epochs
    params = list(model.parameters()) + (list(heads.parameters()) if heads is not None else [])
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=total, pct_start=0.1)
    images_t = torch.from_numpy(imgs)
    model.train()
    last_loss, last_attr = float("nan"), None
    for epoch in range(a.epochs):
        order = rng.permutation(train_imgs)
        for s in range(steps_per_epoch):
            bi = order[s * a.batch_size:(s + 1) * a.batch_size]
            rows = [by_image[i][rng.integers(len(by_image[i]))] for i in bi]
            sel = torch.tensor(rows + [r + n_rows for r in rows])
            ids, mask = all_ids[sel], all_mask[sel]
            pix = images_t[bi]
            if a.background_jitter > 0:
                pix = recolour_backgrounds(pix, a.background_jitter, rng)
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pix, output_hidden_states=heads is not None)
            logits = out.logits_per_image  # [b, 2b]: true captions then negatives
            target = torch.arange(len(bi))
            loss = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                          + torch.nn.functional.cross_entropy(logits[:, :len(bi)].t(), target))
            clip_loss = loss.detach()
            if heads is not None:
                tokens = out.vision_model_output.hidden_states[-2][:, 1:]  # the penultimate patch tokens
                y = labels[bi]
                parts = [torch.nn.functional.cross_entropy(h(tokens).flatten(0, 1), y[..., k].flatten(), ignore_index=-1)
                         for k, h in enumerate(heads) if (y[..., k] >= 0).any()]
                if parts:
                    attr = sum(parts) / len(parts)
                    loss = loss + a.attribute_weight * attr
                    last_attr = attr.item()
            if not torch.isfinite(loss):
                raise SystemExit(f"non-finite loss at epoch {epoch} step {s}")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            last_loss = clip_loss.item()
        extra = f", attribute loss {last_attr:.4f}" if last_attr is not None else ""
        print(f"train_clip: epoch {epoch} loss {last_loss:.4f}{extra} ({time.time() - started:.1f} s)", file=sys.stderr)

    model.eval()
    acc = None
    if len(test_rows):
        with torch.no_grad():
            ie = model.get_image_features(pixel_values=images_t[row_img[test_rows]])
            ie = ie.pooler_output if hasattr(ie, "pooler_output") else ie
            tp = model.get_text_features(*encode_text([d["caption"][r] for r in test_rows]))
            tn = model.get_text_features(*encode_text([d["negative"][r] for r in test_rows]))
            tp = tp.pooler_output if hasattr(tp, "pooler_output") else tp
            tn = tn.pooler_output if hasattr(tn, "pooler_output") else tn
            cos = torch.nn.functional.cosine_similarity
            acc = (cos(ie, tp) > cos(ie, tn)).float().mean().item()
    train_seconds = time.time() - started

    out = Path(a.out)
    hf = out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    if not a.stem_channels:
        model.save_pretrained(hf)
    tok.save_pretrained(hf)
    export_clip_model(model, out, tokenizer=tok)
    n_params = sum(p.numel() for p in model.parameters())
    size_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({
        "heldout_retrieval_accuracy": acc, "heldout_pairs": int(len(test_rows)), "train_pairs": int(len(train_rows)),
        "train_images": int(len(train_imgs)), "epochs": a.epochs, "final_loss": last_loss,
        "parameters": int(n_params), "bytes": int(size_bytes), "image_size": int(size), "patch_size": a.patch_size,
        "patches": int(n_patches), "vision_hidden": w, "vocab_size": len(tok), "seed": a.seed,
        "stem_channels": a.stem_channels, "attribute_weight": a.attribute_weight,
        "background_jitter": a.background_jitter, "final_attribute_loss": last_attr,
        "train_seconds": round(train_seconds, 2), "seconds": round(time.time() - started, 2),
    }))


if __name__ == "__main__":
    main()
