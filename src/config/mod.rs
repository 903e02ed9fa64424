//! The official ACE inference YAML (`ace_0.6b_512.yaml` and the like): the sampler defaults,
//! the LdmACE settings and where the three models' weights are. Weight locations are a path
//! relative to the YAML, or `hf://ORG/REPO@path` / `ms://ORG/REPO@path` ([`crate::hub`]), which
//! resolve against a downloaded snapshot (`--model-dir`) or the Hugging Face cache. The presets ship
//! inside the binary.

mod files;
mod sections;

pub use files::ModelFiles;
pub use sections::{
    CondStageConfig, DefaultParas, DiffusionConfig, InputDefaults, ModelConfig,
    NoiseSchedulerConfig,
};

use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The presets shipped with `ace`: name and YAML text.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "ace_0.6b_512",
        include_str!("../../presets/ace_0.6b_512.yaml"),
    ),
    (
        "ace_0.6b_1024",
        include_str!("../../presets/ace_0.6b_1024.yaml"),
    ),
];

/// The preset used when none is named.
pub const DEFAULT_PRESET: &str = "ace_0.6b_512";

/// The component classes of the official schema that `ace` implements: each `NAME` key, where
/// given, must name its class.
const COMPONENTS: [(&[&str], &str); 8] = [
    (&["MODEL"], "LdmACE"),
    (&["MODEL", "DIFFUSION"], "ACEDiffusion"),
    (
        &["MODEL", "DIFFUSION", "NOISE_SCHEDULER"],
        "LinearScheduler",
    ),
    (&["MODEL", "DIFFUSION_MODEL"], "DiTACE"),
    (&["MODEL", "FIRST_STAGE_MODEL"], "AutoencoderKL"),
    (&["MODEL", "FIRST_STAGE_MODEL", "ENCODER"], "Encoder"),
    (&["MODEL", "FIRST_STAGE_MODEL", "DECODER"], "Decoder"),
    (&["MODEL", "COND_STAGE_MODEL"], "ACETextEmbedder"),
];

/// Checks the `NAME` of every component section against [`COMPONENTS`].
fn check_component_names(root: &serde_yaml::Value, origin: &str) -> Result<()> {
    for (path, expected) in COMPONENTS {
        let section = path.iter().try_fold(root, |v, k| v.get(*k));
        let Some(name) = section.and_then(|s| s.get("NAME")) else {
            continue;
        };
        if name.as_str() != Some(expected) {
            let found = serde_yaml::to_string(name).unwrap_or_default();
            return Err(Error::Config {
                path: PathBuf::from(origin),
                message: format!(
                    "{}.NAME is {} but ace implements only {expected}",
                    path.join("."),
                    found.trim()
                ),
            });
        }
    }
    Ok(())
}

/// A whole inference config.
#[derive(Debug, Clone, Deserialize)]
pub struct AceConfig {
    #[serde(rename = "NAME")]
    pub name: String,
    #[serde(rename = "DEFAULT_PARAS", default)]
    pub default_paras: DefaultParas,
    #[serde(rename = "MODEL")]
    pub model: ModelConfig,
    /// Folder that relative weight paths start from (the YAML's folder).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where the config came from (a file, or `preset:NAME`), for messages.
    #[serde(skip)]
    pub origin: String,
}

