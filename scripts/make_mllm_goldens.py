#!/usr/bin/env python3
"""Golden fixtures for src/mllm (tests/mllm.rs), computed with Hugging Face transformers as the
independent reference implementation.

Writes under tests/fixtures/mllm/:
  tiny-llama/      LlamaForCausalLM (GQA, llama3 rope scaling, untied head), sharded safetensors + index
  tiny-qwen2/      Qwen2ForCausalLM (QKV bias, tied embeddings), saved in bf16
  tiny-llava/      LlavaForConditionalGeneration (Llama text tower, tiny CLIP vision tower)
  tiny_goldens.json  logits / generation goldens for the three tiny models
  smollm2_goldens.json  SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized by transformers) next-token
                        log-probs, top-k and greedy continuations

Run once (needs: pip install gguf accelerate):
  .venv/bin/python scripts/make_mllm_goldens.py [--gguf PATH]
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "mllm")
GGUF_DEFAULT = os.path.join(
    os.path.dirname(__file__), "..", ".deps", "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"
)


def rnd(x, nd=6):
    return [round(float(v), nd) for v in x]


def save_folder(model, path, **kw):
    if os.path.exists(path):
        shutil.rmtree(path)
    model.save_pretrained(path, **kw)


def gen_record(model, ids, mask, new_tokens):
    """Greedy generation with transformers; per generated token the chosen log-prob and entropy."""
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    seq = out.sequences[:, ids.shape[1]:]
    rows = []
    for b in range(ids.shape[0]):
        lps, ents = [], []
        for t, logits in enumerate(out.logits):
            lp = torch.log_softmax(logits[b].float(), -1)
            lps.append(lp[seq[b, t]].item())
            ents.append(-(lp.exp() * lp).sum().item())
        rows.append({"tokens": seq[b].tolist(), "logprobs": rnd(lps), "entropies": rnd(ents)})
    return rows


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval()
    # Larger-than-default init so logits are far from uniform and the test can fail.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    path = os.path.join(OUT, "tiny-llama")
    save_folder(model, path, max_shard_size="200KB")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :3] = 0  # left padding
    mask[1, :3] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        gen = gen_record(model, ids, mask, 8)
    return {
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "logits": [[rnd(logits[b, t]) for t in range(ids.shape[1])] for b in range(2)],
        "greedy": gen,
    }


def tiny_qwen2():
    torch.manual_seed(2)
    cfg = Qwen2Config(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
    )
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
            elif n.endswith("bias"):
                p.normal_(0, 0.5)
    path = os.path.join(OUT, "tiny-qwen2")
    save_folder(model.to(torch.bfloat16), path)
    # Reference on the bf16 weights upcast to f32 (what the Rust loader does with dtype f32).
    ref = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = ref(input_ids=ids).logits
    return {"input_ids": ids.tolist(), "logits": [rnd(logits[0, t]) for t in range(ids.shape[1])]}


def tiny_llava_model():
    """The tiny random LLaVA (Llama text tower, vocab 100, image token 99; CLIP tower 32 px, patch 8): what
    tests/fixtures/mllm/tiny-llava holds, and the weights of the worked example's LLaVA-1.5-style folder
    (scripts/make_worked_example.py)."""
    torch.manual_seed(4)
    text = LlamaConfig(
        vocab_size=100,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        rms_norm_eps=1e-5,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    cfg = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=99,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 2 and "vision" not in n:
                p.normal_(0, 0.15)
    return model


def tiny_llava():
    model = tiny_llava_model()
    path = os.path.join(OUT, "tiny-llava")
    save_folder(model, path)
    g = torch.Generator().manual_seed(5)
    pixel = torch.randn(1, 3, 32, 32, generator=g)
    prefix = torch.randint(3, 99, (1, 4), generator=g)
    suffix = torch.randint(3, 99, (1, 5), generator=g)
    ids = torch.cat([prefix, torch.full((1, 16), 99), suffix], dim=1)
    with torch.no_grad():
        # What the cached vision stage hands over: CLIP penultimate layer, CLS dropped.
        hs = model.model.vision_tower(pixel, output_hidden_states=True).hidden_states[-2][:, 1:]
        logits = model(input_ids=ids, pixel_values=pixel).logits
    return {
        "input_ids": ids.tolist(),
        "image_features": [[rnd(v) for v in hs[0]]],
        "logits": [rnd(logits[0, t]) for t in range(ids.shape[1])],
    }


SMOL_PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
    "The quick brown fox jumps over the",
    "Water boils at a temperature of",
    "In 1492, Columbus",
    "The largest planet in our solar system is",
    "To make a cup of tea, first",
    "Machine learning is a field of",
    "The mitochondria is the",
    "1, 2, 3, 4, 5,",
    "Photosynthesis converts sunlight into",
    "My favourite colour is",
    "The Eiffel Tower is located in",
    "A triangle has three",
    "import numpy as np\n",
    "The opposite of hot is",
    "Shakespeare wrote",
    "The sun rises in the",
    "How many legs does a spider have?",
]
SMOL_CHATS = [
    "What is the capital of Germany?",
    "Is a whale a fish? Answer briefly.",
    "Name a primary colour.",
    "What is 2 + 2?",
]


def smollm2(gguf_path):
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    texts = list(SMOL_PROMPTS)
    for q in SMOL_CHATS:
        texts.append(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True))
    rows = []
    for text in texts:
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=12,
                do_sample=False,
                pad_token_id=2,
                eos_token_id=None,
            )
        top = torch.topk(lp[-1], 10)
        nxt = ids[0, 1:]
        rows.append(
            {
                "text": text,
                "input_ids": ids[0].tolist(),
                # teacher-forced log-prob of each actual next prompt token
                "next_logprobs": rnd(lp[:-1].gather(1, nxt[:, None])[:, 0]),
                "top_ids": top.indices.tolist(),
                "top_logprobs": rnd(top.values),
                "greedy": out[0, ids.shape[1]:].tolist(),
                "greedy_text": tok.decode(out[0, ids.shape[1]:]),
            }
        )
    return {"gguf": os.path.basename(gguf_path), "rows": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=GGUF_DEFAULT)
    ap.add_argument("--skip-smollm2", action="store_true")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    tiny = {"tiny_llama": tiny_llama(), "tiny_qwen2": tiny_qwen2(), "tiny_llava": tiny_llava()}
    with open(os.path.join(OUT, "tiny_goldens.json"), "w") as fh:
        json.dump(tiny, fh)
    if not a.skip_smollm2:
        with open(os.path.join(OUT, "smollm2_goldens.json"), "w") as fh:
            json.dump(smollm2(a.gguf), fh)
    print("wrote", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
