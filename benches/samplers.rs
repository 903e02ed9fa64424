//! The samplers side by side on the tiny model, as the README's sampler table shows them: at 10
//! and 20 steps, each sampler's agreement with a 50-step DDIM run of the same seed (relative L2
//! of the final latents, SSIM of the decoded images) and its sampling time per image, averaged
//! over seeds. One `ace generate --batch` of the release binary runs every job, so the model
//! loads once. `cargo bench --bench samplers`; ACE_BENCH_SEEDS (default 8) sets the number of
//! seeds, ACE_BENCH_SIZE (default 256) the image side.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The samplers of the table, with their sigma spacing.
const ROWS: [(&str, &str); 7] = [
    ("ddim", "default"),
    ("euler", "default"),
    ("euler", "karras"),
    ("euler_ancestral", "default"),
    ("euler_ancestral", "karras"),
    ("dpmpp_2m", "default"),
    ("dpmpp_2m", "karras"),
];
const STEPS: [usize; 2] = [10, 20];
const BASELINE_STEPS: usize = 50;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One job's output stem.
fn stem(dir: &Path, sampler: &str, schedule: &str, steps: usize, seed: u64) -> PathBuf {
    dir.join(format!("{sampler}-{schedule}-{steps}-{seed}"))
}

fn latent(stem: &Path) -> anyhow::Result<Vec<f32>> {
    let t = candle_core::safetensors::load(
        stem.with_extension("safetensors"),
        &candle_core::Device::Cpu,
    )?;
    Ok(t["latent"].flatten_all()?.to_vec1()?)
}

/// `|a - b| / |b|`.
fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        diff += f64::from(x - y).powi(2);
        norm += f64::from(*y).powi(2);
    }
    (diff / norm).sqrt()
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not and skips the run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("samplers: run with `cargo bench --bench samplers`");
        return Ok(());
    }
    common::print_machine();
    let seeds: u64 = env_or("ACE_BENCH_SEEDS", 8);
    let size: usize = env_or("ACE_BENCH_SIZE", 256);
    let work = tempfile::tempdir()?;
    let mut jobs = Vec::new();
    let mut add = |sampler: &str, schedule: &str, steps: usize, seed: u64| {
        let stem = stem(work.path(), sampler, schedule, steps, seed);
        jobs.push(serde_json::json!({
            "instruction": "a red fox sitting in the snow at dawn",
            "seed": seed,
            "steps": steps,
            "sampler": sampler,
            "schedule": schedule,
            "width": size,
            "height": size,
            "save_latent": stem.with_extension("safetensors"),
            "output": stem.with_extension("png"),
        }));
    };
    for seed in 0..seeds {
        add("ddim", "default", BASELINE_STEPS, seed);
        for (sampler, schedule) in ROWS {
            for steps in STEPS {
                add(sampler, schedule, steps, seed);
            }
        }
    }
    let batch = work.path().join("jobs.jsonl");
    std::fs::write(
        &batch,
        jobs.iter().map(|j| format!("{j}\n")).collect::<String>(),
    )?;
    let config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ace-tiny/model/ace_tiny.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_ace"))
        .env("ACE_CACHE_DIR", work.path().join("cache"))
        .args(["--device", "cpu", "-q", "generate", "--json", "--batch"])
        .arg(&batch)
        .arg("--config")
        .arg(&config)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ace failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Sampling seconds per output, from each job's JSON line.
    let mut sampling = std::collections::HashMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let output = v["output"].as_str().unwrap_or_default().to_string();
        let secs = v["phases"]["sampling"]["seconds"]
            .as_f64()
            .unwrap_or(f64::NAN);
        sampling.insert(output, secs);
    }
    let seconds = |stem: &Path| -> f64 {
        sampling
            .get(&stem.with_extension("png").display().to_string())
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "tiny model, {size}x{size}, {seeds} seeds; against {BASELINE_STEPS}-step DDIM of the same \
         seed: relative L2 of the final latent and SSIM of the decoded image (means); sampling \
         time per image"
    );
    let mut rows = Vec::new();
    for (sampler, schedule) in ROWS {
        for steps in STEPS {
            let (mut l2, mut ssim, mut ms) = (0.0, 0.0, 0.0);
            for seed in 0..seeds {
                let base = stem(work.path(), "ddim", "default", BASELINE_STEPS, seed);
                let this = stem(work.path(), sampler, schedule, steps, seed);
                l2 += relative_l2(&latent(&this)?, &latent(&base)?);
                let a = image::open(this.with_extension("png"))?.to_rgb8();
                let b = image::open(base.with_extension("png"))?.to_rgb8();
                ssim += ace::eval::metrics::pixel::ssim(&a, &b).unwrap_or(f64::NAN);
                ms += seconds(&this) * 1000.0;
            }
            let n = seeds as f64;
            rows.push((sampler, schedule, steps, l2 / n, ssim / n, ms / n));
        }
    }
    // Time against DDIM at the same step count, the named baseline of the time column.
    let ddim_ms = |steps: usize| {
        rows.iter()
            .find(|r| r.0 == "ddim" && r.2 == steps)
            .map_or(f64::NAN, |r| r.5)
    };
    println!(
        "{:<17} {:<9} {:>5} {:>9} {:>7} {:>9} {:>9}",
        "sampler", "schedule", "steps", "L2", "SSIM", "ms/image", "x DDIM"
    );
    for (sampler, schedule, steps, l2, ssim, ms) in &rows {
        println!(
            "{sampler:<17} {schedule:<9} {steps:>5} {l2:>9.4} {ssim:>7.4} {ms:>9.1} {:>9.2}",
            ms / ddim_ms(*steps)
        );
    }
    let mut baseline_ms = 0.0;
    for seed in 0..seeds {
        baseline_ms += seconds(&stem(work.path(), "ddim", "default", BASELINE_STEPS, seed));
    }
    println!(
        "{:<17} {:<9} {BASELINE_STEPS:>5} {:>9} {:>7} {:>9.1}   (the reference run)",
        "ddim",
        "default",
        "0",
        "1",
        baseline_ms * 1000.0 / seeds as f64
    );
    Ok(())
}
