//! Batches of image-to-image work (`ace analyze`, and later `ace eval`/`ace data`): where each
//! input's output goes (one file, a folder mirroring the inputs' names, or standard output),
//! checked so that no input is overwritten and no output is written twice, then the work run in
//! parallel with one report per input. Outputs are written atomically, so a failed or
//! interrupted item leaves no partial file.

use crate::imageio::{self, OutputFormat};
use crate::inputs::{Input, Source};
use crate::{cancel, output, Error, Result};
use image::DynamicImage;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where an output is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A file (written atomically) or a device such as `/dev/null` (written directly).
    File(PathBuf),
    /// Standard output.
    Stdout,
}

impl Destination {
    /// The path used in messages: the file, or `-` for standard output.
    pub fn display_path(&self) -> &Path {
        match self {
            Destination::File(p) => p,
            Destination::Stdout => Path::new("-"),
        }
    }

    /// Encodes `image` in `format` and writes it here ([`output::write`]).
    pub fn write(&self, image: &DynamicImage, format: OutputFormat) -> Result<()> {
        output::write(self.display_path(), &imageio::encode(image, format)?)
    }
}

/// One input with its planned output, or the reason it has none.
#[derive(Debug)]
pub struct Job {
    pub input: Input,
    /// The destination and format, or why the input cannot be written anywhere.
    pub output: Result<(Destination, OutputFormat), String>,
}

/// Plans the output of every input. `output` is `-` (standard output), a file or device, or a
/// folder. It is a folder when it exists as one, ends in `/`, or there are several inputs or
/// `plural` ones (from a folder or a glob pattern; a file name with an image extension is then
/// an error); each output in a folder keeps its
/// input's relative name with the extension of `format` (PNG by default). A single file's
/// format follows its extension ([`OutputFormat::for_output`]). Without `output`, a single
/// standard input goes to standard output. Errors that concern the whole batch come back as
/// `Err`; an input that would be overwritten or an output name used twice makes that job's
/// `output` an error message.
pub fn plan(
    inputs: Vec<Input>,
    plural: bool,
    output: Option<&Path>,
    format: Option<OutputFormat>,
) -> Result<Vec<Job>> {
    let single_stdin = inputs.len() == 1 && inputs[0].source == Source::Stdin;
    let output =
        match output {
            Some(o) => o,
            None if single_stdin => Path::new("-"),
            None => return Err(Error::invalid(
                "output",
                "missing -o/--output (a file for one input, a folder for several, - for stdout)",
            )),
        };
    let as_folder = output.is_dir()
        || output
            .as_os_str()
            .to_string_lossy()
            .ends_with(std::path::MAIN_SEPARATOR)
        || inputs.len() > 1
        || plural;
    if !as_folder {
        let f = OutputFormat::for_output(output, format)?;
        let dest = match output::Target::of(output) {
            output::Target::Stdout => Destination::Stdout,
            _ => Destination::File(output.to_path_buf()),
        };
        return Ok(guard(into_jobs(inputs, |_| Ok((dest.clone(), f)))));
    }
    let several = |what: &str| {
        Error::output(
            output,
            format!(
                "{what} but there are {} inputs (give a folder)",
                inputs.len()
            ),
        )
    };
    match output::Target::of(output) {
        output::Target::Stdout => return Err(several("standard output takes one image")),
        output::Target::Special(_) => return Err(several("names a device")),
        output::Target::File(_)
            if !output.is_dir() && OutputFormat::from_path(output).is_some() =>
        {
            return Err(several("names one image file"))
        }
        output::Target::File(_) => {}
    }
    let f = format.unwrap_or(OutputFormat::Png);
    let mut taken: HashMap<PathBuf, PathBuf> = HashMap::new();
    let jobs = into_jobs(inputs, |input| {
        let dest = output.join(input.relative.with_extension(f.extension()));
        match taken.get(&dest) {
            Some(first) => Err(format!(
                "{} would be written twice (from {} and {})",
                dest.display(),
                first.display(),
                input.display_path().display()
            )),
            None => {
                taken.insert(dest.clone(), input.display_path().to_path_buf());
                Ok((Destination::File(dest), f))
            }
        }
    });
    Ok(guard(jobs))
}

fn into_jobs(
    inputs: Vec<Input>,
    mut destination: impl FnMut(&Input) -> Result<(Destination, OutputFormat), String>,
) -> Vec<Job> {
    inputs
        .into_iter()
        .map(|input| Job {
            output: destination(&input),
            input,
        })
        .collect()
}

/// Turns every job whose output is one of the inputs into an error.
fn guard(mut jobs: Vec<Job>) -> Vec<Job> {
    let inputs = output::InputSet::new(jobs.iter().filter_map(|j| match &j.input.source {
        Source::File(p) => Some(p.as_path()),
        Source::Stdin => None,
    }));
    for job in &mut jobs {
        if let Ok((Destination::File(p), _)) = &job.output {
            if let Err(e) = inputs.refuse(p) {
                job.output = Err(e.to_string());
            }
        }
    }
    jobs
}

/// What happened to one job.
#[derive(Debug)]
pub struct Report<'a> {
    pub input: &'a Input,
    /// The planned output, if there was one.
    pub output: Option<&'a Destination>,
    /// Wall time of reading, computing and writing, in milliseconds.
    pub millis: f64,
    /// Success, or the error (it names the file concerned).
    pub result: Result<()>,
}

