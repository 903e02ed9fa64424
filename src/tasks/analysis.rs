//! Model-based analysis (`ace analyze <op> --engine ace`): the ACE model asked for a condition
//! by instruction ("Generate the depth map of {image}."), as the paper's analysis tasks do,
//! wrapped as an [`Operation`] so that batches, masks and reports work as for the built-in
//! operations. The output is resized back to the input's size.

use super::instruction;
use crate::analyze::Operation;
use crate::pipeline::{resize_bicubic, Ace, Noise, Request};
use crate::sampler::Guidance;
use crate::Result;
use image::RgbImage;

/// One analysis operation run by the ACE model.
pub struct AceAnalysis {
    name: &'static str,
    model: Ace,
    instruction: String,
    steps: usize,
    guidance: Guidance,
    seed: u64,
}

impl AceAnalysis {
    /// The analysis `name` (`canny`, `depth`, ...) by `model`; the instruction is a phrasing
    /// of `analysis.<name>` drawn with `seed` unless `explicit`.
    pub fn new(
        name: &'static str,
        model: Ace,
        steps: usize,
        guidance: Guidance,
        seed: u64,
        explicit: Option<&str>,
    ) -> Result<Self> {
        let instruction = instruction(&format!("analysis.{name}"), &[], seed, explicit)?;
        Ok(Self {
            name,
            model,
            instruction,
            steps,
            guidance,
            seed,
        })
    }
}

impl Operation for AceAnalysis {
    fn name(&self) -> &'static str {
        self.name
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "engine": "ace",
            "config": self.model.config().origin,
            "instruction": self.instruction,
            "steps": self.steps,
            "guide_scale": self.guidance.scale,
            "guide_rescale": self.guidance.rescale,
            "seed": self.seed,
        })
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let request = Request {
            instruction: self.instruction.clone(),
            images: vec![super::input(self.name, image.clone(), None, "")],
            history: Vec::new(),
            negative: None,
            size: None,
            steps: self.steps,
            guidance: self.guidance,
            noise: Noise::Seed(self.seed),
            tar_index: 0,
        };
        let out = self.model.generate(&request, &mut |_, _| {})?.to_rgb8()?;
        Ok(if out.dimensions() == image.dimensions() {
            out
        } else {
            resize_bicubic(&out, image.width(), image.height())
        })
    }
}
