//! The model hubs the official configs point at: `hf://ORG/REPO@path` (Hugging Face) and
//! `ms://ORG/REPO@path` (ModelScope) references, finding them in a downloaded snapshot or a
//! hub's cache, and downloading a config's files: Hugging Face through the hf-hub crate
//! (resumable, cached, honouring `HF_HOME` and `HF_ENDPOINT`), ModelScope through its file
//! API ([`modelscope`]). The ACE releases on ModelScope (`ms://iic/NAME`) are mirrored on
//! Hugging Face as `hf://scepter-studio/NAME`, which a download falls back to when ModelScope
//! does not answer.

pub mod modelscope;

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

    /// Where this reference lies in a hub's cache, if it is there: the Hugging Face cache for
    /// `hf://`; the ModelScope cache for `ms://`, else its Hugging Face mirror's.
    pub fn in_cache(&self) -> Option<PathBuf> {
        match self.hub {
            Hub::HuggingFace => {
                let repo = hf_hub::Cache::from_env().model(self.repo.clone());
                repo.get(&self.path).filter(|p| p.exists())
            }
            Hub::ModelScope => modelscope::in_cache(self).or_else(|| self.hf_mirror()?.in_cache()),
        }
    }

    /// The Hugging Face mirror of a ModelScope reference of the ACE releases:
    /// `ms://iic/NAME@path` is `hf://scepter-studio/NAME@path`.
    pub fn hf_mirror(&self) -> Option<Remote> {
        let name = self.repo.strip_prefix("iic/")?;
        (self.hub == Hub::ModelScope).then(|| Remote {
            hub: Hub::HuggingFace,
            repo: format!("scepter-studio/{name}"),
            path: self.path.clone(),
        })
    }
}

/// Where `ms://` references are downloaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// ModelScope, then the Hugging Face mirror when ModelScope does not answer.
    #[default]
    Auto,
    /// The Hugging Face mirror only.
    Hf,
    /// ModelScope only.
    Ms,
}

impl std::str::FromStr for Source {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Source::Auto),
            "hf" => Ok(Source::Hf),
            "ms" => Ok(Source::Ms),
            other => Err(Error::invalid(
                "source",
                format!("'{other}' (expected auto, hf or ms)"),
            )),
        }
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

/// Downloads every file under each reference (a file, or all files of a folder) into its hub's
/// cache, skipping files already there; `ms://` references as `source` says. `progress` shows
/// a bar per file.
pub fn download(remotes: &[Remote], source: Source, progress: bool) -> Result<Vec<Fetched>> {
    let mut fetched = Vec::new();
    let mut modelscope = modelscope::Client::default();
    for remote in remotes {
        let mirror = || {
            remote.hf_mirror().ok_or_else(|| Error::Model {
                path: PathBuf::from(remote.to_string()),
                message: "has no known Hugging Face mirror (only ms://iic/... has one)".into(),
            })
        };
        let files = match (remote.hub, source) {
            (Hub::HuggingFace, _) => download_hf(remote, progress)?,
            (Hub::ModelScope, Source::Hf) => download_hf(&mirror()?, progress)?,
            (Hub::ModelScope, Source::Ms | Source::Auto) => {
                match modelscope.download(remote, progress) {
                    Ok(files) => files,
                    Err(modelscope::Failure::Failed(e)) => return Err(e),
                    Err(modelscope::Failure::Unreachable(why)) if source == Source::Auto => {
                        let mirror = mirror()?;
                        log::warn!("ModelScope did not answer ({why}); downloading {mirror}");
                        download_hf(&mirror, progress)?
                    }
                    Err(modelscope::Failure::Unreachable(why)) => {
                        return Err(Error::Model {
                            path: PathBuf::from(remote.to_string()),
                            message: format!(
                                "ModelScope did not answer ({why}); --source hf uses the mirror"
                            ),
                        })
                    }
                }
            }
        };
        fetched.extend(files);
    }
    Ok(fetched)
}

/// Downloads the files under one Hugging Face reference.
fn download_hf(remote: &Remote, progress: bool) -> Result<Vec<Fetched>> {
    let hub_error = |what: &str, e: hf_hub::api::sync::ApiError| Error::Model {
        path: PathBuf::from(what),
        message: format!("download failed: {e}"),
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(progress)
        .build()
        .map_err(|e| hub_error("hub", e))?;
    let mut fetched = Vec::new();
    {
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
