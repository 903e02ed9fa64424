//! `ace generate`: text-to-image.

use crate::generate_common::{Common, Intent, Job};
use crate::generate_inputs::need;
use ace::config::AceConfig;
use std::path::PathBuf;

/// Generate an image from an instruction.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to draw.
    #[arg(long, value_name = "TEXT", required_unless_present_any = ["batch", "repeat"])]
    pub instruction: Option<String>,
    /// Output width in pixels, a multiple of 16 (default: the config's OUTPUT_WIDTH).
    #[arg(long, value_name = "W")]
    pub width: Option<usize>,
    /// Output height in pixels, a multiple of 16 (default: the config's OUTPUT_HEIGHT).
    #[arg(long, value_name = "H")]
    pub height: Option<usize>,
    /// A picture to start from, resized to the output size, with --strength below 1 (the
    /// image-to-image of other tools; SDEdit).
    #[arg(long, value_name = "FILE", requires = "strength")]
    pub init_image: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

impl Intent for Args {
    fn common(&self) -> &Common {
        &self.common
    }

    fn inputs(&self) -> anyhow::Result<Vec<PathBuf>> {
        Ok(self.init_image.iter().cloned().collect())
    }

    fn job(&self, _seed: u64, _cfg: &AceConfig) -> anyhow::Result<Job> {
        Ok(Job {
            instruction: need(&self.instruction, "--instruction")?.clone(),
            images: Vec::new(),
            size: (self.height, self.width),
            tar_index: None,
            history: Vec::new(),
            init: self
                .init_image
                .as_deref()
                .map(ace::imageio::load_rgb)
                .transpose()?,
            ..Job::default()
        })
    }
}
