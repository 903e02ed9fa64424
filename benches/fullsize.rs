//! The released model end to end at full size, as a user runs it: `ace edit` of a 512 px photo
//! with the ACE-0.6B-512px preset on a snapshot of random weights in the official layout
//! (DiT and VAE as torch pickles, the T5-XXL encoder in bf16 shards; written once under
//! `$ACE_CACHE_DIR/bench/`, or `ACE_BENCH_SNAPSHOT`). Two runs of the release binary, each a
//! fresh process: cold (an empty prompt cache, so the T5 encodes every prompt, and its 9 GB
//! are hashed once to key the cache) and warm (the same instruction again: every prompt
//! cached, the T5 never opened). Prints per phase (text, load, vae_encode, sampling, decode)
//! seconds and peak RSS as ace reports them, the whole process's peak RSS (wait4 and the
//! phases' peaks: ace's per-phase peaks reset the one wait4 reads), and warm
//! against cold. `cargo bench --bench fullsize`; ACE_BENCH_STEPS (default 20) sets the
//! sampling steps, ACE_BENCH_DTYPE (default f32) the DiT's `--dtype`;
//! ACE_BENCH_DROP_CACHES=1 empties the kernel's page cache before the cold run (root only). Needs about 13 GB of disk and, for the run itself, under 4 GiB of memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// What one run of `ace` gave.
struct Run {
    summary: serde_json::Value,
    wall: f64,
    max_rss_gib: f64,
}

fn gib(mib: f64) -> f64 {
    mib / 1024.0
}

/// Runs `cmd` to completion, with its peak RSS from `wait4`.
fn run(mut cmd: Command) -> anyhow::Result<Run> {
    let start = Instant::now();
    let out = tempfile::NamedTempFile::new()?;
    let err = tempfile::NamedTempFile::new()?;
    let child = cmd
        .stdout(Stdio::from(out.reopen()?))
        .stderr(Stdio::from(err.reopen()?))
        .spawn()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both pointers are valid for the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    anyhow::ensure!(pid > 0, "wait4 failed: {}", std::io::Error::last_os_error());
    let wall = start.elapsed().as_secs_f64();
    let stderr = std::fs::read_to_string(err.path())?;
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "ace failed:\n{stderr}"
    );
    let stdout = std::fs::read_to_string(out.path())?;
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    // ace starts a new peak for each phase (`memory::reset_peak_rss`), which resets the
    // high-water mark wait4 reads too: the process's peak is the largest of the phases' and
    // what wait4 saw after the last reset.
    let phases_mib = summary["phases"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.values())
        .filter_map(|p| p["peak_rss_mib"].as_f64())
        .fold(0.0, f64::max);
    Ok(Run {
        summary,
        wall,
        max_rss_gib: (usage.ru_maxrss as f64 / 1024.0).max(phases_mib) / 1024.0,
    })
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not and skips the run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fullsize: run with `cargo bench --bench fullsize`");
        return Ok(());
    }
    common::print_machine();
    let snapshot = match std::env::var_os("ACE_BENCH_SNAPSHOT") {
        Some(dir) => PathBuf::from(dir),
        None => ace::cache::root()?.join("bench/ACE-0.6B-512px-random"),
    };
    let start = Instant::now();
    common::snapshot::full_size(&snapshot)?;
    println!(
        "snapshot: {} ({:.1} s)",
        snapshot.display(),
        start.elapsed().as_secs_f64()
    );
    let steps = std::env::var("ACE_BENCH_STEPS").unwrap_or_else(|_| "20".into());
    // The DiT's dtype (`--dtype`): f32, or bf16 on a CPU with bf16 instructions.
    let dtype = std::env::var("ACE_BENCH_DTYPE").unwrap_or_else(|_| "f32".into());
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/astronaut.png");
    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    let edit = |output: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ace"));
        cmd.env("ACE_CACHE_DIR", &cache)
            .args(["--device", "cpu", "edit", "--preset", "ace_0.6b_512"])
            .arg("--model-dir")
            .arg(&snapshot)
            .arg("--image")
            .arg(&image)
            .args([
                "--instruction",
                "convert {image} into a watercolor painting",
                "--seed",
                "7",
                "--steps",
                &steps,
                "--dtype",
                &dtype,
                "--json",
                "-o",
            ])
            .arg(work.path().join(output));
        cmd
    };
    if std::env::var("ACE_BENCH_DROP_CACHES").as_deref() == Ok("1") {
        match std::fs::write("/proc/sys/vm/drop_caches", "3") {
            Ok(()) => println!("page cache dropped before the cold run"),
            Err(e) => println!("page cache not dropped: {e}"),
        }
    }
    let cold = run(edit("cold.png"))?;
    let warm = run(edit("warm.png"))?;
    println!(
        "ace edit, 512 px, {steps} steps, --dtype {dtype}, T5 bf16; cold = empty prompt cache, \
         warm = every prompt cached"
    );
    println!(
        "{:<12} {:>10} {:>14} {:>10} {:>14}",
        "phase", "cold s", "cold peak GiB", "warm s", "warm peak GiB"
    );
    for phase in ["text", "load", "vae_encode", "sampling", "decode"] {
        let get = |r: &Run, k: &str| r.summary["phases"][phase][k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{phase:<12} {:>10.2} {:>14.2} {:>10.2} {:>14.2}",
            get(&cold, "seconds"),
            gib(get(&cold, "peak_rss_mib")),
            get(&warm, "seconds"),
            gib(get(&warm, "peak_rss_mib")),
        );
    }
    println!(
        "{:<12} {:>10.2} {:>14.2} {:>10.2} {:>14.2}",
        "process", cold.wall, cold.max_rss_gib, warm.wall, warm.max_rss_gib
    );
    for (name, r) in [("cold", &cold), ("warm", &warm)] {
        println!("{name}: text encoder {}", r.summary["text_encoder"]);
    }
    println!(
        "warm / cold: time {:.2}x, peak RSS {:.2}x",
        warm.wall / cold.wall,
        warm.max_rss_gib / cold.max_rss_gib
    );
    Ok(())
}
