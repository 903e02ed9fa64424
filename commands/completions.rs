//! `ace completions <shell>`: prints a completion script generated from the CLI definition,
//! without the hidden flags (clap_complete would offer them).

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
    let mut cmd = visible(&Cli::command());
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "ace", &mut out);
    std::io::stdout().lock().write_all(&out)?;
    Ok(Outcome::Success)
}

/// `cmd` and its subcommands with what completion offers (name, description, aliases,
/// version, visible arguments), hidden arguments and subcommands left out.
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name().to_string())
        .visible_aliases(cmd.get_visible_aliases().map(str::to_string));
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(v) = cmd.get_version() {
        out = out.version(v.to_string());
    }
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        out = out.arg(arg.clone());
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(visible(sub));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_flags_are_left_out_and_the_rest_kept() {
        let cmd = visible(&Cli::command());
        let generate = cmd.find_subcommand("generate").unwrap();
        assert!(generate.get_arguments().all(|a| !a.is_hide_set()));
        assert!(generate
            .get_arguments()
            .any(|a| a.get_long() == Some("seed")));
        assert!(cmd.find_subcommand("analyze").unwrap().has_subcommands());
    }
}
