//! What `ace generate` and `ace edit` share: the model and sampling options, reading the
//! inputs (images, masks, history), loading the model, the progress bar and writing the PNG
//! (with the settings as tEXt chunks), the optional latent file and the summary.

use crate::cli::Global;
use crate::Outcome;
use ace::config::AceConfig;
use ace::pipeline::{luma_pil, Ace, Generated, InputImage, Noise, Request, Turn};
use ace::sampler::Guidance;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Options common to generation and editing.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Built-in model config: ace_0.6b_512 (default) or ace_0.6b_1024.
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    pub preset: Option<String>,
    /// Model config file in the official ACE inference YAML schema.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder holding a downloaded model snapshot (resolves hf:// and ms:// weight names).
    #[arg(long, value_name = "DIR", env = "ACE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
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
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
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

/// Reads an input image with its optional mask.
pub fn read_input(image: &Path, mask: Option<&Path>, task: &str) -> Result<InputImage> {
    let rgb = ace::imageio::load_rgb(image)?;
    let mask = match mask {
        Some(m) => Some(luma_pil(&ace::imageio::load_rgb(m)?)),
        None => None,
    };
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

fn load_config(c: &Common) -> Result<(AceConfig, String)> {
    Ok(match (&c.config, &c.preset) {
        (Some(path), _) => (AceConfig::load(path)?, path.display().to_string()),
        (None, Some(name)) => (AceConfig::preset(name)?, name.clone()),
        (None, None) => (
            AceConfig::preset(ace::config::DEFAULT_PRESET)?,
            ace::config::DEFAULT_PRESET.to_string(),
        ),
    })
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

/// Runs a generation or edit request built from the common options; `(height, width)` is
/// the text-to-image size (each defaulting to the config's).
pub fn run(
    c: &Common,
    global: &Global,
    instruction: &str,
    images: Vec<InputImage>,
    (height, width): (Option<usize>, Option<usize>),
) -> Result<Outcome> {
    let (cfg, config_name) = load_config(c)?;
    let files = cfg.model_files(c.model_dir.as_deref())?;
    let history = match &c.history {
        Some(p) => read_history(p)?,
        None => Vec::new(),
    };
    let dtype = parse_dtype(&c.dtype)?;
    let defaults = &cfg.default_paras.input;
    let guidance = Guidance::new(
        c.guide_scale.unwrap_or(defaults.guide_scale),
        c.guide_rescale.unwrap_or(defaults.guide_rescale),
    )?;
    let steps = c.steps.unwrap_or(defaults.sample_steps);
    let (noise, seed) = match (&c.noise, c.seed) {
        (Some(spec), _) => (Noise::parse_file_spec(spec), None),
        (None, Some(s)) => (Noise::Seed(s), Some(s)),
        (None, None) => {
            let s = rand::random::<u32>() as u64;
            (Noise::Seed(s), Some(s))
        }
    };
    let request = Request {
        instruction: instruction.to_string(),
        images,
        history,
        negative: c.negative.clone(),
        size: Some((
            height.unwrap_or(defaults.output_height),
            width.unwrap_or(defaults.output_width),
        )),
        steps,
        guidance,
        noise,
        tar_index: c.tar_index,
    };
    let device = ace::device::open(global.device)?;
    if device.is_cpu() && dtype != DType::F32 {
        bail!(
            "--dtype {} needs a GPU (the CPU backend has no half-precision matmul); use --dtype f32",
            c.dtype
        );
    }
    let model = Ace::load(&cfg, &files, &device, dtype)?;

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
    let generated = model.generate(&request, &mut |_, _| {
        if let Some(b) = &bar {
            b.inc(1);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    let rgb = generated.to_rgb8()?;
    let seed_text = seed.map_or_else(
        || format!("noise {}", c.noise.clone().unwrap_or_default()),
        |s| s.to_string(),
    );
    let settings = [
        ("Software", format!("ace {}", env!("CARGO_PKG_VERSION"))),
        ("instruction", instruction.to_string()),
        ("seed", seed_text.clone()),
        ("steps", steps.to_string()),
        ("guide_scale", guidance.scale.to_string()),
        ("guide_rescale", guidance.rescale.to_string()),
        ("preset", config_name.clone()),
    ];
    let png = encode_png(&rgb, &settings)?;
    if let Some(path) = &c.save_latent {
        save_tensors(path, &generated)?;
    }
    let to_stdout = c.output.as_os_str() == "-";
    if to_stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(&png)?;
        out.flush()?;
    } else {
        ace::imageio::write_atomic(&c.output, &png)?;
    }
    if !global.quiet {
        eprintln!(
            "ace: seed {seed_text}, {}x{} -> {}",
            rgb.width(),
            rgb.height(),
            c.output.display()
        );
    }
    if c.json && !to_stdout {
        let summary = serde_json::json!({
            "output": c.output,
            "seed": seed,
            "noise": c.noise,
            "width": rgb.width(),
            "height": rgb.height(),
            "steps": steps,
            "guide_scale": guidance.scale,
            "guide_rescale": guidance.rescale,
            "config": config_name,
            "prompts": generated.prompts,
        });
        println!("{summary}");
    }
    Ok(Outcome::Success)
}
