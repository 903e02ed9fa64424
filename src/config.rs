//! The official ACE inference YAML (`ace_0.6b_512.yaml` and the like): the sampler defaults,
//! the LdmACE settings and where the three models' weights are. Weight locations are a path
//! relative to the YAML, or `hf://ORG/REPO@path` / `ms://ORG/REPO@path` ([`crate::hub`]), which
//! resolve against a downloaded snapshot (`--model-dir`) or the Hugging Face cache. The presets ship
//! inside the binary.

use crate::hub::Remote;
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The presets shipped with `ace`: name and YAML text.
pub const PRESETS: &[(&str, &str)] = &[
    ("ace_0.6b_512", include_str!("../presets/ace_0.6b_512.yaml")),
    (
        "ace_0.6b_1024",
        include_str!("../presets/ace_0.6b_1024.yaml"),
    ),
];

/// The preset used when none is named.
pub const DEFAULT_PRESET: &str = "ace_0.6b_512";

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

/// `DEFAULT_PARAS`: the defaults of a request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DefaultParas {
    #[serde(rename = "INPUT", default)]
    pub input: InputDefaults,
}

/// `DEFAULT_PARAS.INPUT`.
#[derive(Debug, Clone, Deserialize)]
pub struct InputDefaults {
    #[serde(rename = "SAMPLER", default = "default_sampler")]
    pub sampler: String,
    #[serde(rename = "SAMPLE_STEPS", default = "default_sample_steps")]
    pub sample_steps: usize,
    #[serde(rename = "GUIDE_SCALE", default = "default_guide_scale")]
    pub guide_scale: f64,
    #[serde(rename = "GUIDE_RESCALE", default = "default_guide_rescale")]
    pub guide_rescale: f64,
    #[serde(rename = "OUTPUT_HEIGHT", default = "default_output_size")]
    pub output_height: usize,
    #[serde(rename = "OUTPUT_WIDTH", default = "default_output_size")]
    pub output_width: usize,
}

impl Default for InputDefaults {
    fn default() -> Self {
        Self {
            sampler: default_sampler(),
            sample_steps: default_sample_steps(),
            guide_scale: default_guide_scale(),
            guide_rescale: default_guide_rescale(),
            output_height: default_output_size(),
            output_width: default_output_size(),
        }
    }
}

fn default_sampler() -> String {
    "ddim".into()
}
fn default_sample_steps() -> usize {
    20
}
fn default_guide_scale() -> f64 {
    4.5
}
fn default_guide_rescale() -> f64 {
    0.5
}
fn default_output_size() -> usize {
    512
}

/// `MODEL` (LdmACE).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    #[serde(rename = "SCALE_FACTOR", default = "default_scale_factor")]
    pub scale_factor: f64,
    #[serde(rename = "SIZE_FACTOR", default = "default_size_factor")]
    pub size_factor: usize,
    #[serde(rename = "DECODER_BIAS", default)]
    pub decoder_bias: f64,
    #[serde(rename = "DEFAULT_N_PROMPT", default)]
    pub default_n_prompt: String,
    #[serde(rename = "TEXT_IDENTIFIER", default)]
    pub text_identifier: Vec<String>,
    #[serde(rename = "USE_TEXT_POS_EMBEDDINGS", default)]
    pub use_text_pos_embeddings: bool,
    #[serde(rename = "DIFFUSION")]
    pub diffusion: DiffusionConfig,
    /// The DiT section, read by the DiT's own config type.
    #[serde(rename = "DIFFUSION_MODEL")]
    pub diffusion_model: serde_yaml::Value,
    /// The VAE section, read by the VAE's own config type.
    #[serde(rename = "FIRST_STAGE_MODEL")]
    pub first_stage_model: serde_yaml::Value,
    #[serde(rename = "COND_STAGE_MODEL")]
    pub cond_stage_model: CondStageConfig,
}

fn default_scale_factor() -> f64 {
    0.18215
}
fn default_size_factor() -> usize {
    8
}

