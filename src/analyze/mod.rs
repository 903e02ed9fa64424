//! The paper's low-level visual analysis operations (appendix B.2): each turns a photograph
//! into a condition image (edges, grey, mosaic, degradation, scribble, contour, doodle,
//! segmentation, depth, pose), globally or regionally inside a mask.
//!
//! Every operation implements [`Operation`]; [`apply`] adds the regional behaviour shared by all
//! of them: inside the mask the condition, outside it the input, bit for bit.

mod blur;
pub mod canny;
mod check;
mod components;
pub mod contour;
pub mod cv;
pub mod degrade;
pub mod depth;
pub mod dnn;
pub mod doodle;
#[cfg(test)]
mod fixtures;
pub mod gray;
mod lines;
pub mod mosaic;
pub mod pose;
pub mod scribble;
pub mod segment;
pub mod skeleton;
#[cfg(test)]
pub(crate) mod testing;

pub use canny::Canny;
pub use contour::Contour;
pub use degrade::Degrade;
pub use depth::Depth;
pub use doodle::Doodle;
pub use gray::Gray;
pub use mosaic::Mosaic;
pub use pose::Pose;
pub use scribble::Scribble;
pub use segment::Segment;

use crate::{Error, Result};
use image::{GrayImage, RgbImage};

/// One low-level analysis operation with its parameters fixed.
pub trait Operation: Send + Sync {
    /// The operation's name, as on the command line (`canny`, `gray`, ...).
    fn name(&self) -> &'static str;
    /// The parameters in effect, for machine-readable reports.
    fn parameters(&self) -> serde_json::Value;
    /// Computes the condition image of a whole RGB image: RGB, the input's size.
    fn apply(&self, image: &RgbImage) -> Result<RgbImage>;
}

/// Applies `op` to `image`, globally or, with a mask, only inside it: mask pixels above 128 are
/// inside; a mask of another size is resized nearest-neighbour first.
pub fn apply(op: &dyn Operation, image: &RgbImage, mask: Option<&GrayImage>) -> Result<RgbImage> {
    let out = op.apply(image)?;
    if out.dimensions() != image.dimensions() {
        return Err(Error::invalid(
            op.name(),
            format!(
                "produced {:?} for an input of {:?}",
                out.dimensions(),
                image.dimensions()
            ),
        ));
    }
    match mask {
        None => Ok(out),
        Some(mask) => Ok(composite(
            image,
            &out,
            &inside(mask, image.width(), image.height()),
        )),
    }
}

/// The mask at `width` x `height` (nearest-neighbour when resized) as a yes/no per pixel.
pub fn inside(mask: &GrayImage, width: u32, height: u32) -> Vec<bool> {
    let mask = if mask.dimensions() == (width, height) {
        std::borrow::Cow::Borrowed(mask)
    } else {
        std::borrow::Cow::Owned(image::imageops::resize(
            mask,
            width,
            height,
            image::imageops::FilterType::Nearest,
        ))
    };
    mask.pixels().map(|p| p.0[0] > 128).collect()
}

/// `inner` where `inside` holds, `outer` elsewhere.
fn composite(outer: &RgbImage, inner: &RgbImage, inside: &[bool]) -> RgbImage {
    let mut out = outer.clone();
    for ((o, i), &m) in out.pixels_mut().zip(inner.pixels()).zip(inside) {
        if m {
            *o = *i;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regional_keeps_outside_bit_for_bit_and_resizes_the_mask() {
        let img = RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8 * 10, y as u8 * 20, 3]));
        // A 4x2 mask whose left half is inside: scaled to 8x4 it covers columns 0..4.
        let mask = GrayImage::from_fn(4, 2, |x, _| image::Luma([if x < 2 { 255 } else { 0 }]));
        let out = apply(&testing::Invert("invert"), &img, Some(&mask)).unwrap();
        for (x, y, p) in out.enumerate_pixels() {
            let q = img.get_pixel(x, y);
            if x < 4 {
                assert_eq!(p.0, [255 - q.0[0], 255 - q.0[1], 255 - q.0[2]]);
            } else {
                assert_eq!(p, q);
            }
        }
    }

    #[test]
    fn threshold_is_strictly_above_128() {
        let mask = GrayImage::from_raw(3, 1, vec![128, 129, 255]).unwrap();
        assert_eq!(inside(&mask, 3, 1), vec![false, true, true]);
    }
}
