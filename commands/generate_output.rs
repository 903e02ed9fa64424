//! Running one request on a loaded model and writing its results: the progress bar, one image
//! per starting noise (`-n`), finished as asked (the input's size, paste-back, alpha), in the
//! format its name says (a PNG carries the run's record, see `record`), the optional latent
//! file, and a JSON summary per image. A run stopped by a signal before its outputs are written
//! writes nothing; once writing has begun it finishes.

use crate::cli::Global;
use crate::generate_common::Common;
use crate::model_source::Phases;
use crate::record::{FileRecord, RunRecord};
use ace::imageio::OutputFormat;
use ace::pipeline::{Ace, Generated, Noise, Request};
use anyhow::{bail, Result};
use image::DynamicImage;
use std::path::{Path, PathBuf};

/// PNG bytes of the image with text chunks: `(keyword, text)`, each as tEXt when it is plain
/// ASCII and as iTXt (UTF-8) otherwise.
fn encode_png(img: &DynamicImage, text: &[(&str, String)]) -> Result<Vec<u8>> {
    let (color, raw) = match img {
        DynamicImage::ImageRgba8(i) => (png::ColorType::Rgba, i.as_raw().clone()),
        other => (png::ColorType::Rgb, other.to_rgb8().into_raw()),
    };
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, img.width(), img.height());
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            if v.is_ascii() {
                enc.add_text_chunk(k.to_string(), v.clone())?;
            } else {
                enc.add_itxt_chunk(k.to_string(), v.clone())?;
            }
        }
        enc.write_header()?.write_image_data(&raw)?;
    }
    Ok(buf)
}

/// The image file: PNG with the text chunks, or the format the name says.
fn encode(img: &DynamicImage, text: &[(&str, String)], output: &Path) -> Result<Vec<u8>> {
    Ok(match OutputFormat::for_output(output, None)? {
        OutputFormat::Png => encode_png(img, text)?,
        format => ace::imageio::encode(img, format)?,
    })
}

fn save_tensors(path: &Path, g: &Generated) -> Result<()> {
    let tensors: std::collections::HashMap<String, candle_core::Tensor> =
        [("latent", g.latent.clone()), ("image", g.image.clone())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    ace::output::create_parent(path)?;
    ace::output::atomic::write_with(path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(ace::Error::from)
    })?;
    Ok(())
}

/// Refuses a result whose latent holds NaN or infinite values (non-finite weights or starting
/// noise) instead of writing a black image.
fn check_finite(g: &Generated, c: &Common, output: &Path) -> Result<()> {
    let sum = g.latent.sum_all()?.to_scalar::<f32>()?;
    if sum.is_finite() {
        return Ok(());
    }
    let cause = match &c.noise {
        Some(noise) => format!("the starting noise {noise} or the model weights"),
        None => "the model weights".to_string(),
    };
    bail!(
        "{}: not written: the sampled latent holds NaN or infinite values ({cause} are not finite)",
        output.display()
    )
}

/// What one image reports.
pub struct Ran {
    /// The JSON summary (output, seed, sizes, settings, prompts, the run's record).
    pub summary: serde_json::Value,
    /// Seconds spent sampling and decoding (the whole group's, with `-n`).
    pub generate_seconds: f64,
    /// Seconds spent encoding and writing the output.
    pub write_seconds: f64,
}

/// One image a run makes: its seed (none for noise from a file), its noise, where it goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub seed: Option<u64>,
    pub noise: Noise,
    pub output: PathBuf,
}

/// What a run generates and how it is recorded.
pub struct Run<'a> {
    pub request: &'a Request,
    /// The images, sampled together.
    pub targets: Vec<Target>,
    /// The command line that made the run (for its record).
    pub command: Vec<String>,
    /// The files the run read (for its record).
    pub inputs: Vec<PathBuf>,
    /// Write only this image of the group (`--repeat` of one image of an `-n` run).
    pub only: Option<usize>,
}

/// A loaded model with the options every generation of a command shares.
pub struct Generator<'a> {
    pub model: &'a Ace,
    pub common: &'a Common,
    pub global: &'a Global,
    /// The config's name for reports.
    pub config_name: &'a str,
}

impl Generator<'_> {
    /// Runs one request and writes its images; the generation's phases join `phases`.
    pub fn generate(&self, run: &Run, phases: &mut Phases) -> Result<Vec<Ran>> {
        generate(self, run, phases)
    }
}

/// The output file of image `i` of `n`: the output itself for one image, else
/// `STEM-0001.EXT`, `STEM-0002.EXT`, ... beside it.
pub fn numbered(output: &Path, i: usize, n: usize) -> PathBuf {
    if n <= 1 {
        return output.to_path_buf();
    }
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match output.extension() {
        Some(ext) => format!("{stem}-{:04}.{}", i + 1, ext.to_string_lossy()),
        None => format!("{stem}-{:04}", i + 1),
    };
    output.with_file_name(name)
}

