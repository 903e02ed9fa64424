//! The flags of `ace analyze degrade | scribble | contour | doodle | segment`, turned into the
//! library's operations. Defaults are shown from, and fall back to, each operation's
//! `Params::default()`.

use crate::analyze::Build;
use ace::analyze::{contour, degrade, doodle, scribble, segment, Operation};
use ace::analyze::{Contour, Degrade, Doodle, Scribble, Segment};

/// A range `LO,HI` (or one value `V`, meaning `V,V`).
fn span(s: &str) -> Result<[f64; 2], String> {
    let number = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("'{v}' is not a number"))
    };
    match s.split_once(',') {
        Some((lo, hi)) => Ok([number(lo)?, number(hi)?]),
        None => number(s).map(|v| [v, v]),
    }
}

/// A range of whole numbers `LO,HI` (or `V`).
fn whole_span<T: TryFrom<u64>>(s: &str) -> Result<[T; 2], String> {
    let [lo, hi] = span(s)?;
    let whole = |v: f64| {
        (v.fract() == 0.0 && v >= 0.0)
            .then(|| T::try_from(v as u64).ok())
            .flatten()
            .ok_or_else(|| format!("'{v}' is not a whole number in range"))
    };
    Ok([whole(lo)?, whole(hi)?])
}

fn resize_mode(s: &str) -> Result<degrade::ResizeMode, String> {
    s.parse().map_err(|e: ace::Error| e.to_string())
}

fn fill(s: &str) -> Result<segment::Fill, String> {
    s.parse().map_err(|e: ace::Error| e.to_string())
}

#[derive(Debug, clap::Args)]
pub struct DegradeArgs {
    /// Seed of every random choice: the same seed gives the same output.
    #[arg(long, default_value_t = 0, value_name = "N")]
    seed: u64,
    /// Apply the steps in the fixed order noise, resize, JPEG, blur instead of a random one.
    #[arg(long)]
    no_shuffle: bool,
    /// Noise sigma range on the 0-255 scale [default: 10,20].
    #[arg(long, value_name = "LO,HI", value_parser = span, conflicts_with = "no_noise")]
    noise: Option<[f64; 2]>,
    /// Skip the noise step.
    #[arg(long)]
    no_noise: bool,
    /// Probability that the noise is grey (the same in every channel).
    #[arg(long, default_value_t = degrade::Params::default().gray_noise_probability, value_name = "P")]
    gray_noise: f64,
    /// Down-scale factor range before scaling back up [default: 0.4,0.8].
    #[arg(long, value_name = "LO,HI", value_parser = span, conflicts_with = "no_resize")]
    scale: Option<[f64; 2]>,
    /// Skip the resize step.
    #[arg(long)]
    no_resize: bool,
    /// Resize interpolation: nearest, bilinear, bicubic, area, or random (one of the last three).
    #[arg(long, default_value = "random", value_name = "MODE", value_parser = resize_mode)]
    resize_mode: degrade::ResizeMode,
    /// JPEG quality range [default: 25,75].
    #[arg(long, value_name = "LO,HI", value_parser = whole_span::<u8>, conflicts_with = "no_jpeg")]
    jpeg: Option<[u8; 2]>,
    /// Skip the JPEG step.
    #[arg(long)]
    no_jpeg: bool,
    /// Blur kernel size range; an odd size in it is drawn [default: 7,15].
    #[arg(long, value_name = "LO,HI", value_parser = whole_span::<u32>, conflicts_with = "no_blur")]
    blur_kernel: Option<[u32; 2]>,
    /// Blur sigma range [default: 0.9,1.8].
    #[arg(long, value_name = "LO,HI", value_parser = span)]
    blur_sigma: Option<[f64; 2]>,
    /// Skip the blur step.
    #[arg(long)]
    no_blur: bool,
}

/// `value` unless the step is off; the default range when no value was given.
fn step<T>(off: bool, value: Option<T>, default: Option<T>) -> Option<T> {
    if off {
        None
    } else {
        value.or(default)
    }
}

impl Build for DegradeArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        let d = degrade::Params::default();
        Ok(Box::new(Degrade::new(degrade::Params {
            seed: self.seed,
            shuffle: !self.no_shuffle,
            noise_sigma: step(self.no_noise, self.noise, d.noise_sigma),
            gray_noise_probability: self.gray_noise,
            scale: step(self.no_resize, self.scale, d.scale),
            resize_mode: self.resize_mode,
            jpeg_quality: step(self.no_jpeg, self.jpeg, d.jpeg_quality),
            blur_kernel: step(self.no_blur, self.blur_kernel, d.blur_kernel),
            blur_sigma: self.blur_sigma.unwrap_or(d.blur_sigma),
        })?))
    }
}

#[derive(Debug, clap::Args)]
pub struct ScribbleArgs {
    /// Sigma of the narrow Gaussian of the XDoG.
    #[arg(long, default_value_t = scribble::Params::default().sigma_small, value_name = "S")]
    sigma_small: f64,
    /// Sigma of the wide Gaussian of the XDoG.
    #[arg(long, default_value_t = scribble::Params::default().sigma_large, value_name = "S")]
    sigma_large: f64,
    /// XDoG threshold (0-510): an edge where twice the darkest-channel difference exceeds it.
    #[arg(long, default_value_t = scribble::Params::default().xdog_threshold, value_name = "T")]
    xdog_threshold: f64,
    /// Sigma of the blur before non-maximum suppression.
    #[arg(long, default_value_t = scribble::Params::default().nms_sigma, value_name = "S")]
    nms_sigma: f64,
    /// Non-maximum suppression threshold (0-255).
    #[arg(long, default_value_t = scribble::Params::default().nms_threshold, value_name = "T")]
    nms_threshold: f64,
    /// Sigma of the blur that widens ridges into strokes.
    #[arg(long, default_value_t = scribble::Params::default().stroke_sigma, value_name = "S")]
    stroke_sigma: f64,
    /// Stroke threshold on the widened ridges (0-254).
    #[arg(long, default_value_t = scribble::Params::default().stroke_threshold, value_name = "T")]
    stroke_threshold: u8,
}

