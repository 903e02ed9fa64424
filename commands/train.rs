//! `ace train`: fine-tune the DiT from a training YAML, and `ace train merge-lora`: fold LoRA
//! adapters into a plain DiT checkpoint.

use crate::cli::Global;
use crate::Outcome;
use ace::train::config::TrainConfig;
use ace::train::{Finish, LogLine, Options};
use anyhow::Context;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Train ACE's DiT (T5 and VAE frozen).
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    /// Training config in the official ACE training schema (SOLVER, OPTIMIZER, TRAIN_DATA, ...).
    #[arg(long, value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,
    /// Continue from a checkpoint folder (or a WORK_DIR: its newest checkpoint).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Stop after this many optimizer steps in all (a checkpoint is written; --resume goes on).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// Encode the training prompts with the T5 instead of looking them up in the
    /// prompt-embedding cache (ACE_CACHE_DIR, default ~/.cache/ace).
    #[arg(long)]
    pub no_prompt_cache: bool,
    #[command(subcommand)]
    pub command: Option<TrainCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum TrainCommand {
    /// Merge the LoRA adapters of a checkpoint into the DiT weights (one safetensors file).
    MergeLora(MergeArgs),
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// A LoRA training checkpoint folder (or its WORK_DIR).
    #[arg(value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Where to write the merged DiT (safetensors).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// DiT weights to merge into (default: the ones training started from).
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
    /// Merge the EMA of the adapters instead of their last values.
    #[arg(long)]
    pub ema: bool,
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<Outcome> {
    if let Some(TrainCommand::MergeLora(m)) = args.command {
        let n =
            ace::train::lora::merge_checkpoint(&m.checkpoint, m.base.as_deref(), m.ema, &m.output)?;
        if !global.quiet {
            eprintln!("merged {n} adapted layers into {}", m.output.display());
        }
        return Ok(Outcome::Success);
    }
    let path = args.config.context("--config is required")?;
    let cfg = TrainConfig::load(&path)?;
    let device = ace::device::open(global.device)?;
    let total = cfg.total_steps();
    let bar = (!global.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps {msg} [{elapsed} < {eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut progress = |line: &LogLine, _total: u64| {
        if let Some(bar) = &bar {
            bar.set_position(line.step);
            let val = line
                .val_loss
                .map(|v| format!(" val {v:.4}"))
                .unwrap_or_default();
            bar.set_message(format!(
                "loss {:.4}{val} {:.2} it/s",
                line.loss, line.it_per_s
            ));
        }
    };
    let opts = Options {
        resume: args.resume,
        max_steps: args.max_steps,
        prompt_cache: crate::model_source::prompt_cache(args.no_prompt_cache),
    };
    let summary = ace::train::run(&cfg, &opts, &device, &mut progress)?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if !global.quiet {
        let how = match summary.finish {
            Finish::Completed => "finished",
            Finish::Stopped => "stopped (--max-steps)",
            Finish::Interrupted => "interrupted",
        };
        eprintln!(
            "{how} at step {}/{}; log {}; plot {}",
            summary.step,
            summary.total_steps,
            summary.log.display(),
            summary.plot.display()
        );
    }
    println!("{}", summary.checkpoint.display());
    Ok(Outcome::Success)
}
