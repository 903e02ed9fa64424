//! Input preparation as the reference's `process_edit_image`: centre crop to an aspect ratio of
//! at most 4, a scale that keeps the frame within the DiT's token budget (sizes multiples of
//! 16), Pillow's bicubic for the image and nearest for the mask, the mask thresholded at 128
//! (an empty mask means "everything"), pixels to [-1, 1] and, for inpainting tasks, the masked
//! pixels blanked to -1.

use crate::resize::{resize_bicubic, resize_nearest};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use image::{GrayImage, RgbImage};

/// Largest aspect ratio kept; longer images are centre-cropped to it.
const MAX_ASPECT_RATIO: f64 = 4.0;
/// Sizes are multiples of this (VAE factor 8 times DiT patch 2).
const SIZE_MULTIPLE: usize = 16;
/// Tasks whose masked pixels are blanked before encoding.
const INPAINTING_TASKS: &[&str] = &["inpainting", "Try On", "Inpainting"];

/// One prepared frame: pixels `[3, H, W]` in [-1, 1] and mask `[1, H, W]` of 0/1, float32.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub pixels: Tensor,
    pub mask: Tensor,
}

impl PreparedImage {
    /// `(H, W)` in pixels.
    pub fn size(&self) -> Result<(usize, usize)> {
        let (_, h, w) = self.pixels.dims3()?;
        Ok((h, w))
    }
}

/// torchvision's `center_crop` offsets: `int(round((size - crop) / 2))`, halves to even.
fn crop_offset(size: u32, crop: u32) -> u32 {
    ((f64::from(size) - f64::from(crop)) / 2.0).round_ties_even() as u32
}

/// Crops an image of `(w, h)` to at most `MAX_ASPECT_RATIO`: the crop box `(x, y, w, h)`.
fn aspect_crop(w: u32, h: u32) -> (u32, u32, u32, u32) {
    let (fw, fh) = (f64::from(w), f64::from(h));
    if fh / fw > MAX_ASPECT_RATIO {
        let ch = (MAX_ASPECT_RATIO * fw) as u32;
        (crop_offset(w, w), crop_offset(h, ch), w, ch)
    } else if fw / fh > MAX_ASPECT_RATIO {
        let cw = (MAX_ASPECT_RATIO * fh) as u32;
        (crop_offset(w, cw), crop_offset(h, h), cw, h)
    } else {
        (0, 0, w, h)
    }
}

/// The frame size `(H, W)` for an image of `(H, W)` under a budget of `max_seq_len` 16x16
/// patches: `int(H * scale) // 16 * 16` with `scale = min(1, sqrt(budget / patches))`.
pub fn budget_size(h: usize, w: usize, max_seq_len: usize) -> (usize, usize) {
    let d = SIZE_MULTIPLE as f64;
    let patches = (h as f64 / d) * (w as f64 / d);
    let scale = (max_seq_len as f64 / patches).sqrt().min(1.0);
    let fit = |v: usize| (v as f64 * scale) as usize / SIZE_MULTIPLE * SIZE_MULTIPLE;
    (fit(h), fit(w))
}

/// Prepares one input image with its optional mask for `task`; `name` names it in errors.
pub fn prepare_image(
    image: &RgbImage,
    mask: Option<&GrayImage>,
    task: &str,
    max_seq_len: usize,
    name: &str,
    device: &Device,
) -> Result<PreparedImage> {
    let empty;
    let mask = match mask {
        Some(m) => m,
        None => {
            empty = GrayImage::new(image.width(), image.height());
            &empty
        }
    };
    let (x, y, w, h) = aspect_crop(image.width(), image.height());
    let image = image::imageops::crop_imm(image, x, y, w, h).to_image();
    let (mx, my, mw, mh) = aspect_crop(mask.width(), mask.height());
    let mask = image::imageops::crop_imm(mask, mx, my, mw, mh).to_image();

    let (rh, rw) = budget_size(h as usize, w as usize, max_seq_len);
    if rh == 0 || rw == 0 {
        return Err(Error::invalid(
            "image",
            format!(
                "{name}: {w}x{h} is too small (each side needs at least {SIZE_MULTIPLE} pixels)"
            ),
        ));
    }
    let image = resize_bicubic(&image, rw as u32, rh as u32);
    let mask = resize_nearest(&mask, rw as u32, rh as u32);

    let mut mask_values: Vec<f32> = mask
        .as_raw()
        .iter()
        .map(|&v| if v > 128 { 1.0 } else { 0.0 })
        .collect();
    if mask_values.iter().all(|&v| v == 0.0) {
        mask_values.iter_mut().for_each(|v| *v = 1.0);
    }
    let blank = INPAINTING_TASKS.contains(&task);
    let plane = rh * rw;
    let mut pixels = vec![0f32; 3 * plane];
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            let v = (f32::from(px[c]) / 255.0 - 0.5) / 0.5;
            pixels[c * plane + i] = if blank && mask_values[i] == 1.0 {
                -1.0
            } else {
                v
            };
        }
    }
    Ok(PreparedImage {
        pixels: Tensor::from_vec(pixels, (3, rh, rw), device)?,
        mask: Tensor::from_vec(mask_values, (1, rh, rw), device)?,
    })
}

