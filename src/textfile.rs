//! Reading the text files a user gives (configs, histories, manifests, batches, pair and
//! caption lists): `-` is standard input (once per run); a file larger than its kind's limit,
//! or YAML nested deeper than [`MAX_DEPTH`] levels, is refused before it is parsed, with an
//! error naming it, so that no input makes the parser run for minutes or exhaust memory. (JSON
//! lines are parsed by serde_json, which stops at 128 levels by itself.)

use crate::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Deepest nesting of a YAML document.
pub const MAX_DEPTH: usize = 64;
/// Largest YAML or JSON document (a config, a history): 16 MiB.
pub const MAX_DOCUMENT_BYTES: u64 = 16 << 20;
/// Largest list of lines (a batch, a manifest, a pairs file, a session): 1 GiB.
pub const MAX_LIST_BYTES: u64 = 1 << 30;

/// Reads a text file (`-`: standard input) of at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> Result<String> {
    let too_big = |size: u64| {
        Error::invalid(
            "input",
            format!(
                "{}: {size} bytes is more than the {} MiB this kind of file may have",
                path.display(),
                limit >> 20
            ),
        )
    };
    let bytes = if path.as_os_str() == "-" {
        crate::inputs::read_stdin(limit)?
    } else {
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if size > limit {
            return Err(too_big(size));
        }
        std::fs::read(path).map_err(|e| Error::io(path, e))?
    };
    String::from_utf8(bytes).map_err(|e| {
        Error::invalid(
            "input",
            format!(
                "{}: not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Reads a list of lines (JSON lines, CSV) of at most [`MAX_LIST_BYTES`].
pub fn read_list(path: &Path) -> Result<String> {
    read(path, MAX_LIST_BYTES)
}

/// Reads and parses a YAML (or JSON) document of at most [`MAX_DOCUMENT_BYTES`] and
/// [`MAX_DEPTH`] levels; `what` says what it should be, in errors.
pub fn yaml<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = read(path, MAX_DOCUMENT_BYTES)?;
    parse_yaml(&text, path, what)
}

/// Parses YAML text checked by [`check_depth`]; `origin` names it in errors.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, origin: &Path, what: &str) -> Result<T> {
    check_depth(text, origin)?;
    serde_yaml::from_str(text).map_err(|e| Error::Config {
        path: origin.to_path_buf(),
        message: format!("not {what}: {e}"),
    })
}

/// Refuses YAML (or JSON) text nested deeper than [`MAX_DEPTH`]: block levels by indentation
/// and sequence dashes, flow levels by brackets outside quoted scalars and comments.
pub fn check_depth(text: &str, origin: &Path) -> Result<()> {
    let mut scan = DepthScan::default();
    for (n, line) in text.lines().enumerate() {
        if scan.line(line) > MAX_DEPTH {
            return Err(Error::Config {
                path: origin.to_path_buf(),
                message: format!("line {}: nested deeper than {MAX_DEPTH} levels", n + 1),
            });
        }
    }
    Ok(())
}

/// The state of a depth scan between lines.
#[derive(Default)]
struct DepthScan {
    /// Indentation columns of the open block levels.
    blocks: Vec<usize>,
    /// Open flow brackets.
    flow: usize,
    /// Block levels when the outermost open bracket was opened.
    flow_base: usize,
    /// Inside a quoted scalar: its quote character.
    quote: Option<char>,
    /// Inside a block scalar (`|`, `>`): the indentation of the line that opened it.
    literal: Option<usize>,
}

impl DepthScan {
    /// Scans one line; returns the deepest nesting reached on it.
    fn line(&mut self, line: &str) -> usize {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if let Some(opened) = self.literal {
            if body.trim().is_empty() || indent > opened {
                return 0;
            }
            self.literal = None;
        }
        if self.flow == 0 && self.quote.is_none() {
            if body.trim().is_empty() || body.starts_with('#') {
                return 0;
            }
            self.open_block(indent);
            let mut rest = body;
            let mut col = indent;
            while let Some(after) = rest
                .strip_prefix('-')
                .filter(|a| a.is_empty() || a.starts_with([' ', '\t']))
            {
                let trimmed = after.trim_start();
                col += 1 + after.len() - trimmed.len();
                rest = trimmed;
                self.open_block(col);
            }
            self.flow_base = self.blocks.len();
            let deepest = self.scan(rest);
            if self.flow == 0 && self.quote.is_none() && opens_block_scalar(rest) {
                self.literal = Some(indent);
            }
            return deepest;
        }
        self.scan(body)
    }

    /// Opens a block level at `col`, closing those at or right of it.
    fn open_block(&mut self, col: usize) {
        while self.blocks.last().is_some_and(|&c| c >= col) {
            self.blocks.pop();
        }
        self.blocks.push(col);
    }

    /// Counts flow brackets in `text`; returns the deepest nesting reached.
    fn scan(&mut self, text: &str) -> usize {
        let mut deepest = self.flow_base + self.flow;
        let mut prev = ' ';
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match self.quote {
                Some('"') if c == '\\' => {
                    chars.next();
                }
                Some(q) if c == q => {
                    if q == '\'' && chars.peek() == Some(&'\'') {
                        chars.next();
                    } else {
                        self.quote = None;
                    }
                }
                Some(_) => {}
                None => match c {
                    '#' if prev == ' ' || prev == '\t' => break,
                    '"' | '\'' if " \t:,[{-?".contains(prev) => self.quote = Some(c),
                    '[' | '{' => {
                        self.flow += 1;
                        deepest = deepest.max(self.flow_base + self.flow);
                    }
                    ']' | '}' => self.flow = self.flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
        deepest.max(self.blocks.len())
    }
}

/// Whether a line's value starts a block scalar (`key: |`, `- >-`, `|2`...).
fn opens_block_scalar(rest: &str) -> bool {
    let value = rest.split(" #").next().unwrap_or("").trim_end();
    let last = value.rsplit([' ', '\t']).next().unwrap_or("");
    last.starts_with(['|', '>'])
        && last[1..]
            .chars()
            .all(|c| c == '-' || c == '+' || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str) -> bool {
        check_depth(text, Path::new("t.yaml")).is_ok()
    }

    #[test]
    fn deep_nesting_is_refused_in_every_spelling() {
        let n = MAX_DEPTH + 1;
        assert!(!depth_ok(&format!("a: {}{}", "[".repeat(n), "]".repeat(n))));
        assert!(!depth_ok(&format!(
            "{}1{}",
            "{a: ".repeat(n),
            "}".repeat(n)
        )));
        assert!(!depth_ok(&format!("{}x", "- ".repeat(n))));
        let block: String = (0..n).map(|i| format!("{}k:\n", "  ".repeat(i))).collect();
        assert!(!depth_ok(&block));
        let e = check_depth(&"[".repeat(n), Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.yaml") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn ordinary_documents_pass() {
        let config = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/ace_0.6b_512.yaml"),
        )
        .unwrap();
        assert!(depth_ok(&config));
        assert!(depth_ok(crate::data::templates::BUILTIN));
        // Brackets in quoted or block scalars and comments do not count.
        let n = MAX_DEPTH + 1;
        let quoted = format!(
            "a: '{}'\nb: \"{}\"\n# {}\n",
            "[".repeat(n),
            "{".repeat(n),
            "[".repeat(n)
        );
        assert!(depth_ok(&quoted));
        let literal = format!("a: |\n  {}\nb: 1\n", "[".repeat(n));
        assert!(depth_ok(&literal));
        assert!(depth_ok(
            "- {image: a.png, instruction: \"don't [stop]\"}\n"
        ));
    }
}
