//! `ace control <kind>`: controllable generation from a condition computed from a photo (or
//! given ready), globally or inside a mask (`ace::tasks::control`).

use crate::generate_common::{Common, HistoryArg, Intent, Job};
use crate::generate_inputs::{need, read_mask};
use ace::config::AceConfig;
use ace::tasks::control::{self, Condition, Control};
use std::path::PathBuf;

/// Generate from a condition computed from a photo.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The condition: canny, depth, pose, segment, mosaic, gray (colorize), degrade (restore),
    /// doodle, contour or scribble.
    #[arg(value_name = "KIND", value_parser = clap::builder::PossibleValuesParser::new(control::KINDS))]
    pub kind: String,
    /// The photo the condition is computed from (kept outside --mask).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["batch", "repeat"])]
    pub image: Option<PathBuf>,
    /// The condition image, ready (e.g. from `ace analyze`), instead of computing it.
    #[arg(long, value_name = "FILE")]
    pub condition: Option<PathBuf>,
    /// Regional control: the condition only inside this mask (white), the photo kept outside.
    #[arg(long, value_name = "FILE")]
    pub mask: Option<PathBuf>,
    /// The network files of depth and pose (as `ace analyze depth|pose --model`).
    #[arg(long, value_name = "FILE")]
    pub analyzer_model: Vec<PathBuf>,
    /// The network's input size for depth and pose (as `ace analyze depth --size`, `ace
    /// analyze pose --height`; default 256 and 368).
    #[arg(long, value_name = "PIXELS")]
    pub analyzer_size: Option<u32>,
    /// Depth: skip the ImageNet mean/std normalisation (as `ace analyze depth
    /// --no-normalize`).
    #[arg(long)]
    pub analyzer_no_normalize: bool,
    /// What the result shows.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// The instruction as given, instead of a phrasing from presets/tasks.yaml.
    #[arg(long, value_name = "TEXT")]
    pub instruction: Option<String>,
    #[command(flatten)]
    pub history: HistoryArg,
    #[command(flatten)]
    pub common: Common,
}

impl Intent for Args {
    fn history(&self) -> Option<&std::path::Path> {
        self.history.history.as_deref()
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn inputs(&self) -> anyhow::Result<Vec<PathBuf>> {
        Ok(self
            .image
            .iter()
            .chain(&self.condition)
            .chain(&self.mask)
            .chain(&self.analyzer_model)
            .cloned()
            .collect())
    }

    fn job(&self, seed: u64, _cfg: &AceConfig) -> anyhow::Result<Job> {
        let image = need(&self.image, "--image")?;
        let photo = ace::imageio::load_rgb(image)?;
        let op;
        let condition = match &self.condition {
            Some(path) => Condition::Ready(ace::imageio::load_rgb(path)?),
            None => {
                let analyzer = control::Analyzer {
                    model: self.analyzer_model.clone(),
                    size: self.analyzer_size,
                    no_normalize: self.analyzer_no_normalize,
                };
                op = control::operation(&self.kind, &analyzer)?;
                Condition::Compute(op.as_ref())
            }
        };
        let mask_name = self.mask.as_ref().map(|m| m.display().to_string());
        let mask = match (&self.mask, &mask_name) {
            (Some(path), Some(name)) => Some((read_mask(path)?, name.as_str())),
            _ => None,
        };
        let photo_name = image.display().to_string();
        let job = Control {
            kind: &self.kind,
            photo,
            photo_name: &photo_name,
            condition,
            mask,
            prompt: self.prompt.as_deref(),
        }
        .job(seed, self.instruction.as_deref())?;
        Ok(Job::from_task(job))
    }
}
