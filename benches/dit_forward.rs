//! One full-size DiT forward (ACE-0.6B, random weights, f32, CPU) on a 512 px edit: two frames
//! of 64x64 latents (1024 tokens each) with 40-row contexts. Prints wall time, peak RSS and the
//! achieved GFLOP/s, then runs the same forward of the reference (scepter's `ACE` backbone in
//! PyTorch, `scripts/bench_dit_reference.py`) with as many threads and prints the ratio of the
//! times. Last, one guided sampling step (conditional and negative pass) as two separate
//! forwards (the baseline) and prepared and batched, with the ratio. Runs under
//! `cargo bench --bench dit_forward`; two threads unless RAYON_NUM_THREADS says otherwise;
//! ACE_BENCH_REFERENCE=0 skips the reference. The reference also runs in bf16 under
//! `torch.autocast` (bf16 weights), the fastest way PyTorch runs it on a CPU, and on a CPU with
//! bf16 instructions ace's `--dtype bf16` forward (bf16 linear layers and self-attention
//! products) runs beside it.

mod common;

use ace::model::dit::{Config, DitAce, Sample};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::peak_rss_kib;
use std::collections::HashMap;
use std::time::Instant;

const CONTEXT_ROWS: usize = 40;
const LATENT: usize = 64;
const FRAMES: usize = 2;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not and skips the run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("dit_forward: run with `cargo bench --bench dit_forward`");
        return Ok(());
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    common::print_machine();
    // As `ace` does (src/memory.rs).
    ace::memory::keep_freed_blocks();
    let cfg: Config = serde_yaml::from_str(
        "PATCH_SIZE: 2\nIN_CHANNELS: 4\nHIDDEN_SIZE: 1152\nDEPTH: 28\nNUM_HEADS: 16\n\
         MLP_RATIO: 4.0\nPRED_SIGMA: True\nY_CHANNELS: 4096\nMAX_SEQ_LEN: 1024\nQK_NORM: True\n",
    )?;
    // The reference runs first, in a fresh process on an idle machine: whatever the first run
    // leaves behind (page cache, fragmented memory) counts against ace, not against it.
    let threads = candle_core::utils::get_num_threads();
    let (theirs, theirs_bf16) = if std::env::var("ACE_BENCH_REFERENCE").as_deref() != Ok("0") {
        (reference(threads, false)?, reference(threads, true)?)
    } else {
        (None, None)
    };
    let dev = Device::Cpu;
    let start = Instant::now();
    let rss_before = peak_rss_kib();
    let weights: HashMap<String, Tensor> = common::random_dit_weights(&cfg, &dev)?
        .into_iter()
        .collect();
    let weight_bytes: usize = weights.values().map(|t| t.elem_count() * 4).sum();
    let dit = DitAce::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &dev))?;
    println!(
        "random weights: {:.1} s, {} MiB of weights, peak RSS {} MiB (before: {} MiB)",
        start.elapsed().as_secs_f64(),
        weight_bytes >> 20,
        peak_rss_kib() / 1024,
        rss_before / 1024
    );

    let sample = Sample {
        frames: (0..FRAMES)
            .map(|_| Tensor::randn(0f32, 1.0, (4, LATENT, LATENT), &dev))
            .collect::<candle_core::Result<_>>()?,
        masks: (0..FRAMES)
            .map(|_| Tensor::ones((1, LATENT, LATENT), DType::F32, &dev))
            .collect::<candle_core::Result<_>>()?,
        contexts: (0..FRAMES)
            .map(|_| Tensor::randn(0f32, 1.0, (CONTEXT_ROWS, cfg.y_channels), &dev))
            .collect::<candle_core::Result<_>>()?,
    };
    let tpe = Tensor::randn(0f32, 1.0, (10, cfg.y_channels), &dev)?;

    let secs = timed_forward(&dit, &sample, &tpe, "f32")?;
    println!(
        "peak RSS / weights: {:.2}",
        (peak_rss_kib() * 1024) as f64 / weight_bytes as f64
    );
    if let Some(theirs) = theirs {
        println!(
            "ace f32 / reference f32 wall time: {:.2} (goal <= 0.8)",
            secs / theirs
        );
    }
    if let Some(theirs) = theirs_bf16 {
        println!(
            "ace f32 / reference bf16 autocast wall time: {:.2}",
            secs / theirs
        );
    }
    guided_step(&dit, &sample, &tpe)?;
    drop(dit);

    // --dtype bf16: the same weights, the linear layers and the self-attention products in
    // bf16 (src/model/cpu_bf16.rs).
    if let Err(why) = ace::kernels::cpu_bf16_support() {
        println!("bf16: not run ({why})");
        return Ok(());
    }
    let weights = common::random_dit_weights(&cfg, &dev)?
        .into_iter()
        .collect();
    let dit = DitAce::new(
        &cfg,
        ace::model::cpu_bf16::var_builder(weights, ace::model::cpu_bf16::Products::Linear)?,
    )?;
    let bf16 = timed_forward(&dit, &sample, &tpe, "--dtype bf16")?;
    println!("ace bf16 / ace f32 wall time: {:.2}", bf16 / secs);
    if let Some(theirs) = theirs_bf16 {
        println!(
            "ace bf16 / reference bf16 autocast wall time: {:.2} (goal <= 0.8)",
            bf16 / theirs
        );
    }
    Ok(())
}

