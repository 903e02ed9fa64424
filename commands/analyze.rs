//! `ace analyze <op> INPUT... [-o OUT] [--mask MASK]`: the paper's low-level analysis
//! operations over a batch of images. This file only turns flags into an
//! [`ace::analyze::Operation`] and prints reports; expanding inputs, planning outputs and running
//! the batch are `ace::inputs` and `ace::batch`.
//!
//! Adding an operation: one [`Op`] variant `Name(Run<NameArgs>)`, a `NameArgs` struct with the
//! operation's flags, its [`Build`] impl calling the library constructor, and one arm in
//! [`Op::parts`].

use crate::analyze_ace::EngineArgs;
use crate::analyze_ops::{ContourArgs, DegradeArgs, DoodleArgs, ScribbleArgs, SegmentArgs};
use crate::cli::Global;
use crate::Outcome;
use ace::analyze::{canny, depth, mosaic, pose, Canny, Depth, Gray, Mosaic, Operation, Pose};
use ace::batch::{self, Destination, Report};
use ace::imageio::OutputFormat;
use ace::Error;
use anyhow::{bail, Context};
use image::DynamicImage;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub op: Op,
}

/// The operations.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Canny edges (OpenCV, hysteresis thresholds 100/200), written as three channels.
    Canny(Run<CannyArgs>),
    /// Luminance (OpenCV RGB to GRAY), written as three channels.
    Gray(Run<GrayArgs>),
    /// Pixelation: a bicubic shrink to side/RATIO cells, then a nearest-neighbour enlargement.
    Mosaic(Run<MosaicArgs>),
    /// Depth: a MiDaS v2.1 ONNX network (--model), min-max scaled grey, near is bright.
    Depth(Run<DepthArgs>),
    /// Pose: an OpenPose COCO-18 body network (--model), drawn as the ControlNet skeleton on
    /// black.
    Pose(Run<PoseArgs>),
    /// Real-ESRGAN-style degradation (noise, down/up-scale, JPEG, blur in a random order),
    /// seeded.
    Degrade(Run<DegradeArgs>),
    /// ControlNet 1.1 scribble: XDoG edges, non-maximum suppression, widened strokes.
    Scribble(Run<ScribbleArgs>),
    /// Line drawing (ControlNet 1.1 lineart_standard), white lines on black.
    Contour(Run<ContourArgs>),
    /// Rough hand-drawn strokes: a coarse scribble without short strokes.
    Doodle(Run<DoodleArgs>),
    /// Colour regions (mean shift, k-means in Lab, connected components) filled with their
    /// mean colour or a palette.
    Segment(Run<SegmentArgs>),
}

impl Op {
    /// The operation's name, as on the command line.
    fn name(&self) -> &'static str {
        match self {
            Op::Canny(_) => "canny",
            Op::Gray(_) => "gray",
            Op::Mosaic(_) => "mosaic",
            Op::Depth(_) => "depth",
            Op::Pose(_) => "pose",
            Op::Degrade(_) => "degrade",
            Op::Scribble(_) => "scribble",
            Op::Contour(_) => "contour",
            Op::Doodle(_) => "doodle",
            Op::Segment(_) => "segment",
        }
    }

    /// The options every operation shares, and the operation's own.
    fn parts(&self) -> (&Common, &dyn Build) {
        match self {
            Op::Canny(r) => (&r.common, &r.op),
            Op::Gray(r) => (&r.common, &r.op),
            Op::Mosaic(r) => (&r.common, &r.op),
            Op::Depth(r) => (&r.common, &r.op),
            Op::Pose(r) => (&r.common, &r.op),
            Op::Degrade(r) => (&r.common, &r.op),
            Op::Scribble(r) => (&r.common, &r.op),
            Op::Contour(r) => (&r.common, &r.op),
            Op::Doodle(r) => (&r.common, &r.op),
            Op::Segment(r) => (&r.common, &r.op),
        }
    }
}

/// An operation's flags, made into the library's operation.
pub trait Build {
    fn build(&self) -> ace::Result<Box<dyn Operation>>;
}

/// The command line of one operation: shared options and its own.
#[derive(Debug, clap::Args)]
pub struct Run<T: clap::Args + Build> {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    op: T,
}

