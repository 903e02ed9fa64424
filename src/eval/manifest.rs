//! What is scored: the samples of a benchmark run, read from a manifest (JSON lines or CSV with
//! the fields `input`, `generated`, `ground_truth`, `input_caption`, `output_caption`,
//! `instruction`, `task`, `turn`, any of them absent), from two folders paired by file stem, or
//! from the MagicBrush test set's own layout. Paths in a manifest are relative to its folder.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One benchmark sample: the images and texts its metrics compare.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Position in the manifest (0-based).
    pub index: usize,
    pub input: Option<PathBuf>,
    pub generated: Option<PathBuf>,
    pub ground_truth: Option<PathBuf>,
    pub input_caption: Option<String>,
    pub output_caption: Option<String>,
    pub instruction: Option<String>,
    /// The task (Emu Edit's eight: background, global, style, remove, add, local, color,
    /// text), for per-task means.
    pub task: Option<String>,
    /// The turn of a multi-turn edit (MagicBrush), for per-turn means.
    pub turn: Option<u32>,
    /// Whether this is the last turn of its edit session (MagicBrush "final turn").
    pub final_turn: Option<bool>,
    /// The text the generated image should show (text rendering, Table 8).
    pub text: Option<String>,
    /// Text already recognised in the generated image, used instead of running an OCR model.
    pub recognized_text: Option<String>,
}

/// A manifest row as written: every field optional, `turn` a number or a string.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Row {
    input: Option<String>,
    generated: Option<String>,
    ground_truth: Option<String>,
    input_caption: Option<String>,
    output_caption: Option<String>,
    instruction: Option<String>,
    task: Option<String>,
    turn: Option<serde_json::Value>,
    final_turn: Option<bool>,
    text: Option<String>,
    recognized_text: Option<String>,
}

impl Row {
    fn into_sample(self, index: usize, root: &Path, file: &Path) -> Result<Sample> {
        let path = |p: Option<String>| {
            p.filter(|s| !s.is_empty()).map(|s| {
                let p = PathBuf::from(s);
                if p.is_absolute() {
                    p
                } else {
                    root.join(p)
                }
            })
        };
        let text = |t: Option<String>| t.filter(|s| !s.is_empty());
        let turn = match &self.turn {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        let written = matches!(&self.turn, Some(v) if !v.is_null() && v.as_str().is_none_or(|s| !s.trim().is_empty()));
        if turn.is_none() && written {
            return Err(Error::Config {
                path: file.to_path_buf(),
                message: format!("row {}: turn is not a whole number", index + 1),
            });
        }
        Ok(Sample {
            index,
            input: path(self.input),
            generated: path(self.generated),
            ground_truth: path(self.ground_truth),
            input_caption: text(self.input_caption),
            output_caption: text(self.output_caption),
            instruction: text(self.instruction),
            task: text(self.task),
            turn,
            final_turn: self.final_turn,
            text: self.text,
            recognized_text: self.recognized_text,
        })
    }
}

/// Reads a manifest: `.csv` as CSV with a header row, anything else as JSON lines (blank lines
/// skipped). Relative paths are taken from the manifest's folder.
pub fn read_manifest(file: &Path) -> Result<Vec<Sample>> {
    let root = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let bad = |message: String| Error::Config {
        path: file.to_path_buf(),
        message,
    };
    let is_csv = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let rows: Vec<Row> = if is_csv {
        let mut reader = csv::Reader::from_path(file).map_err(|e| bad(e.to_string()))?;
        reader
            .deserialize::<BTreeMap<String, String>>()
            .enumerate()
            .map(|(i, r)| {
                let r = r.map_err(|e| bad(format!("row {}: {e}", i + 1)))?;
                let value = serde_json::to_value(r).map_err(|e| bad(e.to_string()))?;
                serde_json::from_value(value).map_err(|e| bad(format!("row {}: {e}", i + 1)))
            })
            .collect::<Result<_>>()?
    } else {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| serde_json::from_str(l).map_err(|e| bad(format!("line {}: {e}", n + 1))))
            .collect::<Result<_>>()?
    };
    if rows.is_empty() {
        return Err(bad("no samples".into()));
    }
    rows.into_iter()
        .enumerate()
        .map(|(i, r)| r.into_sample(i, &root, file))
        .collect()
}

