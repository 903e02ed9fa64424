//! The training YAML, in the official ACE training schema (`ace_0.6b_512_train.yaml`):
//! `ENV.SEED`; `SOLVER` with `MAX_STEPS`, `ACCU_STEP`, `EVAL_INTERVAL`, `WORK_DIR`, `LOG_FILE`,
//! `MODEL` (the inference `MODEL` section, plus `PRETRAINED_MODEL` to start the DiT from another
//! checkpoint, `USE_EMA`, `EMA_DECAY`), `OPTIMIZER` (AdamW), `TRAIN_DATA`, `TRAIN_HOOKS`
//! (`LogHook.LOG_INTERVAL`, `CheckpointHook.INTERVAL`), and our additions `GRAD_CLIP` and
//! `TUNER` (LoRA). `USE_AMP` (automatic mixed precision) runs the DiT's linear layers and the
//! attention's backward with bf16 products on CPUs with bf16 instructions, as PyTorch's CPU
//! autocast; elsewhere the trainer says why and trains in f32. Multi-stage training is a
//! top-level `STAGES` list whose entries are merged over `SOLVER` key by key and run one after
//! the other. Keys the trainer has no use for (`FILE_SYSTEM`, `SAMPLE_ARGS`, ...) are accepted
//! and ignored. Relative paths are relative to the YAML's folder.

use super::lora::LoraSpec;
use super::optimizer::AdamWParams;
use crate::config::AceConfig;
use crate::{Error, Result};
use serde::Deserialize;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

/// A whole training config: the seed and one solver per stage.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub seed: u64,
    pub stages: Vec<Stage>,
    /// Folder of the YAML (relative paths start there).
    pub base_dir: PathBuf,
    pub origin: String,
}

/// One stage: everything the loop needs, resolved.
#[derive(Debug, Clone)]
pub struct Stage {
    pub max_steps: u64,
    pub accu_step: usize,
    pub eval_interval: u64,
    pub work_dir: PathBuf,
    pub log_file: String,
    pub grad_clip: Option<f64>,
    /// `USE_AMP`: the linear layers' products in bf16 where the CPU has them.
    pub use_amp: bool,
    pub model: AceConfig,
    /// A DiT checkpoint to start from instead of `DIFFUSION_MODEL.PRETRAINED_MODEL`.
    pub pretrained: Option<PathBuf>,
    pub ema_decay: Option<f64>,
    pub optimizer: AdamWParams,
    pub data: DataConfig,
    pub lora: Option<LoraSpec>,
    pub log_interval: u64,
    pub checkpoint_interval: u64,
}

/// `TRAIN_DATA`.
#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    /// The list: a `train.csv`, a `data.jsonl`, or a folder holding one.
    pub list: PathBuf,
    pub batch_size: usize,
    /// Frame token budget of the image preparation.
    pub max_seq_len: usize,
    /// Fraction of the examples held out for validation.
    pub val_fraction: f64,
    /// Folder of cached latents and text embeddings.
    pub cache_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawEnv {
    #[serde(rename = "SEED", default = "default_seed")]
    seed: u64,
}

fn default_seed() -> u64 {
    2024
}

#[derive(Deserialize)]
struct RawSolver {
    #[serde(rename = "MAX_STEPS")]
    max_steps: u64,
    #[serde(rename = "ACCU_STEP", default = "one")]
    accu_step: usize,
    #[serde(rename = "EVAL_INTERVAL", default)]
    eval_interval: u64,
    #[serde(rename = "WORK_DIR")]
    work_dir: PathBuf,
    #[serde(rename = "LOG_FILE", default = "default_log_file")]
    log_file: String,
    #[serde(rename = "GRAD_CLIP", default)]
    grad_clip: Option<f64>,
    #[serde(rename = "USE_AMP", default)]
    use_amp: bool,
    #[serde(rename = "MODEL")]
    model: Value,
    #[serde(rename = "OPTIMIZER")]
    optimizer: RawOptimizer,
    #[serde(rename = "TRAIN_DATA")]
    train_data: RawData,
    #[serde(rename = "TUNER", default)]
    tuner: Option<RawTuner>,
    #[serde(rename = "TRAIN_HOOKS", default)]
    hooks: Vec<RawHook>,
}

