#!/usr/bin/env python3
"""Benchmark (not a test): which f32 BLAS is faster on this CPU for the DiT's products. Times
one-thread `sgemm` at the full-size DiT's shapes (1024 tokens, hidden 1152, MLP 4608, and the
transposed weight-gradient product) through the system OpenBLAS that ace links (Debian's
libopenblas, `cblas_sgemm` via ctypes; it picks its kernels per CPU, `OPENBLAS_CORETYPE`
overrides) and through PyTorch's `torch.mm` (MKL in the x86 wheels, the reference's BLAS).
Prints GFLOP/s of each and the ratio OpenBLAS / PyTorch (above 1: OpenBLAS is faster).

Needs `pip install torch numpy`; the project never runs it.
Usage: scripts/bench_blas.py [--repeat 5]
"""
import argparse
import ctypes
import os
import time

import numpy as np
import torch

# m x k @ k x n: q/k/v/o projections, MLP up, MLP down, MLP weight gradient.
SHAPES = [(1024, 1152, 1152), (1024, 1152, 4608), (1024, 4608, 1152), (1152, 1024, 4608)]


def best_seconds(f, repeat):
    f()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    blas = ctypes.CDLL("libopenblas.so.0")
    blas.openblas_set_num_threads(1)
    blas.openblas_get_corename.restype = ctypes.c_char_p
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    print(f"cpu: {cpu}; OpenBLAS kernels: {blas.openblas_get_corename().decode()}; "
          f"PyTorch {torch.__version__} (MKL: {torch.backends.mkl.is_available()})")
    floats = ctypes.POINTER(ctypes.c_float)
    for m, k, n in SHAPES:
        a = np.random.randn(m, k).astype(np.float32)
        b = np.random.randn(k, n).astype(np.float32)
        c = np.zeros((m, n), np.float32)

        def openblas():
            # Row-major (101), no transposes (111).
            blas.cblas_sgemm(101, 111, 111, m, n, k, ctypes.c_float(1.0),
                             a.ctypes.data_as(floats), k, b.ctypes.data_as(floats), n,
                             ctypes.c_float(0.0), c.ctypes.data_as(floats), n)

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        flops = 2 * m * n * k
        ours = flops / best_seconds(openblas, args.repeat) / 1e9
        theirs = flops / best_seconds(lambda: torch.mm(ta, tb), args.repeat) / 1e9
        print(f"{m}x{k} @ {k}x{n}: OpenBLAS {ours:.1f} GFLOP/s, PyTorch {theirs:.1f} GFLOP/s, "
              f"ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
