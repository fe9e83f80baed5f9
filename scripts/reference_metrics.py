#!/usr/bin/env python3
"""Independent reference for src/confidence and src/metrics (numpy + scikit-learn).

Draws random fixtures with a fixed seed, computes every quantity the Rust code computes, and writes
inputs + expected values to tests/fixtures/confidence/golden.json, which tests/confidence.rs replays
(tolerance 1e-9). Run from the repository root:

    .venv/bin/python scripts/reference_metrics.py

Conventions mirrored from the Rust docs (each is a documented parameter there):
- TokenSAR (lm-polygraph's CrossEncoderSimilarityMatrixCalculator): pairs are (x + " " + y, x + " " + y
  without token k), y = concatenated non-special token pieces; special tokens get similarity 1
  (relevance 0); a unit of L = 1 token (specials counted) gets 0.5; all-zero relevance -> uniform.
- The test-double similarity g(a, b) below is deterministic and computed in float64, then rounded to
  float32 (the PairSimilarity trait returns f32).
- ECE bins are [i/B, (i+1)/B), last bin closed; sigma is the population std (ddof 0) unless stated.

With the argument `score-stage` (needs transformers and onnxruntime, not scikit-learn) it writes
tests/fixtures/confidence/score_stage.json instead: the score stage's four signals on one fixed chain of
SmolLM2 tokens, from its decoded text (MiniLM through transformers, the tiny CLIP's text tower through
onnxruntime), which tests/signals.rs compares with the stage run through the engine.
"""
import json
import math
import os
import re
import sys

import numpy as np

RNG = np.random.default_rng(20250601)
OUT = os.path.join("tests", "fixtures", "confidence", "golden.json")

WORDS = [" the", " cake", " shows", " thirty", " candles", " bear", " is", " gray", " on", " a", " table",
         " café", " 日本", " 🙂", " naïve", " x", "s", ",", " blue", " sky"]


# ----------------------------------------------------------------------------------- uncertainty
def double_similarity(a: str, b: str) -> float:
    """Deterministic stand-in for a cross-encoder: prefix overlap and length change."""
    la, lb = len(a), len(b)
    cp = len(os.path.commonprefix([a, b]))
    s = 0.5 * (cp + 1) / (la + 1) + 0.5 * (1.0 - abs(la - lb) / (la + 1))
    return float(np.float32(s))


def random_sentence(n_tokens, special_end=False):
    toks = []
    for _ in range(n_tokens):
        w = WORDS[RNG.integers(len(WORDS))]
        toks.append({"id": int(RNG.integers(0, 32000)), "text": w,
                     "log_prob": float(-RNG.exponential(1.2)), "entropy": float(RNG.exponential(1.5)),
                     "is_special": False})
    if special_end:
        toks.append({"id": 2, "text": "</s>", "log_prob": float(-RNG.exponential(0.3)),
                     "entropy": float(RNG.exponential(0.5)), "is_special": True})
    return toks


def token_sar_units(responses, scope):
    out = [[0.0] * len(r["sentences"]) for r in responses]
    for i, r in enumerate(responses):
        if scope == "sentence":
            units, ctx = [], r["prompt"]
            for t, s in enumerate(r["sentences"]):
                units.append((ctx, [(t, k) for k in range(len(s))]))
                ctx += "".join(tok["text"] for tok in s if not tok["is_special"])
        else:
            units = [(r["prompt"], [(t, k) for t, s in enumerate(r["sentences"]) for k in range(len(s))])]
        for ctx, idx in units:
            toks = [r["sentences"][t][k] for t, k in idx]
            regular = [not tok["is_special"] for tok in toks]
            full = ctx + " " + "".join(tok["text"] for tok, reg in zip(toks, regular) if reg)
            sims = []
            for j, tok in enumerate(toks):
                if len(toks) == 1:  # lm-polygraph: L = 1 -> 0.5, special tokens counted in L
                    sims.append(0.5)
                elif tok["is_special"]:
                    sims.append(1.0)
                else:
                    without = ctx + " " + "".join(o["text"] for m, (o, reg) in enumerate(zip(toks, regular)) if reg and m != j)
                    sims.append(min(max(double_similarity(full, without), 0.0), 1.0))
            rel = 1.0 - np.array(sims)
            if rel.sum() > 0:
                w = rel / rel.sum()
            else:
                n = sum(regular)
                w = np.array([1.0 / n if reg else 0.0 for reg in regular]) if n else np.full(len(toks), 1.0 / len(toks))
            nll = -np.array([tok["log_prob"] for tok in toks])
            for (t, _), contrib in zip(idx, nll * w):
                out[i][t] += float(contrib)
    return out


