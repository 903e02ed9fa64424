#!/usr/bin/env python3
"""Benchmark (not a test): CLIP ViT-B/32 + DINO ViT-S/16 embedding throughput of `ace eval` at
224 px against PyTorch + transformers on the same machine and images.

Both sides get random-weight models of the real configs (openai/clip-vit-base-patch32,
facebook/dino-vits16) in the Hugging Face layout, and N random 256x256 image pairs; each side
reads the images from disk, preprocesses them (short side, centre crop, normalise) and embeds
both images of every pair with CLIP and DINO in batches of 32 on all CPU cores. `ace eval`
also computes L1/L2/PSNR/SSIM on the way, so its time is an upper bound. Prints samples per
second of each and the ratio ace / PyTorch (goal >= 1).

Needs `pip install torch transformers safetensors pillow numpy`; the project never runs it.
Usage: scripts/bench_eval.py [--ace target/release/ace] [--samples 256] [--workdir DIR]
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def make_models(work):
    torch.manual_seed(0)
    clip_dir, dino_dir = os.path.join(work, "clip"), os.path.join(work, "dino")
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=32,
                           hidden_act="quick_gelu"),
        projection_dim=512))
    clip.save_pretrained(clip_dir, safe_serialization=True)
    # Image embeddings only: any CLIP tokenizer.json serves for loading.
    shutil.copy(os.path.join(ROOT, "tests/fixtures/eval-tiny/clip-tiny/tokenizer.json"), clip_dir)
    dino = ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                              intermediate_size=1536, image_size=224, patch_size=16,
                              qkv_bias=True, layer_norm_eps=1e-6), add_pooling_layer=False)
    dino.save_pretrained(dino_dir, safe_serialization=True)
    return clip.eval(), dino.eval(), clip_dir, dino_dir


def make_images(work, n):
    rng = np.random.default_rng(0)
    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    rows = []
    for i in range(n):
        for kind in ("gen", "gt"):
            arr = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(data, f"{i}_{kind}.png"))
        rows.append({"generated": f"data/{i}_gen.png", "ground_truth": f"data/{i}_gt.png"})
    manifest = os.path.join(work, "manifest.jsonl")
    with open(manifest, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return manifest, rows


def preprocess(img, short, crop, mean, std):
    w, h = img.size
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - crop) / 2)), int(round((nh - crop) / 2))
    a = np.asarray(img.crop((left, top, left + crop, top + crop)), np.float32) / 255.0
    return ((a - mean) / std).transpose(2, 0, 1)


def torch_run(clip, dino, work, rows, batch):
    torch.set_num_threads(os.cpu_count())
    start = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(rows), batch):
            chunk = rows[b:b + batch]
            imgs = [Image.open(os.path.join(work, r[k])).convert("RGB")
                    for r in chunk for k in ("generated", "ground_truth")]
            c = torch.from_numpy(np.stack([preprocess(i, 224, 224, CLIP_MEAN, CLIP_STD) for i in imgs]))
            d = torch.from_numpy(np.stack([preprocess(i, 256, 224, IMAGENET_MEAN, IMAGENET_STD) for i in imgs]))
            e = clip.get_image_features(pixel_values=c)
            e = e if torch.is_tensor(e) else e.pooler_output
            dino(pixel_values=d).last_hidden_state[:, 0]
    return time.perf_counter() - start


def ace_run(ace, manifest, clip_dir, dino_dir, batch):
    cmd = [ace, "eval", "--quiet", "--device", "cpu", "--json", "--batch-size", str(batch),
           "--manifest", manifest, "--clip-model", clip_dir, "--dino-model", dino_dir]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    doc = json.loads(out.stdout)
    assert all(s["dino"] is not None and s["clip_i"] is not None for s in doc["samples"])
    return elapsed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ace", default=os.path.join(ROOT, "target/release/ace"))
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workdir")
    a = p.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="ace-bench-eval-")
    clip, dino, clip_dir, dino_dir = make_models(work)
    manifest, rows = make_images(work, a.samples)
    # ace first, in a fresh process while this one is idle (a process started after PyTorch's
    # run measured up to 2.4x slower on the 2-core VM); PyTorch after a warm-up on one batch.
    t_ace = ace_run(a.ace, manifest, clip_dir, dino_dir, a.batch)
    torch_run(clip, dino, work, rows[:a.batch], a.batch)
    t_torch = torch_run(clip, dino, work, rows, a.batch)
    n = len(rows)
    print(f"machine: {os.cpu_count()} cores; {n} pairs at 224 px (CLIP ViT-B/32 + DINO ViT-S/16, 2 images each)")
    print(f"pytorch {torch.__version__}: {t_torch:.2f} s, {n / t_torch:.2f} pairs/s")
    print(f"ace eval (incl. model loading, pixel metrics): {t_ace:.2f} s, {n / t_ace:.2f} pairs/s")
    print(f"ratio ace / pytorch: {t_torch / t_ace:.2f}x")


if __name__ == "__main__":
    main()
