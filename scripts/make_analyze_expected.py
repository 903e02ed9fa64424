#!/usr/bin/env python3
"""Makes the expected outputs of `ace analyze canny|gray|mosaic` with OpenCV-Python itself.

The Rust tests (src/analyze/{canny,gray,mosaic}.rs) compare against these files bit for bit.
Run from the repository root with opencv-python-headless==4.6.0.66 (the same OpenCV 4.6 as
Debian's) and numpy<2:

    python3 scripts/make_analyze_expected.py

It writes tests/fixtures/analyze/inputs/NAME.png (the samples shrunk to at most 256 px a side,
3-channel RGB) and tests/fixtures/analyze/expected/NAME.OP.png. The operations follow scepter's
annotators on an RGB uint8 array: CannyAnnotator (cv2.Canny(img, 100, 200), replicated to 3
channels), ColorAnnotator (resize to (w // ratio, h // ratio) with INTER_CUBIC, back with
INTER_NEAREST), and a luminance from cvtColor(RGB2GRAY), replicated to 3 channels.

The files are made with OpenCV's plain C++ code paths (cv2.setUseOptimized(False)): that is what
Debian's libopencv 4.6, which `ace` links, computes. The wheel's SIMD (AVX2) bicubic resize rounds
a few values differently by one grey level; the script reports each output where the two paths
differ (only mosaics are expected to).
"""
import os

import cv2
import numpy as np

SAMPLES = ["astronaut", "camera", "chelsea", "coffee"]
ROOT = os.path.join("tests", "fixtures", "analyze")
MAX_SIDE = 256


def load_rgb(name):
    img = cv2.imread(os.path.join("samples", name + ".png"), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"samples/{name}.png: cannot read")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def shrink(rgb):
    h, w = rgb.shape[:2]
    scale = MAX_SIDE / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def three(gray):
    return gray[..., None].repeat(3, 2)


def mosaic(rgb, ratio):
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (w // ratio, h // ratio), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def operations(rgb, optimized):
    cv2.setUseOptimized(optimized)
    outputs = {
        "canny": three(cv2.Canny(rgb, 100, 200)),
        "canny-50-150": three(cv2.Canny(rgb, 50, 150)),
        "gray": three(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)),
        "mosaic": mosaic(rgb, 64),
        "mosaic-16": mosaic(rgb, 16),
    }
    cv2.setUseOptimized(False)
    return outputs


def save_rgb(path, rgb):
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"{path}: cannot write")


def main():
    print("OpenCV", cv2.__version__)
    cv2.setUseOptimized(False)
    os.makedirs(os.path.join(ROOT, "inputs"), exist_ok=True)
    os.makedirs(os.path.join(ROOT, "expected"), exist_ok=True)
    for name in SAMPLES:
        rgb = shrink(load_rgb(name))
        save_rgb(os.path.join(ROOT, "inputs", name + ".png"), rgb)
        simd, plain = (operations(rgb, optimized) for optimized in (True, False))
        for op, out in plain.items():
            differing = int((out != simd[op]).any(-1).sum())
            if differing:
                print(f"  {name}.{op}: {differing} pixels differ on the SIMD path (by <= "
                      f"{int(abs(out.astype(int) - simd[op]).max())})")
            save_rgb(os.path.join(ROOT, "expected", f"{name}.{op}.png"), out)
        print(name, rgb.shape)


if __name__ == "__main__":
    main()
