//! `ace model`: fetching the official model snapshots from the hub into the Hugging Face cache.

use crate::Outcome;
use anyhow::Context;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Download every file a model config points at (hf:// references) into the Hugging Face
    /// cache; resumable, skips files already cached, honours HF_HOME and HF_ENDPOINT.
    Download(DownloadArgs),
}

#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// A model config in the official inference YAML schema.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print one JSON line per file (repo, file, local path, cached).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, global: &crate::cli::Global) -> anyhow::Result<Outcome> {
    match args.command {
        ModelCommand::Download(a) => download(a, global),
    }
}

fn download(args: DownloadArgs, global: &crate::cli::Global) -> anyhow::Result<Outcome> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("{}: cannot read config", args.config.display()))?;
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: invalid YAML", args.config.display()))?;
    let remotes = ace::hub::remotes_in(&yaml);
    if remotes.is_empty() {
        anyhow::bail!(
            "{}: names no hub files (hf://ORG/REPO@path); its paths are local already",
            args.config.display()
        );
    }
    let progress = !global.quiet && std::io::stderr().is_terminal();
    let fetched = ace::hub::download(&remotes, progress)?;
    let mut out = std::io::stdout().lock();
    for f in &fetched {
        if args.json {
            let line = serde_json::json!({
                "repo": f.repo, "file": f.file, "local": f.local, "cached": f.cached,
            });
            writeln!(out, "{line}")?;
        } else if !global.quiet {
            let how = if f.cached { "cached" } else { "downloaded" };
            eprintln!("{how}: {}/{} -> {}", f.repo, f.file, f.local.display());
        }
    }
    Ok(Outcome::Success)
}
