//! Links the system OpenBLAS when the `openblas` feature is on (see src/linalg.rs): pkg-config
//! finds it where the distribution put it (Debian: `libopenblas-dev`).
//!
//! With the `cuda` feature and `ACE_CUDA_SHIM` naming an object file (scripts/build-cuda.sh
//! builds it from scripts/cuda-shim.py's output), that object is linked into every binary: it
//! defines the CUDA libraries' functions as trampolines that load the libraries at run time,
//! and `--cfg ace_cuda_shim` tells src/device.rs to ask it for missing libraries.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(ace_cuda_shim)");
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        if let Err(e) = pkg_config::Config::new().probe("openblas") {
            panic!(
                "the `openblas` feature needs OpenBLAS (apt-get install libopenblas-dev), \
                 or build with --no-default-features: {e}"
            );
        }
    }
    println!("cargo:rerun-if-env-changed=ACE_CUDA_SHIM");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        if let Some(shim) = std::env::var_os("ACE_CUDA_SHIM").filter(|s| !s.is_empty()) {
            let shim = std::path::PathBuf::from(shim);
            if !shim.is_file() {
                panic!("ACE_CUDA_SHIM={}: no such file", shim.display());
            }
            println!("cargo:rerun-if-changed={}", shim.display());
            println!("cargo:rustc-link-arg={}", shim.display());
            // dlopen and dlsym (in libc itself since glibc 2.34, in libdl before).
            println!("cargo:rustc-link-lib=dylib=dl");
            println!("cargo:rustc-cfg=ace_cuda_shim");
        }
    }
}
