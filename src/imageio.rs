//! Reading and writing images with errors that name the file. Reading: `-` is standard input;
//! a truncated or corrupt file is an error in every format (JPEG decoders fill a missing end
//! with grey, so a JPEG must end its last scan with the end-of-image marker); a photo's EXIF
//! orientation is applied as Pillow's `exif_transpose` does unless the process turned it off.
//! Writing: the format follows the file's extension, and goes through [`crate::output`].

use crate::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether EXIF orientation is applied when reading (the `--ignore-orientation` flag clears it).
static APPLY_ORIENTATION: AtomicBool = AtomicBool::new(true);

/// Sets whether images are turned upright as their EXIF orientation says (the default).
pub fn set_apply_orientation(apply: bool) {
    APPLY_ORIENTATION.store(apply, Ordering::SeqCst);
}

/// Largest image file read from standard input: 1 GiB.
const MAX_STDIN_IMAGE_BYTES: u64 = 1 << 30;

/// Reads a whole image file, or standard input for `-` (once per run).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        return crate::inputs::read_stdin(MAX_STDIN_IMAGE_BYTES);
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Decodes an image from a file (`-`: standard input); the error names the file and says what
/// is wrong with it (missing, empty, unknown format, truncated or corrupt data).
pub fn load(path: &Path) -> Result<DynamicImage> {
    decode(&read_bytes(path)?, path)
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
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(fail(
            "truncated JPEG (its data ends before the end-of-image marker)".into(),
        ));
    }
    let corrupt = |e: image::ImageError| fail(format!("cannot decode {format:?} image: {e}"));
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let orientation = if APPLY_ORIENTATION.load(Ordering::SeqCst) {
        decoder.orientation().ok()
    } else {
        None
    };
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img)
}

/// Whether the last scan of a JPEG is followed by its end-of-image marker (FF D9). Inside
/// entropy-coded data every FF byte is stuffed, so the markers cannot occur there by chance.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let after = last_scan.map_or(bytes, |i| &bytes[i..]);
    after.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Loads an image as 8-bit RGB (alpha dropped, grey expanded).
pub fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    Ok(load(path)?.to_rgb8())
}

/// The output formats `ace` writes, each named by its file extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
    Bmp,
    Tiff,
    Gif,
}

/// Every format with the extensions that name it (the first is the one written).
const FORMATS: [(OutputFormat, &[&str]); 6] = [
    (OutputFormat::Png, &["png"]),
    (OutputFormat::Jpeg, &["jpg", "jpeg", "jfif"]),
    (OutputFormat::Webp, &["webp"]),
    (OutputFormat::Bmp, &["bmp"]),
    (OutputFormat::Tiff, &["tif", "tiff"]),
    (OutputFormat::Gif, &["gif"]),
];

