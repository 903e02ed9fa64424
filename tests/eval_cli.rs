//! `ace eval` end to end: the eval-tiny metric values through the real binary (manifest in,
//! JSON out), missing files reported and left out of the means, CSV, and the HTML report as a
//! real headless browser renders it.

use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval-tiny")
        .join(p)
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap()
}

/// A folder with the fixture images under data/ and a manifest with relative paths; `extra`
/// lines are appended to the manifest.
fn workspace(extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    for e in std::fs::read_dir(fixture("data")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join("data").join(p.file_name().unwrap())).unwrap();
    }
    let mut lines: Vec<String> = cases()["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    lines.extend(extra.iter().map(|s| s.to_string()));
    let manifest = dir.path().join("manifest.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    (dir, manifest)
}

fn ace_eval(manifest: &Path) -> Command {
    let mut cmd = Command::cargo_bin("ace").unwrap();
    cmd.args(["eval", "--manifest"])
        .arg(manifest)
        .arg("--clip-model")
        .arg(fixture("clip-tiny"))
        .arg("--dino-model")
        .arg(fixture("dino-tiny"))
        .args(["--device", "cpu"]);
    cmd
}

#[test]
fn reproduces_the_eval_tiny_values() {
    let (_dir, manifest) = workspace(&[]);
    let out = ace_eval(&manifest).arg("--json").assert().success();
    let doc: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let cases = cases();
    let want = cases["metrics"].as_array().unwrap();
    let samples = doc["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    let keys = [
        ("l1", "l1"),
        ("l2", "l2"),
        ("clip_i", "clip_i"),
        ("clip_t", "clip_t"),
        ("clip_dir", "clip_dir"),
        ("clip_img", "clip_img_vs_input"),
        ("dino", "dino"),
    ];
    let mut worst: f64 = 0.0;
    for (got, want) in samples.iter().zip(want) {
        assert_eq!(got["index"], want["i"]);
        for (k, w) in keys {
            let d = (got[k].as_f64().unwrap() - want[w].as_f64().unwrap()).abs();
            worst = worst.max(d);
            assert!(d < 1e-4, "sample {} {k}: off by {d}", want["i"]);
        }
        for k in ["psnr", "ssim"] {
            assert!(got[k].as_f64().is_some(), "{k} missing");
        }
        assert_eq!(got["sentence_acc"], Value::Null);
    }
    for (k, _) in keys {
        let mean: f64 = samples.iter().map(|s| s[k].as_f64().unwrap()).sum::<f64>() / 3.0;
        assert!(
            (doc["mean"][k].as_f64().unwrap() - mean).abs() < 1e-12,
            "mean {k}"
        );
    }
    eprintln!("largest difference from cases.json: {worst:e}");
}

#[test]
fn missing_files_are_reported_and_left_out_of_the_means() {
    let (_dir, manifest) = workspace(&[
        r#"{"generated": "data/nope.png", "ground_truth": "data/0_gt.png", "output_caption": "a cat"}"#,
    ]);
    let out = ace_eval(&manifest).arg("--json").assert().code(1);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains("sample 3") && stderr.contains("nope.png"),
        "{stderr}"
    );
    let doc: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let bad = &doc["samples"][3];
    assert_eq!(bad["l1"], Value::Null);
    assert_eq!(bad["clip_t"], Value::Null);
    assert!(bad["errors"][0].as_str().unwrap().contains("no such file"));
    let l1: f64 = (0..3)
        .map(|i| doc["samples"][i]["l1"].as_f64().unwrap())
        .sum::<f64>()
        / 3.0;
    assert!((doc["mean"]["l1"].as_f64().unwrap() - l1).abs() < 1e-12);
}

#[test]
fn csv_and_table_list_samples_and_means() {
    let (_dir, manifest) = workspace(&[]);
    let out = ace_eval(&manifest).arg("--csv").assert().success();
    let csv = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("index,generated,task,turn,l1,l2,psnr,ssim,clip_i"));
    assert_eq!(lines.len(), 1 + 3 + 1);
    assert!(lines[4].starts_with("mean,"));
    let out = ace_eval(&manifest).assert().success();
    let table = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        table.contains("clip_dir") && table.contains("3 samples, 0 with errors"),
        "{table}"
    );
}

