#!/usr/bin/env python3
"""Write tiny fixtures in each dataset's official format, plus what a correct loader must return.

Run once from the repository root (outputs are committed under tests/fixtures/data/):
    .venv/bin/python scripts/make_data_fixtures.py
Needs Pillow and pyarrow (scripts/requirements-dev.txt).

Layouts follow the official releases:
- A-OKVQA: aokvqa_v1p0_val.json (list of records) + COCO folder {coco}/val2017/{image_id:012}.jpg
- ScienceQA: problems.json (object keyed by pid) + pid_splits.json + images/{split}/{pid}/image.png
- CulturalVQA: Hugging Face Parquet shards data/test-0000k-of-00002.parquet with columns
  image (struct<bytes: binary, path: string>) and question, and the `huggingface` schema metadata
  that `datasets` writes.
- The paper's annotated files: A-OKVQA records + keys/keys_filtered; CulturalVQA
  question/id/image_info/general_output/keys/keys_filtered.
`expected.json` holds, per fixture, the rows a loader must produce (ids, splits, answers, chains,
sha256 of the image bytes), computed here independently of the Rust code.
"""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
from fixture_files import dump, jpg, png, write

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "data")


expected = {}

# ---------------------------------------------------------------- A-OKVQA
aok = [
    {"split": "val", "image_id": 101, "question_id": "qA1", "question": "What is the cat sitting on?",
     "choices": ["sofa", "table", "bed", "floor"], "correct_choice_idx": 2,
     "direct_answers": ["bed"] * 8 + ["blanket", "bed"], "difficult_direct_answer": False,
     "rationales": ["The cat lies on a bed.", "There is a blanket.", "It is a bedroom."]},
    {"split": "val", "image_id": 202, "question_id": "qA2", "question": "Which season is it?",
     "choices": ["winter", "summer", "spring", "fall"], "correct_choice_idx": 0,
     "direct_answers": ["winter"] * 10, "difficult_direct_answer": True,
     "rationales": ["There is snow.", "People wear coats.", "Trees are bare."]},
    {"split": "val", "image_id": 303, "question_id": "qA3", "question": "What sport is played here?",
     "choices": ["tennis", "golf", "soccer", "polo"], "correct_choice_idx": 1,
     "direct_answers": ["golf"] * 10, "difficult_direct_answer": False,
     "rationales": ["A golf club.", "A green.", "A flag."]},
]
aok_images = {101: jpg((200, 30, 30)), 202: jpg((30, 200, 30)), 303: jpg((30, 30, 200))}
write(os.path.join(ROOT, "aokvqa", "aokvqa_v1p0_val.json"), dump(aok))
for iid, b in aok_images.items():
    write(os.path.join(ROOT, "aokvqa", "coco", "val2017", f"{iid:012d}.jpg"), b)
expected["aokvqa"] = [
    {"id": r["question_id"], "split": r["split"], "answer": r["choices"][r["correct_choice_idx"]],
     "correct_choice": r["correct_choice_idx"], "image_path": f"val2017/{r['image_id']:012d}.jpg"}
    for r in aok
]

# The paper's annotated A-OKVQA format, with its quirks: no Image_level, an empty reasoning list,
# a repeated id with a different chain, and an id that is not in the dataset above.
def ann(rec, img, rea):
    out = dict(rec)
    kf = {"Reasoning_level": rea}
    if img is not None:
        kf = {"Image_level": img, "Reasoning_level": rea}
    out["keys"] = {"Image_level": img or ["(unfiltered)"], "Reasoning_level": rea + ["(unfiltered)"]}
    out["keys_filtered"] = kf
    return out

aok_ann = [
    ann(aok[0], ["A cat lies on a bed."], ["Cats like beds.", "So, the answer is bed."]),
    ann(aok[1], None, ["Snow means winter.", "So, the answer is winter."]),
    ann(aok[0], ["A striped cat is on a bed with a blanket."], ["So, the answer is bed."]),
    ann(aok[2], [], []),
    ann({**aok[2], "question_id": "qZZ"}, ["Something."], ["So, the answer is golf."]),
]
write(os.path.join(ROOT, "annotated", "aokvqa_val_mmb.json"), dump(aok_ann))
expected["annotated_aokvqa"] = {
    # standalone load, default params: empty-reasoning record skipped, duplicate kept as qA1#1
    "ids": ["qA1", "qA2", "qA1#1", "qZZ"],
    "perception_lens": [1, 0, 1, 1],
    "skipped": 1,
    "missing_image_level": 1,
    # join onto the A-OKVQA fixture: qZZ has no match (counted under SkipAndCount), qA3 unannotated
    "join_ids": ["qA1", "qA1#1", "qA2"],
}

