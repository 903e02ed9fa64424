//! The man pages in `man/` are generated from the clap definition (clap_mangen for the title,
//! NAME, SYNOPSIS, DESCRIPTION and OPTIONS), one page for `ace` and one for every subcommand at
//! any depth, with the sections clap does not know written here: COMMANDS (the pages that
//! exist), EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES (the README's command lines for that
//! command) and SEE ALSO. This test fails when they are stale;
//! `ACE_UPDATE_MAN=1 cargo test --bin ace man_pages` rewrites them.

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::CommandFactory;
    use std::collections::BTreeMap;
    use std::fmt::Write;
    use std::path::Path;

    /// The footer's source field of every page.
    const SOURCE: &str = concat!("ace ", env!("CARGO_PKG_VERSION"));

    const README: &str = include_str!("../README.md");

    const EXIT_STATUS: &[(&str, &str)] = &[
        ("0", "Success (a closed pipe downstream counts as success)."),
        (
            "1",
            "Some inputs failed; each was named on standard error and the rest were processed.",
        ),
        ("2", "Usage or fatal error; nothing was written."),
        (
            "129, 130, 143",
            "Stopped by SIGHUP, SIGINT (Ctrl-C) or SIGTERM: work in progress was abandoned and \
             its temporary files removed; outputs already written are complete.",
        ),
    ];

    /// Environment variables: name, what it does, and which command paths it concerns (empty:
    /// all).
    const ENVIRONMENT: &[(&str, &str, &[&str])] = &[
        (
            "ACE_MODEL_DIR",
            "Default of --model-dir (and --ace-model-dir): a downloaded model snapshot.",
            &["generate", "edit", "control", "inpaint", "outpaint", "layer", "reference", "analyze", "model", "serve"],
        ),
        (
            "HF_HOME, HF_ENDPOINT",
            "The Hugging Face cache that hf:// weights and hub model ids are found in, and the hub \
             that `ace model download` fetches from.",
            &["generate", "edit", "control", "inpaint", "outpaint", "layer", "reference", "analyze", "model", "eval", "data", "train", "serve"],
        ),
        (
            "ACE_CACHE_DIR, XDG_CACHE_HOME",
            "Where `ace eval --emu-edit` extracts the Emu Edit input images (ACE_CACHE_DIR, else \
             $XDG_CACHE_HOME/ace, else ~/.cache/ace).",
            &["eval"],
        ),
        (
            "LD_LIBRARY_PATH",
            "Where a CUDA build looks for libcuda.so.1 and the CUDA 13 libraries (--device cuda).",
            &["generate", "edit", "control", "inpaint", "outpaint", "layer", "reference", "analyze", "eval", "train", "serve"],
        ),
        (
            "ACE_TOKEN",
            "Default of --token: the bearer token every request but GET /ace/health must carry.",
            &["serve"],
        ),
        (
            "ACE_DATA_DIR, XDG_DATA_HOME",
            "Default of --data-dir: ACE_DATA_DIR, else $XDG_DATA_HOME/ace/serve, else \
             ~/.local/share/ace/serve.",
            &["serve"],
        ),
    ];

    /// Files: text, and the command paths it concerns (empty: all).
    const FILES: &[(&str, &str, &[&str])] = &[
        (
            ".ace-HOST-PID-*.tmp",
            "Every output file is first written to such a temporary file beside it and renamed \
             into place; the next run writing into that folder removes those left by processes \
             of this host that no longer run.",
            &[],
        ),
        (
            "WORK_DIR/train_log.jsonl, loss.png, checkpoints/step-NNNNNN/, checkpoints/latest",
            "The log, the loss plot and the checkpoints of a training run.",
            &["train"],
        ),
        (
            "DATASET/data.jsonl",
            "The records of a dataset written by `ace data instructions` and `ace data lowlevel` \
             and read by `ace train`.",
            &["data", "train"],
        ),
        (
            "presets/tasks.yaml",
            "The instruction phrasings of the task subcommands (built into the binary).",
            &[
                "control",
                "inpaint",
                "outpaint",
                "layer",
                "reference",
                "edit",
                "data",
                "serve",
            ],
        ),
        (
            "DATA_DIR/sessions/ID.jsonl, DATA_DIR/sessions/ID/, DATA_DIR/images/",
            "The chats of `ace serve` as `ace edit --session` files (one turn per line), their \
             uploads and outputs, and the images of its OpenAI endpoints.",
            &["serve"],
        ),
    ];

    /// Every page as (file name, roff text).
    fn render() -> BTreeMap<String, Vec<u8>> {
        let mut cmd = Cli::command();
        cmd.build();
        let mut pages = BTreeMap::new();
        add_pages(&cmd, &[], &mut pages);
        pages
    }

    /// The subcommands that have pages (not `help`).
    fn subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
        cmd.get_subcommands()
            .filter(|s| s.get_name() != "help" && !s.is_hide_set())
    }

    /// Renders `cmd` (reached by the subcommand names `path`) and its subcommands; after
    /// `build`, clap names each subcommand `ace-<sub>[-<subsub>]`, the page's file name.
    fn add_pages(cmd: &clap::Command, path: &[String], pages: &mut BTreeMap<String, Vec<u8>>) {
        let name = page_name(cmd);
        pages.insert(format!("{name}.1"), page(cmd, path).into_bytes());
        for sub in subcommands(cmd) {
            let mut sub_path = path.to_vec();
            sub_path.push(sub.get_name().to_string());
            add_pages(sub, &sub_path, pages);
        }
    }

    fn page_name(cmd: &clap::Command) -> String {
        cmd.get_display_name().unwrap_or(cmd.get_name()).to_string()
    }

    /// One page's roff text.
    fn page(cmd: &clap::Command, path: &[String]) -> String {
        let man = clap_mangen::Man::new(cmd.clone()).source(SOURCE);
        type Part = fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>;
        let parts: [Part; 5] = [
            clap_mangen::Man::render_title,
            clap_mangen::Man::render_name_section,
            clap_mangen::Man::render_synopsis_section,
            clap_mangen::Man::render_description_section,
            clap_mangen::Man::render_options_section,
        ];
        let mut buf = Vec::new();
        for part in parts {
            part(&man, &mut buf).expect("render man page");
        }
        let mut out = String::from_utf8(buf).expect("roff is UTF-8");
        let subs: Vec<&clap::Command> = subcommands(cmd).collect();
        if !subs.is_empty() {
            out.push_str(".SH COMMANDS\n");
            for s in &subs {
                let _ = writeln!(
                    out,
                    ".TP\n\\fB{}\\fR(1)\n{}",
                    escape(&page_name(s)),
                    escape(&s.get_about().map(|a| a.to_string()).unwrap_or_default())
                );
            }
        }
        out.push_str(".SH \"EXIT STATUS\"\n");
        for (code, text) in EXIT_STATUS {
            let _ = writeln!(out, ".TP\n\\fB{}\\fR\n{}", escape(code), escape(text));
        }
        out.push_str(".SH ENVIRONMENT\n");
        let env: Vec<_> = ENVIRONMENT.iter().filter(|e| concerns(e.2, path)).collect();
        if env.is_empty() {
            out.push_str("No environment variable changes what this command does.\n");
        }
        for (name, text, _) in env {
            let _ = writeln!(out, ".TP\n\\fB{}\\fR\n{}", escape(name), escape(text));
        }
        out.push_str(".SH FILES\n");
        for (name, text, _) in FILES.iter().filter(|f| concerns(f.2, path)) {
            let _ = writeln!(out, ".TP\n\\fI{}\\fR\n{}", escape(name), escape(text));
        }
        out.push_str(".SH EXAMPLES\n.nf\n");
        for line in examples(path) {
            let _ = writeln!(out, "{}", escape(&line));
        }
        out.push_str(".fi\n.SH \"SEE ALSO\"\n");
        let mut see: Vec<String> = Vec::new();
        if !path.is_empty() {
            let parent: Vec<&str> = std::iter::once("ace")
                .chain(path[..path.len() - 1].iter().map(String::as_str))
                .collect();
            see.push(parent.join("-"));
        }
        see.extend(subs.iter().map(|s| page_name(s)));
        if path.len() > 1 {
            see.push("ace".into());
        }
        let refs: Vec<String> = see
            .iter()
            .map(|p| format!("\\fB{}\\fR(1)", escape(p)))
            .collect();
        let _ = writeln!(out, "{}", refs.join(", "));
        out
    }

    /// Whether an entry for the commands `scope` (empty: all) belongs on the page of `path`.
    fn concerns(scope: &[&str], path: &[String]) -> bool {
        scope.is_empty() || path.is_empty() || scope.contains(&path[0].as_str())
    }

    /// The README's command lines for the command at `path` and its subcommands; for `ace`
    /// itself, the first of each subcommand.
    fn examples(path: &[String]) -> Vec<String> {
        let mut in_code = false;
        let mut lines = Vec::new();
        for line in README.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if in_code && line.starts_with("ace ") {
                lines.push(line.trim_end().to_string());
            }
        }
        if path.is_empty() {
            let mut seen = std::collections::BTreeSet::new();
            return lines
                .into_iter()
                .filter(|l| seen.insert(l.split_whitespace().nth(1).unwrap_or("").to_string()))
                .collect();
        }
        let prefix = format!("ace {} ", path.join(" "));
        lines
            .into_iter()
            .filter(|l| l.starts_with(&prefix) || *l == prefix.trim_end())
            .collect()
    }

    /// Text escaped for roff: backslashes, minus signs, and a leading dot or quote.
    fn escape(text: &str) -> String {
        let t = text.replace('\\', "\\e").replace('-', "\\-");
        if t.starts_with('.') || t.starts_with('\'') {
            format!("\\&{t}")
        } else {
            t
        }
    }

    #[test]
    fn every_page_has_the_sections_and_examples() {
        for (file, text) in render() {
            let text = String::from_utf8(text).unwrap();
            for section in [
                ".SH NAME",
                ".SH SYNOPSIS",
                ".SH DESCRIPTION",
                ".SH OPTIONS",
                ".SH \"EXIT STATUS\"",
                ".SH ENVIRONMENT",
                ".SH FILES",
                ".SH EXAMPLES",
                ".SH \"SEE ALSO\"",
            ] {
                assert!(text.contains(section), "{file} lacks {section}");
            }
            let examples = text
                .split(".SH EXAMPLES\n.nf\n")
                .nth(1)
                .and_then(|t| t.split(".fi").next())
                .unwrap_or("");
            assert!(
                examples.lines().any(|l| l.starts_with("ace ")),
                "{file}: no example in the README"
            );
            assert!(text.contains(&format!("\"{SOURCE}\"")), "{file}: footer");
        }
    }

    #[test]
    fn man_pages_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let pages = render();
        if std::env::var_os("ACE_UPDATE_MAN").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for old in std::fs::read_dir(&dir).unwrap().flatten() {
                if old.path().extension().is_some_and(|e| e == "1") {
                    std::fs::remove_file(old.path()).unwrap();
                }
            }
            for (file, text) in &pages {
                std::fs::write(dir.join(file), text).unwrap();
            }
            return;
        }
        let stale = "man/ is stale: run `ACE_UPDATE_MAN=1 cargo test --bin ace man_pages`";
        for (file, text) in &pages {
            let on_disk = std::fs::read(dir.join(file)).unwrap_or_default();
            assert!(on_disk == *text, "{stale} ({file} differs or is missing)");
        }
        let on_disk: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".1"))
                    .collect()
            })
            .unwrap_or_default();
        for file in on_disk {
            assert!(
                pages.contains_key(&file),
                "{stale} ({file} has no subcommand)"
            );
        }
    }
}