/// The extensions of every format, for messages.
fn known_extensions() -> String {
    FORMATS
        .iter()
        .flat_map(|(_, e)| e.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

impl OutputFormat {
    /// The format a path's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        FORMATS
            .iter()
            .find(|(_, names)| names.contains(&ext.as_str()))
            .map(|(f, _)| *f)
    }

    /// The format of the output file `path`: the one its extension names (an explicit
    /// `format` that contradicts it is an error), else `format`, else PNG for a name without
    /// an extension. An extension that names no image format is an error unless `format` is
    /// given. Standard output (`-`) and devices take `format` or PNG.
    pub fn for_output(path: &Path, format: Option<OutputFormat>) -> Result<Self> {
        let file = crate::output::Target::of(path).is_file();
        let Some(ext) = path.extension().filter(|_| file) else {
            return Ok(format.unwrap_or(OutputFormat::Png));
        };
        match (Self::from_path(path), format) {
            (Some(named), Some(asked)) if named != asked => Err(Error::output(
                path,
                format!(
                    "--format {} contradicts the extension .{}",
                    asked.extension(),
                    ext.to_string_lossy()
                ),
            )),
            (Some(named), _) => Ok(named),
            (None, Some(asked)) => Ok(asked),
            (None, None) => Err(Error::output(
                path,
                format!(
                    "the extension .{} names no image format ({}); give --format or another name",
                    ext.to_string_lossy(),
                    known_extensions()
                ),
            )),
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        FORMATS
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("png", |(_, e)| e[0])
    }

    fn image_format(self) -> ImageFormat {
        match self {
            OutputFormat::Png => ImageFormat::Png,
            OutputFormat::Jpeg => ImageFormat::Jpeg,
            OutputFormat::Webp => ImageFormat::WebP,
            OutputFormat::Bmp => ImageFormat::Bmp,
            OutputFormat::Tiff => ImageFormat::Tiff,
            OutputFormat::Gif => ImageFormat::Gif,
        }
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        OutputFormat::from_path(Path::new(&format!("x.{s}"))).ok_or_else(|| {
            Error::invalid(
                "format",
                format!("'{s}' (expected one of {})", known_extensions()),
            )
        })
    }
}

/// Encodes an image in `format` (JPEG drops alpha, quality 95; GIF is 8-bit RGBA).
pub fn encode(img: &DynamicImage, format: OutputFormat) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let res = match format {
        OutputFormat::Jpeg => {
            let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95).encode_image(&rgb)
        }
        OutputFormat::Gif => {
            DynamicImage::ImageRgba8(img.to_rgba8()).write_to(&mut buf, format.image_format())
        }
        OutputFormat::Webp if img.color().has_alpha() => {
            DynamicImage::ImageRgba8(img.to_rgba8()).write_to(&mut buf, format.image_format())
        }
        OutputFormat::Webp => {
            DynamicImage::ImageRgb8(img.to_rgb8()).write_to(&mut buf, format.image_format())
        }
        OutputFormat::Png | OutputFormat::Bmp | OutputFormat::Tiff => {
            img.write_to(&mut buf, format.image_format())
        }
    };
    res.map_err(|e| Error::invalid("image encoding", e.to_string()))?;
    Ok(buf.into_inner())
}

/// Encodes and writes an image (see [`crate::output::write`]) in `format`, else the one the
/// path names ([`OutputFormat::for_output`]).
pub fn save(img: &DynamicImage, path: &Path, format: Option<OutputFormat>) -> Result<()> {
    let format = OutputFormat::for_output(path, format)?;
    crate::output::write(path, &encode(img, format)?)
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
    fn truncated_files_are_errors() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([x as u8 * 7, y as u8 * 5, 7])
        }));
        for format in [OutputFormat::Png, OutputFormat::Jpeg] {
            let bytes = encode(&img, format).unwrap();
            decode(&bytes, Path::new("whole")).unwrap();
            let cut = &bytes[..bytes.len() / 2];
            let msg = decode(cut, Path::new("cut.img")).unwrap_err().to_string();
            assert!(msg.contains("cut.img"), "{msg}");
        }
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
    fn every_format_round_trips_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(6, 4, image::Rgb([9; 3])));
        for ext in ["png", "jpg", "webp", "bmp", "tif", "gif"] {
            let path = dir.path().join(format!("out.{ext}"));
            save(&img, &path, None).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let found = image::guess_format(&bytes).unwrap();
            assert_eq!(
                OutputFormat::from_path(&path).unwrap().image_format(),
                found
            );
            assert_eq!(load(&path).unwrap().width(), 6);
        }
    }

    #[test]
    fn formats_follow_extensions_and_contradictions_are_errors() {
        assert_eq!("jpg".parse::<OutputFormat>().unwrap(), OutputFormat::Jpeg);
        assert_eq!(
            OutputFormat::from_path(Path::new("a/b.WEBP")),
            Some(OutputFormat::Webp)
        );
        assert!("xyz".parse::<OutputFormat>().is_err());
        let f = |p: &str, asked| OutputFormat::for_output(Path::new(p), asked);
        assert_eq!(f("x.tiff", None).unwrap(), OutputFormat::Tiff);
        assert_eq!(f("noext", None).unwrap(), OutputFormat::Png);
        assert_eq!(
            f("noext", Some(OutputFormat::Bmp)).unwrap(),
            OutputFormat::Bmp
        );
        assert!(f("x.jpg", Some(OutputFormat::Png)).is_err());
        assert!(f("x.xyz", None).is_err());
        assert_eq!(
            f("x.xyz", Some(OutputFormat::Gif)).unwrap(),
            OutputFormat::Gif
        );
        assert_eq!(f("-", None).unwrap(), OutputFormat::Png);
    }
}
