#!/usr/bin/env python3
"""Proxy timing until src/encoders lands: TokenSAR deletions embedded by the local all-MiniLM-L6-v2
folder (PyTorch CPU, 1 thread), one call per sentence vs all sentences batched (64 texts a call).
Run: .venv/bin/python scripts/bench_tokensar_minilm_proxy.py"""
import time, torch
from transformers import AutoTokenizer, AutoModel
torch.set_num_threads(1)
import os
d = os.environ.get("MINILM_DIR", ".deps/models/all-MiniLM-L6-v2")
tok = AutoTokenizer.from_pretrained(d); model = AutoModel.from_pretrained(d).eval()
words = " the cake shows thirty candles on a gray bear table".split()
prompt = "USER: Question: " + "why is this so? " * 6 + "ASSISTANT:"
sents = [[words[(i + k) % len(words)] for k in range(12)] for i in range(32)]
def texts_of(s):
    full = prompt + " " + " ".join(s)
    return [full] + [prompt + " " + " ".join(s[:k] + s[k+1:]) for k in range(len(s))]
@torch.no_grad()
def embed(texts):
    b = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    h = model(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    e = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1)
embed(texts_of(sents[0]))
allt = [x for s in sents for x in texts_of(s)]
# Interleaved rounds, best of each: the shared CPU is noisy.
loops, batches = [], []
for _ in range(3):
    t = time.perf_counter()
    for s in sents:
        embed(texts_of(s))
    loops.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(allt), 64):
        embed(allt[i:i + 64])
    batches.append(time.perf_counter() - t)
loop, batched = min(loops), min(batches)
print(f"sentences {len(sents)}, texts {len(allt)}; loop {len(sents)/loop:.1f} sent/s, "
      f"batched {len(sents)/batched:.1f} sent/s, ratio {loop/batched:.2f} (best of 3; all loop {loops}, batched {batches})")
