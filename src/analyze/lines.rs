//! Dark-line measures shared by `scribble`, `contour` and `doodle`: how much darker each pixel
//! is than its surroundings in its darkest-differing channel (the difference of Gaussians of
//! ControlNet's `scribble_xdog` and `lineart_standard`), and `lineart_standard`'s median
//! normalisation of it.

use super::blur;
use crate::Result;
use image::RgbImage;

/// `min over channels (G_large - G_small)` clipped to 0..=255, in float32, where `G_s` is the
/// image blurred with sigma `s` and `sigma_small == 0` means the image itself.
pub(crate) fn darkness(img: &RgbImage, sigma_small: f64, sigma_large: f64) -> Result<Vec<f32>> {
    let small = if sigma_small > 0.0 {
        blur::rgb_f32(img, sigma_small)?
    } else {
        img.pixels().map(|p| p.0.map(f32::from)).collect()
    };
    let large = blur::rgb_f32(img, sigma_large)?;
    Ok(small
        .iter()
        .zip(&large)
        .map(|(s, l)| {
            (0..3)
                .map(|c| l[c] - s[c])
                .fold(f32::INFINITY, f32::min)
                .clamp(0.0, 255.0)
        })
        .collect())
}

/// `lineart_standard`'s normalisation: divide by the median of the values above `threshold`
/// (at least `floor`), scale by `gain`, clip and truncate to 8 bits.
pub(crate) fn normalise(values: &[f32], threshold: f64, floor: f64, gain: f64) -> Vec<u8> {
    let threshold = threshold as f32;
    let dark: Vec<f32> = values.iter().copied().filter(|&v| v > threshold).collect();
    let norm = median(dark).map_or(floor as f32, |m| m.max(floor as f32));
    let gain = gain as f32;
    values
        .iter()
        .map(|&v| (v / norm * gain).clamp(0.0, 255.0) as u8)
        .collect()
}

/// NumPy's median in float32: the middle value, or the mean of the two middle values.
fn median(mut values: Vec<f32>) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f32::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_numpys() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn normalise_maps_the_median_to_the_gain() {
        let v = [0.0, 4.0, 10.0, 20.0, 30.0, 100.0];
        // values above 8: 10, 20, 30, 100 -> median 25.
        assert_eq!(
            normalise(&v, 8.0, 16.0, 127.0),
            vec![0, 20, 50, 101, 152, 255]
        );
        // nothing above the threshold: the floor divides.
        assert_eq!(normalise(&[4.0], 8.0, 16.0, 127.0), vec![31]);
    }

    #[test]
    fn darkness_is_high_on_a_dark_line_only() {
        let img = RgbImage::from_fn(21, 21, |c, _| {
            image::Rgb(if c == 10 { [0, 0, 0] } else { [200, 200, 200] })
        });
        let d = darkness(&img, 0.0, 3.0).unwrap();
        assert!(d[10 * 21 + 10] > 100.0);
        assert_eq!(d[10 * 21 + 2], 0.0);
    }
}
