//! Image preprocessing of the embedding models, as the Hugging Face image processors do it with
//! Pillow: resize the short side (bicubic, the long side scaled and truncated), crop the centre,
//! scale to [0, 1] and normalise per channel. CLIP resizes the short side to the crop size;
//! DINO to ⌊crop × 256 / 224⌋ first.

use crate::resize::resize_bicubic;
use image::RgbImage;

/// CLIP's channel mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's channel standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// ImageNet's channel mean (DINO).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's channel standard deviation (DINO).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One model's preprocessing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// Length the short side is resized to.
    pub short_side: u32,
    /// Side of the square centre crop.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// CLIP's: short side to the model's image size, then the crop of that size.
    pub fn clip(image_size: u32) -> Self {
        Preprocess {
            short_side: image_size,
            crop: image_size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// DINO's: short side to ⌊image_size × 256 / 224⌋, then the crop of the image size.
    pub fn dino(image_size: u32) -> Self {
        Preprocess {
            short_side: image_size * 256 / 224,
            crop: image_size,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// The CHW float values of `img` (3 × crop × crop).
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let s = self.short_side;
        // transformers' get_resize_output_image_size: the long side is int(s * long / short).
        let (nw, nh) = if w <= h {
            (
                s,
                (u64::from(s) * u64::from(h) / u64::from(w).max(1)) as u32,
            )
        } else {
            (
                (u64::from(s) * u64::from(w) / u64::from(h).max(1)) as u32,
                s,
            )
        };
        let resized = resize_bicubic(img, nw.max(1), nh.max(1));
        let c = self.crop;
        let (rw, rh) = resized.dimensions();
        // Centre crop; a side shorter than the crop is padded with zeros (as transformers does).
        let left = crop_offset(rw, c);
        let top = crop_offset(rh, c);
        let plane = (c * c) as usize;
        let mut out = vec![0f32; 3 * plane];
        for y in 0..c {
            for x in 0..c {
                let (sx, sy) = (i64::from(x) + left, i64::from(y) + top);
                let inside = sx >= 0 && sy >= 0 && sx < i64::from(rw) && sy < i64::from(rh);
                for ch in 0..3 {
                    let v = if inside {
                        f32::from(resized.get_pixel(sx as u32, sy as u32)[ch]) / 255.0
                    } else {
                        0.0
                    };
                    out[ch * plane + (y * c + x) as usize] = (v - self.mean[ch]) / self.std[ch];
                }
            }
        }
        out
    }
}

/// The first kept index of a centre crop of `crop` out of `size`: `int(round((size − crop) / 2))`
/// as torchvision's `center_crop` (Python rounds halves to even).
fn crop_offset(size: u32, crop: u32) -> i64 {
    let d = i64::from(size) - i64::from(crop);
    let half = d.div_euclid(2);
    if d.rem_euclid(2) == 1 && half % 2 != 0 {
        half + 1
    } else {
        half
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_round_halves_to_even() {
        assert_eq!(crop_offset(51, 32), 10); // 9.5
        assert_eq!(crop_offset(53, 32), 10); // 10.5
        assert_eq!(crop_offset(55, 32), 12); // 11.5
        assert_eq!(crop_offset(52, 32), 10);
        assert_eq!(crop_offset(32, 32), 0);
    }

    #[test]
    fn dino_short_side_follows_the_256_224_rule() {
        assert_eq!(Preprocess::dino(224).short_side, 256);
        assert_eq!(Preprocess::dino(32).short_side, 36);
        assert_eq!(Preprocess::clip(224).short_side, 224);
    }

    #[test]
    fn constant_image_normalises_to_known_values() {
        let img = RgbImage::from_pixel(40, 20, image::Rgb([255, 0, 128]));
        let p = Preprocess::clip(8);
        let v = p.apply(&img);
        assert_eq!(v.len(), 3 * 64);
        let want = [
            (1.0 - CLIP_MEAN[0]) / CLIP_STD[0],
            (0.0 - CLIP_MEAN[1]) / CLIP_STD[1],
            (128.0 / 255.0 - CLIP_MEAN[2]) / CLIP_STD[2],
        ];
        for ch in 0..3 {
            assert!(v[ch * 64..(ch + 1) * 64]
                .iter()
                .all(|x| (x - want[ch]).abs() < 1e-6));
        }
    }
}

#[cfg(test)]
mod eval_tiny {
    //! The preprocessed pixels of tests/fixtures/eval-tiny/expected.safetensors (made with
    //! transformers and Pillow) are reproduced.
    use super::*;
    use std::path::Path;

    #[test]
    fn matches_the_expected_tensors() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval-tiny");
        let bytes = std::fs::read(root.join("expected.safetensors")).unwrap();
        let expected = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for i in 0..3 {
            let img = image::open(root.join(format!("data/{i}_gen.png")))
                .unwrap()
                .to_rgb8();
            for (key, pre) in [
                ("clip_pixels_gen", Preprocess::clip(32)),
                ("dino_pixels_gen", Preprocess::dino(32)),
            ] {
                let t = expected.tensor(&format!("{i}.{key}")).unwrap();
                assert_eq!(t.shape(), &[3, 32, 32]);
                let want: Vec<f32> = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let got = pre.apply(&img);
                let max = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(max < 1e-5, "{i}.{key}: max difference {max}");
            }
        }
    }
}
