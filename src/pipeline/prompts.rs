//! The prompts of a request and the per-frame text contexts the DiT sees. Each input image has
//! its prompt (the instruction, repeated); in a multi-turn edit the history prompts come first
//! and prompt i > 0 has its `{image}` renamed `{image<i>}`. The target frame's context is the
//! last prompt, followed by one context per input image; the negative contexts are the same
//! list with the last prompt replaced by the negative prompt.

use crate::{Error, Result};

/// Most input images a request may have: the target frame takes the next image indicator and
/// there are ten of them.
pub const MAX_INPUT_IMAGES: usize = 9;

/// The prompt of each input image (or the single prompt of text-to-image).
pub fn frame_prompts(history: &[String], instruction: &str, n_current: usize) -> Vec<String> {
    let mut prompts: Vec<String> = history.to_vec();
    prompts.extend(std::iter::repeat_n(
        instruction.to_string(),
        n_current.max(1),
    ));
    if !history.is_empty() {
        for (i, p) in prompts.iter_mut().enumerate().skip(1) {
            *p = p.replace("{image}", &format!("{{image{i}}}"));
        }
    }
    prompts
}

/// The contexts of the frames: `[last prompt, prompt_0, ..., prompt_{n-1}]` with input
/// images, else `[prompt]`.
pub fn frame_contexts(prompts: &[String], has_images: bool) -> Vec<String> {
    let last = prompts.last().cloned().unwrap_or_default();
    let mut out = vec![last];
    if has_images {
        out.extend(prompts.iter().cloned());
    }
    out
}

/// The negative contexts: the prompts with the last one replaced by `negative`, laid out as
/// [`frame_contexts`].
pub fn negative_contexts(prompts: &[String], negative: &str, has_images: bool) -> Vec<String> {
    let mut n = prompts.to_vec();
    if let Some(last) = n.last_mut() {
        *last = negative.to_string();
    }
    frame_contexts(&n, has_images)
}

/// The image indices a prompt refers to: `{image}` is 0, `{image<k>}` is k.
fn referenced_images(prompt: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("{image") {
        let tail = &rest[start + 6..];
        if let Some(end) = tail.find('}') {
            let digits = &tail[..end];
            if digits.is_empty() || digits.chars().all(|c| c.is_ascii_digit()) {
                let k = if digits.is_empty() {
                    0
                } else {
                    digits.parse().unwrap_or(usize::MAX)
                };
                out.push((format!("{{image{digits}}}"), k));
            }
        }
        rest = tail;
    }
    out
}

/// Checks that every `{image<k>}` a prompt names has an input image.
pub fn check_references(prompts: &[String], n_images: usize) -> Result<()> {
    if n_images > MAX_INPUT_IMAGES {
        return Err(Error::invalid(
            "images",
            format!("{n_images} input images (at most {MAX_INPUT_IMAGES}, history included)"),
        ));
    }
    for p in prompts {
        if let Some((name, _)) = referenced_images(p)
            .into_iter()
            .find(|(_, k)| *k >= n_images)
        {
            let given = match n_images {
                0 => "no input image was given".to_string(),
                1 => "only 1 input image was given".to_string(),
                n => format!("only {n} input images were given"),
            };
            return Err(Error::invalid(
                "instruction",
                format!("'{p}' refers to {name} but {given} ({{image}} is the first, {{image1}} the second, ...)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn multi_turn_renames_image_in_later_prompts() {
        let p = frame_prompts(
            &s(&["turn {image} into pixel art, 8-bit style"]),
            "keep the same face in {image} and change the background to a blue sky",
            1,
        );
        assert_eq!(
            p,
            s(&[
                "turn {image} into pixel art, 8-bit style",
                "keep the same face in {image1} and change the background to a blue sky"
            ])
        );
        let p = frame_prompts(&[], "put the cat from {image1} into {image}", 2);
        assert_eq!(p, s(&["put the cat from {image1} into {image}"; 2]));
        assert_eq!(frame_prompts(&[], "a fox", 0), s(&["a fox"]));
    }

    #[test]
    fn contexts_lead_with_the_last_prompt() {
        let p = s(&["a", "b"]);
        assert_eq!(frame_contexts(&p, true), s(&["b", "a", "b"]));
        assert_eq!(negative_contexts(&p, "neg", true), s(&["neg", "a", "neg"]));
        assert_eq!(frame_contexts(&s(&["x"]), false), s(&["x"]));
        assert_eq!(negative_contexts(&s(&["x"]), "", false), s(&[""]));
    }

    #[test]
    fn references_need_images() {
        assert!(check_references(&s(&["put {image1} in {image}"]), 2).is_ok());
        let err = check_references(&s(&["put {image2} in {image}"]), 2).unwrap_err();
        assert!(err.to_string().contains("{image2}"), "{err}");
        assert!(check_references(&s(&["draw {image}"]), 0).is_err());
        assert!(check_references(&s(&["{imagery} {image"]), 0).is_ok());
        assert!(check_references(&s(&["x"]), 10).is_err());
    }
}
