//! The prompt-embedding cache through the real binary on the tiny model: a warm run opens no
//! T5 and gives the same image as a cold one; corrupt, truncated and swapped entries and
//! changed weights never change a result; an unusable cache folder is a warning; `ace cache`
//! shows and empties it.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ace-tiny")
}

/// A copy of the tiny model that a test may change (its config, weights and tokenizer).
fn model_copy(dir: &Path) -> PathBuf {
    let src = fixtures().join("model");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    for rel in [
        "ace_tiny.yaml",
        "models/dit/ace_tiny.pth",
        "models/vae/vae.bin",
        "models/text_encoder/t5-tiny/config.json",
        "models/text_encoder/t5-tiny/model.safetensors",
        "models/tokenizer/t5-tiny/spiece.model",
        "models/tokenizer/t5-tiny/tokenizer.json",
        "models/tokenizer/t5-tiny/tokenizer_config.json",
    ] {
        copy(&src.join(rel), &dir.join(rel));
    }
    dir.join("ace_tiny.yaml")
}

/// `ace edit` of the astronaut on the tiny model with `cache` as ACE_CACHE_DIR; returns the
/// JSON summary, the image's pixels and stderr.
fn edit(
    config: &Path,
    cache: &Path,
    out: &Path,
    extra: &[&str],
) -> (serde_json::Value, Vec<u8>, String) {
    let output = Command::cargo_bin("ace")
        .unwrap()
        .env("ACE_CACHE_DIR", cache)
        .args([
            "--device", "cpu", "edit", "--steps", "2", "--seed", "5", "--json",
        ])
        .args(["--instruction", "make {image} look like a watercolor"])
        .arg("--image")
        .arg(fixtures().join("inputs/astronaut.png"))
        .arg("--config")
        .arg(config)
        .args(extra)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{stderr}");
    let summary = serde_json::from_slice(&output.stdout).unwrap();
    // The pixels: the PNG's record says how the run was asked for, which differs by run.
    let pixels = image::open(out).unwrap().to_rgb8().into_raw();
    (summary, pixels, stderr)
}

fn encoded(summary: &serde_json::Value) -> (u64, u64, u64) {
    let t = &summary["text_encoder"];
    let n = |k: &str| t[k].as_u64().unwrap();
    (n("cached"), n("encoded"), n("encoder_passes"))
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache.join("prompts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_warm_run_reads_no_t5_weights_and_gives_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let config = model_copy(&dir.path().join("model"));
    let cache = dir.path().join("cache");
    let (cold, cold_png, _) = edit(&config, &cache, &dir.path().join("cold.png"), &[]);
    let (_, encoded_cold, passes) = encoded(&cold);
    assert!(encoded_cold > 0 && passes == 1, "{cold}");
    let (uncached, uncached_png, _) = edit(
        &config,
        &cache,
        &dir.path().join("uncached.png"),
        &["--no-prompt-cache"],
    );
    assert_eq!(encoded(&uncached).1, encoded_cold);
    assert_eq!(uncached_png, cold_png);

    // Garbage in place of the T5 weights, with the file's size, inode and time unchanged:
    // a run that read them would fail or give another image.
    let weights = config
        .parent()
        .unwrap()
        .join("models/text_encoder/t5-tiny/model.safetensors");
    let modified = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let len = std::fs::metadata(&weights).unwrap().len() as usize;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&weights)
            .unwrap();
        f.write_all(&vec![0xA5u8; len]).unwrap();
        f.set_modified(modified).unwrap();
    }
    let (warm, warm_png, _) = edit(&config, &cache, &dir.path().join("warm.png"), &[]);
    assert_eq!(encoded(&warm), (encoded_cold, 0, 0), "{warm}");
    assert_eq!(warm_png, cold_png);
    // Without the cache the garbage is read, and refused.
    let out = Command::cargo_bin("ace")
        .unwrap()
        .env("ACE_CACHE_DIR", &cache)
        .args([
            "--device", "cpu", "-q", "generate", "--steps", "1", "--seed", "1",
        ])
        .args(["--instruction", "a new prompt", "--config"])
        .arg(&config)
        .arg("-o")
        .arg(dir.path().join("never.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.safetensors"));
}

