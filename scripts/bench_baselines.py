#!/usr/bin/env python3
"""Baselines for the encoder benchmark, on the same corpus, ONNX files and images as the Rust side:

  * sentence-transformers (PyTorch fp32) all-MiniLM-L6-v2, end to end (tokenization included);
  * Python onnxruntime on the same ONNX file(s), with the same length-sorted token-budget batching;
  * transformers CLIPModel (ViT-B/32 architecture, random weights) with CLIPImageProcessorPil, images/s
    including PIL decoding.

    .venv/bin/python scripts/bench_baselines.py [--threads 2] [--rust] [--limit N] [--rounds R]

Prints one JSON object. With --rust it also runs the Rust benchmark (built once with `cargo test --test encoders
--no-run` and scripts/bench_common.py's profile: the test profile's dependencies (opt-level 2) are reused and only
our crates are rebuilt optimized; `--release` instead rebuilds everything; each round runs that binary's
`full_benchmark`) and adds the ratios Rust / baseline, so one run gives them. With --rounds R everything runs R times interleaved; medians and spreads are reported, with the
load average before and after (a loaded machine measures its other processes, not the encoders). The photos are the Rust side's (see bench_images).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_onnx  # noqa: E402
from bench_common import cargo_profile_args, load_average, median_run, summarize_ratios  # noqa: E402

ROOT = export_onnx.ROOT
MINILM = ROOT / ".deps" / "models" / "all-MiniLM-L6-v2"
IMAGES = ROOT / ".deps" / "bench" / "images"


def bench_images():
    """The same photos as the Rust side (`encoders::bench::default_images`): .deps/bench/images if it holds
    any, else the committed tests/fixtures/encoders/photos; .jpg/.png, not the `.codes` fixtures, sorted."""
    for folder in [IMAGES, ROOT / "tests" / "fixtures" / "encoders" / "photos"]:
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir()
                           if p.name.endswith((".jpg", ".png")) and ".codes" not in p.name)
            if files:
                return files
    raise SystemExit(f"no benchmark photos in {IMAGES} or tests/fixtures/encoders/photos")


def sorted_batches(lengths, max_tokens=2048, max_items=128):
    """The same plan as src/encoders/batching.rs (longest first, items × padded length ≤ budget)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur, cur_max = [], [], 0
    for i in order:
        n = max(lengths[i], 1)
        new_max = max(cur_max, n)
        if cur and (len(cur) == max_items or (len(cur) + 1) * new_max > max_tokens):
            batches.append(cur)
            cur, cur_max = [], 0
        cur_max = max(cur_max, n)
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def ort_sentences(onnx_path, lines, threads):
    import onnxruntime as ort
    from tokenizers import Tokenizer
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.no_padding()

    def run(texts):
        encs = tok.encode_batch(texts)
        lengths = [len(e.ids) for e in encs]
        out = np.zeros((len(texts), 384), np.float32)
        for b in sorted_batches(lengths):
            L = max(lengths[i] for i in b)
            ids = np.zeros((len(b), L), np.int64)
            mask = np.zeros_like(ids)
            for r, i in enumerate(b):
                ids[r, :lengths[i]] = encs[i].ids
                mask[r, :lengths[i]] = 1
            h = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            p = (h * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
            out[b] = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        return out, sum(lengths)

    run(lines[:64])
    t = time.perf_counter()
    emb, tokens = run(lines)
    s = time.perf_counter() - t
    return {"sentences_per_s": len(lines) / s, "non_pad_tokens_per_s": tokens / s, "seconds": s}, emb


def st_sentences(lines, threads):
    import torch
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise SystemExit("sentence-transformers is missing: .venv/bin/pip install -r scripts/requirements-bench.txt")
    torch.set_num_threads(threads)
    model = SentenceTransformer(str(MINILM), device="cpu")
    model.encode(lines[:64], batch_size=32)
    t = time.perf_counter()
    emb = model.encode(lines, batch_size=32, convert_to_numpy=True)
    s = time.perf_counter() - t
    return {"sentences_per_s": len(lines) / s, "seconds": s, "batch_size": 32}, emb


def clip_images(paths, threads, repeat, batch=16):
    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel
    torch.set_num_threads(threads)
    torch.manual_seed(export_onnx.SEED)
    cfg = CLIPConfig(vision_config=dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12), projection_dim=512)
    model = CLIPModel(cfg).eval()
    proc = CLIPImageProcessorPil()
    files = [p for _ in range(repeat) for p in paths]

    def run(fs):
        with torch.inference_mode():
            for i in range(0, len(fs), batch):
                ims = [Image.open(f).convert("RGB") for f in fs[i:i + batch]]
                pv = proc(images=ims, return_tensors="pt")["pixel_values"]
                model.get_image_features(pixel_values=pv)

    run(files[:batch])
    t = time.perf_counter()
    run(files)
    s = time.perf_counter() - t
    return {"images_per_s": len(files) / s, "images": len(files), "seconds": s, "batch": batch}


