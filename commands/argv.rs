//! Command lines as data: a command line without some of its flags (and their values), read
//! against the CLI's own definition so that flags taking values are told from switches. A
//! batch job is the batch's command line without the flags its fields replace; a run's record
//! is its command line without the flags that only say where the output goes.

use crate::cli;
use clap::CommandFactory;

/// The command line without the flags named in `drop` (and their values).
pub fn strip(argv: &[String], drop: &[String]) -> Vec<String> {
    let root = cli::Cli::command();
    let mut commands = vec![root];
    let mut out = Vec::new();
    let mut tokens = argv.iter();
    if let Some(program) = tokens.next() {
        out.push(program.clone());
    }
    while let Some(token) = tokens.next() {
        let current = commands.last().expect("the root command is always there");
        let arg = if let Some(long) = token.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            find(&commands, |a| a.get_long() == Some(name)).map(|a| (a, inline))
        } else if token.len() == 2 && token.starts_with('-') && token != "--" {
            let short = token.chars().nth(1);
            find(&commands, |a| a.get_short() == short).map(|a| (a, false))
        } else {
            None
        };
        match arg {
            Some((a, inline)) => {
                let takes_value = a.get_action().takes_values() && !inline;
                let name = a.get_long().unwrap_or_default().to_string();
                let value = if takes_value { tokens.next() } else { None };
                if !drop.contains(&name) {
                    out.push(token.clone());
                    out.extend(value.cloned());
                }
            }
            None => {
                if let Some(sub) = current.find_subcommand(token).cloned() {
                    commands.push(sub);
                }
                out.push(token.clone());
            }
        }
    }
    out
}

/// The argument matching `pred` in the innermost command that has one.
fn find(commands: &[clap::Command], pred: impl Fn(&clap::Arg) -> bool) -> Option<clap::Arg> {
    commands
        .iter()
        .rev()
        .find_map(|c| c.get_arguments().find(|a| pred(a)).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn strip_drops_named_flags_with_their_values() {
        let argv = v("ace --device cpu -q inpaint --image a.png --batch b.jsonl --resume --steps=2 -o x.png --config c.yaml");
        let drop: Vec<String> = ["batch", "resume", "steps", "output"]
            .map(String::from)
            .into();
        assert_eq!(
            strip(&argv, &drop),
            v("ace --device cpu -q inpaint --image a.png --config c.yaml")
        );
        let argv = v("ace layer fuse --background b.png --batch j.jsonl --subject s.png");
        assert_eq!(
            strip(&argv, &["batch".to_string(), "subject".to_string()]),
            v("ace layer fuse --background b.png")
        );
    }
}