cvqa_ann = [
    {"question": "What is this dish?", "id": 0, "image_info": "<PIL.JpegImagePlugin.JpegImageFile image mode=RGB size=8x6>",
     "general_output": "Thought: A flat bread.\n\nAnswer: So the answer is injera.",
     "keys": {"Image_level": ["A flat bread."], "Reasoning_level": ["So, the answer is injera."]},
     "keys_filtered": {"Image_level": ["A flat bread."], "Reasoning_level": ["It is spongy.", "So, the answer is injera."]}},
    {"question": "Which festival is shown?", "id": 2, "image_info": "<PIL.JpegImagePlugin.JpegImageFile image mode=RGB size=8x6>",
     "general_output": "Thought: Lanterns.\n\nAnswer: So the answer is Diwali.",
     "keys": {"Image_level": ["Lamps."], "Reasoning_level": ["So, the answer is 'Diwali'."]},
     "keys_filtered": {"Image_level": [], "Reasoning_level": ["Lamps are lit for it.", "So, the answer is 'Diwali'."]}},
]
write(os.path.join(ROOT, "annotated", "culturalvqa_cvqa_mmb.json"), dump(cvqa_ann))

# ---------------------------------------------------------------- ScienceQA
def problem(q, choices, answer, image, split, hint=""):
    return {"question": q, "choices": choices, "answer": answer, "hint": hint, "image": image,
            "task": "closed choice", "grade": "grade4", "subject": "natural science", "topic": "geography",
            "category": "Geography", "skill": "Read a map", "lecture": "Maps show places.",
            "solution": "Look at the map.", "split": split}

sqa = {
    "1": problem("Which ocean is highlighted?", ["Atlantic", "Pacific", "Indian"], 1, "image.png", "train", "Look."),
    "2": problem("What is 2 + 2?", ["3", "4"], 1, None, "train"),
    "3": problem("Which state is farthest north?", ["Ohio", "Maine"], 1, "image.png", "val"),
    "4": problem("Which animal has fur?", ["fish", "dog"], 1, "image.png", "test"),
}
sqa_images = {"1": png((10, 90, 200)), "3": png((200, 200, 10)), "4": png((120, 60, 20))}
splits = {"train": ["1", "2"], "val": ["3"], "test": ["4"], "trainval": ["1", "2", "3"],
          "minitrain": ["1"], "minival": ["3"], "minitest": ["4"]}
write(os.path.join(ROOT, "scienceqa", "problems.json"), dump(sqa))
write(os.path.join(ROOT, "scienceqa", "pid_splits.json"), dump(splits))
for pid, b in sqa_images.items():
    write(os.path.join(ROOT, "scienceqa", "images", sqa[pid]["split"], pid, "image.png"), b)
expected["scienceqa"] = [
    {"id": pid, "split": sqa[pid]["split"], "answer": sqa[pid]["choices"][sqa[pid]["answer"]],
     "correct_choice": sqa[pid]["answer"], "image_path": f"{sqa[pid]['split']}/{pid}/image.png"}
    for split in ["train", "val", "test"] for pid in splits[split] if sqa[pid]["image"]
]
expected["scienceqa_text_only"] = 1

# ---------------------------------------------------------------- CulturalVQA (HF Parquet shards)
cvqa_colors = [(180, 120, 60), (60, 120, 180), (220, 160, 20), (90, 90, 90), (20, 140, 90)]
cvqa_questions = ["What is this dish?", "Where is this market?", "Which festival is shown?",
                  "What instrument is this?", "What is worn here?"]
cvqa_rows = [(q, jpg(c), f"img_{i}.jpg") for i, (q, c) in enumerate(zip(cvqa_questions, cvqa_colors))]
hf_meta = {"info": {"features": {"image": {"_type": "Image"}, "question": {"dtype": "string", "_type": "Value"}}}}
image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
schema = pa.schema([("image", image_type), ("question", pa.string())],
                   metadata={"huggingface": json.dumps(hf_meta)})
shards = [cvqa_rows[:3], cvqa_rows[3:]]
for k, rows in enumerate(shards):
    table = pa.table({"image": pa.array([{"bytes": b, "path": p} for _, b, p in rows], type=image_type),
                      "question": pa.array([q for q, _, _ in rows], type=pa.string())}, schema=schema)
    path = os.path.join(ROOT, "culturalvqa", "data", f"test-{k:05d}-of-{len(shards):05d}.parquet")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, row_group_size=2)
expected["culturalvqa"] = [
    {"id": str(i), "question": q, "image_path": p, "color": cvqa_colors[i]} for i, (q, b, p) in enumerate(cvqa_rows)
]
expected["annotated_culturalvqa_join_ids"] = ["0", "2"]

# ---------------------------------------------------------------- crafted bad inputs (issue 16)
# Each file holds one flaw the loaders once let through; tests/data.rs checks each is an error naming
# file and record (or a counted skip), never silently different data.
BAD = os.path.join(ROOT, "bad")

# Annotated ids qX, qX, qX#1: a suffixed repeat must not take the id the file itself uses.
suffix = [ann({**aok[0], "question_id": q}, [f"Look {i}."], [f"Step {i}.", "So, the answer is bed."])
          for i, q in enumerate(["qX", "qX", "qX#1"])]
write(os.path.join(BAD, "annotated_suffix.json"), dump(suffix))
expected["bad_annotated_suffix_ids"] = ["qX", "qX#2", "qX#1"]

