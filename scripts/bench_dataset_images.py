#!/usr/bin/env python3
"""What referencing images costs against copying them: an A-OKVQA-format train split of N questions over
N COCO-sized JPEGs (640x480 noise, ~160 KB each, as COCO's average), loaded by `mmb run dataset` with
`images = "reference"` and with `images = "embed"`.

    .venv/bin/python scripts/bench_dataset_images.py /tmp/rdbench 2000
    target/debug/mmb --store /tmp/rdbench/art_ref --stages /tmp/rdbench/stages_ref run dataset
    target/debug/mmb --store /tmp/rdbench/art_emb --stages /tmp/rdbench/stages_emb run dataset
(wrap each in /usr/bin/time -f "%e s, %M KB" for wall time and peak memory; du -sh the stores.)
"""
import json
import os
import sys

from PIL import Image

root, n = sys.argv[1], int(sys.argv[2])
data = os.path.join(root, "data")
os.makedirs(os.path.join(data, "coco", "train2017"), exist_ok=True)
recs = []
for i in range(n):
    iid = 100000 + i
    Image.effect_noise((640, 480), 40).convert("RGB").save(os.path.join(data, "coco", "train2017", f"{iid:012d}.jpg"), quality=85)
    recs.append({"split": "train", "image_id": iid, "question_id": f"q{i}", "question": "What is it?",
                 "choices": ["a", "b", "c", "d"], "correct_choice_idx": i % 4, "direct_answers": ["a"] * 10,
                 "difficult_direct_answer": False, "rationales": ["x", "y", "z"]})
with open(os.path.join(data, "aokvqa_v1p0_train.json"), "w") as f:
    json.dump(recs, f)
for mode, sub in [("reference", "stages_ref"), ("embed", "stages_emb")]:
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, sub, "dataset.toml"), "w") as f:
        f.write(f'[params]\nsource = "aokvqa"\n[params.aokvqa]\ndir = "{data}"\ncoco = "{data}/coco"\n'
                f'splits = ["train"]\nimages = "{mode}"\n')
print("written under", root)
