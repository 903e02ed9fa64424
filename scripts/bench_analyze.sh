#!/usr/bin/env bash
# Throughput of `ace analyze canny|gray|mosaic` against an OpenCV-Python loop doing the same
# (read, operation, write PNG) on 100 photographs of 512x512 px made from samples/*.png.
# A benchmark, not a test: it prints both times and the ratio (goal: ace at least 2x faster).
#
# usage: scripts/bench_analyze.sh        (after `cargo build --release`)
#   ACE=path/to/ace  PYTHON=python-with-cv2  N=100  override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
ACE=${ACE:-${CARGO_TARGET_DIR:-target}/release/ace}
PYTHON=${PYTHON:-python3}
N=${N:-100}
[ -x "$ACE" ] || { echo "bench: $ACE not found (cargo build --release, or set ACE)" >&2; exit 2; }
"$PYTHON" -c 'import cv2' 2>/dev/null || { echo "bench: $PYTHON has no cv2 (set PYTHON)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" - "$work/in" "$N" <<'PY'
import glob, os, sys
import cv2
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out)
photos = [cv2.imread(p, cv2.IMREAD_COLOR) for p in sorted(glob.glob("samples/*.png"))]
for i in range(n):
    img = photos[i % len(photos)]
    h, w = img.shape[:2]
    # A different square crop each time (side 60-100% of the short side), resized to 512.
    side = int(min(h, w) * (0.6 + 0.4 * ((i * 37) % 100) / 100))
    y, x = (i * 53) % (h - side + 1), (i * 71) % (w - side + 1)
    crop = cv2.resize(img[y:y + side, x:x + side], (512, 512), interpolation=cv2.INTER_AREA)
    cv2.imwrite(os.path.join(out, f"photo{i:03d}.png"), crop)
PY

cat > "$work/loop.py" <<'PY'
import glob, os, sys, time
import cv2
op, src, dst = sys.argv[1:4]
os.makedirs(dst, exist_ok=True)
start = time.perf_counter()
for path in sorted(glob.glob(os.path.join(src, "*.png"))):
    rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if op == "canny":
        out = cv2.Canny(rgb, 100, 200)
    elif op == "gray":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC)
        out = cv2.cvtColor(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST), cv2.COLOR_RGB2BGR)
    if out.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    cv2.imwrite(os.path.join(dst, os.path.basename(path)), out)
print(f"{time.perf_counter() - start:.3f}")
PY

now() { date +%s.%N; }
printf "%-7s %10s %10s %7s   (%s photos, 512x512, %s cores)\n" op ace_s opencv_s ratio "$N" "$(nproc)"
for op in canny gray mosaic; do
    t0=$(now)
    "$ACE" --quiet analyze "$op" "$work/in" -o "$work/ace-$op"
    t_ace=$(echo "$(now) - $t0" | bc -l)
    t_py=$("$PYTHON" "$work/loop.py" "$op" "$work/in" "$work/py-$op")
    printf "%-7s %10.3f %10.3f %6.2fx\n" "$op" "$t_ace" "$t_py" "$(echo "$t_py / $t_ace" | bc -l)"
done
