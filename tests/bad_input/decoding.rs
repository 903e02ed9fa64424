//! Reading inputs: a truncated JPEG is an error (item 9); `-` reads standard input wherever
//! one input is read (item 13); EXIF orientation is applied unless ignored (item 23).

use crate::common::*;
use assert_cmd::Command;
use serde_json::json;

/// Item 9: the missing half of a JPEG is not silently grey: every subcommand names the file.
#[test]
fn truncated_jpegs_are_errors_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let whole = jpeg(&noisy(64, 48));
    let good = dir.path().join("good.jpg");
    std::fs::write(&good, &whole).unwrap();
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &whole[..whole.len() * 6 / 10]).unwrap();

    code(
        ace()
            .args(["analyze", "gray"])
            .arg(&good)
            .arg("-o")
            .arg(dir.path().join("good.png")),
        0,
    );
    let out = dir.path().join("cut.png");
    let run = code(
        ace()
            .args(["analyze", "gray"])
            .arg(&cut)
            .arg("-o")
            .arg(&out),
        1,
    );
    one_line_naming(&run, &["cut.jpg", "truncated"]);
    assert!(!out.exists());
    let run = code(
        tiny_run(&["edit", "--instruction", "x", "--dry-run", "--image"]).arg(&cut),
        2,
    );
    one_line_naming(&run, &["cut.jpg", "truncated"]);
    let run = code(
        tiny_run(&["inpaint", "--dry-run", "--image"])
            .arg(&cut)
            .arg("--mask")
            .arg(&good),
        2,
    );
    one_line_naming(&run, &["cut.jpg", "truncated"]);
}

/// A JPEG of a `w` x `h` image whose EXIF says "rotate 90° clockwise to view" (orientation 6).
fn jpeg_with_orientation_6(w: u32, h: u32) -> Vec<u8> {
    let plain = jpeg(&noisy(w, h));
    // TIFF header (little endian), one IFD entry: Orientation (0x0112), SHORT, 1, value 6.
    let mut tiff = b"II*\x00\x08\x00\x00\x00\x01\x00".to_vec();
    tiff.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
    tiff.extend_from_slice(&[0, 0, 0, 0]);
    let mut exif = b"Exif\x00\x00".to_vec();
    exif.extend_from_slice(&tiff);
    let len = (exif.len() + 2) as u16;
    let mut out = plain[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&plain[2..]);
    out
}

/// Item 23: a photo taken upright with the camera on its side is read upright (its EXIF
/// orientation applied, as Pillow's exif_transpose does); --ignore-orientation reads it as
/// stored.
#[test]
fn exif_orientation_is_applied_unless_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("side.jpg");
    std::fs::write(&photo, jpeg_with_orientation_6(40, 24)).unwrap();
    let upright = dir.path().join("upright.png");
    code(
        ace()
            .args(["analyze", "gray"])
            .arg(&photo)
            .arg("-o")
            .arg(&upright),
        0,
    );
    assert_eq!(image::image_dimensions(&upright).unwrap(), (24, 40));
    let stored = dir.path().join("stored.png");
    code(
        ace()
            .args(["--ignore-orientation", "analyze", "gray"])
            .arg(&photo)
            .arg("-o")
            .arg(&stored),
        0,
    );
    assert_eq!(image::image_dimensions(&stored).unwrap(), (40, 24));
}

/// Item 13: `-` is standard input for `edit --image`, `--mask`, `--batch` and
/// `eval --manifest`; it can be read once.
#[test]
fn standard_input_is_read_wherever_one_input_is() {
    let astronaut = std::fs::read(input("astronaut")).unwrap();
    let run = code(
        tiny_run(&["edit", "--instruction", "x", "--dry-run", "--image", "-"])
            .write_stdin(astronaut.clone()),
        0,
    );
    let plan: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(plan["frames"][0]["source_size"], json!([128, 96]));

    let mask = std::fs::read(input("mask")).unwrap();
    code(
        tiny_run(&[
            "edit",
            "--instruction",
            "x",
            "--dry-run",
            "--mask",
            "-",
            "--image",
        ])
        .arg(input("astronaut"))
        .write_stdin(mask),
        0,
    );

    let job = json!({"image": [input("coffee")], "instruction": "make {image} red"});
    let run = code(
        tiny_run(&["edit", "--dry-run", "--batch", "-"]).write_stdin(format!("{job}\n")),
        0,
    );
    let results = json_lines(&run);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["ok"], true);

    let data = root().join("tests/fixtures/eval-tiny/data");
    let sample = json!({
        "generated": data.join("0_gen.png"),
        "ground_truth": data.join("0_gt.png"),
    });
    let run = code(
        Command::cargo_bin("ace")
            .unwrap()
            .args(["eval", "--json", "--manifest", "-"])
            .write_stdin(format!("{sample}\n")),
        0,
    );
    let doc: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(doc["samples"][0]["l1"].is_number());

    let run = code(
        tiny_run(&[
            "edit",
            "--instruction",
            "x",
            "--dry-run",
            "--image",
            "-",
            "--image",
            "-",
        ])
        .write_stdin(astronaut),
        2,
    );
    one_line_naming(&run, &["given twice"]);
}
