//! Grey (paper appendix B.2, "grayscale"): the luminance of the RGB image, OpenCV's
//! `cvtColor(RGB2GRAY)` (0.299 R + 0.587 G + 0.114 B in fixed point), replicated to three
//! channels so the condition image stays RGB.
//!
//! scepter's GrayAnnotator calls `cvtColor(BGR2GRAY)` on its RGB array, which weighs red 0.114
//! and blue 0.299; this is the true luminance the `ace analyze gray` specification asks for.

use super::{cv, Operation};
use crate::Result;
use image::RgbImage;
use opencv::core::Mat;
use opencv::imgproc;

/// Luminance as a three-channel grey image.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gray;

impl Operation for Gray {
    fn name(&self) -> &'static str {
        "gray"
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let mut gray = Mat::default();
        imgproc::cvt_color(
            &cv::rgb_to_mat(image)?,
            &mut gray,
            imgproc::COLOR_RGB2GRAY,
            0,
        )?;
        cv::mat_to_rgb(&gray)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::fixtures::assert_matches_opencv;

    #[test]
    fn equals_opencv_on_the_fixture_photographs() {
        assert_matches_opencv(&Gray, "gray");
    }

    #[test]
    fn weights_follow_rgb_order() {
        // Pure red, green, blue: 0.299, 0.587 and 0.114 of 255, rounded.
        let img = RgbImage::from_raw(3, 1, vec![255, 0, 0, 0, 255, 0, 0, 0, 255]).unwrap();
        let out = Gray.apply(&img).unwrap();
        let values: Vec<[u8; 3]> = out.pixels().map(|p| p.0).collect();
        assert_eq!(values, vec![[76; 3], [150; 3], [29; 3]]);
    }
}
