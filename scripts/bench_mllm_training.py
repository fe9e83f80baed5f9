#!/usr/bin/env python3
"""transformers baseline for the mllm training figure: SmolLM2-135M-Instruct (GGUF dequantized to f32 by
transformers), full fine-tuning with AdamW, batch 8 × 128 tokens (16 prompt + 112 response, loss on the
response), 2 threads; samples/s over steps 2-6. Compare with
`cargo test --test mllm perf_smollm2_training_step -- --ignored --nocapture` (same shapes and settings).

    .venv/bin/python scripts/bench_mllm_training.py [--bf16]

--bf16 runs the forward under torch.autocast("cpu", bfloat16) with f32 weights (what the HF Trainer's
`bf16=True` does), the baseline for our bf16 mixed precision (bf16 weights, f32 master weights in AdamW).
"""
import argparse
import contextlib
import os
import time

import torch
from transformers import LlamaForCausalLM

GGUF = os.path.join(os.path.dirname(__file__), "..", ".deps", "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (f32 weights)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    times = []
    for step in range(6):
        ids = torch.randint(100, 40_000, (8, 128))
        labels = ids.clone()
        labels[:, :16] = -100
        t = time.perf_counter()
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        with cast:
            loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t)
    per = sum(times[1:]) / len(times[1:])
    print(f"transformers {'bf16 autocast' if args.bf16 else 'f32'} full fine-tuning, batch 8 x 128 tokens: {8 / per:.2f} samples/s ({per:.2f} s/step over {len(times) - 1} steps)")


if __name__ == "__main__":
    main()
