//! `ace edit`: instruction-driven editing of one or more images (`{image}`, `{image1}`, ...).

use crate::cli::Global;
use crate::generate_common::{self, Common};
use crate::Outcome;
use std::path::PathBuf;

/// Edit images by instruction.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input image; repeat for {image1}, {image2}, ...
    #[arg(long = "image", value_name = "FILE", required = true)]
    pub images: Vec<PathBuf>,
    /// Mask of the image at the same position (white = edit); 'none' or '' for no mask.
    #[arg(long = "mask", value_name = "FILE")]
    pub masks: Vec<String>,
    /// Task of the image at the same position (e.g. inpainting); 'none' or '' for none.
    #[arg(long = "task", value_name = "TASK")]
    pub tasks: Vec<String>,
    /// The edit instruction; {image} names the first image.
    #[arg(long, value_name = "TEXT")]
    pub instruction: String,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<Outcome> {
    let inputs = generate_common::read_inputs(&args.images, &args.masks, &args.tasks)?;
    generate_common::run(
        &args.common,
        global,
        &args.instruction,
        inputs,
        (None, None),
    )
}
