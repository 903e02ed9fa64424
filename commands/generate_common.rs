//! What every generation subcommand (`generate`, `edit`, `control`, `inpaint`, `outpaint`,
//! `layer`, `reference`) shares: the model and sampling options, reading the inputs (images,
//! masks, history), the [`Intent`] each subcommand implements (its flags turned into a
//! [`Job`]), and running it: a dry run that prints the plan, one generation (progress bar, the
//! PNG with the settings as tEXt chunks, the optional latent file and the summary), or a batch.

use crate::cli::Global;
use crate::Outcome;
use ace::config::AceConfig;
use ace::pipeline::{luma_pil, Ace, Generated, InputImage, Noise, Request, Turn};
use ace::sampler::Guidance;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Which model: a built-in preset or a config file, and where its weights are. Shared by every
/// command that loads the model (and by `ace model`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ModelSource {
    /// Built-in model config: ace_0.6b_512 (default) or ace_0.6b_1024.
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    pub preset: Option<String>,
    /// Model config file in the official ACE inference YAML schema.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder holding a downloaded model snapshot (resolves hf:// and ms:// weight names).
    #[arg(long, value_name = "DIR", env = "ACE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
}

impl ModelSource {
    /// The config the flags name (the default preset without either), and its name.
    pub fn load(&self) -> Result<(AceConfig, String)> {
        load_config(self.config.as_deref(), self.preset.as_deref())
    }
}

/// Options common to generation and editing.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub source: ModelSource,
    /// Negative prompt (default: the config's DEFAULT_N_PROMPT).
    #[arg(long, value_name = "TEXT")]
    pub negative: Option<String>,
    /// Sampling steps (default: the config's SAMPLE_STEPS).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less runs the conditional pass only.
    #[arg(long, value_name = "S")]
    pub guide_scale: Option<f64>,
    /// Guidance rescale in [0, 1].
    #[arg(long, value_name = "R")]
    pub guide_rescale: Option<f64>,
    /// Seed of the starting noise (random and reported when absent).
    #[arg(long, value_name = "N", conflicts_with = "noise")]
    pub seed: Option<u64>,
    /// Starting noise from a safetensors file, FILE.safetensors[:TENSOR].
    #[arg(long, value_name = "FILE[:TENSOR]")]
    pub noise: Option<String>,
    /// Earlier turns, YAML or JSON: [{image, mask?, instruction, task?}, ...].
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Which input image (history first) sets the output size and mask.
    #[arg(long, value_name = "I", default_value_t = 0)]
    pub tar_index: usize,
    /// Weight dtype: f32, bf16 or f16.
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Output PNG ('-' writes it to stdout).
    #[arg(short, long, value_name = "FILE", required_unless_present_any = ["batch", "dry_run"])]
    pub output: Option<PathBuf>,
    /// Print the frames, masks, tasks and instructions the model would see as one JSON
    /// document, without loading the model weights.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the jobs of a JSON-lines file (one per line, fields named after the long flags,
    /// e.g. {"image": ["a.png"], "prompt": "...", "seed": 3, "output": "out/a.png"}; paths
    /// relative to the current folder), keeping the model loaded; one JSON result line per job
    /// on stdout; exit 1 when some job failed.
    #[arg(long, value_name = "FILE.jsonl")]
    pub batch: Option<PathBuf>,
    /// With --batch: run only the jobs whose index is I modulo N.
    #[arg(long, value_name = "I/N", requires = "batch")]
    pub shard: Option<ace::tasks::batch::Shard>,
    /// With --batch: skip jobs whose output is already written.
    #[arg(long, requires = "batch")]
    pub resume: bool,
    /// Print a JSON summary (seed, sizes, prompts) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the final latent and the float image to a safetensors file.
    #[arg(long, value_name = "FILE", hide = true)]
    pub save_latent: Option<PathBuf>,
}

/// One earlier turn as the history file lists it.
#[derive(Debug, serde::Deserialize)]
struct HistoryEntry {
    image: PathBuf,
    #[serde(default)]
    mask: Option<PathBuf>,
    instruction: String,
    #[serde(default)]
    task: Option<String>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => bail!("invalid --dtype '{other}' (expected f32, bf16 or f16)"),
    })
}

/// `None` for the "no mask / no task" spellings.
fn optional(v: Option<&String>) -> Option<&str> {
    v.map(String::as_str)
        .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("none"))
}

/// The value of a flag that is required except on a --batch command line (each job then
/// needs it).
pub fn need<'a, T>(value: &'a Option<T>, flag: &str) -> Result<&'a T> {
    value.as_ref().with_context(|| format!("missing {flag}"))
}

/// Reads a mask as the reference does (PIL's `convert("L")`).
pub fn read_mask(path: &Path) -> Result<image::GrayImage> {
    Ok(luma_pil(&ace::imageio::load_rgb(path)?))
}

/// Reads an input image with its optional mask.
pub fn read_input(image: &Path, mask: Option<&Path>, task: &str) -> Result<InputImage> {
    let rgb = ace::imageio::load_rgb(image)?;
    let mask = mask.map(read_mask).transpose()?;
    Ok(InputImage {
        name: image.display().to_string(),
        image: rgb,
        mask,
        task: task.to_string(),
    })
}

