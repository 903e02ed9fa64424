//! The data pipeline and the rules shared by subcommands: mined pairs survive into a dataset
//! and unfillable tasks say so (item 15), templates read naturally (15), one mask rule (16),
//! one flag spelling, one seed rule and coverages spread over their range (19).

use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Item 15: `data pairs --images DIR` then `data instructions` (the README's pipeline, the
/// pairs file in another folder than the images) keeps the pairs whose slots are filled; a
/// task whose slots mined pairs lack says so and exits 1, warning that nothing was written.
#[test]
fn mined_pairs_survive_into_a_dataset_and_unfillable_tasks_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let eval_tiny = root().join("tests/fixtures/eval-tiny");
    for e in std::fs::read_dir(eval_tiny.join("data")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, photos.join(p.file_name().unwrap())).unwrap();
    }
    let pairs = dir.path().join("lists/pairs.jsonl");
    code(
        ace()
            .args(["data", "pairs", "--encoder", "clip", "--clusters", "1"])
            .args(["--low=-1", "--high=0.99999", "--pairs-only", "--clip-model"])
            .arg(eval_tiny.join("clip-tiny"))
            .arg("--images")
            .arg(&photos)
            .arg("-o")
            .arg(&pairs),
        0,
    );
    // Slots come from elsewhere (a captioner); the paths are kept as mined.
    let captioned = dir.path().join("lists/captioned.jsonl");
    let mined = lines(&pairs);
    let with_captions: Vec<Value> = mined
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p["caption"] = "the same scene".into();
            p
        })
        .collect();
    write_lines(&captioned, &with_captions);
    let ds = dir.path().join("datasets/edits");
    code(
        ace()
            .args(["data", "instructions", "--task", "edit.semantic", "--in"])
            .arg(&captioned)
            .arg("-o")
            .arg(&ds),
        0,
    );
    let records = lines(&ds.join("data.jsonl"));
    assert_eq!(records.len(), mined.len());
    for r in &records {
        assert!(ds.join(r["inputs"][0].as_str().unwrap()).is_file(), "{r}");
        assert!(ds.join(r["target"].as_str().unwrap()).is_file(), "{r}");
    }

    let run = code(
        ace()
            .args(["data", "instructions", "--task", "object.remove", "--in"])
            .arg(&pairs)
            .arg("-o")
            .arg(dir.path().join("datasets/remove")),
        1,
    );
    let err = stderr(&run);
    assert!(
        err.contains("object_name") && err.contains("line 1"),
        "{err}"
    );
    assert!(
        err.contains("warning") && err.contains("no pairs written"),
        "{err}"
    );
}

/// Item 15: slot values bring their own article and place: no "the the", no "on the sign on
/// {image}", in any phrasing (every phrasing is drawn over the lines of one file).
#[test]
fn templates_never_double_an_article_or_a_place() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.png");
    std::fs::copy(input("coffee"), &img).unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    let line = json!({"a": "a.png", "b": "a.png", "object_name": "the dog", "text": "OPEN",
                      "looks": "in red on the sign", "caption": "a dog"});
    write_lines(&pairs, &vec![line; 40]);
    for task in [
        "object.remove",
        "object.add",
        "text.render",
        "layer.decouple",
    ] {
        let ds = dir.path().join(task);
        code(
            ace()
                .args(["data", "instructions", "--task", task, "--in"])
                .arg(&pairs)
                .arg("-o")
                .arg(&ds),
            0,
        );
        for r in lines(&ds.join("data.jsonl")) {
            let i = r["instruction"].as_str().unwrap().to_lowercase();
            assert!(!i.contains("the the "), "{task}: {i}");
            assert!(
                !i.contains("sign on {image}") && !i.contains("sign to {image}"),
                "{i}"
            );
        }
    }
    for seed in ["0", "1", "2", "3"] {
        let run = code(
            tiny_run(&[
                "edit",
                "--dry-run",
                "--kind",
                "text-render",
                "--text",
                "OPEN",
            ])
            .args(["--position", "on the sign", "--seed", seed, "--image"])
            .arg(&img),
            0,
        );
        let plan: Value = serde_json::from_slice(&run.stdout).unwrap();
        let i = plan["instruction"].as_str().unwrap();
        assert!(
            !i.contains("on the sign on") && !i.contains("on the sign to"),
            "{i}"
        );
    }
}

