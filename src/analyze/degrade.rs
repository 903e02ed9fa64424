//! `degrade`: the Real-ESRGAN-style degradation chain the paper cites for its "image
//! restoration" task, as scepter's `DegradationAnnotator` runs it: Gaussian noise (grey noise
//! with probability 0.4), a down-scale and up-scale, JPEG compression through OpenCV's
//! `imencode`/`imdecode`, and a Gaussian blur, in a random order. The image is float32 in 0..=1
//! between steps and rounded to 8 bits once at the end.
//!
//! Every random choice (order, strengths, noise) comes from one ChaCha8 stream seeded with
//! `seed`, drawn on one thread, so a seed gives the same output whatever the thread count. The
//! JPEG step encodes true RGB (the reference hands OpenCV RGB arrays as if they were BGR, which
//! swaps the colour weights of the JPEG colour transform).

use super::{check, cv, Operation};
use crate::{Error, Result};
use image::RgbImage;
use opencv::core::{self, Mat, Size, Vec3f, Vector, CV_32F, CV_8U};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

/// How the resize step scales down and back up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    Nearest,
    Bilinear,
    Bicubic,
    Area,
    /// One of area, bilinear and bicubic, drawn per image (Real-ESRGAN's choice).
    Random,
}

impl std::str::FromStr for ResizeMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "nearest" => ResizeMode::Nearest,
            "bilinear" => ResizeMode::Bilinear,
            "bicubic" => ResizeMode::Bicubic,
            "area" => ResizeMode::Area,
            "random" => ResizeMode::Random,
            _ => {
                return Err(Error::invalid(
                    "resize mode",
                    format!("'{s}' (expected nearest, bilinear, bicubic, area or random)"),
                ))
            }
        })
    }
}

/// Parameters of [`Degrade`]. Each step's range is drawn from uniformly; `None` disables the
/// step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    /// Seed of every random choice.
    pub seed: u64,
    /// Apply the steps in a random order (otherwise noise, resize, JPEG, blur).
    pub shuffle: bool,
    /// Noise standard deviation on the 0..=255 scale (0..=100).
    pub noise_sigma: Option<[f64; 2]>,
    /// Probability that the noise is grey (the same in every channel).
    pub gray_noise_probability: f64,
    /// Down-scale factor before scaling back up (0.05..=1).
    pub scale: Option<[f64; 2]>,
    /// Interpolation of the resize step.
    pub resize_mode: ResizeMode,
    /// JPEG quality (1..=100).
    pub jpeg_quality: Option<[u8; 2]>,
    /// Blur kernel size; an odd size in this range is drawn (1..=31).
    pub blur_kernel: Option<[u32; 2]>,
    /// Blur sigma (0.1..=10).
    pub blur_sigma: [f64; 2],
}

impl Default for Params {
    fn default() -> Self {
        Params {
            seed: 0,
            shuffle: true,
            noise_sigma: Some([10.0, 20.0]),
            gray_noise_probability: 0.4,
            scale: Some([0.4, 0.8]),
            resize_mode: ResizeMode::Random,
            jpeg_quality: Some([25, 75]),
            blur_kernel: Some([7, 15]),
            blur_sigma: [0.9, 1.8],
        }
    }
}

/// The degradation operation.
#[derive(Debug, Clone)]
pub struct Degrade {
    params: Params,
}