/// Options every operation takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Images: files, folders, glob patterns (quoted), or - for standard input.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// A file or device for one input (its extension picks the format), a folder (an existing
    /// one, a path ending in /, or whenever there are several inputs; outputs keep the input
    /// names), or - for standard output. Optional when the only input is standard input.
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Apply only inside this mask (pixels above 128, resized nearest-neighbour to each
    /// image); outside it the output equals the input. A mask that selects nothing is an error.
    #[arg(long, value_name = "MASK")]
    mask: Option<PathBuf>,
    /// Look for images in subfolders of folder inputs too.
    #[arg(short, long)]
    recursive: bool,
    /// Output format: png, jpg, webp, bmp, tif or gif (default: the output file's extension,
    /// else png); it must agree with the output file's extension.
    #[arg(long, value_name = "FORMAT")]
    format: Option<OutputFormat>,
    /// Print one JSON line per input on standard output (input, output, op, parameters,
    /// milliseconds, or the error).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, clap::Args)]
pub struct CannyArgs {
    /// Low hysteresis threshold.
    #[arg(long, default_value_t = canny::LOW_THRESHOLD, value_name = "T")]
    low: f64,
    /// High hysteresis threshold.
    #[arg(long, default_value_t = canny::HIGH_THRESHOLD, value_name = "T")]
    high: f64,
}

impl Build for CannyArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        Ok(Box::new(Canny::new(self.low, self.high)?))
    }
}

#[derive(Debug, clap::Args)]
pub struct GrayArgs {}

impl Build for GrayArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        Ok(Box::new(Gray))
    }
}

#[derive(Debug, clap::Args)]
pub struct MosaicArgs {
    /// Cells a side = side / RATIO rounded down (the reference): blocks of at least RATIO px.
    #[arg(long, default_value_t = mosaic::RATIO, value_name = "RATIO")]
    ratio: u32,
    /// Instead of --ratio: blocks of at most PIXELS (cells a side = side / PIXELS rounded up).
    #[arg(long, value_name = "PIXELS", conflicts_with = "ratio")]
    block: Option<u32>,
}

impl Build for MosaicArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        let cells = match self.block {
            Some(b) => mosaic::Cells::Block(b),
            None => mosaic::Cells::Ratio(self.ratio),
        };
        Ok(Box::new(Mosaic::new(cells)?))
    }
}

#[derive(Debug, clap::Args)]
pub struct DepthArgs {
    /// The MiDaS network: model-small.onnx (v2.1 small, 256 px) or model-f6b98070.onnx (v2.1
    /// large, with --size 384).
    #[arg(long, value_name = "FILE.onnx")]
    model: Vec<PathBuf>,
    /// Side of the square network input, in pixels.
    #[arg(long, default_value_t = depth::DEFAULT_SIZE, value_name = "PIXELS")]
    size: u32,
    /// Skip the ImageNet mean/std normalisation (for exports that normalise inside).
    #[arg(long)]
    no_normalize: bool,
}

impl Build for DepthArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        let params = depth::DepthParams {
            size: self.size,
            normalize: !self.no_normalize,
            flags: depth::FLAGS,
        };
        Ok(Box::new(Depth::new(&self.model, params)?))
    }
}

#[derive(Debug, clap::Args)]
pub struct PoseArgs {
    /// The OpenPose COCO body network: give --model twice for Caffe
    /// (pose_deploy_linevec.prototxt and pose_iter_440000.caffemodel), once for ONNX.
    #[arg(long, value_name = "FILE")]
    model: Vec<PathBuf>,
    /// Network input height in pixels (the width follows the aspect ratio).
    #[arg(long, default_value_t = pose::DEFAULT_HEIGHT, value_name = "PIXELS")]
    height: u32,
    /// Heatmap value a keypoint must exceed (0 to 1).
    #[arg(long, default_value_t = pose::DEFAULT_THRESHOLD, value_name = "T")]
    threshold: f32,
}

