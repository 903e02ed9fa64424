//! Compute device selection (`--device cpu|cuda|metal|auto`). CUDA and Metal are compiled in
//! only with the `cuda` and `metal` cargo features, so the CPU build carries no GPU code.

use crate::{Error, Result};
use candle_core::Device;

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
                Device::new_cuda(0).map_err(|e| unusable("cuda", &e))
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
                match Device::new_cuda(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => log::info!("{}; trying the next device", unusable("cuda", &e)),
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

/// The error for a GPU that this build supports but cannot open (no driver, no device, missing
/// library). candle appends a backtrace to its errors when `RUST_BACKTRACE` is set; only the
/// first line is kept, so the report stays one line.
fn unusable(kind: &str, e: &candle_core::Error) -> Error {
    let cause = e.to_string();
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
    fn auto_always_opens_and_a_missing_gpu_is_one_line() {
        assert!(open(DeviceChoice::Auto).is_ok());
        if let Err(e) = open(DeviceChoice::Cuda) {
            let msg = e.to_string();
            assert!(msg.starts_with("invalid device: cuda: "), "{msg}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
    }
}
