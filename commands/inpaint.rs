//! `ace inpaint`: repaint the masked region of an image (`ace::tasks::inpaint`).

use crate::generate_common::{Common, HistoryArg, Intent, Job};
use crate::generate_inputs::{need, read_mask};
use ace::config::AceConfig;
use std::path::PathBuf;

/// Repaint the masked region of an image.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to repaint.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["batch", "repeat"])]
    pub image: Option<PathBuf>,
    /// The region to repaint (white, above 128).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["batch", "repeat"])]
    pub mask: Option<PathBuf>,
    /// What the region shows (text-guided inpainting); without it the region is filled to fit.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// The instruction as given, instead of a phrasing from presets/tasks.yaml.
    #[arg(long, value_name = "TEXT")]
    pub instruction: Option<String>,
    /// Write the model's whole output instead of keeping every pixel outside the mask (and
    /// the image's size) as they were.
    #[arg(long)]
    pub no_paste_back: bool,
    /// Feather the pasted-back seam over this many pixels inside the mask.
    #[arg(long, value_name = "PX", default_value_t = 4.0)]
    pub mask_blur: f32,
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
        Ok(self.image.iter().chain(&self.mask).cloned().collect())
    }

    fn job(&self, seed: u64, _cfg: &AceConfig) -> anyhow::Result<Job> {
        let (image_path, mask_path) = (need(&self.image, "--image")?, need(&self.mask, "--mask")?);
        let image = ace::imageio::load_rgb(image_path)?;
        let mask = read_mask(mask_path)?;
        if !(self.mask_blur.is_finite() && self.mask_blur >= 0.0) {
            anyhow::bail!("invalid --mask-blur {} (pixels, 0 or more)", self.mask_blur);
        }
        let mut job = Job::from_task(ace::tasks::inpaint::job(
            image,
            &image_path.display().to_string(),
            mask,
            &mask_path.display().to_string(),
            self.prompt.as_deref(),
            seed,
            self.instruction.as_deref(),
        )?);
        if !self.no_paste_back {
            job.finish.paste_back = Some(self.mask_blur);
        }
        Ok(job)
    }
}
