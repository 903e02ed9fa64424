//! `ace layer decouple | fuse`: layer editing (`ace::tasks::layer`).

use crate::generate_common::{Common, HistoryArg, Intent, Job};
use crate::generate_inputs::{need, read_input, read_mask};
use ace::config::AceConfig;
use ace::tasks::layer;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub op: Op,
}

#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Keep the subject (on a plain background) or the background (subject removed).
    Decouple(Decouple),
    /// Place subject layers into a background.
    Fuse(Fuse),
}

#[derive(Debug, clap::Args)]
pub struct Decouple {
    /// The picture to split.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["batch", "repeat"])]
    pub image: Option<PathBuf>,
    /// The subject's region (white).
    #[arg(long, value_name = "FILE")]
    pub mask: Option<PathBuf>,
    /// Which layer to produce.
    #[arg(long, value_name = "PART", value_parser = ["subject", "background"], required_unless_present_any = ["batch", "repeat"])]
    pub part: Option<String>,
    /// The subject's name ("the dog").
    #[arg(long, value_name = "TEXT")]
    pub object: Option<String>,
    /// The instruction as given, instead of a phrasing from presets/tasks.yaml.
    #[arg(long, value_name = "TEXT")]
    pub instruction: Option<String>,
    /// Write the layer as RGBA: its alpha is --mask (at the output's size) or, without one,
    /// keyed from the plain background the subject is painted on (choose a format with
    /// alpha: png, webp, tif).
    #[arg(long)]
    pub alpha: bool,
    #[command(flatten)]
    pub history: HistoryArg,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, clap::Args)]
pub struct Fuse {
    /// The background layer ({image}; the output has its size).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["batch", "repeat"])]
    pub background: Option<PathBuf>,
    /// A subject layer ({image1}, {image2}, ...); repeat for several.
    #[arg(
        long = "subject",
        value_name = "FILE",
        required_unless_present_any = ["batch", "repeat"]
    )]
    pub subjects: Vec<PathBuf>,
    /// What the fused picture shows.
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
        match &self.op {
            Op::Decouple(d) => d.history.history.as_deref(),
            Op::Fuse(f) => f.history.history.as_deref(),
        }
    }

    fn common(&self) -> &Common {
        match &self.op {
            Op::Decouple(d) => &d.common,
            Op::Fuse(f) => &f.common,
        }
    }

    fn inputs(&self) -> anyhow::Result<Vec<PathBuf>> {
        Ok(match &self.op {
            Op::Decouple(d) => d.image.iter().chain(&d.mask).cloned().collect(),
            Op::Fuse(f) => f.background.iter().chain(&f.subjects).cloned().collect(),
        })
    }

    fn job(&self, seed: u64, _cfg: &AceConfig) -> anyhow::Result<Job> {
        let alpha = matches!(&self.op, Op::Decouple(d) if d.alpha);
        let task = match &self.op {
            Op::Decouple(d) => {
                let mask_name = d.mask.as_ref().map(|m| m.display().to_string());
                let mask = match (&d.mask, &mask_name) {
                    (Some(p), Some(n)) => Some((read_mask(p)?, n.as_str())),
                    _ => None,
                };
                let image = need(&d.image, "--image")?;
                layer::decouple(
                    ace::imageio::load_rgb(image)?,
                    &image.display().to_string(),
                    mask,
                    need(&d.part, "--part")?.parse()?,
                    d.object.as_deref(),
                    seed,
                    d.instruction.as_deref(),
                )?
            }
            Op::Fuse(f) => {
                let background = read_input(need(&f.background, "--background")?, None, "")?;
                let subjects = f
                    .subjects
                    .iter()
                    .map(|s| read_input(s, None, ""))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                layer::fuse(
                    background,
                    subjects,
                    f.prompt.as_deref(),
                    seed,
                    f.instruction.as_deref(),
                )?
            }
        };
        let mut job = Job::from_task(task);
        job.finish.alpha = alpha;
        Ok(job)
    }
}
