#!/usr/bin/env python3
"""Writes tests/fixtures/emu-edit/test-00000-of-00001.parquet: three rows in the layout of the
Emu Edit test set as Hugging Face `datasets` writes it (facebook/emu_edit_test_set: `image` a
struct of encoded `bytes` and `path`, `instruction`, `task`, `split`, `idx`, `hash`,
`input_caption`, `output_caption`; snappy pages), with the eval-tiny input photographs.
Needs `pip install pyarrow`; the project never runs it.
"""
import os

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "tests/fixtures/eval-tiny/data")
OUT = os.path.join(ROOT, "tests/fixtures/emu-edit/test-00000-of-00001.parquet")

rows = [
    (0, "background", "put the cat on a beach", "a cat on a sofa", "a cat on a beach"),
    (1, "color", "make the car red", "a blue car", "a red car"),
    (2, "remove", "remove the tree", "a house with a tree", "a house"),
]
table = pa.table({
    "instruction": [r[2] for r in rows],
    "image": pa.array(
        [{"bytes": open(os.path.join(DATA, f"{r[0]}_input.png"), "rb").read(), "path": None}
         for r in rows],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    "task": [r[1] for r in rows],
    "split": ["test"] * len(rows),
    "idx": pa.array([r[0] for r in rows], type=pa.int64()),
    "hash": [f"h{r[0]}" for r in rows],
    "input_caption": [r[3] for r in rows],
    "output_caption": [r[4] for r in rows],
})
os.makedirs(os.path.dirname(OUT), exist_ok=True)
pq.write_table(table, OUT, compression="snappy")
print(OUT, os.path.getsize(OUT))