impl AceConfig {
    /// Parses YAML text; `origin` names it in errors, `base_dir` anchors relative paths.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Self> {
        let what = "an ACE inference config";
        let root: serde_yaml::Value = crate::textfile::parse_yaml(text, Path::new(origin), what)?;
        check_component_names(&root, origin)?;
        let mut cfg: AceConfig = serde_yaml::from_value(root).map_err(|e| Error::Config {
            path: PathBuf::from(origin),
            message: format!("not {what}: {e}"),
        })?;
        cfg.base_dir = base_dir.to_path_buf();
        cfg.origin = origin.to_string();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::textfile::read(path, crate::textfile::MAX_DOCUMENT_BYTES)?;
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        Self::parse(&text, &path.display().to_string(), &base)
    }

    /// One of the embedded presets.
    pub fn preset(name: &str) -> Result<Self> {
        let key = name
            .trim_end_matches(".yaml")
            .replace('-', "_")
            .to_lowercase();
        let (found, text) = PRESETS.iter().find(|(n, _)| *n == key).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            Error::invalid(
                "preset",
                format!("'{name}' (available: {})", names.join(", ")),
            )
        })?;
        Self::parse(text, &format!("preset:{found}"), Path::new("."))
    }

    fn validate(&self) -> Result<()> {
        let bad = |message: String| Error::Config {
            path: PathBuf::from(&self.origin),
            message,
        };
        let m = &self.model;
        if let Err(e) = self.default_paras.input.sampler_settings() {
            return Err(bad(format!("DEFAULT_PARAS.INPUT: {e}")));
        }
        if m.diffusion.prediction_type != "eps" {
            return Err(bad(format!(
                "PREDICTION_TYPE '{}' is not supported (only eps)",
                m.diffusion.prediction_type
            )));
        }
        if m.diffusion.noise_scheduler.name != "LinearScheduler" {
            return Err(bad(format!(
                "NOISE_SCHEDULER '{}' is not supported (only LinearScheduler)",
                m.diffusion.noise_scheduler.name
            )));
        }
        if m.size_factor == 0 || m.scale_factor <= 0.0 || m.cond_stage_model.length < 2 {
            return Err(bad(
                "SIZE_FACTOR, SCALE_FACTOR and LENGTH must be positive".into()
            ));
        }
        if m.use_text_pos_embeddings && m.text_identifier.is_empty() {
            return Err(bad(
                "USE_TEXT_POS_EMBEDDINGS needs the TEXT_IDENTIFIER list".into(),
            ));
        }
        Ok(())
    }

    /// `T5_DTYPE` as a dtype (`float32`, `bfloat16` or `float16`; the short names too).
    pub fn t5_dtype(&self) -> Result<candle_core::DType> {
        let name = &self.model.cond_stage_model.t5_dtype;
        crate::device::parse_dtype(name).map_err(|_| Error::Config {
            path: PathBuf::from(&self.origin),
            message: format!(
                "MODEL.COND_STAGE_MODEL.T5_DTYPE '{name}' (expected float32, bfloat16 or float16)"
            ),
        })
    }

    /// The DiT section (`MODEL.DIFFUSION_MODEL`) as the DiT's config.
    pub fn dit_config(&self) -> Result<crate::model::dit::Config> {
        self.section(&self.model.diffusion_model, "DIFFUSION_MODEL")
    }

    /// The VAE section (`MODEL.FIRST_STAGE_MODEL`) as the VAE's config.
    pub fn vae_config(&self) -> Result<crate::model::vae::Config> {
        self.section(&self.model.first_stage_model, "FIRST_STAGE_MODEL")
    }

    fn section<T: serde::de::DeserializeOwned>(
        &self,
        value: &serde_yaml::Value,
        name: &str,
    ) -> Result<T> {
        serde_yaml::from_value(value.clone()).map_err(|e| Error::Config {
            path: PathBuf::from(&self.origin),
            message: format!("MODEL.{name}: {e}"),
        })
    }

    /// `MAX_SEQ_LEN` of the DiT section (the token budget of one frame).
    pub fn max_seq_len(&self) -> Result<usize> {
        self.model
            .diffusion_model
            .get("MAX_SEQ_LEN")
            .and_then(serde_yaml::Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::Config {
                path: PathBuf::from(&self.origin),
                message: "MODEL.DIFFUSION_MODEL.MAX_SEQ_LEN is missing".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_yaml() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ace-tiny/model/ace_tiny.yaml")
    }

    #[test]
    fn presets_parse_with_the_official_values() {
        for (name, steps, seq) in [("ace_0.6b_512", 20, 1024), ("ace-0.6b-1024", 50, 4096)] {
            let cfg = AceConfig::preset(name).unwrap();
            let m = &cfg.model;
            assert_eq!(cfg.default_paras.input.sample_steps, steps);
            assert_eq!(cfg.default_paras.input.guide_scale, 4.5);
            assert_eq!(cfg.default_paras.input.guide_rescale, 0.5);
            assert_eq!(cfg.max_seq_len().unwrap(), seq);
            assert_eq!(m.scale_factor, 0.18215);
            assert_eq!(m.size_factor, 8);
            assert_eq!(m.decoder_bias, 0.5);
            assert!(m.use_text_pos_embeddings);
            assert_eq!(m.text_identifier.len(), 10);
            assert_eq!(m.text_identifier[3], "{image3}");
            assert_eq!(m.diffusion.noise_scheduler.beta_min, 0.0001);
            assert_eq!(m.diffusion.noise_scheduler.beta_max, 0.02);
            assert_eq!(m.cond_stage_model.length, 120);
            assert_eq!(cfg.t5_dtype().unwrap(), candle_core::DType::BF16);
            assert!(m
                .cond_stage_model
                .pretrained_model
                .starts_with("hf://scepter-studio/"));
        }
        assert!(AceConfig::preset("ace_2b")
            .unwrap_err()
            .to_string()
            .contains("ace_0.6b_512"));
    }

    #[test]
    fn local_paths_and_bad_configs() {
        let err = AceConfig::parse("NAME: x\n", "bad.yaml", Path::new(".")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("bad.yaml: not an ACE inference config"),
            "{err}"
        );
        let text = std::fs::read_to_string(tiny_yaml())
            .unwrap()
            .replace("SAMPLER: ddim", "SAMPLER: plms");
        let err = AceConfig::parse(&text, "x.yaml", Path::new(".")).unwrap_err();
        assert!(
            err.to_string().contains("DEFAULT_PARAS.INPUT") && err.to_string().contains("dpmpp_2m"),
            "{err}"
        );
        let text = std::fs::read_to_string(tiny_yaml())
            .unwrap()
            .replace("NAME: DiTACE", "NAME: DiTPlus");
        let err = AceConfig::parse(&text, "x.yaml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MODEL.DIFFUSION_MODEL.NAME is DiTPlus") && err.contains("DiTACE"),
            "{err}"
        );
    }
}
