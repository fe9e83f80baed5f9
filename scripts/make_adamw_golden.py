#!/usr/bin/env python3
"""Golden values for `mllm::optim::AdamW`: torch.optim.AdamW over three steps with fixed gradients.

    .venv/bin/python scripts/make_adamw_golden.py > tests/fixtures/mllm/adamw_golden.json

Two parameter tensors, gradients drawn once from a seeded generator, a different lr per step (the trainer's
schedule changes it every step), weight decay 0.1; torch's own (non-foreach, non-fused) implementation.
"""
import json

import torch

torch.manual_seed(0)
shapes = [(3, 4), (5,)]
init = [torch.randn(s, dtype=torch.float32) for s in shapes]
grads = [[torch.randn(s, dtype=torch.float32) * 10 ** (k - 1) for s in shapes] for k in range(3)]
lrs = [1e-2, 5e-3, 2e-2]
params = [p.clone().requires_grad_(True) for p in init]
opt = torch.optim.AdamW(params, lr=lrs[0], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, foreach=False)
after = []
for k in range(3):
    for g in opt.param_groups:
        g["lr"] = lrs[k]
    for p, g in zip(params, grads[k]):
        p.grad = g.clone()
    opt.step()
    after.append([p.detach().flatten().tolist() for p in params])
print(json.dumps({
    "shapes": shapes, "init": [p.flatten().tolist() for p in init],
    "grads": [[g.flatten().tolist() for g in gs] for gs in grads], "lrs": lrs, "weight_decay": 0.1, "after": after,
}))