/// Item 16: `edit` follows `inpaint`'s rule: a mask that selects nothing, or has another size
/// than its image, is an error naming the mask.
#[test]
fn one_mask_rule_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let black = dir.path().join("black.png");
    image::GrayImage::new(96, 128).save(&black).unwrap();
    let small = dir.path().join("small.png");
    image::GrayImage::from_pixel(32, 32, image::Luma([255]))
        .save(&small)
        .unwrap();
    for (mask, problem) in [(&black, "selects no pixel"), (&small, "32x32")] {
        for sub in [
            &["edit", "--instruction", "x"][..],
            &["inpaint"],
            &["reference", "--kind", "style", "--ref"],
        ] {
            let mut cmd = tiny_run(sub);
            if sub[0] == "reference" {
                cmd.arg(input("chelsea"));
            }
            let run = code(
                cmd.args(["--dry-run", "--image"])
                    .arg(input("astronaut"))
                    .arg("--mask")
                    .arg(mask),
                2,
            );
            let name = mask.file_name().unwrap().to_string_lossy().into_owned();
            one_line_naming(&run, &[&name, problem]);
        }
    }
}

/// Item 19: `-o/--output` for every data command (`-r` for lowlevel too); coverages spread over
/// the requested range; a dry run without --seed shows the phrasing the real run uses, and
/// the run reports its seed.
#[test]
fn one_flag_spelling_one_seed_rule_and_spread_coverages() {
    let dir = tempfile::tempdir().unwrap();
    let masks = dir.path().join("masks");
    code(
        ace()
            .args(["data", "masks", "--size", "64x64", "--kind", "irregular"])
            .args(["--count", "30", "--coverage", "0.1-0.5", "--output"])
            .arg(&masks),
        0,
    );
    let coverages: Vec<f64> = (0..30)
        .map(|i| {
            let m = image::open(masks.join(format!("{i:06}.png")))
                .unwrap()
                .to_luma8();
            m.pixels().filter(|p| p[0] > 128).count() as f64 / 4096.0
        })
        .collect();
    let (lo, hi) = coverages
        .iter()
        .fold((1f64, 0f64), |(l, h), &c| (l.min(c), h.max(c)));
    assert!(lo >= 0.1 && hi <= 0.5, "[{lo}, {hi}]");
    assert!(lo < 0.2 && hi > 0.4, "coverages only in [{lo}, {hi}]");

    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    std::fs::copy(input("coffee"), photos.join("sub/coffee.png")).unwrap();
    let run = code(
        ace()
            .args(["data", "lowlevel", "--ops", "gray", "--images"])
            .arg(&photos)
            .arg("-o")
            .arg(dir.path().join("ll")),
        2,
    );
    one_line_naming(&run, &["photos", "-r"]);
    code(
        ace()
            .args(["data", "lowlevel", "--ops", "gray", "-r", "--images"])
            .arg(&photos)
            .arg("-o")
            .arg(dir.path().join("ll")),
        0,
    );
    assert!(dir
        .path()
        .join("ll/conditions/gray/sub/coffee.png")
        .is_file());

    let mut dry = tiny_run(&["inpaint", "--dry-run", "--json", "--image"]);
    dry.arg(input("astronaut")).arg("--mask").arg(input("mask"));
    let planned: Value = serde_json::from_slice(&code(&mut dry, 0).stdout).unwrap();
    let out = dir.path().join("inpainted.png");
    let run = code(
        tiny_run(&["inpaint", "--json", "--image"])
            .arg(input("astronaut"))
            .arg("--mask")
            .arg(input("mask"))
            .arg("-o")
            .arg(&out),
        0,
    );
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["instruction"], planned["instruction"]);
    assert_eq!(summary["seed"], 0);
}
