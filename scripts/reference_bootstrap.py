#!/usr/bin/env python3
"""Independent reference for src/metrics/bootstrap.rs and src/report/intervals.rs (numpy only).

Draws two variants' scored chains on the same items (answer correctness, per-sentence (right?, confidence)),
draws explicit bootstrap resamples of the ITEMS, and writes the per-variant percentile intervals of ECE,
MECE, the step-level Brier score, accuracy and AUROC, the paired intervals of a - b, and (`seeds`) the
paired interval of the mean of a - b over two runs on the same items, to
tests/fixtures/bootstrap/golden.json, which tests/bootstrap.rs replays with the same index lists.
Run from the repository root:

    .venv/bin/python scripts/reference_bootstrap.py

Conventions (the Rust docs state them): ECE with B equal-width bins [i/B, (i+1)/B), last closed, over the
items with at least one scored sentence, answer confidence = the final sentence's; MECE / Brier = mean over
those items of the mean over sentences of |I - c| / (I - c)^2; accuracy over all items; AUROC (sklearn's
definition, ties count one half) of the answer confidence against correctness >= 0.5, undefined with one
class; an interval is None when fewer than half the resamples define the metric; percentiles are numpy's
default linear ones.
"""
import json
import os

import numpy as np

RNG = np.random.default_rng(20261129)
OUT = os.path.join("tests", "fixtures", "bootstrap", "golden.json")
BINS = 10
LEVEL = 0.95
N_ITEMS = 23
RESAMPLES = 200


def draw_variant(skill):
    items = []
    for k in range(N_ITEMS):
        n = int(RNG.integers(0, 5))  # 0 sentences: a chain without scored sentence
        sents = []
        for _ in range(n):
            right = bool(RNG.random() < skill)
            conf = float(RNG.choice([0.0, 0.25, 0.5, 0.75, 1.0, RNG.random()]))
            sents.append([right, conf])
        items.append({"item_id": f"q{k:02d}", "answer_correct": float(RNG.random() < skill), "sentences": sents})
    return items


def ece(conf, corr):
    conf, corr = np.asarray(conf), np.asarray(corr)
    b = np.minimum(np.floor(conf * BINS + 1e-12).astype(int), BINS - 1)
    total = 0.0
    for k in range(BINS):
        m = b == k
        if m.any():
            total += m.sum() / len(conf) * abs(corr[m].mean() - conf[m].mean())
    return total


def auroc(scores, labels):
    scores, labels = np.asarray(scores), np.asarray(labels)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return None
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


def metric(items, name):
    kept = [i for i in items if i["sentences"]]
    if name == "accuracy":
        return float(np.mean([i["answer_correct"] for i in items])) if items else None
    if not kept:
        return None
    if name in ("mece", "brier"):
        p = 1 if name == "mece" else 2
        return float(np.mean([np.mean([abs(float(r) - c) ** p for r, c in i["sentences"]]) for i in kept]))
    conf = [i["sentences"][-1][1] for i in kept]
    corr = [i["answer_correct"] for i in kept]
    if name == "ece":
        return float(ece(conf, corr))
    return auroc(conf, [c >= 0.5 for c in corr])


def interval(values, n_resamples):
    vals = [v for v in values if v is not None]
    if 2 * len(vals) < n_resamples:
        return None
    a = (1 - LEVEL) / 2
    lo, hi = np.percentile(vals, [100 * a, 100 * (1 - a)])
    return {"lo": float(lo), "hi": float(hi), "defined": len(vals)}


def main():
    a, b = draw_variant(0.7), draw_variant(0.55)
    # Variant b lacks item q03 entirely (paired: it contributes nothing to b).
    b = [i for i in b if i["item_id"] != "q03"]
    ids = sorted({i["item_id"] for i in a} | {i["item_id"] for i in b})
    indices = [RNG.integers(0, len(ids), len(ids)).tolist() for _ in range(RESAMPLES)]
    by_a = {i["item_id"]: i for i in a}
    by_b = {i["item_id"]: i for i in b}
    names = ["ece", "mece", "brier", "accuracy", "auroc"]
    out = {"bins": BINS, "level": LEVEL, "ids": ids, "indices": indices, "a": a, "b": b, "cells": {}, "paired": {}}
    for label, by in (("a", by_a), ("b", by_b)):
        for n in names:
            vals = [metric([by[ids[k]] for k in ix if ids[k] in by], n) for ix in indices]
            out["cells"][f"{label}/{n}"] = {
                "value": metric([by[i] for i in ids if i in by], n),
                "interval": interval(vals, RESAMPLES),
            }
    for n in names:
        diffs = []
        for ix in indices:
            va = metric([by_a[ids[k]] for k in ix if ids[k] in by_a], n)
            vb = metric([by_b[ids[k]] for k in ix if ids[k] in by_b], n)
            diffs.append(None if va is None or vb is None else va - vb)
        out["paired"][n] = interval(diffs, RESAMPLES)
    # `mmb sweep --seeds`: a second run (seed 1) of both variants on the same items (its a lacks q05), drawn
    # after everything above so the fields above keep their values; the mean over the two runs of a - b,
    # its interval on the same index lists (the union of ids is the same 23).
    a2, b2 = draw_variant(0.65), draw_variant(0.6)
    a2 = [i for i in a2 if i["item_id"] != "q05"]
    runs = [(by_a, by_b), ({i["item_id"]: i for i in a2}, {i["item_id"]: i for i in b2})]
    out["seeds"] = {"a2": a2, "b2": b2, "paired": {}}
    for n in names:
        def mean_diff(ix):
            ds = []
            for ra, rb in runs:
                va = metric([ra[ids[k]] for k in ix if ids[k] in ra], n)
                vb = metric([rb[ids[k]] for k in ix if ids[k] in rb], n)
                if va is None or vb is None:
                    return None
                ds.append(va - vb)
            return float(np.mean(ds))
        per_seed = []
        for ra, rb in runs:
            va, vb = metric([ra[i] for i in ids if i in ra], n), metric([rb[i] for i in ids if i in rb], n)
            per_seed.append(None if va is None or vb is None else va - vb)
        out["seeds"]["paired"][n] = {
            "per_seed": per_seed,
            "interval": interval([mean_diff(ix) for ix in indices], RESAMPLES),
        }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