impl Degrade {
    /// A degradation operation; fails on a range out of bounds or upside down.
    pub fn new(params: Params) -> Result<Self> {
        if let Some(r) = params.noise_sigma {
            check::span("noise_sigma", r, 0.0, 100.0)?;
        }
        check::within(
            "gray_noise_probability",
            params.gray_noise_probability,
            0.0,
            1.0,
        )?;
        if let Some(r) = params.scale {
            check::span("scale", r, 0.05, 1.0)?;
        }
        if let Some([lo, hi]) = params.jpeg_quality {
            check::span("jpeg_quality", [lo.into(), hi.into()], 1.0, 100.0)?;
        }
        if let Some([lo, hi]) = params.blur_kernel {
            check::span("blur_kernel", [lo.into(), hi.into()], 1.0, 31.0)?;
            if lo == hi && lo % 2 == 0 {
                return Err(Error::invalid("blur_kernel", format!("{lo} (must be odd)")));
            }
        }
        check::span("blur_sigma", params.blur_sigma, 0.1, 10.0)?;
        Ok(Degrade { params })
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Noise,
    Resize,
    Jpeg,
    Blur,
}

impl Operation for Degrade {
    fn name(&self) -> &'static str {
        "degrade"
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let p = &self.params;
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        let mut steps: Vec<Step> = [
            p.noise_sigma.map(|_| Step::Noise),
            p.scale.map(|_| Step::Resize),
            p.jpeg_quality.map(|_| Step::Jpeg),
            p.blur_kernel.map(|_| Step::Blur),
        ]
        .into_iter()
        .flatten()
        .collect();
        if p.shuffle {
            steps.shuffle(&mut rng);
        }
        let mut img = Mat::default();
        cv::rgb_to_mat(image)?.convert_to(&mut img, CV_32F, 1.0 / 255.0, 0.0)?;
        for step in steps {
            img = match step {
                Step::Noise => noise(
                    img,
                    draw(&mut rng, p.noise_sigma),
                    p.gray_noise_probability,
                    &mut rng,
                )?,
                Step::Resize => resize(&img, draw(&mut rng, p.scale), p.resize_mode, &mut rng)?,
                Step::Jpeg => {
                    let [lo, hi] = p.jpeg_quality.unwrap_or([75, 75]);
                    jpeg(&img, rng.gen_range(lo..=hi))?
                }
                Step::Blur => {
                    let [lo, hi] = p.blur_kernel.unwrap_or([7, 7]);
                    let sizes: Vec<u32> = (lo..=hi).filter(|k| k % 2 == 1).collect();
                    let size = *sizes.choose(&mut rng).unwrap_or(&lo);
                    let sigma = draw(&mut rng, Some(p.blur_sigma));
                    blur(&img, size, sigma)?
                }
            };
        }
        let mut out = Mat::default();
        img.convert_to(&mut out, CV_8U, 255.0, 0.0)?;
        cv::mat_to_rgb(&out)
    }
}

/// A uniform draw from an enabled range.
fn draw(rng: &mut ChaCha8Rng, range: Option<[f64; 2]>) -> f64 {
    let [lo, hi] = range.unwrap_or([0.0, 0.0]);
    if lo < hi {
        rng.gen_range(lo..=hi)
    } else {
        lo
    }
}

/// Adds Gaussian noise of standard deviation `sigma` / 255, grey with `gray_probability`.
fn noise(mut img: Mat, sigma: f64, gray_probability: f64, rng: &mut ChaCha8Rng) -> Result<Mat> {
    let gray = rng.gen::<f64>() < gray_probability;
    let scale = (sigma / 255.0) as f32;
    for px in img.data_typed_mut::<Vec3f>()? {
        if gray {
            let n = rng.sample::<f32, _>(StandardNormal) * scale;
            px.0 = px.0.map(|v| (v + n).clamp(0.0, 1.0));
        } else {
            px.0 =
                px.0.map(|v| (v + rng.sample::<f32, _>(StandardNormal) * scale).clamp(0.0, 1.0));
        }
    }
    Ok(img)
}

/// Scales down by `scale` and back to the original size.
fn resize(img: &Mat, scale: f64, mode: ResizeMode, rng: &mut ChaCha8Rng) -> Result<Mat> {
    let mode = match mode {
        ResizeMode::Random => *[ResizeMode::Area, ResizeMode::Bilinear, ResizeMode::Bicubic]
            .choose(rng)
            .unwrap_or(&ResizeMode::Bilinear),
        m => m,
    };
    let interpolation = match mode {
        ResizeMode::Nearest => imgproc::INTER_NEAREST,
        ResizeMode::Bilinear => imgproc::INTER_LINEAR,
        ResizeMode::Bicubic => imgproc::INTER_CUBIC,
        ResizeMode::Area | ResizeMode::Random => imgproc::INTER_AREA,
    };
    let (w, h) = (img.cols(), img.rows());
    let small_size = Size::new(
        ((f64::from(w) * scale) as i32).max(1),
        ((f64::from(h) * scale) as i32).max(1),
    );
    let (mut small, mut back) = (Mat::default(), Mat::default());
    imgproc::resize(img, &mut small, small_size, 0.0, 0.0, interpolation)?;
    imgproc::resize(&small, &mut back, Size::new(w, h), 0.0, 0.0, interpolation)?;
    clip01(back)
}

