//! `--batch FILE.jsonl` of every generation subcommand: each line's fields become flags of the
//! same subcommand (they replace the command line's flags of the same name), the model is
//! loaded once, every job writes its output and one JSON result line (seed, timings, or the
//! error) on stdout, failed jobs do not stop the batch (exit 1 at the end), `--shard I/N` takes
//! every N-th job and `--resume` skips jobs whose output is already written. Every line is read
//! before the model loads: two jobs that would write the same file stop the batch there, and a
//! job whose output is one of its inputs fails without running.

use crate::cli::{self, Global};
use crate::generate_common::{self as common, Common, Intent};
use crate::generate_output::Generator;
use crate::model_source::Phases;
use crate::Outcome;
use ace::tasks::batch::{self as jobs, BatchLine};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags of the batch itself, dropped from every job's command line.
const BATCH_FLAGS: [&str; 3] = ["batch", "shard", "resume"];

pub fn run(c: &Common, path: &Path, global: &Global) -> Result<Outcome> {
    let lines = jobs::read(path)?;
    let argv: Vec<String> = std::env::args().collect();
    // Every job's flags are read before any work: two jobs writing one file stop the batch.
    let intents: Vec<Result<ParsedJob>> =
        lines.iter().map(|line| parse_job(c, line, &argv)).collect();
    refuse_shared_outputs(path, &lines, &intents)?;
    let (cfg, config_name) = c.source.load()?;
    let model = if c.dry_run {
        None
    } else {
        let prompts = batch_prompts(c, &lines, &intents, &cfg);
        Some(crate::model_source::load_model(
            &cfg,
            (c.source.model_dir.as_deref(), "--model-dir"),
            &c.load,
            global,
            &prompts,
            &[],
            &mut Phases::default(),
        )?)
    };
    let generator = model.as_ref().map(|model| Generator {
        model,
        common: c,
        global,
        config_name: &config_name,
    });
    let mut failed = 0;
    let mut stopped = false;
    for (line, intent) in lines.iter().zip(&intents) {
        if c.shard.is_some_and(|s| !s.keeps(line.index)) {
            continue;
        }
        if ace::cancel::requested() {
            stopped = true;
            break;
        }
        let start = Instant::now();
        let mut report = serde_json::json!({ "line": line.line, "index": line.index });
        if let Some(output) = line.output() {
            report["output"] = serde_json::json!(output);
        }
        let result = match intent {
            Ok(job) => run_job(c, job, &cfg, generator.as_ref()),
            Err(e) => Err(anyhow!("{}", crate::ui::one_line(e))),
        };
        match result {
            Ok(fields) => {
                report["ok"] = true.into();
                for (k, v) in fields {
                    report[k] = v;
                }
            }
            Err(e) => {
                failed += 1;
                let message = crate::ui::one_line(&e);
                report["ok"] = false.into();
                report["error"] = message.clone().into();
                if !global.quiet {
                    eprintln!("ace: {}:{}: {message}", path.display(), line.line);
                }
            }
        }
        report["seconds"]["total"] = round(start.elapsed().as_secs_f64()).into();
        let mut out = std::io::stdout().lock();
        writeln!(out, "{report}")?;
        out.flush()?;
    }
    Ok(if stopped {
        Outcome::Interrupted
    } else if failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

fn round(s: f64) -> f64 {
    (s * 1e3).round() / 1e3
}

/// A job of the batch: its command line (the batch's own, its fields replacing the flags of
/// the same name) and the subcommand's flags parsed from it.
struct ParsedJob {
    args: Vec<String>,
    intent: Box<dyn Intent>,
}

/// A job's command line, parsed.
fn parse_job(c: &Common, line: &BatchLine, argv: &[String]) -> Result<ParsedJob> {
    let fields = line.fields.as_ref().map_err(|e| anyhow!("{e}"))?;
    let mut drop: Vec<String> = BATCH_FLAGS.iter().map(|s| s.to_string()).collect();
    drop.extend(fields.keys().map(|k| jobs::flag_name(k)));
    let mut args = crate::argv::strip(argv, &drop);
    args.extend(jobs::to_args(fields)?);
    let intent = cli::intent_from_args(args.clone())?;
    let jc = intent.common();
    if (&jc.source, &jc.load) != (&c.source, &c.load) {
        bail!(
            "config, preset, model-dir, dtype, text-dtype and the prompt cache are set once for \
             the whole batch, on the command line"
        );
    }
    Ok(ParsedJob { args, intent })
}

/// Refuses the batch when two jobs write the same file (their output or `--save-latent`).
fn refuse_shared_outputs(
    path: &Path,
    lines: &[BatchLine],
    intents: &[Result<ParsedJob>],
) -> Result<()> {
    let mut seen: HashMap<ace::output::FileKey, (usize, PathBuf)> = HashMap::new();
    for (line, job) in lines.iter().zip(intents) {
        let Ok(job) = job else { continue };
        let jc = job.intent.common();
        let outputs: Vec<PathBuf> = match &jc.output {
            Some(o) => common::targets(jc, o, None).map_or_else(
                |_| vec![o.clone()],
                |t| t.into_iter().map(|t| t.output).collect(),
            ),
            None => Vec::new(),
        };
        for out in outputs.iter().chain(&jc.save_latent) {
            if !ace::output::Target::of(out).is_file() {
                continue;
            }
            let Some(key) = ace::output::FileKey::of(out) else {
                continue;
            };
            if let Some((first, _)) = seen.get(&key) {
                bail!(
                    "{}: lines {first} and {} both write {}; no job was run",
                    path.display(),
                    line.line,
                    out.display()
                );
            }
            seen.insert(key, (line.line, out.clone()));
        }
    }
    Ok(())
}

/// The prompts of every job the batch will run that can be planned before any output exists
/// (a session's later turns cannot: they are encoded when they run), to encode before the
/// DiT is loaded.
fn batch_prompts(
    c: &Common,
    lines: &[BatchLine],
    intents: &[Result<ParsedJob>],
    cfg: &ace::config::AceConfig,
) -> Vec<String> {
    let mut prompts = Vec::new();
    for (line, job) in lines.iter().zip(intents) {
        let Ok(ParsedJob { intent, .. }) = job else {
            continue;
        };
        let jc = intent.common();
        let skipped = c.shard.is_some_and(|s| !s.keeps(line.index))
            || (c.resume && jc.output.as_deref().is_some_and(jobs::finished));
        if skipped {
            continue;
        }
        let (noise, seed) = common::noise(jc);
        let planned = intent
            .job(seed.unwrap_or(jc.seed), cfg)
            .and_then(|job| common::request(intent.as_ref(), cfg, &job, noise))
            .and_then(|request| Ok(ace::pipeline::request_prompts(&request, cfg)?));
        prompts.extend(planned.unwrap_or_default());
    }
    prompts
}

/// One job: a dry run or a generation on the batch's model.
fn run_job(
    c: &Common,
    parsed: &ParsedJob,
    cfg: &ace::config::AceConfig,
    generator: Option<&Generator>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let intent = parsed.intent.as_ref();
    let jc = intent.common();
    let mut report = serde_json::Map::new();
    if let Some(out) = &jc.output {
        if c.resume && jobs::finished(out) {
            report.insert("skipped".into(), "output already written".into());
            return Ok(report);
        }
    }
    let start = Instant::now();
    let (noise, seed) = common::noise(jc);
    report.insert("seed".into(), serde_json::json!(seed));
    let job = intent.job(seed.unwrap_or(jc.seed), cfg)?;
    let request = common::request(intent, cfg, &job, noise)?;
    report.insert("instruction".into(), job.instruction.clone().into());
    if jc.dry_run {
        report.insert("plan".into(), common::plan(&request, cfg)?);
        return Ok(report);
    }
    let (Some(generator), Some(output)) = (generator, &jc.output) else {
        bail!("a job that generates needs an output and a batch run without --dry-run");
    };
    let targets = common::targets(jc, output, None)?;
    for t in &targets {
        common::check_outputs(intent, &t.output)?;
    }
    let prepare = start.elapsed().as_secs_f64();
    generator
        .model
        .use_loras(&ace::model::lora::LoraSpec::list(&jc.run.loras))?;
    let job_generator = Generator {
        common: jc,
        ..*generator
    };
    let mut inputs = intent.inputs()?;
    inputs.extend(common::common_inputs(intent)?);
    let run = crate::generate_output::Run {
        request: &request,
        targets,
        command: crate::record::RunRecord::command_of(&parsed.args),
        inputs,
        only: None,
    };
    let mut phases = Phases::default();
    let ran = job_generator.generate(&run, &mut phases)?;
    if let [target] = run.targets.as_slice() {
        intent.finished(&job, &target.output, target.seed)?;
    }
    if ran.len() > 1 {
        report.insert(
            "outputs".into(),
            serde_json::json!(run.targets.iter().map(|t| &t.output).collect::<Vec<_>>()),
        );
    }
    report.insert(
        "seconds".into(),
        serde_json::json!({
            "prepare": round(prepare),
            "generate": round(ran.first().map_or(0.0, |r| r.generate_seconds)),
            "write": round(ran.iter().map(|r| r.write_seconds).fold(0.0, f64::max)),
        }),
    );
    report.insert("phases".into(), phases.to_json());
    Ok(report)
}
