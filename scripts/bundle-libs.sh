#!/usr/bin/env bash
# Packs an `ace` binary with the shared libraries it loads (OpenCV 4.6 and everything below it,
# except glibc and the CUDA libraries), so that it runs on a machine without the system's OpenCV,
# e.g. a GPU machine image that only has CUDA and Python:
#
#   scripts/bundle-libs.sh target/release/ace out-dir
#   -> out-dir/ace, out-dir/lib/*.so.*     run: LD_LIBRARY_PATH=out-dir/lib:$CUDA_LIBS out-dir/ace
#
# OpenCV's imgcodecs links GDAL (GIS rasters, read only with IMREAD_LOAD_GDAL) and GDCM (DICOM),
# which ace never reads and which pull in about 100 more libraries (150 MB). Those two are
# replaced by stubs that export the functions imgcodecs imports, each aborting if ever called.
set -euo pipefail
export LC_ALL=C

bin=$1
out=$2
stubbed='^lib(gdal|gdcm[A-Za-z]*)\.so'
# Loaded from the machine that runs the binary: glibc, and CUDA (driver and toolkit libraries).
system='^(libc|libm|libdl|libpthread|librt|libresolv|ld-linux-x86-64)\.so|^lib(cuda|cudart|cublas|cublasLt|curand|nvrtc)\.so'

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

declare -A path=()
while read -r name _ where _; do
    [[ ${where:-} == /* ]] && path[$name]=$where
done < <(ldd "$bin" | grep '=>')

rm -rf "$out/lib"
mkdir -p "$out/lib"
declare -A seen=()
declare -A stubs=()
todo=("$bin")
while ((${#todo[@]})); do
    file=${todo[-1]}
    unset 'todo[-1]'
    for so in $(needed "$file"); do
        if [[ $so =~ $system || -n ${seen[$so]:-} ]]; then continue; fi
        seen[$so]=1
        [[ -n ${path[$so]:-} ]] || { echo "bundle-libs: $so (needed by $file) not found" >&2; exit 1; }
        if [[ $so =~ $stubbed ]]; then
            stubs[$so]=1
        else
            cp -L "${path[$so]}" "$out/lib/$so"
            todo+=("${path[$so]}")
        fi
    done
done

# Each stub defines what the bundled libraries import from the real library.
imports=$(for f in "$out"/lib/*; do nm -D --undefined-only "$f" | awk '{print $2}'; done |
    sed 's/@.*//' | sort -u)
for so in "${!stubs[@]}"; do
    src=$(mktemp --suffix=.c)
    echo '#include <stdlib.h>' >"$src"
    nm -D --defined-only "${path[$so]}" | awk '{print $2, $3}' | sed 's/@.*//' | sort -u -k2 |
        join -1 2 -2 1 - <(echo "$imports") | while read -r sym type; do
            [[ $type == [TW] ]] || { echo "bundle-libs: $so: $sym is not a function" >&2; exit 1; }
            echo "void $sym(void) { abort(); }"
        done >>"$src"
    cc -shared -fPIC -Wl,-soname,"$so" -o "$out/lib/$so" "$src"
    rm -f "$src"
done

cp -L "$bin" "$out/ace"
strip "$out/ace" "$out"/lib/*
echo "bundle-libs: $out/ace with $(ls "$out/lib" | wc -l) libraries ($(du -sh "$out" | cut -f1)); stubs: ${!stubs[*]}" >&2
