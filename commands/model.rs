//! `ace model`: fetching the official model snapshots from the hub into the Hugging Face cache,
//! and describing what a config loads from where.

use crate::model_source::ModelSource;
use crate::Outcome;
use ace::model::checkpoint;
use ace::model::cpu_bf16::{self, Products};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Download every file a model config points at: hf:// references into the Hugging Face
    /// cache (HF_HOME, HF_ENDPOINT), ms:// ones from ModelScope into its cache
    /// (MODELSCOPE_CACHE, MODELSCOPE_ENDPOINT), falling back to the Hugging Face mirror when
    /// ModelScope does not answer; resumable, skips files already cached.
    Download(DownloadArgs),
    /// Show what a model config loads from where: files, tensors, parameters, dtypes, memory.
    Info(InfoArgs),
}

#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub source: ModelSource,
    /// Where ms:// references come from: auto (ModelScope, else the Hugging Face mirror hf://
    /// scepter-studio/...), ms (ModelScope only) or hf (the mirror only).
    #[arg(long = "source", value_name = "HUB", default_value = "auto")]
    pub hub: ace::hub::Source,
    /// Print one JSON line per file (repo, file, local path, cached).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub source: ModelSource,
    /// Weight dtype of the DiT and VAE the memory figures are for: f32, bf16 or f16 (bf16 on
    /// the CPU: the linear layers' and convolutions' weights in bf16, the rest in f32; the T5
    /// is streamed from its files a block at a time, in its stored dtype).
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, global: &crate::cli::Global) -> anyhow::Result<Outcome> {
    match args.command {
        ModelCommand::Download(a) => download(a, global),
        ModelCommand::Info(a) => info(a, global),
    }
}

fn download(args: DownloadArgs, global: &crate::cli::Global) -> anyhow::Result<Outcome> {
    let (cfg, _) = args.source.load()?;
    let mut remotes: Vec<ace::hub::Remote> = Vec::new();
    for (_, spec) in cfg.weight_specs()? {
        if let Some(r) = ace::hub::Remote::parse(&spec) {
            if !remotes.contains(&r) {
                remotes.push(r);
            }
        }
    }
    if remotes.is_empty() {
        anyhow::bail!(
            "{}: names no hub files (hf:// or ms://ORG/REPO@path); its weights are local paths already",
            cfg.origin
        );
    }
    let progress = !global.quiet && std::io::stderr().is_terminal();
    let fetched = ace::hub::download(&remotes, args.hub, progress)?;
    let mut out = std::io::stdout().lock();
    for f in &fetched {
        if args.json {
            let line = serde_json::json!({
                "repo": f.repo, "file": f.file, "local": f.local, "cached": f.cached,
            });
            writeln!(out, "{line}")?;
        } else {
            let how = if f.cached { "cached" } else { "downloaded" };
            crate::ui::info(
                global,
                format_args!("{how}: {}/{} -> {}", f.repo, f.file, f.local.display()),
            );
        }
    }
    Ok(Outcome::Success)
}

/// One component's description.
#[derive(Debug, serde::Serialize)]
struct Component {
    component: &'static str,
    path: PathBuf,
    tensors: usize,
    parameters: u64,
    stored_dtypes: Vec<String>,
    bytes_on_disk: u64,
    /// What the run holds in memory: all the weights in the chosen dtype for the DiT and the
    /// VAE; for the T5, which is streamed from its files, its largest block as stored.
    memory_bytes: u64,
}

