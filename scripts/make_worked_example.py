#!/usr/bin/env python3
"""The worked example of the README's real path, as files a user would have (tests/worked_example.rs).

Writes under tests/fixtures/worked/:
  llava-1.5-tiny/   a Hugging Face LLaVA-1.5-style folder saved by transformers' save_pretrained: the tiny
                    random LLaVA of scripts/make_mllm_goldens.py (vocab 100, image token 99), a word-level
                    tokenizer over the example's words, and llava-hf's LLaVA-1.5 chat template
  aokvqa/           aokvqa_v1p0_{train,val}.json in the official format; coco/{split}2017/{image_id:012}.jpg
  annotated/        aokvqa_mmb.json: the paper's annotated chains (keys / keys_filtered with Image_level and
                    Reasoning_level), written for these records (the paper's own are non-commercial)
  scienceqa/        problems.json, pid_splits.json, images/{split}/{pid}/image.png
  expected.json     what transformers renders for the folder (the pipeline prompt), and the item counts

Run once from the repository root:
    .venv/bin/python scripts/make_worked_example.py
"""
import json
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_files import dump, jpg, png, write  # noqa: E402
from make_chat_template_goldens import LLAVA  # noqa: E402
from make_mllm_goldens import tiny_llava_model  # noqa: E402

import torch  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "worked")

COLORS = {"red": (200, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 200), "yellow": (220, 210, 30)}
NAMES = list(COLORS)


def aokvqa_records(split, n, first_image):
    out = []
    for i in range(n):
        color = NAMES[i % 4]
        choices = NAMES[i % 4:] + NAMES[:i % 4]
        # The answer's position moves: choice k is color (i // 4) % 4 places on.
        k = (i // 4) % 4
        choices = choices[-k:] + choices[:-k] if k else choices
        out.append({
            "split": split, "image_id": first_image + i, "question_id": f"{split}{i:02d}",
            "question": "What color is the big square?", "choices": choices,
            "correct_choice_idx": choices.index(color), "direct_answers": [color] * 10,
            "difficult_direct_answer": False,
            "rationales": [f"The square is {color}.", "It fills the image.", f"So it is {color}."],
        })
    return out


def annotated(rec):
    color = rec["choices"][rec["correct_choice_idx"]]
    image = [f"The image shows a big {color} square."]
    reasoning = [f"The square is {color}.", f"So, the answer is {color}."]
    return {**rec, "keys": {"Image_level": image, "Reasoning_level": reasoning},
            "keys_filtered": {"Image_level": image, "Reasoning_level": reasoning}}


def scienceqa():
    problems, splits = {}, {"train": [], "val": [], "test": []}
    for i in range(10):
        split = "train" if i < 6 else "val"
        color = NAMES[i % 4]
        pid = str(100 + i)
        problems[pid] = {
            "question": "Which color fills this picture?", "choices": [color, NAMES[(i + 1) % 4]] if i % 2 == 0
            else [NAMES[(i + 1) % 4], color], "answer": 0 if i % 2 == 0 else 1, "hint": "", "image": "image.png",
            "task": "closed choice", "grade": "grade1", "subject": "natural science", "topic": "colors",
            "category": "Colors", "skill": "Name a color", "lecture": "Colors have names.",
            "solution": f"The picture is {color}.", "split": split,
        }
        splits[split].append(pid)
    return problems, splits


def tokenizer(texts):
    words = {}
    for t in texts:
        for w in re.findall(r"\w+|[^\w\s]", t.lower()):
            words[w] = words.get(w, 0) + 1
    specials = ["[UNK]", "[PAD]", "<s>", "</s>"]
    ranked = sorted(words, key=lambda w: (-words[w], w))
    vocab = {w: i for i, w in enumerate(specials + [w for w in ranked if w not in specials][: 99 - len(specials)])}
    assert len(vocab) <= 99
    vocab["<image>"] = 99
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
                                   pad_token="[PAD]", additional_special_tokens=["<image>"])
    fast.chat_template = LLAVA
    return fast


def main():
    if os.path.exists(ROOT):
        shutil.rmtree(ROOT)
    torch.set_num_threads(2)

    train, val = aokvqa_records("train", 16, 1000), aokvqa_records("val", 8, 2000)
    for split, recs in [("train", train), ("val", val)]:
        write(os.path.join(ROOT, "aokvqa", f"aokvqa_v1p0_{split}.json"), dump(recs))
        for r in recs:
            color = COLORS[r["choices"][r["correct_choice_idx"]]]
            write(os.path.join(ROOT, "aokvqa", "coco", f"{split}2017", f"{r['image_id']:012d}.jpg"), jpg(color, (32, 32)))
    write(os.path.join(ROOT, "annotated", "aokvqa_mmb.json"), dump([annotated(r) for r in train + val]))
    problems, splits = scienceqa()
    write(os.path.join(ROOT, "scienceqa", "problems.json"), dump(problems))
    write(os.path.join(ROOT, "scienceqa", "pid_splits.json"), dump(splits))
    for pid, p in problems.items():
        color = COLORS[p["choices"][p["answer"]]]
        write(os.path.join(ROOT, "scienceqa", "images", p["split"], pid, "image.png"), png(color, (32, 32)))

    # The model folder, as transformers saves it.
    folder = os.path.join(ROOT, "llava-1.5-tiny")
    model = tiny_llava_model()
    model.save_pretrained(folder)
    pool = open(os.path.join(os.path.dirname(__file__), "..", "stages", "statements.toml")).read()
    texts = [json.dumps(train + val), json.dumps(problems), "question options the answer is so", pool]
    tok = tokenizer(texts)
    tok.save_pretrained(folder)

    # The independent reference: what transformers renders from the saved folder for the pipeline's user
    # turn (an image part and the text part), and that the template leaves one image slot.
    back = AutoTokenizer.from_pretrained(folder)
    user = "Question: {question}\nOptions: {options}"
    rendered = back.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}],
        tokenize=False, add_generation_prompt=True)
    assert rendered.count("<image>") == 1, rendered
    expected = {
        "prompt_template": rendered.replace("<image>", "{image}"),
        "items": {"aokvqa": {"train": len(train), "val": len(val)},
                  "scienceqa": {s: len(v) for s, v in splits.items()}},
        "files": sorted(os.listdir(folder)),
    }
    write(os.path.join(ROOT, "expected.json"), dump(expected))
    print("wrote", os.path.abspath(ROOT), expected)


if __name__ == "__main__":
    main()
