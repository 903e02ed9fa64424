//! Mosaic (paper appendix B.2, "mosaic"), scepter's ColorAnnotator: the image shrunk to
//! `side // ratio` cells a side with bicubic interpolation, then enlarged back with nearest
//! neighbour, so each cell becomes a flat block of about `ratio` pixels.

use super::{cv, Operation};
use crate::{Error, Result};
use image::RgbImage;
use opencv::core::{Mat, Size};
use opencv::imgproc;

/// The reference's ratio.
pub const RATIO: u32 = 64;

/// How the number of cells a side is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cells {
    /// `side // ratio` cells (the reference): blocks of at least `ratio` pixels.
    Ratio(u32),
    /// `ceil(side / block)` cells: blocks of at most `block` pixels.
    Block(u32),
}

impl Cells {
    /// The number of cells along a side of `side` pixels, at least one (the reference fails on
    /// images smaller than the ratio; one flat cell is the limit it tends to).
    pub fn along(self, side: u32) -> u32 {
        match self {
            Cells::Ratio(r) => side / r,
            Cells::Block(b) => side.div_ceil(b),
        }
        .max(1)
    }
}

/// Pixelation by a bicubic shrink and a nearest-neighbour enlargement.
#[derive(Debug, Clone, Copy)]
pub struct Mosaic {
    cells: Cells,
}

impl Mosaic {
    /// A mosaic whose cells are chosen by `cells` (ratio or block of at least one pixel).
    pub fn new(cells: Cells) -> Result<Self> {
        match cells {
            Cells::Ratio(0) => Err(Error::invalid("mosaic ratio", "0 (expected at least 1)")),
            Cells::Block(0) => Err(Error::invalid(
                "mosaic block",
                "0 (expected at least 1 pixel)",
            )),
            _ => Ok(Mosaic { cells }),
        }
    }
}

impl Default for Mosaic {
    fn default() -> Self {
        Mosaic {
            cells: Cells::Ratio(RATIO),
        }
    }
}

impl Operation for Mosaic {
    fn name(&self) -> &'static str {
        "mosaic"
    }

    fn parameters(&self) -> serde_json::Value {
        match self.cells {
            Cells::Ratio(r) => serde_json::json!({ "ratio": r }),
            Cells::Block(b) => serde_json::json!({ "block": b }),
        }
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let (w, h) = image.dimensions();
        let small_size = Size::new(self.cells.along(w) as i32, self.cells.along(h) as i32);
        let mut small = Mat::default();
        imgproc::resize(
            &cv::rgb_to_mat(image)?,
            &mut small,
            small_size,
            0.0,
            0.0,
            imgproc::INTER_CUBIC,
        )?;
        let mut out = Mat::default();
        imgproc::resize(
            &small,
            &mut out,
            Size::new(w as i32, h as i32),
            0.0,
            0.0,
            imgproc::INTER_NEAREST,
        )?;
        cv::mat_to_rgb(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::fixtures::assert_matches_opencv;

    #[test]
    fn equals_opencv_on_the_fixture_photographs() {
        assert_matches_opencv(&Mosaic::default(), "mosaic");
        assert_matches_opencv(&Mosaic::new(Cells::Ratio(16)).unwrap(), "mosaic-16");
    }

    #[test]
    fn cells_follow_floor_for_ratio_and_ceil_for_block() {
        assert_eq!(Cells::Ratio(64).along(256), 4);
        assert_eq!(Cells::Ratio(64).along(170), 2);
        assert_eq!(Cells::Ratio(64).along(40), 1);
        assert_eq!(Cells::Block(64).along(170), 3);
        assert_eq!(Cells::Block(10).along(100), 10);
        assert!(Mosaic::new(Cells::Ratio(0)).is_err());
        assert!(Mosaic::new(Cells::Block(0)).is_err());
    }

    #[test]
    fn blocks_are_flat() {
        let img = RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8 * 30, y as u8 * 60, 5]));
        let out = Mosaic::new(Cells::Block(4)).unwrap().apply(&img).unwrap();
        for (x, y, p) in out.enumerate_pixels() {
            assert_eq!(p, out.get_pixel(x / 4 * 4, y / 4 * 4));
        }
    }
}
