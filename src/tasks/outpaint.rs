//! Outpainting (appendix B.4): `{image}` on a larger canvas, extended by given borders, to an
//! aspect ratio, or by a scale, with a mask that is white over the new area. The canvas has
//! exactly the asked size (the pipeline brings it to the model's token budget, and the output
//! is brought back to it with the photo pasted in unchanged, see `pipeline::finish`), its
//! aspect ratio stays within the pipeline's limit of 4, and the frame's task is `inpainting`
//! so the new area is blank as in the reference.

use super::{input, instruction, TaskJob};
use crate::{Error, Result};
use image::{GrayImage, RgbImage};

/// The task name of the phrasings.
pub const TASK: &str = "outpainting";
/// Largest canvas aspect ratio (the pipeline centre-crops beyond it).
const MAX_ASPECT: f64 = 4.0;

/// How far to extend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Extend {
    /// Pixels added on each side: left, right, top, bottom.
    Borders {
        left: u32,
        right: u32,
        top: u32,
        bottom: u32,
    },
    /// Grow one dimension, evenly on both sides, to this width:height ratio.
    Ratio(f64, f64),
    /// Grow both dimensions by this factor, evenly on both sides.
    Scale(f64),
}

/// Borders `(left, right, top, bottom)` for an image of `w` x `h`.
pub fn borders(extend: Extend, w: u32, h: u32) -> Result<(u32, u32, u32, u32)> {
    let split = |total: u32| (total / 2, total - total / 2);
    let b = match extend {
        Extend::Borders {
            left,
            right,
            top,
            bottom,
        } => (left, right, top, bottom),
        Extend::Ratio(rw, rh) => {
            if !(rw > 0.0 && rh > 0.0 && rw.is_finite() && rh.is_finite()) {
                return Err(Error::invalid("ratio", format!("{rw}:{rh}")));
            }
            let target = rw / rh;
            let current = f64::from(w) / f64::from(h);
            if target >= current {
                let nw = (f64::from(h) * target).round() as u32;
                let (l, r) = split(nw.saturating_sub(w));
                (l, r, 0, 0)
            } else {
                let nh = (f64::from(w) / target).round() as u32;
                let (t, b) = split(nh.saturating_sub(h));
                (0, 0, t, b)
            }
        }
        Extend::Scale(f) => {
            if !(f.is_finite() && f >= 1.0) {
                return Err(Error::invalid("scale", format!("{f} (expected 1 or more)")));
            }
            let grow = |v: u32| ((f64::from(v) * f).round() as u32).saturating_sub(v);
            let (l, r) = split(grow(w));
            let (t, b) = split(grow(h));
            (l, r, t, b)
        }
    };
    if b == (0, 0, 0, 0) {
        return Err(Error::invalid(
            "outpaint",
            "nothing to extend (give borders, a ratio other than the image's, or a scale above 1)",
        ));
    }
    Ok(b)
}

/// The canvas and its mask (255 over the new area) for `image` extended by `extend`.
pub fn canvas(image: &RgbImage, extend: Extend) -> Result<(RgbImage, GrayImage)> {
    let (w, h) = image.dimensions();
    let (l, r, t, b) = borders(extend, w, h)?;
    let sum = |parts: [u32; 3]| parts.iter().map(|&v| u64::from(v)).sum::<u64>();
    let (cw, ch) = (sum([w, l, r]), sum([h, t, b]));
    crate::limits::check_size("outpaint canvas", cw, ch)?;
    let (cw, ch) = (cw as u32, ch as u32);
    let aspect = f64::from(cw.max(ch)) / f64::from(cw.min(ch));
    if aspect > MAX_ASPECT {
        return Err(Error::invalid(
            "outpaint",
            format!("a {cw}x{ch} canvas is longer than {MAX_ASPECT}:1 (the model's limit)"),
        ));
    }
    let mut out = RgbImage::new(cw, ch);
    image::imageops::replace(&mut out, image, i64::from(l), i64::from(t));
    let mask = GrayImage::from_fn(cw, ch, |x, y| {
        let inside = x >= l && x < l + w && y >= t && y < t + h;
        image::Luma([if inside { 0 } else { 255 }])
    });
    Ok((out, mask))
}

/// The outpainting job.
pub fn job(
    image: &RgbImage,
    name: &str,
    extend: Extend,
    prompt: Option<&str>,
    seed: u64,
    explicit: Option<&str>,
) -> Result<TaskJob> {
    let (canvas, mask) = canvas(image, extend)?;
    Ok(TaskJob {
        instruction: instruction(TASK, &[("caption", prompt)], seed, explicit)?,
        images: vec![input(name, canvas, Some(mask), super::inpaint::TASK)],
        tar_index: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borders_from_ratio_and_scale() {
        assert_eq!(
            borders(Extend::Ratio(16.0, 9.0), 90, 90).unwrap(),
            (35, 35, 0, 0)
        );
        assert_eq!(
            borders(Extend::Ratio(1.0, 2.0), 100, 100).unwrap(),
            (0, 0, 50, 50)
        );
        assert_eq!(borders(Extend::Scale(1.5), 64, 32).unwrap(), (16, 16, 8, 8));
        assert!(borders(Extend::Scale(1.0), 64, 32).is_err());
        assert!(borders(Extend::Ratio(1.0, 1.0), 64, 64).is_err());
    }

    #[test]
    fn canvas_places_the_photo_and_masks_the_rest() {
        let img = RgbImage::from_pixel(32, 16, image::Rgb([200, 10, 10]));
        let ext = Extend::Borders {
            left: 16,
            right: 0,
            top: 0,
            bottom: 16,
        };
        let (c, m) = canvas(&img, ext).unwrap();
        assert_eq!(c.dimensions(), (48, 32));
        assert_eq!(c.get_pixel(16, 0), &image::Rgb([200, 10, 10]));
        assert_eq!(c.get_pixel(0, 0), &image::Rgb([0, 0, 0]));
        assert_eq!(
            (
                m.get_pixel(16, 0)[0],
                m.get_pixel(15, 0)[0],
                m.get_pixel(16, 16)[0]
            ),
            (0, 255, 255)
        );
        assert_eq!(m.pixels().filter(|p| p[0] == 0).count(), 32 * 16);
    }

    #[test]
    fn canvases_keep_the_exact_ratio_and_long_ones_fail() {
        let img = RgbImage::new(600, 400);
        let (c, m) = canvas(&img, Extend::Ratio(16.0, 9.0)).unwrap();
        assert_eq!(c.dimensions(), (711, 400));
        assert_eq!(m.pixels().filter(|p| p[0] == 0).count(), 600 * 400);
        let wide = Extend::Borders {
            left: 600,
            right: 600,
            top: 0,
            bottom: 0,
        };
        assert!(canvas(&RgbImage::new(256, 256), wide)
            .unwrap_err()
            .to_string()
            .contains("4:1"));
    }
}
