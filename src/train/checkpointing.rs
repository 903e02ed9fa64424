//! Training checkpoints: one folder per save, `WORK_DIR/checkpoints/step-NNNNNN/`, holding the
//! trained weights (`dit.safetensors`, the whole DiT in ACE names, or `lora.safetensors`, the
//! adapters), `ema.safetensors`, `optimizer.safetensors` (AdamW moments) and `state.json`
//! (step, stage, data position, seed and random stream position, LoRA settings). A folder is
//! written under a temporary name and renamed into place, and `checkpoints/latest` names the
//! newest, so an interrupted save never leaves a checkpoint that looks complete.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// File of the full DiT weights.
pub const DIT_FILE: &str = "dit.safetensors";
/// File of the LoRA adapters.
pub const LORA_FILE: &str = "lora.safetensors";
pub const EMA_FILE: &str = "ema.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
/// Subfolder of `WORK_DIR` with the checkpoints, and the file naming the newest.
pub const CHECKPOINTS: &str = "checkpoints";
pub const LATEST: &str = "latest";

/// LoRA settings of a checkpoint (needed to merge it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraInfo {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
}

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done, over all stages.
    pub step: u64,
    /// The stage the next step belongs to.
    pub stage: usize,
    /// Examples of the stage's training stream consumed so far.
    pub data_position: u64,
    /// `ENV.SEED`; the randomness of a micro-batch is drawn from stream `rng_stream` of it.
    pub seed: u64,
    /// Micro-batches drawn so far (the random stream of the next one).
    pub rng_stream: u64,
    /// AdamW's update count.
    pub optimizer_steps: u64,
    /// The DiT checkpoint training started from.
    pub base_model: PathBuf,
    pub lora: Option<LoraInfo>,
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub state: TrainState,
    /// The trained weights (the whole DiT, or the adapters when `state.lora` is set).
    pub weights: BTreeMap<String, Tensor>,
    pub ema: Option<BTreeMap<String, Tensor>>,
    pub optimizer: BTreeMap<String, Tensor>,
}

fn save_tensors(map: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let map: HashMap<&str, Tensor> = map.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    candle_core::safetensors::save(&map, path).map_err(|e| Error::Model {
        path: path.to_path_buf(),
        message: format!("cannot write: {e}"),
    })
}

fn load_tensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, device).map_err(|e| Error::Model {
        path: path.to_path_buf(),
        message: format!("cannot read checkpoint tensors: {e}"),
    })?;
    Ok(map.into_iter().collect())
}

/// Writes tensors to `path` atomically (a temporary file beside it, then a rename).
pub fn save_tensors_atomic(map: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    crate::output::create_parent(path)?;
    crate::output::atomic::write_with(path, |tmp| save_tensors(map, tmp))
}

/// Saves a checkpoint under `work_dir` and points `latest` at it; returns its folder.
pub fn save(work_dir: &Path, ck: &Checkpoint) -> Result<PathBuf> {
    let root = work_dir.join(CHECKPOINTS);
    crate::output::create_dir(&root)?;
    let name = format!("step-{:06}", ck.state.step);
    let tmp = crate::output::atomic::temp_dir(&root, &format!("{name}-"))?;
    let weights_file = if ck.state.lora.is_some() {
        LORA_FILE
    } else {
        DIT_FILE
    };
    save_tensors(&ck.weights, &tmp.path().join(weights_file))?;
    if let Some(ema) = &ck.ema {
        save_tensors(ema, &tmp.path().join(EMA_FILE))?;
    }
    save_tensors(&ck.optimizer, &tmp.path().join(OPTIMIZER_FILE))?;
    let state = serde_json::to_string_pretty(&ck.state)
        .map_err(|e| Error::invalid("checkpoint state", e.to_string()))?;
    let state_path = tmp.path().join(STATE_FILE);
    std::fs::write(&state_path, state).map_err(|e| Error::io(&state_path, e))?;
    let dest = root.join(&name);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(|e| Error::io(&dest, e))?;
    }
    let tmp = tmp.keep();
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    crate::output::write(&root.join(LATEST), name.as_bytes())?;
    Ok(dest)
}

/// The checkpoint folder `path` names: a checkpoint folder itself, or a `WORK_DIR` /
/// `checkpoints` folder (its newest checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    for root in [path.join(CHECKPOINTS), path.to_path_buf()] {
        let latest = root.join(LATEST);
        if latest.is_file() {
            let name = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
            let dir = root.join(name.trim());
            if dir.join(STATE_FILE).is_file() {
                return Ok(dir);
            }
        }
    }
    Err(Error::Model {
        path: path.to_path_buf(),
        message: format!("not a checkpoint (no {STATE_FILE}, no {CHECKPOINTS}/{LATEST})"),
    })
}

/// Reads the state of a checkpoint folder.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path,
        message: e.to_string(),
    })
}

/// Loads a checkpoint folder (see [`resolve`] for what `path` may be).
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    let state = read_state(&dir)?;
    let weights_file = if state.lora.is_some() {
        LORA_FILE
    } else {
        DIT_FILE
    };
    let ema_path = dir.join(EMA_FILE);
    Ok(Checkpoint {
        weights: load_tensors(&dir.join(weights_file), device)?,
        ema: if ema_path.is_file() {
            Some(load_tensors(&ema_path, device)?)
        } else {
            None
        },
        optimizer: load_tensors(&dir.join(OPTIMIZER_FILE), device)?,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(step: u64) -> Checkpoint {
        let dev = Device::Cpu;
        Checkpoint {
            state: TrainState {
                step,
                stage: 0,
                data_position: 3,
                seed: 1,
                rng_stream: 6,
                optimizer_steps: step,
                base_model: PathBuf::from("/m/dit.pth"),
                lora: None,
            },
            weights: BTreeMap::from([("w".to_string(), Tensor::new(&[1f32, 2.0], &dev).unwrap())]),
            ema: None,
            optimizer: BTreeMap::from([(
                "exp_avg.w".to_string(),
                Tensor::new(&[0.5f32, 0.0], &dev).unwrap(),
            )]),
        }
    }

    #[test]
    fn save_then_load_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &checkpoint(2)).unwrap();
        let second = save(dir.path(), &checkpoint(4)).unwrap();
        assert_eq!(second, dir.path().join("checkpoints/step-000004"));
        let back = load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.state, checkpoint(4).state);
        assert_eq!(back.weights["w"].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        assert!(back.ema.is_none());
        // The folder itself resolves too; no temporary folders are left behind.
        assert_eq!(resolve(&second).unwrap(), second);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        let err = load(&dir.path().join("nothing"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a checkpoint"), "{err}");
    }
}