def uncertainty_section():
    responses = []
    for i in range(6):
        n_sent = int(RNG.integers(1, 4))
        sents = []
        for t in range(n_sent):
            n_tok = 1 if (i == 2 and t == 0) else int(RNG.integers(2, 9))
            sents.append(random_sentence(n_tok, special_end=(t == n_sent - 1 and i % 2 == 0)))
        responses.append({"prompt": f"USER: <image> Question {i}: why? ASSISTANT:", "sentences": sents})
    lnlp = [[float(np.exp(-np.mean([t["log_prob"] for t in s]))) for s in r["sentences"]] for r in responses]
    mte = [[float(np.mean([t["entropy"] for t in s])) for s in r["sentences"]] for r in responses]
    lnlp_ns = [[float(np.exp(-np.mean([t["log_prob"] for t in s if not t["is_special"]]))) for s in r["sentences"]] for r in responses]
    return {
        "responses": [{"prompt": r["prompt"], "sentences": [{"tokens": s} for s in r["sentences"]]} for r in responses],
        "lnlp": lnlp, "mte": mte, "lnlp_no_special": lnlp_ns,
        "token_sar_sentence": token_sar_units(responses, "sentence"),
        "token_sar_response": token_sar_units(responses, "response"),
    }


def clip_section():
    cases = []
    for _ in range(8):
        v = RNG.normal(size=16).astype(np.float32)
        s = (RNG.normal(size=16) + (0.8 * v if RNG.random() < 0.5 else 0)).astype(np.float32)
        cos = float(np.dot(v.astype(np.float64), s.astype(np.float64)) /
                    (np.linalg.norm(v.astype(np.float64)) * np.linalg.norm(s.astype(np.float64))))
        cases.append({"image": [float(x) for x in v], "text": [float(x) for x in s], "expected": max(cos, 0.0)})
    return cases


# ----------------------------------------------------------------------------------------- levels
def levels_section():
    fit = np.column_stack([RNG.lognormal(0.2, 0.3, 60), RNG.gamma(2.0, 0.8, 60),
                           RNG.gamma(1.5, 1.0, 60), RNG.uniform(0.1, 0.35, 60)])
    apply = np.column_stack([RNG.lognormal(0.2, 0.4, 20), RNG.gamma(2.0, 1.0, 20),
                             RNG.gamma(1.5, 1.2, 20), RNG.uniform(0.05, 0.4, 20)])
    base = {"weights": [0.25] * 4, "pooling": "weighted", "intervals": "mu_sigma",
            "enabled": {"lnlp": True, "mte": True, "token_sar": True, "clip_score": True},
            "renormalize_weights": True, "clip_direction": "flip", "clamp": True, "sigma_ddof": 0}
    variants = {
        "default": {},
        "max_pooling": {"pooling": "max"},
        "uniform_intervals": {"intervals": "uniform"},
        "without_clip": {"enabled": {"lnlp": True, "mte": True, "token_sar": True, "clip_score": False}},
        "without_lnlp_no_renorm": {"enabled": {"lnlp": False, "mte": True, "token_sar": True, "clip_score": True},
                                   "renormalize_weights": False},
        "clip_as_is_weights": {"clip_direction": "as_is", "weights": [0.1, 0.2, 0.3, 0.4]},
        "ddof1_no_clamp": {"sigma_ddof": 1, "clamp": False},
    }
    mn, mx = fit.min(axis=0), fit.max(axis=0)
    cases = []
    for name, over in variants.items():
        p = dict(base, **over)
        en = np.array([p["enabled"][k] for k in ["lnlp", "mte", "token_sar", "clip_score"]])

        def norm(X):
            Z = (X - mn) / (mx - mn)
            return np.clip(Z, 0, 1) if p["clamp"] else Z

        def fuse(Z):
            Z = Z.copy()
            if p["clip_direction"] == "flip":
                Z[:, 3] = 1 - Z[:, 3]
            if p["pooling"] == "max":
                return Z[:, en].max(axis=1)
            w = np.array(p["weights"]) * en
            if p["renormalize_weights"]:
                w = w / w.sum()
            return Z @ w

        u_fit, u_apply = fuse(norm(fit)), fuse(norm(apply))
        mu, sd = float(np.mean(u_fit)), float(np.std(u_fit, ddof=p["sigma_ddof"]))
        cuts = [mu - sd, mu + sd, mu + 2 * sd, mu + 3 * sd] if p["intervals"] == "mu_sigma" else [0.2, 0.4, 0.6, 0.8]
        lv = lambda u: [int(5 - d) for d in np.digitize(u, cuts, right=False)]
        cases.append({"name": name, "params": p, "min": mn.tolist(), "max": mx.tolist(),
                      "normalized_apply": norm(apply).tolist(), "u_fit": u_fit.tolist(), "u_apply": u_apply.tolist(),
                      "mean": mu, "std": sd, "cuts": cuts, "levels_fit": lv(u_fit), "levels_apply": lv(u_apply)})
    return {"fit_rows": fit.tolist(), "apply_rows": apply.tolist(), "cases": cases}


