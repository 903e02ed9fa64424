//! The training-set format shared by `ace data` (writer) and `ace train` (reader): a folder
//! with `data.jsonl`, one [`Record`] a line, image paths relative to the folder.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// The file of records inside a dataset folder.
pub const INDEX: &str = "data.jsonl";

/// One training pair: instruction, input images (with optional masks) and the target image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub task: String,
    pub instruction: String,
    /// Input images, relative to the dataset folder.
    pub inputs: Vec<String>,
    /// One mask (or null) per input, relative to the dataset folder.
    pub masks: Vec<Option<String>>,
    /// The target image, relative to the dataset folder.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

/// Writes the records of `dir` atomically (the folder is created).
pub fn write(dir: &Path, records: &[Record]) -> Result<()> {
    crate::output::create_dir(dir)?;
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).expect("records serialise"));
        text.push('\n');
    }
    crate::output::write(&dir.join(INDEX), text.as_bytes())
}

/// Reads the records of `dir`; the error names the file and line.
pub fn read(dir: &Path) -> Result<Vec<Record>> {
    let path = dir.join(INDEX);
    let text = crate::textfile::read_list(&path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Config {
                path: path.clone(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// `path` relative to the folder `dir` (both made absolute first; `..` where needed), with `/`
/// separators, as stored in records.
pub fn relative(path: &Path, dir: &Path) -> Result<String> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
    let (path, dir) = (normalize(&abs(path)?), normalize(&abs(dir)?));
    let (p, d): (Vec<Component>, Vec<Component>) =
        (path.components().collect(), dir.components().collect());
    let common = p.iter().zip(&d).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); d.len() - common];
    parts.extend(
        p[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    Ok(parts.join("/"))
}

/// Drops `.` and resolves `..` lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_out_of_the_folder() {
        assert_eq!(
            relative(Path::new("/a/b/c.png"), Path::new("/a/d/e")).unwrap(),
            "../../b/c.png"
        );
        assert_eq!(
            relative(Path::new("/a/d/e/x/y.png"), Path::new("/a/d/e/")).unwrap(),
            "x/y.png"
        );
        assert_eq!(
            relative(Path::new("/a/./d/../c.png"), Path::new("/a")).unwrap(),
            "c.png"
        );
    }

    #[test]
    fn records_round_trip_and_caption_is_optional() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record {
            id: "x-1".into(),
            task: "inpainting".into(),
            instruction: "Fill {image}.".into(),
            inputs: vec!["a.png".into()],
            masks: vec![None],
            target: "b.png".into(),
            caption: None,
        };
        write(dir.path(), std::slice::from_ref(&r)).unwrap();
        let line = std::fs::read_to_string(dir.path().join(INDEX)).unwrap();
        assert!(
            !line.contains("caption") && line.contains("\"masks\":[null]"),
            "{line}"
        );
        assert_eq!(read(dir.path()).unwrap(), vec![r]);
    }
}
