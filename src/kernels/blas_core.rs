//! Which of OpenBLAS's kernels run the products, for `-v` and the benches. A `DYNAMIC_ARCH`
//! OpenBLAS (the one Debian ships) picks its kernels by CPU when it loads (Debian's 0.3.21:
//! Cooperlake on an AVX512-BF16 CPU such as AMD Zen 5, SkylakeX on AVX-512, Haswell or Zen on
//! AVX2), unless `OPENBLAS_CORETYPE` names others; on AVX-512 machines the difference is up to
//! 2× in every product, so a timing means little without this line.

use std::ffi::{c_char, CStr};

/// The kernels OpenBLAS runs, and whether the environment chose them.
#[derive(Debug, Clone)]
pub struct BlasCore {
    /// OpenBLAS's version and build (`openblas_get_config`).
    pub config: String,
    /// The kernels in use (`openblas_get_corename`: Haswell, Zen, SkylakeX, Cooperlake, ...).
    pub core: String,
    /// `OPENBLAS_CORETYPE`, when set.
    pub forced_by: Option<String>,
}

impl std::fmt::Display for BlasCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let version = self.config.split_whitespace().take(2).collect::<Vec<_>>();
        write!(f, "{}, {} kernels", version.join(" "), self.core)?;
        match &self.forced_by {
            Some(v) => write!(f, " (OPENBLAS_CORETYPE={v})"),
            None => Ok(()),
        }
    }
}

extern "C" {
    fn openblas_get_corename() -> *const c_char;
    fn openblas_get_config() -> *const c_char;
}

fn string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: OpenBLAS returns pointers to NUL-terminated static strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The kernels OpenBLAS runs in this process.
pub fn blas_core() -> BlasCore {
    BlasCore {
        // SAFETY: plain getters of OpenBLAS's.
        config: string(unsafe { openblas_get_config() }),
        core: string(unsafe { openblas_get_corename() }),
        forced_by: std::env::var("OPENBLAS_CORETYPE").ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernels_and_what_chose_them() {
        let core = blas_core();
        assert!(core.config.starts_with("OpenBLAS"), "{core:?}");
        assert!(!core.core.is_empty(), "{core:?}");
        if let Some(forced) = &core.forced_by {
            // OpenBLAS falls back to detection for a name it does not know.
            if core.config.contains("DYNAMIC_ARCH") && forced.eq_ignore_ascii_case("haswell") {
                assert_eq!(core.core, "Haswell");
            }
            assert!(core
                .to_string()
                .ends_with(&format!("(OPENBLAS_CORETYPE={forced})")));
        }
        assert!(core.to_string().contains(&format!("{} kernels", core.core)));
    }
}
