#!/usr/bin/env python3
"""LLaVA-NeXT and Qwen2-VL speed on CPU against transformers: small real-architecture configurations with
random weights, the same image, prompt, generated-token count and LoRA SFT step on both sides.

  .venv/bin/python scripts/bench_vlm.py rounds [--rounds 5] [--families llava_next,qwen2_vl]
        [--dtypes f32,bf16] [--tasks generate,train] [--threads 2] [--out target/bench-vlm/report]

builds the two model folders (target/bench-vlm/<family>/, git-ignored, seeded: the same weights every time)
and `mmb-torch` (our crates optimized, scripts/bench_common.py), then runs, for every round and every
family × dtype × task, our side (`mmb-torch bench-vlm`, src/jobs/bench_vlm.rs) and transformers'
(`bench_vlm.py run`, this file), each in a fresh process, back to back, the order alternating between
rounds. Each round records the timed region's CPU share (process CPU seconds / wall / threads) and the
load average; each ratio is taken within its round. Before any figure is reported the two sides must have
done the same work: the same prompt (image-token count), the same number of generated tokens (f32: the
same greedy tokens), the same first-step loss (the LoRA B matrices start at zero, so it is the base
model's loss). Writes <out>.json and <out>.md (medians and ratio ranges).

The configurations (the text tower: SmolLM2-135M's shape, 30 layers; the image: a 448×300 crop of
tests/fixtures/encoders/photos/chelsea.png):
  * llava_next: Llama text tower; CLIP ViT-B/32's shape at 224 px (12 layers, 768 wide), v1.6-style
    pinpoints at 224: a 2×2 canvas, 5 tiles;
  * qwen2_vl: Qwen2 text tower (q/k/v biases, M-RoPE sections 8/12/12); the Qwen2-VL vision transformer at
    ViT-B's size (12 layers, 768 wide, patch 14, 2×2 merge): the crop is resized to 308×448, 704 patches.
Tasks: `generate`: greedy decoding of 32 new tokens from a one-image prompt, the image processor, the vision
tower and the prefill included (tokens/s); `train`: 3 LoRA SFT steps (rank 8, alpha 16 on every text-tower
projection, AdamW, gradient-norm clip 1, batch 1, the prompt with its image features computed once plus 32
response tokens), the fastest step after the first (seconds).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, CpuShare, cargo_profile_args, load_average, summarize  # noqa: E402

OUT = ROOT / "target" / "bench-vlm"
FAMILIES = ("llava_next", "qwen2_vl")
# Family names as our side reports them (`Family`'s Debug form).
OUR_FAMILY = {"llava_next": "LlavaNext", "qwen2_vl": "Qwen2Vl"}
IMAGE = ROOT / "tests" / "fixtures" / "encoders" / "photos" / "chelsea.png"
CROP = (0, 0, 448, 300)
PROMPT_BEFORE, PROMPT_AFTER = [1, 2, 3], [4, 5, 6, 7]  # src/jobs/bench_vlm.rs: PROMPT_BEFORE / PROMPT_AFTER
NEW_TOKENS, STEPS, RESPONSE_LEN = 32, 3, 32
PINS = [[224, 448], [448, 224], [448, 448], [672, 224], [224, 672]]
# Tolerances of the first step's loss, ours against transformers (relative): f32 differs only in summation
# order; bf16 rounds every matmul and both sides round differently.
LOSS_RTOL = {"f32": 1e-4, "bf16": 3e-2}
TEXT = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True, initializer_range=0.04)


def model_dir(family):
    return OUT / family


def build(family):
    """Writes the seeded random-weight folder (config, safetensors, preprocessor_config.json)."""
    import torch
    torch.manual_seed(0)
    d = model_dir(family)
    if family == "llava_next":
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, \
            LlavaNextImageProcessorPil
        text = LlamaConfig(**TEXT, rms_norm_eps=1e-5, rope_theta=100000.0)
        vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                  image_size=224, patch_size=32, hidden_act="quick_gelu")
        cfg = LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=49151,
                              image_grid_pinpoints=PINS, vision_feature_layer=-2, tie_word_embeddings=True)
        model = LlavaNextForConditionalGeneration(cfg)
        ip = LlavaNextImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                        image_grid_pinpoints=PINS)
    elif family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil
        cfg = Qwen2VLConfig(
            text_config=dict(TEXT, rms_norm_eps=1e-6, rope_theta=1e6, use_sliding_window=False, bos_token_id=1, eos_token_id=2,
                             rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]}),
            vision_config={"depth": 12, "embed_dim": 768, "num_heads": 12, "mlp_ratio": 4, "hidden_size": 576,
                           "hidden_act": "quick_gelu", "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
                           "temporal_patch_size": 2},
            vision_start_token_id=49148, vision_end_token_id=49149, image_token_id=49150, video_token_id=49151,
            tie_word_embeddings=True)
        model = Qwen2VLForConditionalGeneration(cfg)
        ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2,
                                      temporal_patch_size=2)
    else:
        raise SystemExit(f"--family: expected one of {', '.join(FAMILIES)}, found `{family}`")
    model.save_pretrained(d)
    ip.save_pretrained(d)
    return d


def load(family, dtype):
    import torch
    from transformers import AutoImageProcessor, LlavaNextForConditionalGeneration, Qwen2VLForConditionalGeneration
    d = model_dir(family)
    if not (d / "config.json").exists():
        raise SystemExit(f"{d}: no model folder (run `scripts/bench_vlm.py build --family {family}` first)")
    cls = LlavaNextForConditionalGeneration if family == "llava_next" else Qwen2VLForConditionalGeneration
    model = cls.from_pretrained(d, dtype=torch.float32 if dtype == "f32" else torch.bfloat16).eval()
    ip = AutoImageProcessor.from_pretrained(d, backend="pil")  # the PIL processors, as the goldens use
    return model, ip


class Family:
    """What differs between the families on transformers' side: the processor's outputs, the prompt, and the
    keyword arguments of generate and of a forward pass on precomputed image features."""

    def __init__(self, family, model, ip):
        self.family, self.model, self.ip = family, model, ip
        cfg = model.config
        self.image_token = cfg.image_token_index if family == "llava_next" else cfg.image_token_id

    def process(self, im):
        import torch
        inp = self.ip(images=[im], return_tensors="pt")
        self.pv = inp["pixel_values"].to(self.model.dtype)
        if self.family == "llava_next":
            self.extra = {"image_sizes": inp["image_sizes"]}
            self.n_img = self.n_img_llava  # the processor's count, set once by `prepare` (no tokenizer here)
            delim = ([], [])
        else:
            thw = inp["image_grid_thw"]
            self.extra = {"image_grid_thw": thw}
            self.n_img = int(thw.prod(-1).sum()) // self.model.config.vision_config.spatial_merge_size ** 2
            delim = ([self.model.config.vision_start_token_id], [self.model.config.vision_end_token_id])
        ids = PROMPT_BEFORE + delim[0] + [self.image_token] * self.n_img + delim[1] + PROMPT_AFTER
        self.ids = torch.tensor([ids])
        if self.family == "qwen2_vl":
            self.extra["mm_token_type_ids"] = (self.ids == self.image_token).int()

    def prepare(self, im):
        """The LLaVA-NeXT image-token count as the model packs it (outside any timed region)."""
        import torch
        if self.family == "llava_next":
            inp = self.ip(images=[im], return_tensors="pt")
            with torch.no_grad():
                f = self.model.model.get_image_features(pixel_values=inp["pixel_values"].to(self.model.dtype),
                                                        image_sizes=inp["image_sizes"]).pooler_output
            self.n_img_llava = int(f[0].shape[0])

    def image_features(self):
        import torch
        with torch.no_grad():
            if self.family == "llava_next":
                return self.model.model.get_image_features(pixel_values=self.pv, image_sizes=self.extra["image_sizes"])
            return self.model.model.get_image_features(self.pv, self.extra["image_grid_thw"])

    def train_kwargs(self, ids, feats):
        kw = {"input_ids": ids, "attention_mask": ids.new_ones(ids.shape), "mm_encoder_outputs": {"image": feats}}
        if self.family == "qwen2_vl":
            kw["image_grid_thw"] = self.extra["image_grid_thw"]
            kw["mm_token_type_ids"] = (ids == self.image_token).int()
        return kw


def run(family, dtype, task, threads, new_tokens=NEW_TOKENS, steps=STEPS):
    """One task once on transformers' side; returns the round's figures (the fields our side reports)."""
    import torch
    from PIL import Image
    torch.set_num_threads(threads)
    model, ip = load(family, dtype)
    im = Image.open(IMAGE).convert("RGB").crop((CROP[0], CROP[1], CROP[0] + CROP[2], CROP[1] + CROP[3]))
    f = Family(family, model, ip)
    f.prepare(im)
    out = {"side": "transformers", "family": OUR_FAMILY[family], "dtype": dtype, "task": task, "threads": threads,
           "tokens": [], "tokens_per_s": None, "losses": [], "step_seconds": [], "load_before": load_average()}
    if task == "generate":
        def gen(n):
            f.process(im)
            kw = dict(input_ids=f.ids, attention_mask=torch.ones_like(f.ids), pixel_values=f.pv, **f.extra,
                      do_sample=False, pad_token_id=0, eos_token_id=None, max_new_tokens=n, min_new_tokens=n)
            with torch.no_grad():
                return model.generate(**kw)[0, f.ids.shape[1]:]
        gen(2)  # warm-up: the same work, 2 new tokens
        share = CpuShare(threads)
        toks = gen(new_tokens)
        wall, out["cpu_share"] = share.stop()
        out["tokens"] = toks.tolist()
        out["tokens_per_s"] = len(out["tokens"]) / wall
        out["seconds"] = wall
    elif task == "train":
        f.process(im)
        feats = f.image_features()
        ids = torch.cat([f.ids, torch.tensor([[10 + 97 * k for k in range(RESPONSE_LEN)]])], 1)
        # LoRA r 8, alpha 16 on every projection of the text tower (forward hooks), the base frozen
        hooks, params = [], []
        for name, mod in model.model.language_model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in (
                    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                a = (torch.randn(8, mod.in_features) * 0.01).to(model.dtype).requires_grad_(True)
                b = torch.zeros(mod.out_features, 8, dtype=model.dtype, requires_grad=True)
                params += [a, b]
                hooks.append(mod.register_forward_hook(lambda mm, i, o, a=a, b=b: o + (i[0] @ a.T @ b.T) * 2.0))
        for p in model.parameters():
            p.requires_grad_(False)
        opt = torch.optim.AdamW(params, lr=1e-4)
        share = CpuShare(threads)
        for _ in range(steps):
            t = time.perf_counter()
            logits = model(**f.train_kwargs(ids, feats)).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
            loss = -lp[-RESPONSE_LEN:].mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            out["step_seconds"].append(time.perf_counter() - t)
            out["losses"].append(loss.item())
        _, out["cpu_share"] = share.stop()
        out["seconds"] = min(out["step_seconds"][1:])
        for h in hooks:
            h.remove()
    else:
        raise SystemExit(f"--task: expected generate or train, found `{task}`")
    out["image_tokens"], out["prompt_tokens"] = f.n_img, int(f.ids.shape[1])
    out["load_after"] = load_average()
    return out


# ---------------------------------------------------------------------------------------------- the driver

def build_ours(release):
    cmd = ["cargo", "build", "-q", "--locked", "--bin", "mmb-torch"] + cargo_profile_args(release)
    print("building:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=ROOT, check=True)
    exe = ROOT / "target" if "CARGO_TARGET_DIR" not in os.environ else Path(os.environ["CARGO_TARGET_DIR"])
    return exe / ("release" if release else "debug") / "mmb-torch"


def one_round(cmd, what):
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{what} failed: {' '.join(map(str, cmd))}")
    return json.loads(lines[-1])


def same_work(ours, ref, new_tokens):
    """Raises unless both sides did the same work in this round; returns what is worth recording."""
    key = f"{ref['family']} {ref['dtype']} {ref['task']}"
    for k in ("family", "dtype", "task", "image_tokens", "prompt_tokens"):
        if ours[k] != ref[k]:
            raise SystemExit(f"{key}: the two sides differ in {k}: ours {ours[k]}, transformers {ref[k]}")
    if ref["task"] == "generate":
        a, b = ours["tokens"], ref["tokens"]
        if len(a) != new_tokens or len(b) != new_tokens:
            raise SystemExit(f"{key}: generated {len(a)} (ours) and {len(b)} (transformers) tokens, expected {new_tokens}")
        agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        if ref["dtype"] == "f32" and agree < len(a):
            raise SystemExit(f"{key}: greedy tokens differ from position {agree}: ours {a}, transformers {b}")
        return {"greedy_tokens_agreeing": agree}
    la, lb = ours["losses"][0], ref["losses"][0]
    if abs(la - lb) > LOSS_RTOL[ref["dtype"]] * abs(lb):
        raise SystemExit(f"{key}: first-step loss ours {la} vs transformers {lb} (relative tolerance {LOSS_RTOL[ref['dtype']]})")
    return {"first_step_loss": {"ours": la, "transformers": lb}}


def markdown(report):
    rows = ["| family | dtype | task | ours (median [spread]) | transformers | ratio ours / transformers (median [spread]) "
            "| CPU share ours / transformers (median [lowest]) | same work |", "|---|---|---|---|---|---|---|---|"]
    for c in report["cells"]:
        unit = "tok/s" if c["task"] == "generate" else "s/step"

        def fig(s):
            return f"{s['median']:.2f} [{s['spread'][0]:.2f}, {s['spread'][1]:.2f}]"

        check = (f"greedy tokens agreeing: {min(c['greedy_tokens_agreeing'])}/{report['new_tokens']}" if c["task"] == "generate"
                 else f"step-1 loss {c['first_step_loss'][0]['ours']:.5f} / {c['first_step_loss'][0]['transformers']:.5f}")
        rows.append(f"| {c['family']} | {c['dtype']} | {c['task']} | {fig(c['ours'])} {unit} | {fig(c['transformers'])} {unit} "
                    f"| {fig(c['ratio'])}× | {c['cpu_share_ours']['median']:.2f} [{c['cpu_share_ours']['spread'][0]:.2f}] / "
                    f"{c['cpu_share_transformers']['median']:.2f} [{c['cpu_share_transformers']['spread'][0]:.2f}] | {check} |")
    la = report["load_average"]
    head = (f"{report['rounds']} interleaved rounds, {report['threads']} threads, load average "
            f"{la['before']} before / {la['after']} after; ratio > 1: ours faster (generate: tokens/s; train: "
            "transformers' step seconds / ours).")
    return head + "\n\n" + "\n".join(rows) + "\n"


def rounds(a):
    fams = a.families.split(",")
    for fam in fams:
        if fam not in FAMILIES:
            raise SystemExit(f"--families: unknown `{fam}` (expected {', '.join(FAMILIES)})")
        if not (a.reuse_models and (model_dir(fam) / "config.json").exists()):
            build(fam)
    exe = Path(a.exe) if a.exe else build_ours(a.release)
    cells = [(fam, dt, task) for fam in fams for dt in a.dtypes.split(",") for task in a.tasks.split(",")]
    results = {c: [] for c in cells}
    load_before = load_average()
    t0 = time.perf_counter()
    for r in range(a.rounds):
        for fam, dt, task in cells:
            ours_cmd = [str(exe), "bench-vlm", "--model", str(model_dir(fam)), "--task", task, "--dtype", dt,
                        "--threads", str(a.threads), "--image", str(IMAGE), "--crop", *map(str, CROP),
                        "--new-tokens", str(a.new_tokens), "--steps", str(a.steps), "--response-len", str(RESPONSE_LEN)]
            ref_cmd = [sys.executable, __file__, "run", "--family", fam, "--dtype", dt, "--task", task,
                       "--threads", str(a.threads), "--new-tokens", str(a.new_tokens), "--steps", str(a.steps)]
            # both sides back to back, the order alternating between rounds
            pair = [("ours", ours_cmd), ("transformers", ref_cmd)]
            got = {}
            for side, cmd in (pair if r % 2 == 0 else pair[::-1]):
                got[side] = one_round(cmd, f"round {r + 1} {fam} {dt} {task} ({side})")
            check = same_work(got["ours"], got["transformers"], a.new_tokens)
            rate = (lambda x: x["tokens_per_s"]) if task == "generate" else (lambda x: 1.0 / x["seconds"])
            results[(fam, dt, task)].append(dict(got, check=check, ratio=rate(got["ours"]) / rate(got["transformers"]),
                                                 first=("ours" if r % 2 == 0 else "transformers")))
            g = results[(fam, dt, task)][-1]
            print(f"round {r + 1}/{a.rounds} {fam} {dt} {task}: ratio {g['ratio']:.2f} (CPU share ours "
                  f"{g['ours']['cpu_share']:.2f}, transformers {g['transformers']['cpu_share']:.2f}, load "
                  f"{load_average():.2f})", file=sys.stderr)
    report = {"rounds": a.rounds, "threads": a.threads, "ours_binary": str(exe), "seconds": time.perf_counter() - t0,
              "load_average": {"before": load_before, "after": load_average()},
              "image": str(IMAGE.relative_to(ROOT)), "crop": CROP, "new_tokens": a.new_tokens, "steps": a.steps,
              "response_len": RESPONSE_LEN, "cells": []}
    for (fam, dt, task), rs in results.items():
        key = "tokens_per_s" if task == "generate" else "seconds"
        cell = {"family": fam, "dtype": dt, "task": task, "figure": key,
                "ours": summarize([x["ours"][key] for x in rs]),
                "transformers": summarize([x["transformers"][key] for x in rs]),
                "ratio": summarize([x["ratio"] for x in rs]),
                "cpu_share_ours": summarize([x["ours"]["cpu_share"] for x in rs]),
                "cpu_share_transformers": summarize([x["transformers"]["cpu_share"] for x in rs]),
                "image_tokens": rs[0]["ours"]["image_tokens"], "prompt_tokens": rs[0]["ours"]["prompt_tokens"],
                "rounds": rs}
        if task == "generate":
            cell["greedy_tokens_agreeing"] = [x["check"]["greedy_tokens_agreeing"] for x in rs]
        else:
            cell["first_step_loss"] = [x["check"]["first_step_loss"] for x in rs]
        report["cells"].append(cell)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write a family's model folder")
    b.add_argument("--family", required=True, choices=FAMILIES)
    r = sub.add_parser("run", help="one task once on transformers' side (JSON on stdout)")
    r.add_argument("--family", required=True, choices=FAMILIES)
    r.add_argument("--dtype", default="f32", choices=("f32", "bf16"))
    r.add_argument("--task", required=True, choices=("generate", "train"))
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    r.add_argument("--steps", type=int, default=STEPS)
    d = sub.add_parser("rounds", help="the interleaved comparison (both sides, every cell, R rounds)")
    d.add_argument("--rounds", type=int, default=5)
    d.add_argument("--families", default=",".join(FAMILIES))
    d.add_argument("--dtypes", default="f32,bf16")
    d.add_argument("--tasks", default="generate,train")
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="fewer for a quick check of the driver")
    d.add_argument("--steps", type=int, default=STEPS, help="LoRA steps per round (≥ 2: the first is a warm-up)")
    d.add_argument("--release", action="store_true", help="build mmb-torch with the release profile (minutes more)")
    d.add_argument("--reuse-models", action="store_true", help="keep model folders already written (default: rewrite)")
    d.add_argument("--exe", help="an mmb-torch already built (default: build it, our crates optimized)")
    d.add_argument("--out", default=str(OUT / "report"), help="writes OUT.json and OUT.md")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(getattr(a, "threads", 2)))
    if a.cmd == "build":
        print(build(a.family))
    elif a.cmd == "run":
        print(json.dumps(run(a.family, a.dtype, a.task, a.threads, a.new_tokens, a.steps)))
    else:
        rounds(a)


if __name__ == "__main__":
    main()
