//! Semantic editing presets (appendix B.6): restyling `{image}` into one of the paper's style
//! families, and face-preserving edits ("keep the same face in {image} and ...").

use super::{instruction, TaskJob};
use crate::pipeline::InputImage;
use crate::{Error, Result};

/// The style families, as short names and the words the instruction uses.
pub const STYLES: [(&str, &str); 12] = [
    ("watercolor", "a watercolor painting"),
    ("oil", "an oil painting"),
    ("sketch", "a pencil sketch"),
    ("ink", "a Chinese ink wash painting"),
    ("anime", "an anime illustration"),
    ("cartoon", "a cartoon"),
    ("pixel", "8-bit pixel art"),
    ("3d", "a 3D render"),
    ("clay", "a claymation figure"),
    ("vangogh", "a Van Gogh painting"),
    ("ghibli", "a Studio Ghibli scene"),
    ("lego", "a LEGO build"),
];

/// The words of a style: a family's phrase, or the name itself for any other style.
pub fn style_words(name: &str) -> &str {
    STYLES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map_or(name, |(_, w)| w)
}

/// Restyles `image` (task `edit.style`).
pub fn restyle(
    image: InputImage,
    style: &str,
    seed: u64,
    explicit: Option<&str>,
) -> Result<TaskJob> {
    if style.trim().is_empty() {
        return Err(Error::invalid("style", "empty style name"));
    }
    Ok(TaskJob {
        instruction: instruction(
            "edit.style",
            &[("style", Some(style_words(style.trim())))],
            seed,
            explicit,
        )?,
        images: vec![image],
        tar_index: 0,
    })
}

/// A face-preserving edit of `image` making `change` (task `edit.face`).
pub fn keep_face(
    image: InputImage,
    change: Option<&str>,
    seed: u64,
    explicit: Option<&str>,
) -> Result<TaskJob> {
    if explicit.is_none() && change.is_none_or(|c| c.trim().is_empty()) {
        return Err(Error::invalid(
            "face keep",
            "needs --prompt saying what to change",
        ));
    }
    Ok(TaskJob {
        instruction: instruction("edit.face", &[("change", change)], seed, explicit)?,
        images: vec![image],
        tar_index: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn im() -> InputImage {
        super::super::input("x", RgbImage::new(16, 16), None, "")
    }

    #[test]
    fn styles_use_family_words_or_the_name() {
        let j = restyle(im(), "pixel", 0, None).unwrap();
        assert!(
            j.instruction.contains("8-bit pixel art"),
            "{}",
            j.instruction
        );
        let j = restyle(im(), "art deco", 0, None).unwrap();
        assert!(j.instruction.contains("art deco"), "{}", j.instruction);
        let j = keep_face(im(), Some("change the background to a blue sky"), 0, None).unwrap();
        assert!(j.instruction.contains("blue sky") && j.instruction.contains("{image}"));
        assert!(keep_face(im(), None, 0, None).is_err());
    }
}
