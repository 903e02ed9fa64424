//! Batches of generation jobs: a JSON-lines file, one job per line, whose fields are named
//! after a subcommand's long flags (`image` a list, `mask`, `instruction`, `prompt`, `seed`,
//! ..., `output`). Each line becomes the flags of one run of that subcommand; `--shard I/N`
//! keeps every N-th job, and a resumed batch skips jobs whose output is already written
//! (outputs are written atomically, so an output that decodes is a finished job).

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// One line of a batch file.
#[derive(Debug, Clone)]
pub struct BatchLine {
    /// Line number in the file, from 1.
    pub line: usize,
    /// Index among the job lines (blank lines are not jobs), from 0.
    pub index: usize,
    /// The fields, or why the line is not a job object.
    pub fields: std::result::Result<serde_json::Map<String, serde_json::Value>, String>,
}

impl BatchLine {
    /// The job's output file, when it names one.
    pub fn output(&self) -> Option<PathBuf> {
        self.fields
            .as_ref()
            .ok()?
            .get("output")?
            .as_str()
            .map(PathBuf::from)
    }
}

/// Reads the job lines of a batch file. A line that does not parse is kept as a failed job.
pub fn read(path: &Path) -> Result<Vec<BatchLine>> {
    let text = crate::textfile::read_list(path)?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .enumerate()
        .map(|(index, (i, l))| BatchLine {
            line: i + 1,
            index,
            fields: match serde_json::from_str::<serde_json::Value>(l) {
                Ok(serde_json::Value::Object(m)) => Ok(m),
                Ok(_) => Err("not a JSON object".to_string()),
                Err(e) => Err(format!("not JSON: {e}")),
            },
        })
        .collect())
}

/// `--shard I/N`: the jobs whose index is I modulo N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether job `index` belongs to this shard.
    pub fn keeps(&self, index: usize) -> bool {
        index % self.count == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid("shard", format!("'{s}' (expected I/N with 0 <= I < N)"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// The flag name of a field: `guide_scale` and `guide-scale` are `--guide-scale`.
pub fn flag_name(field: &str) -> String {
    field.replace('_', "-")
}

/// The command-line arguments of a job's fields: a string or number gives `--name VALUE`, a
/// list repeats the flag per element, `true` gives `--name`, `false` and `null` give nothing.
pub fn to_args(fields: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<String>> {
    use serde_json::Value;
    let mut args = Vec::new();
    for (key, value) in fields {
        let flag = format!("--{}", flag_name(key));
        let scalar = |v: &Value| -> Result<String> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Null => Ok(String::new()),
                other => Err(Error::invalid(
                    "batch field",
                    format!("{key}: {other} is not a string, number or list of them"),
                )),
            }
        };
        match value {
            Value::Bool(true) => args.push(flag),
            Value::Bool(false) | Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    args.push(flag.clone());
                    args.push(scalar(item)?);
                }
            }
            v => {
                args.push(flag);
                args.push(scalar(v)?);
            }
        }
    }
    Ok(args)
}

/// Whether a job's output is finished: the file exists and decodes as an image.
pub fn finished(output: &Path) -> bool {
    output.is_file() && crate::imageio::load(output).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.jsonl");
        std::fs::write(
            &path,
            "{\"image\": [\"a.png\", \"b.png\"], \"guide_scale\": 2.5, \"json\": true, \"dry_run\": false, \"output\": \"o.png\"}\n\n[1]\n",
        )
        .unwrap();
        let lines = read(&path).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[1].line, lines[1].index), (3, 1));
        assert!(lines[1].fields.is_err());
        assert_eq!(lines[0].output(), Some(PathBuf::from("o.png")));
        let args = to_args(lines[0].fields.as_ref().unwrap()).unwrap();
        assert_eq!(
            args,
            [
                "--guide-scale",
                "2.5",
                "--image",
                "a.png",
                "--image",
                "b.png",
                "--json",
                "--output",
                "o.png"
            ]
        );
    }

    #[test]
    fn shards_split_jobs() {
        let s: Shard = "1/3".parse().unwrap();
        let kept: Vec<usize> = (0..7).filter(|&i| s.keeps(i)).collect();
        assert_eq!(kept, [1, 4]);
        assert!("3/3".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
        assert!(!finished(Path::new("/nonexistent.png")));
    }
}