fn generate(g: &Generator, run: &Run, phases: &mut Phases) -> Result<Vec<Ran>> {
    let (model, c, global) = (g.model, g.common, g.global);
    let request = run.request;
    let n = run.targets.len();
    let steps = request.steps;
    let bar = crate::ui::progress_bar(global, (steps * n) as u64, "sampling", "steps");
    let start = std::time::Instant::now();
    let noises: Vec<Noise> = run.targets.iter().map(|t| t.noise.clone()).collect();
    let generated = model.generate_many(request, &noises, &mut |_, _| {
        if let Some(b) = &bar {
            b.inc(1);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let generate_seconds = start.elapsed().as_secs_f64();
    if let Some(first) = generated.first() {
        for (name, used) in &first.phases {
            phases.push(name, *used);
        }
    }
    let start = std::time::Instant::now();
    let inputs: Vec<FileRecord> = run
        .inputs
        .iter()
        .map(|p| FileRecord::of(p))
        .collect::<Result<_>>()?;
    let mut files = Vec::with_capacity(n);
    for (index, (target, image)) in run.targets.iter().zip(&generated).enumerate() {
        if run.only.is_some_and(|k| k != index) {
            continue;
        }
        check_finite(image, c, &target.output)?;
        let finished = ace::pipeline::finish::apply(request, image.to_rgb8()?)?;
        let record = g.record(run, target, index, &finished, inputs.clone())?;
        let seed_text = record.seed.map_or_else(
            || format!("noise {}", record.noise.clone().unwrap_or_default()),
            |s| s.to_string(),
        );
        let text = [
            ("Software", record.software.clone()),
            ("instruction", record.instruction.clone()),
            ("seed", seed_text),
            ("steps", record.steps.to_string()),
            ("guide_scale", record.guide_scale.to_string()),
            ("guide_rescale", record.guide_rescale.to_string()),
            ("preset", record.config.clone()),
            ("parameters", record.parameters()),
            (crate::record::KEYWORD, serde_json::to_string(&record)?),
        ];
        let bytes = encode(&finished, &text, &target.output)?;
        files.push((target, image, record, bytes));
    }
    // The last point at which a signal stops the run: from here on the outputs are written
    // whole.
    if ace::cancel::requested() {
        bail!(
            "{}: not written (interrupted)",
            run.targets[0].output.display()
        );
    }
    if let (Some(path), Some((_, image, _, _))) = (&c.save_latent, files.first()) {
        save_tensors(path, image)?;
    }
    let mut ran = Vec::with_capacity(files.len());
    for (target, image, record, bytes) in files {
        ace::output::write(&target.output, &bytes)?;
        crate::ui::info(
            global,
            format_args!(
                "seed {}, {}x{} -> {}",
                record.seed.map_or_else(
                    || format!("noise {}", record.noise.clone().unwrap_or_default()),
                    |s| s.to_string()
                ),
                record.width,
                record.height,
                target.output.display()
            ),
        );
        let summary = serde_json::json!({
            "output": target.output,
            "seed": record.seed,
            "noise": record.noise,
            "width": record.width,
            "height": record.height,
            "steps": record.steps,
            "guide_scale": record.guide_scale,
            "guide_rescale": record.guide_rescale,
            "config": record.config,
            "instruction": request.instruction,
            "prompts": image.prompts,
            "text_encoder": model.text().report(),
            "phases": phases.to_json(),
            "record": record,
        });
        ran.push(Ran {
            summary,
            generate_seconds,
            write_seconds: start.elapsed().as_secs_f64(),
        });
    }
    Ok(ran)
}

impl Generator<'_> {
    /// The record of image `index` of `run`.
    fn record(
        &self,
        run: &Run,
        target: &Target,
        index: usize,
        image: &DynamicImage,
        inputs: Vec<FileRecord>,
    ) -> Result<RunRecord> {
        let (c, model, request) = (self.common, self.model, run.request);
        let loras = c
            .run
            .loras
            .iter()
            .map(|l| Ok((FileRecord::of(&l.path)?, l.scale)))
            .collect::<Result<_>>()?;
        Ok(RunRecord {
            software: format!("ace {}", env!("CARGO_PKG_VERSION")),
            command: run.command.clone(),
            cwd: std::env::current_dir()?,
            instruction: request.instruction.clone(),
            negative: request
                .negative
                .clone()
                .unwrap_or_else(|| model.config().model.default_n_prompt.clone()),
            seed: target.seed,
            noise: c.noise.clone(),
            steps: request.steps,
            guide_scale: request.guidance.scale,
            guide_rescale: request.guidance.rescale,
            sampler: request.sampler.kind.name().to_string(),
            schedule: request.sampler.spacing.name().to_string(),
            strength: request.sampler.strength,
            width: image.width(),
            height: image.height(),
            config: self.config_name.to_string(),
            device: format!("{:?}", model.device().location()),
            dtype: model.dtype().as_str().to_string(),
            text_dtype: model.text().dtype().as_str().to_string(),
            model: model.identity()?,
            inputs,
            loras,
            count: run.targets.len(),
            index,
        })
    }
}