/// `MODEL.DIFFUSION` (ACEDiffusion).
#[derive(Debug, Clone, Deserialize)]
pub struct DiffusionConfig {
    #[serde(rename = "PREDICTION_TYPE", default = "default_prediction_type")]
    pub prediction_type: String,
    #[serde(rename = "NOISE_SCHEDULER")]
    pub noise_scheduler: NoiseSchedulerConfig,
}

fn default_prediction_type() -> String {
    "eps".into()
}

/// `MODEL.DIFFUSION.NOISE_SCHEDULER`; defaults are scepter's `LinearScheduler` ones.
#[derive(Debug, Clone, Deserialize)]
pub struct NoiseSchedulerConfig {
    #[serde(rename = "NAME")]
    pub name: String,
    #[serde(rename = "NUM_TIMESTEPS", default = "default_num_timesteps")]
    pub num_timesteps: usize,
    #[serde(rename = "BETA_MIN", default = "default_beta_min")]
    pub beta_min: f64,
    #[serde(rename = "BETA_MAX", default = "default_beta_max")]
    pub beta_max: f64,
}

fn default_num_timesteps() -> usize {
    1000
}
fn default_beta_min() -> f64 {
    0.00085
}
fn default_beta_max() -> f64 {
    0.012
}

/// `MODEL.COND_STAGE_MODEL` (ACETextEmbedder).
#[derive(Debug, Clone, Deserialize)]
pub struct CondStageConfig {
    #[serde(rename = "PRETRAINED_MODEL")]
    pub pretrained_model: String,
    #[serde(rename = "TOKENIZER_PATH")]
    pub tokenizer_path: String,
    #[serde(rename = "LENGTH", default = "default_length")]
    pub length: usize,
    #[serde(rename = "CLEAN", default = "default_clean")]
    pub clean: String,
}

fn default_length() -> usize {
    77
}
fn default_clean() -> String {
    "whitespace".into()
}

/// The resolved weight locations of the three models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub dit: PathBuf,
    pub vae: PathBuf,
    pub text_encoder: PathBuf,
    pub tokenizer: PathBuf,
}

impl AceConfig {
    /// Parses YAML text; `origin` names it in errors, `base_dir` anchors relative paths.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Self> {
        let mut cfg: AceConfig = serde_yaml::from_str(text).map_err(|e| Error::Config {
            path: PathBuf::from(origin),
            message: format!("not an ACE inference config: {e}"),
        })?;
        cfg.base_dir = base_dir.to_path_buf();
        cfg.origin = origin.to_string();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
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
        if self.default_paras.input.sampler.to_lowercase() != "ddim" {
            return Err(bad(format!(
                "SAMPLER '{}' is not supported (only ddim)",
                self.default_paras.input.sampler
            )));
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

    fn section_path(&self, section: &serde_yaml::Value, name: &str) -> Result<String> {
        section
            .get("PRETRAINED_MODEL")
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::Config {
                path: PathBuf::from(&self.origin),
                message: format!("MODEL.{name}.PRETRAINED_MODEL is missing"),
            })
    }

