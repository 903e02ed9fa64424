//! Controllable generation (appendix B.3): a condition image (edges, depth, pose, regions,
//! mosaic, grey, degradation, doodle, contour, scribble), computed from a photo with the analysis
//! operation in-process or given ready, becomes `{image}` of an instruction such as "Based on the
//! primitives from {image}, synthesize a real image that fits ...". With a mask the control is
//! regional: the condition only inside it, the photo kept outside, and the mask tells the model
//! which region to regenerate.

use super::{check_mask, input, instruction, TaskJob};
use crate::analyze::{self, Operation};
use crate::{Error, Result};
use image::{GrayImage, RgbImage};
use std::path::PathBuf;

/// The condition kinds, named as the analysis operations.
pub const KINDS: [&str; 10] = [
    "canny", "depth", "pose", "segment", "mosaic", "gray", "degrade", "doodle", "contour",
    "scribble",
];

/// Checks a kind name.
pub fn check_kind(kind: &str) -> Result<()> {
    if KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(Error::invalid(
            "control kind",
            format!("'{kind}' (known: {})", KINDS.join(", ")),
        ))
    }
}

/// The flags of `ace control` that set the analyzer's network, named in its errors.
pub const ANALYZER_FLAGS: analyze::dnn::FlagNames = analyze::dnn::FlagNames {
    model: "--analyzer-model",
    size: "--analyzer-size",
};

/// How the network of `depth` and `pose` runs (the others take no setting).
#[derive(Debug, Clone, Default)]
pub struct Analyzer {
    /// The network files.
    pub model: Vec<PathBuf>,
    /// The network's input size (depth: the square side; pose: the height); its default when
    /// `None`.
    pub size: Option<u32>,
    /// Depth only: skip the ImageNet normalisation (for exports that do it inside).
    pub no_normalize: bool,
}

/// The analysis operation of `kind` with its default parameters; `depth` and `pose` run a
/// network set by `analyzer`.
pub fn operation(kind: &str, analyzer: &Analyzer) -> Result<Box<dyn Operation>> {
    use analyze::*;
    check_kind(kind)?;
    let model = &analyzer.model;
    Ok(match kind {
        "canny" => Box::new(Canny::default()),
        "depth" => Box::new(Depth::new(
            model,
            depth::DepthParams {
                size: analyzer.size.unwrap_or(depth::DEFAULT_SIZE),
                normalize: !analyzer.no_normalize,
                flags: ANALYZER_FLAGS,
            },
        )?),
        "pose" => Box::new(Pose::new(
            model,
            pose::PoseParams {
                height: analyzer.size.unwrap_or(pose::DEFAULT_HEIGHT),
                flags: ANALYZER_FLAGS,
                ..pose::PoseParams::default()
            },
        )?),
        "segment" => Box::new(Segment::new(segment::Params::default())?),
        "mosaic" => Box::new(Mosaic::default()),
        "gray" => Box::new(Gray),
        "degrade" => Box::new(Degrade::new(degrade::Params::default())?),
        "doodle" => Box::new(Doodle::new(doodle::Params::default())?),
        "contour" => Box::new(Contour::new(contour::Params::default())?),
        _ => Box::new(Scribble::new(scribble::Params::default())?),
    })
}

/// Where the condition comes from.
pub enum Condition<'a> {
    /// Computed from the photo by the operation.
    Compute(&'a dyn Operation),
    /// Given ready (a condition image of the photo's size).
    Ready(RgbImage),
}

/// A controllable-generation request.
pub struct Control<'a> {
    pub kind: &'a str,
    /// The photo the condition is computed from (and that is kept outside the mask).
    pub photo: RgbImage,
    pub photo_name: &'a str,
    pub condition: Condition<'a>,
    /// Regional control: the region (white) to regenerate from the condition.
    pub mask: Option<(GrayImage, &'a str)>,
    /// What the result shows.
    pub prompt: Option<&'a str>,
}

