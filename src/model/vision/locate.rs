//! Finding an embedding model in the Hugging Face layout (`config.json`, weights, and for CLIP
//! `tokenizer.json`): a local folder, or a hub repository id (`openai/clip-vit-base-patch32`)
//! looked up in the Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`).

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The folder holding the model `spec` names: `spec` itself when it is a folder, else the
/// cached snapshot of the hub repository `spec`.
pub fn model_dir(spec: &str, what: &str) -> Result<PathBuf> {
    let local = Path::new(spec);
    if local.is_dir() {
        return Ok(local.to_path_buf());
    }
    let looks_like_repo = spec.split('/').count() == 2 && !spec.starts_with('.');
    if looks_like_repo {
        let cache = hf_hub::Cache::from_env().model(spec.to_string());
        if let Some(dir) = cache
            .get("config.json")
            .and_then(|c| c.parent().map(Path::to_path_buf))
        {
            return Ok(dir);
        }
    }
    Err(Error::Model {
        path: local.to_path_buf(),
        message: format!(
            "no {what} model here: not a folder{}",
            if looks_like_repo {
                " and not in the Hugging Face cache (download it, e.g. with `huggingface-cli download`)"
            } else {
                ""
            }
        ),
    })
}

/// Reads and parses `dir/config.json` into `T`.
pub fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("config.json");
    let text = crate::textfile::read(&path, crate::textfile::MAX_DOCUMENT_BYTES)?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_taken_as_is_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().to_string_lossy().into_owned();
        assert_eq!(model_dir(&spec, "CLIP").unwrap(), dir.path());
        let e = model_dir("/no/such/dir", "DINO").unwrap_err().to_string();
        assert!(e.contains("/no/such/dir") && e.contains("DINO"), "{e}");
    }
}