/// Totals of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub done: usize,
    pub failed: usize,
    /// Jobs not started because a stop was requested ([`cancel::requested`]).
    pub skipped: usize,
}

/// Runs `work` on every job in parallel (rayon's pool): read the input, compute, write the
/// output. `report` is called once per job started, from the worker threads, as each ends.
pub fn run<W, R>(jobs: &[Job], work: W, report: R) -> Summary
where
    W: Fn(DynamicImage) -> Result<DynamicImage> + Sync,
    R: Fn(Report) + Sync,
{
    let outcomes: Vec<Option<bool>> = jobs
        .par_iter()
        .map(|job| {
            if cancel::requested() {
                return None;
            }
            let start = Instant::now();
            let result = match &job.output {
                Err(message) => Err(Error::invalid("output", message.clone())),
                Ok((dest, format)) => job
                    .input
                    .load()
                    .and_then(&work)
                    .and_then(|out| dest.write(&out, *format)),
            };
            let ok = result.is_ok();
            report(Report {
                input: &job.input,
                output: job.output.as_ref().ok().map(|(d, _)| d),
                millis: start.elapsed().as_secs_f64() * 1e3,
                result,
            });
            Some(ok)
        })
        .collect();
    let mut summary = Summary::default();
    for o in outcomes {
        match o {
            Some(true) => summary.done += 1,
            Some(false) => summary.failed += 1,
            None => summary.skipped += 1,
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, names: &[&str]) -> Vec<Input> {
        names
            .iter()
            .map(|n| {
                let p = dir.join(n);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, b"x").unwrap();
                Input::file(p)
            })
            .collect()
    }

    fn dest(job: &Job) -> PathBuf {
        job.output.as_ref().unwrap().0.display_path().to_path_buf()
    }

    #[test]
    fn folder_outputs_keep_names_and_refuse_collisions() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = files(dir.path(), &["a/x.png", "b/x.jpg", "b/y.jpg"]);
        let out = dir.path().join("out");
        let jobs = plan(inputs, false, Some(&out), Some(OutputFormat::Webp)).unwrap();
        assert_eq!(dest(&jobs[0]), out.join("x.webp"));
        assert!(jobs[1].output.as_ref().unwrap_err().contains("twice"));
        assert_eq!(dest(&jobs[2]), out.join("y.webp"));
    }

    #[test]
    fn single_file_stdout_and_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let one = files(dir.path(), &["p.png"]);
        let target = dir.path().join("edges.jpg");
        let jobs = plan(one.clone(), false, Some(&target), None).unwrap();
        assert_eq!(
            jobs[0].output.as_ref().unwrap(),
            &(Destination::File(target), OutputFormat::Jpeg)
        );

        let jobs = plan(one.clone(), false, Some(Path::new("-")), None).unwrap();
        assert_eq!(jobs[0].output.as_ref().unwrap().0, Destination::Stdout);
        let jobs = plan(vec![Input::stdin()], false, None, None).unwrap();
        assert_eq!(jobs[0].output.as_ref().unwrap().0, Destination::Stdout);

        let two = files(dir.path(), &["p.png", "q.png"]);
        assert!(plan(two.clone(), false, Some(Path::new("-")), None).is_err());
        assert!(plan(two.clone(), false, Some(&dir.path().join("one.png")), None).is_err());
        assert!(plan(one.clone(), false, None, None).is_err());

        // One input and a name without an image extension: a file, not a folder.
        let noext = dir.path().join("noext");
        let jobs = plan(one.clone(), false, Some(&noext), None).unwrap();
        assert_eq!(
            jobs[0].output.as_ref().unwrap(),
            &(Destination::File(noext), OutputFormat::Png)
        );
        assert!(plan(
            one,
            false,
            Some(&dir.path().join("x.jpg")),
            Some(OutputFormat::Png)
        )
        .is_err());
    }

    #[test]
    fn never_overwrites_an_input() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = files(dir.path(), &["p.png", "q.png"]);
        let jobs = plan(inputs.clone(), false, Some(dir.path()), None).unwrap();
        for job in &jobs {
            let msg = job.output.as_ref().unwrap_err();
            assert!(msg.contains("refusing to overwrite an input"), "{msg}");
        }
        let jobs = plan(
            inputs[..1].to_vec(),
            false,
            Some(&dir.path().join("p.png")),
            None,
        )
        .unwrap();
        assert!(jobs[0].output.is_err());
    }

    #[test]
    fn run_reports_every_job_and_writes_nothing_for_failures() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.png");
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3])));
        imageio::save(&img, &good, None).unwrap();
        let bad = files(dir.path(), &["bad.png"]).remove(0);
        let out = dir.path().join("out");
        let jobs = plan(vec![Input::file(&good), bad], false, Some(&out), None).unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let summary = run(&jobs, Ok, |r| {
            seen.lock()
                .unwrap()
                .push((r.input.relative.clone(), r.result.is_ok()))
        });
        assert_eq!(
            summary,
            Summary {
                done: 1,
                failed: 1,
                skipped: 0
            }
        );
        assert_eq!(seen.into_inner().unwrap().len(), 2);
        assert_eq!(
            imageio::load(&out.join("good.png")).unwrap().to_rgb8(),
            img.to_rgb8()
        );
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    }
}
