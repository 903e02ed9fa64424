//! `ace analyze` through the real binary: inputs (file, folder, glob, stdin), outputs (file,
//! folder, stdout), --json, --mask, and bad inputs in a batch.

use assert_cmd::Command;
use image::RgbImage;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/analyze")
}

fn input(name: &str) -> PathBuf {
    fixtures().join("inputs").join(format!("{name}.png"))
}

fn expected(name: &str, op: &str) -> RgbImage {
    rgb(&fixtures().join("expected").join(format!("{name}.{op}.png")))
}

fn rgb(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

fn ace() -> Command {
    let mut cmd = Command::cargo_bin("ace").unwrap();
    cmd.arg("--quiet");
    cmd
}

/// A folder holding copies of the named fixture photographs.
fn folder_of(dir: &Path, names: &[&str]) -> PathBuf {
    let folder = dir.join("in");
    std::fs::create_dir_all(&folder).unwrap();
    for n in names {
        std::fs::copy(input(n), folder.join(format!("{n}.png"))).unwrap();
    }
    folder
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn single_file_equals_opencv() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("edges.png");
    ace()
        .args(["analyze", "canny"])
        .arg(input("chelsea"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(rgb(&out), expected("chelsea", "canny"));
}

#[test]
fn folder_recursive_and_glob() {
    let dir = tempfile::tempdir().unwrap();
    let folder = folder_of(dir.path(), &["astronaut", "chelsea"]);
    std::fs::create_dir(folder.join("sub")).unwrap();
    std::fs::copy(input("coffee"), folder.join("sub/coffee.png")).unwrap();

    let out = dir.path().join("out");
    ace()
        .args(["analyze", "gray"])
        .arg(&folder)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(names_in(&out), ["astronaut.png", "chelsea.png"]);
    assert_eq!(
        rgb(&out.join("astronaut.png")),
        expected("astronaut", "gray")
    );

    let deep = dir.path().join("deep");
    ace()
        .args(["analyze", "gray", "-r"])
        .arg(&folder)
        .arg("-o")
        .arg(&deep)
        .assert()
        .success();
    assert_eq!(
        rgb(&deep.join("sub/coffee.png")),
        expected("coffee", "gray")
    );

    let globbed = dir.path().join("globbed");
    ace()
        .args(["analyze", "mosaic", "--ratio", "16"])
        .arg(folder.join("c*.png"))
        .arg("-o")
        .arg(&globbed)
        .assert()
        .success();
    assert_eq!(names_in(&globbed), ["chelsea.png"]);
    assert_eq!(
        rgb(&globbed.join("chelsea.png")),
        expected("chelsea", "mosaic-16")
    );
}

#[test]
fn stdin_to_stdout_pipe() {
    let bytes = std::fs::read(input("coffee")).unwrap();
    for args in [
        vec!["analyze", "gray", "-"],
        vec!["analyze", "gray", "-", "-o", "-"],
    ] {
        let out = ace()
            .args(&args)
            .write_stdin(bytes.clone())
            .assert()
            .success();
        let img = image::load_from_memory(&out.get_output().stdout)
            .unwrap()
            .to_rgb8();
        assert_eq!(img, expected("coffee", "gray"));
    }
    let out = ace()
        .args(["analyze", "mosaic", "-", "--format", "webp"])
        .write_stdin(bytes)
        .assert()
        .success();
    assert_eq!(
        image::guess_format(&out.get_output().stdout).unwrap(),
        image::ImageFormat::WebP
    );
}

#[test]
fn json_lines_report_outputs_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let folder = folder_of(dir.path(), &["camera", "chelsea"]);
    std::fs::write(folder.join("broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let out = dir.path().join("out");
    let assert = ace()
        .args(["analyze", "canny", "--json", "--low", "50", "--high", "150"])
        .arg(&folder)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    let stdout = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    let mut lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.sort_by_key(|l| l["input"].as_str().unwrap().to_string());
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["input"].as_str().unwrap().ends_with("broken.png"));
    assert!(lines[0]["error"].as_str().unwrap().contains("broken.png"));
    assert!(lines[0].get("milliseconds").is_none());
    for (line, name) in lines[1..].iter().zip(["camera", "chelsea"]) {
        assert_eq!(line["op"], "canny");
        assert_eq!(
            line["parameters"],
            serde_json::json!({"low": 50.0, "high": 150.0})
        );
        assert!(line["milliseconds"].as_f64().unwrap() >= 0.0);
        assert!(line.get("error").is_none());
        let written = PathBuf::from(line["output"].as_str().unwrap());
        assert_eq!(rgb(&written), expected(name, "canny-50-150"));
    }
}

#[test]
fn mask_limits_the_operation_to_its_inside() {
    let dir = tempfile::tempdir().unwrap();
    // A mask at half the image's size: its left half (value 200 > 128) is inside.
    let mask = image::GrayImage::from_fn(128, 85, |x, _| {
        image::Luma([if x < 64 { 200 } else { 128 }])
    });
    let mask_path = dir.path().join("mask.png");
    mask.save(&mask_path).unwrap();
    let out = dir.path().join("out.png");
    ace()
        .args(["analyze", "canny", "--mask"])
        .arg(&mask_path)
        .arg(input("chelsea"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let (got, photo, edges) = (
        rgb(&out),
        rgb(&input("chelsea")),
        expected("chelsea", "canny"),
    );
    for (x, y, p) in got.enumerate_pixels() {
        let want = if x < 128 {
            edges.get_pixel(x, y)
        } else {
            photo.get_pixel(x, y)
        };
        assert_eq!(p, want, "pixel ({x}, {y})");
    }
}

#[test]
fn bad_inputs_fail_alone_without_partial_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let folder = folder_of(dir.path(), &["astronaut"]);
    let png = std::fs::read(input("camera")).unwrap();
    std::fs::write(folder.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(folder.join("empty.jpg"), b"").unwrap();
    std::fs::write(folder.join("text.webp"), b"just words").unwrap();
    let empty = dir.path().join("nothing");
    std::fs::create_dir(&empty).unwrap();
    let out = dir.path().join("out");
    let assert = ace()
        .args(["analyze", "gray"])
        .arg(&folder)
        .arg(&empty)
        .arg(dir.path().join("missing.png"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    for name in [
        "truncated.png",
        "empty.jpg",
        "text.webp",
        "nothing",
        "missing.png",
    ] {
        assert_eq!(
            lines.iter().filter(|l| l.contains(name)).count(),
            1,
            "{name}: {stderr}"
        );
    }
    assert_eq!(names_in(&out), ["astronaut.png"]);
}

#[test]
fn refuses_to_overwrite_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let folder = folder_of(dir.path(), &["camera"]);
    let before = std::fs::read(folder.join("camera.png")).unwrap();
    let assert = ace()
        .args(["analyze", "gray"])
        .arg(&folder)
        .arg("-o")
        .arg(&folder)
        .assert()
        .code(1);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("camera.png") && stderr.contains("overwrite"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(folder.join("camera.png")).unwrap(), before);
    assert_eq!(names_in(&folder), ["camera.png"]);
}

#[test]
fn a_mask_that_is_not_an_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("mask.png");
    std::fs::write(&mask, b"not a mask").unwrap();
    let out = dir.path().join("out.png");
    let assert = ace()
        .args(["analyze", "mosaic", "--mask"])
        .arg(&mask)
        .arg(input("camera"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("mask.png") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn usage_errors_exit_2() {
    let two = [input("camera"), input("coffee")];
    ace()
        .args(["analyze", "gray"])
        .args(&two)
        .args(["-o", "-"])
        .assert()
        .code(2);
    ace()
        .args(["analyze", "gray"])
        .arg(input("camera"))
        .assert()
        .code(2);
    ace()
        .args(["analyze", "mosaic", "--ratio", "0"])
        .arg(input("camera"))
        .args(["-o", "x.png"])
        .assert()
        .code(2);
    ace()
        .args(["analyze", "mosaic", "--ratio", "8", "--block", "8"])
        .arg(input("camera"))
        .assert()
        .code(2);
    ace()
        .args(["analyze", "nosuchop"])
        .arg(input("camera"))
        .assert()
        .code(2);
}
