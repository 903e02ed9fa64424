#!/usr/bin/env bash
# Full-size timing of the CUDA build on random weights (the CUDA `ace` and `lib.tar.xz` beside this
# script, as for check.sh; needs torch, safetensors and PIL there): a snapshot in the official layout is
# made with torch (DiT 0.6B, ldm VAE, a ONE-layer T5 with the XXL width, the tiny tokenizer),
# then 512px text-to-image, 512px edit and 1024px edit run guided with 1 and 21 steps.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lib=/tmp/ace-gpu-lib; mkdir -p $lib; tar -C $lib -xJf $here/lib.tar.xz
export LD_LIBRARY_PATH=$lib:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/nvidia/lib64
python3 - <<'PY'
import json, os, shutil, torch
from safetensors.torch import save_file
keys = json.load(open("tests/fixtures/full-size-keys.json"))["tensors"]
g = torch.Generator().manual_seed(0)
def rand(shape):
    t = torch.randn(*shape, generator=g) * 0.02
    return t
for name, dit in [("512", "ace_0.6b_512px"), ("1024", "ace_0.6b_1024px")]:
    root = f"/tmp/full{name}/models"
    os.makedirs(f"{root}/dit", exist_ok=True); os.makedirs(f"{root}/vae", exist_ok=True)
    os.makedirs(f"{root}/text_encoder/t5-v1_1-xxl", exist_ok=True)
    if name == "512":
        sd = {k: rand(s) for k, s in keys[f"dit/{dit}"].items()}
        torch.save(sd, f"{root}/dit/{dit}.pth")
        torch.save({k: rand(s) for k, s in keys["vae/ldm"].items()}, f"{root}/vae/vae.bin")
        t5 = {k: rand(s) for k, s in keys["text_encoder/t5-v1_1-xxl"].items()
              if "block." not in k or "block.0." in k}
        t5["encoder.embed_tokens.weight"] = t5["shared.weight"]
        save_file({k: v.contiguous() for k, v in t5.items() if k != "encoder.embed_tokens.weight"},
                  f"{root}/text_encoder/t5-v1_1-xxl/model.safetensors")
        cfg = json.load(open("tests/fixtures/ace-tiny/model/models/text_encoder/t5-tiny/config.json"))
        cfg.update({"d_ff": 10240, "d_kv": 64, "d_model": 4096, "num_heads": 64, "num_layers": 1,
                    "num_decoder_layers": 1, "vocab_size": 32128})
        json.dump(cfg, open(f"{root}/text_encoder/t5-v1_1-xxl/config.json", "w"))
    else:
        for sub, f in [("dit", "ace_0.6b_512px.pth"), ("vae", "vae.bin")]:
            dst = f"{root}/{sub}/" + (f"{dit}.pth" if sub == "dit" else f)
            if not os.path.exists(dst): os.symlink(f"/tmp/full512/models/{sub}/{f}", dst)
        for f in ["model.safetensors", "config.json"]:
            dst = f"{root}/text_encoder/t5-v1_1-xxl/{f}"
            if not os.path.exists(dst): os.symlink(f"/tmp/full512/models/text_encoder/t5-v1_1-xxl/{f}", dst)
    shutil.copytree("tests/fixtures/ace-tiny/model/models/tokenizer/t5-tiny",
                    f"{root}/tokenizer/t5-v1_1-xxl", dirs_exist_ok=True)
from PIL import Image
Image.open("samples/astronaut.png").convert("RGB").resize((1024, 1024), Image.BICUBIC).save("/tmp/astronaut1024.png")
print("snapshot ready")
PY
( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done ) > /tmp/mem.log 2>/dev/null &
mon=$!
python3 - "$here/ace" <<'PY'
import subprocess, sys, time
ace = sys.argv[1]
runs = [
    ("512px t2i (1x1024 tokens)", ["generate", "--preset", "ace_0.6b_512", "--model-dir", "/tmp/full512", "--width", "512", "--height", "512"]),
    ("512px edit (2x1024 tokens)", ["edit", "--preset", "ace_0.6b_512", "--model-dir", "/tmp/full512", "--image", "samples/astronaut.png"]),
    ("1024px edit (2x4096 tokens)", ["edit", "--preset", "ace_0.6b_1024", "--model-dir", "/tmp/full1024", "--image", "/tmp/astronaut1024.png"]),
]
for dtype in ["f32", "bf16"]:
    for name, args in runs:
        times = {}
        for steps in (1, 21):
            cmd = [ace, "--device", "cuda", "-q", *args, "--instruction", "make {image} a watercolor painting" if "edit" in args else "a fox in the snow",
                   "--steps", str(steps), "--seed", "1", "--dtype", dtype, "-o", f"/tmp/out-{steps}.png"]
            t = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            times[steps] = time.perf_counter() - t
            if p.returncode:
                print(f"{dtype} {name}: steps {steps} failed: {p.stderr.strip()[-400:]}"); break
        else:
            per = (times[21] - times[1]) / 20
            print(f"{dtype:4} {name:28} 1 step {times[1]:6.2f} s (load+T5+VAE+1 step), 21 steps {times[21]:6.2f} s"
                  f" -> {per*1000:7.1f} ms per guided step (2 forwards), 20 steps {20*per:6.2f} s", flush=True)
PY
kill $mon
echo "peak GPU memory used: $(sort -n /tmp/mem.log | tail -1) MiB"
