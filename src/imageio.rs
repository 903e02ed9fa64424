//! Reading and writing images with errors that name the file, and atomic writes (temp file in
//! the destination folder, then rename) so that a failed run never leaves a partial output.

use crate::{Error, Result};
use image::{DynamicImage, ImageFormat};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Decodes an image from a file; the error names the file and says what is wrong with it
/// (missing, empty, unknown format, truncated or corrupt data).
pub fn load(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, path)
}

/// Decodes an image held in memory (stdin, an archive member); `name` is used in errors.
pub fn decode(bytes: &[u8], name: &Path) -> Result<DynamicImage> {
    let fail = |message: String| Error::Image {
        path: name.to_path_buf(),
        message,
    };
    if bytes.is_empty() {
        return Err(fail("empty file (zero bytes)".into()));
    }
    let format =
        image::guess_format(bytes).map_err(|_| fail("not an image (unknown format)".into()))?;
    image::load_from_memory_with_format(bytes, format)
        .map_err(|e| fail(format!("cannot decode {format:?} image: {e}")))
}

/// Loads an image as 8-bit RGB (alpha dropped, grey expanded).
pub fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    Ok(load(path)?.to_rgb8())
}

/// The output formats `ace` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    /// The format a path's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "png" => Some(OutputFormat::Png),
            "jpg" | "jpeg" => Some(OutputFormat::Jpeg),
            "webp" => Some(OutputFormat::Webp),
            _ => None,
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Webp => "webp",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            OutputFormat::Png => ImageFormat::Png,
            OutputFormat::Jpeg => ImageFormat::Jpeg,
            OutputFormat::Webp => ImageFormat::WebP,
        }
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        OutputFormat::from_path(Path::new(&format!("x.{s}")))
            .ok_or_else(|| Error::invalid("format", format!("'{s}' (expected png, jpg or webp)")))
    }
}

/// Encodes an image in `format` (JPEG drops alpha; quality 95).
pub fn encode(img: &DynamicImage, format: OutputFormat) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let res = match format {
        OutputFormat::Jpeg => {
            let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95).encode_image(&rgb)
        }
        OutputFormat::Webp if img.color().has_alpha() => {
            DynamicImage::ImageRgba8(img.to_rgba8()).write_to(&mut buf, format.image_format())
        }
        OutputFormat::Webp => {
            DynamicImage::ImageRgb8(img.to_rgb8()).write_to(&mut buf, format.image_format())
        }
        OutputFormat::Png => img.write_to(&mut buf, format.image_format()),
    };
    res.map_err(|e| Error::invalid("image encoding", e.to_string()))?;
    Ok(buf.into_inner())
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".ace-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Encodes and writes an image atomically, in the format `format` or else the one the path's
/// extension names (PNG when it names none).
pub fn save(img: &DynamicImage, path: &Path, format: Option<OutputFormat>) -> Result<()> {
    let format = format
        .or_else(|| OutputFormat::from_path(path))
        .unwrap_or(OutputFormat::Png);
    write_atomic(path, &encode(img, format)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        let msg = load(&empty).unwrap_err().to_string();
        assert!(
            msg.contains("empty.png") && msg.contains("empty file"),
            "{msg}"
        );

        let text = dir.path().join("notes.png");
        std::fs::write(&text, b"hello, not an image").unwrap();
        let msg = load(&text).unwrap_err().to_string();
        assert!(
            msg.contains("notes.png") && msg.contains("unknown format"),
            "{msg}"
        );

        let missing = dir.path().join("missing.png");
        assert!(load(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing.png"));
    }

    #[test]
    fn truncated_png_is_an_error() {
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(32, 32, image::Rgb([9, 8, 7])));
        let bytes = encode(&img, OutputFormat::Png).unwrap();
        let cut = &bytes[..bytes.len() / 2];
        let msg = decode(cut, Path::new("cut.png")).unwrap_err().to_string();
        assert!(msg.contains("cut.png") && msg.contains("decode"), "{msg}");
    }

    #[test]
    fn save_is_atomic_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.png");
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(5, 3, |x, y| {
            image::Rgb([x as u8 * 40, y as u8 * 80, 7])
        }));
        save(&img, &path, None).unwrap();
        assert_eq!(load(&path).unwrap().to_rgb8(), img.to_rgb8());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn formats_parse_from_names_and_paths() {
        assert_eq!("jpg".parse::<OutputFormat>().unwrap(), OutputFormat::Jpeg);
        assert_eq!(
            OutputFormat::from_path(Path::new("a/b.WEBP")),
            Some(OutputFormat::Webp)
        );
        assert!("gif".parse::<OutputFormat>().is_err());
    }
}
