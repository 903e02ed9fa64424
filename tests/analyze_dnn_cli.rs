//! `ace analyze depth` and `ace analyze pose` through the real binary, on the tiny ONNX
//! networks of tests/fixtures/dnn (see scripts/make_dnn_fixtures.py): the no-model and
//! bad-model errors (exit 2, one line) and a run on each fixture.

use assert_cmd::Command;
use image::RgbImage;
use predicates::prelude::*;
use std::path::PathBuf;

fn dnn(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dnn")
        .join(name)
}

fn ace() -> Command {
    let mut cmd = Command::cargo_bin("ace").unwrap();
    cmd.arg("--quiet");
    cmd
}

/// An image file of `w` x `h` pixels made by `f`, in `dir`.
fn image_file(dir: &std::path::Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> PathBuf {
    let path = dir.join("in.png");
    RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(&path)
        .unwrap();
    path
}

#[test]
fn without_a_model_both_exit_2_naming_the_files_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let input = image_file(dir.path(), 8, 8, |_, _| [0, 0, 0]);
    let out = dir.path().join("out.png");
    for (op, names) in [
        ("depth", "model-small.onnx"),
        ("pose", "pose_iter_440000.caffemodel"),
    ] {
        ace()
            .args(["analyze", op])
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!(
                "{op} needs a model: pass --model"
            )))
            .stderr(predicate::str::contains(names))
            .stderr(predicate::function(|s: &str| s.lines().count() == 1));
        assert!(!out.exists());
    }
}

#[test]
fn a_missing_or_corrupt_model_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = image_file(dir.path(), 8, 8, |_, _| [0, 0, 0]);
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"not a network").unwrap();
    for model in [dir.path().join("absent.onnx"), corrupt] {
        ace()
            .args(["analyze", "depth", "--model"])
            .arg(&model)
            .arg(&input)
            .arg("-o")
            .arg(dir.path().join("out.png"))
            .assert()
            .code(2)
            .stderr(predicate::str::contains(model.display().to_string()));
    }
}

#[test]
fn depth_runs_the_fixture_network() {
    let dir = tempfile::tempdir().unwrap();
    // Rows of red 0, 30, ..., 210: see analyze::depth's end-to-end test for the numbers.
    let input = image_file(dir.path(), 8, 8, |_, y| [(y * 30) as u8, 0, 0]);
    let out = dir.path().join("depth.png");
    ace()
        .args([
            "analyze",
            "depth",
            "--size",
            "8",
            "--no-normalize",
            "--model",
        ])
        .arg(dnn("depth.onnx"))
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let img = image::open(&out).unwrap().to_rgb8();
    let column: Vec<u8> = (0..8).map(|y| img.get_pixel(5, y).0[0]).collect();
    assert_eq!(column, vec![0, 23, 61, 111, 143, 193, 231, 255]);
    assert!(img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
}

#[test]
fn pose_runs_the_fixture_network() {
    let dir = tempfile::tempdir().unwrap();
    let input = image_file(dir.path(), 48, 48, |x, y| [x as u8, y as u8, 7]);
    let out = dir.path().join("pose.png");
    ace()
        .args(["analyze", "pose", "--height", "48", "--model"])
        .arg(dnn("pose.onnx"))
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let expected = image::open(dnn("pose_expected.png")).unwrap().to_rgb8();
    assert_eq!(image::open(&out).unwrap().to_rgb8(), expected);
}
