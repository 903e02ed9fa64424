//! `ace data`: builds training pairs (masks, mined pairs, template instructions, low-level
//! analysis pairs). The work is in `ace::data`; this file maps flags to calls, reports each
//! dropped input on stderr and the counts as an informational line or, with `--json`, as one
//! JSON object on stdout.

use crate::cli::Global;
use crate::ui;
use crate::Outcome;
use ace::data::{self, masks, pairs};
use anyhow::bail;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

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

/// The counts as one JSON object on stdout instead of a line on stderr.
#[derive(Debug, clap::Args)]
pub struct JsonFlag {
    /// Print the counts as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct MasksArgs {
    /// Mask size, WxH (at most 16384 a side and 64 megapixels).
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
    /// Range of the masked fraction, MIN-MAX; each mask's coverage is drawn uniformly in it.
    #[arg(long, default_value = "0.1-0.5", value_name = "MIN-MAX")]
    pub coverage: String,
    /// Output folder (masks are named 000000.png, 000001.png, ...).
    #[arg(short, long, alias = "out", value_name = "DIR")]
    pub output: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["embeddings", "images"])))]
pub struct PairsArgs {
    /// Embeddings: a .npy (N x D float32) or a safetensors file with a tensor `embeddings`.
    #[arg(long, value_name = "FILE")]
    pub embeddings: Option<PathBuf>,
    /// Images to embed with --encoder (a folder, searched recursively); ids are their paths
    /// relative to the output file's folder, as `ace data instructions` reads them.
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
    #[arg(short, long, alias = "out", value_name = "PAIRS.jsonl")]
    pub output: PathBuf,
    /// Recompute even if the output exists and is complete.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, clap::Args)]
pub struct InstructionsArgs {
    /// Task (a name from presets/tasks.yaml, e.g. inpainting, object.remove, control.canny).
    #[arg(long)]
    pub task: String,
    /// Pairs file (JSON lines with "a", "b" and slot fields such as "object_name"; paths
    /// relative to its folder); - reads standard input.
    #[arg(long = "in", value_name = "PAIRS")]
    pub input: PathBuf,
    /// Dataset folder to write (data.jsonl inside).
    #[arg(short, long, alias = "out", value_name = "DATASET")]
    pub output: PathBuf,
    /// Seed of the phrasing choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, clap::Args)]
pub struct LowlevelArgs {
    /// Folder of photos.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Look for photos in subfolders of --images too.
    #[arg(short, long)]
    pub recursive: bool,
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
    /// Captions, JSON lines {"image": NAME, "caption": TEXT}, NAME a photo's file name or path
    /// below --images; used by the control pairs.
    #[arg(long, value_name = "FILE")]
    pub captions: Option<PathBuf>,
    /// Seed of the regional choice, masks and phrasings.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dataset folder to write.
    #[arg(short, long, alias = "out", value_name = "DATASET")]
    pub output: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<Outcome> {
    match args.command {
        DataCommand::Masks(a) => run_masks(a, global),
        DataCommand::Pairs(a) => run_pairs(a, global),
        DataCommand::Instructions(a) => run_instructions(a, global),
        DataCommand::Lowlevel(a) => run_lowlevel(a, global),
    }
}

/// Reports the counts: JSON on stdout with `--json`, else `line` as an informational line.
fn summary(
    json: &JsonFlag,
    global: &Global,
    value: serde_json::Value,
    line: String,
) -> std::io::Result<()> {
    if json.json {
        ui::print_line(value)
    } else {
        ui::info(global, line);
        Ok(())
    }
}

fn run_masks(a: MasksArgs, global: &Global) -> anyhow::Result<Outcome> {
    let kind: masks::MaskKind = a.kind.parse()?;
    let range: masks::Coverage = a.coverage.parse()?;
    let (w, h) = a.size;
    ace::output::create_dir(&a.output)?;
    let written = (0..a.count)
        .into_par_iter()
        .map(|i| -> anyhow::Result<Option<bool>> {
            if ace::cancel::requested() {
                return Ok(None);
            }
            let path = a.output.join(format!("{i:06}.png"));
            if data::image_complete(&path, w, h) {
                return Ok(Some(false));
            }
            let m = masks::generate(kind, w, h, range, a.seed, i)?;
            ace::imageio::save(&image::DynamicImage::ImageLuma8(m), &path, None)?;
            Ok(Some(true))
        })
        .collect::<anyhow::Result<Vec<Option<bool>>>>()?;
    let new = written.iter().filter(|&&b| b == Some(true)).count();
    let complete = written.iter().filter(|&&b| b == Some(false)).count();
    let skipped = written.iter().filter(|b| b.is_none()).count();
    summary(
        &a.json,
        global,
        serde_json::json!({
            "written": new, "complete": complete, "skipped": skipped,
            "folder": a.output, "seed": a.seed,
        }),
        format!(
            "masks: {new} written, {complete} already complete, in {} (seed {})",
            a.output.display(),
            a.seed
        ),
    )?;
    Ok(if skipped > 0 {
        Outcome::Interrupted
    } else {
        Outcome::Success
    })
}

fn run_pairs(a: PairsArgs, global: &Global) -> anyhow::Result<Outcome> {
    let inputs: Vec<&Path> = a
        .embeddings
        .iter()
        .chain(&a.ids)
        .map(PathBuf::as_path)
        .collect();
    ace::output::refuse_inputs(&a.output, inputs)?;
    ace::output::check(&a.output, false)?;
    if !a.force && data::jsonl_complete(&a.output) {
        ui::info(
            global,
            format_args!(
                "pairs: {} is already complete (--force recomputes it)",
                a.output.display()
            ),
        );
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
            let clip_dir = ace::model::vision::locate::model_dir(model, "CLIP")?;
            let clip = ace::model::vision::clip::Clip::load(&clip_dir, &candle_core::Device::Cpu)?;
            let found = ace::inputs::expand(&[dir.to_string_lossy().into_owned()], true);
            let embedded = data::embed::clip_images(&found.inputs, &clip)?;
            for e in found.errors.iter().chain(&embedded.failures) {
                eprintln!("ace: {e}");
                outcome = Outcome::SomeFailed;
            }
            ui::info(
                global,
                format_args!(
                    "pairs: embedded {} images with CLIP ({} unreadable)",
                    embedded.ids.len(),
                    embedded.failures.len()
                ),
            );
            // Ids name the images as seen from the pairs file's folder, where
            // `ace data instructions` resolves them.
            let base = a.output.parent().unwrap_or(Path::new(""));
            let ids = embedded
                .ids
                .iter()
                .map(|id| data::dataset::relative(&dir.join(id), base))
                .collect::<ace::Result<Vec<_>>>()?;
            (embedded.embeddings, Some(ids))
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
    ace::output::write(&a.output, text.as_bytes())?;
    let s = &mined.stats;
    summary(
        &a.json,
        global,
        serde_json::json!({
            "rows": s.rows, "clusters": s.clusters, "largest_cluster": s.largest_cluster,
            "compared": s.compared, "kept": s.kept, "near_duplicates": s.near_duplicates,
            "unrelated": s.unrelated, "sets": mined.sets.len(), "rows_in_sets": s.rows_in_sets,
            "seed": a.seed, "output": a.output,
        }),
        format!(
            "pairs: {} rows in {} clusters (largest {}); {} pairs compared: {} kept, {} dropped as \
             near-duplicates (sim > {}), {} dropped as unrelated (sim < {}); {} sets holding {} rows",
            s.rows,
            s.clusters,
            s.largest_cluster,
            s.compared,
            s.kept,
            s.near_duplicates,
            a.high,
            s.unrelated,
            a.low,
            mined.sets.len(),
            s.rows_in_sets
        ),
    )?;
    Ok(outcome)
}

fn run_instructions(a: InstructionsArgs, global: &Global) -> anyhow::Result<Outcome> {
    ace::output::refuse_inputs(&a.output.join(data::dataset::INDEX), [a.input.as_path()])?;
    let s = data::instructions::build(&a.input, &a.task, &a.output, a.seed)?;
    for p in &s.problems {
        eprintln!("ace: {p}");
    }
    if s.kept == 0 && !global.quiet {
        eprintln!(
            "ace: warning: {}: no pairs written (the dataset is empty)",
            a.output.display()
        );
    }
    summary(
        &a.json,
        global,
        serde_json::json!({
            "kept": s.kept, "sets_skipped": s.sets_skipped, "bad_lines": s.bad_lines,
            "missing_file": s.missing_file, "missing_slot": s.missing_slot,
            "seed": a.seed, "output": a.output,
        }),
        format!(
            "instructions: {} pairs kept; dropped: {} set lines, {} bad lines, {} with a missing \
             image, {} lacking a slot the task needs",
            s.kept, s.sets_skipped, s.bad_lines, s.missing_file, s.missing_slot
        ),
    )?;
    Ok(if s.problems.is_empty() {
        Outcome::Success
    } else {
        Outcome::SomeFailed
    })
}

fn run_lowlevel(a: LowlevelArgs, global: &Global) -> anyhow::Result<Outcome> {
    use ace::data::lowlevel;
    let ops = a
        .ops
        .iter()
        .map(|n| lowlevel::operation(n.trim()))
        .collect::<ace::Result<Vec<_>>>()?;
    let images = lowlevel::list_images(&a.images, a.recursive)?;
    let captions = match &a.captions {
        Some(p) => lowlevel::load_captions(p)?,
        None => Default::default(),
    };
    let cfg = lowlevel::LowLevelConfig {
        regional: a.regional,
        coverage: a.coverage.parse()?,
        seed: a.seed,
    };
    let s = lowlevel::build(&images, &ops, &captions, &a.output, &cfg)?;
    for f in &s.failures {
        eprintln!("ace: {f}");
    }
    summary(
        &a.json,
        global,
        serde_json::json!({
            "images": s.images, "pairs": s.pairs, "regional": s.regional,
            "computed": s.computed, "reused": s.reused, "failed": s.failed,
            "skipped": s.skipped, "seed": a.seed, "output": a.output,
        }),
        format!(
            "lowlevel: {} images, {} pairs kept ({} regional); conditions {} computed, {} reused; \
             dropped: {} unreadable images",
            s.images, s.pairs, s.regional, s.computed, s.reused, s.failed
        ),
    )?;
    Ok(if s.skipped > 0 {
        Outcome::Interrupted
    } else if s.failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}
