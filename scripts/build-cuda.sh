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
# added beside it: cudarc's build script refuses both; huggingface/candle#3900), which would give
# the binary DT_NEEDED entries on libcuda.so.1, libcublas.so.13, libcublasLt.so.13 and
# libcurand.so.10, so that it would not even start without the NVIDIA driver. Instead, the
# binary links a shim written by scripts/cuda-shim.py from cudarc's bindings (the cudarc of
# Cargo.lock): for each function, a trampoline that loads its library with dlopen on first use
# (by soname, so through LD_LIBRARY_PATH and ld.so.cache, then from this build's
# $ACE_CUDA_HOME/nvidia/cu13/lib) and jumps to it; a missing library makes the function return
# an error status of that library. build.rs links the shim object named by ACE_CUDA_SHIM;
# the -lcuda, -lcublas, ... that cudarc asks for find empty linker scripts in lib/stubs (the
# wheels' real libraries have only versioned names), so nothing CUDA ends up in DT_NEEDED. The
# binary starts anywhere; `--device cuda` loads the libraries first and names a missing one in
# one error line (exit 2), `--device auto` then falls back to the CPU. At run time it needs the
# driver's libcuda.so.1 and CUDA 13's cuBLAS (libcublas.so.13, libcublasLt.so.13) and cuRAND
# (libcurand.so.10); libnvrtc.so.13 only if a kernel is compiled at run time, libcudart.so.13
# only if its functions are called (they are not, see below).
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

# cudarc's build script asks the linker for -lcuda -lnvrtc -lcurand -lcublas -lcublasLt and adds
# $cu/lib and $cu/lib/stubs to its search path; candle-kernels adds -lcudart for the host code of
# its MoE kernels (a static library built by nvcc). The shim defines all their functions, so each
# name finds an empty linker script in lib/stubs; the real libraries must not be found, so no
# unversioned names in lib (earlier versions of this script made such links there, and a stub
# libcuda.so in lib/stubs: both are replaced).
for name in cuda cublas cublasLt curand nvrtc cudart; do
    if [[ -L $cu/lib/lib$name.so ]]; then rm -f "$cu/lib/lib$name.so"; fi
done
mkdir -p "$cu/lib/stubs"
for name in cuda cudart cublas cublasLt curand nvrtc; do
    script=$cu/lib/stubs/lib$name.so
    if [[ ! -f $script || $(head -c 2 "$script") != "/*" ]]; then
        echo "/* ace: lib$name's functions are defined by the shim of scripts/cuda-shim.py */" \
            >"$script"
    fi
done

# The shim: trampolines for every function of cudarc's bindings of the five libraries it links,
# from the cudarc that candle-core uses (Cargo.lock also lists one for candle's optional `ug`
# feature), and for every function that the wheel's libcudart.so.13 exports (those returning a
# string per its header). libnvrtc and libcudart are loaded only when called (candle compiles
# kernels at run time only on request; ace does not use the MoE kernels, so their host code, the
# runtime's only user, is not linked); the others are checked up front when a GPU is opened.
cudarc_src=$(cd "$repo" && cargo metadata --locked --format-version 1 --features cuda |
    python3 -c 'import json, sys, os
meta = json.load(sys.stdin)
dirs = {p["id"]: os.path.dirname(p["manifest_path"]) for p in meta["packages"]}
names = {p["id"]: p["name"] for p in meta["packages"]}
srcs = {os.path.join(dirs[d["pkg"]], "src") for n in meta["resolve"]["nodes"]
        if names[n["id"]] == "candle-core" for d in n["deps"] if names[d["pkg"]] == "cudarc"}
if len(srcs) != 1:
    sys.exit(f"build-cuda: expected one cudarc under candle-core, found {sorted(srcs)}")
print(*srcs)')
target=${CARGO_TARGET_DIR:-$repo/target}
shim=$target/cuda-shim
mkdir -p "$shim"
nm -D --defined-only "$cu/lib/libcudart.so.13" |
    awk -v strings="$(grep -oE 'const char *\* *CUDARTAPI +[A-Za-z0-9_]+' \
        "$cu/include/cuda_runtime_api.h" | awk '{print $NF}')" '
        BEGIN { n = split(strings, s, "\n"); for (i = 1; i <= n; i++) string[s[i]] = 1 }
        $2 == "T" { sub(/@.*/, "", $3); print $3 (($3 in string) ? " string" : "") }' \
    >"$shim/cudart.names"
python3 "$repo/scripts/cuda-shim.py" -o "$shim/new.c" --search-dir "$cu/lib" \
    --lib "libcuda.so.1:34:$cudarc_src/driver/sys/mod.rs" \
    --lib "libcublas.so.13:1:$cudarc_src/cublas/sys/mod.rs" \
    --lib "libcublasLt.so.13:1:$cudarc_src/cublaslt/sys/mod.rs" \
    --lib "libcurand.so.10:203:$cudarc_src/curand/sys/mod.rs" \
    --lazy "libnvrtc.so.13:11:$cudarc_src/nvrtc/sys/mod.rs" \
    --lazy "libcudart.so.13:34:$shim/cudart.names"
# Status codes: CUDA_ERROR_STUB_LIBRARY, CUBLAS_STATUS_NOT_INITIALIZED,
# CURAND_STATUS_INITIALIZATION_FAILED, NVRTC_ERROR_INTERNAL_ERROR, cudaErrorStubLibrary.
# Rebuilt only when it changed: a new object relinks (and recompiles) ace.
if ! cmp -s "$shim/new.c" "$shim/ace-cuda-shim.c" || [[ ! -e $shim/ace-cuda-shim.o ]]; then
    cc -O2 -fPIC -Wall -Wextra -Werror -c -o "$shim/ace-cuda-shim.o" "$shim/new.c"
    mv "$shim/new.c" "$shim/ace-cuda-shim.c"
else
    rm -f "$shim/new.c"
fi
export ACE_CUDA_SHIM=$shim/ace-cuda-shim.o

export CUDA_PATH=$cu CUDA_ROOT=$cu CUDA_HOME=$cu
export PATH=$cu/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cd "$repo"
exec cargo build --locked --release --features cuda "$@"
