//! What is scored: the samples of a benchmark run, read from a manifest (JSON lines or CSV with
//! the fields `input`, `generated`, `ground_truth`, `input_caption`, `output_caption`,
//! `instruction`, `task`, `turn`, any of them absent), from two folders paired by file stem, or
//! from the MagicBrush test set's own layout. Paths in a manifest are relative to its folder
//! (the current folder for standard input). A row that cannot be read is reported and skipped;
//! the others are scored.

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
    fn into_sample(self, index: usize, root: &Path, file: &Path, line: usize) -> Result<Sample> {
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
                message: format!("line {line}: turn is not a whole number"),
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

/// The samples of a manifest and the errors of the rows that could not be read.
#[derive(Debug, Default)]
pub struct Manifest {
    pub samples: Vec<Sample>,
    /// One error per unreadable row, naming the file and line.
    pub problems: Vec<Error>,
}

/// Reads a manifest (`-`: standard input): `.csv` (or, from standard input, text whose first
/// character is not `{`) as CSV with a header row, anything else as JSON lines (blank lines
/// skipped). Relative paths are taken from the manifest's folder. Rows that cannot be read are
/// returned as problems; a manifest without any readable row is an error.
pub fn read_manifest(file: &Path) -> Result<Manifest> {
    let stdin = file.as_os_str() == "-";
    let root = match file.parent() {
        Some(p) if !stdin => p.to_path_buf(),
        _ => PathBuf::new(),
    };
    let bad = |line: usize, message: String| Error::Config {
        path: file.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    let text = crate::textfile::read_list(file)?;
    let is_csv = if stdin {
        !text.trim_start().starts_with('{')
    } else {
        file.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    };
    let mut problems = Vec::new();
    let mut rows: Vec<(usize, Row)> = Vec::new();
    if is_csv {
        let (complete, unterminated) = csv_before_unterminated_quote(&text);
        if let Some(line) = unterminated {
            problems.push(bad(
                line,
                "unterminated quote (\"): this row and the rest of the file were not read".into(),
            ));
        }
        let mut reader = csv::Reader::from_reader(complete.as_bytes());
        let headers = reader.headers().map_err(|e| bad(1, e.to_string()))?.clone();
        for r in reader.records() {
            let record = match r {
                Ok(record) => record,
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line() as usize);
                    problems.push(bad(line, e.to_string()));
                    continue;
                }
            };
            let line = record.position().map_or(0, |p| p.line() as usize);
            let row = record
                .deserialize::<BTreeMap<String, String>>(Some(&headers))
                .map_err(|e| e.to_string())
                .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string()))
                .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()));
            match row {
                Ok(row) => rows.push((line, row)),
                Err(e) => problems.push(bad(line, e)),
            }
        }
    } else {
        for (n, l) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match serde_json::from_str(l) {
                Ok(row) => rows.push((n + 1, row)),
                Err(e) => problems.push(bad(n + 1, e.to_string())),
            }
        }
    }
    let mut samples = Vec::new();
    for (line, row) in rows {
        match row.into_sample(samples.len(), &root, file, line) {
            Ok(s) => samples.push(s),
            Err(e) => problems.push(e),
        }
    }
    if samples.is_empty() {
        return Err(match problems.into_iter().next() {
            Some(e) => e,
            None => Error::Config {
                path: file.to_path_buf(),
                message: "no samples".into(),
            },
        });
    }
    Ok(Manifest { samples, problems })
}

/// The CSV text before a quoted field that is never closed, and the line where that field
/// starts (`None` when every quote is closed). A quote opens a field only at its start; `""`
/// inside a quoted field is a quote character.
fn csv_before_unterminated_quote(text: &str) -> (&str, Option<usize>) {
    let bytes = text.as_bytes();
    let (mut line, mut i) = (1, 0);
    let mut row_start = (0, 1);
    let mut field_start = true;
    while i < bytes.len() {
        match bytes[i] {
            b'"' if field_start => {
                let opened = row_start;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return (&text[..opened.0], Some(opened.1)),
                        Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(b'\n') => {
                            line += 1;
                            i += 1;
                        }
                        Some(_) => i += 1,
                    }
                }
                field_start = false;
            }
            b',' => field_start = true,
            b'\n' => {
                line += 1;
                field_start = true;
                row_start = (i + 1, line);
            }
            b'\r' => {}
            _ => field_start = false,
        }
        i += 1;
    }
    (text, None)
}

/// Pairs the images of `generated` with those of `reference` (the ground truth) by file stem,
/// in the order of the stems. An image on one side only is still a sample, whose missing file
/// (named by its stem) is reported and leaves it out of the means.
pub fn pair_folders(generated: &Path, reference: &Path) -> Result<Vec<Sample>> {
    let gen = images_by_stem(generated)?;
    let refs = images_by_stem(reference)?;
    if gen.is_empty() {
        return Err(Error::invalid(
            "--generated",
            format!("{}: no images", generated.display()),
        ));
    }
    let stems: std::collections::BTreeSet<&String> = gen.keys().chain(refs.keys()).collect();
    let side = |found: &BTreeMap<String, PathBuf>, dir: &Path, stem: &str| {
        found
            .get(stem)
            .cloned()
            .unwrap_or_else(|| dir.join(format!("{stem}.png")))
    };
    Ok(stems
        .into_iter()
        .enumerate()
        .map(|(index, stem)| Sample {
            index,
            generated: Some(side(&gen, generated, stem)),
            ground_truth: Some(side(&refs, reference, stem)),
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
        let s = read_manifest(&file).unwrap().samples;
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
        let s = read_manifest(&file).unwrap().samples;
        assert_eq!(s[0].generated, Some(dir.path().join("a.png")));
        assert_eq!(s[0].output_caption.as_deref(), Some("a cat, sitting"));
        assert_eq!(s[0].turn, Some(1));
    }

    #[test]
    fn bad_rows_are_reported_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.jsonl");
        std::fs::write(&file, "{\"turn\": 1}\n{not json\n{\"turn\": \"first\"}\n").unwrap();
        let m = read_manifest(&file).unwrap();
        assert_eq!(m.samples.len(), 1);
        let e: Vec<String> = m.problems.iter().map(|e| e.to_string()).collect();
        assert!(e[0].contains("m.jsonl") && e[0].contains("line 2"), "{e:?}");
        assert!(e[1].contains("line 3: turn is not a whole number"), "{e:?}");
        std::fs::write(&file, "{not json\n").unwrap();
        assert!(read_manifest(&file).is_err());
    }

    #[test]
    fn an_unterminated_quote_is_reported_where_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.csv");
        std::fs::write(&file, "generated,turn\na.png,1\n\"b.png,2\nc.png,3\n").unwrap();
        let m = read_manifest(&file).unwrap();
        assert_eq!(m.samples.len(), 1);
        let e = m.problems[0].to_string();
        assert!(e.contains("m.csv: line 3: unterminated quote"), "{e}");
        assert_eq!(csv_before_unterminated_quote("a,\"b\"\"c\"\n").1, None);
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
        std::fs::write(dir.path().join("r/c.png"), b"x").unwrap();
        let s = pair_folders(&g, &r).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].generated, Some(g.join("a.jpg")));
        assert_eq!(s[0].ground_truth, Some(r.join("a.png")));
        assert_eq!(s[1].ground_truth, Some(r.join("b.png")));
        assert_eq!(s[2].generated, Some(g.join("c.png")));
    }
}
