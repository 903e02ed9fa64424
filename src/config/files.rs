//! Where a config's weights are: the four locations it names (DiT, VAE, T5 encoder, T5
//! tokenizer) as paths relative to the YAML or `hf://`/`ms://` hub references ([`crate::hub`]),
//! resolved against a downloaded snapshot (`--model-dir`) or the Hugging Face cache.

use super::AceConfig;
use crate::hub::Remote;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The resolved weight locations of the three models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub dit: PathBuf,
    pub vae: PathBuf,
    pub text_encoder: PathBuf,
    pub tokenizer: PathBuf,
}

impl AceConfig {
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
            return Err(Error::Model {
                path: PathBuf::from(&self.origin),
                message: format!(
                    "model weights missing\nexpected layout:\n{}\nmissing:\n{}",
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
    /// that, `model_dir`); a hub name inside `model_dir` when given, else in its hub's cache
    /// (for `ms://`, the ModelScope cache or the Hugging Face mirror's). On failure says where
    /// it looked.
    fn locate(
        &self,
        spec: &str,
        remote: Option<&Remote>,
        model_dir: Option<&Path>,
    ) -> Result<PathBuf, String> {
        let candidates: Vec<PathBuf> = match (remote, model_dir) {
            (Some(r), Some(dir)) => vec![r.in_snapshot(dir)],
            (Some(r), None) => {
                let hf = |r: &Remote| {
                    format!(
                        "the Hugging Face cache (models--{}/snapshots/*/{})",
                        r.repo.replace('/', "--"),
                        r.path
                    )
                };
                return r.in_cache().ok_or_else(|| match r.hf_mirror() {
                    Some(mirror) => format!(
                        "not in the ModelScope cache (models/{}/{}) nor {}",
                        r.repo,
                        r.path,
                        hf(&mirror)
                    ),
                    None => format!("not in {}", hf(r)),
                });
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
}
