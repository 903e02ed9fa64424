//! Links the system OpenBLAS when the `openblas` feature is on (see src/kernels/mod.rs):
//! pkg-config finds it where the distribution put it (Debian: `libopenblas-dev`).
//!
//! With the `onednn` feature, compiles build/onednn_matmul.c (the bf16 products of
//! src/kernels/bf16.rs) against the system oneDNN (Debian: `libdnnl-dev`) and links it.
//!
//! With the `cuda` feature and `ACE_CUDA_SHIM_LIBS` set (scripts/build-cuda.sh sets it), writes
//! the CUDA shim (build/cuda_shim.rs) for the libraries it names, compiles it with the system C
//! compiler and links it into every binary: it defines the CUDA libraries' functions as
//! trampolines that load the libraries at run time, and `--cfg ace_cuda_shim` tells
//! src/device.rs to ask it for missing libraries. The variables:
//!
//! - `ACE_CUDA_SHIM_LIBS`: the libraries that `ace_cuda_shim_load` loads up front, as
//!   `SONAME:STATUS:NAMES` separated by `;` (see build/cuda_shim.rs);
//! - `ACE_CUDA_SHIM_LAZY`: libraries loaded only when one of their functions is called (same
//!   form, optional);
//! - `ACE_CUDA_SHIM_SEARCH_DIR`: a directory tried after the plain soname (optional).

#[path = "build/cuda_shim.rs"]
mod cuda_shim;

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/cuda_shim.rs");
    println!("cargo:rerun-if-changed=build/onednn_matmul.c");
    println!("cargo::rustc-check-cfg=cfg(ace_cuda_shim)");
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        if let Err(e) = pkg_config::Config::new().probe("openblas") {
            panic!(
                "the `openblas` feature needs OpenBLAS (apt-get install libopenblas-dev), \
                 or build with --no-default-features: {e}"
            );
        }
    }
    if std::env::var_os("CARGO_FEATURE_ONEDNN").is_some() {
        if let Err(e) = onednn() {
            panic!(
                "the `onednn` feature needs oneDNN (apt-get install libdnnl-dev), or build \
                 without it (--no-default-features --features openblas): {e}"
            );
        }
    }
    for var in [
        "ACE_CUDA_SHIM_LIBS",
        "ACE_CUDA_SHIM_LAZY",
        "ACE_CUDA_SHIM_SEARCH_DIR",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let libs = env("ACE_CUDA_SHIM_LIBS");
        if !libs.is_empty() {
            if let Err(e) = cuda_shim(&libs) {
                panic!("{e}");
            }
        }
    }
}

/// Compiles the oneDNN bf16 product and links oneDNN.
fn onednn() -> Result<(), cc::Error> {
    cc::Build::new()
        .file("build/onednn_matmul.c")
        .opt_level(2)
        .warnings(true)
        .try_compile("ace_onednn_matmul")?;
    println!("cargo:rustc-link-lib=dylib=dnnl");
    // The OpenMP runtime oneDNN runs on (Debian's is built on GNU OpenMP), for its thread
    // count: the runtime library itself, which every system with oneDNN has.
    println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
    Ok(())
}

/// A variable of the environment, empty when unset.
fn env(var: &str) -> String {
    match std::env::var(var) {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => String::new(),
        Err(e) => panic!("{var}: {e}"),
    }
}

/// Writes, compiles and links the CUDA shim for `required` and `ACE_CUDA_SHIM_LAZY`.
fn cuda_shim(required: &str) -> Result<(), String> {
    let lazy = env("ACE_CUDA_SHIM_LAZY");
    let parse = |list: &str, required: bool| -> Result<Vec<cuda_shim::Spec>, String> {
        list.split(';')
            .filter(|s| !s.trim().is_empty())
            .map(|s| cuda_shim::parse_spec(s.trim(), required))
            .collect()
    };
    let mut specs = parse(required, true)?;
    specs.extend(parse(&lazy, false)?);
    let mut libs = Vec::new();
    for spec in specs {
        println!("cargo:rerun-if-changed={}", spec.path);
        let text = std::fs::read_to_string(&spec.path)
            .map_err(|e| format!("cuda-shim: {}: {e}", spec.path))?;
        let functions = cuda_shim::read_names(&spec.path, &text);
        libs.push(cuda_shim::Library { spec, functions });
    }
    let (source, count) = cuda_shim::generate(&libs, &env("ACE_CUDA_SHIM_SEARCH_DIR"))?;
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let c = out.join("ace-cuda-shim.c");
    std::fs::write(&c, source).map_err(|e| format!("{}: {e}", c.display()))?;
    println!(
        "cuda-shim: {count} functions from {} libraries -> {}",
        libs.len(),
        c.display()
    );
    let objects = cc::Build::new()
        .file(&c)
        .opt_level(2)
        .pic(true)
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .try_compile_intermediates()
        .map_err(|e| format!("cuda-shim: compiling {}: {e}", c.display()))?;
    // The object itself, not a static library: nothing in ace names most of the trampolines
    // (cudarc does, in a crate linked later), so an archive member could be left out.
    for object in objects {
        println!("cargo:rustc-link-arg={}", object.display());
    }
    // dlopen and dlsym (in libc itself since glibc 2.34, in libdl before).
    println!("cargo:rustc-link-lib=dylib=dl");
    println!("cargo:rustc-cfg=ace_cuda_shim");
    Ok(())
}