/// Reads the images given with their positional masks and tasks.
pub fn read_inputs(
    images: &[PathBuf],
    masks: &[String],
    tasks: &[String],
) -> Result<Vec<InputImage>> {
    if masks.len() > images.len() || tasks.len() > images.len() {
        bail!(
            "{} --mask and {} --task for {} --image (they pair by position)",
            masks.len(),
            tasks.len(),
            images.len()
        );
    }
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let mask = optional(masks.get(i)).map(Path::new);
            read_input(img, mask, optional(tasks.get(i)).unwrap_or(""))
        })
        .collect()
}

fn read_history(path: &Path) -> Result<Vec<Turn>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let entries: Vec<HistoryEntry> = serde_yaml::from_str(&text).with_context(|| {
        format!(
            "{}: not a history list [{{image, mask?, instruction, task?}}]",
            path.display()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    entries
        .into_iter()
        .map(|e| {
            let mask = e.mask.as_ref().map(|m| base.join(m));
            Ok(Turn {
                input: read_input(
                    &base.join(&e.image),
                    mask.as_deref(),
                    e.task.as_deref().unwrap_or(""),
                )?,
                instruction: e.instruction,
            })
        })
        .collect()
}

/// PNG bytes of the image with the settings as tEXt chunks.
fn encode_png(img: &image::RgbImage, text: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_text_chunk(k.to_string(), v.clone())?;
        }
        enc.write_header()?.write_image_data(img.as_raw())?;
    }
    Ok(buf)
}

