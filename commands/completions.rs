//! `ace completions <shell>`: prints a completion script generated from the CLI definition.

use crate::{cli::Cli, Outcome};
use clap::CommandFactory;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "ace", &mut out);
    std::io::stdout().lock().write_all(&out)?;
    Ok(Outcome::Success)
}
