//! What clients send: multipart forms read into text fields and files (bounded in parts and
//! text sizes), and uploaded images decoded with their size checked from the header before any
//! pixel is allocated. An upload is only ever kept or served as the PNG re-encoded from its
//! decoded pixels, never as the bytes that came in. Masks come in ACE's convention (white, above
//! 128, marks the region) or OpenAI's (transparent pixels mark the area to edit).

use super::error::{ApiError, ApiResult};
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::Multipart;
use image::{DynamicImage, GrayImage};
use std::path::Path;

/// Longest side of an uploaded image.
pub const MAX_UPLOAD_SIDE: u32 = 8192;
/// Most pixels of an uploaded image (32 megapixels).
pub const MAX_UPLOAD_PIXELS: u64 = 1 << 25;
/// Most parts of one form.
const MAX_PARTS: usize = 64;
/// Longest text field.
const MAX_TEXT_BYTES: usize = 64 << 10;

/// A multipart form: its text fields and its files, each with its field name (`image[]` is
/// read as `image`), in the order sent.
#[derive(Debug, Default)]
pub struct Form {
    pub texts: Vec<(String, String)>,
    pub files: Vec<(String, Bytes)>,
}

impl Form {
    /// The files of field `name`, in order.
    pub fn files<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Bytes> {
        self.files
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, b)| b)
    }

    /// The last value of text field `name`.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.texts
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of text field `name`, in order.
    pub fn texts(&self, name: &str) -> Vec<&str> {
        self.texts
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The error of a multipart body that could not be read: too large, too slow, or malformed.
fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    match e.status().as_u16() {
        413 => ApiError::too_large(format!("request body too large: {}", e.body_text())),
        408 => ApiError::body_timeout(),
        _ => ApiError::bad_request(format!("malformed multipart body: {}", e.body_text())),
    }
}

/// Reads a whole multipart form: a part with a file name is a file, any other a text field. A
/// body that is not a multipart form is a 400.
pub async fn read_form(multipart: Result<Multipart, MultipartRejection>) -> ApiResult<Form> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!(
            "expected a multipart/form-data body: {}",
            e.body_text()
        ))
    })?;
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        if form.texts.len() + form.files.len() >= MAX_PARTS {
            return Err(ApiError::bad_request(format!(
                "more than {MAX_PARTS} parts in the form"
            )));
        }
        let name = field.name().unwrap_or_default();
        let name = name.strip_suffix("[]").unwrap_or(name).to_string();
        let is_file = field.file_name().is_some();
        let bytes = field.bytes().await.map_err(multipart_error)?;
        if is_file {
            form.files.push((name, bytes));
        } else {
            if bytes.len() > MAX_TEXT_BYTES {
                return Err(ApiError::bad_param(
                    &name,
                    format!("longer than {MAX_TEXT_BYTES} bytes"),
                ));
            }
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::bad_param(&name, "not UTF-8 text"))?;
            form.texts.push((name, text));
        }
    }
    Ok(form)
}

/// Decodes an uploaded image of field `what`; its size is read from the header and checked
/// against [`MAX_UPLOAD_SIDE`] and [`MAX_UPLOAD_PIXELS`] before decoding.
pub fn decode(bytes: &[u8], what: &str) -> ApiResult<DynamicImage> {
    let format = image::guess_format(bytes)
        .map_err(|_| ApiError::bad_param(what, "not an image (unknown format)"))?;
    let (w, h) = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| ApiError::bad_param(what, format!("unreadable {format:?} image: {e}")))?;
    if w == 0 || h == 0 {
        return Err(ApiError::bad_param(what, format!("{w}x{h} is empty")));
    }
    if w.max(h) > MAX_UPLOAD_SIDE || u64::from(w) * u64::from(h) > MAX_UPLOAD_PIXELS {
        return Err(ApiError::too_large(format!(
            "{what}: {w}x{h} is too large (at most {MAX_UPLOAD_SIDE} pixels a side and \
             {MAX_UPLOAD_PIXELS} pixels in all)"
        )));
    }
    Ok(crate::imageio::decode(bytes, Path::new(what))?)
}

/// A mask in ACE's convention: PIL's grey of the image, white (above 128) where the edit goes.
pub fn ace_mask(img: &DynamicImage) -> GrayImage {
    crate::pipeline::luma_pil(&img.to_rgb8())
}

/// A mask in the OpenAI convention (transparent pixels, alpha below 128, mark the area to
/// edit) as an ACE mask; `None` when the image has no alpha channel.
pub fn alpha_mask(img: &DynamicImage) -> Option<GrayImage> {
    if !img.color().has_alpha() {
        return None;
    }
    let rgba = img.to_rgba8();
    Some(GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        image::Luma([if rgba.get_pixel(x, y)[3] < 128 {
            255
        } else {
            0
        }])
    }))
}

/// The PNG of an image.
pub fn png(img: &DynamicImage) -> crate::Result<Vec<u8>> {
    crate::imageio::encode(img, crate::imageio::OutputFormat::Png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(img: DynamicImage) -> Vec<u8> {
        png(&img).unwrap()
    }

    #[test]
    fn images_decode_and_absurd_sizes_are_refused_from_the_header() {
        let ok = png_of(DynamicImage::new_rgb8(8, 4));
        assert_eq!(decode(&ok, "image").unwrap().width(), 8);
        // A 9000x1 grey PNG is tiny on the wire but over the side limit.
        let wide = png_of(DynamicImage::new_luma8(9000, 1));
        let e = decode(&wide, "image").unwrap_err();
        assert_eq!(e.status, 413, "{e:?}");
        // Its header reads, its pixels do not.
        let e = decode(&ok[..ok.len() - 20], "mask").unwrap_err();
        assert_eq!(e.status, 400, "{e:?}");
        assert!(decode(b"hello", "image")
            .unwrap_err()
            .message
            .contains("not an image"));
    }

    #[test]
    fn transparent_pixels_mark_the_openai_edit_area() {
        let mut rgba = image::RgbaImage::from_pixel(4, 2, image::Rgba([10, 20, 30, 255]));
        rgba.put_pixel(1, 0, image::Rgba([0, 0, 0, 0]));
        let m = alpha_mask(&DynamicImage::ImageRgba8(rgba)).unwrap();
        assert_eq!(m.get_pixel(1, 0)[0], 255);
        assert_eq!(m.pixels().filter(|p| p[0] == 255).count(), 1);
        assert!(alpha_mask(&DynamicImage::new_rgb8(2, 2)).is_none());
        let white =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(2, 2, image::Rgb([255; 3])));
        assert_eq!(ace_mask(&white).get_pixel(0, 0)[0], 255);
    }
}
