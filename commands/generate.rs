//! `ace generate`: text-to-image.

use crate::cli::Global;
use crate::generate_common::{self, Common};
use crate::Outcome;

/// Generate an image from an instruction.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to draw.
    #[arg(long, value_name = "TEXT")]
    pub instruction: String,
    /// Output width in pixels, a multiple of 16 (default: the config's OUTPUT_WIDTH).
    #[arg(long, value_name = "W")]
    pub width: Option<usize>,
    /// Output height in pixels, a multiple of 16 (default: the config's OUTPUT_HEIGHT).
    #[arg(long, value_name = "H")]
    pub height: Option<usize>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<Outcome> {
    let size = (args.height, args.width);
    generate_common::run(&args.common, global, &args.instruction, Vec::new(), size)
}
