//! The prompt-embedding cache: T5 hidden states of a prompt, kept on disk so that a shell loop
//! that edits a hundred images with one instruction runs the 9 GB encoder once, and a run whose
//! prompts are all cached never opens the encoder's weights.
//!
//! An entry is keyed by everything its values depend on ([`PromptKey`]: the encoder's identity,
//! `LENGTH`, the cleaning, the token ids, the weight and compute dtypes) and stored as a
//! safetensors file named by the key's SHA-256, holding the key itself and the SHA-256 of the
//! values in its metadata. An entry is written to a temporary file and renamed; one that does not
//! parse, holds another key, has the wrong shape or whose values do not match their checksum is
//! ignored (and written anew), never trusted.

use crate::model::identity::{hex, weights_identity};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What one cached embedding depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PromptKey {
    /// [`crate::model::identity::weights_identity`] of the encoder's weight files.
    pub encoder: String,
    /// `LENGTH` of the tokenizer.
    pub length: usize,
    /// The cleaning applied before tokenising (`CLEAN`).
    pub clean: String,
    /// The real token ids (the closing `</s>` included).
    pub ids: Vec<u32>,
    /// The dtype the weights were used in (`T5_DTYPE` or `--text-dtype`).
    pub weights: String,
    /// The dtype of the stored states (what the products ran in).
    pub states: String,
    /// The dtype the products ran in where it is not that of the states: `bf16` for bf16
    /// products with f32 states (`--dtype bf16` on the CPU); absent, and then not part of the
    /// digest, otherwise, so that the entries written before this field still serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<String>,
}

impl PromptKey {
    fn digest(&self) -> String {
        let json = serde_json::to_string(self).expect("a key serialises");
        hex(&Sha256::digest(json.as_bytes()))
    }
}

const FORMAT: &str = "ace-prompt-embedding-1";

/// A folder of cached prompt embeddings, with the remembered identities of the encoders
/// beside it.
#[derive(Debug, Clone)]
pub struct PromptCache {
    dir: PathBuf,
    identities: PathBuf,
}

impl PromptCache {
    /// The cache under the cache folder `root` (`prompts/`, `identity/`), created when missing;
    /// an error naming the folder when it cannot be made or written.
    pub fn open(root: &Path) -> Result<Self> {
        let [dir, identities] = ["prompts", "identity"].map(|s| root.join(s));
        for d in [&dir, &identities] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            tempfile::Builder::new()
                .prefix(".ace-probe-")
                .tempfile_in(d)
                .map_err(|e| Error::io(d, e))?;
        }
        Ok(Self { dir, identities })
    }

    /// The cache in ace's cache folder ([`crate::cache::root`]).
    pub fn default_location() -> Result<Self> {
        Self::open(&crate::cache::root()?)
    }

    /// The folder of the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The identity of an encoder's weight files, remembered beside the entries.
    pub fn identity(&self, files: &[PathBuf]) -> Result<String> {
        weights_identity(files, Some(&self.identities))
    }

    fn path(&self, key: &PromptKey) -> PathBuf {
        self.dir.join(format!("{}.safetensors", key.digest()))
    }

    /// The cached states `[ids.len(), width]` of `key`, when a sound entry for it exists.
    pub fn get(&self, key: &PromptKey, device: &Device) -> Option<Tensor> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        match Self::decode(&bytes, key, device) {
            Ok(t) => Some(t),
            Err(why) => {
                log::info!("prompt cache: ignoring {}: {why}", path.display());
                None
            }
        }
    }

    fn decode(
        bytes: &[u8],
        key: &PromptKey,
        device: &Device,
    ) -> std::result::Result<Tensor, String> {
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format!("{e:?}"))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err("not a prompt embedding".into());
        }
        let stored: PromptKey =
            serde_json::from_str(meta.get("key").ok_or("no key")?).map_err(|e| e.to_string())?;
        if &stored != key {
            return Err("it holds another prompt".into());
        }
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("{e:?}"))?;
        let view = st.tensor("states").map_err(|e| format!("{e:?}"))?;
        if view.shape().len() != 2 || view.shape()[0] != key.ids.len() {
            return Err(format!(
                "shape {:?} for {} tokens",
                view.shape(),
                key.ids.len()
            ));
        }
        if Some(&hex(&Sha256::digest(view.data()))) != meta.get("sha256") {
            return Err("its values do not match their checksum".into());
        }
        let dtype = DType::try_from(view.dtype()).map_err(|e| e.to_string())?;
        if dtype.as_str() != key.states {
            return Err(format!("dtype {dtype:?}, expected {}", key.states));
        }
        Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device).map_err(|e| e.to_string())
    }

    /// Stores `states` under `key`, atomically.
    pub fn put(&self, key: &PromptKey, states: &Tensor) -> Result<()> {
        let states = states.to_device(&Device::Cpu)?.contiguous()?;
        let data = tensor_bytes(&states)?;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            (
                "key".to_string(),
                serde_json::to_string(key)
                    .map_err(|e| Error::invalid("prompt key", e.to_string()))?,
            ),
            ("sha256".to_string(), hex(&Sha256::digest(&data))),
        ]);
        let dtype = safetensor_dtype(states.dtype())?;
        let view = safetensors::tensor::TensorView::new(dtype, states.dims().to_vec(), &data)
            .map_err(|e| Error::invalid("prompt cache", format!("{e:?}")))?;
        let bytes = safetensors::serialize([("states", view)], Some(metadata))
            .map_err(|e| Error::invalid("prompt cache", format!("{e:?}")))?;
        crate::output::atomic::write(&self.path(key), &bytes)
    }
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let values = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => values
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => values
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => values
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => {
            return Err(Error::invalid(
                "prompt cache",
                format!("cannot store {other:?} states"),
            ))
        }
    })
}

