//! Reference generation (appendix B.8): the target `{image}` re-created after references
//! `{image1}`, `{image2}`, ... (a style, a face, a garment to try on, a subject, several
//! elements), and series generation, a new picture that continues 3 to 8 references.

use super::{check_mask, image_list, instruction, TaskJob};
use crate::pipeline::InputImage;
use crate::{Error, Result};

/// The reference kinds.
pub const KINDS: [&str; 6] = ["style", "face", "tryon", "subject", "multi", "series"];
/// The task under which a try-on target's masked pixels are blanked, as the reference does.
pub const TRYON_TASK: &str = "Try On";
/// How many references a series takes.
pub const SERIES_REFERENCES: std::ops::RangeInclusive<usize> = 3..=8;

/// The job for `kind`: `target` (absent only for `series`) then the references. A try-on
/// target's mask marks the garment region and makes it a `Try On` frame.
pub fn job(
    kind: &str,
    target: Option<InputImage>,
    references: Vec<InputImage>,
    prompt: Option<&str>,
    seed: u64,
    explicit: Option<&str>,
) -> Result<TaskJob> {
    if !KINDS.contains(&kind) {
        return Err(Error::invalid(
            "reference kind",
            format!("'{kind}' (known: {})", KINDS.join(", ")),
        ));
    }
    if references.is_empty() {
        return Err(Error::invalid("reference", "needs at least one --ref"));
    }
    let mut images = Vec::new();
    let refs = match (kind, target) {
        ("series", Some(_)) => {
            return Err(Error::invalid(
                "reference",
                "a series continues its references and takes no target image",
            ))
        }
        ("series", None) => {
            if !SERIES_REFERENCES.contains(&references.len()) {
                return Err(Error::invalid(
                    "reference",
                    format!("a series takes 3 to 8 references, got {}", references.len()),
                ));
            }
            image_list(0, references.len())
        }
        (_, None) => return Err(Error::invalid("reference", format!("{kind} needs --image"))),
        (_, Some(mut t)) => {
            if kind == "tryon" {
                if let Some(m) = &t.mask {
                    check_mask(m, &t.image, &format!("mask of {}", t.name))?;
                    t.task = TRYON_TASK.to_string();
                }
            }
            images.push(t);
            image_list(1, references.len())
        }
    };
    images.extend(references);
    Ok(TaskJob {
        instruction: instruction(
            &format!("reference.{kind}"),
            &[("refs", Some(&refs)), ("caption", prompt)],
            seed,
            explicit,
        )?,
        images,
        tar_index: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, RgbImage};

    fn im(n: &str) -> InputImage {
        super::super::input(n, RgbImage::new(16, 16), None, "")
    }

    #[test]
    fn every_kind_has_phrasings_and_orders_target_first() {
        for kind in KINDS {
            let (target, refs) = if kind == "series" {
                (None, vec![im("a"), im("b"), im("c")])
            } else {
                (Some(im("t")), vec![im("a")])
            };
            let j = job(kind, target, refs, Some("at the beach"), 5, None).unwrap();
            assert!(
                j.instruction.contains("at the beach"),
                "{kind}: {}",
                j.instruction
            );
            if kind != "series" {
                assert_eq!(j.images[0].name, "t");
                assert!(
                    j.instruction.contains("{image1}"),
                    "{kind}: {}",
                    j.instruction
                );
            }
        }
        assert!(job("series", None, vec![im("a")], None, 0, None).is_err());
        assert!(job("face", None, vec![im("a")], None, 0, None).is_err());
    }

    #[test]
    fn tryon_mask_blanks_the_garment_region() {
        let mut t = im("person");
        t.mask = Some(GrayImage::from_pixel(16, 16, image::Luma([255])));
        let j = job("tryon", Some(t), vec![im("shirt")], None, 0, None).unwrap();
        assert_eq!(j.images[0].task, TRYON_TASK);
        assert_eq!(j.images[1].task, "");
    }
}
