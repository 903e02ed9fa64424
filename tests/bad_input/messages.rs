//! Messages, help and manuals: one line per error (item 17), hints that name the command's own
//! flags (18), help and completions (20), man pages (21), informational lines and plots (22).

use crate::common::*;
use serde_json::{json, Value};

/// Item 17: an OS error is said once; a batch job's usage error is its one line, not clap's
/// usage text; a failed job's result names its output.
#[test]
fn errors_are_one_line_and_say_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    let runs = [
        code(
            tiny_run(&["edit", "--instruction", "x", "--dry-run", "--image"]).arg(&missing),
            2,
        ),
        code(
            ace()
                .args(["generate", "--instruction", "x", "--dry-run", "--config"])
                .arg(dir.path().join("missing.yaml")),
            2,
        ),
        code(
            tiny_run(&["edit", "--batch"]).arg(dir.path().join("missing.jsonl")),
            2,
        ),
        code(
            ace()
                .args(["eval", "--manifest"])
                .arg(dir.path().join("missing.jsonl")),
            2,
        ),
    ];
    for run in &runs {
        let err = one_line_naming(run, &["missing."]);
        assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    }

    let jobs = dir.path().join("jobs.jsonl");
    write_lines(
        &jobs,
        &[json!({"image": [input("coffee")], "instruction": "x", "bogus": 1, "output": "o.png"})],
    );
    let run = code(
        tiny_run(&["edit", "--batch"])
            .arg(&jobs)
            .current_dir(dir.path()),
        1,
    );
    let results = json_lines(&run);
    assert_eq!(results[0]["output"], "o.png");
    let error = results[0]["error"].as_str().unwrap();
    assert!(error.contains("--bogus"), "{error}");
    assert!(!error.contains('\n') && !error.contains("Usage"), "{error}");
}

/// Item 18: `control depth|pose` name `--analyzer-model` and `--analyzer-size` (which exist);
/// `analyze --engine ace` names `--ace-model-dir`.
#[test]
fn hints_name_the_commands_own_flags() {
    for kind in ["depth", "pose"] {
        let run = code(
            tiny_run(&["control", kind, "--dry-run", "--prompt", "x", "--image"])
                .arg(input("coffee")),
            2,
        );
        let err = one_line_naming(&run, &["--analyzer-model"]);
        assert!(
            !err.contains(" --model ") && !err.contains("--size "),
            "{err}"
        );
    }
    code(
        tiny_run(&["control", "depth", "--dry-run", "--prompt", "x"])
            .args([
                "--analyzer-size",
                "8",
                "--analyzer-no-normalize",
                "--analyzer-model",
            ])
            .arg(root().join("tests/fixtures/dnn/depth.onnx"))
            .arg("--image")
            .arg(input("coffee")),
        0,
    );
    let dir = tempfile::tempdir().unwrap();
    let run = code(
        ace()
            .env("HF_HOME", dir.path())
            .env_remove("ACE_MODEL_DIR")
            .args([
                "analyze",
                "canny",
                "--engine",
                "ace",
                "--ace-preset",
                "ace_0.6b_512",
            ])
            .arg(input("coffee"))
            .arg("-o")
            .arg(dir.path().join("x.png")),
        2,
    );
    let err = one_line_naming(&run, &["--ace-model-dir"]);
    assert!(!err.contains("pass --model-dir"), "{err}");
}

/// Item 20: global options under their own heading after the subcommand's; `generate` has no
/// `--history`; completions leave hidden flags out.
#[test]
fn help_shows_global_options_last_and_completions_skip_hidden_flags() {
    let run = code(ace().args(["generate", "--help"]), 0);
    let help = stdout(&run);
    let heading = help
        .find("Global options:")
        .expect("a Global options heading");
    assert!(help.find("--instruction").unwrap() < heading, "{help}");
    assert!(help.find("--quiet").unwrap() > heading, "{help}");
    assert!(!help.contains("--history"), "{help}");
    assert!(stdout(&code(ace().args(["edit", "--help"]), 0)).contains("--history"));
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&code(ace().args(["completions", shell]), 0));
        assert!(script.contains("instruction"), "{shell}");
        assert!(
            !script.contains("save-latent"),
            "{shell} offers a hidden flag"
        );
    }
}

/// Item 21: every man page has the sections, examples and footer; `ace(1)` lists only pages
/// that exist.
#[test]
fn man_pages_have_every_section_and_name_only_pages_that_exist() {
    let man = root().join("man");
    let pages = names(&man);
    for page in &pages {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        for section in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH DESCRIPTION",
            ".SH OPTIONS",
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
            ".SH FILES",
            ".SH EXAMPLES",
            ".SH \"SEE ALSO\"",
        ] {
            assert!(text.contains(section), "{page} lacks {section}");
        }
        assert!(text.contains("\"ace 0.1.0\""), "{page}: footer");
        assert!(!text.contains("help(1)"), "{page} names a help page");
        for reference in text.split("\\fB").skip(1) {
            if let Some(end) = reference.find("\\fR(1)") {
                let file = format!("{}.1", reference[..end].replace("\\-", "-"));
                assert!(
                    pages.contains(&file),
                    "{page} names {file}, which does not exist"
                );
            }
        }
    }
}

/// Item 22: informational lines only with -v (stderr is not a terminal here); --json carries
/// the same facts; the report's histograms have labelled axes.
#[test]
fn informational_lines_need_a_terminal_or_v_and_json_carries_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gray.png");
    let mut gray = ace();
    gray.args(["analyze", "gray"])
        .arg(input("coffee"))
        .arg("-o")
        .arg(&out);
    assert_eq!(stderr(&code(&mut gray, 0)), "");
    assert!(stderr(&code(gray.arg("-v"), 0)).contains("gray: 1 written"));

    let mut masks = ace();
    masks
        .args([
            "data", "masks", "--size", "16x16", "--kind", "box", "--count", "2", "-o",
        ])
        .arg(dir.path().join("m"));
    assert_eq!(stderr(&code(&mut masks, 0)), "");
    let run = code(masks.arg("--json"), 0);
    let counts: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        (counts["complete"].as_u64(), counts["seed"].as_u64()),
        (Some(2), Some(0))
    );

    let mut edit = tiny_run(&["edit", "--instruction", "x", "--image"]);
    edit.arg(input("coffee"))
        .arg("-o")
        .arg(dir.path().join("e.png"));
    let run = code(&mut edit, 0);
    assert_eq!(stderr(&run), "");
    let run = code(edit.arg("--json"), 0);
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["seed"], 0);

    let data = root().join("tests/fixtures/eval-tiny/data");
    let manifest = dir.path().join("m.jsonl");
    write_lines(
        &manifest,
        &[json!({"generated": data.join("0_gen.png"), "ground_truth": data.join("0_gt.png")})],
    );
    let report = dir.path().join("report");
    code(
        ace()
            .args(["eval", "--manifest"])
            .arg(&manifest)
            .arg("--report")
            .arg(&report),
        0,
    );
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    let marker = "data:image/svg+xml;base64,";
    let start = html.find(marker).expect("an SVG histogram") + marker.len();
    let end = start + html[start..].find('"').unwrap();
    use base64::Engine;
    let svg = base64::engine::general_purpose::STANDARD
        .decode(&html[start..end])
        .unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains(">samples<") && svg.contains("<line"), "{svg}");
}
