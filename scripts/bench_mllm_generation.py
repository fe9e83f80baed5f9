#!/usr/bin/env python3
"""transformers baseline for the mllm generation figures: SmolLM2-135M-Instruct (GGUF dequantized to f32
by transformers), greedy, 64 new tokens, batch 1 and 8, 2 threads. Compare with
`cargo test --test mllm perf_ -- --ignored --nocapture` (same prompts, same settings).
"""
import os
import sys
import time

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

GGUF = os.path.join(os.path.dirname(__file__), "..", ".deps", "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
    "The quick brown fox jumps over the",
    "Water boils at a temperature of",
    "In 1492, Columbus",
    "The largest planet in our solar system is",
    "To make a cup of tea, first",
]


def main():
    torch.set_num_threads(2)
    dtype = torch.bfloat16 if "--bf16" in sys.argv else torch.float32
    d, f = os.path.split(os.path.abspath(GGUF))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok.padding_side = "left"
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype).eval()
    for bs in (1, 8):
        enc = tok(PROMPTS[:bs], return_tensors="pt", padding=True, add_special_tokens=False)
        kw = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id or 2)
        with torch.no_grad():
            model.generate(**enc, **dict(kw, max_new_tokens=4, min_new_tokens=4))  # warm-up
            t = time.perf_counter()
            out = model.generate(**enc, **kw)
            dt = time.perf_counter() - t
        n = (out.shape[1] - enc.input_ids.shape[1]) * bs
        print(f"transformers {dtype} batch {bs}: {n / dt:.1f} tokens/s ({n} tokens in {dt:.2f} s)")


if __name__ == "__main__":
    main()
