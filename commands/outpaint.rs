//! `ace outpaint`: extend an image beyond its borders (`ace::tasks::outpaint`).

use crate::generate_common::{Common, HistoryArg, Intent, Job};
use crate::generate_inputs::need;
use ace::config::AceConfig;
use ace::tasks::outpaint::Extend;
use std::path::PathBuf;

/// Extend an image beyond its borders.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("extend").multiple(true))]
pub struct Args {
    /// The image to extend.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["batch", "repeat"])]
    pub image: Option<PathBuf>,
    /// Pixels to add on the left.
    #[arg(long, value_name = "PX", group = "extend")]
    pub left: Option<u32>,
    /// Pixels to add on the right.
    #[arg(long, value_name = "PX", group = "extend")]
    pub right: Option<u32>,
    /// Pixels to add at the top.
    #[arg(long, value_name = "PX", group = "extend")]
    pub top: Option<u32>,
    /// Pixels to add at the bottom.
    #[arg(long, value_name = "PX", group = "extend")]
    pub bottom: Option<u32>,
    /// Grow evenly to this aspect ratio, W:H (e.g. 16:9).
    #[arg(long, value_name = "W:H", value_parser = ratio, group = "extend",
          conflicts_with_all = ["left", "right", "top", "bottom", "scale"])]
    pub ratio: Option<(f64, f64)>,
    /// Grow both sides evenly by this factor (e.g. 1.5).
    #[arg(long, value_name = "F", group = "extend",
          conflicts_with_all = ["left", "right", "top", "bottom"])]
    pub scale: Option<f64>,
    /// What the whole picture shows.
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

fn ratio(s: &str) -> Result<(f64, f64), String> {
    let (w, h) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not W:H"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("'{v}' is not a number"))
    };
    Ok((n(w)?, n(h)?))
}

impl Intent for Args {
    fn history(&self) -> Option<&std::path::Path> {
        self.history.history.as_deref()
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn inputs(&self) -> anyhow::Result<Vec<PathBuf>> {
        Ok(self.image.iter().cloned().collect())
    }

    fn job(&self, seed: u64, _cfg: &AceConfig) -> anyhow::Result<Job> {
        let extend = match (self.ratio, self.scale) {
            (Some((w, h)), _) => Extend::Ratio(w, h),
            (None, Some(f)) => Extend::Scale(f),
            (None, None) => Extend::Borders {
                left: self.left.unwrap_or(0),
                right: self.right.unwrap_or(0),
                top: self.top.unwrap_or(0),
                bottom: self.bottom.unwrap_or(0),
            },
        };
        let path = need(&self.image, "--image")?;
        let image = ace::imageio::load_rgb(path)?;
        let mut job = Job::from_task(ace::tasks::outpaint::job(
            &image,
            &path.display().to_string(),
            extend,
            self.prompt.as_deref(),
            seed,
            self.instruction.as_deref(),
        )?);
        // The output has the canvas's exact size, the photo in it unchanged.
        job.finish.paste_back = Some(0.0);
        Ok(job)
    }
}
