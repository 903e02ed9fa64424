//! Model-based analysis (`ace analyze <op> --engine ace`): the ACE model asked for a condition
//! by instruction ("Generate the depth map of {image}."), as the paper's analysis tasks do,
//! wrapped as an [`Operation`] so that batches, masks and reports work as for the built-in
//! operations. The output is resized back to the input's size.

use super::instruction;
use crate::analyze::Operation;
use crate::config::AceConfig;
use crate::pipeline::{request_prompts, Ace, Noise, Request};
use crate::resize::resize_bicubic;
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
    /// The instruction of analysis `name` (`canny`, `depth`, ...): a phrasing of
    /// `analysis.<name>` drawn with `seed`, unless `explicit`.
    pub fn instruction(name: &str, seed: u64, explicit: Option<&str>) -> Result<String> {
        instruction(&format!("analysis.{name}"), &[], seed, explicit)
    }

    /// The prompts the model is asked with for `instruction`, whatever the image: what to
    /// encode before the model is loaded.
    pub fn prompts(instruction: &str, guidance: Guidance, cfg: &AceConfig) -> Result<Vec<String>> {
        let placeholder = RgbImage::new(16, 16);
        let request = request(instruction, &placeholder, "", 1, guidance, 0);
        request_prompts(&request, cfg)
    }

    /// The analysis `name` by `model`, asked with `instruction`.
    pub fn new(
        name: &'static str,
        model: Ace,
        instruction: String,
        steps: usize,
        guidance: Guidance,
        seed: u64,
    ) -> Self {
        Self {
            name,
            model,
            instruction,
            steps,
            guidance,
            seed,
        }
    }
}

/// The request of one analysis: the image as `{image}`, the output of its size.
fn request(
    instruction: &str,
    image: &RgbImage,
    name: &str,
    steps: usize,
    guidance: Guidance,
    seed: u64,
) -> Request {
    Request {
        instruction: instruction.to_string(),
        images: vec![super::input(name, image.clone(), None, "")],
        history: Vec::new(),
        negative: None,
        size: None,
        steps,
        guidance,
        noise: Noise::Seed(seed),
        tar_index: 0,
        sampler: Default::default(),
        init: None,
        finish: Default::default(),
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
        let request = request(
            &self.instruction,
            image,
            self.name,
            self.steps,
            self.guidance,
            self.seed,
        );
        let out = self.model.generate(&request, &mut |_, _| {})?.to_rgb8()?;
        Ok(if out.dimensions() == image.dimensions() {
            out
        } else {
            resize_bicubic(&out, image.width(), image.height())
        })
    }
}
