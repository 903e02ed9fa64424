//! The MagicBrush test set in its own layout, paired as its `evaluation/image_eval.py` pairs
//! it. The test folder holds `images/<id>/<id>-input.png`, `<id>-output<i>.png` (masks are
//! ignored) and `global_descriptions.json` (`{id: {file name: caption}}`); the generated folder
//! holds `<id>/` with the first edit named `*_1.png`, the independent edits `inde_<i>.png` and
//! the iterative edits `iter_<i>.png`. All-turn samples pair the first and independent edits
//! with the outputs in turn order; the final-turn sample pairs the last iterative edit (or the
//! only edit) with the last output. Every session of the test set and every output of it gives
//! a sample: an edit that is missing from the generated folder is a sample whose file is
//! missing (reported, left out of the means), not a sample left out.

use super::manifest::Sample;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Captions by session id and file name.
type Captions = BTreeMap<String, BTreeMap<String, String>>;

/// The samples of the MagicBrush test set at `test_dir` for the edits in `generated`.
pub fn samples(generated: &Path, test_dir: &Path) -> Result<Vec<Sample>> {
    let images = test_dir.join("images");
    let captions_file = test_dir.join("global_descriptions.json");
    let captions: Captions = if captions_file.is_file() {
        let text = crate::textfile::read(&captions_file, crate::textfile::MAX_DOCUMENT_BYTES)?;
        serde_json::from_str(&text).map_err(|e| Error::Config {
            path: captions_file.clone(),
            message: e.to_string(),
        })?
    } else {
        Captions::new()
    };
    let mut out = Vec::new();
    let mut ids = subfolders(generated)?;
    if ids.is_empty() {
        return Err(Error::invalid(
            "--generated",
            format!("{}: no MagicBrush session folders", generated.display()),
        ));
    }
    ids.extend(subfolders(&images).unwrap_or_default());
    ids.sort();
    ids.dedup();
    for id in ids {
        let gen_dir = generated.join(&id);
        let gt_dir = images.join(&id);
        let gen_names = image_names(&gen_dir)?;
        let outputs = sorted_by_digits(
            image_names(&gt_dir)?
                .into_iter()
                .filter(|n| n.contains("output"))
                .collect(),
        );
        let input = image_names(&gt_dir)?
            .into_iter()
            .find(|n| n.contains("input"));
        let caption = |name: &str| captions.get(&id).and_then(|c| c.get(name)).cloned();
        let input_caption = input.as_deref().and_then(caption);
        let mut sample = |generated: Option<PathBuf>,
                          gt: Option<&String>,
                          input: Option<&String>,
                          turn: Option<u32>,
                          final_turn: bool| {
            out.push(Sample {
                index: out.len(),
                generated,
                ground_truth: gt.map(|n| gt_dir.join(n)),
                input: input.map(|n| gt_dir.join(n)),
                input_caption: input_caption.clone(),
                output_caption: gt.and_then(|n| caption(n)),
                task: None,
                turn,
                final_turn: Some(final_turn),
                ..Sample::default()
            });
        };
        // The first edit is turn 1 (image_eval.py sorts it among the independent edits by all
        // the digits of its name, which puts a numeric session id's `<id>_1.png` last).
        let is_first = |n: &&String| {
            !n.starts_with("inde_")
                && !n.starts_with("iter_")
                && Path::new(n.as_str())
                    .file_stem()
                    .is_some_and(|s| s.to_string_lossy().ends_with("_1"))
        };
        let mut all_turns: Vec<String> = gen_names.iter().filter(is_first).cloned().collect();
        if all_turns.is_empty() && !outputs.is_empty() {
            all_turns.push(format!("{id}_1.png"));
        }
        all_turns.extend(sorted_by_digits(
            gen_names
                .iter()
                .filter(|n| n.contains("inde_"))
                .cloned()
                .collect(),
        ));
        // Turns of the test set without an edit: the names they should have, reported missing.
        for turn in all_turns.len()..outputs.len() {
            all_turns.push(format!("inde_{}.png", turn + 1));
        }
        let iterative = sorted_by_digits(
            gen_names
                .iter()
                .filter(|n| n.contains("iter_"))
                .cloned()
                .collect(),
        );
        let last_edit = if gen_names.len() == 1 {
            gen_names.first()
        } else {
            iterative.last()
        };
        sample(
            // Without it, the name it should have is reported as missing.
            Some(gen_dir.join(match last_edit {
                Some(n) => n.clone(),
                None => format!("iter_{}.png", outputs.len()),
            })),
            outputs.last(),
            input.as_ref(),
            None,
            true,
        );
        for (i, name) in all_turns.iter().enumerate() {
            // Turn i edits the ground truth of turn i − 1 (the input image for turn 1).
            let turn_input = if i == 0 {
                input.as_ref()
            } else {
                outputs.get(i - 1)
            };
            let gt = outputs.get(i);
            sample(
                Some(gen_dir.join(name)),
                gt,
                turn_input,
                Some(i as u32 + 1),
                false,
            );
        }
    }
    Ok(out)
}

/// Folder names directly under `dir`, sorted.
fn subfolders(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// `.png` / `.jpg` names in `dir` that are not masks; a missing folder has none.
fn image_names(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.contains(".png") || n.contains(".jpg")) && !n.contains("mask"))
        .collect();
    v.sort();
    Ok(v)
}

/// Sorted by the number formed by all digits of the name, as image_eval.py sorts.
fn sorted_by_digits(mut names: Vec<String>) -> Vec<String> {
    let key = |s: &String| -> u128 {
        s.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    names.sort_by_key(key);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_turns_as_image_eval_does() {
        let dir = tempfile::tempdir().unwrap();
        let (test, gen) = (dir.path().join("test"), dir.path().join("gen"));
        let touch = |p: PathBuf| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        for f in [
            "42-input.png",
            "42-output1.png",
            "42-output2.png",
            "42-mask1.png",
        ] {
            touch(test.join("images/42").join(f));
        }
        for f in ["42_1.png", "inde_2.png", "iter_2.png", "iter_10.png"] {
            touch(gen.join("42").join(f));
        }
        std::fs::write(
            test.join("global_descriptions.json"),
            r#"{"42": {"42-input.png": "a dog", "42-output1.png": "a dog in a hat", "42-output2.png": "a dog in a red hat"}}"#,
        )
        .unwrap();
        let s = samples(&gen, &test).unwrap();
        assert_eq!(s.len(), 3);
        let img = |n: &str| Some(test.join("images/42").join(n));
        assert_eq!(s[0].final_turn, Some(true));
        assert_eq!(s[0].generated, Some(gen.join("42/iter_10.png")));
        assert_eq!(s[0].ground_truth, img("42-output2.png"));
        assert_eq!(s[0].output_caption.as_deref(), Some("a dog in a red hat"));
        assert_eq!(
            (s[1].turn, s[1].generated.clone()),
            (Some(1), Some(gen.join("42/42_1.png")))
        );
        assert_eq!(
            (s[1].input.clone(), s[1].ground_truth.clone()),
            (img("42-input.png"), img("42-output1.png"))
        );
        assert_eq!(s[1].input_caption.as_deref(), Some("a dog"));
        assert_eq!(
            (s[2].turn, s[2].input.clone()),
            (Some(2), img("42-output1.png"))
        );
        assert_eq!(s[2].generated, Some(gen.join("42/inde_2.png")));
    }
}