fn info(args: InfoArgs, global: &crate::cli::Global) -> anyhow::Result<Outcome> {
    let (cfg, _) = args.source.load()?;
    let files =
        crate::model_source::model_files(&cfg, args.source.model_dir.as_deref(), "--model-dir")?;
    let dtype: candle_core::DType = args.dtype.parse().map_err(|_| {
        anyhow::anyhow!("invalid dtype '{}' (expected f32, bf16 or f16)", args.dtype)
    })?;
    // bf16 on the CPU holds only the product weights in bf16 (`cpu_bf16`).
    let device = ace::device::open(global.device)?;
    let components = [
        ("dit", &files.dit, Products::Linear),
        ("vae", &files.vae, Products::Convolution),
        ("text_encoder", &files.text_encoder, Products::Linear),
    ]
    .into_iter()
    .map(|(component, path, products)| {
        let held = |e: &checkpoint::Entry| {
            cpu_bf16::held_dtype(&device, dtype, products, &e.name, e.shape.len())
        };
        describe(component, path, &held)
    })
    .collect::<anyhow::Result<Vec<_>>>()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "config": cfg.origin,
            "tokenizer": files.tokenizer,
            "dtype": args.dtype,
            "components": components,
            "parameters": components.iter().map(|c| c.parameters).sum::<u64>(),
            "memory_bytes": {
                "text_phase": text_phase(&components),
                "model_phase": model_phase(&components),
            },
        });
        writeln!(out, "{doc}")?;
        return Ok(Outcome::Success);
    }
    writeln!(out, "config     {}", cfg.origin)?;
    writeln!(out, "tokenizer  {}", files.tokenizer.display())?;
    writeln!(
        out,
        "{:<13} {:>8} {:>15} {:>10} {:>12} {:>14}  path",
        "component",
        "tensors",
        "parameters",
        "stored",
        "on disk",
        &format!("memory ({})", args.dtype)
    )?;
    for c in &components {
        writeln!(
            out,
            "{:<13} {:>8} {:>15} {:>10} {:>12} {:>14}  {}",
            c.component,
            c.tensors,
            c.parameters,
            c.stored_dtypes.join(","),
            crate::ui::human_bytes(c.bytes_on_disk),
            crate::ui::human_bytes(c.memory_bytes),
            c.path.display()
        )?;
    }
    writeln!(
        out,
        "memory for weights: {} while the prompts are encoded, then {} (DiT and VAE)",
        crate::ui::human_bytes(text_phase(&components)),
        crate::ui::human_bytes(model_phase(&components))
    )?;
    Ok(Outcome::Success)
}

/// One component's files; `held` gives the dtype each of its tensors is held in.
fn describe(
    component: &'static str,
    path: &Path,
    held: &dyn Fn(&checkpoint::Entry) -> candle_core::DType,
) -> anyhow::Result<Component> {
    let entries = checkpoint::inventory(path)?;
    if entries.is_empty() {
        anyhow::bail!(
            "{}: holds no tensors (expected the {component} weights)",
            path.display()
        );
    }
    let parameters: u64 = entries
        .iter()
        .map(|e| e.shape.iter().product::<usize>() as u64)
        .sum();
    let mut stored: Vec<String> = entries
        .iter()
        .map(|e| format!("{:?}", e.dtype).to_lowercase())
        .collect();
    stored.sort();
    stored.dedup();
    let bytes_on_disk = checkpoint::weight_files(path)?
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    Ok(Component {
        component,
        path: path.to_path_buf(),
        tensors: entries.len(),
        parameters,
        stored_dtypes: stored,
        bytes_on_disk,
        memory_bytes: if component == "text_encoder" {
            largest_block(&entries)
        } else {
            entries
                .iter()
                .map(|e| e.shape.iter().product::<usize>() as u64 * held(e).size_in_bytes() as u64)
                .sum()
        },
    })
}

/// The bytes of the largest `encoder.block.N` of a T5 as stored: what streaming it holds.
fn largest_block(entries: &[checkpoint::Entry]) -> u64 {
    let mut blocks: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for e in entries {
        let Some(rest) = e.name.strip_prefix("encoder.block.") else {
            continue;
        };
        let block = &e.name[..e.name.len() - rest.len() + rest.find('.').unwrap_or(rest.len())];
        let bytes = e.shape.iter().product::<usize>() as u64 * e.dtype.size_in_bytes() as u64;
        *blocks.entry(block).or_default() += bytes;
    }
    blocks.values().copied().max().unwrap_or(0)
}

/// Weights held while the prompts are encoded (the streamed T5).
fn text_phase(components: &[Component]) -> u64 {
    components
        .iter()
        .filter(|c| c.component == "text_encoder")
        .map(|c| c.memory_bytes)
        .sum()
}

/// Weights held while sampling and decoding (the DiT and the VAE).
fn model_phase(components: &[Component]) -> u64 {
    components
        .iter()
        .filter(|c| c.component != "text_encoder")
        .map(|c| c.memory_bytes)
        .sum()
}
