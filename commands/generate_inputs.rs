//! Reading what a generation subcommand is given: input images with their masks and tasks,
//! masks as the reference reads them, and the earlier turns of a `--history` file.

use ace::pipeline::{luma_pil, InputImage, Turn};
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
    Ok(luma_pil(&ace::imageio::load_rgb(path)?))
}

/// Reads an input image with its optional mask.
pub fn read_input(image: &Path, mask: Option<&Path>, task: &str) -> Result<InputImage> {
    let rgb = ace::imageio::load_rgb(image)?;
    let mask = mask.map(read_mask).transpose()?;
    Ok(InputImage {
        name: image.display().to_string(),
        image: rgb,
        mask,
        task: task.to_string(),
    })
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

pub fn read_history(path: &Path) -> Result<Vec<Turn>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let entries: Vec<HistoryEntry> = serde_yaml::from_str(&text).with_context(|| {
        format!(
            "{}: not a history list [{{image, mask?, instruction, task?}}]",
            path.display()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    entries
        .into_iter()
        .map(|e| {
            let mask = e.mask.as_ref().map(|m| base.join(m));
            Ok(Turn {
                input: read_input(
                    &base.join(&e.image),
                    mask.as_deref(),
                    e.task.as_deref().unwrap_or(""),
                )?,
                instruction: e.instruction,
            })
        })
        .collect()
}
