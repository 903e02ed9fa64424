//! Time per training step and peak memory of the tiny and the full-size DiT (random weights, one
//! 512 px text-to-image example: 1024 tokens, 40 context rows, batch 1, f32, CPU): the diffusion
//! loss, its backward pass (block by block, `segments`) and one AdamW update, as `ace train` runs
//! them. Every step is timed on its own, seven of the tiny DiT and three of the full-size one: the
//! first makes AdamW's moments, the first two touch memory for the first time (the second is the
//! first to run the forward and backward passes beside the moments), and the steps after them are
//! what a training run repeats ("steady"); the child prints each step's split and the pages it
//! touched for the first time (minor page faults), which cost several microseconds each on some
//! VMs. Where the CPU has bf16 instructions the full size runs again with `USE_AMP` (bf16 products,
//! `kernels::autocast_bf16`) against the reference under `torch.autocast("cpu",
//! dtype=torch.bfloat16)`; ACE_BENCH_AMP=0 skips it. Last, the official training configs' setting:
//! `USE_GRAD_CHECKPOINT` (each block run again in the backward pass), with `USE_AMP` where it runs,
//! on both sides; ACE_BENCH_CHECKPOINT=0 skips it. Each size runs in its own process (peak memory
//! is per process), ours and then the PyTorch reference (`scripts/bench_train_reference.py`:
//! scepter's ACE backbone, MSE loss, torch.optim.AdamW), and the ratios are printed. `cargo bench
//! --bench train_step`; two threads unless RAYON_NUM_THREADS says otherwise; ACE_BENCH_REFERENCE=0
//! skips the reference.

mod common;

use ace::model::dit::Config;
use ace::model::segments;
use ace::sampler::LinearSchedule;
use ace::train::model::{diffusion_loss, Encoded};
use ace::train::optimizer::{AdamW, AdamWParams};
use ace::train::weights::DitWeights;
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use std::process::Command;
use std::time::Instant;

