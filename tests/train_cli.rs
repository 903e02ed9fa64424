//! `ace train` through the binary on the tiny model with a tiny dataset of real photos and
//! their grayscale versions (made by `ace analyze gray`): the log and checkpoints, a run
//! stopped with --max-steps (and one interrupted with Ctrl-C) and resumed reproduces the
//! uninterrupted run exactly, LoRA training and merge-lora, and a bad config's error.

mod tiny_support;

use serde_json::Value as Json;
use serde_yaml::Value;
use std::path::{Path, PathBuf};
use tiny_support::{ace, ace_with_warnings, fixtures};

const PHOTOS: [&str; 3] = ["astronaut", "chelsea", "coffee"];

/// Photos, their grayscale versions (`ace analyze gray`) and a demo `train.csv` in `dir`, and
/// a dataset folder `ds` made by `ace data lowlevel` (gray analysis and control pairs, some
/// regional, with masks).
fn make_dataset(dir: &Path) {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for p in PHOTOS {
        std::fs::copy(
            fixtures().join(format!("inputs/{p}.png")),
            photos.join(format!("{p}.png")),
        )
        .unwrap();
    }
    ace()
        .args(["analyze", "gray"])
        .arg(&photos)
        .arg("-o")
        .arg(dir.join("gray"))
        .assert()
        .success();
    let mut csv = String::from("Source:FILE,Target:FILE,Prompt\n");
    for p in PHOTOS {
        assert!(dir.join(format!("gray/{p}.png")).is_file());
        csv.push_str(&format!(
            "photos/{p}.png,gray/{p}.png,\"Turn {{image}} into black and white, please.\"\n"
        ));
    }
    std::fs::write(dir.join("train.csv"), csv).unwrap();
    ace()
        .args([
            "data",
            "lowlevel",
            "--ops",
            "gray",
            "--regional",
            "0.5",
            "--seed",
            "1",
            "--images",
        ])
        .arg(&photos)
        .arg("--out")
        .arg(dir.join("ds"))
        .assert()
        .success();
}

/// The tiny model's MODEL section with absolute weight paths, EMA on.
fn model_section() -> Value {
    let model_dir = fixtures().join("model");
    let text = std::fs::read_to_string(model_dir.join("ace_tiny.yaml")).unwrap();
    let mut m = serde_yaml::from_str::<Value>(&text).unwrap()["MODEL"].clone();
    for (section, key) in [
        ("DIFFUSION_MODEL", "PRETRAINED_MODEL"),
        ("FIRST_STAGE_MODEL", "PRETRAINED_MODEL"),
        ("COND_STAGE_MODEL", "PRETRAINED_MODEL"),
        ("COND_STAGE_MODEL", "TOKENIZER_PATH"),
    ] {
        let rel = m[section][key].as_str().unwrap().to_string();
        m[section][key] = Value::from(model_dir.join(rel).display().to_string());
    }
    m["USE_EMA"] = Value::from(true);
    m["EMA_DECAY"] = Value::from(0.9);
    m
}

/// A training config in the official schema; `extra` is merged into SOLVER.
fn write_config(dir: &Path, name: &str, list: &str, steps: u64, extra: &str) -> PathBuf {
    let text = format!(
        "ENV:\n  SEED: 2024\nSOLVER:\n  NAME: ACESolverV1\n  MAX_STEPS: {steps}\n  ACCU_STEP: 2\n  EVAL_INTERVAL: 2\n  \
         WORK_DIR: work-{name}\n  LOG_FILE: std_log.txt\n  GRAD_CLIP: 1.0\n  OPTIMIZER:\n    NAME: AdamW\n    \
         LEARNING_RATE: 1e-3\n    EPS: 1e-10\n    WEIGHT_DECAY: 5e-4\n  TRAIN_DATA:\n    NAME: ACEDemoDataset\n    \
         MS_DATASET_NAME: {list}\n    MAX_SEQ_LEN: 16\n    BATCH_SIZE: 1\n    VAL_FRACTION: 0.34\n  TRAIN_HOOKS:\n    \
         - NAME: BackwardHook\n    - NAME: LogHook\n      LOG_INTERVAL: 1\n    - NAME: CheckpointHook\n      INTERVAL: 2\n{extra}"
    );
    let mut cfg: Value = serde_yaml::from_str(&text).unwrap();
    cfg["SOLVER"]["MODEL"] = model_section();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    path
}

/// [`write_config`] of two steps over `train.csv`, then changed by `edit`.
fn write_edited_config(dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let path = write_config(dir, name, "train.csv", 2, "");
    let mut cfg: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    path
}

