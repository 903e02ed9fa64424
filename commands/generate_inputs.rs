//! Reading what a generation subcommand is given: input images with their masks and tasks,
//! masks as the reference reads them, and the earlier turns of a `--history` file. `-` reads
//! standard input (once per run). A mask must have its image's size and select something
//! (pixels above 128), in every subcommand.

use ace::pipeline::{InputImage, Turn};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One earlier turn as the history file lists it.
#[derive(Debug, serde::Deserialize)]
struct HistoryEntry {
    image: PathBuf,
    #[serde(default)]
    mask: Option<PathBuf>,
    instruction: String,
    #[serde(default)]
    task: Option<String>,
}

/// `None` for the "no mask / no task" spellings.
fn optional(v: Option<&String>) -> Option<&str> {
    v.map(String::as_str)
        .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("none"))
}

/// The value of a flag that is required except on a --batch command line (each job then
/// needs it).
pub fn need<'a, T>(value: &'a Option<T>, flag: &str) -> Result<&'a T> {
    value.as_ref().with_context(|| format!("missing {flag}"))
}

/// Reads a mask as the reference does (PIL's `convert("L")`).
pub fn read_mask(path: &Path) -> Result<image::GrayImage> {
    Ok(ace::tasks::read_mask(path)?)
}

/// Reads an input image with its optional mask (checked against the image).
pub fn read_input(image: &Path, mask: Option<&Path>, task: &str) -> Result<InputImage> {
    Ok(ace::tasks::read_input(image, mask, task)?)
}

/// Reads the images given with their positional masks and tasks.
pub fn read_inputs(
    images: &[PathBuf],
    masks: &[String],
    tasks: &[String],
) -> Result<Vec<InputImage>> {
    if masks.len() > images.len() || tasks.len() > images.len() {
        bail!(
            "{} --mask and {} --task for {} --image (they pair by position)",
            masks.len(),
            tasks.len(),
            images.len()
        );
    }
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let mask = optional(masks.get(i)).map(Path::new);
            read_input(img, mask, optional(tasks.get(i)).unwrap_or(""))
        })
        .collect()
}

/// The entries of a history file, their paths resolved against its folder (the current
/// folder for standard input).
fn history_entries(path: &Path) -> Result<Vec<HistoryEntry>> {
    let mut entries: Vec<HistoryEntry> =
        ace::textfile::yaml(path, "a history list [{image, mask?, instruction, task?}]")?;
    let base = match path.parent() {
        Some(p) if path.as_os_str() != "-" => p.to_path_buf(),
        _ => PathBuf::new(),
    };
    for e in &mut entries {
        e.image = base.join(&e.image);
        e.mask = e.mask.as_ref().map(|m| base.join(m));
    }
    Ok(entries)
}

/// The earlier turns of a history file, their images read.
pub fn read_history(path: &Path) -> Result<Vec<Turn>> {
    history_entries(path)?
        .into_iter()
        .map(|e| {
            Ok(Turn {
                input: read_input(&e.image, e.mask.as_deref(), e.task.as_deref().unwrap_or(""))?,
                instruction: e.instruction,
            })
        })
        .collect()
}

/// The history file and the images and masks it names.
pub fn history_paths(path: &Path) -> Result<Vec<PathBuf>> {
    if path.as_os_str() == "-" {
        // Standard input is read once, by the run itself.
        return Ok(Vec::new());
    }
    let mut paths = vec![path.to_path_buf()];
    for e in history_entries(path)? {
        paths.push(e.image);
        paths.extend(e.mask);
    }
    Ok(paths)
}

/// The paths of the masks given with `--mask` (the "no mask" spellings left out).
pub fn mask_paths(masks: &[String]) -> Vec<PathBuf> {
    masks
        .iter()
        .filter_map(|m| optional(Some(m)).map(PathBuf::from))
        .collect()
}