const CONTEXT_ROWS: usize = 40;
/// Latent side (64: 1024 tokens); ACE_BENCH_LATENT changes it.
fn latent() -> usize {
    std::env::var("ACE_BENCH_LATENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}
const TINY: &str = "PATCH_SIZE: 2\nIN_CHANNELS: 4\nHIDDEN_SIZE: 64\nDEPTH: 2\nNUM_HEADS: 4\n\
    MLP_RATIO: 4.0\nPRED_SIGMA: True\nY_CHANNELS: 32\nMAX_SEQ_LEN: 1024\nQK_NORM: True\n";
const FULL: &str = "PATCH_SIZE: 2\nIN_CHANNELS: 4\nHIDDEN_SIZE: 1152\nDEPTH: 28\nNUM_HEADS: 16\n\
    MLP_RATIO: 4.0\nPRED_SIGMA: True\nY_CHANNELS: 4096\nMAX_SEQ_LEN: 1024\nQK_NORM: True\n";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    // As `ace` does (src/memory.rs).
    ace::memory::keep_freed_blocks();
    // A child run: one size, prints one line of numbers.
    if let Some(i) = args.iter().position(|a| a == "--size") {
        let size = args.get(i + 1).map(String::as_str).unwrap_or("");
        let steps = if size == "tiny" { 7 } else { 3 };
        let amp = args.iter().any(|a| a == "--amp");
        let mut config = if size == "tiny" { TINY } else { FULL }.to_string();
        if args.iter().any(|a| a == "--checkpoint") {
            config.push_str("USE_GRAD_CHECKPOINT: True\n");
        }
        let (seconds, peak) = run(&config, steps, amp)?;
        let seconds: Vec<String> = seconds.iter().map(f64::to_string).collect();
        println!("{peak} {}", seconds.join(" "));
        return Ok(());
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` does not and skips the run.
    if !args.iter().any(|a| a == "--bench") {
        println!("train_step: run with `cargo bench --bench train_step`");
        return Ok(());
    }
    common::print_machine();
    let threads = candle_core::utils::get_num_threads();
    let reference = std::env::var("ACE_BENCH_REFERENCE").as_deref() != Ok("0");
    // (size, USE_AMP, USE_GRAD_CHECKPOINT)
    let mut runs = vec![("tiny", false, false), ("full", false, false)];
    let amp = match ace::kernels::cpu_bf16_support() {
        _ if std::env::var("ACE_BENCH_AMP").as_deref() == Ok("0") => false,
        Ok(()) => true,
        Err(why) => {
            println!("USE_AMP (bf16 products) not measured: {why}");
            false
        }
    };
    if amp {
        runs.push(("full", true, false));
    }
    // The official training configs' setting: USE_GRAD_CHECKPOINT, with USE_AMP where it runs.
    if std::env::var("ACE_BENCH_CHECKPOINT").as_deref() != Ok("0") {
        runs.push(("full", amp, true));
    }
    for (size, amp, checkpoint) in runs {
        let mut child = Command::new(&args[0]);
        child.args(["--size", size]);
        let flags = [(amp, "--amp"), (checkpoint, "--checkpoint")];
        let flags: Vec<&str> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
        child.args(&flags);
        let out = child.output()?;
        anyhow::ensure!(
            out.status.success(),
            "{size}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The child's breakdown of each step.
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout)?;
        let numbers: Vec<f64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let Some((peak, seconds)) = numbers.split_first() else {
            anyhow::bail!("{size}: unexpected output {text:?}");
        };
        let ours = Steps {
            seconds: seconds.to_vec(),
            peak_mib: peak / 1024.0,
        };
        let mut label = format!("{size} DiT");
        for (on, name) in [(amp, "USE_AMP"), (checkpoint, "USE_GRAD_CHECKPOINT")] {
            if on {
                label = format!("{label}, {name}");
            }
        }
        println!("ace, {label}, {threads} threads: {ours}");
        if reference {
            compare(size, &flags, &label, threads, &ours)?;
        }
    }
    Ok(())
}

/// Seconds of each of `steps` steps and peak RSS (KiB) of training the DiT of `config`, with
/// bf16 products when `amp`.
fn run(config: &str, steps: usize, amp: bool) -> anyhow::Result<(Vec<f64>, f64)> {
    let cfg: Config = serde_yaml::from_str(config)?;
    let dev = Device::Cpu;
    let latent = latent();
    let base = common::random_dit_weights(&cfg, &dev)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut weights = DitWeights::from_tensors(&cfg, base, None, &mut rng, &dev)?;
    let example = Encoded {
        target: Tensor::randn(0f32, 1.0, (4, latent, latent), &dev)?,
        target_mask: Tensor::ones((1, latent, latent), DType::F32, &dev)?,
        edits: Vec::new(),
        edit_masks: Vec::new(),
        contexts: vec![Tensor::randn(
            0f32,
            1.0,
            (CONTEXT_ROWS, cfg.y_channels),
            &dev,
        )?],
    };
    let noise = Tensor::randn(0f32, 1.0, (4, latent, latent), &dev)?;
    let tpe = Tensor::randn(0f32, 1.0, (10, cfg.y_channels), &dev)?;
    let schedule = LinearSchedule::official();
    let mut opt = AdamW::new(AdamWParams {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    })?;
    let mut step = |n: usize| -> anyhow::Result<()> {
        let faults = common::minor_faults();
        let t0 = Instant::now();
        let dit = weights.model()?;
        let forward = || {
            diffusion_loss(
                &dit,
                &tpe,
                &schedule,
                std::slice::from_ref(&example),
                &[500],
                std::slice::from_ref(&noise),
            )
        };
        let recorded = || segments::record(forward);
        let (loss, segments) = if amp {
            ace::kernels::autocast_bf16(recorded)
        } else {
            recorded()
        };
        let loss = loss?;
        let t1 = Instant::now();
        let named = weights.backward(loss, segments)?;
        let t2 = Instant::now();
        opt.step(weights.trainable(), &named)?;
        eprintln!(
            "  step {n}: loss and forward {:.3} s, backward {:.3} s, AdamW {:.3} s, peak RSS {} MiB, {} page faults",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            t2.elapsed().as_secs_f64(),
            ace::memory::peak_rss() >> 20,
            common::minor_faults() - faults
        );
        Ok(())
    };
    let mut seconds = Vec::with_capacity(steps);
    for n in 1..=steps {
        let start = Instant::now();
        step(n)?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    Ok((seconds, common::peak_rss_kib() as f64))
}

/// One side's numbers.
struct Steps {
    seconds: Vec<f64>,
    peak_mib: f64,
}

impl Steps {
    /// Mean seconds of the steps after the first two.
    fn steady(&self) -> f64 {
        let later = self.seconds.get(2..).unwrap_or_default();
        later.iter().sum::<f64>() / later.len() as f64
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let seconds: Vec<String> = self.seconds.iter().map(|s| format!("{s:.3}")).collect();
        write!(
            f,
            "steps {} s (steady {:.3} s), peak RSS {:.0} MiB",
            seconds.join(", "),
            self.steady(),
            self.peak_mib
        )
    }
}

/// Runs the reference for `size` with the child's `flags` (`--amp`: under bf16 autocast;
/// `--checkpoint`: the blocks recomputed) and prints its numbers and the ratios.
fn compare(
    size: &str,
    flags: &[&str],
    label: &str,
    threads: usize,
    ours: &Steps,
) -> anyhow::Result<()> {
    let threads = threads.to_string();
    let mut args = vec!["--size", size, "--threads", &threads];
    args.extend(flags);
    let Some(v) = common::run_reference("bench_train_reference.py", &args)? else {
        return Ok(());
    };
    let theirs = Steps {
        seconds: v["step_seconds"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_f64()).collect())
            .unwrap_or_default(),
        peak_mib: v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
    };
    println!("reference, {label} (scepter ACE, PyTorch {threads} threads): {theirs}");
    let step = |s: &Steps, i: usize| s.seconds.get(i).copied().unwrap_or(f64::NAN);
    println!(
        "ace / reference, {label}: first step {:.2}, second {:.2}, steady {:.2}, peak memory {:.2}",
        step(ours, 0) / step(&theirs, 0),
        step(ours, 1) / step(&theirs, 1),
        ours.steady() / theirs.steady(),
        ours.peak_mib / theirs.peak_mib
    );
    Ok(())
}