/// JPEG-compresses at `quality` with OpenCV's codec and decodes again.
fn jpeg(img: &Mat, quality: u8) -> Result<Mat> {
    let (mut bytes8, mut bgr) = (Mat::default(), Mat::default());
    img.convert_to(&mut bytes8, CV_8U, 255.0, 0.0)?;
    imgproc::cvt_color_def(&bytes8, &mut bgr, imgproc::COLOR_RGB2BGR)?;
    let mut encoded = Vector::<u8>::new();
    let options = Vector::<i32>::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, quality.into()]);
    if !imgcodecs::imencode(".jpg", &bgr, &mut encoded, &options)? {
        return Err(Error::invalid(
            "degrade",
            "OpenCV could not encode the JPEG step",
        ));
    }
    let decoded = imgcodecs::imdecode(&encoded, imgcodecs::IMREAD_COLOR)?;
    let (mut rgb, mut out) = (Mat::default(), Mat::default());
    imgproc::cvt_color_def(&decoded, &mut rgb, imgproc::COLOR_BGR2RGB)?;
    rgb.convert_to(&mut out, CV_32F, 1.0 / 255.0, 0.0)?;
    Ok(out)
}

/// An isotropic Gaussian blur with a `size` x `size` kernel.
fn blur(img: &Mat, size: u32, sigma: f64) -> Result<Mat> {
    let mut out = Mat::default();
    let k = size as i32;
    imgproc::gaussian_blur_def(img, &mut out, Size::new(k, k), sigma)?;
    Ok(out)
}

/// Values clipped to 0..=1.
fn clip01(img: Mat) -> Result<Mat> {
    let (mut low, mut out) = (Mat::default(), Mat::default());
    core::max(&img, &core::Scalar::all(0.0), &mut low)?;
    core::min(&low, &core::Scalar::all(1.0), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testing;

    fn seeded(seed: u64) -> Degrade {
        Degrade::new(Params {
            seed,
            ..Params::default()
        })
        .unwrap()
    }

    #[test]
    fn expected_outputs_by_seed() {
        for (name, seed) in [("chelsea256", 7), ("astronaut", 1)] {
            let out = seeded(seed).apply(&testing::photo(name)).unwrap();
            testing::assert_golden(&out, &format!("degrade_{name}_seed{seed}"));
        }
    }

    #[test]
    fn same_seed_same_output_different_seeds_differ() {
        let img = testing::photo("chelsea");
        let a = seeded(3).apply(&img).unwrap();
        assert_eq!(a, seeded(3).apply(&img).unwrap());
        assert_ne!(a, seeded(4).apply(&img).unwrap());
        assert_ne!(a, img);
    }

    #[test]
    fn thread_count_does_not_change_the_output() {
        let img = testing::photo("chelsea256");
        let many = seeded(11).apply(&img).unwrap();
        let previous = core::get_num_threads().unwrap();
        core::set_num_threads(1).unwrap();
        let one = seeded(11).apply(&img).unwrap();
        core::set_num_threads(previous).unwrap();
        assert_eq!(one, many);
    }

    #[test]
    fn every_step_disabled_is_the_identity() {
        let img = testing::photo("coffee");
        let op = Degrade::new(Params {
            noise_sigma: None,
            scale: None,
            jpeg_quality: None,
            blur_kernel: None,
            ..Params::default()
        })
        .unwrap();
        assert_eq!(op.apply(&img).unwrap(), img);
    }

    #[test]
    fn noise_strength_follows_its_range() {
        let img = RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
        let spread = |sigma: f64| {
            let op = Degrade::new(Params {
                noise_sigma: Some([sigma, sigma]),
                scale: None,
                jpeg_quality: None,
                blur_kernel: None,
                ..Params::default()
            })
            .unwrap();
            let out = op.apply(&img).unwrap();
            let n = out.as_raw().len() as f64;
            (out.as_raw()
                .iter()
                .map(|&v| (f64::from(v) - 128.0).powi(2))
                .sum::<f64>()
                / n)
                .sqrt()
        };
        let (low, high) = (spread(5.0), spread(20.0));
        assert!(
            (low - 5.0).abs() < 0.5 && (high - 20.0).abs() < 1.0,
            "{low} {high}"
        );
    }

    #[test]
    fn properties_and_regional() {
        testing::check_properties(&seeded(5));
    }

    #[test]
    fn rejects_bad_ranges() {
        for bad in [
            Params {
                scale: Some([0.8, 0.4]),
                ..Params::default()
            },
            Params {
                jpeg_quality: Some([0, 50]),
                ..Params::default()
            },
            Params {
                blur_kernel: Some([8, 8]),
                ..Params::default()
            },
            Params {
                noise_sigma: Some([-1.0, 5.0]),
                ..Params::default()
            },
        ] {
            assert!(Degrade::new(bad).is_err());
        }
        assert_eq!("area".parse::<ResizeMode>().unwrap(), ResizeMode::Area);
        assert!("cubic".parse::<ResizeMode>().is_err());
    }
}
