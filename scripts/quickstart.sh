#!/usr/bin/env bash
# Quick start on a fresh Debian machine: installs what the build needs (system OpenCV, clang,
# OpenBLAS, oneDNN), builds the release binary, and runs the low-level analysis ops on the bundled
# sample photos.
# Results land in out/<op>/; a JSON line per output is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-system.sh
cargo build --release --locked
ace=target/release/ace
for op in canny gray mosaic; do
  "$ace" analyze "$op" samples/*.png -o "out/$op" --json
done
echo "quickstart: outputs in $(pwd)/out/" >&2
