//! Element editing (appendix B.5): rendering text (its words, colour and position) into
//! `{image}` or removing it, and adding or removing a named object, optionally inside a mask
//! that marks where.

use super::{check_mask, input, instruction, TaskJob};
use crate::{Error, Result};
use image::{GrayImage, RgbImage};

/// The element edits, as `ace edit --kind` names them, with their template task.
pub const KINDS: [(&str, &str); 4] = [
    ("text-render", "text.render"),
    ("text-remove", "text.remove"),
    ("object-add", "object.add"),
    ("object-remove", "object.remove"),
];

/// What the edit is about.
#[derive(Debug, Clone, Default)]
pub struct Element<'a> {
    /// Words to render or remove.
    pub text: Option<&'a str>,
    /// Colour of rendered text.
    pub color: Option<&'a str>,
    /// Where the text goes ("at the top", "bottom left", ...).
    pub position: Option<&'a str>,
    /// The object to add or remove.
    pub object: Option<&'a str>,
}

/// The job for edit `kind` of `image`, in `mask` when given.
pub fn job(
    kind: &str,
    image: RgbImage,
    name: &str,
    mask: Option<(GrayImage, &str)>,
    element: &Element,
    seed: u64,
    explicit: Option<&str>,
) -> Result<TaskJob> {
    let task = KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
            Error::invalid(
                "edit kind",
                format!("'{kind}' (known: {})", known.join(", ")),
            )
        })?;
    if let Some((m, mask_name)) = &mask {
        check_mask(m, &image, mask_name)?;
    }
    let needs = |what: Option<&str>, flag: &str| {
        if explicit.is_none() && what.is_none_or(|v| v.trim().is_empty()) {
            Err(Error::invalid(
                kind,
                format!("needs {flag} (or an instruction)"),
            ))
        } else {
            Ok(())
        }
    };
    let slots: Vec<(&str, Option<&str>)> = match kind {
        "text-render" => {
            needs(element.text, "--text")?;
            let mut looks = Vec::new();
            if let Some(c) = element.color.filter(|c| !c.trim().is_empty()) {
                looks.push(format!("in {}", c.trim()));
            }
            if let Some(p) = element.position.filter(|p| !p.trim().is_empty()) {
                looks.push(position_phrase(p));
            }
            let looks = (!looks.is_empty()).then(|| looks.join(" "));
            return Ok(TaskJob {
                instruction: instruction(
                    task,
                    &[("text", element.text), ("looks", looks.as_deref())],
                    seed,
                    explicit,
                )?,
                images: vec![input(name, image, mask.map(|(m, _)| m), "")],
                tar_index: 0,
            });
        }
        "text-remove" => vec![("text", element.text)],
        _ => {
            needs(element.object, "--object")?;
            vec![("object_name", element.object)]
        }
    };
    Ok(TaskJob {
        instruction: instruction(task, &slots, seed, explicit)?,
        images: vec![input(name, image, mask.map(|(m, _)| m), "")],
        tar_index: 0,
    })
}

/// "top left" -> "at the top left"; phrases that already start with a preposition stay.
fn position_phrase(p: &str) -> String {
    let p = p.trim();
    let lower = p.to_ascii_lowercase();
    if [
        "at ", "on ", "in ", "along ", "across ", "above ", "below ", "near ",
    ]
    .iter()
    .any(|w| lower.starts_with(w))
    {
        p.to_string()
    } else {
        format!("at the {p}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_render_carries_words_colour_and_position() {
        let el = Element {
            text: Some("OPEN"),
            color: Some("red"),
            position: Some("top left"),
            ..Default::default()
        };
        let j = job(
            "text-render",
            RgbImage::new(16, 16),
            "x",
            None,
            &el,
            2,
            None,
        )
        .unwrap();
        let i = &j.instruction;
        assert!(
            i.contains("OPEN") && i.contains("in red at the top left"),
            "{i}"
        );
        let plain = Element {
            text: Some("OPEN"),
            ..Default::default()
        };
        let j = job(
            "text-render",
            RgbImage::new(16, 16),
            "x",
            None,
            &plain,
            2,
            None,
        )
        .unwrap();
        assert!(!j.instruction.contains("{looks}"), "{}", j.instruction);
    }

    #[test]
    fn objects_need_a_name_and_kinds_are_checked() {
        let none = Element::default();
        let img = RgbImage::new(16, 16);
        assert!(job("object-add", img.clone(), "x", None, &none, 0, None).is_err());
        let kite = Element {
            object: Some("a kite"),
            ..Default::default()
        };
        let j = job("object-remove", img.clone(), "x", None, &kite, 0, None).unwrap();
        assert!(j.instruction.contains("kite"));
        let j = job("text-remove", img.clone(), "x", None, &none, 0, None).unwrap();
        assert!(j.instruction.contains("{image}"));
        assert!(job("blur", img, "x", None, &none, 0, None).is_err());
        assert_eq!(position_phrase("on the sign"), "on the sign");
    }
}
