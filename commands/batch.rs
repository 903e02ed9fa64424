//! `--batch FILE.jsonl` of every generation subcommand: each line's fields become flags of the
//! same subcommand (they replace the command line's flags of the same name), the model is
//! loaded once, every job writes its output and one JSON result line (seed, timings, or the
//! error) on stdout, failed jobs do not stop the batch (exit 1 at the end), `--shard I/N` takes
//! every N-th job and `--resume` skips jobs whose output is already written.

use crate::cli::{self, Global};
use crate::generate_common::{self as common, Common, Intent};
use crate::generate_output::Generator;
use crate::model_source::Phases;
use crate::Outcome;
use ace::pipeline::Noise;
use ace::tasks::batch::{self as jobs, BatchLine};
use anyhow::{anyhow, bail, Result};
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Flags of the batch itself, dropped from every job's command line.
const BATCH_FLAGS: [&str; 3] = ["batch", "shard", "resume"];

pub fn run(c: &Common, path: &Path, global: &Global) -> Result<Outcome> {
    let lines = jobs::read(path)?;
    let (cfg, config_name) = c.source.load()?;
    let argv: Vec<String> = std::env::args().collect();
    let selected: Vec<&BatchLine> = lines
        .iter()
        .filter(|l| c.shard.is_none_or(|s| s.keeps(l.index)))
        .collect();
    // Each job's seed is drawn once: its phrasing and noise are the same in both passes.
    let noises: Vec<(Noise, Option<u64>)> = selected
        .iter()
        .map(|line| match parse(c, line, &argv) {
            Ok(intent) => common::noise(intent.common()),
            Err(_) => common::noise(c),
        })
        .collect();
    let mut phases = Phases::default();
    let model = if c.dry_run {
        None
    } else {
        // First pass: the prompts of every job that can be planned before any output exists
        // (a session's later turns cannot), all encoded before the DiT is loaded.
        let mut prompts = Vec::new();
        for (line, noise) in selected.iter().zip(&noises) {
            let planned = parse(c, line, &argv).and_then(|intent| {
                let jc = intent.common();
                if c.resume && jc.output.as_deref().is_some_and(jobs::finished) {
                    return Ok(Vec::new());
                }
                let job = intent.job(noise.1.unwrap_or(0), &cfg)?;
                let request = common::request(jc, &cfg, &job, noise.0.clone())?;
                Ok(ace::pipeline::request_prompts(&request, &cfg)?)
            });
            prompts.extend(planned.unwrap_or_default());
        }
        Some(crate::model_source::load_model(
            &cfg,
            c.source.model_dir.as_deref(),
            &c.load,
            global,
            &prompts,
            &mut phases,
        )?)
    };
    let generator = model.as_ref().map(|model| Generator {
        model,
        common: c,
        global,
        config_name: &config_name,
    });
    let mut failed = 0;
    for (line, noise) in selected.iter().zip(noises) {
        if ace::cancel::requested() {
            break;
        }
        let start = Instant::now();
        let result = run_job(c, line, &argv, &cfg, noise, generator.as_ref());
        let mut report = serde_json::json!({ "line": line.line, "index": line.index });
        match result {
            Ok(fields) => {
                report["ok"] = true.into();
                for (k, v) in fields {
                    report[k] = v;
                }
            }
            Err(e) => {
                failed += 1;
                report["ok"] = false.into();
                report["error"] = format!("{e:#}").into();
                if !global.quiet {
                    eprintln!("ace: {}:{}: {e:#}", path.display(), line.line);
                }
            }
        }
        report["seconds"]["total"] = round(start.elapsed().as_secs_f64()).into();
        let mut out = std::io::stdout().lock();
        writeln!(out, "{report}")?;
        out.flush()?;
    }
    Ok(if failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

fn round(s: f64) -> f64 {
    (s * 1e3).round() / 1e3
}

/// A job's fields as flags of the batch's own command line, parsed.
fn parse(c: &Common, line: &BatchLine, argv: &[String]) -> Result<Box<dyn Intent>> {
    let fields = line.fields.as_ref().map_err(|e| anyhow!("{e}"))?;
    let mut drop: Vec<String> = BATCH_FLAGS.iter().map(|s| s.to_string()).collect();
    drop.extend(fields.keys().map(|k| jobs::flag_name(k)));
    let mut args = strip(argv, &drop);
    args.extend(jobs::to_args(fields)?);
    let intent = cli::intent_from_args(args)?;
    let jc = intent.common();
    if (&jc.source, &jc.load) != (&c.source, &c.load) {
        bail!(
            "config, preset, model-dir, dtype, text-dtype and the prompt cache are set once for \
             the whole batch, on the command line"
        );
    }
    Ok(intent)
}

/// One job: its fields as flags, then a dry run or a generation on the batch's model.
fn run_job(
    c: &Common,
    line: &BatchLine,
    argv: &[String],
    cfg: &ace::config::AceConfig,
    (noise, seed): (Noise, Option<u64>),
    generator: Option<&Generator>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let intent = parse(c, line, argv)?;
    let jc = intent.common();
    let mut report = serde_json::Map::new();
    if let Some(out) = &jc.output {
        report.insert("output".into(), serde_json::json!(out));
        if c.resume && jobs::finished(out) {
            report.insert("skipped".into(), "output already written".into());
            return Ok(report);
        }
    }
    let start = Instant::now();
    report.insert("seed".into(), serde_json::json!(seed));
    let job = intent.job(seed.unwrap_or(0), cfg)?;
    let request = common::request(jc, cfg, &job, noise)?;
    report.insert("instruction".into(), job.instruction.clone().into());
    if jc.dry_run {
        report.insert("plan".into(), common::plan(&request, cfg)?);
        return Ok(report);
    }
    let (Some(generator), Some(output)) = (generator, &jc.output) else {
        bail!("a job that generates needs an output and a batch run without --dry-run");
    };
    let prepare = start.elapsed().as_secs_f64();
    let job_generator = Generator {
        common: jc,
        ..*generator
    };
    let mut phases = Phases::default();
    let ran = job_generator.generate(&request, seed, output, &mut phases)?;
    intent.finished(&job, output, seed)?;
    report.insert(
        "seconds".into(),
        serde_json::json!({
            "prepare": round(prepare),
            "generate": round(ran.generate_seconds),
            "write": round(ran.write_seconds),
        }),
    );
    report.insert("phases".into(), phases.to_json());
    Ok(report)
}

/// The command line without the flags named in `drop` (and their values).
fn strip(argv: &[String], drop: &[String]) -> Vec<String> {
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
