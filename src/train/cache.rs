//! Optional on-disk cache of encoded examples (`TRAIN_DATA.CACHE_DIR`): the latents and T5
//! contexts of an example are computed once and stored as `KEY.safetensors`, the key a hash of
//! everything they depend on (the example's fields, its files' sizes and modification times,
//! the frozen models' files and settings). A changed image or model makes a new key.

use super::dataset::Example;
use super::model::{Encoded, Frozen};
use crate::{Error, Result};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Encodes examples, through the cache when there is one.
pub struct Encoder<'a> {
    frozen: &'a Frozen,
    dir: Option<PathBuf>,
    /// What the encodings depend on besides the example (models, settings).
    salt: String,
    device: Device,
}

/// 64-bit FNV-1a: a hash that stays the same across builds and platforms.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Size and modification time of a file, for the key.
fn stamp(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{}:{}:{modified}", path.display(), m.len())
        }
        Err(_) => format!("{}:missing", path.display()),
    }
}

impl<'a> Encoder<'a> {
    /// `salt` describes the frozen models and settings (paths, LENGTH, budget, scale).
    pub fn new(frozen: &'a Frozen, dir: Option<PathBuf>, salt: String, device: &Device) -> Self {
        Self {
            frozen,
            dir,
            salt,
            device: device.clone(),
        }
    }

    fn key(&self, ex: &Example) -> String {
        let mut text = format!(
            "{}\n{}\n{}\n{}\n",
            self.salt, ex.id, ex.task, ex.instruction
        );
        for p in ex
            .inputs
            .iter()
            .chain(ex.masks.iter().flatten())
            .chain([&ex.target])
        {
            text.push_str(&stamp(p));
            text.push('\n');
        }
        format!("{:016x}", fnv1a(&text))
    }

    /// The encoded example, from the cache when it holds it (written there otherwise).
    pub fn encode(&self, ex: &Example) -> Result<Encoded> {
        let Some(dir) = &self.dir else {
            return self.frozen.encode(ex);
        };
        let path = dir.join(format!("{}.safetensors", self.key(ex)));
        if path.is_file() {
            let tensors =
                candle_core::safetensors::load(&path, &self.device).map_err(|e| Error::Model {
                    path: path.clone(),
                    message: format!("unreadable cache entry (delete it): {e}"),
                })?;
            return Encoded::from_tensors(tensors, &path.display().to_string());
        }
        let encoded = self.frozen.encode(ex)?;
        let tensors: BTreeMap<String, _> = encoded.to_tensors().into_iter().collect();
        super::checkpointing::save_tensors_atomic(&tensors, &path)?;
        Ok(encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_of_known_strings() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
