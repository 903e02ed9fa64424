//! `ace analyze degrade | scribble | contour | doodle | segment` through the real binary: each
//! operation's flags reach the library and the output is the expected image of
//! tests/fixtures/analyze/ops/ (the same files the library's unit tests check).

use assert_cmd::Command;
use image::RgbImage;
use std::path::{Path, PathBuf};

fn input(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/ace-tiny/inputs/{name}.png"))
}

fn expected(name: &str) -> RgbImage {
    rgb(&PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/analyze/ops/{name}.png")))
}

fn rgb(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// Runs `ace --quiet analyze ARGS... INPUT -o OUT.png` and returns the output image.
fn run(args: &[&str], name: &str) -> RgbImage {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    Command::cargo_bin("ace")
        .unwrap()
        .args(["--quiet", "analyze"])
        .args(args)
        .arg(input(name))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    rgb(&out)
}

#[test]
fn degrade_seed_selects_the_output_and_steps_can_be_switched_off() {
    assert_eq!(
        run(&["degrade", "--seed", "1"], "astronaut"),
        expected("degrade_astronaut_seed1")
    );
    assert_ne!(
        run(&["degrade", "--seed", "2"], "astronaut"),
        expected("degrade_astronaut_seed1")
    );
    let all_off = [
        "degrade",
        "--no-noise",
        "--no-resize",
        "--no-jpeg",
        "--no-blur",
    ];
    assert_eq!(run(&all_off, "coffee"), rgb(&input("coffee")));
}

#[test]
fn scribble_defaults_match_the_reference() {
    assert_eq!(run(&["scribble"], "chelsea"), expected("scribble_chelsea"));
}

#[test]
fn contour_defaults_match_the_reference() {
    assert_eq!(
        run(&["contour", "--sigma", "6"], "coffee"),
        expected("contour_coffee")
    );
}

#[test]
fn doodle_defaults_match_the_reference() {
    assert_eq!(run(&["doodle"], "astronaut"), expected("doodle_astronaut"));
}

#[test]
fn segment_regions_and_palette() {
    assert_eq!(
        run(
            &["segment", "--regions", "8", "--fill", "palette"],
            "coffee"
        ),
        expected("segment_coffee_palette")
    );
    let two = run(
        &["segment", "-k", "2", "--fill", "palette", "--min-area", "0"],
        "coffee",
    );
    let colours: std::collections::BTreeSet<[u8; 3]> = two.pixels().map(|p| p.0).collect();
    assert_eq!(colours.len(), 2);
}

#[test]
fn out_of_range_parameters_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let assert = Command::cargo_bin("ace")
        .unwrap()
        .args(["analyze", "degrade", "--scale", "0.9,0.3"])
        .arg(input("coffee"))
        .arg("-o")
        .arg(&out)
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        stderr.contains("scale") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!out.exists());
}
