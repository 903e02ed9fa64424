//! Where an output goes and how it is written: the one policy every subcommand follows.
//!
//! - `-` is standard output; a path that names a device, FIFO or socket, or lies under
//!   `/dev` or `/proc` (`/dev/null`, `/dev/stdout` even when it leads to a regular file), is
//!   written directly; anything else is a regular file, written to a
//!   temporary file beside it and renamed into place ([`atomic`]), so that a failure or a
//!   signal never leaves a partial file. A new file gets the mode `cp` gives it (0666 less the
//!   umask); a replaced file keeps its mode.
//! - Missing parent folders are created; a parent that is a file is an error naming it.
//! - An output that is one of the command's inputs (same path, or same file through another
//!   name or a hard link), or two outputs of one run that are the same file, are refused before
//!   any work starts ([`identity`]).

pub mod atomic;
pub mod identity;

use crate::{Error, Result};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

pub use identity::{refuse_inputs, FileKey, InputSet};

/// What kind of destination a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `-`: standard output.
    Stdout,
    /// An existing device, FIFO or socket, or a path under `/dev` or `/proc`, opened and
    /// written as it is.
    Special(PathBuf),
    /// A regular file (existing or not), written atomically.
    File(PathBuf),
}

impl Target {
    /// The destination `path` names.
    pub fn of(path: &Path) -> Target {
        if path.as_os_str() == "-" {
            return Target::Stdout;
        }
        let system = path.starts_with("/dev") || path.starts_with("/proc");
        match std::fs::metadata(path) {
            Ok(m) if system || (!m.is_file() && !m.is_dir()) => Target::Special(path.to_path_buf()),
            _ => Target::File(path.to_path_buf()),
        }
    }

    /// Whether the destination is a regular file (the only kind an input can be overwritten
    /// through, and the only kind two jobs cannot share).
    pub fn is_file(&self) -> bool {
        matches!(self, Target::File(_))
    }
}

/// Checks, before any work, that `path` can be written as a file: not a folder, no file in
/// the way of its parent folders; standard output or a device for binary data (`binary`) must
/// not be a terminal.
pub fn check(path: &Path, binary: bool) -> Result<()> {
    match Target::of(path) {
        Target::Stdout if binary && std::io::stdout().is_terminal() => Err(Error::output(
            "-",
            "refusing to write binary data to a terminal (redirect standard output or give -o FILE)",
        )),
        Target::Stdout | Target::Special(_) => Ok(()),
        Target::File(p) => {
            if p.is_dir() {
                return Err(Error::output(&p, "is a folder, not a file"));
            }
            match p.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => blocked(dir, &p).map_or(Ok(()), Err),
                _ => Ok(()),
            }
        }
    }
}

/// Writes `bytes` to `path` as [`Target::of`] says: standard output, the device itself, or a
/// regular file written atomically (parent folders created).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    match Target::of(path) {
        Target::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)
                .and_then(|_| out.flush())
                .map_err(|e| Error::io("-", e))
        }
        Target::Special(p) => {
            // `/dev/stdout` redirected to a file is truncated, as `cp` does.
            let regular = std::fs::metadata(&p).is_ok_and(|m| m.is_file());
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(regular)
                .open(&p)
                .and_then(|mut f| f.write_all(bytes).and_then(|_| f.flush()))
                .map_err(|e| Error::io(&p, e))
        }
        Target::File(p) => {
            create_parent(&p)?;
            atomic::write(&p, bytes)
        }
    }
}

/// Creates the missing folders above `path`; a file in the way is an error that names it.
pub fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => create(dir, path),
        _ => Ok(()),
    }
}

/// Creates the folder `dir` and its missing parents; a file in the way is an error naming it.
pub fn create_dir(dir: &Path) -> Result<()> {
    create(dir, dir)
}

/// Creates `dir` for the sake of `wanted` (named in errors).
fn create(dir: &Path, wanted: &Path) -> Result<()> {
    if let Some(e) = blocked(dir, wanted) {
        return Err(e);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// The error for `dir` or its nearest existing ancestor when that is not a folder (then
/// `wanted` cannot be created).
fn blocked(dir: &Path, wanted: &Path) -> Option<Error> {
    let blocker = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| a.exists())
        .filter(|a| !a.is_dir())?;
    Some(Error::output(
        wanted,
        format!(
            "cannot be created, {} is a file, not a folder",
            blocker.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_by_kind() {
        assert_eq!(Target::of(Path::new("-")), Target::Stdout);
        assert_eq!(
            Target::of(Path::new("/dev/null")),
            Target::Special("/dev/null".into())
        );
        assert!(Target::of(Path::new("/nonexistent/x.png")).is_file());
    }

    #[test]
    fn special_files_are_written_directly() {
        write(Path::new("/dev/null"), b"nothing").unwrap();
        // A /proc/self/fd link to a regular file is written through, never replaced.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.bin");
        std::fs::write(&file, b"old contents").unwrap();
        let f = std::fs::OpenOptions::new().read(true).open(&file).unwrap();
        let link = std::path::PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::unix::io::AsRawFd::as_raw_fd(&f)
        ));
        assert!(matches!(Target::of(&link), Target::Special(_)));
        write(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
    }

    #[test]
    fn a_file_in_the_way_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.png");
        std::fs::write(&file, b"x").unwrap();
        let e = write(&file.join("sub/out.png"), b"y")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.png is a file, not a folder"), "{e}");
        assert!(check(&file.join("out.png"), true).is_err());
        assert!(check(dir.path(), true)
            .unwrap_err()
            .to_string()
            .contains("is a folder"));
        write(&dir.path().join("a/b/c.txt"), b"z").unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b/c.txt")).unwrap(), b"z");
    }
}
