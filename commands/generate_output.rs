//! Running one request on a loaded model and writing its result: the progress bar, the image
//! in the format its name says (a PNG carries the settings as tEXt chunks), the optional latent
//! file, and the JSON summary. A run stopped by a signal before its output is written writes
//! nothing; once writing has begun it finishes.

use crate::cli::Global;
use crate::generate_common::Common;
use crate::model_source::Phases;
use ace::imageio::OutputFormat;
use ace::pipeline::{Ace, Generated, Request};
use anyhow::{bail, Result};
use std::path::Path;

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

/// The image file: PNG with the settings as text chunks, or the format the name says.
fn encode(rgb: image::RgbImage, text: &[(&str, String)], output: &Path) -> Result<Vec<u8>> {
    Ok(match OutputFormat::for_output(output, None)? {
        OutputFormat::Png => encode_png(&rgb, text)?,
        format => ace::imageio::encode(&image::DynamicImage::ImageRgb8(rgb), format)?,
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

/// What one generation reports.
pub struct Ran {
    /// The JSON summary (output, seed, sizes, settings, prompts).
    pub summary: serde_json::Value,
    /// Seconds spent sampling and decoding.
    pub generate_seconds: f64,
    /// Seconds spent encoding and writing the output.
    pub write_seconds: f64,
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
    /// Runs one request and writes the output; the generation's phases join `phases`.
    pub fn generate(
        &self,
        request: &Request,
        seed: Option<u64>,
        output: &Path,
        phases: &mut Phases,
    ) -> Result<Ran> {
        generate(self, request, seed, output, phases)
    }
}

fn generate(
    g: &Generator,
    request: &Request,
    seed: Option<u64>,
    output: &Path,
    phases: &mut Phases,
) -> Result<Ran> {
    let (model, c, global, config_name) = (g.model, g.common, g.global, g.config_name);
    let steps = request.steps;
    let bar = crate::ui::progress_bar(global, steps as u64, "sampling", "steps");
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
    for (name, used) in &generated.phases {
        phases.push(name, *used);
    }
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
    let (width, height) = rgb.dimensions();
    check_finite(&generated, c, output)?;
    let bytes = encode(rgb, &settings, output)?;
    // The last point at which a signal stops the run: from here on the output is written whole.
    if ace::cancel::requested() {
        bail!("{}: not written (interrupted)", output.display());
    }
    if let Some(path) = &c.save_latent {
        save_tensors(path, &generated)?;
    }
    ace::output::write(output, &bytes)?;
    crate::ui::info(
        global,
        format_args!("seed {seed_text}, {width}x{height} -> {}", output.display()),
    );
    let summary = serde_json::json!({
        "output": output,
        "seed": seed,
        "noise": c.noise,
        "width": width,
        "height": height,
        "steps": steps,
        "guide_scale": guidance.scale,
        "guide_rescale": guidance.rescale,
        "config": config_name,
        "instruction": request.instruction,
        "prompts": generated.prompts,
        "text_encoder": model.text().report(),
        "phases": phases.to_json(),
    });
    Ok(Ran {
        summary,
        generate_seconds,
        write_seconds: start.elapsed().as_secs_f64(),
    })
}
