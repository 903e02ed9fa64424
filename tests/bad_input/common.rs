//! Helpers of the bad-input suite: the binary, the tiny model's fixtures, small images, and
//! reading what a run left behind.

use assert_cmd::Command;
use std::path::{Path, PathBuf};
use std::process::Output;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

pub fn tiny() -> PathBuf {
    root().join("tests/fixtures/ace-tiny")
}

/// The tiny model's config.
pub fn tiny_config() -> PathBuf {
    tiny().join("model/ace_tiny.yaml")
}

/// An input photo of the tiny fixtures (astronaut 96x128, chelsea 128x96, coffee 80x64; mask
/// is astronaut's).
pub fn input(name: &str) -> PathBuf {
    tiny().join("inputs").join(format!("{name}.png"))
}

/// The binary on the CPU, its prompt cache in the test's own folder.
pub fn ace() -> Command {
    let mut cmd = Command::cargo_bin("ace").unwrap();
    cmd.env(
        "ACE_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ace-cache"),
    );
    cmd.args(["--device", "cpu"]);
    cmd
}

/// `ace <sub> --config tiny --steps 1 ...` of a generation subcommand: `words` are the
/// subcommand's names, then its flags.
pub fn tiny_run(words: &[&str]) -> Command {
    let flags = words
        .iter()
        .position(|w| w.starts_with('-'))
        .unwrap_or(words.len());
    let mut cmd = ace();
    cmd.args(&words[..flags])
        .arg("--config")
        .arg(tiny_config())
        .args(["--steps", "1"])
        .args(&words[flags..]);
    cmd
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` and checks its exit code; returns its output.
pub fn code(cmd: &mut Command, expected: i32) -> Output {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(expected),
        "{cmd:?}\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Checks that stderr is one line naming `what` (and no panic).
pub fn one_line_naming(out: &Output, what: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    for w in what {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A noisy RGB image (noise so that encoders cannot shrink it to nothing).
pub fn noisy(width: u32, height: u32) -> image::RgbImage {
    let mut state = 12345u32;
    image::RgbImage::from_fn(width, height, |x, y| {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let n = (state >> 16) as u8;
        image::Rgb([(x * 4) as u8 ^ n, (y * 3) as u8, n])
    })
}

/// A JPEG of `img`.
pub fn jpeg(img: &image::RgbImage) -> Vec<u8> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
        .encode_image(img)
        .unwrap();
    buf
}

/// The entries of a folder, hidden ones included, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A JSON-lines file.
pub fn write_lines(path: &Path, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// The JSON lines of a command's stdout.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
