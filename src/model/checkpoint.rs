//! Reading checkpoint files into named tensors: torch zip pickles (`.pth`, `.bin`, `.pt`, read
//! as data only, never executing pickle code), safetensors (memory-mapped), and Hugging Face
//! folders, sharded (`*.index.json`) or not. Key renaming for particular layouts lives with each
//! model; this module only gets the tensors out of the files.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Named tensors of one checkpoint, as stored (dtype unchanged).
pub type Tensors = HashMap<String, Tensor>;

/// Loads every tensor of a checkpoint file or Hugging Face folder onto `device`, as stored
/// (dtype unchanged). Each tensor is read from the mapped file and its pages released at once,
/// so the weights are in memory once, never twice.
pub fn load(path: &Path, device: &Device) -> Result<Tensors> {
    load_observed(path, device, &mut |_| {})
}

/// [`load`], telling `loaded` the bytes of each tensor once it is in (for a progress bar).
pub fn load_observed(path: &Path, device: &Device, loaded: &mut dyn FnMut(u64)) -> Result<Tensors> {
    super::mapped::open(path)?
        .into_iter()
        .map(|m| {
            let t = m.load(device, m.dtype())?;
            m.release();
            loaded(m.byte_len() as u64);
            Ok((m.name().to_string(), t))
        })
        .collect()
}

/// Bytes of the weight files of a checkpoint file or folder.
pub fn size_on_disk(path: &Path) -> Result<u64> {
    Ok(weight_files(path)?
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum())
}

/// The weight files a checkpoint path stands for: the file itself, or in a folder the shards an
/// index names, else its safetensors files, else its torch files.
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(Error::Model {
            path: path.to_path_buf(),
            message: "no such checkpoint file or folder".into(),
        });
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let named = |suffix: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = entries
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .cloned()
            .collect();
        v.sort();
        v
    };
    let index = named(".safetensors.index.json")
        .into_iter()
        .chain(named(".bin.index.json"))
        .next();
    if let Some(index) = index {
        return shards_of_index(&index);
    }
    for suffix in [".safetensors", ".bin", ".pth", ".pt"] {
        let files = named(suffix);
        if !files.is_empty() {
            return Ok(files);
        }
    }
    Err(Error::Model {
        path: path.to_path_buf(),
        message: "folder holds no weights (*.safetensors, *.bin, *.pth or an *.index.json)".into(),
    })
}

fn shards_of_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let bad = |message: String| Error::Model {
        path: index.to_path_buf(),
        message,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid index JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("index has no weight_map".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(bad(format!("shard {} is missing", missing.display())));
    }
    Ok(files)
}

pub(super) fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// One tensor of a checkpoint as its file describes it, without reading its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// Lists the tensors of a checkpoint file or folder from the file headers only (safetensors
/// headers, the pickle's tensor records), so that even a 20 GB checkpoint is described at once.
pub fn inventory(path: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for file in weight_files(path)? {
        let bad = |message: String| Error::Model {
            path: file.clone(),
            message,
        };
        if is_safetensors(&file) {
            // SAFETY: mapped read-only, as in `load_safetensors`.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&file) }
                .map_err(|e| bad(format!("cannot read safetensors: {e}")))?;
            for (name, view) in st.tensors() {
                let dtype = DType::try_from(view.dtype())
                    .map_err(|e| bad(format!("tensor {name}: {e}")))?;
                out.push(Entry {
                    name,
                    shape: view.shape().to_vec(),
                    dtype,
                });
            }
        } else {
            let read = |key| {
                candle_core::pickle::read_pth_tensor_info(&file, false, key)
                    .map_err(|e| bad(format!("cannot read torch checkpoint: {e}")))
            };
            let mut infos = read(None)?;
            if infos.is_empty() {
                infos = read(Some("state_dict"))?;
            }
            out.extend(infos.into_iter().map(|i| Entry {
                name: i.name,
                shape: i.layout.dims().to_vec(),
                dtype: i.dtype,
            }));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ace-tiny/model/models")
            .join(rel)
    }

    #[test]
    fn reads_torch_pickles_and_safetensors_folders() {
        let dit = load(&fixture("dit/ace_tiny.pth"), &Device::Cpu).unwrap();
        assert_eq!(dit["x_embedder.proj.weight"].dims(), &[64, 5, 2, 2]);
        let vae = load(&fixture("vae/vae.bin"), &Device::Cpu).unwrap();
        assert!(
            vae.keys().any(|k| k.starts_with("encoder.down.")),
            "{:?}",
            vae.keys()
        );
        let t5 = load(&fixture("text_encoder/t5-tiny"), &Device::Cpu).unwrap();
        assert!(t5.contains_key("shared.weight"));
    }

    #[test]
    fn inventories_list_names_shapes_and_dtypes_without_loading() {
        let dit = inventory(&fixture("dit/ace_tiny.pth")).unwrap();
        let loaded = load(&fixture("dit/ace_tiny.pth"), &Device::Cpu).unwrap();
        assert_eq!(dit.len(), loaded.len());
        for e in &dit {
            assert_eq!(e.shape, loaded[&e.name].dims(), "{}", e.name);
            assert_eq!(e.dtype, loaded[&e.name].dtype(), "{}", e.name);
        }
        let t5 = inventory(&fixture("text_encoder/t5-tiny")).unwrap();
        assert!(t5
            .iter()
            .any(|e| e.name == "shared.weight" && e.shape.len() == 2));
    }

    #[test]
    fn sharded_folders_follow_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("a".to_string(), a.clone())]),
            dir.path().join("m-1.safetensors"),
        )
        .unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("b".to_string(), b)]),
            dir.path().join("m-2.safetensors"),
        )
        .unwrap();
        let index = r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}"#;
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        let t = load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t["a"].to_vec2::<f32>().unwrap(),
            a.to_vec2::<f32>().unwrap()
        );

        std::fs::remove_file(dir.path().join("m-2.safetensors")).unwrap();
        let err = load(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("m-2.safetensors") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn missing_and_empty_locations_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("holds no weights"), "{err}");
        let err = load(&dir.path().join("nope.pth"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.pth") && err.contains("no such"), "{err}");
        let bad = dir.path().join("bad.pth");
        std::fs::write(&bad, b"not a zip").unwrap();
        let err = load(&bad, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("bad.pth") && err.contains("cannot read torch checkpoint"),
            "{err}"
        );
    }
}
