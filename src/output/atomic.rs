//! Atomic writes of regular files: the data goes to a temporary file in the destination's
//! folder, is synced, and the file is renamed over the destination, so readers see the old file
//! or the whole new one and a failed or stopped run leaves no partial output.
//!
//! Temporary files and folders are named `.ace-HOST-PID-...`. A process killed outright
//! (SIGKILL, a second Ctrl-C) cannot remove its own; the next run that writes into the same
//! folder removes those of this host whose process is gone. A new file is created with mode
//! 0666 less the umask (as `cp` does); a file replaced keeps its mode.

use crate::{Error, Result};
use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tempfile::{NamedTempFile, TempDir};

/// Writes `bytes` to the regular file `path` atomically (its folder must exist).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(tmp)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| Error::io(path, e))
    })
}

/// Writes the regular file `path` atomically: `fill` writes the whole content to the temporary
/// path it is given (truncating or replacing that file is fine), then the file is synced and
/// renamed into place.
pub fn write_with(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = folder_of(path);
    let tmp = temp_file(&dir, ".tmp")?;
    fill(tmp.path())?;
    std::fs::File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))?;
    persist(tmp, path)
}

/// The folder a file is written in (`.` for a bare name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A new temporary file in `dir` named `.ace-HOST-PID-XXXXXX<suffix>`, mode 0666 less the umask.
/// Stale temporary files of dead processes in `dir` are removed first.
pub fn temp_file(dir: &Path, suffix: &str) -> Result<NamedTempFile> {
    clean_stale(dir);
    tempfile::Builder::new()
        .prefix(&prefix())
        .suffix(suffix)
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))
}

/// A new temporary folder in `dir` named `.ace-HOST-PID-<label>XXXXXX`, mode 0777 less the
/// umask, to be filled and renamed into place. Stale ones of dead processes are removed first.
pub fn temp_dir(dir: &Path, label: &str) -> Result<TempDir> {
    clean_stale(dir);
    tempfile::Builder::new()
        .prefix(&format!("{}{label}", prefix()))
        .permissions(std::fs::Permissions::from_mode(0o777))
        .tempdir_in(dir)
        .map_err(|e| Error::io(dir, e))
}

/// Renames the temporary file over `path`, giving it the mode of the file it replaces.
pub fn persist(tmp: NamedTempFile, path: &Path) -> Result<()> {
    if let Ok(old) = std::fs::metadata(path) {
        if old.is_file() {
            let mode = old.permissions().mode() & 0o7777;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io(path, e))?;
        }
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// `.ace-HOST-PID-`: the start of this process's temporary names.
fn prefix() -> String {
    format!(".ace-{}-{}-", host(), std::process::id())
}

/// This machine's host name, as file names may hold it.
fn host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = if ok {
        String::from_utf8_lossy(&buf[..len]).into_owned()
    } else {
        String::new()
    };
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Folders already cleaned by this process.
static CLEANED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Removes, once per process and folder, the temporary files and folders in `dir` left by
/// processes of this host that no longer run. Failures are ignored: this is housekeeping.
fn clean_stale(dir: &Path) {
    let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    {
        let mut cleaned = CLEANED.lock().unwrap_or_else(|p| p.into_inner());
        if !cleaned.get_or_insert_with(HashSet::new).insert(key) {
            return;
        }
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let ours = format!(".ace-{}-", host());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&ours) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Whether process `pid` exists on this machine.
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_follow_the_umask_and_replaced_files_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write(&path, b"one").unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(mode(&path), 0o666 & !umask);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(mode(&path), 0o640);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Above the kernel's largest pid (4194304), so never a live process.
        let dead = dir.path().join(format!(".ace-{}-4194305-abc.tmp", host()));
        let live = dir
            .path()
            .join(format!(".ace-{}-{}-abc.tmp", host(), std::process::id()));
        let foreign = dir.path().join(".ace-elsewhere-4194305-abc.tmp");
        for p in [&dead, &live, &foreign] {
            std::fs::write(p, b"x").unwrap();
        }
        write(&dir.path().join("x.png"), b"y").unwrap();
        assert!(!dead.exists());
        assert!(live.exists() && foreign.exists());
    }
}