fn safetensor_dtype(d: DType) -> Result<safetensors::Dtype> {
    Ok(match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
        other => {
            return Err(Error::invalid(
                "prompt cache",
                format!("cannot store {other:?} states"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ids: &[u32]) -> PromptKey {
        PromptKey {
            encoder: "e".repeat(64),
            length: 24,
            clean: "whitespace".into(),
            ids: ids.to_vec(),
            weights: "f32".into(),
            states: "f32".into(),
            products: None,
        }
    }

    fn entry_path(cache: &PromptCache, k: &PromptKey) -> PathBuf {
        cache.path(k)
    }

    #[test]
    fn entries_round_trip_and_bad_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PromptCache::open(dir.path()).unwrap();
        let dev = Device::Cpu;
        let k = key(&[5, 6, 1]);
        let states = Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap();
        assert!(cache.get(&k, &dev).is_none());
        cache.put(&k, &states).unwrap();
        let got = cache.get(&k, &dev).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            states.to_vec2::<f32>().unwrap()
        );
        // Keys without `products` serialise as before it existed (the same digests).
        assert!(!serde_json::to_string(&k).unwrap().contains("products"));
        // Another dtype, products' dtype, length or encoder is another entry.
        for other in [
            PromptKey {
                states: "bf16".into(),
                ..k.clone()
            },
            PromptKey {
                products: Some("bf16".into()),
                ..k.clone()
            },
            PromptKey {
                length: 120,
                ..k.clone()
            },
            PromptKey {
                encoder: "f".repeat(64),
                ..k.clone()
            },
        ] {
            assert!(cache.get(&other, &dev).is_none());
        }
        let path = entry_path(&cache, &k);
        let good = std::fs::read(&path).unwrap();
        // Truncated.
        std::fs::write(&path, &good[..good.len() - 7]).unwrap();
        assert!(cache.get(&k, &dev).is_none());
        // One value flipped: the checksum catches it.
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        assert!(cache.get(&k, &dev).is_none());
        // Swapped: the entry of another prompt under this name.
        let k2 = key(&[9, 1]);
        cache
            .put(&k2, &Tensor::ones((2, 8), DType::F32, &dev).unwrap())
            .unwrap();
        std::fs::copy(entry_path(&cache, &k2), &path).unwrap();
        assert!(cache.get(&k, &dev).is_none());
        // Garbage.
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7f garbage").unwrap();
        assert!(cache.get(&k, &dev).is_none());
        // Written again, it is sound again.
        cache.put(&k, &states).unwrap();
        assert!(cache.get(&k, &dev).is_some());
    }

    #[test]
    fn an_unusable_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = PromptCache::open(&file.join("cache"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("plain-file"), "{err}");
    }
}
