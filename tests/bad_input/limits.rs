//! Crashes and hangs: absurd sizes are refused before anything is allocated (item 7); YAML and
//! JSON inputs are limited in depth and size (item 8).

use crate::common::*;
use std::time::{Duration, Instant};

/// A usage error: exit 2, one line naming `what`, no abort.
fn refused(cmd: &mut assert_cmd::Command, what: &[&str]) {
    let out = code(cmd, 2);
    let err = one_line_naming(&out, what);
    assert!(!err.contains("memory allocation"), "{err}");
}

/// Item 7: sizes a user passes (generation width and height, mask sizes, outpainting borders,
/// ratio and scale, analyzer sizes) are checked before allocating.
#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    for side in ["100000", "50000"] {
        refused(
            tiny_run(&[
                "generate",
                "--instruction",
                "x",
                "--width",
                side,
                "--height",
                side,
            ])
            .arg("-o")
            .arg(dir.path().join("x.png")),
            &["output size", "16384"],
        );
    }
    refused(
        ace()
            .args(["data", "masks", "--size", "100000x100000", "--kind", "box"])
            .args(["--count", "1", "-o"])
            .arg(dir.path().join("masks")),
        &["100000x100000", "16384"],
    );
    assert!(!dir.path().join("masks").exists());
    for extend in [
        &["--left", "4000000000"][..],
        &["--scale", "1e9"],
        &["--ratio", "1000000:1"],
    ] {
        refused(
            tiny_run(&["outpaint", "--dry-run", "--image"])
                .arg(input("coffee"))
                .args(extend),
            &["outpaint"],
        );
    }
    refused(
        ace()
            .args(["analyze", "depth", "--size", "100000", "--model"])
            .arg(root().join("tests/fixtures/dnn/depth.onnx"))
            .arg(input("coffee"))
            .arg("-o")
            .arg(dir.path().join("d.png")),
        &["--size", "4096"],
    );
}

/// Item 8: a YAML nested 100k levels deep (flow or block) is refused at once, naming the file;
/// so is a config larger than 16 MiB.
#[test]
fn deep_or_huge_yaml_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000;
    let flow = dir.path().join("flow.yaml");
    std::fs::write(
        &flow,
        format!("NAME: x\nMODEL: {}{}\n", "[".repeat(n), "]".repeat(n)),
    )
    .unwrap();
    let block = dir.path().join("block.yaml");
    std::fs::write(&block, format!("{}image: a.png\n", "- ".repeat(n))).unwrap();
    let cases: Vec<(assert_cmd::Command, &std::path::Path)> = vec![
        {
            let mut c = ace();
            c.args(["generate", "--instruction", "x", "--dry-run", "--config"])
                .arg(&flow);
            (c, &flow)
        },
        {
            let mut c = ace();
            c.args(["train", "--config"]).arg(&flow);
            (c, &flow)
        },
        {
            let mut c = tiny_run(&["edit", "--instruction", "x", "--dry-run", "--image"]);
            c.arg(input("coffee")).arg("--history").arg(&block);
            (c, &block)
        },
    ];
    for (mut cmd, file) in cases {
        let start = Instant::now();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        refused(&mut cmd, &[&name, "nested deeper than 64 levels"]);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }

    let huge = dir.path().join("huge.yaml");
    let mut text = std::fs::read_to_string(tiny_config()).unwrap();
    text.push_str(&format!("# {}\n", "x".repeat(17 << 20)));
    std::fs::write(&huge, text).unwrap();
    refused(
        ace()
            .args(["generate", "--instruction", "x", "--dry-run", "--config"])
            .arg(&huge),
        &["huge.yaml", "16 MiB"],
    );
}