fn log(work: &Path) -> Vec<Json> {
    std::fs::read_to_string(work.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (step, loss, val_loss) of each line: what must not depend on interruptions.
fn curve(work: &Path) -> Vec<(u64, f64, Option<f64>)> {
    log(work)
        .iter()
        .map(|l| {
            (
                l["step"].as_u64().unwrap(),
                l["loss"].as_f64().unwrap(),
                l["val_loss"].as_f64(),
            )
        })
        .collect()
}

#[test]
fn training_logs_checkpoints_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path());
    let full = write_config(dir.path(), "full", "train.csv", 6, "");
    let out = ace()
        .arg("train")
        .arg("--config")
        .arg(&full)
        .assert()
        .success();
    let printed = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let work_full = dir.path().join("work-full");
    assert_eq!(
        PathBuf::from(printed.trim()),
        work_full.join("checkpoints/step-000006")
    );
    let lines = log(&work_full);
    assert_eq!(lines.len(), 6);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"].as_u64(), Some(i as u64 + 1));
        assert!(l["loss"].as_f64().unwrap().is_finite());
        assert_eq!(l["lr"].as_f64(), Some(1e-3));
        assert!(l["it_per_s"].as_f64().unwrap() > 0.0);
        // EVAL_INTERVAL 2: validation at steps 2, 4, 6.
        assert_eq!(l["val_loss"].is_f64(), (i + 1) % 2 == 0, "{l}");
    }
    // Learning happens: the validation loss falls.
    let val: Vec<f64> = lines
        .iter()
        .filter_map(|l| l["val_loss"].as_f64())
        .collect();
    assert!(val[2] < val[0], "{val:?}");
    for f in [
        "dit.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        assert!(
            work_full.join("checkpoints/step-000006").join(f).is_file(),
            "{f}"
        );
    }
    assert!(work_full
        .join("checkpoints/step-000002/state.json")
        .is_file());
    assert!(work_full.join("loss.png").is_file());
    assert!(work_full.join("std_log.txt").is_file());

    // Same config, stopped after 3 steps, then resumed from the work folder.
    let split = write_config(dir.path(), "split", "train.csv", 6, "");
    ace()
        .arg("train")
        .arg("--config")
        .arg(&split)
        .args(["--max-steps", "3"])
        .assert()
        .success();
    let work_split = dir.path().join("work-split");
    assert_eq!(curve(&work_split).len(), 3);
    assert!(work_split
        .join("checkpoints/step-000003/state.json")
        .is_file());
    ace()
        .arg("train")
        .arg("--config")
        .arg(&split)
        .arg("--resume")
        .arg(&work_split)
        .assert()
        .success();
    assert_eq!(curve(&work_split), curve(&work_full));
    for f in [
        "dit.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let a = std::fs::read(work_full.join("checkpoints/step-000006").join(f)).unwrap();
        let b = std::fs::read(work_split.join("checkpoints/step-000006").join(f)).unwrap();
        assert!(a == b, "{f} differs after resuming");
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path());
    let cfg = write_config(dir.path(), "int", "train.csv", 10_000, "");
    let work = dir.path().join("work-int");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("ace"))
        .args(["--device", "cpu", "-q", "train", "--config"])
        .arg(&cfg)
        .env(
            "ACE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("ace-cache"),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !work.join("train_log.jsonl").is_file()
        || std::fs::read_to_string(work.join("train_log.jsonl"))
            .unwrap()
            .lines()
            .count()
            < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "training made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(130));
    let stopped = curve(&work);
    let k = stopped.len() as u64;
    let latest = std::fs::read_to_string(work.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), format!("step-{k:06}"));

    // Resume up to k + 2 steps, and compare with a run that went there in one go.
    let target = (k + 2).to_string();
    ace()
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .arg("--resume")
        .arg(&work)
        .args(["--max-steps", &target])
        .assert()
        .success();
    let straight = write_config(dir.path(), "straight", "train.csv", 10_000, "");
    ace()
        .arg("train")
        .arg("--config")
        .arg(&straight)
        .args(["--max-steps", &target])
        .assert()
        .success();
    assert_eq!(curve(&work), curve(&dir.path().join("work-straight")));
}

