//! The Emu Edit test set in its own layout (facebook/emu_edit_test_set: parquet files with the
//! input `image` as encoded bytes, `instruction`, `task`, `idx`, `input_caption`,
//! `output_caption`). Emu Edit has no target images: its L1, CLIP-I (CLIPimg) and DINO compare
//! the edited image with the input, so the input stands as the ground truth of each sample; the
//! edited image for row `idx` is `<generated>/<idx>.<image extension>`. Input images are
//! written once into a cache folder (`ACE_CACHE_DIR`, else `$XDG_CACHE_HOME/ace`, else
//! `~/.cache/ace`) so that every metric reads them as files.

use super::manifest::Sample;
use crate::{Error, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use std::path::{Path, PathBuf};

/// One row of the test set, as far as scoring needs it.
#[derive(Debug, Default, PartialEq)]
struct Row {
    idx: Option<i64>,
    image: Option<Vec<u8>>,
    instruction: Option<String>,
    task: Option<String>,
    input_caption: Option<String>,
    output_caption: Option<String>,
}

/// The samples of the Emu Edit test set at `test` (a parquet file, or a folder searched for
/// them) whose edited image is in `generated`, in row order.
pub fn samples(generated: &Path, test: &Path) -> Result<Vec<Sample>> {
    let files = parquet_files(test)?;
    let mut out = Vec::new();
    for file in &files {
        let images = crate::cache::root()?
            .join("emu-edit")
            .join(cache_name(file)?);
        for row in read_rows(file)? {
            let bad = |message: String| Error::Config {
                path: file.clone(),
                message,
            };
            let idx = row.idx.ok_or_else(|| bad("a row has no idx".into()))?;
            // A row without its edit is a sample whose file is missing (reported, left out of
            // the means), not a sample left out.
            let edited = find_image(generated, &idx.to_string())
                .unwrap_or_else(|| generated.join(format!("{idx}.png")));
            let input = match &row.image {
                Some(bytes) => {
                    let ext = image::guess_format(bytes)
                        .ok()
                        .and_then(|f| f.extensions_str().first().copied())
                        .unwrap_or("png");
                    let path = images.join(format!("{idx}.{ext}"));
                    if !path.is_file() {
                        crate::output::create_dir(&images)?;
                        crate::output::write(&path, bytes)?;
                    }
                    Some(path)
                }
                None => None,
            };
            out.push(Sample {
                index: out.len(),
                ground_truth: input.clone(),
                input,
                generated: Some(edited),
                input_caption: row.input_caption,
                output_caption: row.output_caption,
                instruction: row.instruction,
                task: row.task,
                ..Sample::default()
            });
        }
    }
    if !out
        .iter()
        .any(|s| s.generated.as_ref().is_some_and(|g| g.is_file()))
    {
        return Err(Error::invalid(
            generated.display().to_string(),
            format!(
                "no edited image named by an idx of the {} Emu Edit file(s) under {} \
                 (expected <idx>.png)",
                files.len(),
                test.display()
            ),
        ));
    }
    Ok(out)
}

/// `test` itself, or the `.parquet` files under it (sorted).
fn parquet_files(test: &Path) -> Result<Vec<PathBuf>> {
    if !test.is_dir() {
        return Ok(vec![test.to_path_buf()]);
    }
    let pattern = format!(
        "{}/**/*.parquet",
        glob::Pattern::escape(&test.to_string_lossy())
    );
    let mut files: Vec<PathBuf> = glob::glob(&pattern)
        .map_err(|e| Error::invalid(test.display().to_string(), e.to_string()))?
        .filter_map(|p| p.ok())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid(
            test.display().to_string(),
            "no .parquet files in this folder",
        ));
    }
    Ok(files)
}

/// The rows of one parquet file.
fn read_rows(file: &Path) -> Result<Vec<Row>> {
    let bad = |e: parquet::errors::ParquetError| Error::Config {
        path: file.to_path_buf(),
        message: format!("not a readable parquet file: {e}"),
    };
    let handle = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let reader = SerializedFileReader::new(handle).map_err(bad)?;
    let mut rows = Vec::new();
    for record in reader.get_row_iter(None).map_err(bad)? {
        let record = record.map_err(bad)?;
        let mut row = Row::default();
        for (name, field) in record.get_column_iter() {
            match (name.as_str(), field) {
                ("idx", Field::Long(v)) => row.idx = Some(*v),
                ("idx", Field::Int(v)) => row.idx = Some(i64::from(*v)),
                ("image", Field::Group(image)) => {
                    row.image = image
                        .get_column_iter()
                        .find_map(|(n, f)| match (n.as_str(), f) {
                            ("bytes", Field::Bytes(b)) => Some(b.data().to_vec()),
                            _ => None,
                        })
                }
                ("instruction", Field::Str(s)) => row.instruction = Some(s.clone()),
                ("task", Field::Str(s)) => row.task = Some(s.clone()),
                ("input_caption", Field::Str(s)) => row.input_caption = Some(s.clone()),
                ("output_caption", Field::Str(s)) => row.output_caption = Some(s.clone()),
                _ => {}
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// `<dir>/<stem>.<ext>` for the first image extension ([`crate::inputs::IMAGE_EXTENSIONS`])
/// that exists.
fn find_image(dir: &Path, stem: &str) -> Option<PathBuf> {
    crate::inputs::IMAGE_EXTENSIONS
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .find(|p| p.is_file())
}

/// A folder name for one parquet file's images: its stem and size, so a changed file does not
/// reuse stale images.
fn cache_name(file: &Path) -> Result<String> {
    let size = std::fs::metadata(file)
        .map_err(|e| Error::io(file, e))?
        .len();
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    Ok(format!("{stem}-{size}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/emu-edit/test-00000-of-00001.parquet"
    );

    #[test]
    fn reads_the_rows_of_the_test_set_layout() {
        let rows = read_rows(Path::new(FIXTURE)).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].idx, Some(1));
        assert_eq!(rows[1].task.as_deref(), Some("color"));
        assert_eq!(rows[1].instruction.as_deref(), Some("make the car red"));
        assert_eq!(rows[1].input_caption.as_deref(), Some("a blue car"));
        assert_eq!(rows[1].output_caption.as_deref(), Some("a red car"));
        let input = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/eval-tiny/data/1_input.png"
        ))
        .unwrap();
        assert_eq!(rows[1].image.as_deref(), Some(&input[..]));
    }

    #[test]
    fn a_file_that_is_not_parquet_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("test.parquet");
        std::fs::write(&file, b"not parquet").unwrap();
        let err = read_rows(&file).unwrap_err().to_string();
        assert!(
            err.contains("test.parquet") && err.contains("parquet"),
            "{err}"
        );
    }
}
