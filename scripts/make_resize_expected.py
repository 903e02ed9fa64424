#!/usr/bin/env python3
"""Makes tests/fixtures/resize/: what Pillow's Image.resize gives for the fixture photos, so that
`ace`'s re-implementation of ImagingResample (bicubic, 8-bit) and of NEAREST can be checked for
exact equality. Run from the repository root: `pip install pillow && python3 scripts/make_resize_expected.py`.
Only needed to regenerate the expected files; the project never runs it."""
import json
import os

import PIL
from PIL import Image

INPUTS = "tests/fixtures/ace-tiny/inputs"
OUT = "tests/fixtures/resize"

# (input, mode, filter, (width, height)): downscale, upscale, mixed, one axis only.
CASES = [
    ("astronaut.png", "RGB", "bicubic", (96, 40)),
    ("astronaut.png", "RGB", "bicubic", (50, 128)),
    ("astronaut.png", "RGB", "bicubic", (37, 53)),
    ("astronaut.png", "RGB", "bicubic", (48, 64)),
    ("chelsea.png", "RGB", "bicubic", (150, 100)),
    ("chelsea.png", "RGB", "bicubic", (61, 130)),
    ("coffee.png", "RGB", "bicubic", (64, 30)),
    ("coffee.png", "RGB", "bicubic", (17, 80)),
    ("mask.png", "L", "nearest", (40, 56)),
    ("mask.png", "L", "nearest", (150, 203)),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    listing = []
    for name, mode, filt, size in CASES:
        img = Image.open(os.path.join(INPUTS, name)).convert(mode)
        resample = Image.BICUBIC if filt == "bicubic" else Image.NEAREST
        out = img.resize(size, resample)
        stem = f"{os.path.splitext(name)[0]}_{filt}_{size[0]}x{size[1]}.png"
        out.save(os.path.join(OUT, stem))
        listing.append({"input": name, "filter": filt, "width": size[0], "height": size[1],
                        "expected": stem})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"pillow": PIL.__version__,
                   "cases": listing}, f, indent=1)


if __name__ == "__main__":
    main()
