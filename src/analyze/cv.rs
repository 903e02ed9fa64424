//! Conversions between `image` buffers and OpenCV `Mat`s. Mats made here keep the RGB channel
//! order of the image (the reference annotators run OpenCV on RGB arrays), so colour
//! conversions must name RGB, not OpenCV's usual BGR.

use crate::{Error, Result};
use image::{GrayImage, RgbImage};
use opencv::core::{Mat, CV_8UC1, CV_8UC3};
use opencv::prelude::*;

/// An owned 8-bit 3-channel Mat holding `img` in RGB order.
pub fn rgb_to_mat(img: &RgbImage) -> Result<Mat> {
    let (w, h) = img.dimensions();
    let flat = Mat::new_rows_cols_with_data::<u8>(h as i32, (w * 3) as i32, img.as_raw())?;
    Ok(flat.reshape(3, h as i32)?.try_clone()?)
}

/// An owned 8-bit 1-channel Mat holding `img`.
pub fn gray_to_mat(img: &GrayImage) -> Result<Mat> {
    let (w, h) = img.dimensions();
    Ok(Mat::new_rows_cols_with_data::<u8>(h as i32, w as i32, img.as_raw())?.try_clone()?)
}

/// An RGB image from an 8-bit Mat with 3 channels (taken as RGB) or 1 channel (replicated).
pub fn mat_to_rgb(m: &Mat) -> Result<RgbImage> {
    let m = if m.is_continuous() {
        m.clone()
    } else {
        m.try_clone()?
    };
    let (w, h) = (m.cols() as u32, m.rows() as u32);
    let bytes = m.data_bytes()?;
    let buf = match m.typ() {
        t if t == CV_8UC3 => bytes.to_vec(),
        t if t == CV_8UC1 => bytes.iter().flat_map(|&v| [v, v, v]).collect(),
        t => {
            return Err(Error::invalid(
                "opencv image",
                format!("unsupported Mat type {t} (expected CV_8UC1 or CV_8UC3)"),
            ))
        }
    };
    RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::invalid("opencv image", "buffer size does not match its shape"))
}

/// A grey image from an 8-bit 1-channel Mat.
pub fn mat_to_gray(m: &Mat) -> Result<GrayImage> {
    if m.typ() != CV_8UC1 {
        return Err(Error::invalid(
            "opencv image",
            format!("unsupported Mat type {} (expected CV_8UC1)", m.typ()),
        ));
    }
    let m = if m.is_continuous() {
        m.clone()
    } else {
        m.try_clone()?
    };
    GrayImage::from_raw(m.cols() as u32, m.rows() as u32, m.data_bytes()?.to_vec())
        .ok_or_else(|| Error::invalid("opencv image", "buffer size does not match its shape"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_keep_pixels_and_channel_order() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let m = rgb_to_mat(&img).unwrap();
        assert_eq!((m.rows(), m.cols(), m.channels()), (5, 7, 3));
        assert_eq!(m.at_2d::<opencv::core::Vec3b>(2, 3).unwrap().0, [3, 2, 200]);
        assert_eq!(mat_to_rgb(&m).unwrap(), img);

        let g = GrayImage::from_fn(4, 3, |x, y| image::Luma([(x * 10 + y) as u8]));
        let gm = gray_to_mat(&g).unwrap();
        assert_eq!(mat_to_gray(&gm).unwrap(), g);
        assert_eq!(mat_to_rgb(&gm).unwrap().get_pixel(2, 1).0, [21, 21, 21]);
    }
}
