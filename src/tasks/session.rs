//! Multi-turn editing sessions (appendix B.9): a JSON-lines file with one turn per line (its
//! inputs, masks, tasks, instruction, output and seed). A new turn sees the earlier turns as
//! history (each turn's first input with its instruction, as the reference's chat keeps them),
//! edits the previous turn's output when no image is given, and is appended once its output is
//! written.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One turn of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionTurn {
    /// The turn's input images (absolute paths).
    pub inputs: Vec<PathBuf>,
    /// One entry per input: its mask, or null.
    #[serde(default)]
    pub masks: Vec<Option<PathBuf>>,
    /// One entry per input: its task ("" for none).
    #[serde(default)]
    pub tasks: Vec<String>,
    pub instruction: String,
    /// The image the turn produced (absolute path).
    pub output: PathBuf,
    /// The noise seed, when the noise came from one.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// An earlier turn as the next one's history: image, mask, task, instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryItem {
    pub image: PathBuf,
    pub mask: Option<PathBuf>,
    pub task: String,
    pub instruction: String,
}

/// The turns of the session file; a file that does not exist yet is an empty session.
pub fn read(path: &Path) -> Result<Vec<SessionTurn>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = crate::textfile::read_list(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Config {
                path: path.to_path_buf(),
                message: format!("line {}: not a session turn: {e}", i + 1),
            })
        })
        .collect()
}

/// The history a new turn sees.
pub fn history(turns: &[SessionTurn]) -> Vec<HistoryItem> {
    turns
        .iter()
        .filter_map(|t| {
            t.inputs.first().map(|image| HistoryItem {
                image: image.clone(),
                mask: t.masks.first().cloned().flatten(),
                task: t.tasks.first().cloned().unwrap_or_default(),
                instruction: t.instruction.clone(),
            })
        })
        .collect()
}

/// The output of the last turn, the input of a turn given no image.
pub fn previous_output(turns: &[SessionTurn]) -> Option<&Path> {
    turns.last().map(|t| t.output.as_path())
}

/// An absolute form of `path` (relative paths joined to the current folder), so the session
/// file works from anywhere.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// The session file's text ("" when it does not exist yet).
fn read_text(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// `text` with `turn` as its last line.
fn push_turn(mut text: String, turn: &SessionTurn) -> Result<String> {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let line =
        serde_json::to_string(turn).map_err(|e| Error::invalid("session turn", e.to_string()))?;
    text.push_str(&line);
    text.push('\n');
    Ok(text)
}

/// Appends `turn` to the session file (rewritten atomically).
pub fn append(path: &Path, turn: &SessionTurn) -> Result<()> {
    let text = push_turn(read_text(path)?, turn)?;
    crate::output::write(path, text.as_bytes())
}

/// Replaces the last turn of the session file by `turn` (rewritten atomically): the same turn
/// made again, e.g. with another seed.
pub fn replace_last(path: &Path, turn: &SessionTurn) -> Result<()> {
    let text = read_text(path)?;
    let kept: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let Some((_, earlier)) = kept.split_last() else {
        return Err(Error::invalid(
            "session",
            format!("{}: has no turn to replace", path.display()),
        ));
    };
    let earlier: String = earlier.iter().map(|l| format!("{l}\n")).collect();
    crate::output::write(path, push_turn(earlier, turn)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(input: &str, output: &str, instruction: &str) -> SessionTurn {
        SessionTurn {
            inputs: vec![input.into()],
            masks: vec![None],
            tasks: vec![String::new()],
            instruction: instruction.into(),
            output: output.into(),
            seed: Some(1),
        }
    }

    #[test]
    fn turns_round_trip_and_give_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        assert!(read(&path).unwrap().is_empty());
        append(
            &path,
            &turn("/a.png", "/b.png", "turn {image} into pixel art"),
        )
        .unwrap();
        append(&path, &turn("/b.png", "/c.png", "add a hat to {image}")).unwrap();
        let turns = read(&path).unwrap();
        assert_eq!(turns.len(), 2);
        assert_eq!(previous_output(&turns), Some(Path::new("/c.png")));
        let h = history(&turns);
        assert_eq!(h[1].image, PathBuf::from("/b.png"));
        assert_eq!(h[0].instruction, "turn {image} into pixel art");
        replace_last(&path, &turn("/b.png", "/d.png", "add a red hat to {image}")).unwrap();
        let turns = read(&path).unwrap();
        assert_eq!(turns.len(), 2);
        assert_eq!(turns[1].output, PathBuf::from("/d.png"));
        assert_eq!(turns[0].output, PathBuf::from("/b.png"));
        assert!(replace_last(&dir.path().join("none.jsonl"), &turns[0]).is_err());
        std::fs::write(&path, "{oops\n").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("line 1"));
    }
}
