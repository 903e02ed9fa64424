#!/usr/bin/env python3
"""Baseline of `cargo bench --bench train_step` (not a test): one training step of the
reference DiT, scepter's `ACE` backbone, with random weights on one 512 px text-to-image example
(4x64x64 latent: 1024 tokens, 40 context rows, batch 1, f32, CPU): x_t from the linear schedule
at t=500, the MSE between the predicted eps and the noise, backward, one torch.optim.AdamW step.
The tiny size is the ace-tiny fixture's DiT (mean of 5 steps after a warm-up), the full size
ACE-0.6B (one step).

Prints one JSON line: {"seconds", "peak_rss_mib", "threads"}.
Needs `pip install torch einops` and `pip install --no-deps scepter` (see
bench_dit_reference.py for the CPU stand-in of flash-attn).
Usage: scripts/bench_train_reference.py --size tiny|full [--threads 2]
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_dit_reference import ACE  # noqa: E402  (installs the flash-attn stand-in)

SIZES = {
    "tiny": dict(PATCH_SIZE=2, IN_CHANNELS=4, HIDDEN_SIZE=64, DEPTH=2, NUM_HEADS=4,
                 MLP_RATIO=4.0, PRED_SIGMA=True, Y_CHANNELS=32, MAX_SEQ_LEN=1024, QK_NORM=True),
    "full": dict(PATCH_SIZE=2, IN_CHANNELS=4, HIDDEN_SIZE=1152, DEPTH=28, NUM_HEADS=16,
                 MLP_RATIO=4.0, PRED_SIGMA=True, Y_CHANNELS=4096, MAX_SEQ_LEN=1024, QK_NORM=True),
}
LATENT, CONTEXT_ROWS, T = 64, 40, 500


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=SIZES, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = SIZES[args.size]
    model = ACE(cfg, logger=None).train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    sigma = (1 - torch.cumprod(1 - betas, 0)).sqrt()[T].item()
    alpha = (1 - sigma ** 2) ** 0.5
    x0 = torch.randn(1, 4, LATENT * LATENT)
    noise = torch.randn(1, 4, LATENT * LATENT)
    context = [[torch.randn(CONTEXT_ROWS, cfg["Y_CHANNELS"])]]
    context_mask = [[torch.ones(CONTEXT_ROWS, dtype=torch.long)]]
    cond = {"crossattn": context, "x_shapes": [[LATENT, LATENT]], "x_mask": [None]}
    tpe = torch.randn(10, cfg["Y_CHANNELS"])
    t = torch.tensor([float(T)])

    def step():
        opt.zero_grad(set_to_none=True)
        x_t = alpha * x0 + sigma * noise
        eps = model(x_t, t=t, cond=cond, mask=context_mask, text_position_embeddings=tpe)
        loss = ((eps - noise) ** 2).mean()
        loss.backward()
        opt.step()

    steps = 5 if args.size == "tiny" else 1
    if steps > 1:
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    print(json.dumps({
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
