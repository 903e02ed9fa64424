//! Turning mined pairs into a training set: each pair `{"a", "b", ...}` becomes a record with
//! `a` as the input image, `b` as the target and an instruction drawn from the task's templates,
//! its slots filled from the pair's other fields (`object_name`, `caption`, `text`, ...).

use crate::data::dataset::{self, Record};
use crate::data::templates::Templates;
use crate::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why lines of the pairs file were not turned into records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstructionStats {
    pub kept: usize,
    /// `{"set": ...}` lines (sets are not pairs).
    pub sets_skipped: usize,
    /// Pairs whose input, target or mask file does not exist.
    pub missing_file: usize,
    /// Pairs lacking a slot every phrasing of the task needs.
    pub missing_slot: usize,
}

/// Reads the pairs file `pairs` and writes the dataset folder `out` for `task`. Relative image
/// paths in the pairs file are taken relative to the pairs file's folder. An optional `mask`
/// field gives the input's mask. Instruction choice is seeded per line.
pub fn build(pairs: &Path, task: &str, out: &Path, seed: u64) -> Result<InstructionStats> {
    let templates = Templates::builtin()?;
    templates.phrasings(task)?;
    let text = std::fs::read_to_string(pairs).map_err(|e| Error::io(pairs, e))?;
    let base = pairs.parent().map(Path::to_path_buf).unwrap_or_default();
    let bad = |line: usize, message: String| Error::Config {
        path: pairs.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    let mut stats = InstructionStats::default();
    let mut records = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad(i + 1, "not a JSON object".into()))?;
        if obj.contains_key("set") {
            stats.sets_skipped += 1;
            continue;
        }
        let field = |k: &str| obj.get(k).map(scalar);
        let (Some(a), Some(b)) = (field("a"), field("b")) else {
            return Err(bad(i + 1, "a pair needs fields \"a\" and \"b\"".into()));
        };
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mask = field("mask").map(|m| resolve(&m));
        let (a, b) = (resolve(&a), resolve(&b));
        if !a.is_file() || !b.is_file() || mask.as_ref().is_some_and(|m| !m.is_file()) {
            stats.missing_file += 1;
            continue;
        }
        let slots: BTreeMap<String, String> = obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "a" | "b" | "mask" | "sim"))
            .map(|(k, v)| (k.clone(), scalar(v)))
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        let Some(instruction) = templates.render(task, &slots, &mut rng)? else {
            stats.missing_slot += 1;
            continue;
        };
        records.push(Record {
            id: format!("{task}-{:07}", i + 1),
            task: task.to_string(),
            instruction,
            inputs: vec![dataset::relative(&a, out)?],
            masks: vec![mask.map(|m| dataset::relative(&m, out)).transpose()?],
            target: dataset::relative(&b, out)?,
            caption: slots.get("caption").cloned(),
        });
    }
    stats.kept = records.len();
    dataset::write(out, &records)?;
    Ok(stats)
}

/// A JSON value as slot text: strings bare, other values as JSON.
fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_become_records_with_filled_slots() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["a.png", "b.png", "m.png"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let lines = [
            r#"{"set": 0, "members": ["a.png", "b.png"]}"#,
            r#"{"a": "a.png", "b": "b.png", "sim": 0.9, "object_name": "a dog", "mask": "m.png"}"#,
            r#"{"a": "a.png", "b": "gone.png", "sim": 0.9, "object_name": "a cat"}"#,
            r#"{"a": "a.png", "b": "b.png", "sim": 0.9}"#,
        ];
        std::fs::write(d.join("pairs.jsonl"), lines.join("\n")).unwrap();
        let out = d.join("set");
        let stats = build(&d.join("pairs.jsonl"), "object.remove", &out, 1).unwrap();
        assert_eq!(
            stats,
            InstructionStats {
                kept: 1,
                sets_skipped: 1,
                missing_file: 1,
                missing_slot: 1
            }
        );
        let recs = dataset::read(&out).unwrap();
        assert_eq!(recs.len(), 1);
        assert!(
            recs[0].instruction.contains("a dog"),
            "{}",
            recs[0].instruction
        );
        assert_eq!(recs[0].inputs, vec!["../a.png"]);
        assert_eq!(recs[0].masks, vec![Some("../m.png".to_string())]);
        assert_eq!(recs[0].target, "../b.png");
        // Same seed, same instructions.
        build(&d.join("pairs.jsonl"), "object.remove", &d.join("again"), 1).unwrap();
        assert_eq!(
            dataset::read(&d.join("again")).unwrap()[0].instruction,
            recs[0].instruction
        );
    }

    #[test]
    fn unknown_task_and_bad_lines_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(&p, "{\"a\": 1}\n").unwrap();
        assert!(build(&p, "nope", &dir.path().join("o"), 0).is_err());
        let e = build(&p, "inpainting", &dir.path().join("o"), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.jsonl") && e.contains("line 1"), "{e}");
    }
}
