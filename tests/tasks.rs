//! The task subcommands (`control`, `inpaint`, `outpaint`, `layer`, `reference`, and `edit`'s
//! presets and sessions) through the real binary: their `--dry-run --json` plans against the
//! reference's input preparation (sizes after the token budget, mask thresholding, inpainting
//! blanking, outpaint canvases, instructions, image order), whole runs on the tiny model (one
//! step, small images), and batches with shards, failures and resume.

mod tiny_support;

use assert_cmd::Command;
use serde_json::Value;
use std::path::Path;
use tiny_support::{ace, cases, fixtures};

fn input(name: &str) -> String {
    fixtures().join("inputs").join(name).display().to_string()
}

fn config() -> String {
    fixtures().join("model/ace_tiny.yaml").display().to_string()
}

/// The tiny model's config with another MAX_SEQ_LEN (dry runs need no weights).
fn config_with_budget(dir: &Path, max_seq_len: usize) -> String {
    let text = std::fs::read_to_string(config()).unwrap();
    let text = text.replace("MAX_SEQ_LEN: 1024", &format!("MAX_SEQ_LEN: {max_seq_len}"));
    assert!(text.contains(&format!("MAX_SEQ_LEN: {max_seq_len}")));
    let path = dir.join("budget.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn dry_run(args: &[&str]) -> Value {
    dry_run_with(args, &config())
}

fn dry_run_with(args: &[&str], config: &str) -> Value {
    let out = ace()
        .args(args)
        .args(["--config", config, "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The reference's frame size: `int(H * scale) // 16 * 16` with
/// `scale = min(1, sqrt(budget / ((H / 16) * (W / 16))))`.
fn reference_size(h: usize, w: usize, budget: usize) -> [usize; 2] {
    let scale = (budget as f64 / ((h as f64 / 16.0) * (w as f64 / 16.0)))
        .sqrt()
        .min(1.0);
    [
        (h as f64 * scale) as usize / 16 * 16,
        (w as f64 * scale) as usize / 16 * 16,
    ]
}

/// Pixels of a mask file the reference counts as inside (PIL "L" above 128).
fn mask_ones(path: &str) -> u64 {
    image::open(path)
        .unwrap()
        .to_luma8()
        .pixels()
        .filter(|p| p[0] > 128)
        .count() as u64
}

fn size(v: &Value) -> [usize; 2] {
    [
        v[0].as_u64().unwrap() as usize,
        v[1].as_u64().unwrap() as usize,
    ]
}

#[test]
fn edit_dry_runs_match_the_reference_cases() {
    let cases = cases();
    for case in cases["cases"].as_array().unwrap() {
        let images = case["images"].as_array().unwrap();
        if images.is_empty() || !case["history"].as_array().unwrap().is_empty() {
            continue;
        }
        let mut args: Vec<String> = vec!["edit".into()];
        for (i, img) in images.iter().enumerate() {
            args.extend([
                "--image".into(),
                fixtures().join(img.as_str().unwrap()).display().to_string(),
            ]);
            let mask = case["masks"][i]
                .as_str()
                .map_or("none".into(), |m| fixtures().join(m).display().to_string());
            args.extend(["--mask".into(), mask]);
            args.extend(["--task".into(), case["tasks"][i].as_str().unwrap().into()]);
        }
        args.extend([
            "--instruction".into(),
            case["prompt"].as_str().unwrap().into(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let plan = dry_run(&refs);
        let name = case["name"].as_str().unwrap();
        assert_eq!(plan["prompts"], case["prompts_seen_by_model"], "{name}");
        let contexts = plan["contexts"].as_array().unwrap();
        assert_eq!(contexts.len(), images.len() + 1, "{name}");
        for (i, frame) in plan["frames"].as_array().unwrap().iter().enumerate() {
            let src = size(&frame["source_size"]);
            assert_eq!(
                size(&frame["size"]),
                reference_size(src[0], src[1], 1024),
                "{name}"
            );
            let ones = frame["mask"]["ones"].as_u64().unwrap();
            match case["masks"][i].as_str() {
                Some(m) => {
                    assert_eq!(
                        ones,
                        mask_ones(&fixtures().join(m).display().to_string()),
                        "{name}"
                    );
                    let blanked = frame["masked_black_pixels"].as_u64().unwrap();
                    if case["tasks"][i] == "inpainting" {
                        assert_eq!(blanked, ones, "{name}: inpainting blanks the mask");
                    } else {
                        assert!(blanked < ones, "{name}: only inpainting blanks");
                    }
                }
                None => assert_eq!(frame["mask"]["all"], true, "{name}"),
            }
        }
        assert_eq!(plan["target"]["size"], plan["frames"][0]["size"], "{name}");
    }
}

#[test]
fn frames_shrink_to_the_token_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_budget(dir.path(), 32);
    let plan = dry_run_with(
        &[
            "inpaint",
            "--image",
            &input("astronaut.png"),
            "--mask",
            &input("mask.png"),
        ],
        &cfg,
    );
    let frame = &plan["frames"][0];
    assert_eq!(size(&frame["source_size"]), [128, 96]);
    assert_eq!(size(&frame["size"]), reference_size(128, 96, 32));
    assert_eq!(size(&frame["size"]), [96, 64]);
    assert_eq!(size(&plan["target"]["latent_size"]), [12, 8]);
    // Nearest resize of the mask, then blanking of every masked pixel.
    assert_eq!(frame["masked_black_pixels"], frame["mask"]["ones"]);
    assert_eq!(plan["max_seq_len"], 32);
}

#[test]
fn inpaint_and_instructions_follow_the_seed() {
    let base = [
        "inpaint",
        "--image",
        &input("astronaut.png"),
        "--mask",
        &input("mask.png"),
    ];
    let pick = |seed: &str, prompt: Option<&str>| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--seed", seed]);
        if let Some(p) = prompt {
            args.extend(["--prompt", p]);
        }
        dry_run(&args)["instruction"].as_str().unwrap().to_string()
    };
    assert_eq!(pick("5", None), pick("5", None));
    let seen: std::collections::BTreeSet<String> =
        (0..8).map(|s| pick(&s.to_string(), None)).collect();
    assert!(seen.len() >= 2, "{seen:?}");
    for s in 0..4 {
        let i = pick(&s.to_string(), Some("blooming flowers"));
        assert!(
            i.contains("blooming flowers") && i.contains("{image}"),
            "{i}"
        );
    }
    let mut args = base.to_vec();
    args.extend(["--instruction", "fill {image} with sand"]);
    let plan = dry_run(&args);
    assert_eq!(plan["prompts"][0], "fill {image} with sand");
    assert_eq!(plan["frames"][0]["task"], "inpainting");

    // An empty mask is refused, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.png");
    image::GrayImage::new(96, 128).save(&empty).unwrap();
    let out = ace()
        .args(["inpaint", "--image", &input("astronaut.png"), "--mask"])
        .arg(&empty)
        .args(["--config", &config(), "--dry-run"])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.contains("empty.png") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn outpaint_builds_the_canvas_and_its_mask() {
    let plan = dry_run(&[
        "outpaint",
        "--image",
        &input("astronaut.png"),
        "--left",
        "32",
    ]);
    let frame = &plan["frames"][0];
    assert_eq!(size(&frame["size"]), [128, 128]);
    assert_eq!(frame["task"], "inpainting");
    assert_eq!(frame["mask"]["bbox"], serde_json::json!([0, 0, 32, 128]));
    assert_eq!(frame["mask"]["ones"], 32 * 128);
    assert_eq!(frame["masked_black_pixels"], 32 * 128);

    // 96x128 to 1:1 grows the width evenly: 16 px each side.
    let plan = dry_run(&[
        "outpaint",
        "--image",
        &input("astronaut.png"),
        "--ratio",
        "1:1",
    ]);
    let mask = &plan["frames"][0]["mask"];
    assert_eq!(size(&plan["frames"][0]["size"]), [128, 128]);
    assert_eq!(mask["ones"], 2 * 16 * 128);

    // Beyond the budget the canvas is shrunk first; the frame stays within it.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_budget(dir.path(), 64);
    let plan = dry_run_with(
        &[
            "outpaint",
            "--image",
            &input("astronaut.png"),
            "--scale",
            "2",
        ],
        &cfg,
    );
    let [h, w] = size(&plan["frames"][0]["size"]);
    assert!(
        h / 16 * (w / 16) <= 64 && (h as f64 / w as f64 - 4.0 / 3.0).abs() < 0.2,
        "{h}x{w}"
    );
    let ones = plan["frames"][0]["mask"]["ones"].as_u64().unwrap() as f64;
    assert!((ones / (h * w) as f64 - 0.75).abs() < 0.05, "{ones}");

    ace()
        .args([
            "outpaint",
            "--image",
            &input("astronaut.png"),
            "--left",
            "500",
        ])
        .args(["--config", &config(), "--dry-run"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("4:1"));
}

#[test]
fn control_computes_the_condition_globally_or_in_a_mask() {
    let plan = dry_run(&[
        "control",
        "canny",
        "--image",
        &input("astronaut.png"),
        "--prompt",
        "a diver",
        "--seed",
        "2",
    ]);
    let frame = &plan["frames"][0];
    assert_eq!(frame["task"], "");
    assert_eq!(frame["mask"]["all"], true);
    let i = plan["instruction"].as_str().unwrap();
    assert!(i.contains("a diver") && i.contains("{image}"), "{i}");

    let plan = dry_run(&[
        "control",
        "gray",
        "--image",
        &input("astronaut.png"),
        "--mask",
        &input("mask.png"),
    ]);
    assert_eq!(
        plan["frames"][0]["mask"]["ones"],
        mask_ones(&input("mask.png"))
    );
    assert_eq!(plan["target"]["mask"], plan["frames"][0]["mask"]);

    // depth needs its network or a ready condition
    ace()
        .args(["control", "depth", "--image", &input("astronaut.png")])
        .args(["--config", &config(), "--dry-run"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("model"));
    let plan = dry_run(&[
        "control",
        "depth",
        "--image",
        &input("astronaut.png"),
        "--condition",
        &input("astronaut.png"),
    ]);
    assert_eq!(size(&plan["frames"][0]["size"]), [128, 96]);
}

#[test]
fn layers_and_references_order_their_images() {
    let plan = dry_run(&[
        "layer",
        "fuse",
        "--background",
        &input("astronaut.png"),
        "--subject",
        &input("chelsea.png"),
        "--subject",
        &input("coffee.png"),
    ]);
    let names: Vec<&str> = plan["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names[0].ends_with("astronaut.png") && names[2].ends_with("coffee.png"));
    assert_eq!(plan["frames"][2]["reference"], "{image2}");
    assert_eq!(plan["target"]["from_input"], 0);
    let i = plan["instruction"].as_str().unwrap();
    assert!(i.contains("{image1} and {image2}"), "{i}");

    let plan = dry_run(&[
        "layer",
        "decouple",
        "--image",
        &input("astronaut.png"),
        "--part",
        "subject",
        "--object",
        "the astronaut",
    ]);
    assert!(plan["instruction"]
        .as_str()
        .unwrap()
        .contains("the astronaut"));

    let plan = dry_run(&[
        "reference",
        "--kind",
        "tryon",
        "--image",
        &input("astronaut.png"),
        "--mask",
        &input("mask.png"),
        "--ref",
        &input("coffee.png"),
    ]);
    assert_eq!(plan["frames"][0]["task"], "Try On");
    assert_eq!(
        plan["frames"][0]["masked_black_pixels"],
        plan["frames"][0]["mask"]["ones"]
    );
    assert_eq!(size(&plan["frames"][1]["size"]), [64, 80]);
    assert_eq!(size(&plan["target"]["size"]), [128, 96]);

    let mut series = vec!["reference", "--kind", "series"];
    let (a, b, c) = (
        input("coffee.png"),
        input("chelsea.png"),
        input("astronaut.png"),
    );
    for r in [&a, &b, &c] {
        series.extend(["--ref", r]);
    }
    let plan = dry_run(&series);
    assert_eq!(plan["frames"].as_array().unwrap().len(), 3);
    assert_eq!(size(&plan["target"]["size"]), [64, 80]);
    assert!(plan["instruction"]
        .as_str()
        .unwrap()
        .contains("{image}, {image1} and {image2}"));
}

#[test]
fn edit_presets_build_their_instructions() {
    let a = input("astronaut.png");
    let plan = dry_run(&[
        "edit",
        "--image",
        &a,
        "--kind",
        "text-render",
        "--text",
        "HELLO",
        "--color",
        "red",
        "--position",
        "top",
    ]);
    let i = plan["instruction"].as_str().unwrap();
    assert!(i.contains("\"HELLO\" in red at the top"), "{i}");
    let plan = dry_run(&[
        "edit",
        "--image",
        &a,
        "--kind",
        "object-remove",
        "--object",
        "the flag",
    ]);
    assert!(plan["instruction"].as_str().unwrap().contains("the flag"));
    let plan = dry_run(&["edit", "--image", &a, "--style", "watercolor"]);
    assert!(plan["instruction"].as_str().unwrap().contains("watercolor"));
    let plan = dry_run(&[
        "edit",
        "--image",
        &a,
        "--face",
        "keep",
        "--prompt",
        "make it snow",
    ]);
    assert!(plan["instruction"]
        .as_str()
        .unwrap()
        .contains("make it snow"));
    ace()
        .args([
            "edit",
            "--image",
            &a,
            "--kind",
            "object-add",
            "--config",
            &config(),
            "--dry-run",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--object"));
}

/// Runs a subcommand for real on the tiny model (one step) and returns its output image.
fn run(args: &[&str], out: &Path) -> image::RgbImage {
    ace()
        .args(args)
        .args(["--config", &config(), "--steps", "1", "--seed", "1", "-o"])
        .arg(out)
        .assert()
        .success();
    image::open(out).unwrap().to_rgb8()
}

#[test]
fn every_subcommand_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, c, m) = (
        input("astronaut.png"),
        input("coffee.png"),
        input("mask.png"),
    );
    let o = run(
        &["control", "scribble", "--image", &a, "--prompt", "a knight"],
        &d.join("c.png"),
    );
    assert_eq!(o.dimensions(), (96, 128));
    let o = run(&["inpaint", "--image", &a, "--mask", &m], &d.join("i.png"));
    assert_eq!(o.dimensions(), (96, 128));
    let o = run(
        &["outpaint", "--image", &c, "--top", "16", "--bottom", "16"],
        &d.join("o.png"),
    );
    assert_eq!(o.dimensions(), (80, 96));
    run(
        &["layer", "decouple", "--image", &a, "--part", "background"],
        &d.join("l1.png"),
    );
    let o = run(
        &["layer", "fuse", "--background", &c, "--subject", &a],
        &d.join("l2.png"),
    );
    assert_eq!(o.dimensions(), (80, 64));
    run(
        &["reference", "--kind", "style", "--image", &a, "--ref", &c],
        &d.join("r.png"),
    );
    run(
        &["edit", "--image", &a, "--kind", "text-remove"],
        &d.join("e.png"),
    );
}

#[test]
fn sessions_continue_from_the_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("s.jsonl");
    let s = session.display().to_string();
    let a = input("astronaut.png");
    run(
        &["edit", "--session", &s, "--image", &a, "--style", "pixel"],
        &dir.path().join("t1.png"),
    );
    // The second turn has no --image: it edits t1.png with turn 1 as history.
    let plan = dry_run(&[
        "edit",
        "--session",
        &s,
        "--instruction",
        "add a hat to {image}",
    ]);
    assert_eq!(plan["frames"].as_array().unwrap().len(), 2);
    assert!(plan["frames"][0]["name"]
        .as_str()
        .unwrap()
        .ends_with("astronaut.png"));
    assert!(plan["frames"][1]["name"]
        .as_str()
        .unwrap()
        .ends_with("t1.png"));
    assert_eq!(plan["prompts"][1], "add a hat to {image1}");
    run(
        &[
            "edit",
            "--session",
            &s,
            "--instruction",
            "add a hat to {image}",
        ],
        &dir.path().join("t2.png"),
    );
    let turns: Vec<Value> = std::fs::read_to_string(&session)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1]["inputs"][0], turns[0]["output"]);
    assert_eq!(turns[1]["seed"], 1);
    assert!(turns[0]["instruction"]
        .as_str()
        .unwrap()
        .contains("pixel art"));
}

fn batch_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn batches_shard_continue_past_failures_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, m) = (input("astronaut.png"), input("mask.png"));
    let job = |out: &str, extra: Value| {
        let mut j = serde_json::json!({"image": a, "mask": m, "output": d.join(out)});
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        j.to_string()
    };
    let lines = [
        job("0.png", serde_json::json!({"seed": 7})),
        job("1.png", serde_json::json!({"mask": d.join("missing.png")})),
        job("2.png", serde_json::json!({"prompt": "roses", "steps": 2})),
        "not json".to_string(),
    ];
    let batch = d.join("jobs.jsonl");
    std::fs::write(&batch, lines.join("\n") + "\n").unwrap();
    let base = |cmd: &mut Command| {
        cmd.args(["inpaint", "--config", &config(), "--steps", "1", "--batch"])
            .arg(&batch);
    };

    // Shard 0/2 runs jobs 0 and 2.
    let mut cmd = ace();
    base(&mut cmd);
    let out = cmd.args(["--shard", "0/2"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = batch_lines(&out.stdout);
    assert_eq!(
        r.iter()
            .map(|l| l["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 2]
    );
    assert_eq!(r[0]["seed"], 7);
    assert!(r[1]["instruction"].as_str().unwrap().contains("roses"));
    assert!(r[0]["seconds"]["generate"].as_f64().is_some());
    assert!(d.join("0.png").is_file() && d.join("2.png").is_file());

    // The whole batch, resumed: 0 and 2 are skipped, 1 and 3 fail, exit 1.
    let mut cmd = ace();
    base(&mut cmd);
    let out = cmd.arg("--resume").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = batch_lines(&out.stdout);
    assert_eq!(r.len(), 4);
    assert!(r[0]["skipped"].is_string() && r[2]["skipped"].is_string());
    assert_eq!(
        (r[1]["ok"].clone(), r[3]["ok"].clone()),
        (Value::Bool(false), Value::Bool(false))
    );
    assert!(r[1]["error"].as_str().unwrap().contains("missing.png"));
    assert_eq!(r[3]["line"], 4);
    assert!(!d.join("1.png").exists());

    // A dry run of the batch loads no weights and plans every job.
    let mut cmd = ace();
    base(&mut cmd);
    let out = cmd.arg("--dry-run").output().unwrap();
    let r = batch_lines(&out.stdout);
    assert_eq!(r[2]["plan"]["steps"], 2);
    assert_eq!(r[0]["plan"]["frames"][0]["task"], "inpainting");
}

#[test]
fn analyze_with_the_ace_engine_keeps_sizes_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("depth.png");
    let a = input("coffee.png");
    let assert = ace()
        .args([
            "analyze",
            "depth",
            &a,
            "--engine",
            "ace",
            "--ace-config",
            &config(),
        ])
        .args([
            "--ace-steps",
            "1",
            "--json",
            "--mask",
            &input("mask.png"),
            "-o",
        ])
        .arg(&out)
        .assert()
        .success();
    let line: Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(line["parameters"]["engine"], "ace");
    assert!(line["parameters"]["instruction"]
        .as_str()
        .unwrap()
        .contains("{image}"));
    let (got, photo) = (
        image::open(&out).unwrap().to_rgb8(),
        image::open(&a).unwrap().to_rgb8(),
    );
    assert_eq!(got.dimensions(), photo.dimensions());
    // Outside the (resized) mask the photo is kept bit for bit.
    let mask = image::imageops::resize(
        &image::open(input("mask.png")).unwrap().to_luma8(),
        80,
        64,
        image::imageops::FilterType::Nearest,
    );
    let outside = mask.pixels().filter(|p| p[0] <= 128).count();
    assert!(outside > 0);
    let kept = got
        .pixels()
        .zip(photo.pixels())
        .zip(mask.pixels())
        .filter(|((g, p), m)| m[0] <= 128 && g == p)
        .count();
    assert_eq!(kept, outside);
}
