//! Training examples and where they come from: the ACE demo list (`train.csv` with the columns
//! `Target:FILE`, `Source:FILE`, `Prompt`; one source image per target, no masks) or the
//! dataset folder `ace data` writes (`data.jsonl`, one record a line:
//! `{"id","task","instruction","inputs":[..],"masks":[..|null],"target",("caption")}`). Paths
//! are relative to the list's folder. A seeded shuffle sets a fixed validation split aside, and
//! the training order is a per-epoch seeded permutation, so a position in the stream (the
//! number of examples consumed) is all a checkpoint needs to resume the data.

use crate::data::dataset::{Record, INDEX as JSONL_INDEX};
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// One training example: target image, input images with optional masks, instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: String,
    pub task: String,
    pub instruction: String,
    pub inputs: Vec<PathBuf>,
    pub masks: Vec<Option<PathBuf>>,
    pub target: PathBuf,
}

/// Reads a list: a `.csv` demo list, a `.jsonl` file, or a folder holding `data.jsonl` (else
/// `train.csv`).
pub fn read_list(path: &Path) -> Result<Vec<Example>> {
    let file = if path.is_dir() {
        [JSONL_INDEX, "train.csv"]
            .iter()
            .map(|n| path.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                message: format!("folder holds neither {JSONL_INDEX} nor train.csv"),
            })?
    } else {
        path.to_path_buf()
    };
    let text = crate::textfile::read_list(&file)?;
    let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
    let examples = if file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        parse_csv_list(&text, &dir, &file)?
    } else {
        parse_jsonl(&text, &dir, &file)?
    };
    if examples.is_empty() {
        return Err(Error::Config {
            path: file,
            message: "the list holds no examples".into(),
        });
    }
    Ok(examples)
}

fn parse_jsonl(text: &str, dir: &Path, file: &Path) -> Result<Vec<Example>> {
    let bad = |line: usize, message: String| Error::Config {
        path: file.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
        let masks = if r.masks.is_empty() {
            vec![None; r.inputs.len()]
        } else if r.masks.len() == r.inputs.len() {
            r.masks
                .into_iter()
                .map(|m| m.map(|m| dir.join(m)))
                .collect()
        } else {
            return Err(bad(
                i + 1,
                format!("{} masks for {} inputs", r.masks.len(), r.inputs.len()),
            ));
        };
        out.push(Example {
            id: r.id,
            task: r.task,
            instruction: r.instruction,
            inputs: r.inputs.iter().map(|p| dir.join(p)).collect(),
            masks,
            target: dir.join(r.target),
        });
    }
    Ok(out)
}

fn parse_csv_list(text: &str, dir: &Path, file: &Path) -> Result<Vec<Example>> {
    let bad = |message: String| Error::Config {
        path: file.to_path_buf(),
        message,
    };
    let rows = parse_csv(text).map_err(&bad)?;
    let Some((header, rows)) = rows.split_first() else {
        return Ok(Vec::new());
    };
    let column = |names: &[&str]| header.iter().position(|h| names.contains(&h.trim()));
    let target = column(&["Target:FILE"]).ok_or_else(|| bad("no Target:FILE column".into()))?;
    let source = column(&["Source:FILE"]);
    let prompt = column(&["Prompt", "prompt"]).ok_or_else(|| bad("no Prompt column".into()))?;
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if row.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        let cell = |c: usize| row.get(c).map(|s| s.trim()).unwrap_or("");
        if cell(target).is_empty() {
            return Err(bad(format!("row {}: empty Target:FILE", i + 2)));
        }
        let inputs: Vec<PathBuf> = source
            .map(cell)
            .filter(|s| !s.is_empty())
            .map(|s| dir.join(s))
            .into_iter()
            .collect();
        out.push(Example {
            id: format!("row-{}", i + 2),
            task: String::new(),
            instruction: cell(prompt).to_string(),
            masks: vec![None; inputs.len()],
            inputs,
            target: dir.join(cell(target)),
        });
    }
    Ok(out)
}

