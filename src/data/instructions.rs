//! Turning mined pairs into a training set: each pair `{"a", "b", ...}` becomes a record with
//! `a` as the input image, `b` as the target and an instruction drawn from the task's templates,
//! its slots filled from the pair's other fields (`object_name`, `caption`, `text`, ...).

use crate::data::dataset::{self, Record};
use crate::data::templates::{slot_names, Templates};
use crate::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What became of the lines of the pairs file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstructionStats {
    pub kept: usize,
    /// `{"set": ...}` lines (sets are not pairs).
    pub sets_skipped: usize,
    /// Lines that are not a pair (not JSON, not an object, no `a` or `b`).
    pub bad_lines: usize,
    /// Pairs whose input, target or mask file does not exist.
    pub missing_file: usize,
    /// Pairs lacking a slot every phrasing of the task needs.
    pub missing_slot: usize,
    /// One message per line dropped for a reason other than being a set, naming the file and
    /// line.
    pub problems: Vec<String>,
}

/// Reads the pairs file `pairs` and writes the dataset folder `out` for `task`. Relative image
/// paths in the pairs file are taken relative to the pairs file's folder (as `ace data pairs`
/// writes them). An optional `mask` field gives the input's mask. Instruction choice is seeded
/// per line. A line that is not a pair, names a missing file, or lacks the slots of every
/// phrasing of the task is reported in the stats and skipped.
pub fn build(pairs: &Path, task: &str, out: &Path, seed: u64) -> Result<InstructionStats> {
    let templates = Templates::builtin()?;
    let slots_of_task: BTreeSet<&str> = templates
        .phrasings(task)?
        .iter()
        .flat_map(|p| slot_names(p))
        .collect();
    let text = crate::textfile::read_list(pairs)?;
    let base = match pairs.parent() {
        Some(p) if pairs.as_os_str() != "-" => p.to_path_buf(),
        _ => PathBuf::new(),
    };
    let mut stats = InstructionStats::default();
    let problem =
        |line: usize, message: String| format!("{}: line {line}: {message}", pairs.display());
    let mut records = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let obj = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => {
                stats.bad_lines += 1;
                stats
                    .problems
                    .push(problem(i + 1, "not a JSON object".into()));
                continue;
            }
            Err(e) => {
                stats.bad_lines += 1;
                stats
                    .problems
                    .push(problem(i + 1, format!("not JSON: {e}")));
                continue;
            }
        };
        if obj.contains_key("set") {
            stats.sets_skipped += 1;
            continue;
        }
        let field = |k: &str| obj.get(k).map(scalar);
        let (Some(a), Some(b)) = (field("a"), field("b")) else {
            stats.bad_lines += 1;
            stats
                .problems
                .push(problem(i + 1, "a pair needs fields \"a\" and \"b\"".into()));
            continue;
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
        if let Some(gone) = [Some(&a), Some(&b), mask.as_ref()]
            .into_iter()
            .flatten()
            .find(|p| !p.is_file())
        {
            stats.missing_file += 1;
            stats
                .problems
                .push(problem(i + 1, format!("{}: no such file", gone.display())));
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
            let lacking: Vec<&str> = slots_of_task
                .iter()
                .copied()
                .filter(|s| !slots.contains_key(*s))
                .collect();
            stats.problems.push(problem(
                i + 1,
                format!(
                    "no phrasing of {task} can be filled: the pair lacks {}",
                    lacking.join(" / ")
                ),
            ));
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
            (
                stats.kept,
                stats.sets_skipped,
                stats.missing_file,
                stats.missing_slot
            ),
            (1, 1, 1, 1)
        );
        assert!(stats.problems[0].contains("line 3") && stats.problems[0].contains("gone.png"));
        assert!(stats.problems[1].contains("line 4") && stats.problems[1].contains("object_name"));
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
    fn unknown_task_is_an_error_and_bad_lines_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(&p, "{\"a\": 1}\n{oops\n").unwrap();
        assert!(build(&p, "nope", &dir.path().join("o"), 0).is_err());
        let s = build(&p, "inpainting", &dir.path().join("o"), 0).unwrap();
        assert_eq!(s.bad_lines, 2);
        assert!(
            s.problems[0].contains("p.jsonl: line 1"),
            "{:?}",
            s.problems
        );
        assert!(s.problems[1].contains("line 2"), "{:?}", s.problems);
    }
}
