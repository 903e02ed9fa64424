//! Which file a path is, so that an output is never one of the inputs (through the same path,
//! another spelling of it, a symbolic or a hard link) and two outputs of one run are never the
//! same file. Existing files are compared by device and inode; a file not yet written by its
//! folder's real path and its name.

use crate::{Error, Result};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The identity of a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKey {
    /// An existing file: device and inode.
    Inode(u64, u64),
    /// A file not written yet: its folder's canonical path joined with its name.
    Planned(PathBuf),
}

impl FileKey {
    /// The identity of `path`; `None` for standard input/output (`-`).
    pub fn of(path: &Path) -> Option<FileKey> {
        if path.as_os_str() == "-" {
            return None;
        }
        if let Ok(m) = std::fs::metadata(path) {
            return Some(FileKey::Inode(m.dev(), m.ino()));
        }
        let name = path.file_name()?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = dir
            .canonicalize()
            .or_else(|_| std::path::absolute(&dir))
            .unwrap_or(dir);
        Some(FileKey::Planned(dir.join(name)))
    }
}

/// The inputs of a run, by identity, to check outputs against.
#[derive(Debug, Default)]
pub struct InputSet {
    keys: HashMap<FileKey, PathBuf>,
}

impl InputSet {
    /// The set of `inputs` (`-` is left out).
    pub fn new<'a>(inputs: impl IntoIterator<Item = &'a Path>) -> Self {
        let keys = inputs
            .into_iter()
            .filter_map(|p| FileKey::of(p).map(|k| (k, p.to_path_buf())))
            .collect();
        InputSet { keys }
    }

    /// Refuses `output` when it is the same file as one of the inputs.
    pub fn refuse(&self, output: &Path) -> Result<()> {
        let Some(input) = FileKey::of(output).and_then(|k| self.keys.get(&k)) else {
            return Ok(());
        };
        let other = if input == output {
            String::new()
        } else {
            format!(" ({})", input.display())
        };
        Err(Error::output(
            output,
            format!("is also an input{other}; refusing to overwrite an input"),
        ))
    }
}

/// Refuses `output` when it is the same file as one of `inputs`.
pub fn refuse_inputs<'a>(output: &Path, inputs: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    InputSet::new(inputs).refuse(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_file_under_other_names_is_an_input() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.png");
        std::fs::write(&a, b"x").unwrap();
        let link = dir.path().join("hard.png");
        std::fs::hard_link(&a, &link).unwrap();
        let dotted = dir.path().join(".").join("a.png");
        for other in [&a, &link, &dotted] {
            let e = refuse_inputs(other, [a.as_path()]).unwrap_err().to_string();
            assert!(e.contains("refusing to overwrite"), "{e}");
        }
        assert!(refuse_inputs(&dir.path().join("b.png"), [a.as_path()]).is_ok());
        assert!(refuse_inputs(Path::new("-"), [Path::new("-")]).is_ok());
        assert_eq!(
            FileKey::of(&dir.path().join("new.png")),
            FileKey::of(&dir.path().join("./new.png"))
        );
    }
}
