//! What the benches share: reading this process's peak memory, running a Python reference
//! script that prints one JSON line of numbers, naming the CPU, and a random full-size model
//! snapshot in the official layout.

#![allow(dead_code)] // each bench uses its part

pub mod snapshot;
pub mod torch_zip;

use ace::model::dit::{Config, DitAce};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::BTreeMap;
use std::process::Command;

/// Random DiT weights (candle's initialisations) as plain tensors: built on the `Var`s
/// themselves, a forward would record a backprop graph and keep every intermediate alive.
pub fn random_dit_weights(cfg: &Config, dev: &Device) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let varmap = VarMap::new();
    DitAce::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let weights = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("var map lock poisoned"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    Ok(weights)
}

/// Peak resident set size of this process in KiB (Linux; 0 elsewhere).
pub fn peak_rss_kib() -> u64 {
    ace::memory::peak_rss() / 1024
}

/// Minor page faults of this process so far: pages touched for the first time (Linux; 0
/// elsewhere).
pub fn minor_faults() -> u64 {
    // SAFETY: `rusage` is plain integers (all-zero is valid) and getrusage only writes it.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0;
        }
        usage.ru_minflt as u64
    }
}

/// The CPU's model name and the vector extensions that matter to the kernels, from
/// `/proc/cpuinfo`, for the first line of every bench.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let has: Vec<&str> = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    format!(
        "{} ({} cores; {})",
        field("model name"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        has.join(", ")
    )
}

/// The machine a bench ran on, its first lines: the CPU, and the kernels of the products.
pub fn print_machine() {
    println!("cpu: {}", cpu_description());
    #[cfg(feature = "openblas")]
    println!("products: {}", ace::kernels::blas_core());
}

/// Runs `scripts/SCRIPT ARGS` with python3 and parses the JSON line it prints last; `None`
/// (with a line saying why) when it cannot run here, e.g. without torch or scepter.
pub fn run_reference(script: &str, args: &[&str]) -> anyhow::Result<Option<serde_json::Value>> {
    let path = format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = match Command::new("python3").arg(&path).args(args).output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            println!(
                "reference: not run ({}); it needs `pip install torch einops` and \
                 `pip install --no-deps scepter`",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("failed")
            );
            return Ok(None);
        }
        Err(e) => {
            println!("reference: not run (python3: {e})");
            return Ok(None);
        }
    };
    let text = String::from_utf8(out.stdout)?;
    Ok(Some(serde_json::from_str(
        text.lines().last().unwrap_or_default(),
    )?))
}
