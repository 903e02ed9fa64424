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
# libcurand.so.10, so that it would not even start without the NVIDIA driver. Instead, the binary
# links a shim that build.rs writes (build/cuda_shim.rs) from cudarc's bindings (the cudarc of
# Cargo.lock): for each function, a trampoline that loads its library with dlopen on first use (by
# soname, so through LD_LIBRARY_PATH and ld.so.cache, then from this build's
# $ACE_CUDA_HOME/nvidia/cu13/lib) and jumps to it; a missing library makes the function return an
# error status of that library. This script names the libraries for build.rs (ACE_CUDA_SHIM_LIBS,
# ACE_CUDA_SHIM_LAZY, ACE_CUDA_SHIM_SEARCH_DIR); the -lcuda, -lcublas, ... that cudarc asks for find
# empty linker scripts in lib/stubs (the wheels' real libraries have only versioned names), so
# nothing CUDA ends up in DT_NEEDED. The binary starts anywhere; `--device cuda` loads the libraries
# first and names a missing one in one error line (exit 2), `--device auto` then falls back to the
# CPU. At run time it needs the driver's libcuda.so.1 and CUDA 13's cuBLAS (libcublas.so.13,
# libcublasLt.so.13) and cuRAND (libcurand.so.10); libnvrtc.so.13 only if a kernel is compiled at
# run time, libcudart.so.13 only if its functions are called (they are not, see below).
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
        echo "/* ace: lib$name's functions are defined by the shim of build/cuda_shim.rs */" \
            >"$script"
    fi
done

# The shim: trampolines for every function of cudarc's bindings of the five libraries it links,
# from the cudarc that candle-core uses (Cargo.lock also lists one for candle's optional `ug`
# feature), and for every function that the wheel's libcudart.so.13 exports (those returning a
# string per its header). libnvrtc and libcudart are loaded only when called (candle compiles
# kernels at run time only on request; ace does not use the MoE kernels, so their host code, the
# runtime's only user, is not linked); the others are checked up front when a GPU is opened.
# build.rs writes it (build/cuda_shim.rs), compiles it with the C compiler and links it.
cd "$repo"
cudarc_version=$(cargo tree --locked --features cuda -e normal --prefix depth -f '{p}' |
    awk 'match($0, /^[0-9]+/) {
        depth = substr($0, 1, RLENGTH) + 0; rest = substr($0, RLENGTH + 1)
        if (in_core && depth <= core) in_core = 0
        if (in_core && depth == core + 1 && rest ~ /^cudarc v/) { split(rest, f, " "); print f[2] }
        if (rest ~ /^candle-core v/ && rest !~ /\(\*\)$/) { in_core = 1; core = depth }
    }' | sort -u)
if [[ $(wc -w <<<"$cudarc_version") != 1 ]]; then
    echo "build-cuda: expected one cudarc under candle-core, found '$cudarc_version'" >&2
    exit 1
fi
cudarc_dir=$(cargo metadata --locked --format-version 1 --features cuda |
    grep -o "\"manifest_path\":\"[^\"]*/cudarc-${cudarc_version#v}/Cargo.toml\"" | sort -u)
if [[ $(wc -l <<<"$cudarc_dir") != 1 || -z $cudarc_dir ]]; then
    echo "build-cuda: cudarc $cudarc_version not found in cargo metadata: '$cudarc_dir'" >&2
    exit 1
fi
cudarc_dir=${cudarc_dir#\"manifest_path\":\"}
cudarc_src=${cudarc_dir%/Cargo.toml\"}/src
target=${CARGO_TARGET_DIR:-$repo/target}
shim=$target/cuda-shim
mkdir -p "$shim"
rm -f "$shim/ace-cuda-shim.c" "$shim/ace-cuda-shim.o" # written by earlier versions of this script
nm -D --defined-only "$cu/lib/libcudart.so.13" |
    awk -v strings="$(grep -oE 'const char *\* *CUDARTAPI +[A-Za-z0-9_]+' \
        "$cu/include/cuda_runtime_api.h" | awk '{print $NF}')" '
        BEGIN { n = split(strings, s, "\n"); for (i = 1; i <= n; i++) string[s[i]] = 1 }
        $2 == "T" { sub(/@.*/, "", $3); print $3 (($3 in string) ? " string" : "") }' \
    >"$shim/cudart.names.new"
# Rewritten only when it changed, so that build.rs does not run again for nothing.
if cmp -s "$shim/cudart.names.new" "$shim/cudart.names"; then
    rm "$shim/cudart.names.new"
else
    mv "$shim/cudart.names.new" "$shim/cudart.names"
fi
# SONAME:STATUS:NAMES, STATUS being what the functions return while the library is missing:
# CUDA_ERROR_STUB_LIBRARY, CUBLAS_STATUS_NOT_INITIALIZED, CURAND_STATUS_INITIALIZATION_FAILED,
# NVRTC_ERROR_INTERNAL_ERROR, cudaErrorStubLibrary.
export ACE_CUDA_SHIM_LIBS="libcuda.so.1:34:$cudarc_src/driver/sys/mod.rs;\
libcublas.so.13:1:$cudarc_src/cublas/sys/mod.rs;\
libcublasLt.so.13:1:$cudarc_src/cublaslt/sys/mod.rs;\
libcurand.so.10:203:$cudarc_src/curand/sys/mod.rs"
export ACE_CUDA_SHIM_LAZY="libnvrtc.so.13:11:$cudarc_src/nvrtc/sys/mod.rs;\
libcudart.so.13:34:$shim/cudart.names"
export ACE_CUDA_SHIM_SEARCH_DIR=$cu/lib

export CUDA_PATH=$cu CUDA_ROOT=$cu CUDA_HOME=$cu
export PATH=$cu/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
exec cargo build --locked --release --features cuda "$@"
