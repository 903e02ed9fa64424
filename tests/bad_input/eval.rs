//! Item 14 (and the CSV part of 17): `ace eval` reports every missing sample instead of
//! inflating the means, gives MagicBrush final-turn and all-turn means only, and reports every
//! unreadable manifest row (an unterminated quote as such) while scoring the others.

use crate::common::*;
use assert_cmd::Command;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    root().join("tests/fixtures/eval-tiny/data").join(name)
}

fn eval() -> Command {
    let mut cmd = Command::cargo_bin("ace").unwrap();
    cmd.args(["--device", "cpu", "eval", "--json"]);
    cmd
}

fn doc(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

fn copy(from: &str, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(data(from), to).unwrap();
}

/// A reference image without its generated match, and an Emu Edit row without its edit, are
/// samples reported missing (exit 1), not samples left out.
#[test]
fn samples_without_their_image_are_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (gen, gt) = (dir.path().join("gen"), dir.path().join("gt"));
    for i in 0..2 {
        copy(&format!("{i}_gen.png"), &gen.join(format!("{i}.png")));
    }
    for i in 0..3 {
        copy(&format!("{i}_gt.png"), &gt.join(format!("{i}.png")));
    }
    let run = code(
        eval()
            .arg("--generated")
            .arg(&gen)
            .arg("--reference")
            .arg(&gt),
        1,
    );
    assert!(stderr(&run).contains("2.png"), "{}", stderr(&run));
    let d = doc(&run);
    assert_eq!(d["samples"].as_array().unwrap().len(), 3);
    assert_eq!(d["samples"][2]["l1"], Value::Null);

    let edits = dir.path().join("edits");
    for i in [0, 2] {
        copy(&format!("{i}_gen.png"), &edits.join(format!("{i}.png")));
    }
    let run = code(
        eval()
            .env("ACE_CACHE_DIR", dir.path().join("cache"))
            .arg("--generated")
            .arg(&edits)
            .arg("--emu-edit")
            .arg(root().join("tests/fixtures/emu-edit")),
        1,
    );
    assert!(stderr(&run).contains("1.png"), "{}", stderr(&run));
    assert_eq!(doc(&run)["samples"].as_array().unwrap().len(), 3);
}

/// MagicBrush scores the final turn and every turn; the overall mean would count edits twice,
/// so only the final-turn and all-turn means are given. A session of the test set without
/// edits is reported missing.
#[test]
fn magicbrush_means_count_no_sample_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (test, gen) = (dir.path().join("test"), dir.path().join("gen"));
    for (from, to) in [
        ("0_input.png", "42/42-input.png"),
        ("0_gt.png", "42/42-output1.png"),
        ("1_gt.png", "42/42-output2.png"),
        ("2_input.png", "43/43-input.png"),
        ("2_gt.png", "43/43-output1.png"),
    ] {
        copy(from, &test.join("images").join(to));
    }
    for (from, to) in [
        ("0_gen.png", "42/42_1.png"),
        ("1_gen.png", "42/inde_2.png"),
        ("2_gen.png", "42/iter_2.png"),
    ] {
        copy(from, &gen.join(to));
    }
    let run = code(
        eval()
            .arg("--generated")
            .arg(&gen)
            .arg("--magicbrush")
            .arg(&test),
        1,
    );
    assert!(stderr(&run).contains("43"), "{}", stderr(&run));
    let d = doc(&run);
    assert_eq!(d["mean"], Value::Null, "{}", d["mean"]);
    assert!(d["mean_by_turn"]["final"]["l1"].is_number());
    assert!(d["mean_by_turn"]["all"]["l1"].is_number());
}

/// A broken manifest line is reported with its line and the other rows are scored (exit 1); an
/// unterminated CSV quote is reported as such, not as a missing file.
#[test]
fn bad_manifest_rows_are_reported_and_the_rest_scored() {
    let dir = tempfile::tempdir().unwrap();
    let row = |i: usize| json!({"generated": data(&format!("{i}_gen.png")), "ground_truth": data(&format!("{i}_gt.png"))});
    let manifest = dir.path().join("m.jsonl");
    std::fs::write(
        &manifest,
        format!("{}\n{{\"generated\": oops\n{}\n", row(0), row(1)),
    )
    .unwrap();
    let run = code(eval().arg("--manifest").arg(&manifest), 1);
    one_line_naming(&run, &["m.jsonl", "line 2"]);
    let d = doc(&run);
    assert_eq!(d["samples"].as_array().unwrap().len(), 2);
    assert!(d["mean"]["l1"].is_number());

    let csv = dir.path().join("m.csv");
    std::fs::write(
        &csv,
        format!(
            "generated,ground_truth\n{},{}\n\"{},{}\n",
            data("0_gen.png").display(),
            data("0_gt.png").display(),
            data("1_gen.png").display(),
            data("1_gt.png").display()
        ),
    )
    .unwrap();
    let run = code(eval().arg("--manifest").arg(&csv), 1);
    let err = one_line_naming(&run, &["m.csv", "line 3", "unterminated quote"]);
    assert!(!err.contains("No such file"), "{err}");
    assert_eq!(doc(&run)["samples"].as_array().unwrap().len(), 1);
}
