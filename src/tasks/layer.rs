//! Layer editing (appendix B.7): decoupling a picture into its subject (on a plain background)
//! or its background (the subject removed), optionally guided by a mask over the subject, and
//! fusing one background `{image}` with subject layers `{image1}`, `{image2}`, ...

use super::{check_mask, image_list, input, instruction, TaskJob};
use crate::pipeline::InputImage;
use crate::{Error, Result};
use image::{GrayImage, RgbImage};

/// Which layer decoupling keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Subject,
    Background,
}

impl std::str::FromStr for Part {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "subject" => Ok(Part::Subject),
            "background" => Ok(Part::Background),
            other => Err(Error::invalid(
                "layer part",
                format!("'{other}' (expected subject or background)"),
            )),
        }
    }
}

/// Decoupling: the subject (task `layer.decouple`) or the background (`layer.background`) of
/// `image`; `mask` marks the subject, `object` names it.
pub fn decouple(
    image: RgbImage,
    name: &str,
    mask: Option<(GrayImage, &str)>,
    part: Part,
    object: Option<&str>,
    seed: u64,
    explicit: Option<&str>,
) -> Result<TaskJob> {
    if let Some((m, mask_name)) = &mask {
        check_mask(m, &image, mask_name)?;
    }
    let task = match part {
        Part::Subject => "layer.decouple",
        Part::Background => "layer.background",
    };
    Ok(TaskJob {
        instruction: instruction(task, &[("object_name", object)], seed, explicit)?,
        images: vec![input(name, image, mask.map(|(m, _)| m), "")],
        tar_index: 0,
    })
}

/// Fusion: subjects placed into the background; the output has the background's size.
pub fn fuse(
    background: InputImage,
    subjects: Vec<InputImage>,
    prompt: Option<&str>,
    seed: u64,
    explicit: Option<&str>,
) -> Result<TaskJob> {
    if subjects.is_empty() {
        return Err(Error::invalid("layer fuse", "needs at least one subject"));
    }
    let names = image_list(1, subjects.len());
    let instruction = instruction(
        "layer.fuse",
        &[("subjects", Some(&names)), ("caption", prompt)],
        seed,
        explicit,
    )?;
    let mut images = vec![background];
    images.extend(subjects);
    Ok(TaskJob {
        instruction,
        images,
        tar_index: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_orders_background_first_and_names_every_subject() {
        let im = |n: &str| input(n, RgbImage::new(16, 16), None, "");
        let j = fuse(im("bg"), vec![im("a"), im("b")], None, 0, None).unwrap();
        let names: Vec<&str> = j.images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["bg", "a", "b"]);
        assert!(
            j.instruction.contains("{image1} and {image2}"),
            "{}",
            j.instruction
        );
        assert!(j.instruction.contains("{image}"), "{}", j.instruction);
        assert!(fuse(im("bg"), vec![], None, 0, None).is_err());
    }

    #[test]
    fn decouple_picks_the_part_phrasings() {
        let img = RgbImage::new(16, 16);
        let s = decouple(
            img.clone(),
            "x",
            None,
            Part::Subject,
            Some("the cat"),
            1,
            None,
        )
        .unwrap();
        assert!(s.instruction.contains("the cat"), "{}", s.instruction);
        let b = decouple(img, "x", None, Part::Background, None, 1, None).unwrap();
        assert!(b.instruction.contains("{image}"));
        assert!("middle".parse::<Part>().is_err());
    }
}
