//! Which model a command loads and how: `--preset`/`--config` and `--model-dir`
//! ([`ModelSource`], shared by every command that loads the model and by `ace model`), and
//! loading it on the chosen device in the chosen dtype.

use crate::cli::Global;
use ace::config::AceConfig;
use ace::pipeline::Ace;
use anyhow::{bail, Result};
use candle_core::DType;
use std::path::{Path, PathBuf};

/// Which model: a built-in preset or a config file, and where its weights are. Shared by every
/// command that loads the model (and by `ace model`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ModelSource {
    /// Built-in model config: ace_0.6b_512 (default) or ace_0.6b_1024.
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    pub preset: Option<String>,
    /// Model config file in the official ACE inference YAML schema.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder holding a downloaded model snapshot (resolves hf:// and ms:// weight names).
    #[arg(long, value_name = "DIR", env = "ACE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
}

impl ModelSource {
    /// The config the flags name (the default preset without either), and its name.
    pub fn load(&self) -> Result<(AceConfig, String)> {
        load_config(self.config.as_deref(), self.preset.as_deref())
    }
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => bail!("invalid --dtype '{other}' (expected f32, bf16 or f16)"),
    })
}

/// The weight files of `cfg` (under `model_dir` when given). When they are missing and no
/// folder was given, the error says how to get them, naming the command's flag for the folder
/// (`dir_flag`).
pub fn model_files(
    cfg: &AceConfig,
    model_dir: Option<&Path>,
    dir_flag: &str,
) -> Result<ace::config::ModelFiles> {
    cfg.model_files(model_dir).map_err(|e| {
        let remote = cfg
            .weight_specs()
            .is_ok_and(|specs| specs.iter().any(|(_, s)| s.contains("://")));
        if model_dir.is_none() && remote {
            anyhow::anyhow!(
                "{e}\npass {dir_flag} DIR (a downloaded snapshot of the model repository) or \
                 fetch it into the Hugging Face cache with `ace model download`"
            )
        } else {
            anyhow::Error::new(e)
        }
    })
}

/// Loads the model of `cfg` (weights under `model_dir`, given with `dir_flag`) in `dtype`.
pub fn load_model(
    cfg: &AceConfig,
    model_dir: Option<&Path>,
    dir_flag: &str,
    dtype_name: &str,
    global: &Global,
) -> Result<Ace> {
    let files = model_files(cfg, model_dir, dir_flag)?;
    let dtype = parse_dtype(dtype_name)?;
    let device = ace::device::open(global.device)?;
    if device.is_cpu() && dtype != DType::F32 {
        bail!(
            "--dtype {} needs a GPU (the CPU backend has no half-precision matmul); use --dtype f32",
            dtype_name
        );
    }
    Ok(Ace::load(cfg, &files, &device, dtype)?)
}

/// The config a --config file or --preset names (the default preset without either), and its
/// name for reports.
pub fn load_config(config: Option<&Path>, preset: Option<&str>) -> Result<(AceConfig, String)> {
    Ok(match (config, preset) {
        (Some(path), _) => (AceConfig::load(path)?, path.display().to_string()),
        (None, Some(name)) => (AceConfig::preset(name)?, name.to_string()),
        (None, None) => (
            AceConfig::preset(ace::config::DEFAULT_PRESET)?,
            ace::config::DEFAULT_PRESET.to_string(),
        ),
    })
}