/// RFC 4180 rows: commas, double-quoted fields with `""` escapes, LF or CRLF line ends.
fn parse_csv(text: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err(format!(
            "unterminated quoted field in row {}",
            rows.len() + 1
        ));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// Checks that every file the examples name exists; the error names the example and the file.
pub fn check_files(examples: &[Example], list: &Path) -> Result<()> {
    for ex in examples {
        let files = ex
            .inputs
            .iter()
            .chain(ex.masks.iter().flatten())
            .chain([&ex.target]);
        for f in files {
            if !f.is_file() {
                return Err(Error::Config {
                    path: list.to_path_buf(),
                    message: format!("example {}: no such file {}", ex.id, f.display()),
                });
            }
        }
    }
    Ok(())
}

/// Splits examples into (train, validation): a seeded shuffle, then the first
/// `round(n * fraction)` go to validation (at least one when `fraction > 0`, never all).
pub fn split(
    examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>)> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::invalid(
            "VAL_FRACTION",
            format!("{fraction} (must be in [0, 1))"),
        ));
    }
    if fraction == 0.0 {
        return Ok((examples, Vec::new()));
    }
    let n = examples.len();
    let n_val = ((n as f64 * fraction).round() as usize).max(1);
    if n_val >= n {
        return Err(Error::invalid(
            "VAL_FRACTION",
            format!("{fraction} of {n} examples leaves nothing to train on"),
        ));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut slots: Vec<Option<Example>> = examples.into_iter().map(Some).collect();
    let mut take = |i: usize| slots[i].take();
    let val: Vec<Example> = order[..n_val].iter().filter_map(|&i| take(i)).collect();
    let mut rest: Vec<usize> = order[n_val..].to_vec();
    rest.sort_unstable();
    let train = rest.into_iter().filter_map(take).collect();
    Ok((train, val))
}

/// The index of the example at stream position `pos`: epoch `pos / n` visits a permutation
/// seeded by `(seed, epoch)`.
pub fn stream_index(n: usize, pos: u64, seed: u64) -> usize {
    let epoch = pos / n as u64;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    order.shuffle(&mut rng);
    order[(pos % n as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_list_reads_quoted_prompts_relative_to_its_folder() {
        let text = "Source:FILE,Target:FILE,Prompt\r\na/s.png,a/t.png,\"make {image}, \"\"grey\"\"\"\r\n\n";
        let ex = parse_csv_list(text, Path::new("/d"), Path::new("/d/train.csv")).unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].inputs, [PathBuf::from("/d/a/s.png")]);
        assert_eq!(ex[0].target, PathBuf::from("/d/a/t.png"));
        assert_eq!(ex[0].instruction, "make {image}, \"grey\"");
        assert_eq!(ex[0].masks, [None]);
        let err = parse_csv_list(
            "Source:FILE,Prompt\nx,y\n",
            Path::new("/d"),
            Path::new("/d/l.csv"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/d/l.csv") && err.contains("Target:FILE"),
            "{err}"
        );
    }

    #[test]
    fn jsonl_records_and_mask_count_check() {
        let line = r#"{"id":"a","task":"inpainting","instruction":"fill {image}","inputs":["i.png"],"masks":["m.png"],"target":"t.png","caption":"c"}"#;
        let ex = parse_jsonl(line, Path::new("/d"), Path::new("/d/data.jsonl")).unwrap();
        assert_eq!(ex[0].masks, [Some(PathBuf::from("/d/m.png"))]);
        assert_eq!(ex[0].task, "inpainting");
        let bad = r#"{"id":"a","task":"","instruction":"x","inputs":["i.png"],"masks":[null,null],"target":"t.png"}"#;
        let err = parse_jsonl(bad, Path::new("/d"), Path::new("/d/data.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("2 masks for 1 inputs"),
            "{err}"
        );
    }

    fn examples(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| Example {
                id: i.to_string(),
                task: String::new(),
                instruction: String::new(),
                inputs: vec![],
                masks: vec![],
                target: PathBuf::from(format!("{i}.png")),
            })
            .collect()
    }

    #[test]
    fn missing_files_are_named() {
        let err = check_files(&examples(1), Path::new("list.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("list.csv") && err.contains("example 0") && err.contains("0.png"),
            "{err}"
        );
        assert!(check_files(&[], Path::new("list.csv")).is_ok());
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (train, val) = split(examples(10), 0.2, 7).unwrap();
        assert_eq!((train.len(), val.len()), (8, 2));
        let (train2, val2) = split(examples(10), 0.2, 7).unwrap();
        assert_eq!((train.clone(), val.clone()), (train2, val2));
        assert!(val.iter().all(|v| !train.contains(v)));
        assert!(split(examples(1), 0.5, 7).is_err());
        assert_eq!(split(examples(3), 0.0, 7).unwrap().1.len(), 0);
    }

    #[test]
    fn stream_visits_every_example_once_per_epoch() {
        let mut seen: Vec<usize> = (0..5).map(|p| stream_index(5, p, 3)).collect();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        let second: Vec<usize> = (5..10).map(|p| stream_index(5, p, 3)).collect();
        assert_eq!(stream_index(5, 7, 3), second[2]);
    }
}
