//! What every generation subcommand (`generate`, `edit`, `control`, `inpaint`, `outpaint`,
//! `layer`, `reference`) shares: the model and sampling options ([`Common`]), the [`Intent`]
//! each subcommand implements (its flags turned into a [`Job`]), and running it: a dry run that
//! prints the plan, one generation, or a batch. Loading the model is in `model_source`, reading
//! inputs in `generate_inputs`, writing the result in `generate_output`.

use crate::cli::Global;
use crate::generate_inputs::read_history;
use crate::generate_output::{Generator, Run, Target};
use crate::model_source::{LoadOptions, ModelSource, Phases};
use crate::record::RunRecord;
use crate::run_options::RunOptions;
use crate::Outcome;
use ace::config::AceConfig;
use ace::pipeline::{InputImage, Noise, Request, Turn};
use ace::sampler::{Guidance, SamplerSettings};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

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
    /// Seed of the starting noise and of the instruction's phrasing (0 by default, as for every
    /// random choice of ace; reported with the result).
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "noise")]
    pub seed: u64,
    /// Starting noise from a safetensors file, FILE.safetensors[:TENSOR].
    #[arg(long, value_name = "FILE[:TENSOR]")]
    pub noise: Option<String>,
    /// Which input image (history first) sets the output size and mask (default: the first
    /// image being edited, after the history; the reference's TAR_INDEX is 0).
    #[arg(long, value_name = "I")]
    pub tar_index: Option<usize>,
    #[command(flatten)]
    pub load: LoadOptions,
    #[command(flatten)]
    pub run: RunOptions,
    /// Output image: its extension picks the format (png, jpg, webp, bmp, tif, gif; PNG without
    /// one, and PNG carries the settings as text); '-' writes a PNG to standard output.
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

/// Earlier turns of a multi-turn edit, for every subcommand that edits images (not
/// `generate`, which has none).
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArg {
    /// Earlier turns, YAML or JSON: [{image, mask?, instruction, task?}, ...], paths relative
    /// to the file ('-' reads standard input, paths relative to the current folder).
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
}

/// What a subcommand asks the model for: the instruction, the input images, and for text to
/// image the output size.
#[derive(Default)]
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
    /// The picture text-to-image starts from with a strength below 1.
    pub init: Option<image::RgbImage>,
    /// The finishing the subcommand asks for (paste-back, alpha); --keep-size adds to it.
    pub finish: ace::pipeline::Finish,
}