#[test]
fn lora_trains_adapters_and_merge_lora_folds_them_in() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path());
    let tuner = "  TUNER:\n    NAME: LoRA\n    R: 4\n    LORA_ALPHA: 8\n    TARGET_MODULES: [attn.q, attn.v, mlp.fc1]\n";
    let cfg = write_config(dir.path(), "lora", "ds", 4, tuner);
    ace()
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .assert()
        .success();
    let ck = dir.path().join("work-lora/checkpoints/step-000004");
    assert!(ck.join("lora.safetensors").is_file() && !ck.join("dit.safetensors").exists());
    let adapters =
        candle_core::safetensors::load(ck.join("lora.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    // Two blocks, three target layers each, A and B.
    assert_eq!(adapters.len(), 12);
    assert_eq!(adapters["blocks.1.attn.q.lora_A.weight"].dims(), [4, 64]);
    assert_eq!(adapters["blocks.0.mlp.fc1.lora_B.weight"].dims(), [256, 4]);

    let merged = dir.path().join("merged.safetensors");
    ace()
        .args(["train", "merge-lora"])
        .arg(&ck)
        .arg("-o")
        .arg(&merged)
        .assert()
        .success();
    let merged = candle_core::safetensors::load(&merged, &candle_core::Device::Cpu).unwrap();
    let base = fixtures().join("model/models/dit/ace_tiny.pth");
    let base = ace::model::checkpoint::load(&base, &candle_core::Device::Cpu).unwrap();
    assert_eq!(merged.len(), base.len());
    let diff = |name: &str| {
        let a: Vec<f32> = merged[name].flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = base[name].flatten_all().unwrap().to_vec1().unwrap();
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    };
    assert!(diff("blocks.0.attn.q.weight") > 0.0);
    assert_eq!(diff("blocks.0.cross_attn.q.weight"), 0.0);
    assert_eq!(diff("blocks.0.attn.k.weight"), 0.0);

    // The merged DiT generates with `ace edit` (as a model config's PRETRAINED_MODEL).
    let mut model: Value = serde_yaml::from_str(
        &std::fs::read_to_string(fixtures().join("model/ace_tiny.yaml")).unwrap(),
    )
    .unwrap();
    model["MODEL"] = model_section();
    model["MODEL"]["DIFFUSION_MODEL"]["PRETRAINED_MODEL"] =
        Value::from(dir.path().join("merged.safetensors").display().to_string());
    let model_cfg = dir.path().join("merged.yaml");
    std::fs::write(&model_cfg, serde_yaml::to_string(&model).unwrap()).unwrap();
    let out = dir.path().join("edited.png");
    ace()
        .arg("edit")
        .arg("--config")
        .arg(&model_cfg)
        .arg("--image")
        .arg(dir.path().join("photos/coffee.png"))
        .args([
            "--instruction",
            "Make {image} grayscale.",
            "--steps",
            "2",
            "-o",
        ])
        .arg(&out)
        .assert()
        .success();
    assert!(out.is_file());

    // The same adapters applied at run time (`--lora`), to the base DiT: the same image
    // within 1/255 (the merge is the same sum; measured: identical).
    model["MODEL"]["DIFFUSION_MODEL"]["PRETRAINED_MODEL"] = Value::from(
        fixtures()
            .join("model/models/dit/ace_tiny.pth")
            .display()
            .to_string(),
    );
    let base_cfg = dir.path().join("base.yaml");
    std::fs::write(&base_cfg, serde_yaml::to_string(&model).unwrap()).unwrap();
    let edit = |cfg: &Path, extra: &[&std::ffi::OsStr], out: &Path| {
        ace()
            .arg("edit")
            .arg("--config")
            .arg(cfg)
            .arg("--image")
            .arg(dir.path().join("photos/coffee.png"))
            .args(["--instruction", "Make {image} grayscale.", "--steps", "2"])
            .args(extra)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap()
    };
    let via_lora = dir.path().join("via-lora.png");
    let done = edit(&base_cfg, &["--lora".as_ref(), ck.as_os_str()], &via_lora);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let (a, b) = (
        image::open(&out).unwrap().to_rgb8(),
        image::open(&via_lora).unwrap().to_rgb8(),
    );
    let mean = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64;
    assert!(mean <= 1.0, "--lora vs merged: {mean} levels");
    let plain = dir.path().join("plain.png");
    assert!(edit(&base_cfg, &[], &plain).status.success());
    assert_ne!(
        image::open(&plain).unwrap().to_rgb8(),
        b,
        "the adapters change the image"
    );
    // Adapters for modules the DiT does not have are refused, naming them.
    let mut bad = adapters.clone();
    let a0 = bad["blocks.0.attn.q.lora_A.weight"].clone();
    let b0 = bad["blocks.0.attn.q.lora_B.weight"].clone();
    bad.insert("blocks.7.attn.q.lora_A.weight".into(), a0);
    bad.insert("blocks.7.attn.q.lora_B.weight".into(), b0);
    let bad_file = dir.path().join("bad-lora.safetensors");
    candle_core::safetensors::save(&bad, &bad_file).unwrap();
    let refused = edit(
        &base_cfg,
        &["--lora".as_ref(), bad_file.as_os_str()],
        &plain,
    );
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("blocks.7.attn.q") && err.contains("bad-lora.safetensors"),
        "{err}"
    );

    // A full (non-LoRA) checkpoint is refused by merge-lora.
    let plain = write_config(dir.path(), "plain", "ds", 1, "");
    ace()
        .arg("train")
        .arg("--config")
        .arg(&plain)
        .assert()
        .success();
    ace()
        .args(["train", "merge-lora"])
        .arg(dir.path().join("work-plain"))
        .arg("-o")
        .arg(dir.path().join("x.safetensors"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("not a LoRA checkpoint"));
    assert!(!dir.path().join("x.safetensors").exists());
}

#[test]
fn bad_config_is_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "SOLVER:\n  MAX_STEPS: 0\n").unwrap();
    let out = ace()
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .assert()
        .code(2);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
    ace().arg("train").assert().code(2);
}

