#!/usr/bin/env bash
# GPU check of the CUDA build of ace. Copy it with the CUDA binary (`ace`) and the bundle of its
# shared libraries (`lib.tar.xz`, from scripts/bundle-libs.sh) into one folder, e.g. .gpu/, then
# run ON the GPU machine from the repo root:
#     bash .gpu/check.sh
# (carry `.gpu`: it holds `ace`, the CUDA binary, and lib.tar.xz, the OpenCV libraries it needs).
# Runs the seven golden cases of tests/fixtures/ace-tiny/cases.json with the arguments of
# tests/generate.rs, compares latents/images/PNGs with the reference at the tests' tolerances,
# then times the tiny model (more steps, CPU vs GPU) and tries bf16.
# ACE_CHECK_DEVICE=cpu runs everything on the CPU (to test this script on a machine without GPU).
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dev=${ACE_CHECK_DEVICE:-cuda}
ace=$here/ace
step() { printf '\n== %s\n' "$*"; }

step "libraries"
lib=${TMPDIR:-/tmp}/ace-gpu-lib
rm -rf "$lib" && mkdir -p "$lib" && tar -C "$lib" -xJf "$here/lib.tar.xz" ||
    echo "check: unpacking $here/lib.tar.xz failed"
# CUDA 13 libraries: the Python venv's nvidia wheels first, then a system toolkit.
cuda_dirs=$(
    {
        python3 -c 'import nvidia; print(*nvidia.__path__, sep="\n")' 2>/dev/null
        echo /opt/torch/.venv
        echo /usr/local/cuda/lib64
    } | while read -r d; do
        [[ -d $d ]] && find -L "$d" \( -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' \
            -o -name 'libcurand.so.10' -o -name 'libnvrtc.so.13' -o -name 'libcudart.so.13' \) \
            -printf '%h\n' 2>/dev/null
    done | awk '!seen[$0]++' | paste -sd:
)
export LD_LIBRARY_PATH=$lib${cuda_dirs:+:$cuda_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd --version 2>&1 | head -1
ldd "$ace" 2>&1 | grep -E 'not found|libcuda|libcublas|libcurand|libnvrtc|libcudart|opencv_core' ||
    echo "check: ldd shows none of the expected libraries"

step "nvidia-smi -L"
nvidia-smi -L || echo "check: nvidia-smi failed (exit $?)"

step "ace --version"
"$ace" --version || echo "check: $ace does not start (exit $?)"

step "golden cases on $dev"
python3 - "$ace" "$dev" <<'PY' || echo "check: the case runner failed (exit $?)"
import json, os, subprocess, sys, tempfile, time
import numpy as np
from PIL import Image
from safetensors.numpy import load_file

ace, dev = sys.argv[1], sys.argv[2]
root = "tests/fixtures/ace-tiny"
cases = json.load(open(f"{root}/cases.json"))["cases"]
tmp = tempfile.mkdtemp()


def case_args(c):
    """The command line of one case, as tests/generate.rs builds it."""
    if not c["images"]:
        h, w = c["output_hw"]
        a = ["generate", "--height", str(h), "--width", str(w)]
    else:
        a = ["edit"]
        for i, img in enumerate(c["images"]):
            mask = c["masks"][i]
            a += ["--image", f"{root}/{img}", "--mask", f"{root}/{mask}" if mask else "none"]
            a += ["--task", c["tasks"][i] or ""]
    if c["history"]:
        path = f"{tmp}/{c['name']}-history.json"
        turns = [{"image": os.path.abspath(f"{root}/{h['image']}"), "instruction": h["prompt"]}
                 for h in c["history"]]
        json.dump(turns, open(path, "w"))
        a += ["--history", path]
    return a + [
        "--instruction", c["prompt"], "--negative", c["negative_prompt"],
        "--config", f"{root}/model/ace_tiny.yaml", "--noise", f"{root}/{c['init_noise']}",
        "--steps", str(c["steps"]), "--guide-scale", str(c["guide_scale"]),
        "--guide-rescale", str(c["guide_rescale"]),
    ]


def run(c, device, extra=(), tag=""):
    """Runs one case; returns (seconds, outputs) or (seconds, None) after printing the error."""
    out, st = f"{tmp}/{c['name']}{tag}.png", f"{tmp}/{c['name']}{tag}.safetensors"
    cmd = [ace, "--device", device, "-q", *case_args(c), *extra, "-o", out, "--save-latent", st, "--json"]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        print(f"  {c['name']}{tag}: timed out after 60 s")
        return time.perf_counter() - t, None
    secs = time.perf_counter() - t
    if p.returncode != 0:
        print(f"  {c['name']}{tag}: exit {p.returncode}: {p.stderr.strip()[-600:]}")
        return secs, None
    try:
        return secs, (json.loads(p.stdout), load_file(st), np.asarray(Image.open(out).convert("RGB")))
    except Exception as err:  # a bf16 tensor numpy cannot hold, a truncated file
        print(f"  {c['name']}{tag}: unreadable output ({err})")
        return secs, None


def errors(c, res):
    summary, got, png = res
    ref = load_file(f"{root}/expected/run_{c['name']}.safetensors")
    ref_png = np.asarray(Image.open(f"{root}/expected/run_{c['name']}.png").convert("RGB"))
    lat = np.abs(got["latent"] - ref["latent"]).max() / np.abs(ref["latent"]).max()
    d = np.abs(got["image"].astype(np.float64) - ref["image"])
    lv = np.abs(png.astype(int) - ref_png.astype(int)) if png.shape == ref_png.shape else None
    return {
        "lat": lat, "img_mean": d.mean() * 255, "img_max": d.max() * 255,
        "png_mean": lv.mean() if lv is not None else float("nan"),
        "png_max": lv.max() if lv is not None else 999,
        "prompts": summary.get("prompts") == c["prompts_seen_by_model"],
    }


print(f"{'case':10} {'secs':>6} {'latent/max':>10} {'img mean':>8} {'img max':>8} "
      f"{'png mean':>8} {'png max':>7} prompts  result")
failed = 0
for c in cases:
    secs, res = run(c, dev)
    if res is None:
        failed += 1
        print(f"{c['name']:10} {secs:6.1f}  FAIL (no output)")
        continue
    try:
        e = errors(c, res)
    except Exception as err:  # a shape mismatch, a missing tensor
        failed += 1
        print(f"{c['name']:10} {secs:6.1f}  FAIL ({err})")
        continue
    ok = (e["lat"] <= 2e-3 and e["img_mean"] <= 0.5 and e["img_max"] <= 4
          and e["png_mean"] <= 0.5 and e["png_max"] <= 4 and e["prompts"])
    failed += not ok
    print(f"{c['name']:10} {secs:6.1f} {e['lat']:10.2e} {e['img_mean']:8.3f} {e['img_max']:8.3f} "
          f"{e['png_mean']:8.3f} {e['png_max']:7d} {str(e['prompts']):7}  {'ok' if ok else 'FAIL'}")
print(f"{len(cases) - failed}/{len(cases)} cases within tolerance "
      "(latent 2e-3 of max; image mean 0.5, max 4 of 255; png mean 0.5, max 4 levels)")

print("\ntiming: t2i case (96x128, guidance on) with 3 and 200 steps, wall seconds incl. loading")
t2i = cases[0]
for device in dict.fromkeys([dev, "cpu"]):
    run(t2i, device, tag=f"-{device}-warm")
    t3, r3 = run(t2i, device, tag=f"-{device}-3")
    t200, r200 = run(dict(t2i, steps=200), device, tag=f"-{device}-200")
    if r3 is None or r200 is None:
        print(f"  {device:5} no timing (a run failed)")
        continue
    per_step = (t200 - t3) / 197 * 1000
    print(f"  {device:5} 3 steps {t3:6.2f} s, 200 steps {t200:6.2f} s -> {per_step:6.1f} ms per step")

if dev != "cpu":
    print("\nbf16 on the GPU (information only; tolerances are for f32):")
    for c in cases[:2]:
        secs, res = run(c, dev, ["--dtype", "bf16"], tag="-bf16")
        if res is None:
            continue
        try:
            e = errors(c, res)
        except Exception as err:
            print(f"  {c['name']:10} no comparison ({err})")
        else:
            print(f"  {c['name']:10} {secs:5.1f} s  latent/max {e['lat']:.2e}  "
                  f"img mean {e['img_mean']:.3f} max {e['img_max']:.3f} (of 255)")
PY
step "done"
