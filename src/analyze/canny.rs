//! Canny edges (paper appendix B.2, "edge"): OpenCV's `Canny` on the RGB image with scepter's
//! CannyAnnotator thresholds (100, 200), the edge map replicated to three channels.

use super::{cv, Operation};
use crate::{Error, Result};
use image::RgbImage;
use opencv::core::Mat;
use opencv::imgproc;

/// The reference's low hysteresis threshold.
pub const LOW_THRESHOLD: f64 = 100.0;
/// The reference's high hysteresis threshold.
pub const HIGH_THRESHOLD: f64 = 200.0;

/// Canny edge detection with a 3x3 Sobel aperture and the L1 gradient norm (OpenCV's defaults).
#[derive(Debug, Clone, Copy)]
pub struct Canny {
    low: f64,
    high: f64,
}

impl Canny {
    /// Edges with hysteresis thresholds `low` and `high` (non-negative, finite).
    pub fn new(low: f64, high: f64) -> Result<Self> {
        for (what, v) in [("canny low threshold", low), ("canny high threshold", high)] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::invalid(
                    what,
                    format!("{v} (expected a number >= 0)"),
                ));
            }
        }
        Ok(Canny { low, high })
    }
}

impl Default for Canny {
    fn default() -> Self {
        Canny {
            low: LOW_THRESHOLD,
            high: HIGH_THRESHOLD,
        }
    }
}

impl Operation for Canny {
    fn name(&self) -> &'static str {
        "canny"
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({ "low": self.low, "high": self.high })
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let mut edges = Mat::default();
        imgproc::canny(
            &cv::rgb_to_mat(image)?,
            &mut edges,
            self.low,
            self.high,
            3,
            false,
        )?;
        cv::mat_to_rgb(&edges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::fixtures::assert_matches_opencv;

    #[test]
    fn equals_opencv_on_the_fixture_photographs() {
        assert_matches_opencv(&Canny::default(), "canny");
        assert_matches_opencv(&Canny::new(50.0, 150.0).unwrap(), "canny-50-150");
    }

    #[test]
    fn flat_image_has_no_edges_and_bad_thresholds_are_refused() {
        let flat = RgbImage::from_pixel(16, 9, image::Rgb([90, 20, 200]));
        let out = Canny::default().apply(&flat).unwrap();
        assert_eq!(out.dimensions(), (16, 9));
        assert!(out.pixels().all(|p| p.0 == [0, 0, 0]));
        assert!(Canny::new(-1.0, 10.0).is_err());
        assert!(Canny::new(1.0, f64::NAN).is_err());
    }
}
