//! What is done to a generated image before it is written, when asked: the model works at the
//! size its token budget allows (multiples of 16), so `keep_size` resizes the result back to
//! the target input's exact size; `paste_back` then keeps every pixel outside the target's
//! mask exactly as it was (inpainting, and outpainting, whose mask is the new area), feathering
//! the seam inside the mask only; `alpha` makes an RGBA layer (a decoupled subject), its alpha
//! the target's mask or, without one, keyed from the plain background the model paints.

use super::{InputImage, Request};
use crate::{Error, Result};
use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};

/// The resampling filter of `keep_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    Nearest,
    Bilinear,
    Bicubic,
    #[default]
    Lanczos3,
}

impl std::str::FromStr for ResizeFilter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "nearest" => ResizeFilter::Nearest,
            "bilinear" | "triangle" => ResizeFilter::Bilinear,
            "bicubic" | "catmullrom" => ResizeFilter::Bicubic,
            "lanczos" | "lanczos3" => ResizeFilter::Lanczos3,
            other => {
                return Err(Error::invalid(
                    "resize filter",
                    format!("'{other}' (expected nearest, bilinear, bicubic or lanczos3)"),
                ))
            }
        })
    }
}

impl ResizeFilter {
    fn filter(self) -> image::imageops::FilterType {
        use image::imageops::FilterType as F;
        match self {
            ResizeFilter::Nearest => F::Nearest,
            ResizeFilter::Bilinear => F::Triangle,
            ResizeFilter::Bicubic => F::CatmullRom,
            ResizeFilter::Lanczos3 => F::Lanczos3,
        }
    }
}

/// The finishing a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Finish {
    /// Resize the output to the target input's size with this filter.
    pub keep_size: Option<ResizeFilter>,
    /// Keep the target input's pixels outside its mask (the output at its size), the seam
    /// feathered inside the mask over this many pixels.
    pub paste_back: Option<f32>,
    /// Write RGBA.
    pub alpha: bool,
}

/// The input the output takes its size and mask from, if any.
fn target(req: &Request) -> Option<&InputImage> {
    req.history
        .iter()
        .map(|t| &t.input)
        .chain(req.images.iter())
        .nth(req.tar_index)
}

/// `generated` finished as `req.finish` asks.
pub fn apply(req: &Request, generated: RgbImage) -> Result<DynamicImage> {
    let f = req.finish;
    let target = target(req);
    let mut rgb = generated;
    let size_of_target = f.keep_size.is_some() || f.paste_back.is_some();
    if let (Some(t), true) = (target, size_of_target) {
        let (w, h) = t.image.dimensions();
        if rgb.dimensions() != (w, h) {
            let filter = f.keep_size.unwrap_or_default().filter();
            rgb = image::imageops::resize(&rgb, w, h, filter);
        }
    }
    if let (Some(blur), Some(t)) = (f.paste_back, target) {
        if let Some(mask) = &t.mask {
            rgb = paste_back(&t.image, mask, &rgb, blur)?;
        }
    }
    if !f.alpha {
        return Ok(DynamicImage::ImageRgb8(rgb));
    }
    let alpha = match target.and_then(|t| t.mask.as_ref()) {
        Some(mask) => image::imageops::resize(
            mask,
            rgb.width(),
            rgb.height(),
            image::imageops::FilterType::Triangle,
        ),
        None => keyed_alpha(&rgb),
    };
    let rgba = RgbaImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let p = rgb.get_pixel(x, y);
        image::Rgba([p[0], p[1], p[2], alpha.get_pixel(x, y)[0]])
    });
    Ok(DynamicImage::ImageRgba8(rgba))
}