# -------------------------------------------------------------------------------------- backward
def backward_section():
    levels = [l for l in range(1, 6) for _ in range(4)]
    centers = RNG.normal(size=(5, 12))
    pool = np.array([centers[l - 1] + 0.6 * RNG.normal(size=12) for l in levels]).astype(np.float32)
    queries = np.array([centers[RNG.integers(5)] + 0.9 * RNG.normal(size=12) for _ in range(10)]).astype(np.float32)
    P, Q = pool.astype(np.float64), queries.astype(np.float64)
    C = (Q @ P.T) / np.outer(np.linalg.norm(Q, axis=1), np.linalg.norm(P, axis=1))
    out = []
    for qi in range(len(Q)):
        nearest = int(np.argmax(C[qi]))
        entry = {"nearest": nearest, "level": levels[nearest], "cosine": float(C[qi, nearest]), "soft": {}}
        for tau in (0.05, 0.2):
            best = np.array([C[qi, [j for j, l in enumerate(levels) if l == L]].max() for L in range(1, 6)])
            p = np.exp((best - best.max()) / tau)
            p /= p.sum()
            entry["soft"][str(tau)] = float(p @ ((np.arange(1, 6) - 1) / 4))
        out.append(entry)
    return {"pool_levels": levels, "pool": pool.tolist(), "queries": queries.tolist(), "expected": out}


# --------------------------------------------------------------------------------------- rewards
def rewards_section():
    responses = []
    for i in range(8):
        n = int(RNG.integers(1, 6))
        sents = []
        for _ in range(n):
            ev = None if RNG.random() < 0.15 else float(RNG.integers(0, 5) / 4 if RNG.random() < 0.6 else RNG.random())
            sents.append({"correct": bool(RNG.random() < 0.6), "expressed": ev, "internal": float(RNG.integers(0, 5) / 4)})
        responses.append(sents)
    variants = {
        "default": dict(alpha=1 / 3, beta=1 / 3, gamma=1 / 3, enable_ka=True, enable_ec=True, enable_cs=True,
                        match_threshold=0.64, missing_statement="penalize"),
        "skip_missing_unequal": dict(alpha=0.5, beta=0.3, gamma=0.2, enable_ka=True, enable_ec=True, enable_cs=True,
                                     match_threshold=0.64, missing_statement="skip"),
        "without_ka": dict(alpha=1 / 3, beta=1 / 3, gamma=1 / 3, enable_ka=False, enable_ec=True, enable_cs=True,
                           match_threshold=0.64, missing_statement="penalize"),
    }
    cases = []
    for name, p in variants.items():
        exp = []
        for sents in responses:
            ka = np.mean([1.0 if s["correct"] else 0.0 for s in sents])
            ec_terms, cs_terms = [], []
            for s in sents:
                I = 1.0 if s["correct"] else 0.0
                if s["expressed"] is None:
                    if p["missing_statement"] == "penalize":
                        ec_terms.append(-1.0)
                        cs_terms.append(-1.0)
                    continue
                ec_terms.append(1 - 2 * (I - s["expressed"]) ** 2)
                cs_terms.append(1 - 2 * (s["internal"] - s["expressed"]) ** 2)
            ec = float(np.mean(ec_terms)) if ec_terms else -1.0
            cs = float(np.mean(cs_terms)) if cs_terms else -1.0
            total = p["alpha"] * ka * p["enable_ka"] + p["beta"] * ec * p["enable_ec"] + p["gamma"] * cs * p["enable_cs"]
            exp.append({"ka": float(ka), "ec": ec, "cs": cs, "total": float(total)})
        cases.append({"name": name, "params": p, "expected": exp})
    # Correctness from similarity rows (strict >).
    sim = np.round(RNG.uniform(0.3, 0.9, size=(7, 4)), 2)
    sim[2, 1] = 0.64
    correct = [bool(row.max() > 0.64) for row in sim]
    return {"responses": responses, "cases": cases, "similarity": sim.tolist(), "correct": correct}


