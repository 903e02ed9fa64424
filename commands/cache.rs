//! `ace cache info|clear`: what ace keeps in its cache folder (`ACE_CACHE_DIR`, default
//! `~/.cache/ace`), and emptying it.

use crate::Outcome;
use ace::cache::{root, usage, SECTIONS};
use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Show the cache folder and what each part of it holds (files, bytes).
    Info {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Empty the prompt embeddings and the remembered weight identities (--all: every part
    /// of the cache ace made, the full-size bench snapshot included).
    Clear {
        /// Every part of the cache, not only the prompt embeddings.
        #[arg(long)]
        all: bool,
    },
}

pub fn run(args: Args, global: &crate::cli::Global) -> anyhow::Result<Outcome> {
    let dir = root()?;
    match args.command {
        CacheCommand::Info { json } => {
            let parts: Vec<serde_json::Value> = SECTIONS
                .iter()
                .map(|(name, what)| {
                    let (files, bytes) = usage(&dir.join(name));
                    serde_json::json!({ "name": name, "holds": what, "files": files, "bytes": bytes })
                })
                .collect();
            if json {
                crate::ui::print_line(serde_json::json!({ "folder": dir, "parts": parts }))?;
            } else {
                crate::ui::print_line(dir.display())?;
                for p in &parts {
                    crate::ui::print_line(format_args!(
                        "  {:<10} {:>8} files {:>12}  {}",
                        p["name"].as_str().unwrap_or_default(),
                        p["files"],
                        crate::ui::human_bytes(p["bytes"].as_u64().unwrap_or(0)),
                        p["holds"].as_str().unwrap_or_default()
                    ))?;
                }
            }
        }
        CacheCommand::Clear { all } => {
            for (name, _) in SECTIONS {
                if !all && !["prompts", "identity"].contains(name) {
                    continue;
                }
                let part = dir.join(name);
                let (files, bytes) = usage(&part);
                match std::fs::remove_dir_all(&part) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).with_context(|| format!("{}", part.display())),
                }
                crate::ui::info(
                    global,
                    format_args!(
                        "removed {} ({files} files, {})",
                        part.display(),
                        crate::ui::human_bytes(bytes)
                    ),
                );
            }
        }
    }
    Ok(Outcome::Success)
}