#[test]
fn bad_entries_and_changed_weights_never_change_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let config = model_copy(&dir.path().join("model"));
    let cache = dir.path().join("cache");
    let (_, reference, _) = edit(
        &config,
        &cache,
        &dir.path().join("a.png"),
        &["--no-prompt-cache"],
    );
    let (_, first, _) = edit(&config, &cache, &dir.path().join("b.png"), &[]);
    assert_eq!(first, reference);
    let files = entries(&cache);
    assert!(files.len() >= 3, "{files:?}");
    // One truncated, one with a flipped value, two swapped, one replaced by garbage.
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    std::fs::write(&files[0], &bytes[0][..bytes[0].len() / 2]).unwrap();
    let mut flipped = bytes[1].clone();
    let n = flipped.len();
    flipped[n - 5] ^= 0x08;
    std::fs::write(&files[1], flipped).unwrap();
    std::fs::write(&files[2], &bytes[3 % files.len()]).unwrap();
    std::fs::write(&files[3 % files.len()], &bytes[2]).unwrap();
    if let Some(last) = files.get(4) {
        std::fs::write(last, b"garbage").unwrap();
    }
    let (summary, again, _) = edit(&config, &cache, &dir.path().join("c.png"), &[]);
    assert!(
        encoded(&summary).1 >= 3,
        "bad entries are encoded anew: {summary}"
    );
    assert_eq!(again, reference);
    let (summary, third, _) = edit(&config, &cache, &dir.path().join("d.png"), &[]);
    assert_eq!(
        encoded(&summary).1,
        0,
        "rewritten entries are sound: {summary}"
    );
    assert_eq!(third, reference);

    // New T5 weights (another file): a new encoder identity, nothing stale served.
    let weights = config
        .parent()
        .unwrap()
        .join("models/text_encoder/t5-tiny/model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let w = tensors.get_mut("encoder.final_layer_norm.weight").unwrap();
    *w = (&*w * 3.0).unwrap();
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let (summary, changed, _) = edit(&config, &cache, &dir.path().join("e.png"), &[]);
    assert_eq!(encoded(&summary).0, 0, "{summary}");
    let (_, changed_reference, _) = edit(
        &config,
        &cache,
        &dir.path().join("f.png"),
        &["--no-prompt-cache"],
    );
    assert_eq!(changed, changed_reference);
    assert_ne!(changed, reference);
}

#[test]
fn an_unusable_cache_folder_is_a_warning_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_folder = dir.path().join("file");
    std::fs::write(&not_a_folder, b"x").unwrap();
    let config = fixtures().join("model/ace_tiny.yaml");
    let (summary, png, stderr) = edit(&config, &not_a_folder, &dir.path().join("a.png"), &[]);
    assert!(encoded(&summary).1 > 0);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("prompt cache"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("file"), "{stderr}");
    let (_, reference, _) = edit(
        &config,
        &dir.path().join("cache"),
        &dir.path().join("b.png"),
        &["--no-prompt-cache"],
    );
    assert_eq!(png, reference);
}

#[test]
fn cache_info_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    edit(
        &fixtures().join("model/ace_tiny.yaml"),
        &cache,
        &dir.path().join("a.png"),
        &[],
    );
    let info = |cache: &Path| -> serde_json::Value {
        let out = Command::cargo_bin("ace")
            .unwrap()
            .env("ACE_CACHE_DIR", cache)
            .args(["cache", "info", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let part = |v: &serde_json::Value, name: &str| -> u64 {
        v["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["files"]
            .as_u64()
            .unwrap()
    };
    let before = info(&cache);
    assert_eq!(before["folder"], serde_json::json!(cache));
    assert_eq!(part(&before, "prompts"), entries(&cache).len() as u64);
    assert!(part(&before, "identity") >= 1);
    Command::cargo_bin("ace")
        .unwrap()
        .env("ACE_CACHE_DIR", &cache)
        .args(["-q", "cache", "clear"])
        .assert()
        .success();
    let after = info(&cache);
    assert_eq!(part(&after, "prompts"), 0);
    assert_eq!(part(&after, "identity"), 0);
}
