//! Everything the server keeps on disk, under `--data-dir`: the chats as session files in the
//! format of `ace edit --session` (`sessions/ID.jsonl`, one turn per line, absolute paths), so
//! that a chat goes on from the command line and a command-line session placed there opens in
//! the browser; each chat's uploads and outputs (`sessions/ID/`); the OpenAI endpoints' images
//! (`images/`). Ids and file names from clients are checked against a plain alphabet before
//! they name anything, so none can leave the folder; every file is written atomically.

use super::error::{ApiError, ApiResult};
use crate::tasks::session::{self, SessionTurn};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// How long the OpenAI endpoints' images stay fetchable by URL.
pub const IMAGE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Longest session id.
const MAX_ID_LEN: usize = 64;

/// The data folder.
#[derive(Debug, Clone)]
pub struct Store {
    sessions: PathBuf,
    images: PathBuf,
}

/// A chat as the list shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub id: String,
    pub turns: usize,
    /// The first turn's instruction ("" before the first turn).
    pub title: String,
    /// Last change, in seconds since the epoch.
    pub updated: u64,
}

/// The default data folder: `ACE_DATA_DIR`, else `$XDG_DATA_HOME/ace/serve`, else
/// `~/.local/share/ace/serve`.
pub fn default_dir() -> Result<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("ACE_DATA_DIR")
        .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("ace/serve")))
        .or_else(|| env("HOME").map(|d| d.join(".local/share/ace/serve")))
        .ok_or_else(|| Error::invalid("data folder", "give --data-dir: there is no HOME"))
}

