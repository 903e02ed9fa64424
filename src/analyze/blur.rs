//! Gaussian blurs as the reference annotators call them: `cv2.GaussianBlur(x, (0, 0), sigma)`
//! on float32 or uint8 arrays, so that kernel sizes, border handling (reflect-101) and OpenCV's
//! fixed-point 8-bit path are those of the reference.

use super::cv;
use crate::Result;
use image::{GrayImage, RgbImage};
use opencv::core::{Mat, Size, Vec3f, CV_32F};
use opencv::imgproc;
use opencv::prelude::*;

/// The RGB image as float32 values 0..=255, blurred with `sigma` (kernel size from sigma).
pub(crate) fn rgb_f32(img: &RgbImage, sigma: f64) -> Result<Vec<[f32; 3]>> {
    let mut f = Mat::default();
    cv::rgb_to_mat(img)?.convert_to(&mut f, CV_32F, 1.0, 0.0)?;
    let mut out = Mat::default();
    imgproc::gaussian_blur_def(&f, &mut out, Size::new(0, 0), sigma)?;
    Ok(out.data_typed::<Vec3f>()?.iter().map(|v| v.0).collect())
}

/// A float32 plane of `width` x `height`, blurred with `sigma`.
pub(crate) fn plane_f32(plane: &[f32], width: u32, height: u32, sigma: f64) -> Result<Vec<f32>> {
    let m = Mat::new_rows_cols_with_data::<f32>(height as i32, width as i32, plane)?;
    let mut out = Mat::default();
    imgproc::gaussian_blur_def(&m, &mut out, Size::new(0, 0), sigma)?;
    Ok(out.data_typed::<f32>()?.to_vec())
}

/// An 8-bit grey image blurred with `sigma` (OpenCV's bit-exact fixed-point path).
pub(crate) fn gray_u8(img: &GrayImage, sigma: f64) -> Result<GrayImage> {
    let mut out = Mat::default();
    imgproc::gaussian_blur_def(&cv::gray_to_mat(img)?, &mut out, Size::new(0, 0), sigma)?;
    cv::mat_to_gray(&out)
}
