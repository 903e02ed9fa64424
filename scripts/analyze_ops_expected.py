#!/usr/bin/env python3
"""Makes the expected outputs of the classical `scribble`, `contour` and `doodle` analysis
operations by running the ControlNet annotator math they are built from (OpenCV + NumPy), so
that the Rust tests in src/analyze/{scribble,contour,doodle}.rs compare against the reference
rather than against themselves.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install "opencv-python-headless==4.6.0.66" "numpy<2"
    /tmp/venv/bin/python scripts/analyze_ops_expected.py

Inputs: tests/fixtures/ace-tiny/inputs/{astronaut,chelsea,coffee}.png and samples/chelsea.png
reduced to 256 px wide (cv2.INTER_AREA, as the Rust test does). Outputs go to
tests/fixtures/analyze/ops/<op>_<name>.png (RGB, edges white on black). Not needed to build or
test the project.

One deliberate difference from the annotators: ControlNet's `scribble_xdog` computes
`2 * (255 - dog)` in uint8, which wraps for differences above 127 and drops the strongest
edges; here (and in the Rust op) the product is taken in int32, the math the code means.
"""
import os

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "analyze", "ops")


def load_rgb(path):
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def inputs():
    tiny = os.path.join(ROOT, "tests", "fixtures", "ace-tiny", "inputs")
    for name in ("astronaut", "chelsea", "coffee"):
        yield name, load_rgb(os.path.join(tiny, name + ".png"))
    big = load_rgb(os.path.join(ROOT, "samples", "chelsea.png"))
    h, w = big.shape[:2]
    size = (256, int(round(h * 256 / w)))
    yield "chelsea256", cv2.resize(big, size, interpolation=cv2.INTER_AREA)


def xdog(img, sigma_small, sigma_large, threshold):
    """scribble_xdog (sd-webui-controlnet): dark-side difference of Gaussians, thresholded."""
    g1 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma_small)
    g2 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma_large)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    edge = np.zeros(img.shape[:2], dtype=np.uint8)
    edge[2 * (255 - dog.astype(np.int32)) > threshold] = 255
    return edge


def nms(x, t, s):
    """annotator/util.py nms of ControlNet 1.1."""
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), s)
    f1 = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=np.uint8)
    f2 = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=np.uint8)
    f3 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.uint8)
    f4 = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.uint8)
    y = np.zeros_like(x)
    for f in [f1, f2, f3, f4]:
        np.putmask(y, cv2.dilate(x, kernel=f) == x, x)
    z = np.zeros_like(y, dtype=np.uint8)
    z[y > t] = 255
    return z


def scribble(img):
    """gradio_scribble.py of ControlNet 1.1 on an XDoG edge map."""
    m = xdog(img, 0.5, 5.0, 32)
    m = nms(m, 127, 3.0)
    m = cv2.GaussianBlur(m, (0, 0), 3.0)
    m[m > 4] = 255
    m[m < 255] = 0
    return m


def normalise(intensity):
    """lineart_standard's median normalisation."""
    intensity /= max(16, np.median(intensity[intensity > 8]))
    intensity *= 127
    return intensity.clip(0, 255).astype(np.uint8)


def contour(img):
    """lineart_standard (sd-webui-controlnet) at the input's own resolution."""
    x = img.astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    return normalise(np.min(g - x, axis=2).clip(0, 255))


def doodle(img):
    """The doodle recipe of src/analyze/doodle.rs: coarse line strength, nms, short strokes
    dropped, widened."""
    g1 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)
    g2 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 8.0)
    m = nms(normalise(np.min(g2 - g1, axis=2).clip(0, 255)), 90, 1.5)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= int(np.floor(0.1 * max(m.shape) + 0.5))
    keep[0] = False  # the background
    m = np.where(keep[labels], 255, 0).astype(np.uint8)
    m = cv2.GaussianBlur(m, (0, 0), 2.0)
    return np.where(m > 4, 255, 0).astype(np.uint8)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, img in inputs():
        for op, fn in (("scribble", scribble), ("contour", contour), ("doodle", doodle)):
            out = fn(img)
            rgb = np.stack([out] * 3, axis=2)
            path = os.path.join(OUT, f"{op}_{name}.png")
            cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            print(path, out.shape, int((out > 0).sum()))


if __name__ == "__main__":
    main()
