//! Inpainting (appendix B.4): the masked region of `{image}` is repainted, unconditionally or
//! following a prompt. The frame's task is `inpainting`, so the pipeline blanks the masked
//! pixels to -1 as the reference does and the output keeps the image's size and mask.

use super::{check_mask, input, instruction, TaskJob};
use crate::Result;
use image::{GrayImage, RgbImage};

/// The task name that makes the pipeline blank the masked pixels.
pub const TASK: &str = "inpainting";

/// The inpainting job for `image` (named `name`) and its `mask` (named `mask_name`).
pub fn job(
    image: RgbImage,
    name: &str,
    mask: GrayImage,
    mask_name: &str,
    prompt: Option<&str>,
    seed: u64,
    explicit: Option<&str>,
) -> Result<TaskJob> {
    check_mask(&mask, &image, mask_name)?;
    Ok(TaskJob {
        instruction: instruction(TASK, &[("caption", prompt)], seed, explicit)?,
        images: vec![input(name, image, Some(mask), TASK)],
        tar_index: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_an_inpainting_task_with_its_mask() {
        let img = RgbImage::new(16, 16);
        let mask = GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 4 { 255 } else { 0 }]));
        let j = job(img.clone(), "a.png", mask.clone(), "m.png", None, 0, None).unwrap();
        assert_eq!(j.images[0].task, "inpainting");
        assert_eq!(j.images[0].mask.as_ref(), Some(&mask));
        assert!(j.instruction.contains("{image}"));
        let empty = GrayImage::new(16, 16);
        assert!(job(img, "a.png", empty, "m.png", None, 0, None).is_err());
    }
}