fn save_tensors(path: &Path, g: &Generated) -> Result<()> {
    let tmp = tempfile::NamedTempFile::new_in(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    candle_core::safetensors::save(
        &[("latent", g.latent.clone()), ("image", g.image.clone())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        tmp.path(),
    )?;
    tmp.persist(path)
        .with_context(|| format!("{}", path.display()))?;
    Ok(())
}

/// What a subcommand asks the model for: the instruction, the input images, and for text to
/// image the output size.
pub struct Job {
    pub instruction: String,
    pub images: Vec<InputImage>,
    /// `(height, width)` of a text-to-image output (each defaulting to the config's).
    pub size: (Option<usize>, Option<usize>),
    /// Which input sets the output size and mask when the subcommand decides it (else
    /// --tar-index).
    pub tar_index: Option<usize>,
    /// Earlier turns that come before --history's.
    pub history: Vec<Turn>,
}

impl Job {
    /// A job from a task family's result.
    pub fn from_task(t: ace::tasks::TaskJob) -> Self {
        Job {
            instruction: t.instruction,
            images: t.images,
            size: (None, None),
            tar_index: Some(t.tar_index),
            history: Vec::new(),
        }
    }
}

/// A generation subcommand's flags.
pub trait Intent {
    /// The shared model and sampling options.
    fn common(&self) -> &Common;
    /// The job; `seed` draws the instruction's phrasing; `cfg` is the model config (its token
    /// budget shapes outpainting canvases).
    fn job(&self, seed: u64, cfg: &AceConfig) -> Result<Job>;
    /// Called after the output of `job` was written (sessions record the turn).
    fn finished(&self, _job: &Job, _output: &Path, _seed: Option<u64>) -> Result<()> {
        Ok(())
    }
}

/// Runs a subcommand: its batch, its dry run, or one generation.
pub fn execute(intent: &dyn Intent, global: &Global) -> Result<Outcome> {
    let c = intent.common();
    if let Some(path) = &c.batch {
        return crate::batch::run(c, path, global);
    }
    let (cfg, config_name) = c.source.load()?;
    let (noise, seed) = noise(c);
    let job = intent.job(seed.unwrap_or(0), &cfg)?;
    let request = request(c, &cfg, &job, noise)?;
    if c.dry_run {
        println!("{}", serde_json::to_string_pretty(&plan(&request, &cfg)?)?);
        return Ok(Outcome::Success);
    }
    let model = load_model(&cfg, c.source.model_dir.as_deref(), &c.dtype, global)?;
    let output = c.output.as_deref().context("missing -o/--output")?;
    let ran = generate(&model, c, global, &request, seed, &config_name, output)?;
    intent.finished(&job, output, seed)?;
    if c.json && output.as_os_str() != "-" {
        println!("{}", ran.summary);
    }
    Ok(Outcome::Success)
}

/// The starting noise and, when it comes from a seed, the seed (drawn when not given).
pub fn noise(c: &Common) -> (Noise, Option<u64>) {
    match (&c.noise, c.seed) {
        (Some(spec), _) => (Noise::parse_file_spec(spec), None),
        (None, Some(s)) => (Noise::Seed(s), Some(s)),
        (None, None) => {
            let s = rand::random::<u32>() as u64;
            (Noise::Seed(s), Some(s))
        }
    }
}

/// The model's request for `job` under the common options.
pub fn request(c: &Common, cfg: &AceConfig, job: &Job, noise: Noise) -> Result<Request> {
    let mut history = job.history.clone();
    if let Some(p) = &c.history {
        history.extend(read_history(p)?);
    }
    let defaults = &cfg.default_paras.input;
    let guidance = Guidance::new(
        c.guide_scale.unwrap_or(defaults.guide_scale),
        c.guide_rescale.unwrap_or(defaults.guide_rescale),
    )?;
    let (height, width) = job.size;
    Ok(Request {
        instruction: job.instruction.clone(),
        images: job.images.clone(),
        history,
        negative: c.negative.clone(),
        size: Some((
            height.unwrap_or(defaults.output_height),
            width.unwrap_or(defaults.output_width),
        )),
        steps: c.steps.unwrap_or(defaults.sample_steps),
        guidance,
        noise,
        tar_index: job.tar_index.unwrap_or(c.tar_index),
    })
}

/// The dry-run document of a request.
pub fn plan(request: &Request, cfg: &AceConfig) -> Result<serde_json::Value> {
    let plan = ace::pipeline::Plan::new(request, cfg, &candle_core::Device::Cpu)?;
    Ok(plan.describe(request, cfg)?)
}

/// Loads the model of `cfg` (weights under `model_dir` when given) in `dtype`.
pub fn load_model(
    cfg: &AceConfig,
    model_dir: Option<&Path>,
    dtype_name: &str,
    global: &Global,
) -> Result<Ace> {
    let files = cfg.model_files(model_dir)?;
    let dtype = parse_dtype(dtype_name)?;
    let device = ace::device::open(global.device)?;
    if device.is_cpu() && dtype != DType::F32 {
        bail!(
            "--dtype {} needs a GPU (the CPU backend has no half-precision matmul); use --dtype f32",
            dtype_name
        );
    }
    Ok(Ace::load(cfg, &files, &device, dtype)?)
}

/// The config a --config file or --preset names (the default preset without either), and its
/// name for reports.
pub fn load_config(config: Option<&Path>, preset: Option<&str>) -> Result<(AceConfig, String)> {
    Ok(match (config, preset) {
        (Some(path), _) => (AceConfig::load(path)?, path.display().to_string()),
        (None, Some(name)) => (AceConfig::preset(name)?, name.to_string()),
        (None, None) => (
            AceConfig::preset(ace::config::DEFAULT_PRESET)?,
            ace::config::DEFAULT_PRESET.to_string(),
        ),
    })
}

/// What one generation reports.
pub struct Ran {
    /// The JSON summary (output, seed, sizes, settings, prompts).
    pub summary: serde_json::Value,
    /// Seconds spent sampling and decoding.
    pub generate_seconds: f64,
    /// Seconds spent encoding and writing the output.
    pub write_seconds: f64,
}

/// Runs one request on a loaded model and writes the output.
pub fn generate(
    model: &Ace,
    c: &Common,
    global: &Global,
    request: &Request,
    seed: Option<u64>,
    config_name: &str,
    output: &Path,
) -> Result<Ran> {
    let steps = request.steps;
    let bar = if !global.quiet && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps [{elapsed_precise}, {secs_per_step}]",
            )?
            .with_key(
                "secs_per_step",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let done = state.pos().max(1) as f64;
                    let _ = write!(w, "{:.2}s/it", state.elapsed().as_secs_f64() / done);
                },
            )
            .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let start = std::time::Instant::now();
    let generated = model.generate(request, &mut |_, _| {
        if let Some(b) = &bar {
            b.inc(1);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let generate_seconds = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();

    let rgb = generated.to_rgb8()?;
    let seed_text = seed.map_or_else(
        || format!("noise {}", c.noise.clone().unwrap_or_default()),
        |s| s.to_string(),
    );
    let guidance = request.guidance;
    let settings = [
        ("Software", format!("ace {}", env!("CARGO_PKG_VERSION"))),
        ("instruction", request.instruction.clone()),
        ("seed", seed_text.clone()),
        ("steps", steps.to_string()),
        ("guide_scale", guidance.scale.to_string()),
        ("guide_rescale", guidance.rescale.to_string()),
        ("preset", config_name.to_string()),
    ];
    let png = encode_png(&rgb, &settings)?;
    if let Some(path) = &c.save_latent {
        save_tensors(path, &generated)?;
    }
    if output.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(&png)?;
        out.flush()?;
    } else {
        if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
        }
        ace::imageio::write_atomic(output, &png)?;
    }
    if !global.quiet {
        eprintln!(
            "ace: seed {seed_text}, {}x{} -> {}",
            rgb.width(),
            rgb.height(),
            output.display()
        );
    }
    let summary = serde_json::json!({
        "output": output,
        "seed": seed,
        "noise": c.noise,
        "width": rgb.width(),
        "height": rgb.height(),
        "steps": steps,
        "guide_scale": guidance.scale,
        "guide_rescale": guidance.rescale,
        "config": config_name,
        "instruction": request.instruction,
        "prompts": generated.prompts,
    });
    Ok(Ran {
        summary,
        generate_seconds,
        write_seconds: start.elapsed().as_secs_f64(),
    })
}