# A-OKVQA records with the rationales field absent and null.
no_rat = [dict(aok[0]), dict(aok[1]), dict(aok[2])]
del no_rat[0]["rationales"]
no_rat[1]["rationales"] = None
write(os.path.join(BAD, "aokvqa_no_rationales.json"), dump(no_rat))
expected["bad_missing_rationales"] = 2

# ScienceQA: a problem id given twice in problems.json (JSON text written by hand: a dict cannot hold it).
dup_first = problem("Which ocean is highlighted?", ["Atlantic", "Pacific"], 1, "image.png", "train")
dup_second = problem("Which ocean is this?", ["Indian", "Arctic"], 0, "image.png", "train")
ok = problem("Which state is farthest north?", ["Ohio", "Maine"], 1, "image.png", "train")
text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in
                          [("1", dup_first), ("3", ok), ("1", dup_second)]) + "\n}\n"
write(os.path.join(BAD, "scienceqa_dup", "problems.json"), text)
write(os.path.join(BAD, "scienceqa_dup", "pid_splits.json"), dump({"train": ["1", "3"]}))
for pid in ["1", "3"]:
    write(os.path.join(BAD, "scienceqa_dup", "images", "train", pid, "image.png"), png((10, 90, 200)))

# ScienceQA: one choice, no choices, an empty image name; pid 13 is sound.
sbad = {
    "10": problem("Which one?", ["only"], 0, "image.png", "train"),
    "11": problem("Which one?", [], 0, "image.png", "train"),
    "12": problem("Which one?", ["a", "b"], 0, "", "train"),
    "13": problem("Which one?", ["a", "b"], 1, "image.png", "train"),
}
write(os.path.join(BAD, "scienceqa_bad", "problems.json"), dump(sbad))
write(os.path.join(BAD, "scienceqa_bad", "pid_splits.json"), dump({"train": ["10", "11", "12", "13"]}))
for pid in ["10", "11", "13"]:
    write(os.path.join(BAD, "scienceqa_bad", "images", "train", pid, "image.png"), png((90, 90, 90)))
os.makedirs(os.path.join(BAD, "scienceqa_bad", "images", "train", "12"), exist_ok=True)
write(os.path.join(BAD, "scienceqa_bad", "images", "train", "12", ".keep"), "")

# CulturalVQA: question stored as binary (as some exports do), row 1 with bytes that are no image,
# row 2 with a question that is not UTF-8.
bad_rows = [(b"What is this dish?", jpg((180, 120, 60)), "a.jpg"),
            (b"Where is this market?", b"\x89PNG\r\n\x1a\n this is not a png", "b.png"),
            (b"\xffWhich festival\xfe?", jpg((60, 120, 180)), "c.jpg")]
bschema = pa.schema([("image", image_type), ("question", pa.binary())])
btable = pa.table({"image": pa.array([{"bytes": b, "path": p} for _, b, p in bad_rows], type=image_type),
                   "question": pa.array([q for q, _, _ in bad_rows], type=pa.binary())}, schema=bschema)
os.makedirs(BAD, exist_ok=True)
pq.write_table(btable, os.path.join(BAD, "culturalvqa_bad.parquet"))
expected["bad_culturalvqa_kept_ids"] = ["0"]

# ---------------------------------------------------------------- the paper's real files (not copied)
# Counts a loader with default params must report on the paper's annotated files (CC BY-NC: never copied
# here), for the ignored test that a user with the files runs. MMB_ANNOTATED_DIR=<their folder> recounts;
# without it the counts already in expected.json are kept.
real_dir = os.environ.get("MMB_ANNOTATED_DIR")
if real_dir:
    real = {}
    for name in ["aokvqa_val_mmb.json", "culturalvqa_cvqa_mmb.json"]:
        recs = json.load(open(os.path.join(real_dir, name)))
        kf = [r["keys_filtered"] for r in recs]
        ids = [str(r.get("question_id", r.get("id"))) for r in recs]
        kept = [i for i, k in enumerate(kf) if k.get("Reasoning_level")]
        seen, repeats = set(), 0
        for i in kept:
            repeats += ids[i] in seen
            seen.add(ids[i])
        real[name] = {
            "records": len(recs),
            # quirks counted over the records a loader keeps (non-empty reasoning)
            "missing_image_level": sum(1 for i in kept if kf[i].get("Image_level") is None),
            "empty_perception": sum(1 for i in kept if not kf[i].get("Image_level")),
            "empty_reasoning": sum(1 for k in kf if not k.get("Reasoning_level")),
            "items": len(kept),
            "repeated_ids": repeats,
            "unique_ids": len(seen),
            "last_is_so_the_answer": sum(1 for i in kept if kf[i]["Reasoning_level"][-1].startswith("So, the answer is")),
        }
    expected["real_annotated"] = real
else:
    with open(os.path.join(ROOT, "expected.json")) as f:
        expected["real_annotated"] = json.load(f)["real_annotated"]

write(os.path.join(ROOT, "expected.json"), dump(expected))
print("fixtures written under", os.path.normpath(ROOT))