#[test]
fn stages_run_in_turn_and_the_encoding_cache_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path());
    let staged = |name: &str, cache: bool| {
        let path = write_edited_config(dir.path(), name, |cfg| {
            if cache {
                cfg["SOLVER"]["TRAIN_DATA"]["CACHE_DIR"] = Value::from("cache");
            }
            cfg["STAGES"] = serde_yaml::from_str(
                "- MAX_STEPS: 2\n- MAX_STEPS: 2\n  ACCU_STEP: 1\n  OPTIMIZER:\n    LEARNING_RATE: 5e-4\n",
            )
            .unwrap();
        });
        ace()
            .arg("train")
            .arg("--config")
            .arg(&path)
            .assert()
            .success();
        curve(&dir.path().join(format!("work-{name}")))
    };
    let plain = staged("plain", false);
    let lrs: Vec<f64> = log(&dir.path().join("work-plain"))
        .iter()
        .map(|l| l["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs, [1e-3, 1e-3, 5e-4, 5e-4]);
    // Validation at the end of each stage and at EVAL_INTERVAL.
    assert!(plain
        .iter()
        .all(|(step, _, val)| val.is_some() == (step % 2 == 0)));

    let cold = staged("cold", true);
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 3, "one entry per example");
    let warm = staged("warm", true);
    assert_eq!(plain, cold);
    assert_eq!(plain, warm);
}

/// `USE_AMP: True`: bf16 products where the CPU has bf16 instructions (losses near the f32
/// run's, not equal to them); where it has not (oneDNN told to see AVX2 only), one warning
/// and the f32 run's losses exactly.
#[test]
fn use_amp_trains_in_bf16_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path());
    let losses = |name: &str, extra: &str, isa: Option<&str>| {
        let cfg = write_config(dir.path(), name, "train.csv", 2, extra);
        let mut cmd = ace_with_warnings();
        if let Some(isa) = isa {
            cmd.env("ONEDNN_MAX_CPU_ISA", isa);
        }
        let out = cmd
            .arg("train")
            .arg("--config")
            .arg(&cfg)
            .assert()
            .success();
        let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        let losses: Vec<f64> = log(&dir.path().join(format!("work-{name}")))
            .iter()
            .map(|l| l["loss"].as_f64().unwrap())
            .collect();
        (losses, err)
    };
    let (plain, _) = losses("f32", "", None);
    let (amp, err) = losses("amp", "  USE_AMP: True\n", None);
    if ace::kernels::cpu_bf16_support().is_ok() {
        assert!(!err.contains("USE_AMP"), "{err}");
        assert_ne!(amp, plain);
        for (a, p) in amp.iter().zip(&plain) {
            assert!(((a - p) / p).abs() < 1e-2, "{amp:?} vs {plain:?}");
        }
    } else {
        assert_eq!(amp, plain);
    }
    let (fallback, err) = losses("avx2", "  USE_AMP: True\n", Some("AVX2"));
    assert!(err.contains("USE_AMP") && err.contains("float32"), "{err}");
    assert_eq!(fallback, plain);
}

/// `USE_GRAD_CHECKPOINT: True` (each DiT block but the last run again in the backward pass
/// instead of keeping its activations) trains the very same weights as keeping them.
#[test]
fn grad_checkpointing_trains_the_same_weights_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path());
    let train = |name: &str, checkpoint: bool| {
        let path = write_edited_config(dir.path(), name, |cfg| {
            cfg["SOLVER"]["MODEL"]["DIFFUSION_MODEL"]["USE_GRAD_CHECKPOINT"] =
                Value::from(checkpoint);
        });
        ace()
            .arg("train")
            .arg("--config")
            .arg(&path)
            .assert()
            .success();
        let work = dir.path().join(format!("work-{name}"));
        let weights = std::fs::read(work.join("checkpoints/step-000002/dit.safetensors")).unwrap();
        (curve(&work), weights)
    };
    let (kept, kept_weights) = train("kept", false);
    let (recomputed, recomputed_weights) = train("recomputed", true);
    assert_eq!(recomputed, kept);
    assert!(
        recomputed_weights == kept_weights,
        "the checkpointed run's weights differ"
    );
}