# --------------------------------------------------------------------------------------- metrics
def ece_ref(conf, correct, bins):
    conf, correct = np.asarray(conf), np.asarray(correct)
    edges = np.arange(bins + 1) / bins
    total = 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        m = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        if m.any():
            total += m.sum() / len(conf) * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def metrics_section():
    from sklearn.metrics import roc_auc_score

    conf = RNG.beta(2, 2, 200)
    conf[:8] = [0.0, 1.0, 0.5, 0.3, 0.7, 0.05, 0.95, 0.25]
    correct = (RNG.random(200) < conf * 0.8 + 0.1).astype(float)
    correct[10:30] = [min(k / 3, 1.0) for k in RNG.integers(0, 5, 20)]
    ece = {"confidence": conf.tolist(), "correct": correct.tolist(),
           "binned": {str(b): ece_ref(conf, correct, b) for b in (1, 10, 15, 20)},
           "unbinned": float(np.mean(np.abs(conf - correct)))}

    responses = []
    for _ in range(12):
        n = int(RNG.integers(1, 7))
        responses.append([[bool(RNG.random() < 0.6), float(RNG.integers(0, 5) / 4)] for _ in range(n)])
    mece = {"responses": responses,
            "expected": float(np.mean([np.mean([abs(float(c) - v) for c, v in r]) for r in responses])),
            "brier_expected": float(np.mean([np.mean([(float(c) - v) ** 2 for c, v in r]) for r in responses]))}

    auroc = []
    s = RNG.normal(size=80)
    y = RNG.random(80) < 1 / (1 + np.exp(-1.5 * s))
    auroc.append({"name": "continuous", "scores": s.tolist(), "labels": y.tolist(), "expected": float(roc_auc_score(y, s))})
    st = np.round(s, 0) / 2  # heavy ties
    auroc.append({"name": "ties", "scores": st.tolist(), "labels": y.tolist(), "expected": float(roc_auc_score(y, st))})
    si = s.copy()
    si[[0, 5]] = np.inf
    si[[3]] = -np.inf
    fin = si[np.isfinite(si)]
    sr = np.where(si == np.inf, fin.max() + 1, np.where(si == -np.inf, fin.min() - 1, si))
    auroc.append({"name": "infinite", "scores": ["inf" if v == np.inf else "-inf" if v == -np.inf else float(v) for v in si],
                  "labels": y.tolist(), "expected": float(roc_auc_score(y, sr))})

    items, ref_levels, cal, p_tot, c_tot, np_tot, nr_tot = [], [], [], 0, 0, 0, 0
    for i in range(15):
        n_pred = int(RNG.integers(0, 6)) if i != 0 else 0
        n_ref = int(RNG.integers(1, 7))
        sim = np.round(RNG.uniform(0.2, 0.95, size=(n_pred, n_ref)), 2)
        if n_pred and n_ref > 1:
            sim[0, 0] = 0.64
        lv = ["perception" if RNG.random() < 0.45 else "reasoning" for _ in range(n_ref)]
        if i == 3:
            lv = ["reasoning"] * n_ref
        items.append({"similarity": sim.tolist(), "n_reference": n_ref})
        ref_levels.append(lv)
        cal.append([[bool(RNG.random() < 0.6), float(RNG.integers(0, 5) / 4)] for _ in range(n_pred)])
    def f1_of(sub_items):
        P = C = NP = NR = 0
        for sim, n_ref in sub_items:
            sim = np.asarray(sim).reshape(-1, n_ref) if len(sim) else np.zeros((0, n_ref))
            P += int((sim > 0.64).any(axis=1).sum())
            C += int((sim > 0.64).any(axis=0).sum())
            NP += sim.shape[0]
            NR += n_ref
        prec = P / NP if NP else 0.0
        rec = C / NR if NR else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        return {"precise": P, "predicted": NP, "covered": C, "reference": NR, "precision": prec, "recall": rec, "f1": f1}
    overall = f1_of([(it["similarity"], it["n_reference"]) for it in items])
    by_level, mece_level = {}, {}
    for L in ("perception", "reasoning"):
        subs, kept = [], []
        for it, lv, c in zip(items, ref_levels, cal):
            sim = np.asarray(it["similarity"]).reshape(-1, it["n_reference"])
            assigned = [lv[int(np.argmax(row))] for row in sim]
            rows = [r for r, a in enumerate(assigned) if a == L]
            k = [x for x, a in zip(c, assigned) if a == L]
            if k:
                kept.append(k)
            cols = [j for j, l in enumerate(lv) if l == L]
            if not cols:
                continue
            subs.append((sim[np.ix_(rows, cols)].tolist() if rows else [], len(cols)))
        by_level[L] = f1_of(subs)
        mece_level[L] = float(np.mean([np.mean([abs(float(a) - v) for a, v in r]) for r in kept])) if kept else None
    chain = {"items": items, "reference_levels": ref_levels, "calibration": cal, "expected": overall,
             "by_level": by_level, "mece_by_level": mece_level}

    # A-OKVQA direct-answer accuracy with an independent normalizer (regex based).
    def norm(s):
        s = s.lower()
        s = re.sub(r"(?<=\d)\.(?=\d)", "\0", s)
        s = re.sub(r"(?<=\w)'(?=\w)", "\1", s)
        s = re.sub(r"[!-/:-@\[-`{-~]", " ", s).replace("\0", ".").replace("\1", "'")
        return " ".join(w for w in s.split() if w not in ("a", "an", "the"))
    vocab = ["thirty", "30th", "The Cake", "cake.", "3.5", "a bear", "bear", "it's red", "its red", "Red!"]
    da = []
    for _ in range(12):
        answers = [vocab[k] for k in RNG.integers(0, len(vocab), 10)]
        pred = vocab[RNG.integers(0, len(vocab))]
        da.append({"prediction": pred, "direct_answers": answers,
                   "expected": min(sum(norm(a) == norm(pred) for a in answers) / 3, 1.0)})
    return {"ece": ece, "mece": mece, "auroc": auroc, "chain": chain, "aokvqa_direct": da}


