//! Running one request on a loaded model and writing its result: the progress bar, the PNG
//! with the settings as tEXt chunks, the optional latent file, and the JSON summary.

use crate::cli::Global;
use crate::generate_common::Common;
use crate::model_source::Phases;
use ace::pipeline::{Ace, Generated, Request};
use anyhow::{Context, Result};
use std::io::{IsTerminal, Write};
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
        "text_encoder": model.text().report(),
        "phases": phases.to_json(),
    });
    Ok(Ran {
        summary,
        generate_seconds,
        write_seconds: start.elapsed().as_secs_f64(),
    })
}
