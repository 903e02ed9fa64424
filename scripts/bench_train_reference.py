#!/usr/bin/env python3
"""Baseline of `cargo bench --bench train_step` (not a test): one training step of the
reference DiT, scepter's `ACE` backbone, with random weights on one 512 px text-to-image example
(4x64x64 latent: 1024 tokens, 40 context rows, batch 1, f32, CPU): x_t from the linear schedule
at t=500, the MSE between the predicted eps and the noise, backward, one torch.optim.AdamW step.
Every step is timed on its own: seven for the tiny size (the ace-tiny fixture's DiT), three
for the full size (ACE-0.6B); the first two touch memory for the first time (AdamW makes its
moments in the first), the ones after are what a training run repeats.

With --amp the forward pass and the loss run under torch.autocast("cpu", dtype=torch.bfloat16)
(the reference's USE_AMP on the CPU), backward and AdamW as PyTorch runs them after it. With
--checkpoint the backbone has USE_GRAD_CHECKPOINT: True and is called with gc_seg=0, as ACE's
training forward calls it: checkpoint_sequential over the blocks, one segment each.

Prints one JSON line: {"step_seconds" (a list), "peak_rss_mib", "threads"}.
Needs `pip install torch einops` and `pip install --no-deps scepter` (see
bench_dit_reference.py for the CPU stand-in of flash-attn).
Usage: scripts/bench_train_reference.py --size tiny|full [--threads 2] [--amp] [--checkpoint]
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
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--checkpoint", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = dict(SIZES[args.size], USE_GRAD_CHECKPOINT=args.checkpoint)
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
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            eps = model(x_t, t=t, cond=cond, mask=context_mask, text_position_embeddings=tpe,
                        gc_seg=0 if args.checkpoint else -1)
            loss = ((eps.float() - noise) ** 2).mean()
        loss.backward()
        opt.step()

    step_seconds = []
    for _ in range(7 if args.size == "tiny" else 3):
        start = time.perf_counter()
        step()
        step_seconds.append(time.perf_counter() - start)
    print(json.dumps({
        "step_seconds": step_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