fn one() -> usize {
    1
}

fn default_log_file() -> String {
    "std_log.txt".into()
}

#[derive(Deserialize)]
struct RawOptimizer {
    #[serde(rename = "NAME")]
    name: String,
    #[serde(rename = "LEARNING_RATE")]
    lr: f64,
    #[serde(rename = "EPS", default = "default_eps")]
    eps: f64,
    #[serde(rename = "WEIGHT_DECAY", default = "default_weight_decay")]
    weight_decay: f64,
    #[serde(rename = "BETAS", default = "default_betas")]
    betas: [f64; 2],
}

// torch.optim.AdamW's defaults.
fn default_eps() -> f64 {
    1e-8
}
fn default_weight_decay() -> f64 {
    1e-2
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

#[derive(Deserialize)]
struct RawData {
    /// The list; `MS_DATASET_NAME` is the official key (a local folder there too).
    #[serde(rename = "DATA_LIST", alias = "MS_DATASET_NAME")]
    list: PathBuf,
    #[serde(rename = "BATCH_SIZE", default = "one")]
    batch_size: usize,
    #[serde(rename = "MAX_SEQ_LEN", default)]
    max_seq_len: Option<usize>,
    #[serde(rename = "VAL_FRACTION", default)]
    val_fraction: f64,
    #[serde(rename = "CACHE_DIR", default)]
    cache_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawTuner {
    #[serde(rename = "NAME")]
    name: String,
    #[serde(rename = "R")]
    rank: usize,
    #[serde(rename = "LORA_ALPHA", default)]
    alpha: Option<f64>,
    #[serde(rename = "TARGET_MODULES")]
    targets: Vec<String>,
}

#[derive(Deserialize)]
struct RawHook {
    #[serde(rename = "NAME")]
    name: String,
    #[serde(rename = "LOG_INTERVAL", default)]
    log_interval: Option<u64>,
    #[serde(rename = "INTERVAL", default)]
    interval: Option<u64>,
}

/// Merges `over` into `base` key by key (mappings recursively, everything else replaced).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::textfile::read(path, crate::textfile::MAX_DOCUMENT_BYTES)?;
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        Self::parse(&text, &path.display().to_string(), &base)
    }

    /// Parses YAML text; `origin` names it in errors, `base_dir` anchors relative paths.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Self> {
        let bad = |message: String| Error::Config {
            path: PathBuf::from(origin),
            message,
        };
        let root: Value = crate::textfile::parse_yaml(text, Path::new(origin), "YAML")?;
        let seed = match root.get("ENV") {
            Some(env) => {
                serde_yaml::from_value::<RawEnv>(env.clone())
                    .map_err(|e| bad(format!("ENV: {e}")))?
                    .seed
            }
            None => default_seed(),
        };
        let solver = root
            .get("SOLVER")
            .ok_or_else(|| bad("no SOLVER section (not a training config)".into()))?;
        let overrides: Vec<Value> = match root.get("STAGES") {
            None => vec![Value::Mapping(Default::default())],
            Some(Value::Sequence(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(bad("STAGES must be a non-empty list".into())),
        };
        let mut stages = Vec::with_capacity(overrides.len());
        for (i, over) in overrides.iter().enumerate() {
            let mut merged = solver.clone();
            merge(&mut merged, over);
            let where_ = if overrides.len() > 1 {
                format!("STAGES[{i}]")
            } else {
                "SOLVER".to_string()
            };
            let raw: RawSolver =
                serde_yaml::from_value(merged).map_err(|e| bad(format!("{where_}: {e}")))?;
            stages.push(
                Self::stage(raw, origin, base_dir).map_err(|m| bad(format!("{where_}: {m}")))?,
            );
        }
        Ok(Self {
            seed,
            stages,
            base_dir: base_dir.to_path_buf(),
            origin: origin.to_string(),
        })
    }

    fn stage(raw: RawSolver, origin: &str, base_dir: &Path) -> std::result::Result<Stage, String> {
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        if raw.max_steps == 0 || raw.accu_step == 0 || raw.train_data.batch_size == 0 {
            return Err("MAX_STEPS, ACCU_STEP and BATCH_SIZE must be positive".into());
        }
        if raw.optimizer.name != "AdamW" {
            return Err(format!(
                "OPTIMIZER.NAME '{}' is not supported (only AdamW)",
                raw.optimizer.name
            ));
        }
        if raw.grad_clip.is_some_and(|c| c <= 0.0) {
            return Err("GRAD_CLIP must be positive (leave it out for no clipping)".into());
        }
        // The MODEL section is the inference one: read it with the inference schema.
        let field = |k: &str| raw.model.get(k).cloned();
        let pretrained = field("PRETRAINED_MODEL")
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
            .map(|s| resolve(Path::new(&s)));
        let use_ema = field("USE_EMA").and_then(|v| v.as_bool()).unwrap_or(false);
        let ema_decay = field("EMA_DECAY")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.9999);
        let mut inference = serde_yaml::Mapping::new();
        inference.insert("NAME".into(), "LdmACE".into());
        inference.insert("MODEL".into(), raw.model.clone());
        let text = serde_yaml::to_string(&Value::Mapping(inference)).map_err(|e| e.to_string())?;
        let model = AceConfig::parse(&text, origin, base_dir).map_err(|e| match e {
            Error::Config { message, .. } => format!("MODEL: {message}"),
            e => e.to_string(),
        })?;
        let max_seq_len = match raw.train_data.max_seq_len {
            Some(n) => n,
            None => model.max_seq_len().map_err(|e| e.to_string())?,
        };
        let lora = raw
            .tuner
            .map(|t| {
                if t.name != "LoRA" && t.name != "SwiftLoRA" {
                    return Err(format!("TUNER.NAME '{}' is not supported (LoRA)", t.name));
                }
                Ok(LoraSpec {
                    rank: t.rank,
                    alpha: t.alpha.unwrap_or(t.rank as f64),
                    targets: t.targets,
                })
            })
            .transpose()?;
        let hook = |name: &str| raw.hooks.iter().find(|h| h.name == name);
        let log_interval = hook("LogHook").and_then(|h| h.log_interval).unwrap_or(1);
        let checkpoint_interval = hook("CheckpointHook")
            .and_then(|h| h.interval)
            .unwrap_or(raw.max_steps);
        Ok(Stage {
            max_steps: raw.max_steps,
            accu_step: raw.accu_step,
            eval_interval: raw.eval_interval,
            work_dir: resolve(&raw.work_dir),
            log_file: raw.log_file,
            grad_clip: raw.grad_clip,
            use_amp: raw.use_amp,
            model,
            pretrained,
            ema_decay: use_ema.then_some(ema_decay),
            optimizer: AdamWParams {
                lr: raw.optimizer.lr,
                beta1: raw.optimizer.betas[0],
                beta2: raw.optimizer.betas[1],
                eps: raw.optimizer.eps,
                weight_decay: raw.optimizer.weight_decay,
            },
            data: DataConfig {
                list: resolve(&raw.train_data.list),
                batch_size: raw.train_data.batch_size,
                max_seq_len,
                val_fraction: raw.train_data.val_fraction,
                cache_dir: raw.train_data.cache_dir.as_deref().map(resolve),
            },
            lora,
            log_interval: log_interval.max(1),
            checkpoint_interval: checkpoint_interval.max(1),
        })
    }

    /// Total optimizer steps over all stages.
    pub fn total_steps(&self) -> u64 {
        self.stages.iter().map(|s| s.max_steps).sum()
    }

    /// The stage a global step (counted from 0) falls in, with the step within that stage.
    pub fn stage_of(&self, step: u64) -> Option<(usize, u64)> {
        let mut start = 0;
        for (i, s) in self.stages.iter().enumerate() {
            if step < start + s.max_steps {
                return Some((i, step - start));
            }
            start += s.max_steps;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_model_yaml() -> String {
        let yaml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/ace-tiny/model/ace_tiny.yaml"),
        )
        .unwrap();
        let v: Value = serde_yaml::from_str(&yaml).unwrap();
        serde_yaml::to_string(&v["MODEL"]).unwrap()
    }

    fn indent(text: &str, by: usize) -> String {
        text.lines()
            .map(|l| format!("{}{l}\n", " ".repeat(by)))
            .collect()
    }

    fn config(extra: &str) -> String {
        format!(
            "ENV:\n  SEED: 7\nSOLVER:\n  NAME: ACESolverV1\n  USE_AMP: True\n  MAX_STEPS: 4\n  ACCU_STEP: 2\n  \
             EVAL_INTERVAL: 2\n  WORK_DIR: work\n  MODEL:\n{}    USE_EMA: True\n  OPTIMIZER:\n    NAME: AdamW\n    \
             LEARNING_RATE: 1e-5\n    EPS: 1e-10\n    WEIGHT_DECAY: 5e-4\n  TRAIN_DATA:\n    NAME: ACEDemoDataset\n    \
             MS_DATASET_NAME: data\n    BATCH_SIZE: 1\n  TRAIN_HOOKS:\n    - NAME: BackwardHook\n    - NAME: CheckpointHook\n      \
             INTERVAL: 2\n{extra}",
            indent(&tiny_model_yaml(), 4)
        )
    }

    #[test]
    fn official_keys_are_read_and_paths_resolved() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ace-tiny/model");
        let cfg = TrainConfig::parse(&config(""), "t.yaml", &dir).unwrap();
        assert_eq!(cfg.seed, 7);
        let s = &cfg.stages[0];
        assert_eq!(
            (
                s.max_steps,
                s.accu_step,
                s.eval_interval,
                s.checkpoint_interval
            ),
            (4, 2, 2, 2)
        );
        assert_eq!(s.work_dir, dir.join("work"));
        assert_eq!(s.data.list, dir.join("data"));
        assert_eq!(s.data.max_seq_len, 1024);
        assert_eq!(s.ema_decay, Some(0.9999));
        assert_eq!(s.optimizer.eps, 1e-10);
        assert_eq!(s.optimizer.beta2, 0.999);
        assert!(s.lora.is_none());
        assert!(s.model.model_files(None).is_ok());
    }

    #[test]
    fn stages_override_solver_keys() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ace-tiny/model");
        let extra = "STAGES:\n  - MAX_STEPS: 3\n  - MAX_STEPS: 5\n    OPTIMIZER:\n      LEARNING_RATE: 2e-5\n    \
                     TUNER:\n      NAME: LoRA\n      R: 4\n      TARGET_MODULES: [attn.q]\n";
        let cfg = TrainConfig::parse(&config(extra), "t.yaml", &dir).unwrap();
        assert_eq!(cfg.stages.len(), 2);
        assert_eq!(cfg.stages[1].optimizer.lr, 2e-5);
        assert_eq!(cfg.stages[1].optimizer.eps, 1e-10);
        assert_eq!(cfg.stages[1].lora.as_ref().unwrap().alpha, 4.0);
        assert_eq!(cfg.total_steps(), 8);
        assert_eq!(cfg.stage_of(2), Some((0, 2)));
        assert_eq!(cfg.stage_of(3), Some((1, 0)));
        assert_eq!(cfg.stage_of(8), None);
    }

    #[test]
    fn the_example_config_loads_and_finds_its_model() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/train_tiny.yaml");
        let cfg = TrainConfig::load(&path).unwrap();
        let s = &cfg.stages[0];
        assert_eq!((s.max_steps, s.data.max_seq_len), (40, 64));
        assert!(s.model.model_files(None).is_ok());
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = Path::new("/nowhere");
        let err = TrainConfig::parse(
            &config("").replace("NAME: AdamW", "NAME: SGD"),
            "t.yaml",
            dir,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.yaml") && err.contains("SGD"), "{err}");
        let err = TrainConfig::parse("SOLVER:\n  MAX_STEPS: 1\n", "t.yaml", dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.yaml") && err.contains("SOLVER"), "{err}");
    }
}
