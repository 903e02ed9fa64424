//! Test support: the fixture photographs of `tests/fixtures/analyze/` and their expected
//! outputs, made with OpenCV-Python by `scripts/make_analyze_expected.py`.

use super::Operation;
use std::path::PathBuf;

/// The fixture photographs.
pub const PHOTOS: [&str; 4] = ["astronaut", "camera", "chelsea", "coffee"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/analyze")
}

/// Asserts that `op` gives, bit for bit, `expected/NAME.{expected}.png` on every photograph.
pub fn assert_matches_opencv(op: &dyn Operation, expected: &str) {
    for name in PHOTOS {
        let input = crate::imageio::load_rgb(&dir().join(format!("inputs/{name}.png"))).unwrap();
        let want = crate::imageio::load_rgb(&dir().join(format!("expected/{name}.{expected}.png")))
            .unwrap();
        let got = op.apply(&input).unwrap();
        assert_eq!(got.dimensions(), want.dimensions(), "{name} {expected}");
        let differing = got
            .pixels()
            .zip(want.pixels())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{name} {expected}: {differing} pixels differ from OpenCV"
        );
    }
}
