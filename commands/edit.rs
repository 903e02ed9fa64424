//! `ace edit`: instruction-driven editing of one or more images (`{image}`, `{image1}`, ...),
//! with the element edits (`--kind`), semantic presets (`--style`, `--face keep`) and
//! multi-turn sessions (`--session`) of `ace::tasks`.

use crate::generate_common::{Common, HistoryArg, Intent, Job};
use crate::generate_inputs::{mask_paths, read_input, read_inputs};
use ace::config::AceConfig;
use ace::pipeline::Turn;
use ace::tasks::{element, session, style};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Edit images by instruction.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input image; repeat for {image1}, {image2}, ... (with --session, defaults to the
    /// previous turn's output).
    #[arg(
        long = "image",
        value_name = "FILE",
        required_unless_present_any = ["session", "batch", "repeat"]
    )]
    pub images: Vec<PathBuf>,
    /// Mask of the image at the same position (white = edit); 'none' or '' for no mask.
    #[arg(long = "mask", value_name = "FILE")]
    pub masks: Vec<String>,
    /// Task of the image at the same position (e.g. inpainting); 'none' or '' for none.
    #[arg(long = "task", value_name = "TASK")]
    pub tasks: Vec<String>,
    /// The edit instruction; {image} names the first image. With --kind, --style or --face it
    /// replaces the phrasing drawn from presets/tasks.yaml.
    #[arg(long, value_name = "TEXT")]
    pub instruction: Option<String>,
    /// Element edit: text-render, text-remove, object-add or object-remove (inside --mask
    /// when given).
    #[arg(long, value_name = "KIND", conflicts_with_all = ["style", "face"],
          value_parser = clap::builder::PossibleValuesParser::new(element::KINDS.map(|(k, _)| k)))]
    pub kind: Option<String>,
    /// Text to render or remove.
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// Colour of rendered text.
    #[arg(long, value_name = "COLOUR")]
    pub color: Option<String>,
    /// Where rendered text goes ("top left", "on the sign").
    #[arg(long, value_name = "WHERE")]
    pub position: Option<String>,
    /// Object to add or remove.
    #[arg(long, value_name = "NAME")]
    pub object: Option<String>,
    /// Restyle: watercolor, oil, sketch, ink, anime, cartoon, pixel, 3d, clay, vangogh,
    /// ghibli, lego, or any style in words.
    #[arg(long, value_name = "NAME", conflicts_with = "face")]
    pub style: Option<String>,
    /// `keep`: change the picture (--prompt) but keep the person's face.
    #[arg(long, value_name = "keep", value_parser = ["keep"])]
    pub face: Option<String>,
    /// What to change, with --face keep.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Multi-turn session file (JSON lines): earlier turns are the history and this turn is
    /// appended after its output is written.
    #[arg(long, value_name = "FILE.jsonl")]
    pub session: Option<PathBuf>,
    #[command(flatten)]
    pub history: HistoryArg,
    #[command(flatten)]
    pub common: Common,
}

impl Args {
    /// The earlier turns of the session (none without one).
    fn turns(&self) -> Result<Vec<session::SessionTurn>> {
        Ok(match &self.session {
            Some(p) => session::read(p)?,
            None => Vec::new(),
        })
    }

    /// The input images: as given, or the previous turn's output.
    fn image_paths(&self, turns: &[session::SessionTurn]) -> Result<Vec<PathBuf>> {
        if !self.images.is_empty() {
            return Ok(self.images.clone());
        }
        match session::previous_output(turns) {
            Some(p) => Ok(vec![p.to_path_buf()]),
            None if self.session.is_some() => {
                bail!("the session has no turn yet: the first turn needs --image")
            }
            None => bail!("missing --image"),
        }
    }
}

impl Intent for Args {
    fn history(&self) -> Option<&std::path::Path> {
        self.history.history.as_deref()
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn inputs(&self) -> Result<Vec<PathBuf>> {
        let turns = self.turns()?;
        let mut paths = self.image_paths(&turns).unwrap_or_default();
        paths.extend(mask_paths(&self.masks));
        for h in session::history(&turns) {
            paths.push(h.image);
            paths.extend(h.mask);
        }
        Ok(paths)
    }

    fn job(&self, seed: u64, _cfg: &AceConfig) -> Result<Job> {
        if self.session.is_some() && self.common.run.count > 1 {
            bail!("--session makes one image per turn (not -n)");
        }
        let turns = self.turns()?;
        let mut inputs = read_inputs(&self.image_paths(&turns)?, &self.masks, &self.tasks)?;
        let explicit = self.instruction.as_deref();
        let preset = self.kind.is_some() || self.style.is_some() || self.face.is_some();
        if preset && inputs.len() != 1 {
            bail!(
                "--kind, --style and --face edit one image, got {}",
                inputs.len()
            );
        }
        let mut job = if let Some(kind) = &self.kind {
            let first = inputs.remove(0);
            let mask_name = format!("mask of {}", first.name);
            let el = element::Element {
                text: self.text.as_deref(),
                color: self.color.as_deref(),
                position: self.position.as_deref(),
                object: self.object.as_deref(),
            };
            let mask = first.mask.map(|m| (m, mask_name.as_str()));
            Job::from_task(element::job(
                kind,
                first.image,
                &first.name,
                mask,
                &el,
                seed,
                explicit,
            )?)
        } else if let Some(name) = &self.style {
            Job::from_task(style::restyle(inputs.remove(0), name, seed, explicit)?)
        } else if self.face.is_some() {
            Job::from_task(style::keep_face(
                inputs.remove(0),
                self.prompt.as_deref(),
                seed,
                explicit,
            )?)
        } else {
            let Some(instruction) = explicit else {
                bail!("missing --instruction (or --kind, --style, --face)");
            };
            Job {
                instruction: instruction.to_string(),
                images: inputs,
                size: (None, None),
                tar_index: None,
                history: Vec::new(),
                ..Job::default()
            }
        };
        job.history = session::history(&turns)
            .into_iter()
            .map(|h| {
                Ok(Turn {
                    input: read_input(&h.image, h.mask.as_deref(), &h.task)?,
                    instruction: h.instruction,
                })
            })
            .collect::<Result<_>>()?;
        Ok(job)
    }

    fn finished(&self, job: &Job, output: &Path, seed: Option<u64>) -> Result<()> {
        let Some(path) = &self.session else {
            return Ok(());
        };
        if output.as_os_str() == "-" {
            bail!("--session needs the output in a file (not -o -) to continue from it");
        }
        let turns = self.turns()?;
        let inputs = self
            .image_paths(&turns)?
            .iter()
            .map(|p| session::absolute(p))
            .collect::<ace::Result<Vec<_>>>()?;
        let masks = (0..inputs.len())
            .map(|i| {
                self.masks
                    .get(i)
                    .filter(|m| !m.is_empty() && !m.eq_ignore_ascii_case("none"))
                    .map(|m| session::absolute(Path::new(m)))
                    .transpose()
            })
            .collect::<ace::Result<Vec<_>>>()?;
        let tasks = job.images.iter().map(|i| i.task.clone()).collect();
        session::append(
            path,
            &session::SessionTurn {
                inputs,
                masks,
                tasks,
                instruction: job.instruction.clone(),
                output: session::absolute(output)?,
                seed,
            },
        )?;
        Ok(())
    }
}
