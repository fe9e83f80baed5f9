#!/usr/bin/env python3
"""Golden fixture of the DPO trainer (src/mllm/dpo.rs, tests/dpo.rs), computed with torch on the tiny LLaVA of
tests/fixtures/mllm/tiny-llava (transformers' LlavaForConditionalGeneration, written by make_mllm_goldens.py)
as the independent reference.

Three preference pairs of unequal prompt and response lengths, each prompt holding the 16 image tokens of
the cached image features in tests/fixtures/mllm/tiny_goldens.json. Each sequence is run on its own (no
padding), the image-token embeddings replaced by the projected features; a sequence's log-prob is the sum
of its response tokens' log-probs. The reference log-probs are the model's own plus fixed offsets (so the
policy and the reference differ). The DPO loss is TRL's "sigmoid" one with label smoothing:
    -(1 - eps) * logsigmoid(beta * delta) - eps * logsigmoid(-beta * delta),
averaged over the pairs; rewards are beta * (logp - ref_logp).

Writes tests/fixtures/dpo/dpo_golden.json (inputs, log-probs, losses and reward statistics for two
settings) and tests/fixtures/dpo/dpo_grads.safetensors (gradients of every language-model and projector
weight under the second setting, keyed by the names the Rust loader gives them).

Run once: .venv/bin/python scripts/make_dpo_golden.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlavaForConditionalGeneration

ROOT = os.path.join(os.path.dirname(__file__), "..")
MLLM = os.path.join(ROOT, "tests", "fixtures", "mllm")
OUT = os.path.join(ROOT, "tests", "fixtures", "dpo")
IMAGE_TOKEN = 99

# (prompt suffix after the shared image prompt, chosen, rejected): unequal lengths on every side.
PAIRS = [
    ([], [5, 9, 11, 7, 2], [4, 8, 2]),
    ([7, 8], [3, 2], [6, 10, 13, 17, 21, 2]),
    ([12, 30, 31, 40], [44, 45, 46, 2], [44, 47, 2]),
]
# Reference log-prob = the model's own + these offsets (chosen, rejected).
REF_OFFSETS = [(0.7, -0.4), (-1.1, 0.3), (0.2, 0.9)]
SETTINGS = [{"beta": 0.1, "label_smoothing": 0.0}, {"beta": 0.5, "label_smoothing": 0.1}]


def rust_name(n):
    """transformers 5 parameter name -> the Rust VarStore name (the legacy LLaVA key layout)."""
    if n.startswith("model.language_model."):
        return "language_model.model." + n[len("model.language_model."):]
    if n.startswith("model.multi_modal_projector."):
        return "multi_modal_projector." + n[len("model.multi_modal_projector."):]
    if n.startswith("lm_head."):
        return "language_model." + n
    raise ValueError(n)


def seq_logp(model, feats, prompt, response):
    ids = torch.tensor([prompt + response])
    emb = model.get_input_embeddings()(ids)
    img = model.model.multi_modal_projector(feats)
    pos = (ids[0] == IMAGE_TOKEN).nonzero().squeeze(-1)
    assert len(pos) == img.shape[0]
    emb = emb.clone()
    emb[0, pos] = img
    logits = model(inputs_embeds=emb).logits[0].float()
    lp = F.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None]).squeeze(-1)
    return lp[len(prompt) - 1:].sum()


def main():
    torch.set_default_dtype(torch.float32)
    model = LlavaForConditionalGeneration.from_pretrained(os.path.join(MLLM, "tiny-llava"), dtype=torch.float32).eval()
    g = json.load(open(os.path.join(MLLM, "tiny_goldens.json")))["tiny_llava"]
    feats = torch.tensor(g["image_features"][0], dtype=torch.float32)
    base = g["input_ids"][0]
    examples = [{"prompt": base + extra, "chosen": c, "rejected": r} for extra, c, r in PAIRS]

    def all_logps():
        c = torch.stack([seq_logp(model, feats, e["prompt"], e["chosen"]) for e in examples])
        r = torch.stack([seq_logp(model, feats, e["prompt"], e["rejected"]) for e in examples])
        return c, r

    with torch.no_grad():
        c0, r0 = all_logps()
    ref_c = (c0.double() + torch.tensor([o[0] for o in REF_OFFSETS], dtype=torch.float64)).float()
    ref_r = (r0.double() + torch.tensor([o[1] for o in REF_OFFSETS], dtype=torch.float64)).float()

    out = {
        "examples": examples,
        "policy_chosen": c0.tolist(),
        "policy_rejected": r0.tolist(),
        "ref_chosen": ref_c.tolist(),
        "ref_rejected": ref_r.tolist(),
        "settings": [],
    }
    params = [(n, p) for n, p in model.named_parameters() if "vision_tower" not in n]
    grads = {}
    for k, s in enumerate(SETTINGS):
        beta, eps = s["beta"], s["label_smoothing"]
        model.zero_grad()
        c, r = all_logps()
        logits = beta * ((c - ref_c) - (r - ref_r))
        losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        loss = losses.mean()
        loss.backward()
        rw_c, rw_r = beta * (c - ref_c).detach(), beta * (r - ref_r).detach()
        out["settings"].append(
            {
                **s,
                "loss": loss.item(),
                "reward_chosen": rw_c.mean().item(),
                "reward_rejected": rw_r.mean().item(),
                "reward_margin": (rw_c - rw_r).mean().item(),
                "reward_accuracy": (rw_c > rw_r).float().mean().item(),
                "with_gradients": k == len(SETTINGS) - 1,
            }
        )
        if k == len(SETTINGS) - 1:
            grads = {rust_name(n): p.grad.detach().clone().contiguous() for n, p in params}
    os.makedirs(OUT, exist_ok=True)
    save_file(grads, os.path.join(OUT, "dpo_grads.safetensors"))
    with open(os.path.join(OUT, "dpo_golden.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out["settings"], indent=1))
    print(len(grads), "gradient tensors")


if __name__ == "__main__":
    main()
