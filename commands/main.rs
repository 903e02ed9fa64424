//! The `ace` binary: parses the command line and hands each subcommand to its module. All the
//! computing lives in the `ace` library; these files only translate flags into calls, print
//! results and map outcomes to exit codes (0 success, 1 some inputs failed, 2 usage or fatal
//! error, 128 + the signal's number when SIGINT, SIGTERM or SIGHUP stopped the run: 130, 143,
//! 129).

mod analyze;
mod analyze_ace;
mod analyze_ops;
mod argv;
mod batch;
mod cache;
mod cli;
mod completions;
mod control;
mod data;
mod edit;
mod eval;
mod generate;
mod generate_common;
mod generate_inputs;
mod generate_output;
mod inpaint;
mod layer;
mod manpages;
mod model;
mod model_source;
mod outpaint;
mod record;
mod reference;
mod run_options;
mod serve;
mod signals;
mod train;
mod ui;

use std::process::ExitCode;

/// What a subcommand reports when it returns normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was processed.
    Success,
    /// Some inputs failed (each was reported); the rest were processed.
    SomeFailed,
    /// A signal stopped the run before all of it was done.
    Interrupted,
}

fn main() -> ExitCode {
    // First of all, so that a signal is a clean stop from the earliest moment it can be.
    signals::install();
    let cli = match cli::Cli::try_parse_args() {
        Ok(cli) => cli,
        // Help and version go to stdout as clap writes them; a usage error is one line.
        Err(e) if e.use_stderr() => {
            eprintln!("ace: {}", ui::clap_line(&e));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    init_logging(&cli.global);
    #[cfg(feature = "openblas")]
    log::info!("matrix products: {}", ace::kernels::blas_core());
    // Every command's working set is a repeating pattern of large buffers (activations,
    // images): keep freed ones for reuse rather than page-faulting them in afresh.
    ace::memory::keep_freed_blocks();
    let result = cli::run(cli);
    // A run that finished its work succeeded even if a signal came late; one that stopped
    // (or failed because it was stopped) reports the signal.
    let stopped = match &result {
        Ok(Outcome::Interrupted) => true,
        Err(_) => ace::cancel::requested(),
        Ok(_) => false,
    };
    if stopped {
        eprintln!("ace: interrupted");
        return ExitCode::from(ace::cancel::exit_status().unwrap_or(130));
    }
    match result {
        Ok(Outcome::Success) | Ok(Outcome::Interrupted) => ExitCode::SUCCESS,
        Ok(Outcome::SomeFailed) => ExitCode::from(1),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ace: {}", ui::one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// A reader that went away (`ace ... -o - | head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(g: &cli::Global) {
    let level = if g.quiet {
        log::LevelFilter::Error
    } else {
        match g.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp(None)
        .format_target(false)
        .target(env_logger::Target::Stderr)
        .init();
}