/// Whether `name` is 1 to `max` characters of ASCII letters, digits, `-` and `_`.
fn plain(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a session id from a client.
pub fn check_id(id: &str) -> ApiResult<()> {
    if plain(id, MAX_ID_LEN) {
        Ok(())
    } else {
        Err(ApiError::bad_param(
            "session",
            format!(
                "'{}' is not a session id (1 to {MAX_ID_LEN} letters, digits, '-' or '_')",
                id.escape_debug()
            ),
        ))
    }
}

/// A fresh random id (16 hex digits).
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Store {
    /// Opens (creating when missing) the data folder `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let sessions = dir.join("sessions");
        let images = dir.join("images");
        crate::output::create_dir(&sessions)?;
        crate::output::create_dir(&images)?;
        let absolute = |p: &Path| p.canonicalize().map_err(|e| Error::io(p, e));
        Ok(Store {
            sessions: absolute(&sessions)?,
            images: absolute(&images)?,
        })
    }

    /// The session file of `id` (checked).
    pub fn file(&self, id: &str) -> ApiResult<PathBuf> {
        check_id(id)?;
        Ok(self.sessions.join(format!("{id}.jsonl")))
    }

    /// The folder of `id`'s uploads and outputs.
    pub fn dir(&self, id: &str) -> ApiResult<PathBuf> {
        check_id(id)?;
        Ok(self.sessions.join(id))
    }

    /// Creates an empty session named `id`, or a fresh one; 409 when `id` exists.
    pub fn create(&self, id: Option<&str>) -> ApiResult<String> {
        loop {
            let name = id.map_or_else(new_id, str::to_string);
            let path = self.file(&name)?;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(name),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if id.is_some() {
                        return Err(ApiError::conflict(format!(
                            "session '{name}' exists already"
                        )));
                    }
                }
                Err(e) => return Err(Error::io(&path, e).into()),
            }
        }
    }

    /// The turns of session `id`; 404 when there is no such session.
    pub fn turns(&self, id: &str) -> ApiResult<Vec<SessionTurn>> {
        let path = self.file(id)?;
        if !path.is_file() {
            return Err(ApiError::not_found(format!("no session '{id}'")));
        }
        Ok(session::read(&path)?)
    }

    /// Every session, the latest changed first (files whose names are no session id, or that
    /// cannot be read, are left out).
    pub fn list(&self) -> Result<Vec<Summary>> {
        let entries =
            std::fs::read_dir(&self.sessions).map_err(|e| Error::io(&self.sessions, e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
                .filter(|id| plain(id, MAX_ID_LEN))
            else {
                continue;
            };
            let Ok(turns) = session::read(&path) else {
                continue;
            };
            let updated = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            out.push(Summary {
                id: id.to_string(),
                turns: turns.len(),
                title: turns
                    .first()
                    .map(|t| t.instruction.clone())
                    .unwrap_or_default(),
                updated,
            });
        }
        out.sort_by(|a, b| b.updated.cmp(&a.updated).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Writes `bytes` as `name` (made by the server) in the folder of session `id`; its absolute
    /// path, for the session file.
    pub fn save(&self, id: &str, name: &str, bytes: &[u8]) -> ApiResult<PathBuf> {
        let path = self.dir(id)?.join(name);
        crate::output::write(&path, bytes)?;
        Ok(path)
    }

    /// Appends `turn` to session `id`, or replaces its last turn (`replace`).
    pub fn record(&self, id: &str, turn: &SessionTurn, replace: bool) -> ApiResult<()> {
        let path = self.file(id)?;
        if replace {
            session::replace_last(&path, turn)?;
        } else {
            session::append(&path, turn)?;
        }
        Ok(())
    }

    /// Removes the OpenAI endpoints' images older than [`IMAGE_LIFETIME`] (their URLs expire,
    /// as OpenAI's do).
    pub fn prune_images(&self) {
        let Ok(entries) = std::fs::read_dir(&self.images) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > IMAGE_LIFETIME);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The file of an OpenAI endpoint's image `name` (`[A-Za-z0-9_-]+.png`, checked).
    pub fn image(&self, name: &str) -> ApiResult<PathBuf> {
        match name.strip_suffix(".png") {
            Some(stem) if plain(stem, 128) => Ok(self.images.join(name)),
            _ => Err(ApiError::bad_param(
                "name",
                format!("'{}' is not an image name", name.escape_debug()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_cannot_leave_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        for bad in [
            "..",
            "../x",
            "a/b",
            "",
            "a.b",
            "x\0",
            &"y".repeat(65),
            "%2e%2e",
        ] {
            assert_eq!(store.file(bad).unwrap_err().status, 400, "{bad:?}");
        }
        for bad in ["../x.png", "x.jsonl", "a/b.png", ".png", "x.png/.."] {
            assert!(store.image(bad).is_err(), "{bad:?}");
        }
        assert!(store.image("abc-1.png").unwrap().starts_with(dir.path()));
    }

    #[test]
    fn images_past_their_lifetime_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (old, new) = (
            store.image("old.png").unwrap(),
            store.image("new.png").unwrap(),
        );
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&new, b"x").unwrap();
        let long_ago = std::time::SystemTime::now() - IMAGE_LIFETIME * 2;
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        store.prune_images();
        assert!(!old.exists() && new.exists());
    }

    #[test]
    fn sessions_are_created_listed_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.create(None).unwrap();
        assert_eq!(store.create(Some("trip")).unwrap(), "trip");
        assert_eq!(store.create(Some("trip")).unwrap_err().status, 409);
        assert!(store.turns(&id).unwrap().is_empty());
        assert_eq!(store.turns("nope").unwrap_err().status, 404);
        let out = store.save("trip", "out-1.png", b"png").unwrap();
        assert!(out.is_absolute() && out.starts_with(dir.path().canonicalize().unwrap()));
        let turn = SessionTurn {
            inputs: vec![],
            masks: vec![],
            tasks: vec![],
            instruction: "a cat".into(),
            output: out,
            seed: Some(0),
        };
        store.record("trip", &turn, false).unwrap();
        let list = store.list().unwrap();
        assert_eq!(list.len(), 2);
        let trip = list.iter().find(|s| s.id == "trip").unwrap();
        assert_eq!((trip.turns, trip.title.as_str()), (1, "a cat"));
        std::fs::write(dir.path().join("sessions/bad name.jsonl"), "").unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
    }
}
