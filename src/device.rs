//! Compute device selection (`--device cpu|cuda|metal|auto`). CUDA and Metal are compiled in
//! only with the `cuda` and `metal` cargo features, so the CPU build carries no GPU code.

use crate::{Error, Result};
use candle_core::{DType, Device};

/// The most precise float dtype `device` computes in: f64, except on Metal, which has none
/// (f32). Used where the reference works in double precision (RoPE angles, guidance
/// statistics).
pub fn widest_float(device: &Device) -> DType {
    if device.is_metal() {
        DType::F32
    } else {
        DType::F64
    }
}

/// A float dtype by its name: `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" | "half" => DType::F16,
        other => {
            return Err(Error::invalid(
                "dtype",
                format!("'{other}' (expected f32, bf16 or f16)"),
            ))
        }
    })
}

/// The device a user asks for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    Metal,
    /// The first GPU that this build supports and the machine has, else the CPU.
    #[default]
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            "metal" => Ok(DeviceChoice::Metal),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(Error::invalid(
                "device",
                format!("'{other}' (expected cpu, cuda, metal or auto)"),
            )),
        }
    }
}

/// Opens the device `choice` names; a GPU this build lacks is an error that says which feature
/// to build with.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if cfg!(feature = "cuda") {
                open_cuda()
            } else {
                Err(Error::invalid(
                    "device",
                    "cuda: this ace was built without CUDA (rebuild with `--features cuda`)",
                ))
            }
        }
        DeviceChoice::Metal => {
            if cfg!(feature = "metal") {
                Device::new_metal(0).map_err(|e| unusable("metal", &e))
            } else {
                Err(Error::invalid(
                    "device",
                    "metal: this ace was built without Metal (rebuild with `--features metal`)",
                ))
            }
        }
        DeviceChoice::Auto => {
            if cfg!(feature = "cuda") {
                match open_cuda() {
                    Ok(d) => return Ok(d),
                    Err(e) => log::info!("{e}; trying the next device"),
                }
            }
            if cfg!(feature = "metal") {
                match Device::new_metal(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => log::info!("{}; using the CPU", unusable("metal", &e)),
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// GPU 0 through CUDA, once the CUDA libraries are known to load.
fn open_cuda() -> Result<Device> {
    cuda_libraries().map_err(|cause| no_gpu("cuda", &cause))?;
    Device::new_cuda(0).map_err(|e| unusable("cuda", &e))
}

/// Loads the CUDA libraries of a build made by scripts/build-cuda.sh, whose binary links a shim
/// (build/cuda_shim.rs) in their place and loads them at run time: the first one missing is
/// reported here, in one line, rather than as a failing call later on.
#[cfg(ace_cuda_shim)]
fn cuda_libraries() -> std::result::Result<(), String> {
    extern "C" {
        /// Defined by the shim: 0, or -1 with "SONAME: dlerror's text" in `msg`.
        fn ace_cuda_shim_load(msg: *mut std::ffi::c_char, len: usize) -> std::ffi::c_int;
    }
    let mut msg = [0u8; 1024];
    // SAFETY: the shim writes a NUL-terminated string of at most `len` bytes into `msg`.
    if unsafe { ace_cuda_shim_load(msg.as_mut_ptr().cast(), msg.len()) } == 0 {
        return Ok(());
    }
    let msg = std::ffi::CStr::from_bytes_until_nul(&msg).unwrap_or_default();
    Err(missing_library(&msg.to_string_lossy()))
}

/// Without the shim (a build linked against a CUDA toolkit), the binary does not start unless
/// the libraries are there.
#[cfg(not(ace_cuda_shim))]
fn cuda_libraries() -> std::result::Result<(), String> {
    Ok(())
}

/// Says which library did not load and what provides it, from the shim's "SONAME: dlerror"
/// (dlerror itself starts with the soname when the file is not found).
#[cfg(any(test, ace_cuda_shim))]
fn missing_library(msg: &str) -> String {
    let (soname, why) = msg.split_once(": ").unwrap_or((msg, ""));
    if why != "cannot open shared object file: No such file or directory" {
        return format!("{soname} does not load: {why}");
    }
    let hint = if soname.starts_with("libcuda.so") {
        "the NVIDIA driver is not installed"
    } else {
        "put the CUDA libraries' directory on LD_LIBRARY_PATH"
    };
    format!("{soname} not found: {hint}")
}

/// The error for a GPU that this build supports but cannot open (no driver, no device, missing
/// library). candle appends a backtrace to its errors when `RUST_BACKTRACE` is set; only the
/// first line is kept, so the report stays one line.
fn unusable(kind: &str, e: &candle_core::Error) -> Error {
    no_gpu(kind, &e.to_string())
}

fn no_gpu(kind: &str, cause: &str) -> Error {
    let cause = cause.lines().next().unwrap_or_default();
    Error::invalid("device", format!("{kind}: no usable GPU 0 ({cause})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices_and_rejects_unknown() {
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("tpu"), "{err}");
    }

    #[test]
    fn cpu_and_auto_open_without_gpu_features() {
        assert!(open(DeviceChoice::Cpu).unwrap().is_cpu());
        if !cfg!(any(feature = "cuda", feature = "metal")) {
            assert!(open(DeviceChoice::Auto).unwrap().is_cpu());
            assert!(open(DeviceChoice::Cuda).is_err());
        }
    }

    #[test]
    fn a_missing_library_is_named_with_what_provides_it() {
        let driver = missing_library(
            "libcuda.so.1: cannot open shared object file: No such file or directory",
        );
        assert_eq!(
            driver,
            "libcuda.so.1 not found: the NVIDIA driver is not installed"
        );
        let blas = missing_library(
            "libcublas.so.13: cannot open shared object file: No such file or directory",
        );
        assert_eq!(
            blas,
            "libcublas.so.13 not found: put the CUDA libraries' directory on LD_LIBRARY_PATH"
        );
        let other = missing_library("libcurand.so.10: wrong ELF class: ELFCLASS32");
        assert_eq!(
            other,
            "libcurand.so.10 does not load: wrong ELF class: ELFCLASS32"
        );
        let err = no_gpu("cuda", &driver).to_string();
        assert_eq!(
            err,
            "invalid device: cuda: no usable GPU 0 \
             (libcuda.so.1 not found: the NVIDIA driver is not installed)"
        );
    }

    #[test]
    fn auto_always_opens_and_a_missing_gpu_is_one_line() {
        assert!(open(DeviceChoice::Auto).is_ok());
        if let Err(e) = open(DeviceChoice::Cuda) {
            let msg = e.to_string();
            assert!(msg.starts_with("invalid device: cuda: "), "{msg}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
    }
}
