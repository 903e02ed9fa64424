#!/usr/bin/env python3
"""Baseline of `cargo bench --bench dit_forward` (not a test): one forward of the reference
DiT, scepter's `ACE` backbone, with the full-size ACE-0.6B config and random weights, on the
same 512 px edit as the Rust bench: two frames of 4x64x64 latents (target + one edit image,
1024 tokens each) with all-ones masks, 40 context rows per frame, text position embeddings.

Prints one JSON line: {"seconds", "cpu_seconds", "peak_rss_mib", "threads", "out_shape"}.
Needs `pip install torch einops` and scepter's backbone (`pip install --no-deps scepter`:
its other requirements are not needed to run the DiT). flash-attn, which the backbone calls
and which only runs on CUDA, is stood in for by PyTorch's fused attention (below). The project never runs this itself;
the Rust bench calls it when ACE_BENCH_REFERENCE=1.
With --bf16 the weights are bfloat16 and the forward runs under
`torch.autocast("cpu", dtype=torch.bfloat16)` (oneDNN's AMX / AVX512-BF16 products where the
CPU has them), attention in bfloat16 too: the fastest way PyTorch runs it on a CPU.
Usage: scripts/bench_dit_reference.py [--threads 2] [--bf16]
"""
import argparse
import json
import resource
import sys
import time
import types

import torch
import torch.nn.functional as F


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), deterministic=False):
    """CPU stand-in for flash-attn's varlen kernel (which needs CUDA): PyTorch's fused
    scaled-dot-product attention on each packed sequence, in float32 as the golden files were
    made (the reference's float16 cast of the inputs is undone here), or in bfloat16 with
    --bf16."""
    outs = []
    for i in range(len(cu_seqlens_q) - 1):
        qs = slice(int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]))
        ks = slice(int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1]))
        qi, ki, vi = (x.to(ATTENTION_DTYPE).transpose(0, 1) for x in (q[qs], k[ks], v[ks]))
        outs.append(F.scaled_dot_product_attention(qi, ki, vi, scale=softmax_scale)
                    .transpose(0, 1))
    return torch.cat(outs)


# float32, or bfloat16 with --bf16.
ATTENTION_DTYPE = torch.float32

# The backbone imports flash_attn at load time and refuses to build without it.
sys.modules["flash_attn"] = types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)
from scepter.modules.model.backbone.ace.ace import ACE  # noqa: E402

CONFIG = dict(PATCH_SIZE=2, IN_CHANNELS=4, HIDDEN_SIZE=1152, DEPTH=28, NUM_HEADS=16,
              MLP_RATIO=4.0, PRED_SIGMA=True, Y_CHANNELS=4096, MAX_SEQ_LEN=1024, QK_NORM=True)
LATENT, CONTEXT_ROWS = 64, 40


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    global ATTENTION_DTYPE
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    ATTENTION_DTYPE = dtype
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.no_grad():
        model = ACE(CONFIG, logger=None).eval()
        # initialize_weights zeroes the output layers; random values everywhere keep every
        # path of the forward honest (no multiply-by-zero shortcuts in either implementation).
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        model = model.to(dtype)
        target = torch.randn(1, 4, LATENT * LATENT)
        edit = torch.randn(1, 4, LATENT, LATENT)
        context = [[torch.randn(CONTEXT_ROWS, CONFIG["Y_CHANNELS"]) for _ in range(2)]]
        context_mask = [[torch.ones(CONTEXT_ROWS, dtype=torch.long) for _ in range(2)]]
        cond = {"crossattn": context, "x_shapes": [[LATENT, LATENT]],
                "x_mask": [None], "edit": [[edit]], "edit_mask": [[None]]}
        tpe = torch.randn(10, CONFIG["Y_CHANNELS"])
        t = torch.tensor([500.0])
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = model(target, t=t, cond=cond, mask=context_mask, text_position_embeddings=tpe)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({
        "seconds": wall,
        "cpu_seconds": cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "out_shape": list(out.shape),
        "dtype": "bf16-autocast" if args.bf16 else "f32",
    }))


if __name__ == "__main__":
    main()
