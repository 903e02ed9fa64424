//! Links the system OpenBLAS when the `openblas` feature is on (see src/linalg.rs): pkg-config
//! finds it where the distribution put it (Debian: `libopenblas-dev`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        if let Err(e) = pkg_config::Config::new().probe("openblas") {
            panic!(
                "the `openblas` feature needs OpenBLAS (apt-get install libopenblas-dev), \
                 or build with --no-default-features: {e}"
            );
        }
    }
}
