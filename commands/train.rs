//! `ace train`: fine-tune the DiT from a training YAML, and `ace train merge-lora`: fold LoRA
//! adapters into a plain DiT checkpoint. The newest checkpoint's folder is printed on stdout
//! (with `--json`, the whole summary); the summary line is informational (a terminal or `-v`).
//! A run that diverged exits 1, naming the step.

use crate::cli::Global;
use crate::Outcome;
use ace::train::config::TrainConfig;
use ace::train::{Finish, LogLine, Options};
use anyhow::Context;
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
    /// Start afresh in a WORK_DIR that holds an earlier run, moving that run (logs, plot,
    /// checkpoints) into WORK_DIR/earlier-run-SECONDS/ first.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Encode the training prompts with the T5 instead of looking them up in the
    /// prompt-embedding cache (ACE_CACHE_DIR, default ~/.cache/ace).
    #[arg(long)]
    pub no_prompt_cache: bool,
    /// Print the summary (how the run ended, steps, checkpoint, log, plot) as one JSON object
    /// on stdout instead of the checkpoint's folder.
    #[arg(long)]
    pub json: bool,
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
        use ace::train::checkpointing::{self as ck, resolve};
        ace::output::check(&m.output, true)?;
        let dir = resolve(&m.checkpoint)?;
        let started_from = ck::read_state(&dir)?.base_model;
        let inputs = [ck::LORA_FILE, ck::EMA_FILE].map(|f| dir.join(f));
        let inputs = inputs
            .iter()
            .map(PathBuf::as_path)
            .chain(m.base.as_deref())
            .chain(std::iter::once(started_from.as_path()));
        ace::output::refuse_inputs(&m.output, inputs)?;
        let n =
            ace::train::lora::merge_checkpoint(&m.checkpoint, m.base.as_deref(), m.ema, &m.output)?;
        crate::ui::info(
            global,
            format_args!("merged {n} adapted layers into {}", m.output.display()),
        );
        return Ok(Outcome::Success);
    }
    let path = args.config.context("--config is required")?;
    let cfg = TrainConfig::load(&path)?;
    let device = ace::device::open(global.device)?;
    let total = cfg.total_steps();
    let bar = crate::ui::progress_bar(global, total, "train", "steps");
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
        force: args.force,
        prompt_cache: crate::model_source::prompt_cache(args.no_prompt_cache),
    };
    let summary = ace::train::run(&cfg, &opts, &device, &mut progress)?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let Some(aside) = &summary.moved_aside {
        crate::ui::info(
            global,
            format_args!("earlier run moved to {}", aside.display()),
        );
    }
    let (how, outcome) = match &summary.finish {
        Finish::Completed => ("finished".to_string(), Outcome::Success),
        Finish::Stopped => ("stopped (--max-steps)".to_string(), Outcome::Success),
        Finish::Interrupted => ("interrupted".to_string(), Outcome::Interrupted),
        Finish::Diverged { step, what } => {
            let kept = match &summary.checkpoint {
                Some(c) => format!("the newest checkpoint is still {}", c.display()),
                None => "no checkpoint was saved before it".to_string(),
            };
            eprintln!(
                "ace: {}: training diverged at step {step}: {what} is not finite; nothing of that \
                 step was kept and {kept} (lower the learning rate and --resume)",
                cfg.origin
            );
            (format!("diverged at step {step}"), Outcome::SomeFailed)
        }
    };
    let checkpoint = summary.checkpoint.as_ref().map(|c| c.display().to_string());
    if args.json {
        let doc = serde_json::json!({
            "finish": how,
            "step": summary.step,
            "total_steps": summary.total_steps,
            "checkpoint": checkpoint,
            "log": summary.log,
            "plot": summary.plot,
            "moved_aside": summary.moved_aside,
        });
        crate::ui::print_line(doc)?;
    } else {
        crate::ui::info(
            global,
            format_args!(
                "{how} at step {}/{}; log {}; plot {}",
                summary.step,
                summary.total_steps,
                summary.log.display(),
                summary.plot.display()
            ),
        );
        if let Some(c) = &checkpoint {
            crate::ui::print_line(c)?;
        }
    }
    Ok(outcome)
}