#[test]
fn bad_manifest_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.jsonl");
    std::fs::write(&m, "{oops\n").unwrap();
    let out = Command::cargo_bin("ace")
        .unwrap()
        .args(["eval", "--manifest"])
        .arg(&m)
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains("m.jsonl") && stderr.contains("line 1"),
        "{stderr}"
    );
    assert!(out.get_output().stdout.is_empty());
}

/// The report opened in headless Chromium: after its scripts ran, the DOM holds every sample
/// row (worst CLIP-I first), their numbers, the thumbnails and the histograms.
#[test]
fn report_renders_in_a_headless_browser() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        })
    else {
        eprintln!("SKIPPED report_renders_in_a_headless_browser: no chromium on PATH (scripts/setup-system.sh installs it)");
        return;
    };
    let (dir, manifest) = workspace(&[]);
    let report = dir.path().join("report");
    let out = ace_eval(&manifest)
        .arg("--json")
        .arg("--report")
        .arg(&report)
        .assert()
        .success();
    let doc: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let page = report.join("report.html");
    let dom = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.contains("data-ready=\"yes\""),
        "the report's script did not run"
    );
    // Rows worst CLIP-I first.
    let mut order: Vec<(f64, u64)> = doc["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["clip_i"].as_f64().unwrap(), s["index"].as_u64().unwrap()))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos: Vec<usize> = order
        .iter()
        .map(|(_, i)| {
            dom.find(&format!("data-index=\"{i}\""))
                .expect("sample row")
        })
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "not worst first");
    for s in doc["samples"].as_array().unwrap() {
        for k in ["clip_i", "dino", "l1"] {
            let shown = format!("{:.4}", s[k].as_f64().unwrap());
            assert!(dom.contains(&shown), "{k} {shown} not in the DOM");
        }
    }
    assert_eq!(dom.matches("data:image/jpeg;base64,").count(), 9);
    assert!(dom.matches("alt=\"histogram of").count() >= 7);
    assert!(dom.contains("cat in the snow") || dom.contains("an oil painting"));
}

fn dnn_fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval-dnn")
        .join(p)
}

