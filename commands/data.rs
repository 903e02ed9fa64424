//! `ace data`: builds training pairs (masks, mined pairs, template instructions, low-level
//! analysis pairs). The work is in `ace::data`; this file maps flags to calls and prints the
//! counts on stderr.

use crate::Outcome;
use ace::data::{self, masks, pairs};
use anyhow::{bail, Context};
use rayon::prelude::*;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Random inpainting/outpainting masks (LaMa-style), one PNG per mask (255 = masked).
    Masks(MasksArgs),
    /// Mine image pairs from embeddings: k-means, then union-find over pairs in a similarity band.
    Pairs(PairsArgs),
    /// Turn a pairs file into a dataset with template instructions for a task.
    Instructions(InstructionsArgs),
    /// Low-level analysis (image -> condition) and controllable generation (condition -> image)
    /// pairs, global and regional.
    Lowlevel(LowlevelArgs),
}

#[derive(Debug, clap::Args)]
pub struct MasksArgs {
    /// Mask size, WxH.
    #[arg(long, value_name = "WxH", value_parser = |s: &str| masks::parse_size(s).map_err(|e| e.to_string()))]
    pub size: (u32, u32),
    /// Shape family.
    #[arg(long, value_parser = ["irregular", "box", "outpaint"])]
    pub kind: String,
    /// Number of masks.
    #[arg(long, value_name = "N")]
    pub count: u64,
    /// Seed: mask i is a function of (seed, i) alone.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Range of the masked fraction, MIN-MAX.
    #[arg(long, default_value = "0.1-0.5", value_name = "MIN-MAX")]
    pub coverage: String,
    /// Output folder (masks are named 000000.png, 000001.png, ...).
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["embeddings", "images"])))]
pub struct PairsArgs {
    /// Embeddings: a .npy (N x D float32) or a safetensors file with a tensor `embeddings`.
    #[arg(long, value_name = "FILE")]
    pub embeddings: Option<PathBuf>,
    /// Images to embed with --encoder (a folder, searched recursively); ids are their paths
    /// relative to it.
    #[arg(long, value_name = "DIR", requires = "encoder")]
    pub images: Option<PathBuf>,
    /// Image encoder for --images: clip (the CLIP image tower of `ace eval`).
    #[arg(long, value_parser = ["clip"], requires = "clip_model")]
    pub encoder: Option<String>,
    /// The CLIP model for --encoder clip: a folder in the Hugging Face layout or a hub id in the
    /// cache (e.g. openai/clip-vit-base-patch32).
    #[arg(long, value_name = "DIR|REPO")]
    pub clip_model: Option<String>,
    /// Ids of the rows, one per line (default: row numbers).
    #[arg(long, value_name = "FILE")]
    pub ids: Option<PathBuf>,
    /// Number of k-means clusters (default: clusters of about max(1024, sqrt(N)) rows).
    #[arg(long, value_name = "K")]
    pub clusters: Option<usize>,
    /// Lowest cosine similarity of a pair.
    #[arg(long, default_value_t = 0.85)]
    pub low: f32,
    /// Highest cosine similarity of a pair (above: near-duplicates, dropped).
    #[arg(long, default_value_t = 0.98)]
    pub high: f32,
    /// Seed of the clustering.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write only the sets.
    #[arg(long, conflicts_with = "pairs_only")]
    pub sets_only: bool,
    /// Write only the pairs.
    #[arg(long)]
    pub pairs_only: bool,
    /// Output JSON-lines file.
    #[arg(long, value_name = "PAIRS.jsonl")]
    pub out: PathBuf,
    /// Recompute even if the output exists and is complete.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct InstructionsArgs {
    /// Task (a name from presets/tasks.yaml, e.g. inpainting, object.remove, control.canny).
    #[arg(long)]
    pub task: String,
    /// Pairs file (JSON lines with "a", "b" and slot fields such as "object_name").
    #[arg(long = "in", value_name = "PAIRS")]
    pub input: PathBuf,
    /// Dataset folder to write (data.jsonl inside).
    #[arg(long, value_name = "DATASET")]
    pub out: PathBuf,
    /// Seed of the phrasing choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct LowlevelArgs {
    /// Folder of photos.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Analysis operations, comma-separated: canny, contour, degrade, doodle, gray, mosaic,
    /// scribble, segment.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ops: Vec<String>,
    /// Probability that a pair is regional (the operation applied inside a random mask).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub regional: f64,
    /// Coverage range of the regional masks, MIN-MAX.
    #[arg(long, default_value = "0.1-0.5", value_name = "MIN-MAX")]
    pub coverage: String,
    /// Captions, JSON lines {"image": FILE_NAME, "caption": TEXT}, used by the control pairs.
    #[arg(long, value_name = "FILE")]
    pub captions: Option<PathBuf>,
    /// Seed of the regional choice, masks and phrasings.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dataset folder to write.
    #[arg(long, value_name = "DATASET")]
    pub out: PathBuf,
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<Outcome> {
    match args.command {
        DataCommand::Masks(a) => run_masks(a, quiet),
        DataCommand::Pairs(a) => run_pairs(a, quiet),
        DataCommand::Instructions(a) => run_instructions(a, quiet),
        DataCommand::Lowlevel(a) => run_lowlevel(a, quiet),
    }
}

fn run_masks(a: MasksArgs, quiet: bool) -> anyhow::Result<Outcome> {
    let kind: masks::MaskKind = a.kind.parse()?;
    let range: masks::Coverage = a.coverage.parse()?;
    let (w, h) = a.size;
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let written = (0..a.count)
        .into_par_iter()
        .map(|i| -> anyhow::Result<bool> {
            let path = a.out.join(format!("{i:06}.png"));
            if data::image_complete(&path, w, h) {
                return Ok(false);
            }
            let m = masks::generate(kind, w, h, range, a.seed, i)?;
            ace::imageio::save(&image::DynamicImage::ImageLuma8(m), &path, None)?;
            Ok(true)
        })
        .collect::<anyhow::Result<Vec<bool>>>()?;
    let new = written.iter().filter(|&&b| b).count();
    if !quiet {
        eprintln!(
            "masks: {new} written, {} already complete, in {}",
            written.len() - new,
            a.out.display()
        );
    }
    Ok(Outcome::Success)
}

fn run_pairs(a: PairsArgs, quiet: bool) -> anyhow::Result<Outcome> {
    if !a.force && data::jsonl_complete(&a.out) {
        if !quiet {
            eprintln!(
                "pairs: {} is already complete (--force recomputes it)",
                a.out.display()
            );
        }
        return Ok(Outcome::Success);
    }
    let mut outcome = Outcome::Success;
    let (emb, ids) = match (&a.embeddings, &a.images, &a.clip_model) {
        (Some(path), _, _) => {
            let emb = data::embeddings::load(path)?;
            let ids = a
                .ids
                .as_deref()
                .map(|p| data::embeddings::load_ids(p, emb.rows))
                .transpose()?;
            (emb, ids)
        }
        (None, Some(dir), Some(model)) => {
            let clip_dir = ace::eval::locate::model_dir(model, "CLIP")?;
            let clip = ace::eval::clip::Clip::load(&clip_dir, &candle_core::Device::Cpu)?;
            let found = ace::inputs::expand(&[dir.to_string_lossy().into_owned()], true);
            let embedded = data::embed::clip_images(&found.inputs, &clip)?;
            for e in found.errors.iter().chain(&embedded.failures) {
                eprintln!("ace: {e}");
                outcome = Outcome::SomeFailed;
            }
            if !quiet {
                eprintln!(
                    "pairs: embedded {} images with CLIP ({} unreadable)",
                    embedded.ids.len(),
                    embedded.failures.len()
                );
            }
            (embedded.embeddings, Some(embedded.ids))
        }
        _ => bail!("give --embeddings FILE, or --images DIR --encoder clip --clip-model DIR"),
    };
    let cfg = pairs::PairConfig {
        clusters: a.clusters,
        low: a.low,
        high: a.high,
        seed: a.seed,
    };
    let mined = pairs::mine(emb, &cfg)?;
    let text = pairs::to_jsonl(&mined, ids.as_deref(), !a.pairs_only, !a.sets_only);
    ace::imageio::write_atomic(&a.out, text.as_bytes())?;
    if !quiet {
        let s = &mined.stats;
        eprintln!(
            "pairs: {} rows in {} clusters (largest {}); {} pairs compared: {} kept, {} dropped as \
             near-duplicates (sim > {}), {} dropped as unrelated (sim < {}); {} sets holding {} rows",
            s.rows, s.clusters, s.largest_cluster, s.compared, s.kept, s.near_duplicates, a.high,
            s.unrelated, a.low, mined.sets.len(), s.rows_in_sets
        );
    }
    Ok(outcome)
}

fn run_instructions(a: InstructionsArgs, quiet: bool) -> anyhow::Result<Outcome> {
    let s = data::instructions::build(&a.input, &a.task, &a.out, a.seed)?;
    if !quiet {
        eprintln!(
            "instructions: {} pairs kept; dropped: {} set lines, {} with a missing image, {} \
             lacking a slot the task needs",
            s.kept, s.sets_skipped, s.missing_file, s.missing_slot
        );
    }
    Ok(Outcome::Success)
}

fn run_lowlevel(a: LowlevelArgs, quiet: bool) -> anyhow::Result<Outcome> {
    use ace::data::lowlevel;
    let ops = a
        .ops
        .iter()
        .map(|n| lowlevel::operation(n.trim()))
        .collect::<ace::Result<Vec<_>>>()?;
    let images = lowlevel::list_images(&a.images)?;
    if images.is_empty() {
        bail!(
            "{}: no images (png, jpg, webp, bmp, tiff) in this folder",
            a.images.display()
        );
    }
    let captions = match &a.captions {
        Some(p) => lowlevel::load_captions(p)?,
        None => Default::default(),
    };
    let cfg = lowlevel::LowLevelConfig {
        regional: a.regional,
        coverage: a.coverage.parse()?,
        seed: a.seed,
    };
    let s = lowlevel::build(&images, &ops, &captions, &a.out, &cfg)?;
    for f in &s.failures {
        eprintln!("ace: {f}");
    }
    if !quiet {
        eprintln!(
            "lowlevel: {} images, {} pairs kept ({} regional); conditions {} computed, {} reused; \
             dropped: {} unreadable images",
            s.images, s.pairs, s.regional, s.computed, s.reused, s.failed
        );
    }
    Ok(if s.failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}