/// Pairs the images of `generated` with those of `reference` (the ground truth) by file stem,
/// in the order of the generated names. A generated image without a reference is still a
/// sample (its paired metrics are then missing and reported).
pub fn pair_folders(generated: &Path, reference: &Path) -> Result<Vec<Sample>> {
    let gen = images_by_stem(generated)?;
    let refs = images_by_stem(reference)?;
    if gen.is_empty() {
        return Err(Error::invalid(
            "--generated",
            format!("{}: no images", generated.display()),
        ));
    }
    Ok(gen
        .into_iter()
        .enumerate()
        .map(|(index, (stem, path))| Sample {
            index,
            generated: Some(path),
            ground_truth: Some(
                refs.get(&stem)
                    .cloned()
                    .unwrap_or_else(|| reference.join(&stem)),
            ),
            ..Sample::default()
        })
        .collect())
}

/// The images of a folder (not recursive) by file stem, sorted by stem.
fn images_by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() && crate::inputs::is_image_name(&path) {
            if let Some(stem) = path.file_stem() {
                out.insert(stem.to_string_lossy().into_owned(), path);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jsonl_with_relative_paths_and_absent_fields() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.jsonl");
        std::fs::write(
            &file,
            "{\"generated\": \"g/a.png\", \"ground_truth\": \"/abs/t.png\", \"turn\": 2}\n\n\
             {\"input\": \"i.png\", \"task\": \"style\", \"turn\": \"3\", \"output_caption\": \"\"}\n",
        )
        .unwrap();
        let s = read_manifest(&file).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].generated, Some(dir.path().join("g/a.png")));
        assert_eq!(s[0].ground_truth, Some(PathBuf::from("/abs/t.png")));
        assert_eq!((s[0].turn, s[0].input.clone()), (Some(2), None));
        assert_eq!((s[1].index, s[1].turn), (1, Some(3)));
        assert_eq!(s[1].task.as_deref(), Some("style"));
        assert_eq!(s[1].output_caption, None);
    }

    #[test]
    fn reads_csv_with_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.csv");
        std::fs::write(
            &file,
            "generated,ground_truth,output_caption,turn\na.png,b.png,\"a cat, sitting\",1\n",
        )
        .unwrap();
        let s = read_manifest(&file).unwrap();
        assert_eq!(s[0].generated, Some(dir.path().join("a.png")));
        assert_eq!(s[0].output_caption.as_deref(), Some("a cat, sitting"));
        assert_eq!(s[0].turn, Some(1));
    }

    #[test]
    fn bad_rows_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.jsonl");
        std::fs::write(&file, "{\"turn\": 1}\n{not json\n").unwrap();
        let e = read_manifest(&file).unwrap_err().to_string();
        assert!(e.contains("m.jsonl") && e.contains("line 2"), "{e}");
        std::fs::write(&file, "{\"turn\": \"first\"}\n").unwrap();
        let e = read_manifest(&file).unwrap_err().to_string();
        assert!(e.contains("turn is not a whole number"), "{e}");
    }

    #[test]
    fn pairs_folders_by_stem() {
        let dir = tempfile::tempdir().unwrap();
        let (g, r) = (dir.path().join("g"), dir.path().join("r"));
        std::fs::create_dir_all(&g).unwrap();
        std::fs::create_dir_all(&r).unwrap();
        for f in ["g/b.png", "g/a.jpg", "r/a.png", "g/notes.txt"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let s = pair_folders(&g, &r).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].generated, Some(g.join("a.jpg")));
        assert_eq!(s[0].ground_truth, Some(r.join("a.png")));
        assert_eq!(s[1].ground_truth, Some(r.join("b")));
    }
}
