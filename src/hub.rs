//! The model hubs the official configs point at: `hf://ORG/REPO@path` (Hugging Face) and
//! `ms://ORG/REPO@path` (ModelScope) references, finding them in a downloaded snapshot or the
//! Hugging Face cache, and downloading a config's files through the hf-hub crate (resumable,
//! cached, honouring `HF_HOME` and `HF_ENDPOINT`).

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Which hub a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hub {
    HuggingFace,
    ModelScope,
}

/// A file or folder inside a hub repository: `hf://ORG/REPO@path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub hub: Hub,
    /// `ORG/REPO`.
    pub repo: String,
    /// The path inside the repository (a file or a folder), without a leading slash.
    pub path: String,
}

impl Remote {
    /// Parses `hf://ORG/REPO@path` or `ms://ORG/REPO@path`; anything else is not a remote.
    pub fn parse(s: &str) -> Option<Remote> {
        let (hub, rest) = if let Some(r) = s.strip_prefix("hf://") {
            (Hub::HuggingFace, r)
        } else if let Some(r) = s.strip_prefix("ms://") {
            (Hub::ModelScope, r)
        } else {
            return None;
        };
        let (repo, path) = rest.split_once('@').unwrap_or((rest, ""));
        if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
            return None;
        }
        Some(Remote {
            hub,
            repo: repo.to_string(),
            path: path.trim_matches('/').to_string(),
        })
    }

    /// Where this reference lies in a downloaded snapshot of its repository.
    pub fn in_snapshot(&self, snapshot: &Path) -> PathBuf {
        snapshot.join(&self.path)
    }

    /// Where this reference lies in the Hugging Face cache, if it is there. ModelScope
    /// references are looked up under the same ORG/REPO name (the ACE releases are mirrored
    /// with the same layout).
    pub fn in_hf_cache(&self) -> Option<PathBuf> {
        let repo = hf_hub::Cache::from_env().model(self.repo.clone());
        repo.get(&self.path).filter(|p| p.exists())
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.hub {
            Hub::HuggingFace => "hf",
            Hub::ModelScope => "ms",
        };
        write!(f, "{scheme}://{}@{}", self.repo, self.path)
    }
}

/// One file fetched (or found already cached) by [`download`].
#[derive(Debug, Clone)]
pub struct Fetched {
    pub repo: String,
    pub file: String,
    pub local: PathBuf,
    pub cached: bool,
}

/// Downloads every file under each reference (a file, or all files of a folder) into the
/// Hugging Face cache, skipping files already there. `progress` shows a bar per file.
pub fn download(remotes: &[Remote], progress: bool) -> Result<Vec<Fetched>> {
    let hub_error = |what: &str, e: hf_hub::api::sync::ApiError| Error::Model {
        path: PathBuf::from(what),
        message: format!("download failed: {e}"),
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(progress)
        .build()
        .map_err(|e| hub_error("hub", e))?;
    let mut fetched = Vec::new();
    for remote in remotes {
        let repo = api.model(remote.repo.clone());
        let info = repo
            .info()
            .map_err(|e| hub_error(&format!("{}", remote), e))?;
        let prefix = format!("{}/", remote.path);
        let files: Vec<String> = info
            .siblings
            .into_iter()
            .map(|s| s.rfilename)
            .filter(|f| remote.path.is_empty() || *f == remote.path || f.starts_with(&prefix))
            .collect();
        if files.is_empty() {
            return Err(Error::Model {
                path: PathBuf::from(remote.to_string()),
                message: format!(
                    "repository {} has no file at '{}'",
                    remote.repo, remote.path
                ),
            });
        }
        let cache = hf_hub::Cache::from_env().model(remote.repo.clone());
        for file in files {
            let (local, cached) = match cache.get(&file) {
                Some(local) => (local, true),
                None => (
                    repo.download(&file)
                        .map_err(|e| hub_error(&format!("{}/{file}", remote.repo), e))?,
                    false,
                ),
            };
            fetched.push(Fetched {
                repo: remote.repo.clone(),
                file,
                local,
                cached,
            });
        }
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_references() {
        let r = Remote::parse("hf://scepter-studio/ACE-0.6B-512px@models/dit/ace_0.6b_512px.pth")
            .unwrap();
        assert_eq!(r.hub, Hub::HuggingFace);
        assert_eq!(r.repo, "scepter-studio/ACE-0.6B-512px");
        assert_eq!(r.path, "models/dit/ace_0.6b_512px.pth");
        assert_eq!(
            r.to_string(),
            "hf://scepter-studio/ACE-0.6B-512px@models/dit/ace_0.6b_512px.pth"
        );
        let m = Remote::parse("ms://iic/ACE-0.6B-512px@models/vae/").unwrap();
        assert_eq!((m.hub, m.path.as_str()), (Hub::ModelScope, "models/vae"));
        assert_eq!(
            m.in_snapshot(Path::new("/snap")),
            PathBuf::from("/snap/models/vae")
        );
        assert!(Remote::parse("models/dit/x.pth").is_none());
        assert!(Remote::parse("hf://just-a-name@x").is_none());
    }
}
