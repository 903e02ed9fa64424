#!/usr/bin/env bash
# Installs what building ace needs from Debian's packages when it is missing: system OpenCV
# (4.6 on Debian 12), clang/libclang for the opencv crate's binding generator and OpenBLAS for
# the CPU matrix products (the default `openblas` feature), oneDNN for the bf16 products on the
# CPU (the default `onednn` feature).
# chromium (headless) checks the HTML report of `ace eval` and the chat page of `ace serve` in the tests.
set -euo pipefail
need=()
for pkg in libopencv-dev clang libclang-dev pkg-config libopenblas-dev libdnnl-dev chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
