//! ModelScope, the hub the official ACE configs name (`ms://iic/ACE-0.6B-512px@...`): its file
//! API (`/api/v1/models/ORG/REPO/repo/files` to list a repository, `/repo?FilePath=` to read a
//! file, with HTTP ranges) and its local cache (`MODELSCOPE_CACHE`, default
//! `~/.cache/modelscope/hub`, files under `models/ORG/REPO/`). Downloads resume from a
//! `.incomplete` file, are checked against the size and SHA-256 the listing gives, and are
//! renamed into place when whole.

use super::{Fetched, Remote};
use crate::model::identity::sha256_file;
use crate::{Error, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API's address: `MODELSCOPE_ENDPOINT` (a URL), else `https://` and `MODELSCOPE_DOMAIN`,
/// else `https://www.modelscope.cn`.
pub fn endpoint() -> String {
    let env = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    env("MODELSCOPE_ENDPOINT")
        .or_else(|| env("MODELSCOPE_DOMAIN").map(|d| format!("https://{d}")))
        .unwrap_or_else(|| "https://www.modelscope.cn".into())
        .trim_end_matches('/')
        .to_string()
}

/// The cache folder: `MODELSCOPE_CACHE`, else `~/.cache/modelscope/hub`.
pub fn cache_root() -> Option<PathBuf> {
    let env = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("MODELSCOPE_CACHE").or_else(|| env("HOME").map(|h| h.join(".cache/modelscope/hub")))
}

/// Where a repository's files lie in the cache.
fn repo_dir(repo: &str) -> Option<PathBuf> {
    Some(cache_root()?.join("models").join(repo))
}

/// Where a reference lies in the ModelScope cache, if it is there (the current layout,
/// `models/ORG/REPO`, or the older `ORG/REPO`).
pub fn in_cache(remote: &Remote) -> Option<PathBuf> {
    let root = cache_root()?;
    [
        root.join("models").join(&remote.repo),
        root.join(&remote.repo),
    ]
    .into_iter()
    .map(|dir| dir.join(&remote.path))
    .find(|p| p.exists())
}

/// Why a download from ModelScope did not happen.
#[derive(Debug)]
pub enum Failure {
    /// The hub did not answer (no connection, a timeout, a server error): another source may.
    Unreachable(String),
    /// It answered, and the answer was an error (no such repository or file, a bad download).
    Failed(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Failed(e)
    }
}

/// One file of a repository listing.
#[derive(Debug, Clone, serde::Deserialize)]
struct Listed {
    #[serde(rename = "Path")]
    path: String,
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "Size", default)]
    size: u64,
    #[serde(rename = "Sha256", default)]
    sha256: Option<String>,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(120))
        .build()
}

/// The failure of a request for `what`.
fn failure(what: &str, e: ureq::Error) -> Failure {
    match e {
        ureq::Error::Status(code, _) if code >= 500 || code == 429 => {
            Failure::Unreachable(format!("{what}: the hub answered {code}"))
        }
        ureq::Error::Status(code, _) => Failure::Failed(Error::Model {
            path: PathBuf::from(what),
            message: format!("ModelScope answered {code}"),
        }),
        ureq::Error::Transport(t) => Failure::Unreachable(format!("{what}: {t}")),
    }
}

/// A ModelScope client for one download: its connection pool and the listings it has read.
pub struct Client {
    agent: ureq::Agent,
    listings: std::collections::HashMap<String, Vec<Listed>>,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            agent: agent(),
            listings: Default::default(),
        }
    }
}

impl Client {
    /// Every file of `repo`, listed once per client.
    fn files(&mut self, repo: &str) -> std::result::Result<&[Listed], Failure> {
        if !self.listings.contains_key(repo) {
            let listed = list(&self.agent, repo)?;
            self.listings.insert(repo.to_string(), listed);
        }
        Ok(&self.listings[repo])
    }