/// torch's `interpolate(mask[None], scale_factor=1/factor, mode="nearest-exact")`: output
/// pixel i reads input pixel `floor((i + 0.5) * factor)`.
pub fn mask_to_latent(mask: &Tensor, factor: usize) -> Result<Tensor> {
    let (_, h, w) = mask.dims3()?;
    let pick = |size: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..size / factor)
            .map(|i| (((i as f64 + 0.5) * factor as f64) as usize).min(size - 1) as u32)
            .collect();
        Ok(Tensor::new(idx, mask.device())?)
    };
    Ok(mask
        .index_select(&pick(h)?, 1)?
        .index_select(&pick(w)?, 2)?)
}

/// PIL's `convert("L")` for RGB: ITU-R 601-2 luma in 16-bit fixed point.
pub fn luma_pil(img: &RgbImage) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y);
        let v = u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471;
        image::Luma([((v + 0x8000) >> 16) as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_sizes_follow_the_reference() {
        assert_eq!(budget_size(128, 96, 1024), (128, 96));
        assert_eq!(budget_size(512, 512, 1024), (512, 512));
        // 1000x750: scale sqrt(1024 / 2929.6875) = 0.5912 -> int(591.2)//16*16, int(443.4)//16*16
        assert_eq!(budget_size(1000, 750, 1024), (576, 432));
        assert_eq!(budget_size(100, 90, 1024), (96, 80));
        assert_eq!(budget_size(2048, 2048, 4096), (1024, 1024));
    }

    #[test]
    fn long_images_are_centre_cropped_to_ratio_four() {
        assert_eq!(aspect_crop(100, 500), (0, 50, 100, 400));
        assert_eq!(aspect_crop(501, 100), (50, 0, 400, 100));
        // (1001 - 400) / 2 = 300.5 rounds to even
        assert_eq!(aspect_crop(1001, 100), (300, 0, 400, 100));
        assert_eq!(aspect_crop(300, 100), (0, 0, 300, 100));
    }

    #[test]
    fn masks_threshold_and_default_to_ones() {
        let dev = Device::Cpu;
        let img = RgbImage::from_pixel(32, 16, image::Rgb([255, 0, 128]));
        let p = prepare_image(&img, None, "", 1024, "x", &dev).unwrap();
        assert_eq!(p.size().unwrap(), (16, 32));
        assert_eq!(p.mask.sum_all().unwrap().to_scalar::<f32>().unwrap(), 512.0);
        let px = p.pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!((px[0], px[512]), (1.0, -1.0));
        assert!((px[1024] - ((128.0f32 / 255.0 - 0.5) / 0.5)).abs() < 1e-7);

        let mask = GrayImage::from_fn(32, 16, |x, _| image::Luma([if x < 8 { 129 } else { 128 }]));
        let p = prepare_image(&img, Some(&mask), "inpainting", 1024, "x", &dev).unwrap();
        let m = p.mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(m.iter().sum::<f32>(), 8.0 * 16.0);
        let px = p.pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!((px[0], px[8]), (-1.0, 1.0));
        assert!(
            prepare_image(&RgbImage::new(8, 8), None, "", 1024, "tiny.png", &dev)
                .unwrap_err()
                .to_string()
                .contains("tiny.png")
        );
    }

    #[test]
    fn latent_masks_sample_block_centres() {
        let dev = Device::Cpu;
        let m = Tensor::arange(0f32, 256.0, &dev)
            .unwrap()
            .reshape((1, 16, 16))
            .unwrap();
        let l = mask_to_latent(&m, 8).unwrap();
        assert_eq!(l.dims(), &[1, 2, 2]);
        let v = l.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            v,
            vec![
                4.0 * 16.0 + 4.0,
                4.0 * 16.0 + 12.0,
                12.0 * 16.0 + 4.0,
                12.0 * 16.0 + 12.0
            ]
        );
    }

    #[test]
    fn luma_matches_pil_weights() {
        let img = RgbImage::from_pixel(1, 1, image::Rgb([255, 128, 0]));
        // PIL: (255*19595 + 128*38470 + 0x8000) >> 16 = 151
        assert_eq!(luma_pil(&img).get_pixel(0, 0)[0], 151);
    }
}