impl Build for PoseArgs {
    fn build(&self) -> ace::Result<Box<dyn Operation>> {
        let params = pose::PoseParams {
            height: self.height,
            threshold: self.threshold,
            flags: pose::FLAGS,
        };
        Ok(Box::new(Pose::new(&self.model, params)?))
    }
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<Outcome> {
    let (common, build) = args.op.parts();
    let op = if common.engine.is_ace() {
        common.engine.build(args.op.name(), global)?
    } else {
        build.build()?
    };
    let mask = match &common.mask {
        None => None,
        Some(path) => match ace::imageio::load(path).map(|m| m.to_luma8()) {
            Ok(m) if m.pixels().any(|p| p[0] > 128) => Some(m),
            Ok(_) => {
                eprintln!(
                    "ace: {}: the mask selects no pixel (white, above 128, marks the region)",
                    path.display()
                );
                return Ok(Outcome::SomeFailed);
            }
            Err(e) => {
                eprintln!("ace: {e}");
                return Ok(Outcome::SomeFailed);
            }
        },
    };

    let expansion = ace::inputs::expand(&common.inputs, common.recursive);
    for e in &expansion.errors {
        eprintln!("ace: {e}");
    }
    let expansion_failed = !expansion.errors.is_empty();
    if expansion.inputs.is_empty() {
        return Ok(Outcome::SomeFailed);
    }
    let jobs = batch::plan(
        expansion.inputs,
        expansion.plural,
        common.output.as_deref(),
        common.format,
    )?;
    if jobs
        .iter()
        .any(|j| matches!(j.output, Ok((Destination::Stdout, _))))
    {
        if common.json {
            bail!("--json and '-o -' would both write to standard output");
        }
        if std::io::stdout().is_terminal() {
            bail!("refusing to write a binary image to a terminal (redirect standard output or use -o FILE)");
        }
    }
    if jobs.len() > 1 {
        // Parallelism is across images; OpenCV's own threads would only compete with them.
        opencv::core::set_num_threads(1).context("setting OpenCV's thread count")?;
    }

    let progress = crate::ui::progress_bar(global, jobs.len() as u64, op.name(), "images");
    let stdout_error: Mutex<Option<std::io::Error>> = Mutex::new(None);
    let work = |img: DynamicImage| {
        ace::analyze::apply(op.as_ref(), &img.to_rgb8(), mask.as_ref()).map(DynamicImage::ImageRgb8)
    };
    let report = |r: Report| {
        if let Err(e) = &r.result {
            if is_broken_pipe(e) {
                keep_first(&stdout_error, std::io::ErrorKind::BrokenPipe.into());
            } else {
                let line = format!("ace: {}", describe(r.input.display_path(), e));
                match &progress {
                    Some(bar) => bar.suspend(|| eprintln!("{line}")),
                    None => eprintln!("{line}"),
                }
            }
        }
        if common.json {
            let line = json_line(&r, op.as_ref());
            if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
                keep_first(&stdout_error, e);
            }
        }
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    };
    // The model runs one image at a time (it uses every core, or the GPU, by itself).
    let summary = if common.engine.is_ace() {
        jobs.chunks(1)
            .fold(batch::Summary::default(), |total, one| {
                let s = batch::run(one, work, report);
                batch::Summary {
                    done: total.done + s.done,
                    failed: total.failed + s.failed,
                    skipped: total.skipped + s.skipped,
                }
            })
    } else {
        batch::run(&jobs, work, report)
    };
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Some(e) = stdout_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(anyhow::Error::new(e).context("writing to standard output"));
    }
    crate::ui::info(
        global,
        format_args!(
            "{}: {} written, {} failed, {} skipped",
            op.name(),
            summary.done,
            summary.failed,
            summary.skipped
        ),
    );
    Ok(if summary.skipped > 0 {
        Outcome::Interrupted
    } else if summary.failed > 0 || expansion_failed {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

/// The error as one line naming the input (file errors name their file already).
fn describe(input: &std::path::Path, e: &Error) -> String {
    match e {
        Error::Image { .. } | Error::Io { .. } | Error::Output { .. } => e.to_string(),
        _ => format!("{}: {e}", input.display()),
    }
}

fn is_broken_pipe(e: &Error) -> bool {
    matches!(e, Error::Io { path, source }
        if path.as_os_str() == "-" && source.kind() == std::io::ErrorKind::BrokenPipe)
}

fn keep_first(slot: &Mutex<Option<std::io::Error>>, e: std::io::Error) {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    slot.get_or_insert(e);
}

fn json_line(r: &Report, op: &dyn Operation) -> serde_json::Value {
    let mut line = serde_json::json!({
        "input": r.input.display_path(),
        "output": r.output.map(Destination::display_path),
        "op": op.name(),
        "parameters": op.parameters(),
    });
    match &r.result {
        Ok(()) => line["milliseconds"] = serde_json::json!((r.millis * 1e3).round() / 1e3),
        Err(e) => line["error"] = serde_json::json!(describe(r.input.display_path(), e)),
    }
    line
}
