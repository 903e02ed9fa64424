//! Input expansion for batch commands (`ace analyze`, and later `ace eval`/`ace data`): the
//! command-line operands (files, folders, glob patterns, `-` for standard input) become a sorted,
//! de-duplicated list of images, each with the name its output is derived from. Operands that
//! give no image become errors naming them, so that a batch can report them and go on.

use crate::{imageio, Error, Result};
use image::DynamicImage;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// File extensions taken as images when walking a folder or matching a glob.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif", "jfif",
];

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A file.
    File(PathBuf),
    /// Standard input (the operand `-`).
    Stdin,
}

/// One image to process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Input {
    /// Where it is read from.
    pub source: Source,
    /// Its name relative to the operand that found it (`sub/photo.jpg` for a file found in a
    /// folder operand, `photo.jpg` for a file or glob match, `stdin` for standard input): output
    /// paths keep this folder structure.
    pub relative: PathBuf,
}

impl Input {
    /// The input of a file operand, named by its file name.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let relative = path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| path.clone());
        Input {
            source: Source::File(path),
            relative,
        }
    }

    /// The standard input.
    pub fn stdin() -> Self {
        Input {
            source: Source::Stdin,
            relative: PathBuf::from("stdin"),
        }
    }

    /// The path used in messages: the file, or `-` for standard input.
    pub fn display_path(&self) -> &Path {
        match &self.source {
            Source::File(p) => p,
            Source::Stdin => Path::new("-"),
        }
    }

    /// Reads and decodes the image (any format the `image` crate decodes).
    pub fn load(&self) -> Result<DynamicImage> {
        match &self.source {
            Source::File(p) => imageio::load(p),
            Source::Stdin => imageio::load(Path::new("-")),
        }
    }
}

/// Whether standard input was read already (it can be read once per run).
static STDIN_TAKEN: AtomicBool = AtomicBool::new(false);

/// Reads standard input whole, up to `limit` bytes (more is an error), once per run: a second
/// `-` among a command's inputs is an error.
pub fn read_stdin(limit: u64) -> Result<Vec<u8>> {
    if STDIN_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(Error::invalid(
            "input",
            "- (standard input) is given twice; it can be read once",
        ));
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("-", e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::invalid(
            "input",
            format!("- (standard input): more than {} MiB", limit >> 20),
        ));
    }
    Ok(bytes)
}

/// The result of expanding operands: the images found, and one error per operand that gave none.
#[derive(Debug, Default)]
pub struct Expansion {
    /// Images, sorted, each once.
    pub inputs: Vec<Input>,
    /// Operands that name nothing readable, folders without images, globs matching nothing.
    pub errors: Vec<Error>,
    /// Whether an operand was a folder or a glob pattern, which may give any number of images
    /// (their outputs then go to a folder even when one image was found).
    pub plural: bool,
}

/// Expands command-line operands into images: `-` is standard input; an existing file is taken
/// whatever its extension (decoding tells later whether it is an image); a folder gives the
/// image files in it (and in its subfolders with `recursive`); anything else is a glob pattern.
pub fn expand(operands: &[String], recursive: bool) -> Expansion {
    let mut found = BTreeSet::new();
    let mut errors = Vec::new();
    let plural = operands
        .iter()
        .any(|o| o != "-" && (Path::new(o).is_dir() || !Path::new(o).exists()));
    for operand in operands {
        match expand_one(operand, recursive) {
            Ok(inputs) => found.extend(inputs),
            Err(e) => errors.push(e),
        }
    }
    // The same file reached through two operands is processed once.
    let mut seen = BTreeSet::new();
    let inputs = found
        .into_iter()
        .filter(|i: &Input| seen.insert(identity(&i.source)))
        .collect();
    Expansion {
        inputs,
        errors,
        plural,
    }
}

fn identity(source: &Source) -> Source {
    match source {
        Source::File(p) => Source::File(p.canonicalize().unwrap_or_else(|_| p.clone())),
        Source::Stdin => Source::Stdin,
    }
}

fn expand_one(operand: &str, recursive: bool) -> Result<Vec<Input>> {
    if operand == "-" {
        return Ok(vec![Input::stdin()]);
    }
    let path = Path::new(operand);
    if path.is_dir() {
        let inputs = walk(path, recursive)?;
        if inputs.is_empty() {
            let hint = if recursive {
                ""
            } else {
                " (use -r for subfolders)"
            };
            return Err(Error::Image {
                path: path.to_path_buf(),
                message: format!("folder without images{hint}"),
            });
        }
        return Ok(inputs);
    }
    if path.exists() {
        return Ok(vec![Input::file(path)]);
    }
    if !operand.contains(['*', '?', '[']) {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder");
        return Err(Error::io(path, missing));
    }
    // Like a shell, `*` does not match a leading dot.
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        ..Default::default()
    };
    let entries = glob::glob_with(operand, options)
        .map_err(|e| Error::invalid("glob pattern", format!("{operand}: {e}")))?;
    let mut inputs = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| Error::io(e.path().to_path_buf(), e.into()))?;
        if p.is_file() && is_image_name(&p) {
            inputs.push(Input::file(p));
        }
    }
    if inputs.is_empty() {
        return Err(Error::Image {
            path: path.to_path_buf(),
            message: "pattern matches no image file".into(),
        });
    }
    Ok(inputs)
}

/// Whether the file name has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The image files under `root` (one level, or all with `recursive`), hidden entries skipped.
fn walk(root: &Path, recursive: bool) -> Result<Vec<Input>> {
    let mut inputs = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                if recursive {
                    pending.push(path);
                }
            } else if is_image_name(&path) {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                inputs.push(Input {
                    source: Source::File(path),
                    relative,
                });
            }
        }
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    fn relatives(e: &Expansion) -> Vec<String> {
        e.inputs
            .iter()
            .map(|i| i.relative.display().to_string())
            .collect()
    }

    #[test]
    fn folders_globs_files_and_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["a.png", "b.JPG", "notes.txt", "sub/c.webp", ".hidden.png"] {
            touch(&d.join(f));
        }
        let s = |p: &str| d.join(p).display().to_string();

        let flat = expand(&[s("")], false);
        assert_eq!(relatives(&flat), ["a.png", "b.JPG"]);
        assert!(flat.errors.is_empty());

        let deep = expand(&[s("")], true);
        assert_eq!(relatives(&deep), ["a.png", "b.JPG", "sub/c.webp"]);

        let globbed = expand(&[s("*.png"), s("a.png"), "-".into()], false);
        assert_eq!(relatives(&globbed), ["a.png", "stdin"]);

        // A file named explicitly is taken whatever its extension.
        assert_eq!(relatives(&expand(&[s("notes.txt")], false)), ["notes.txt"]);
    }

    #[test]
    fn operands_without_images_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = expand(
            &[
                empty.display().to_string(),
                dir.path().join("missing.png").display().to_string(),
                dir.path().join("*.jpg").display().to_string(),
            ],
            false,
        );
        assert!(e.inputs.is_empty());
        let messages: Vec<String> = e.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 3);
        assert!(messages[0].contains("empty") && messages[0].contains("without images"));
        assert!(messages[1].contains("missing.png"));
        assert!(messages[2].contains("*.jpg") && messages[2].contains("no image"));
    }
}