/// Runs one forward of `sample`, prints its time, CPU time, GFLOP/s and peak RSS, and returns
/// the wall seconds.
fn timed_forward(dit: &DitAce, sample: &Sample, tpe: &Tensor, what: &str) -> anyhow::Result<f64> {
    let cfg = dit.config();
    let t = [500f32];
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let out = dit.forward(std::slice::from_ref(sample), &t, tpe)?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let gflop = flops(cfg) / 1e9;
    println!(
        "DiT forward, 512px edit ({FRAMES} frames x {} tokens, {CONTEXT_ROWS} context rows each), \
         {what}, {} threads: {secs:.2} s wall, {cpu:.2} s CPU (user+system), {gflop:.0} GFLOP, \
         {:.1} GFLOP/s, peak RSS {} MiB, out {:?}",
        (LATENT / 2) * (LATENT / 2),
        candle_core::utils::get_num_threads(),
        gflop / secs,
        peak_rss_kib() / 1024,
        out[0].dims(),
    );
    Ok(secs)
}

/// One guided sampling step (conditional and negative pass) two ways: each pass on its own with
/// everything recomputed, as steps ran before the DiT input was prepared once per run (the
/// baseline), and through `forward_prepared`, both passes through the blocks together.
fn guided_step(dit: &DitAce, cond: &Sample, tpe: &Tensor) -> anyhow::Result<()> {
    let negative = Sample {
        contexts: cond
            .contexts
            .iter()
            .map(|c| c.zeros_like())
            .collect::<candle_core::Result<_>>()?,
        ..cond.clone()
    };
    let t = [500f32];
    let start = Instant::now();
    for sample in [cond, &negative] {
        dit.forward(std::slice::from_ref(sample), &t, tpe)?;
    }
    let alone = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let prepared = dit.prepare(&[cond.clone(), negative], tpe)?;
    let prepare = start.elapsed().as_secs_f64();
    let target = cond.frames[0].clone();
    let start = Instant::now();
    dit.forward_prepared(&prepared, &[target.clone(), target], &[t[0], t[0]])?;
    let together = start.elapsed().as_secs_f64();
    println!(
        "guided step (conditional + negative pass): {alone:.2} s as two separate forwards \
         (baseline), {together:.2} s prepared and batched (+ {prepare:.2} s once per run to \
         prepare); step time / baseline: {:.2}",
        together / alone
    );
    Ok(())
}

/// Runs the PyTorch reference on the same forward (in f32, or in bf16 under autocast), prints
/// its numbers and returns its wall time (`None` when it cannot run here).
fn reference(threads: usize, bf16: bool) -> anyhow::Result<Option<f64>> {
    let threads = threads.to_string();
    let mut args = vec!["--threads", &threads];
    if bf16 {
        args.push("--bf16");
    }
    let Some(v) = common::run_reference("bench_dit_reference.py", &args)? else {
        return Ok(None);
    };
    let theirs = v["seconds"].as_f64().unwrap_or(f64::NAN);
    println!(
        "reference (scepter ACE, PyTorch {}, {} threads): {theirs:.2} s wall, {:.2} s CPU, peak \
         RSS {:.0} MiB",
        v["dtype"].as_str().unwrap_or("f32"),
        v["threads"],
        v["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
        v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
    );
    Ok(Some(theirs))
}

/// Multiply-add FLOPs (2 per MAC) of the matmuls of one forward; element-wise work left out.
fn flops(cfg: &Config) -> f64 {
    let h = cfg.hidden_size as f64;
    let frame = ((LATENT / cfg.patch_size) * (LATENT / cfg.patch_size)) as f64;
    let l = FRAMES as f64 * frame;
    let rows = (FRAMES * CONTEXT_ROWS) as f64;
    let p2 = (cfg.patch_size * cfg.patch_size) as f64;
    let mlp = cfg.mlp_hidden() as f64;
    let per_block = 2.0 * l * h * h * 4.0 // self-attention q, k, v, o
        + 2.0 * l * h * h * 2.0 // cross-attention q, o
        + 2.0 * rows * h * h * 2.0 // cross-attention k, v
        + 2.0 * l * h * mlp * 2.0 // MLP
        + 4.0 * l * l * h // self-attention scores and weighted sum
        + 4.0 * frame * CONTEXT_ROWS as f64 * h * FRAMES as f64; // cross-attention
    let embed = 2.0 * l * h * p2 * (cfg.in_channels + 1) as f64
        + 2.0 * (rows + 10.0) * h * (cfg.y_channels as f64 + h)
        + 2.0 * l * h * p2 * cfg.out_channels() as f64;
    cfg.depth as f64 * per_block + embed
}

/// CPU time (user + system, all threads) this process has used, in seconds (Linux; 0
/// elsewhere). On a busy machine it tells the work done apart from the waiting.
fn cpu_seconds() -> f64 {
    let ticks_per_second = 100.0; // USER_HZ, fixed at 100 on Linux
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14th and 15th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(
                (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
                    / ticks_per_second,
            )
        })
        .unwrap_or(0.0)
}