/// Faces and text through the tiny ONNX fixtures: an unchanged face scores 1 and counts as
/// effective; the recogniser reads "aab" off the stripes; recognised text in the manifest is
/// used as is.
#[test]
fn face_and_text_scores_through_opencv_dnn() {
    let dir = tempfile::tempdir().unwrap();
    let shades = [255u8, 255, 128, 255, 0];
    let stripes = image::RgbImage::from_fn(100, 32, |x, _| {
        let v = shades[(x / 20) as usize];
        image::Rgb([v, v, v])
    });
    stripes.save(dir.path().join("stripes.png")).unwrap();
    let manifest = dir.path().join("m.jsonl");
    std::fs::write(
        &manifest,
        concat!(
            r#"{"input": "stripes.png", "generated": "stripes.png", "text": "aab", "task": "text"}"#,
            "\n",
            r#"{"generated": "stripes.png", "text": "sitting", "recognized_text": "kitten"}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = Command::cargo_bin("ace")
        .unwrap()
        .args(["eval", "--json", "--manifest"])
        .arg(&manifest)
        .arg("--face-detector")
        .arg(dnn_fixture("face_detector.onnx"))
        .arg("--face-model")
        .arg(dnn_fixture("face_embedder.onnx"))
        .arg("--ocr-model")
        .arg(dnn_fixture("recognizer.onnx"))
        .arg("--ocr-charset")
        .arg(dnn_fixture("charset.txt"))
        .assert()
        .success();
    let doc: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let s = &doc["samples"];
    assert!((s[0]["face_sim"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert_eq!(s[0]["face_effective"].as_f64(), Some(1.0));
    assert_eq!(s[0]["sentence_acc"].as_f64(), Some(1.0));
    assert_eq!(s[0]["ned"].as_f64(), Some(1.0));
    assert_eq!(s[1]["face_sim"], Value::Null);
    assert_eq!(s[1]["sentence_acc"].as_f64(), Some(0.0));
    assert!((s[1]["ned"].as_f64().unwrap() - (1.0 - 3.0 / 7.0)).abs() < 1e-12);
    assert!((doc["mean"]["ned"].as_f64().unwrap() - (2.0 - 3.0 / 7.0) / 2.0).abs() < 1e-12);
    assert_eq!(
        doc["mean_by_task"]["text"]["sentence_acc"].as_f64(),
        Some(1.0)
    );
}

/// Folder pairing by stem gives the same pixel scores as the manifest.
#[test]
fn folders_are_paired_by_stem() {
    let dir = tempfile::tempdir().unwrap();
    let (g, r) = (dir.path().join("gen"), dir.path().join("ref"));
    std::fs::create_dir_all(&g).unwrap();
    std::fs::create_dir_all(&r).unwrap();
    for i in 0..3 {
        std::fs::copy(
            fixture(&format!("data/{i}_gen.png")),
            g.join(format!("{i}.png")),
        )
        .unwrap();
        std::fs::copy(
            fixture(&format!("data/{i}_gt.png")),
            r.join(format!("{i}.png")),
        )
        .unwrap();
    }
    let out = Command::cargo_bin("ace")
        .unwrap()
        .args(["eval", "--json", "--generated"])
        .arg(&g)
        .arg("--reference")
        .arg(&r)
        .assert()
        .success();
    let doc: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let cases = cases();
    for i in 0..3 {
        let d =
            doc["samples"][i]["l1"].as_f64().unwrap() - cases["metrics"][i]["l1"].as_f64().unwrap();
        assert!(d.abs() < 1e-4, "sample {i}: {d}");
        assert_eq!(doc["samples"][i]["clip_i"], Value::Null);
    }
}

/// The Emu Edit test set read from its parquet layout: rows paired with `<idx>.png` edits,
/// inputs extracted to the cache and standing as the ground truth, per-task means; a row
/// without its edit is reported missing (exit 1), not left out.
#[test]
fn emu_edit_parquet_rows_pair_with_edits_by_idx() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("edits");
    std::fs::create_dir_all(&generated).unwrap();
    for i in [0, 2] {
        std::fs::copy(
            fixture(&format!("data/{i}_gen.png")),
            generated.join(format!("{i}.png")),
        )
        .unwrap();
    }
    let cache = dir.path().join("cache");
    let out = Command::cargo_bin("ace")
        .unwrap()
        .env("ACE_CACHE_DIR", &cache)
        .args(["eval", "--json", "--generated"])
        .arg(&generated)
        .arg("--emu-edit")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/emu-edit"))
        .arg("--clip-model")
        .arg(fixture("clip-tiny"))
        .args(["--device", "cpu"])
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("1.png"), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let samples = doc["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3, "row 1 has no edit and is reported");
    assert_eq!(samples[1]["clip_img"], Value::Null);
    assert!(!samples[1]["errors"].as_array().unwrap().is_empty());
    let cases = cases();
    let scored = [&samples[0], &samples[2]];
    for (sample, (i, task)) in scored.into_iter().zip([(0, "background"), (2, "remove")]) {
        assert_eq!(sample["task"], task);
        let want = cases["metrics"][i]["clip_img_vs_input"].as_f64().unwrap();
        let d = (sample["clip_img"].as_f64().unwrap() - want).abs();
        assert!(d < 1e-4, "sample {i} clip_img off by {d}");
        // The input is the ground truth: CLIP-I is the same image similarity as CLIPimg.
        let d = (sample["clip_i"].as_f64().unwrap() - want).abs();
        assert!(d < 1e-6, "sample {i} clip_i off by {d}");
        assert!(sample["l1"].as_f64().unwrap() > 0.0);
        let extracted = std::fs::read_dir(cache.join("emu-edit"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join(format!("{i}.png"));
        assert_eq!(
            std::fs::read(extracted).unwrap(),
            std::fs::read(fixture(&format!("data/{i}_input.png"))).unwrap()
        );
    }
    assert!(doc["mean_by_task"]["remove"]["clip_img"].is_number());
}