def build_rust(release=False):
    """Builds the Rust benchmark's test binary once and returns its path, so that the rounds run the binary and
    no round waits on cargo. Without --release: the test profile, with our crates (not their dependencies)
    optimized like them (bench_common.cargo_profile_args)."""
    cmd = ["cargo", "test", "--locked", "-q"] + cargo_profile_args(release) + ["--test", "encoders", "--no-run", "--message-format=json"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    exes = [m["executable"] for m in map(json.loads, filter(None, res.stdout.splitlines()))
            if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "encoders"]
    if res.returncode != 0 or len(exes) != 1:
        print(res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"building the Rust benchmark failed ({' '.join(cmd)}): {len(exes)} test binaries named encoders")
    return exes[0]


def run_rust(exe, threads, limit, image_repeat):
    env = dict(os.environ, MMB_BENCH_THREADS=str(threads), MMB_BENCH_IMAGE_REPEAT=str(image_repeat), RUST_LOG="warn")
    if limit:
        env["MMB_BENCH_LIMIT"] = str(limit)
    res = subprocess.run([exe, "full_benchmark", "--exact", "--ignored", "--nocapture"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    start = res.stdout.find("{")
    if res.returncode != 0 or start < 0:
        print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"the Rust benchmark failed: {exe}")
    return json.JSONDecoder().raw_decode(res.stdout[start:])[0]


def rust_ratios(rep, st, o32, clip):
    """Rust / reference ratios of one round (both measured in that round)."""
    ratios = {}
    for e in rep["entries"]:
        if e.get("sentences_per_s") and e["file"].endswith("/model.onnx"):
            ratios["minilm_fp32_vs_python_onnxruntime"] = e["sentences_per_s"] / o32["sentences_per_s"]
            ratios["minilm_fp32_vs_sentence_transformers"] = e["sentences_per_s"] / st["sentences_per_s"]
        elif e.get("sentences_per_s"):
            ratios["minilm_fast_vs_sentence_transformers"] = e["sentences_per_s"] / st["sentences_per_s"]
            ratios["minilm_fast_vs_python_onnxruntime_fp32"] = e["sentences_per_s"] / o32["sentences_per_s"]
        if e.get("images_per_s") and clip:
            r = e["images_per_s"] / clip["images_per_s"]
            ratios["clip_b32_vs_transformers" if e["file"].endswith("/image.onnx") else "clip_b32_fast_vs_transformers"] = r
    return ratios


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, help="first N corpus sentences (both sides)")
    ap.add_argument("--image-repeat", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything, interleaved; medians and spreads are reported")
    ap.add_argument("--rust", action="store_true", help="also run the Rust benchmark and print ratios")
    ap.add_argument("--release", action="store_true",
                    help="build the Rust side with the release profile (a full rebuild of the dependencies, minutes)")
    ap.add_argument("--skip-clip", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    lines = export_onnx.corpus_lines(a.limit)
    fp32 = MINILM / "onnx" / "model.onnx"
    int8 = MINILM / "onnx" / "model_int8.onnx"
    out = {"threads": a.threads, "sentences": len(lines), "corpus": str(export_onnx.CORPUS), "rounds": a.rounds,
           "rust_profile": "release" if a.release else "test"}
    images = bench_images()
    out["image_files"] = [str(p) for p in images]
    runs = {k: [] for k in ["st", "o32", "o8", "clip", "rust"]}
    rust_exe = build_rust(a.release) if a.rust else None
    # the machine's load around the rounds: figures taken while other processes held the cores measure them
    out["load_average_before"] = load_average()
    for _ in range(a.rounds):
        o32, o32_emb = ort_sentences(fp32, lines, a.threads)
        runs["o32"].append(o32)
        if int8.exists():
            o8, o8_emb = ort_sentences(int8, lines, a.threads)
            o8["min_cosine_vs_fp32"] = float((o8_emb * o32_emb).sum(1).min())
            runs["o8"].append(o8)
        if a.rust:
            runs["rust"].append(run_rust(rust_exe, a.threads, a.limit, a.image_repeat))
        st, st_emb = st_sentences(lines, a.threads)
        st["onnxruntime_fp32_min_cosine_vs_this"] = float((o32_emb * st_emb).sum(1).min())
        runs["st"].append(st)
        if not a.skip_clip:
            runs["clip"].append(clip_images(images, a.threads, a.image_repeat))
    out["load_average_after"] = load_average()
    st = out["sentence_transformers"] = median_run(runs["st"], "sentences_per_s")
    out["python_onnxruntime_fp32"] = median_run(runs["o32"], "sentences_per_s")
    if runs["o8"]:
        out["python_onnxruntime_int8"] = median_run(runs["o8"], "sentences_per_s")
    if runs["clip"]:
        out["transformers_clip_vit_b32"] = median_run(runs["clip"], "images_per_s")
    if runs["rust"]:
        out["rust"] = runs["rust"]
        # Each ratio within its round (Rust and reference measured back to back), then the median over rounds.
        per_round = [rust_ratios(rep, runs["st"][k], runs["o32"][k], runs["clip"][k] if runs["clip"] else None)
                     for k, rep in enumerate(runs["rust"])]
        out["ratios"] = summarize_ratios(per_round)
        fast = [e for e in runs["rust"][-1]["entries"] if e.get("min_cosine_vs_reference") is not None]
        out["ratios"]["min_cosine_vs_fp32"] = {e["file"]: e["min_cosine_vs_reference"] for e in fast}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
