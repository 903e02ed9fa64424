//! The command-line definition (clap derive): global options and the subcommand list. The man
//! pages in `man/` and the shell completions are generated from this one definition.

use crate::{analyze, completions, eval, model, Outcome};
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

/// Options every subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Print only errors (no progress bar, no summary).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print more about what is done (repeat for more detail).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Number of parallel jobs (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub jobs: Option<usize>,
    /// Compute device: cpu, cuda, metal or auto (cuda and metal need a build with that feature).
    #[arg(long, global = true, default_value = "auto", value_name = "DEVICE")]
    pub device: ace::device::DeviceChoice,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch the official model snapshots.
    Model(model::Args),
    /// Low-level visual analysis (edges, grey, mosaic, ...) of images, globally or in a mask.
    Analyze(analyze::Args),
    /// Score generated or edited images against a benchmark (pixel, CLIP, DINO, text metrics).
    Eval(eval::Args),
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
    if let Some(jobs) = cli.global.jobs {
        rayon::ThreadPoolBuilder::new()
            .num_threads(jobs.max(1))
            .build_global()?;
    }
    match cli.command {
        Command::Model(args) => model::run(args, &cli.global),
        Command::Analyze(args) => analyze::run(args, &cli.global),
        Command::Eval(args) => eval::run(args, &cli.global),
        Command::Completions(args) => completions::run(args),
    }
}