    /// Downloads every file under `remote` (a file, or all files of a folder) into the
    /// ModelScope cache, skipping the files already there whole.
    pub fn download(
        &mut self,
        remote: &Remote,
        progress: bool,
    ) -> std::result::Result<Vec<Fetched>, Failure> {
        let prefix = format!("{}/", remote.path);
        let files: Vec<Listed> = self
            .files(&remote.repo)?
            .iter()
            .filter(|f| {
                remote.path.is_empty() || f.path == remote.path || f.path.starts_with(&prefix)
            })
            .cloned()
            .collect();
        if files.is_empty() {
            return Err(Failure::Failed(Error::Model {
                path: PathBuf::from(remote.to_string()),
                message: format!(
                    "repository {} has no file at '{}'",
                    remote.repo, remote.path
                ),
            }));
        }
        let dir = repo_dir(&remote.repo).ok_or_else(|| {
            Failure::Failed(Error::invalid(
                "ModelScope cache",
                "set MODELSCOPE_CACHE: there is no HOME to hold it",
            ))
        })?;
        files
            .iter()
            .map(|f| {
                let local = dir.join(&f.path);
                let cached = is_whole(&local, f)?;
                if !cached {
                    fetch(&self.agent, &remote.repo, f, &local, progress)?;
                }
                Ok(Fetched {
                    repo: remote.repo.clone(),
                    file: f.path.clone(),
                    local,
                    cached,
                })
            })
            .collect()
    }
}

/// Every file of `repo` (recursively).
fn list(agent: &ureq::Agent, repo: &str) -> std::result::Result<Vec<Listed>, Failure> {
    let url = format!(
        "{}/api/v1/models/{repo}/repo/files?Revision=master&Recursive=true",
        endpoint()
    );
    let text = agent
        .get(&url)
        .call()
        .map_err(|e| failure(&format!("ms://{repo}"), e))?
        .into_string()
        .map_err(|e| Failure::Unreachable(format!("ms://{repo}: {e}")))?;
    let bad = |message: String| Error::Model {
        path: PathBuf::from(format!("ms://{repo}")),
        message,
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a file listing: {e}")))?;
    let files = doc.pointer("/Data/Files").cloned().ok_or_else(|| {
        bad(format!(
            "not a file listing: {}",
            doc.get("Message").unwrap_or(&doc)
        ))
    })?;
    let files: Vec<Listed> =
        serde_json::from_value(files).map_err(|e| bad(format!("not a file listing: {e}")))?;
    Ok(files.into_iter().filter(|f| f.kind != "tree").collect())
}

/// Whether `local` holds the listed file already (its size, and its SHA-256 when listed).
fn is_whole(local: &Path, f: &Listed) -> Result<bool> {
    match std::fs::metadata(local) {
        Ok(m) if m.len() == f.size => match &f.sha256 {
            Some(want) => Ok(sha256_file(local)?.eq_ignore_ascii_case(want)),
            None => Ok(true),
        },
        _ => Ok(false),
    }
}

/// Reads one file into `local`, resuming from `local.incomplete` when an earlier download
/// stopped part of the way.
fn fetch(
    agent: &ureq::Agent,
    repo: &str,
    f: &Listed,
    local: &Path,
    progress: bool,
) -> std::result::Result<(), Failure> {
    let what = format!("ms://{repo}@{}", f.path);
    let partial = PathBuf::from(format!("{}.incomplete", local.display()));
    if let Some(parent) = local.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let have = std::fs::metadata(&partial).map_or(0, |m| m.len());
    let url = format!("{}/api/v1/models/{repo}/repo", endpoint());
    let mut request = agent
        .get(&url)
        .query("Revision", "master")
        .query("FilePath", &f.path);
    if have > 0 && have < f.size {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| failure(&what, e))?;
    let resumed = response.status() == 206 && have > 0;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&partial)
        .map_err(|e| Error::io(&partial, e))?;
    let start = if resumed { have } else { 0 };
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(f.size);
        bar.set_position(start);
        bar.set_message(f.path.clone());
        bar
    });
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Failure::Unreachable(format!("{what}: {e}")))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(|e| Error::io(&partial, e))?;
        if let Some(b) = &bar {
            b.inc(n as u64);
        }
    }
    file.sync_all().map_err(|e| Error::io(&partial, e))?;
    drop(file);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let got = std::fs::metadata(&partial)
        .map_err(|e| Error::io(&partial, e))?
        .len();
    if got != f.size {
        return Err(Failure::Unreachable(format!(
            "{what}: {got} of {} bytes arrived; run again to resume",
            f.size
        )));
    }
    if let Some(want) = &f.sha256 {
        if !sha256_file(&partial)?.eq_ignore_ascii_case(want) {
            let _ = std::fs::remove_file(&partial);
            return Err(Failure::Failed(Error::Model {
                path: PathBuf::from(what),
                message: "the downloaded bytes do not match the hub's SHA-256 (removed; run again)"
                    .into(),
            }));
        }
    }
    std::fs::rename(&partial, local).map_err(|e| Error::io(local, e))?;
    Ok(())
}
