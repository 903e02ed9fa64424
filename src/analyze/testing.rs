//! Test support shared by the operations' unit tests: the fixture photographs, comparison with
//! the expected images in tests/fixtures/analyze/ops/, and the properties every operation must
//! have (size, determinism, bit-exact regional behaviour).

use super::{apply, cv, Operation};
use image::{GrayImage, RgbImage};
use opencv::core::Size;
use opencv::imgproc;
use std::path::PathBuf;

/// An operation that inverts the image, for tests of what surrounds operations (regional
/// application, pair building); it answers to the name it is given, so that a test can borrow a
/// real operation's name (and its instruction templates).
pub struct Invert(pub &'static str);

impl Operation for Invert {
    fn name(&self) -> &'static str {
        self.0
    }
    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn apply(&self, image: &RgbImage) -> crate::Result<RgbImage> {
        let mut out = image.clone();
        image::imageops::invert(&mut out);
        Ok(out)
    }
}

/// The photographs the operations are checked on: the three tiny fixture inputs and
/// `samples/chelsea.png` reduced to 256 px wide.
pub const PHOTOS: [&str; 4] = ["astronaut", "chelsea", "coffee", "chelsea256"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One of [`PHOTOS`], as RGB.
pub fn photo(name: &str) -> RgbImage {
    if name == "chelsea256" {
        let big = crate::imageio::load_rgb(&root().join("samples/chelsea.png")).unwrap();
        let h = (f64::from(big.height()) * 256.0 / f64::from(big.width())).round() as i32;
        let mut small = opencv::core::Mat::default();
        let src = cv::rgb_to_mat(&big).unwrap();
        imgproc::resize(
            &src,
            &mut small,
            Size::new(256, h),
            0.0,
            0.0,
            imgproc::INTER_AREA,
        )
        .unwrap();
        return cv::mat_to_rgb(&small).unwrap();
    }
    crate::imageio::load_rgb(&root().join(format!("tests/fixtures/ace-tiny/inputs/{name}.png")))
        .unwrap()
}

fn expected_path(name: &str) -> PathBuf {
    root().join(format!("tests/fixtures/analyze/ops/{name}.png"))
}

/// `actual` against the expected image `name` made by scripts/analyze_ops_expected.py: at most
/// `max_count` channel values may differ, each by at most `max_diff`.
pub fn assert_matches(actual: &RgbImage, name: &str, max_diff: u8, max_count: usize) {
    let expected = crate::imageio::load_rgb(&expected_path(name)).unwrap();
    assert_eq!(actual.dimensions(), expected.dimensions(), "{name}: size");
    let diffs: Vec<u8> = actual
        .as_raw()
        .iter()
        .zip(expected.as_raw())
        .map(|(a, e)| a.abs_diff(*e))
        .filter(|&d| d > 0)
        .collect();
    let worst = diffs.iter().copied().max().unwrap_or(0);
    assert!(
        worst <= max_diff && diffs.len() <= max_count,
        "{name}: {} values differ, by up to {worst} (allowed {max_count} by up to {max_diff})",
        diffs.len()
    );
}

/// `actual` against the expected image `name` this crate produced (and a person looked at);
/// with `ACE_BLESS=1` the file is (re)written instead.
pub fn assert_golden(actual: &RgbImage, name: &str) {
    let path = expected_path(name);
    if std::env::var_os("ACE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        actual.save(&path).unwrap();
        return;
    }
    assert_matches(actual, name, 0, 0);
}

/// Size and channels kept, the same output twice, and regional application bit-exact outside
/// the fixture mask and equal to the global output inside it.
pub fn check_properties(op: &dyn Operation) {
    let img = photo("astronaut");
    let mask: GrayImage =
        crate::imageio::load(&root().join("tests/fixtures/ace-tiny/inputs/mask.png"))
            .unwrap()
            .to_luma8();
    let global = op.apply(&img).unwrap();
    assert_eq!(global.dimensions(), img.dimensions(), "{}: size", op.name());
    assert_eq!(
        global.as_raw().len(),
        img.as_raw().len(),
        "{}: channels",
        op.name()
    );
    assert_eq!(
        op.apply(&img).unwrap(),
        global,
        "{}: not deterministic",
        op.name()
    );
    let regional = apply(op, &img, Some(&mask)).unwrap();
    let inside = super::inside(&mask, img.width(), img.height());
    assert!(inside.iter().any(|&m| m) && inside.iter().any(|&m| !m));
    for ((r, (i, g)), m) in regional
        .pixels()
        .zip(img.pixels().zip(global.pixels()))
        .zip(inside)
    {
        assert_eq!(r, if m { g } else { i }, "{}: regional", op.name());
    }
    assert!(op.parameters().is_object(), "{}: parameters", op.name());
}