    /// The four weight locations as the config writes them (paths relative to the config, or
    /// `hf://`/`ms://` hub references), named: DiT, VAE, T5 text encoder, T5 tokenizer.
    pub fn weight_specs(&self) -> Result<[(&'static str, String); 4]> {
        Ok([
            (
                "DiT",
                self.section_path(&self.model.diffusion_model, "DIFFUSION_MODEL")?,
            ),
            (
                "VAE",
                self.section_path(&self.model.first_stage_model, "FIRST_STAGE_MODEL")?,
            ),
            (
                "T5 text encoder",
                self.model.cond_stage_model.pretrained_model.clone(),
            ),
            (
                "T5 tokenizer",
                self.model.cond_stage_model.tokenizer_path.clone(),
            ),
        ])
    }

    /// Resolves the four weight locations; when any is missing, one error lists the layout
    /// expected and what is missing.
    pub fn model_files(&self, model_dir: Option<&Path>) -> Result<ModelFiles> {
        let specs = self.weight_specs()?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let mut layout = Vec::new();
        for (what, spec) in &specs {
            let remote = Remote::parse(spec);
            let relative = remote
                .as_ref()
                .map_or(spec.trim_end_matches('/'), |r| r.path.as_str());
            layout.push(format!("  {what:<16} {relative}"));
            match self.locate(spec, remote.as_ref(), model_dir) {
                Ok(p) => found.push(p),
                Err(looked) => missing.push(format!("  {what}: {looked}")),
            }
        }
        if !missing.is_empty() {
            let hint = if model_dir.is_none() && specs.iter().any(|(_, s)| s.contains("://")) {
                "\npass --model-dir DIR (a downloaded snapshot of the model repository) \
                 or fetch it into the Hugging Face cache with `ace model download`"
            } else {
                ""
            };
            return Err(Error::Model {
                path: PathBuf::from(&self.origin),
                message: format!(
                    "model weights missing\nexpected layout:\n{}\nmissing:\n{}{hint}",
                    layout.join("\n"),
                    missing.join("\n")
                ),
            });
        }
        Ok(ModelFiles {
            dit: found[0].clone(),
            vae: found[1].clone(),
            text_encoder: found[2].clone(),
            tokenizer: found[3].clone(),
        })
    }

    /// Finds one weight location: a local path relative to the YAML's folder (or, failing
    /// that, `model_dir`); a hub name inside `model_dir` when given, else in the Hugging Face
    /// cache. On failure says where it looked.
    fn locate(
        &self,
        spec: &str,
        remote: Option<&Remote>,
        model_dir: Option<&Path>,
    ) -> Result<PathBuf, String> {
        let candidates: Vec<PathBuf> = match (remote, model_dir) {
            (Some(r), Some(dir)) => vec![r.in_snapshot(dir)],
            (Some(r), None) => {
                return r.in_hf_cache().ok_or_else(|| {
                    format!(
                        "not in the Hugging Face cache (models--{}/snapshots/*/{})",
                        r.repo.replace('/', "--"),
                        r.path
                    )
                })
            }
            (None, dir) => {
                let p = Path::new(spec.trim_end_matches('/'));
                std::iter::once(self.base_dir.join(p))
                    .chain(dir.map(|d| d.join(p)))
                    .collect()
            }
        };
        candidates
            .iter()
            .find(|p| p.exists())
            .cloned()
            .ok_or_else(|| {
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
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
    fn tiny_config_resolves_relative_paths() {
        let cfg = AceConfig::load(&tiny_yaml()).unwrap();
        assert_eq!(cfg.name, "ACE_TINY");
        assert_eq!(cfg.model.cond_stage_model.length, 24);
        assert_eq!(cfg.default_paras.input.sample_steps, 20);
        let files = cfg.model_files(None).unwrap();
        assert!(files.dit.ends_with("models/dit/ace_tiny.pth"));
        assert!(files.vae.ends_with("models/vae/vae.bin") && files.vae.is_file());
        assert!(files.text_encoder.is_dir() && files.tokenizer.is_dir());
    }

    #[test]
    fn hub_names_resolve_against_a_model_dir() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AceConfig::preset("ace_0.6b_512").unwrap();
        let err = cfg.model_files(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("models/dit/ace_0.6b_512px.pth"), "{err}");
        assert!(err.contains("expected layout"), "{err}");
        for p in [
            "models/dit/ace_0.6b_512px.pth",
            "models/vae/vae.bin",
            "models/text_encoder/t5-v1_1-xxl/config.json",
            "models/tokenizer/t5-v1_1-xxl/spiece.model",
        ] {
            let f = dir.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, b"x").unwrap();
        }
        let files = cfg.model_files(Some(dir.path())).unwrap();
        assert_eq!(files.dit, dir.path().join("models/dit/ace_0.6b_512px.pth"));
        assert_eq!(
            files.text_encoder,
            dir.path().join("models/text_encoder/t5-v1_1-xxl")
        );
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
            .replace("SAMPLER: ddim", "SAMPLER: dpmpp");
        let err = AceConfig::parse(&text, "x.yaml", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("only ddim"), "{err}");
    }
}