# ----------------------------------------------------------------------- score stage (issue 15)
SCORE_OUT = os.path.join("tests", "fixtures", "confidence", "score_stage.json")
# A chain as SmolLM2 could generate it, token by token (each a UTF-8 byte string): words with their
# leading space, "é" and an emoji split into single-byte tokens, a blank line of two newline tokens,
# and the end token (decodes to nothing).
SCORE_CHAIN = [b" The", b" circle", b" is", b" red", b".", b" It", b" sits", b" left", b" of", b" the",
               b" caf", b"\xc3", b"\xa9", b"'s", b" square", b" ", b"\xf0", b"\x9f", b"\x99", b"\x82", b".",
               b"\n", b"\n", b"So", b",", b" the", b" answer", b" is", b" B", b"."]
SCORE_END = "<|im_end|>"
SCORE_QUESTION = "What shape is red?"


def bytes_to_unicode():
    """GPT-2's byte-level alphabet: the printable bytes stand for themselves, the others for 256 + n."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def minilm_embed(texts):
    import torch
    from transformers import AutoModel, AutoTokenizer
    path = os.path.join(".deps", "models", "all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding enters the mean
            enc = tok(t, return_tensors="pt", truncation=True, max_length=256)
            h = model(**enc).last_hidden_state[0]
            out.append(h.mean(0).double().numpy())
    return out


def clip_text_embed(texts):
    import onnxruntime as ort
    from tokenizers import Tokenizer
    d = os.path.join("tests", "fixtures", "encoders", "clip_tiny")
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    sess = ort.InferenceSession(os.path.join(d, "text.onnx"), providers=["CPUExecutionProvider"])
    out = []
    for t in texts:
        ids = tok.encode(t).ids
        assert len(ids) <= 77, t
        feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        out.append(sess.run(["text_embeds"], feed)[0][0].astype(np.float64))
    return out


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def score_stage_section():
    """The score stage's four signals on SCORE_CHAIN, from the decoded text: sentences split at a terminator
    followed by whitespace; a token owns the characters whose last byte it holds; a sentence's tokens run
    from the first reaching past its start to the first reaching its end, their text clipped to the
    sentence plus the whitespace before it (not before the previous sentence's end); x = the question and
    the earlier sentences' texts; TokenSAR's g = cosine of MiniLM mean-pooled embeddings; CLIPScore =
    max(cos(image, CLIP text(sentence)), 0)."""
    rng = np.random.default_rng(15)
    b2u = bytes_to_unicode()
    vocab = ["".join(b2u[b] for b in t) for t in SCORE_CHAIN] + [SCORE_END]
    n = len(vocab)
    logprobs = [float(np.float32(-x)) for x in rng.uniform(0.01, 3.0, n)]
    entropies = [float(np.float32(x)) for x in rng.uniform(0.05, 4.0, n)]
    image = [float(np.float32(x)) for x in rng.normal(size=16)]
    raw = b"".join(SCORE_CHAIN)
    text = raw.decode("utf-8")
    # Character ends per token: char c (byte range) belongs to the token holding its last byte.
    byte_end = np.cumsum([len(t) for t in SCORE_CHAIN] + [0])
    char_bytes = np.cumsum([len(ch.encode()) for ch in text])  # byte end of each char
    ends = []  # char end per token
    for k in range(n):
        ends.append(int(np.searchsorted(char_bytes, byte_end[k], side="right")))
    starts = [0] + ends[:-1]
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S.*?[.!?](?=\s|$)", text, flags=re.S)]
    sentences, lnlp, mte, sar, clip = [], [], [], [], []
    context = SCORE_QUESTION
    floor = 0
    sar_pairs = []
    units = []
    for a, b in spans:
        first = next(k for k in range(n) if ends[k] > a)
        last = next(k for k in range(n) if ends[k] >= b)
        ws = a
        while ws > floor and text[ws - 1].isspace():
            ws -= 1
        start = max(min(starts[first], ws), floor)
        pieces = [text[(start if k == first else max(starts[k], start)):min(ends[k], b)] for k in range(first, last + 1)]
        assert "".join(pieces) == text[start:b]
        ks = list(range(first, last + 1))
        sentences.append(text[a:b])
        lnlp.append(float(np.exp(-np.mean([logprobs[k] for k in ks]))))
        mte.append(float(np.mean([entropies[k] for k in ks])))
        full = context + " " + "".join(pieces)
        pairs = [(full, context + " " + "".join(p for j, p in enumerate(pieces) if j != i)) for i in range(len(pieces))]
        units.append((ks, pairs))
        sar_pairs += pairs
        context += text[start:b]
        floor = b
    texts = sorted({t for p in sar_pairs for t in p})
    emb = dict(zip(texts, minilm_embed(texts)))
    for ks, pairs in units:
        sims = [min(max(cos(emb[x], emb[y]), 0.0), 1.0) for x, y in pairs] if len(ks) > 1 else [0.5]
        rel = 1.0 - np.array(sims)
        w = rel / rel.sum() if rel.sum() > 0 else np.full(len(ks), 1.0 / len(ks))
        sar.append(float(np.sum(-np.array([logprobs[k] for k in ks]) * w)))
    img = np.array(image, dtype=np.float64)
    clip = [max(cos(img, e), 0.0) for e in clip_text_embed(sentences)]
    return {
        "question": SCORE_QUESTION, "tokens": vocab, "logprobs": logprobs, "entropies": entropies,
        "image_embedding": image, "text": text,
        "expected": {"sentences": sentences, "lnlp": lnlp, "mte": mte, "tokensar": sar, "clipscore": clip,
                     "tokensar_pairs": [list(p) for p in sar_pairs]},
    }


def main():
    if sys.argv[1:] == ["score-stage"]:
        data = score_stage_section()
        with open(SCORE_OUT, "w") as f:
            json.dump(data, f, indent=1, ensure_ascii=False, allow_nan=False)
        print("wrote", SCORE_OUT, os.path.getsize(SCORE_OUT), "bytes")
        return
    data = {"uncertainty": uncertainty_section(), "clip": clip_section(), "levels": levels_section(),
            "backward": backward_section(), "rewards": rewards_section(), "metrics": metrics_section()}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False, allow_nan=False)
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