/// `original` outside `mask` (values above 128 mark the edited area, as the pipeline reads
/// masks) and `generated` inside it, blended over a Gaussian feather of `blur` pixels that
/// stays inside the mask: every pixel outside it is the original's exactly.
pub fn paste_back(
    original: &RgbImage,
    mask: &GrayImage,
    generated: &RgbImage,
    blur: f32,
) -> Result<RgbImage> {
    let dims = original.dimensions();
    if mask.dimensions() != dims || generated.dimensions() != dims {
        return Err(Error::invalid(
            "paste-back",
            format!(
                "image {:?}, mask {:?} and output {:?} differ in size",
                dims,
                mask.dimensions(),
                generated.dimensions()
            ),
        ));
    }
    let hard = GrayImage::from_fn(dims.0, dims.1, |x, y| {
        image::Luma([if mask.get_pixel(x, y)[0] > 128 {
            255
        } else {
            0
        }])
    });
    let soft = if blur > 0.0 {
        imageproc::filter::gaussian_blur_f32(&hard, blur)
    } else {
        hard.clone()
    };
    Ok(RgbImage::from_fn(dims.0, dims.1, |x, y| {
        if hard.get_pixel(x, y)[0] == 0 {
            return *original.get_pixel(x, y);
        }
        let a = f32::from(soft.get_pixel(x, y)[0]) / 255.0;
        let (o, g) = (original.get_pixel(x, y), generated.get_pixel(x, y));
        image::Rgb(std::array::from_fn(|c| {
            (f32::from(o[c]) * (1.0 - a) + f32::from(g[c]) * a).round() as u8
        }))
    }))
}

/// An alpha matte keyed from a plain background: the border's median colour is the
/// background; pixels within 12 levels of it are transparent, beyond 48 opaque.
fn keyed_alpha(rgb: &RgbImage) -> GrayImage {
    let (w, h) = rgb.dimensions();
    let mut border: Vec<[u8; 3]> = (0..w)
        .flat_map(|x| [(x, 0), (x, h.saturating_sub(1))])
        .chain((0..h).flat_map(|y| [(0, y), (w.saturating_sub(1), y)]))
        .map(|(x, y)| rgb.get_pixel(x, y).0)
        .collect();
    let median = |c: usize, v: &mut Vec<[u8; 3]>| -> f32 {
        v.sort_by_key(|p| p[c]);
        v.get(v.len() / 2).map_or(255.0, |p| f32::from(p[c]))
    };
    let bg = [0, 1, 2].map(|c| median(c, &mut border));
    GrayImage::from_fn(w, h, |x, y| {
        let p = rgb.get_pixel(x, y);
        let d = (0..3)
            .map(|c| (f32::from(p[c]) - bg[c]).powi(2))
            .sum::<f32>()
            .sqrt();
        image::Luma([(((d - 12.0) / 36.0).clamp(0.0, 1.0) * 255.0).round() as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paste_back_keeps_the_outside_exactly_and_feathers_inside() {
        let original = RgbImage::from_fn(20, 10, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let generated = RgbImage::from_pixel(20, 10, image::Rgb([200, 100, 50]));
        let mask = GrayImage::from_fn(20, 10, |x, _| image::Luma([if x >= 10 { 255 } else { 0 }]));
        for blur in [0.0, 3.0] {
            let out = paste_back(&original, &mask, &generated, blur).unwrap();
            for (x, y, p) in out.enumerate_pixels() {
                if x < 10 {
                    assert_eq!(p, original.get_pixel(x, y), "outside at {x},{y}");
                }
            }
            let deep = out.get_pixel(19, 5);
            assert!(
                deep[0].abs_diff(200) <= 1 && deep[2].abs_diff(50) <= 1,
                "{deep:?}"
            );
            let seam = out.get_pixel(10, 5);
            if blur > 0.0 {
                assert!(seam[0] < 200 && seam[0] > 10, "feathered: {seam:?}");
            } else {
                assert_eq!(seam, &image::Rgb([200, 100, 50]));
            }
        }
        let small = GrayImage::new(4, 4);
        assert!(paste_back(&original, &small, &generated, 0.0).is_err());
    }

    #[test]
    fn keyed_alpha_clears_the_plain_background() {
        let img = RgbImage::from_fn(16, 16, |x, y| {
            if (4..12).contains(&x) && (4..12).contains(&y) {
                image::Rgb([20, 40, 200])
            } else {
                image::Rgb([250, 250, 250])
            }
        });
        let a = keyed_alpha(&img);
        assert_eq!(a.get_pixel(0, 0)[0], 0);
        assert_eq!(a.get_pixel(8, 8)[0], 255);
        assert_eq!(
            "Bicubic".parse::<ResizeFilter>().unwrap(),
            ResizeFilter::Bicubic
        );
        assert!("sinc".parse::<ResizeFilter>().is_err());
    }
}
