//! Training: a fresh run does not clobber an earlier one (item 3); a diverging run stops at
//! once and stays resumable (item 4); the loss plot has labelled axes (item 22).

use crate::common::*;
use std::path::{Path, PathBuf};

/// A dataset of gray-conversion pairs of the fixture photos (`ace data lowlevel`).
fn dataset(dir: &Path) -> PathBuf {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for p in ["astronaut", "chelsea", "coffee"] {
        std::fs::copy(input(p), photos.join(format!("{p}.png"))).unwrap();
    }
    let ds = dir.join("ds");
    code(
        ace()
            .args(["data", "lowlevel", "--ops", "gray", "--images"])
            .arg(&photos)
            .arg("-o")
            .arg(&ds),
        0,
    );
    ds
}

/// A training config of the tiny model (absolute weight paths) over `list`, with `steps`
/// steps, a checkpoint every step, and learning rate `lr`.
fn config(dir: &Path, name: &str, list: &Path, steps: u64, lr: &str) -> PathBuf {
    let tiny_model = tiny().join("model");
    let text = std::fs::read_to_string(tiny_config()).unwrap();
    let root: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut model = root["MODEL"].clone();
    for section in ["DIFFUSION_MODEL", "FIRST_STAGE_MODEL", "COND_STAGE_MODEL"] {
        let rel = model[section]["PRETRAINED_MODEL"]
            .as_str()
            .unwrap()
            .to_string();
        model[section]["PRETRAINED_MODEL"] = tiny_model.join(rel).display().to_string().into();
    }
    let rel = model["COND_STAGE_MODEL"]["TOKENIZER_PATH"]
        .as_str()
        .unwrap()
        .to_string();
    model["COND_STAGE_MODEL"]["TOKENIZER_PATH"] = tiny_model.join(rel).display().to_string().into();
    let text = format!(
        "ENV:\n  SEED: 7\nSOLVER:\n  MAX_STEPS: {steps}\n  WORK_DIR: work-{name}\n  OPTIMIZER:\n    \
         NAME: AdamW\n    LEARNING_RATE: {lr}\n  TRAIN_DATA:\n    MS_DATASET_NAME: {}\n    \
         MAX_SEQ_LEN: 16\n    BATCH_SIZE: 1\n  TRAIN_HOOKS:\n    - NAME: CheckpointHook\n      INTERVAL: 1\n",
        list.display()
    );
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    cfg["SOLVER"]["MODEL"] = model;
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    path
}

fn train(cfg: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = ace();
    cmd.arg("train").arg("--config").arg(cfg).args(extra);
    cmd
}

/// Item 3: a fresh run into a WORK_DIR holding an earlier run is refused (naming the folder,
/// --resume and --force) and leaves it as it was; --force moves the earlier run aside.
/// Item 22: the run's loss.png labels its axes.
#[test]
fn a_fresh_run_refuses_an_earlier_runs_work_dir() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let cfg = config(dir.path(), "again", &ds, 2, "1e-3");
    let work = dir.path().join("work-again");
    code(&mut train(&cfg, &[]), 0);
    let log = std::fs::read(work.join("train_log.jsonl")).unwrap();
    let checkpoints = names(&work.join("checkpoints"));
    plot_has_labels(&work.join("loss.png"));

    let run = code(&mut train(&cfg, &[]), 2);
    one_line_naming(&run, &["work-again", "--resume", "--force"]);
    assert_eq!(std::fs::read(work.join("train_log.jsonl")).unwrap(), log);
    assert_eq!(names(&work.join("checkpoints")), checkpoints);

    code(&mut train(&cfg, &["--force"]), 0);
    let aside: Vec<String> = names(&work)
        .into_iter()
        .filter(|n| n.starts_with("earlier-run-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", names(&work));
    assert_eq!(
        std::fs::read(work.join(&aside[0]).join("train_log.jsonl")).unwrap(),
        log
    );
    assert!(work.join("train_log.jsonl").is_file());
}

/// The tick values and titles of loss.png: ink below the x axis and left of the y axis, where
/// an unlabelled plot has none.
fn plot_has_labels(path: &Path) {
    let img = image::open(path).unwrap().to_luma8();
    let (w, h) = img.dimensions();
    let ink = |xs: std::ops::Range<u32>, ys: std::ops::Range<u32>| {
        xs.flat_map(|x| ys.clone().map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y)[0] < 100)
            .count()
    };
    assert!(ink(0..w, h - 36..h) > 30, "no labels under the x axis");
    assert!(ink(0..30, 0..h) > 20, "no labels left of the y axis");
}

/// Item 4: learning rate 1e30: the run stops at the first non-finite value with exit 1 naming
/// the step; the log holds only finite numbers; the newest checkpoint is finite and resumes.
#[test]
fn a_diverging_run_stops_at_once_and_stays_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let cfg = config(dir.path(), "diverge", &ds, 6, "1e30");
    let work = dir.path().join("work-diverge");
    let run = code(&mut train(&cfg, &[]), 1);
    let err = stderr(&run);
    assert!(
        err.contains("diverged at step") && err.contains("not finite"),
        "{err}"
    );

    let log = std::fs::read_to_string(work.join("train_log.jsonl")).unwrap_or_default();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() < 6, "the run went on: {log}");
    for l in &lines {
        assert!(l["loss"].as_f64().is_some_and(f64::is_finite), "{l}");
    }
    let latest = std::fs::read_to_string(work.join("checkpoints/latest")).unwrap();
    let ck = work.join("checkpoints").join(latest.trim());
    let tensors =
        candle_core::safetensors::load(ck.join("dit.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    for (name, t) in tensors {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name} is not finite");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64().unwrap() as usize, lines.len());

    // Resuming reads the log and the checkpoint, then diverges again at the same step.
    let again = code(train(&cfg, &["--resume"]).arg(&work), 1);
    let err2 = stderr(&again);
    assert!(err2.contains("diverged at step"), "{err2}");
}
