//! What the commands show a person on standard error: informational lines (only on a terminal
//! or with `-v`, never with `-q`), the one progress bar style every command uses, and errors as
//! one line each (a cause already quoted by its context is not repeated); and the one way a
//! result line goes to standard output.

use crate::cli::Global;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Whether informational lines are shown: not with `-q`; with `-v`, or when standard error is
/// a terminal. Scripts read the same facts from `--json`.
pub fn info_enabled(global: &Global) -> bool {
    !global.quiet && (global.verbose > 0 || std::io::stderr().is_terminal())
}

/// Writes one line to standard output (results, JSON lines). Unlike `println!` it returns the
/// error of a reader that went away (`ace ... --json | head -1`), which `main` ends quietly on.
pub fn print_line(line: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}")
}

/// Prints an informational line (`ace: ...`) when [`info_enabled`].
pub fn info(global: &Global, line: impl std::fmt::Display) {
    if info_enabled(global) {
        eprintln!("ace: {line}");
    }
}

/// The progress bar of `len` units named `unit` (images, steps, samples), labelled `label`;
/// `None` unless standard error is a terminal and `-q` is off.
pub fn progress_bar(global: &Global, len: u64, label: &str, unit: &str) -> Option<ProgressBar> {
    if global.quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let count = if unit == "bytes" {
        "{bytes}/{total_bytes}".to_string()
    } else {
        format!("{{pos}}/{{len}} {unit}")
    };
    let template =
        format!("{{prefix}} {{bar:30}} {count} [{{elapsed_precise}} < {{eta_precise}}] {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    Some(bar)
}

/// The error and its causes as one line: each cause is appended unless the text so far already
/// says it, and line breaks inside messages become "; ".
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = flatten(&cause.to_string());
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// A usage error of clap as one line: what is wrong (with clap's tip), without the usage text
/// and clap's "error:" prefix.
pub fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let message: String = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join("\n");
    flatten(message.trim_start_matches("error: "))
}

/// A message's lines joined by "; ", or by a space after a line that ends in ':' (blank lines
/// dropped).
pub fn flatten(message: &str) -> String {
    let mut out = String::new();
    for line in message.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// A byte count for people: `512 B`, `1.5 KiB`, `9.1 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_said_already_are_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let e = anyhow::Error::new(io).context(format!("a.png: {text}"));
        assert_eq!(one_line(&e), format!("a.png: {text}"));
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
        let e = anyhow::anyhow!("weights missing\nexpected layout:\n  dit x\n");
        assert_eq!(one_line(&e), "weights missing; expected layout: dit x");
    }
}