impl Job {
    /// A job from a task family's result.
    pub fn from_task(t: ace::tasks::TaskJob) -> Self {
        Job {
            instruction: t.instruction,
            images: t.images,
            size: (None, None),
            tar_index: Some(t.tar_index),
            ..Job::default()
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
    /// The files the job reads (images, masks, a session's previous output), which its output
    /// must not be.
    fn inputs(&self) -> Result<Vec<PathBuf>>;
    /// The `--history` file, for the subcommands that take one.
    fn history(&self) -> Option<&Path> {
        None
    }
    /// Called after the output of `job` was written (sessions record the turn).
    fn finished(&self, _job: &Job, _output: &Path, _seed: Option<u64>) -> Result<()> {
        Ok(())
    }
}

/// Runs a subcommand: its batch, its dry run, a `--repeat`, or one generation.
pub fn execute(intent: &dyn Intent, global: &Global) -> Result<Outcome> {
    let c = intent.common();
    if let Some(path) = &c.batch {
        return crate::batch::run(c, path, global);
    }
    if let Some(png) = &c.run.repeat {
        return repeat(png, c, global);
    }
    let argv: Vec<String> = std::env::args().collect();
    run(intent, global, &argv, None)
}

/// `--repeat PNG`: the recorded command run again in its folder, into this run's output.
fn repeat(png: &Path, c: &Common, global: &Global) -> Result<Outcome> {
    let record = RunRecord::read(png)?;
    record.check_inputs()?;
    let output = c.output.as_deref().context("missing -o/--output")?;
    let args = crate::record::repeat_args(&record, output)?;
    let intent = crate::cli::intent_from_args(args.clone())?;
    std::env::set_current_dir(&record.cwd)
        .with_context(|| format!("{}: the folder the image was made in", record.cwd.display()))?;
    let only = (record.count > 1).then_some(record.index);
    let outcome = run(intent.as_ref(), global, &args, only)?;
    Ok(outcome)
}

/// One generation (or its dry run) of `intent`, `argv` the command line that asked for it;
/// with `only`, of an `-n` group only that image is written (to the output as named).
fn run(
    intent: &dyn Intent,
    global: &Global,
    argv: &[String],
    only: Option<usize>,
) -> Result<Outcome> {
    let c = intent.common();
    let (cfg, config_name) = c.source.load()?;
    let (noise, seed) = noise(c);
    let job = intent.job(seed.unwrap_or(c.seed), &cfg)?;
    let request = request(intent, &cfg, &job, noise)?;
    if c.dry_run {
        crate::ui::print_line(serde_json::to_string_pretty(&plan(&request, &cfg)?)?)?;
        return Ok(Outcome::Success);
    }
    let output = c.output.as_deref().context("missing -o/--output")?;
    let targets = targets(c, output, only)?;
    for t in &targets {
        check_outputs(intent, &t.output)?;
    }
    let mut phases = Phases::default();
    let model = crate::model_source::load_model(
        &cfg,
        (c.source.model_dir.as_deref(), "--model-dir"),
        &c.load,
        global,
        &ace::pipeline::request_prompts(&request, &cfg)?,
        &ace::model::lora::LoraSpec::list(&c.run.loras),
        &mut phases,
    )?;
    let generator = Generator {
        model: &model,
        common: c,
        global,
        config_name: &config_name,
    };
    let mut inputs = intent.inputs()?;
    inputs.extend(common_inputs(intent)?);
    let run = Run {
        request: &request,
        targets,
        command: RunRecord::command_of(argv),
        inputs,
        only,
    };
    let ran = generator.generate(&run, &mut phases)?;
    if let ([one], [target]) = (ran.as_slice(), run.targets.as_slice()) {
        intent.finished(&job, &target.output, target.seed)?;
        if c.json && target.output.as_os_str() != "-" {
            crate::ui::print_line(&one.summary)?;
        }
    } else if c.json {
        for r in &ran {
            crate::ui::print_line(&r.summary)?;
        }
    }
    Ok(Outcome::Success)
}

/// The images a run makes: one per `-n`, seeds `--seed` upwards, outputs numbered beside
/// `output` when there are several; with `only`, the group is made again for that one image,
/// which goes to `output` itself.
pub fn targets(c: &Common, output: &Path, only: Option<usize>) -> Result<Vec<Target>> {
    let n = c.run.count;
    if n == 0 {
        bail!("-n 0 makes no image");
    }
    if n > 1 && c.noise.is_some() {
        bail!("-n {n} needs a seed per image: --noise gives one starting noise");
    }
    if n > 1 && only.is_none() && !ace::output::Target::of(output).is_file() {
        bail!(
            "-n {n} writes {n} files: -o must name a file, not {}",
            output.display()
        );
    }
    let (noise, seed) = noise(c);
    Ok((0..n)
        .map(|i| {
            let (noise, seed) = match seed {
                Some(s) => (Noise::Seed(s + i as u64), Some(s + i as u64)),
                None => (noise.clone(), None),
            };
            let output = match only {
                Some(_) => output.to_path_buf(),
                None => crate::generate_output::numbered(output, i, n),
            };
            Target {
                seed,
                noise,
                output,
            }
        })
        .collect())
}

/// Checks, before any work, that a job's outputs (`output` and `--save-latent`) can be
/// written and are none of its inputs nor each other, and that the output's name gives a
/// format.
pub fn check_outputs(intent: &dyn Intent, output: &Path) -> Result<()> {
    let c = intent.common();
    let mut inputs = intent.inputs()?;
    inputs.extend(common_inputs(intent)?);
    let inputs = ace::output::InputSet::new(inputs.iter().map(PathBuf::as_path));
    ace::output::check(output, true)?;
    ace::imageio::OutputFormat::for_output(output, None)?;
    inputs.refuse(output)?;
    if let Some(latent) = &c.save_latent {
        ace::output::check(latent, true)?;
        inputs.refuse(latent)?;
        ace::output::refuse_inputs(latent, [output])?;
    }
    Ok(())
}

/// The files the shared options read: the history file and its images and masks, the noise
/// file.
pub fn common_inputs(intent: &dyn Intent) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    if let Some(h) = intent.history() {
        paths.extend(crate::generate_inputs::history_paths(h)?);
    }
    if let Some(spec) = &intent.common().noise {
        if let Noise::File { path, .. } = Noise::parse_file_spec(spec) {
            paths.push(path);
        }
    }
    Ok(paths)
}

/// The starting noise and, when it comes from a seed, the seed.
pub fn noise(c: &Common) -> (Noise, Option<u64>) {
    match &c.noise {
        Some(spec) => (Noise::parse_file_spec(spec), None),
        None => (Noise::Seed(c.seed), Some(c.seed)),
    }
}

/// The model's request for `job` under the common options and history.
pub fn request(intent: &dyn Intent, cfg: &AceConfig, job: &Job, noise: Noise) -> Result<Request> {
    let c = intent.common();
    let mut history = job.history.clone();
    if let Some(p) = intent.history() {
        history.extend(read_history(p)?);
    }
    let defaults = &cfg.default_paras.input;
    let configured = defaults.sampler_settings()?;
    let guidance = Guidance::new(
        c.guide_scale.unwrap_or(defaults.guide_scale),
        c.guide_rescale.unwrap_or(defaults.guide_rescale),
    )?;
    let (height, width) = job.size;
    // A subcommand's own choice counts among its images, after the history; --tar-index
    // counts history first; by default the first image being edited is the target.
    let tar_index = job
        .tar_index
        .map(|i| history.len() + i)
        .or(c.tar_index)
        .unwrap_or(history.len());
    let mut finish = job.finish;
    if c.run.keep_size {
        finish.keep_size = Some(c.run.resize_filter);
    }
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
        tar_index,
        sampler: SamplerSettings {
            kind: c.run.sampler.unwrap_or(configured.kind),
            spacing: c.run.schedule.unwrap_or(configured.spacing),
            strength: c.run.strength,
        },
        init: job.init.clone(),
        finish,
    })
}

/// The dry-run document of a request.
pub fn plan(request: &Request, cfg: &AceConfig) -> Result<serde_json::Value> {
    let plan = ace::pipeline::Plan::new(request, cfg, &candle_core::Device::Cpu)?;
    Ok(plan.describe(request, cfg)?)
}
