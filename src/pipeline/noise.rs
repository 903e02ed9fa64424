//! The starting noise of the target latent: a seeded standard normal (ChaCha8, the same on
//! every device) or a tensor read from a safetensors file, so that a run can start from the
//! exact noise of another implementation.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::path::{Path, PathBuf};

/// Where the initial noise comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Noise {
    /// Standard normal from this seed.
    Seed(u64),
    /// A tensor in a safetensors file; `tensor` may be omitted when the file holds one.
    File {
        path: PathBuf,
        tensor: Option<String>,
    },
}

impl Noise {
    /// Parses `FILE.safetensors[:TENSOR]`.
    pub fn parse_file_spec(spec: &str) -> Self {
        if Path::new(spec).exists() {
            return Noise::File {
                path: spec.into(),
                tensor: None,
            };
        }
        match spec.rsplit_once(':') {
            Some((path, name)) if !path.is_empty() && !name.contains('/') => Noise::File {
                path: path.into(),
                tensor: Some(name.to_string()),
            },
            _ => Noise::File {
                path: spec.into(),
                tensor: None,
            },
        }
    }

    /// The seed of the other random draws of a run from this noise (a stochastic sampler's):
    /// its own seed's next stream, or a fixed one for noise from a file.
    pub fn stream_seed(&self) -> u64 {
        match self {
            Noise::Seed(seed) => seed.wrapping_add(0x9E37_79B9_7F4A_7C15),
            Noise::File { .. } => 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The noise for a latent of `shape` (`[C, h, w]`), float32 on `device`.
    pub fn sample(&self, shape: &[usize], device: &Device) -> Result<Tensor> {
        match self {
            Noise::Seed(seed) => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(*seed);
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
                Ok(Tensor::from_vec(v, shape, device)?)
            }
            Noise::File { path, tensor } => {
                let bad = |message: String| Error::Model {
                    path: path.clone(),
                    message,
                };
                if !path.is_file() {
                    return Err(bad("no such noise file".into()));
                }
                let tensors = candle_core::safetensors::load(path, &Device::Cpu)
                    .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
                let (name, t) = match tensor {
                    Some(name) => (
                        name.clone(),
                        tensors.get(name).cloned().ok_or_else(|| {
                            let mut names: Vec<&String> = tensors.keys().collect();
                            names.sort();
                            bad(format!("no tensor '{name}' (it holds {names:?})"))
                        })?,
                    ),
                    None if tensors.len() == 1 => {
                        let (n, t) = tensors.into_iter().next().expect("one tensor");
                        (n, t)
                    }
                    None => {
                        let mut names: Vec<&String> = tensors.keys().collect();
                        names.sort();
                        return Err(bad(format!(
                            "holds {} tensors {names:?}: name one as FILE:TENSOR",
                            names.len()
                        )));
                    }
                };
                let t = if t.rank() == shape.len() + 1 && t.dim(0)? == 1 {
                    t.squeeze(0)?
                } else {
                    t
                };
                if t.dims() != shape {
                    return Err(Error::Shape {
                        name: format!("{}:{name}", path.display()),
                        expected: shape.to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                Ok(t.to_dtype(DType::F32)?.to_device(device)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_reproducible_and_standard() {
        let a = Noise::Seed(7).sample(&[4, 32, 32], &Device::Cpu).unwrap();
        let b = Noise::Seed(7).sample(&[4, 32, 32], &Device::Cpu).unwrap();
        let c = Noise::Seed(8).sample(&[4, 32, 32], &Device::Cpu).unwrap();
        let (va, vb, vc) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        let mean = va.iter().sum::<f32>() / va.len() as f32;
        let var = va.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / va.len() as f32;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "{mean} {var}");
    }

    #[test]
    fn file_noise_is_read_by_name_and_checked() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ace-tiny/expected/run_t2i.safetensors");
        let spec = format!("{}:init_noise", path.display());
        let noise = Noise::parse_file_spec(&spec);
        assert_eq!(
            noise,
            Noise::File {
                path: path.clone(),
                tensor: Some("init_noise".into())
            }
        );
        assert_eq!(
            noise.sample(&[4, 12, 16], &Device::Cpu).unwrap().dims(),
            &[4, 12, 16]
        );
        let err = noise
            .sample(&[4, 16, 12], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("init_noise") && err.contains("[4, 16, 12]"),
            "{err}"
        );
        let all = Noise::parse_file_spec(&path.display().to_string());
        assert!(all
            .sample(&[4, 12, 16], &Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("FILE:TENSOR"));
    }
}
