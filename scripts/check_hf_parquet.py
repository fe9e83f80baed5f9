#!/usr/bin/env python3
"""Check that Hugging Face `datasets` reads an item Parquet file with our features.

    MMB_HF_SAMPLE=/tmp/p.parquet cargo test --test data write_hf_sample_parquet -- --ignored
    .venv/bin/python scripts/check_hf_parquet.py /tmp/p.parquet
"""
import sys

import datasets
from datasets import Dataset

path = sys.argv[1]
ds = Dataset.from_parquet(path)
print("datasets", datasets.__version__)
print(ds.features)
assert isinstance(ds.features["image"], datasets.Image), ds.features["image"]
row = ds[0]
img = row["image"]
print("row 0:", row["id"], row["question"], "->", row["answer"], "| image", img.size, img.mode)
assert img.size[0] > 0
assert isinstance(row["choices"], list) and row["choices"][row["correct_choice"]] == row["answer"]
assert row["reasoning"][-1].startswith("So, the answer is")
print("OK:", len(ds), "rows; image decodes; features:", sorted(ds.features))