impl Control<'_> {
    /// The job: the condition frame (regional when masked) and the instruction.
    pub fn job(self, seed: u64, explicit: Option<&str>) -> Result<TaskJob> {
        check_kind(self.kind)?;
        if let Some((m, name)) = &self.mask {
            check_mask(m, &self.photo, name)?;
        }
        let mask = self.mask.as_ref().map(|(m, _)| m);
        let frame = match self.condition {
            Condition::Compute(op) => analyze::apply(op, &self.photo, mask)?,
            Condition::Ready(cond) => {
                if cond.dimensions() != self.photo.dimensions() {
                    return Err(Error::invalid(
                        "condition",
                        format!(
                            "{}x{} but the photo {} is {}x{}",
                            cond.width(),
                            cond.height(),
                            self.photo_name,
                            self.photo.width(),
                            self.photo.height()
                        ),
                    ));
                }
                match mask {
                    Some(m) => regional(&self.photo, &cond, m),
                    None => cond,
                }
            }
        };
        let task = format!("control.{}", self.kind);
        let instruction = instruction(&task, &[("caption", self.prompt)], seed, explicit)?;
        let name = format!("{} ({})", self.photo_name, self.kind);
        Ok(TaskJob {
            instruction,
            images: vec![input(&name, frame, mask.cloned(), "")],
            tar_index: 0,
        })
    }
}

/// `cond` inside the mask, `photo` outside (the mask resized as the analysis ops do).
fn regional(photo: &RgbImage, cond: &RgbImage, mask: &GrayImage) -> RgbImage {
    let inside = analyze::inside(mask, photo.width(), photo.height());
    let mut out = photo.clone();
    for ((o, c), &m) in out.pixels_mut().zip(cond.pixels()).zip(&inside) {
        if m {
            *o = *c;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo() -> RgbImage {
        RgbImage::from_fn(32, 16, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 16) as u8, 90])
        })
    }

    #[test]
    fn regional_control_keeps_the_photo_outside_the_mask() {
        let mask = GrayImage::from_fn(32, 16, |x, _| image::Luma([if x < 16 { 255 } else { 0 }]));
        let op = operation("gray", &Analyzer::default()).unwrap();
        let job = Control {
            kind: "gray",
            photo: photo(),
            photo_name: "p.png",
            condition: Condition::Compute(op.as_ref()),
            mask: Some((mask.clone(), "m.png")),
            prompt: Some("a sunny street"),
        }
        .job(3, None)
        .unwrap();
        let frame = &job.images[0];
        assert_eq!(frame.mask.as_ref(), Some(&mask));
        assert_eq!(frame.task, "");
        let (inner, outer) = (frame.image.get_pixel(3, 5), frame.image.get_pixel(20, 5));
        assert_eq!(inner[0], inner[1]);
        assert_eq!(outer, photo().get_pixel(20, 5));
        assert!(
            job.instruction.contains("a sunny street"),
            "{}",
            job.instruction
        );
    }

    #[test]
    fn ready_conditions_must_match_and_kinds_are_checked() {
        let bad = Control {
            kind: "canny",
            photo: photo(),
            photo_name: "p.png",
            condition: Condition::Ready(RgbImage::new(8, 8)),
            mask: None,
            prompt: None,
        };
        assert!(bad.job(0, None).unwrap_err().to_string().contains("p.png"));
        assert!(check_kind("blur")
            .unwrap_err()
            .to_string()
            .contains("scribble"));
        let e = operation("depth", &Analyzer::default())
            .err()
            .expect("depth needs a model")
            .to_string();
        assert!(
            e.contains("--analyzer-model")
                && e.contains("--analyzer-size")
                && !e.contains("--model "),
            "{e}"
        );
        for kind in KINDS {
            let inst = super::super::instruction(&format!("control.{kind}"), &[], 0, None);
            assert!(inst.is_ok(), "{kind}");
        }
    }
}
