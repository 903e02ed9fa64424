//! The task families of the ACE paper on the one model (appendix B): each turns a user's intent
//! (a photo and a control kind, a mask to repaint, borders to extend, layers, references, text
//! or object edits, a style) into what the model sees: the input frames with their masks and
//! tasks, and an instruction. Instructions come from the phrasings of `presets/tasks.yaml`
//! (taken from the paper's examples), one drawn by the run's seed; an explicit instruction
//! always wins.

pub mod analysis;
pub mod batch;
pub mod control;
pub mod element;
pub mod inpaint;
pub mod layer;
pub mod outpaint;
pub mod reference;
pub mod session;
pub mod style;

use crate::data::templates::Templates;
use crate::pipeline::InputImage;
use crate::{Error, Result};
use image::{GrayImage, RgbImage};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::Path;

/// What a task family produces: the instruction, the input images (`{image}` first) and which
/// of them the output takes its size and mask from.
#[derive(Debug, Clone)]
pub struct TaskJob {
    pub instruction: String,
    pub images: Vec<InputImage>,
    pub tar_index: usize,
}

/// The instruction of a task: `explicit` when given, else a phrasing of `task` in
/// `presets/tasks.yaml` that uses exactly the given slots (empty values are left out), drawn
/// with `seed`.
pub fn instruction(
    task: &str,
    slots: &[(&str, Option<&str>)],
    seed: u64,
    explicit: Option<&str>,
) -> Result<String> {
    if let Some(text) = explicit {
        return Ok(text.to_string());
    }
    let slots: BTreeMap<String, String> = slots
        .iter()
        .filter_map(|(k, v)| {
            v.map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| (k.to_string(), v.to_string()))
        })
        .collect();
    let templates = Templates::builtin()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    templates
        .render_exact(task, &slots, &mut rng)?
        .ok_or_else(|| {
            let given: Vec<&str> = slots.keys().map(String::as_str).collect();
            Error::invalid(
                "instruction",
                format!(
                    "no phrasing of '{task}' in presets/tasks.yaml takes exactly [{}]; pass an instruction",
                    given.join(", ")
                ),
            )
        })
}

/// An input image named `name` with its optional mask and task.
pub fn input(name: &str, image: RgbImage, mask: Option<GrayImage>, task: &str) -> InputImage {
    InputImage {
        name: name.to_string(),
        image,
        mask,
        task: task.to_string(),
    }
}

/// Reads a mask as the reference does (PIL's `convert("L")`).
pub fn read_mask(path: &Path) -> Result<GrayImage> {
    Ok(crate::pipeline::luma_pil(&crate::imageio::load_rgb(path)?))
}

/// Reads an input image with its optional mask (checked against the image) and task.
pub fn read_input(image: &Path, mask: Option<&Path>, task: &str) -> Result<InputImage> {
    let rgb = crate::imageio::load_rgb(image)?;
    let mask = match mask {
        Some(path) => {
            let m = read_mask(path)?;
            check_mask(&m, &rgb, &path.display().to_string())?;
            Some(m)
        }
        None => None,
    };
    Ok(input(&image.display().to_string(), rgb, mask, task))
}

/// Checks that a mask selects something (pixels above 128, as the pipeline reads it) and has
/// the image's size; `name` names the mask in errors.
pub fn check_mask(mask: &GrayImage, image: &RgbImage, name: &str) -> Result<()> {
    if mask.dimensions() != image.dimensions() {
        return Err(Error::invalid(
            "mask",
            format!(
                "{name}: {}x{} but the image is {}x{}",
                mask.width(),
                mask.height(),
                image.width(),
                image.height()
            ),
        ));
    }
    if !mask.pixels().any(|p| p[0] > 128) {
        return Err(Error::invalid(
            "mask",
            format!("{name}: selects no pixel (white, above 128, marks the region)"),
        ));
    }
    Ok(())
}

/// `{image1}`, `{image2}`, ... for inputs `first..first + n`, joined as "A, B and C".
pub fn image_list(first: usize, n: usize) -> String {
    let names: Vec<String> = (first..first + n)
        .map(|i| {
            if i == 0 {
                "{image}".to_string()
            } else {
                format!("{{image{i}}}")
            }
        })
        .collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_seeded_and_explicit_wins() {
        let a = instruction("inpainting", &[("caption", Some("roses"))], 7, None).unwrap();
        assert_eq!(
            a,
            instruction("inpainting", &[("caption", Some("roses"))], 7, None).unwrap()
        );
        assert!(a.contains("roses") && a.contains("{image}"), "{a}");
        let plain = instruction("inpainting", &[("caption", None)], 7, None).unwrap();
        assert!(!plain.contains('{') || plain.contains("{image}"), "{plain}");
        assert_eq!(
            instruction("inpainting", &[], 1, Some("mine")).unwrap(),
            "mine"
        );
        let e = instruction("inpainting", &[("nope", Some("x"))], 1, None).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn masks_must_select_and_fit() {
        let img = RgbImage::new(4, 2);
        assert!(check_mask(
            &GrayImage::from_pixel(4, 2, image::Luma([128])),
            &img,
            "m.png"
        )
        .unwrap_err()
        .to_string()
        .contains("m.png"));
        assert!(check_mask(&GrayImage::from_pixel(2, 2, image::Luma([255])), &img, "m").is_err());
        assert!(check_mask(&GrayImage::from_pixel(4, 2, image::Luma([129])), &img, "m").is_ok());
    }

    #[test]
    fn image_lists_read_naturally() {
        assert_eq!(image_list(1, 1), "{image1}");
        assert_eq!(image_list(1, 3), "{image1}, {image2} and {image3}");
        assert_eq!(image_list(0, 2), "{image} and {image1}");
    }
}
