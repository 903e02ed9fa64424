//! The command-line definition (clap derive): global options and the subcommand list. The man
//! pages in `man/` and the shell completions are generated from this one definition.

use crate::generate_common::{self, Intent};
use crate::{
    analyze, cache, completions, control, data, edit, eval, generate, inpaint, layer, model,
    outpaint, reference, serve, train, Outcome,
};
use clap::{Parser, Subcommand};

/// ACE, the All-round Creator and Editor: generate and edit images by instruction.
#[derive(Debug, Parser)]
#[command(name = "ace", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes, shown under their own heading after the subcommand's.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Print only errors (no progress bar, no informational lines, no warnings).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print informational lines even when standard error is not a terminal; repeat for
    /// debugging detail.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Number of parallel jobs (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub jobs: Option<usize>,
    /// Compute device: cpu, cuda, metal or auto (cuda and metal need a build with that feature).
    #[arg(long, global = true, default_value = "auto", value_name = "DEVICE")]
    pub device: ace::device::DeviceChoice,
    /// Read photos as stored, without turning them upright as their EXIF orientation says.
    #[arg(long, global = true)]
    pub ignore_orientation: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Low-level visual analysis (edges, grey, mosaic, ...) of images, globally or in a mask.
    Analyze(analyze::Args),
    /// Generate an image from an instruction (text-to-image).
    Generate(generate::Args),
    /// Edit images by instruction (inpainting, reference, multi-turn, ...).
    Edit(edit::Args),
    /// Generate from a condition (edges, depth, pose, regions, ...) computed from a photo.
    Control(control::Args),
    /// Repaint the masked region of an image, unconditionally or following a prompt.
    Inpaint(inpaint::Args),
    /// Extend an image beyond its borders (by pixels, to an aspect ratio, or by a scale).
    Outpaint(outpaint::Args),
    /// Split an image into subject and background layers, or fuse layers into one image.
    Layer(layer::Args),
    /// Re-create an image after references (style, face, try-on, subject), or continue a series.
    Reference(reference::Args),
    /// Build training pairs: masks, mined pairs, template instructions, low-level pairs.
    Data(data::Args),
    /// Fine-tune the DiT on instruction/image pairs; merge LoRA adapters.
    Train(train::Args),
    /// Score generated or edited images against a benchmark (pixel, CLIP, DINO, text metrics).
    Eval(eval::Args),
    /// Fetch the official model snapshots.
    Model(model::Args),
    /// Serve a chat page and an HTTP API (OpenAI Images API, sessions, jobs) on one loaded model.
    Serve(serve::Args),
    /// Show or empty ace's cache (prompt embeddings, weight identities, extracted inputs).
    Cache(cache::Args),
    /// Print a shell completion script.
    Completions(completions::Args),
}

impl Cli {
    /// Parses `std::env::args`, returning clap's error (help and version count as errors that
    /// print to stdout) instead of exiting.
    pub fn try_parse_args() -> Result<Self, clap::Error> {
        Cli::try_parse()
    }
}

/// Runs the subcommand.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    ace::imageio::set_apply_orientation(!cli.global.ignore_orientation);
    if let Some(jobs) = cli.global.jobs {
        rayon::ThreadPoolBuilder::new()
            .num_threads(jobs.max(1))
            .build_global()?;
    }
    match cli.command {
        Command::Analyze(args) => analyze::run(args, &cli.global),
        Command::Generate(a) => generate_common::execute(&a, &cli.global),
        Command::Edit(a) => generate_common::execute(&a, &cli.global),
        Command::Control(a) => generate_common::execute(&a, &cli.global),
        Command::Inpaint(a) => generate_common::execute(&a, &cli.global),
        Command::Outpaint(a) => generate_common::execute(&a, &cli.global),
        Command::Layer(a) => generate_common::execute(&a, &cli.global),
        Command::Reference(a) => generate_common::execute(&a, &cli.global),
        Command::Data(args) => data::run(args, &cli.global),
        Command::Train(args) => train::run(args, &cli.global),
        Command::Eval(args) => eval::run(args, &cli.global),
        Command::Model(args) => model::run(args, &cli.global),
        Command::Serve(args) => serve::run(args, &cli.global),
        Command::Cache(args) => cache::run(args, &cli.global),
        Command::Completions(args) => completions::run(args),
    }
}

/// The generation subcommands' flags as an [`Intent`]; `None` for the others.
fn into_intent(command: Command) -> Option<Box<dyn Intent>> {
    Some(match command {
        Command::Generate(a) => Box::new(a),
        Command::Edit(a) => Box::new(a),
        Command::Control(a) => Box::new(a),
        Command::Inpaint(a) => Box::new(a),
        Command::Outpaint(a) => Box::new(a),
        Command::Layer(a) => Box::new(a),
        Command::Reference(a) => Box::new(a),
        _ => return None,
    })
}

/// Parses a whole command line of a generation subcommand (a batch job); a usage error is its
/// first line (what is wrong), without clap's usage text.
pub fn intent_from_args(args: Vec<String>) -> anyhow::Result<Box<dyn Intent>> {
    let cli =
        Cli::try_parse_from(args).map_err(|e| anyhow::anyhow!("{}", crate::ui::clap_line(&e)))?;
    into_intent(cli.command).ok_or_else(|| anyhow::anyhow!("--batch is for generation subcommands"))
}