impl Build for ScribbleArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        Ok(Box::new(Scribble::new(scribble::Params {
            sigma_small: self.sigma_small,
            sigma_large: self.sigma_large,
            xdog_threshold: self.xdog_threshold,
            nms_sigma: self.nms_sigma,
            nms_threshold: self.nms_threshold,
            stroke_sigma: self.stroke_sigma,
            stroke_threshold: self.stroke_threshold,
        })?))
    }
}

#[derive(Debug, clap::Args)]
pub struct ContourArgs {
    /// Sigma of the Gaussian each pixel is compared with.
    #[arg(long, default_value_t = contour::Params::default().sigma, value_name = "S")]
    sigma: f64,
    /// Only differences above this enter the normalising median.
    #[arg(long, default_value_t = contour::Params::default().intensity_threshold, value_name = "T")]
    intensity_threshold: f64,
    /// The normalising median is at least this.
    #[arg(long, default_value_t = contour::Params::default().median_floor, value_name = "V")]
    median_floor: f64,
    /// Grey level the median difference maps to.
    #[arg(long, default_value_t = contour::Params::default().gain, value_name = "G")]
    gain: f64,
}

impl Build for ContourArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        Ok(Box::new(Contour::new(contour::Params {
            sigma: self.sigma,
            intensity_threshold: self.intensity_threshold,
            median_floor: self.median_floor,
            gain: self.gain,
        })?))
    }
}

#[derive(Debug, clap::Args)]
pub struct DoodleArgs {
    /// Sigma of the narrow Gaussian of the line strength (0 = the image itself).
    #[arg(long, default_value_t = doodle::Params::default().sigma_small, value_name = "S")]
    sigma_small: f64,
    /// Sigma of the wide Gaussian of the line strength.
    #[arg(long, default_value_t = doodle::Params::default().sigma_large, value_name = "S")]
    sigma_large: f64,
    /// Sigma of the blur before non-maximum suppression.
    #[arg(long, default_value_t = doodle::Params::default().nms_sigma, value_name = "S")]
    nms_sigma: f64,
    /// Non-maximum suppression threshold (0-255).
    #[arg(long, default_value_t = doodle::Params::default().nms_threshold, value_name = "T")]
    nms_threshold: f64,
    /// Drop strokes shorter than this fraction of the longer image side.
    #[arg(long, default_value_t = doodle::Params::default().min_stroke, value_name = "F")]
    min_stroke: f64,
    /// Sigma of the blur that widens ridges into strokes.
    #[arg(long, default_value_t = doodle::Params::default().stroke_sigma, value_name = "S")]
    stroke_sigma: f64,
    /// Stroke threshold on the widened ridges (0-254).
    #[arg(long, default_value_t = doodle::Params::default().stroke_threshold, value_name = "T")]
    stroke_threshold: u8,
}

impl Build for DoodleArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        Ok(Box::new(Doodle::new(doodle::Params {
            sigma_small: self.sigma_small,
            sigma_large: self.sigma_large,
            nms_sigma: self.nms_sigma,
            nms_threshold: self.nms_threshold,
            min_stroke: self.min_stroke,
            stroke_sigma: self.stroke_sigma,
            stroke_threshold: self.stroke_threshold,
        })?))
    }
}

#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    /// Number of colour clusters K (2-64).
    #[arg(short = 'k', long, default_value_t = segment::Params::default().regions, value_name = "K")]
    regions: u32,
    /// Mean-shift spatial radius in pixels (0 skips the filtering).
    #[arg(long, default_value_t = segment::Params::default().spatial_radius, value_name = "PX")]
    spatial_radius: f64,
    /// Mean-shift colour radius.
    #[arg(long, default_value_t = segment::Params::default().color_radius, value_name = "R")]
    color_radius: f64,
    /// Merge regions smaller than this fraction of the image into their surroundings.
    #[arg(long, default_value_t = segment::Params::default().min_area, value_name = "F")]
    min_area: f64,
    /// Most k-means iterations.
    #[arg(long, default_value_t = segment::Params::default().iterations, value_name = "N")]
    iterations: u32,
    /// Seed of the k-means++ initialisation.
    #[arg(long, default_value_t = segment::Params::default().seed, value_name = "N")]
    seed: u64,
    /// Region colours: mean (of the input over the region) or palette (fixed, per cluster).
    #[arg(long, default_value = "mean", value_name = "FILL", value_parser = fill)]
    fill: segment::Fill,
}

impl Build for SegmentArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        Ok(Box::new(Segment::new(segment::Params {
            regions: self.regions,
            spatial_radius: self.spatial_radius,
            color_radius: self.color_radius,
            min_area: self.min_area,
            iterations: self.iterations,
            seed: self.seed,
            fill: self.fill,
        })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_pairs_or_single_values() {
        assert_eq!(span("0.4,0.8"), Ok([0.4, 0.8]));
        assert_eq!(span("12"), Ok([12.0, 12.0]));
        assert!(span("a,1").is_err());
        assert_eq!(whole_span::<u8>("25,75"), Ok([25, 75]));
        assert!(whole_span::<u8>("25,300").is_err());
        assert!(whole_span::<u32>("7.5").is_err());
    }
}
