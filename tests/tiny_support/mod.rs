//! What the integration tests on the tiny ACE model share: its fixtures (the model in the
//! official layout, inputs, and what the reference computed), and the `ace` binary on the CPU
//! with prompt embeddings cached under the tests' own folder, not in the user's home.

#![allow(dead_code)] // each test file uses its part

use assert_cmd::Command;
use std::path::{Path, PathBuf};

/// `tests/fixtures/ace-tiny`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ace-tiny")
}

/// The reference's whole-run cases (`cases.json`: inputs, prompts, settings, expected files).
pub fn cases() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `ace --device cpu`, warnings shown.
pub fn ace_with_warnings() -> Command {
    let mut cmd = Command::cargo_bin("ace").unwrap();
    cmd.env(
        "ACE_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ace-cache"),
    );
    cmd.args(["--device", "cpu"]);
    cmd
}

/// `ace --device cpu -q`.
pub fn ace() -> Command {
    let mut cmd = ace_with_warnings();
    cmd.arg("-q");
    cmd
}
