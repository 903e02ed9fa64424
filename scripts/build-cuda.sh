#!/usr/bin/env bash
# Builds `ace` with the `cuda` feature on a machine that has neither a GPU nor a system CUDA
# toolkit, using NVIDIA's CUDA 13.0 wheels from PyPI (nvcc, headers, runtime libraries).
#
#   scripts/build-cuda.sh [extra cargo args]     -> target/release/ace (or $CARGO_TARGET_DIR)
#
# Environment:
#   ACE_CUDA_HOME     where the wheels go (default ${XDG_CACHE_HOME:-~/.cache}/ace/cuda-13.0),
#                     outside the repository; installed once, reused afterwards.
#   CUDA_COMPUTE_CAP  GPU architecture of the PTX kernels (default 90: H100/H200). PTX is
#                     JIT-compiled by the driver for newer GPUs, so use the lowest one you need.
#
# Why CUDA 13.0 and not the newest 13.x: the PTX that nvcc writes can only be JIT-compiled by a
# driver at least as new as nvcc (driver 580 = CUDA 13.0), and cudarc 0.19 knows 13.0-13.4.
#
# How it links: candle 0.9 asks cudarc for `dynamic-linking` (cudarc's `dynamic-loading` cannot be
# added beside it: cudarc's build script refuses both; huggingface/candle#3900), so the binary
# needs libcuda.so.1, libcublas.so.13 (with libcublasLt.so.13) and libcurand.so.10 at start-up.
# The wheels carry no libcuda (it comes with the driver), so a stub exporting the driver API's
# names is built for the link step only (lib/stubs/libcuda.so, as in a CUDA toolkit). At run
# time the real driver's libcuda.so.1 and the CUDA 13 libraries must be found, e.g.
#   LD_LIBRARY_PATH=$ACE_CUDA_HOME/nvidia/cu13/lib ace generate ... --device cuda
# Without an NVIDIA driver the binary does not start (libcuda.so.1 missing): use the CPU build.
# For a GPU machine without OpenCV 4.6, scripts/bundle-libs.sh packs the binary with its libraries.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=${ACE_CUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ace/cuda-13.0}
cu=$home/nvidia/cu13
wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)

if [[ ! -x $cu/bin/nvcc || ! -e $cu/lib/libcublas.so.13 || ! -e $cu/lib/libcurand.so.10 ]]; then
    echo "build-cuda: installing the CUDA 13.0 wheels into $home" >&2
    python3 -m pip install --quiet --no-deps --target "$home" "${wheels[@]}"
fi

# The linker looks for unversioned names (-lcublas); the wheels ship only the versioned ones.
for so in "$cu"/lib/lib{cublas,cublasLt,curand,nvrtc,cudart}.so.*; do
    case $so in *builtins* | *.alt.*) continue ;; esac
    name=$(basename "$so")
    ln -sfn "$name" "$cu/lib/${name%%.so.*}.so"
done

# Link-time stub of the driver library: every driver API function that cuda.h declares or that
# cudarc binds, each returning CUDA_ERROR_STUB_LIBRARY (34).
stub=$cu/lib/stubs/libcuda.so
if [[ ! -e $stub ]]; then
    echo "build-cuda: writing the link-time stub $stub" >&2
    cudarc_sys=$(cd "$repo" && cargo metadata --locked --format-version 1 --features cuda |
        python3 -c 'import json, sys, os
pkgs = json.load(sys.stdin)["packages"]
print(*[os.path.join(os.path.dirname(p["manifest_path"]), "src/driver/sys/mod.rs")
        for p in pkgs if p["name"] == "cudarc"])')
    mkdir -p "$cu/lib/stubs"
    src=$(mktemp --suffix=.c)
    {
        cc -E -P -I"$cu/include" "$cu/include/cuda.h" |
            grep -oE '^ *CUresult +cu[A-Za-z0-9_]+ *\(' | grep -oE 'cu[A-Za-z0-9_]+'
        # shellcheck disable=SC2086 # one path per cudarc version in the lock file
        grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' $cudarc_sys | grep -oE 'cu[A-Za-z0-9_]+$'
    } | sort -u | sed 's/.*/int &(void) { return 34; }/' >"$src"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$src"
    rm -f "$src"
fi

export CUDA_PATH=$cu CUDA_ROOT=$cu CUDA_HOME=$cu
export PATH=$cu/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cd "$repo"
exec cargo build --locked --release --features cuda "$@"
