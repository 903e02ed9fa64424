//! Pixel metrics between a generated image and its ground truth, as MagicBrush computes them:
//! the generated image is resized to the ground truth's size (Pillow bicubic), both are taken
//! to [0, 1], and L1 / L2 are the means of the absolute / squared differences over all values.
//! PSNR follows from the L2 (mean squared error); SSIM is Wang et al.'s with an 11×11 Gaussian
//! window (σ = 1.5), K1 = 0.01, K2 = 0.03, over the valid window positions, averaged over the
//! three channels.

use crate::resize::resize_bicubic;
use image::RgbImage;

/// The pixel scores of one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelScores {
    pub l1: f64,
    pub l2: f64,
    pub psnr: f64,
    /// `None` when an image side is shorter than the SSIM window.
    pub ssim: Option<f64>,
}

/// PSNR reported for identical images (their MSE is 0), in dB.
pub const PSNR_IDENTICAL: f64 = 100.0;

/// Side of the SSIM window.
const SSIM_WINDOW: usize = 11;

/// Scores `generated` against `ground_truth` (resizing `generated` to its size first).
pub fn score(generated: &RgbImage, ground_truth: &RgbImage) -> PixelScores {
    let (w, h) = ground_truth.dimensions();
    let resized;
    let generated = if generated.dimensions() == (w, h) {
        generated
    } else {
        resized = resize_bicubic(generated, w, h);
        &resized
    };
    let n = ground_truth.as_raw().len() as f64;
    let (mut l1, mut l2) = (0.0f64, 0.0f64);
    for (a, b) in generated.as_raw().iter().zip(ground_truth.as_raw()) {
        let d = (f64::from(*a) - f64::from(*b)) / 255.0;
        l1 += d.abs();
        l2 += d * d;
    }
    let (l1, l2) = (l1 / n, l2 / n);
    PixelScores {
        l1,
        l2,
        psnr: psnr(l2),
        ssim: ssim(generated, ground_truth),
    }
}

/// PSNR in dB of values in [0, 1] with mean squared error `mse`.
pub fn psnr(mse: f64) -> f64 {
    if mse <= 0.0 {
        PSNR_IDENTICAL
    } else {
        -10.0 * mse.log10()
    }
}

/// The normalised 1-D Gaussian of the SSIM window.
fn gaussian_window() -> [f64; SSIM_WINDOW] {
    let sigma = 1.5f64;
    let mut w = [0.0; SSIM_WINDOW];
    let c = (SSIM_WINDOW / 2) as f64;
    for (i, v) in w.iter_mut().enumerate() {
        *v = (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp();
    }
    let s: f64 = w.iter().sum();
    w.map(|v| v / s)
}

/// Separable valid-mode filtering of a `w`×`h` plane with `k` along both axes.
fn filter_valid(plane: &[f64], w: usize, h: usize, k: &[f64]) -> Vec<f64> {
    let n = k.len();
    let (ow, oh) = (w + 1 - n, h + 1 - n);
    let mut rows = vec![0.0; ow * h];
    for y in 0..h {
        for x in 0..ow {
            rows[y * ow + x] = (0..n).map(|i| plane[y * w + x + i] * k[i]).sum();
        }
    }
    let mut out = vec![0.0; ow * oh];
    for y in 0..oh {
        for x in 0..ow {
            out[y * ow + x] = (0..n).map(|i| rows[(y + i) * ow + x] * k[i]).sum();
        }
    }
    out
}

/// Mean SSIM of two same-sized RGB images over channels.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Option<f64> {
    let (w, h) = (a.width() as usize, a.height() as usize);
    if w < SSIM_WINDOW || h < SSIM_WINDOW || a.dimensions() != b.dimensions() {
        return None;
    }
    let k = gaussian_window();
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let mut total = 0.0;
    for c in 0..3 {
        let plane = |img: &RgbImage| -> Vec<f64> {
            img.as_raw()
                .chunks_exact(3)
                .map(|p| f64::from(p[c]) / 255.0)
                .collect()
        };
        let (x, y) = (plane(a), plane(b));
        let prod =
            |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(u, v)| u * v).collect() };
        let mx = filter_valid(&x, w, h, &k);
        let my = filter_valid(&y, w, h, &k);
        let mxx = filter_valid(&prod(&x, &x), w, h, &k);
        let myy = filter_valid(&prod(&y, &y), w, h, &k);
        let mxy = filter_valid(&prod(&x, &y), w, h, &k);
        let sum: f64 = (0..mx.len())
            .map(|i| {
                let (ux, uy) = (mx[i], my[i]);
                let vx = mxx[i] - ux * ux;
                let vy = myy[i] - uy * uy;
                let cov = mxy[i] - ux * uy;
                ((2.0 * ux * uy + c1) * (2.0 * cov + c2))
                    / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
            })
            .sum();
        total += sum / mx.len() as f64;
    }
    Some(total / 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_of_constant_images() {
        let a = RgbImage::from_pixel(16, 12, image::Rgb([255, 0, 51]));
        let b = RgbImage::from_pixel(16, 12, image::Rgb([0, 0, 0]));
        let s = score(&a, &b);
        // Per-channel differences 1, 0, 0.2.
        assert!((s.l1 - 1.2 / 3.0).abs() < 1e-12);
        assert!((s.l2 - 1.04 / 3.0).abs() < 1e-12);
        assert!((s.psnr - (-10.0 * (1.04f64 / 3.0).log10())).abs() < 1e-9);
    }

    #[test]
    fn identical_images_score_perfectly() {
        let a = RgbImage::from_fn(20, 15, |x, y| {
            image::Rgb([(x * 9) as u8, (y * 13) as u8, 7])
        });
        let s = score(&a, &a);
        assert_eq!((s.l1, s.l2, s.psnr), (0.0, 0.0, PSNR_IDENTICAL));
        assert!((s.ssim.unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ssim_of_constant_images_is_the_luminance_term() {
        // No variance: SSIM = (2ab + C1) / (a² + b² + C1) in every channel.
        let a = RgbImage::from_pixel(12, 11, image::Rgb([102, 102, 102]));
        let b = RgbImage::from_pixel(12, 11, image::Rgb([51, 51, 51]));
        let (x, y, c1) = (0.4f64, 0.2f64, 1e-4);
        let want = (2.0 * x * y + c1) / (x * x + y * y + c1);
        assert!((ssim(&a, &b).unwrap() - want).abs() < 1e-9);
        let small = RgbImage::new(10, 40);
        assert_eq!(ssim(&small, &small), None);
    }

    #[test]
    fn generated_is_resized_to_the_ground_truth() {
        let gen = RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
        let gt = RgbImage::from_pixel(20, 14, image::Rgb([10, 20, 30]));
        let s = score(&gen, &gt);
        assert_eq!((s.l1, s.l2), (0.0, 0.0));
    }
}
