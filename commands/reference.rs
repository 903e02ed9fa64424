//! `ace reference`: reference generation and series (`ace::tasks::reference`).

use crate::generate_common::{Common, HistoryArg, Intent, Job};
use crate::generate_inputs::{need, read_input};
use ace::config::AceConfig;
use std::path::PathBuf;

/// Re-create an image after references, or continue a series of 3 to 8.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The target ({image}; the output has its size). Not for --kind series.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// The target's region to change (try-on: the garment region, blanked as the reference
    /// does).
    #[arg(long, value_name = "FILE", requires = "image")]
    pub mask: Option<PathBuf>,
    /// A reference ({image1}, {image2}, ...; for a series {image}, {image1}, ...); repeat.
    #[arg(long = "ref", value_name = "FILE", required_unless_present_any = ["batch", "repeat"])]
    pub refs: Vec<PathBuf>,
    /// What the reference gives: style, face, tryon, subject, multi, or series.
    #[arg(long, value_name = "KIND", required_unless_present_any = ["batch", "repeat"],
          value_parser = clap::builder::PossibleValuesParser::new(ace::tasks::reference::KINDS))]
    pub kind: Option<String>,
    /// What the result shows.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// The instruction as given, instead of a phrasing from presets/tasks.yaml.
    #[arg(long, value_name = "TEXT")]
    pub instruction: Option<String>,
    #[command(flatten)]
    pub history: HistoryArg,
    #[command(flatten)]
    pub common: Common,
}

impl Intent for Args {
    fn history(&self) -> Option<&std::path::Path> {
        self.history.history.as_deref()
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn inputs(&self) -> anyhow::Result<Vec<PathBuf>> {
        Ok(self
            .image
            .iter()
            .chain(&self.mask)
            .chain(&self.refs)
            .cloned()
            .collect())
    }

    fn job(&self, seed: u64, _cfg: &AceConfig) -> anyhow::Result<Job> {
        let target = self
            .image
            .as_ref()
            .map(|p| read_input(p, self.mask.as_deref(), ""))
            .transpose()?;
        let refs = self
            .refs
            .iter()
            .map(|r| read_input(r, None, ""))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Job::from_task(ace::tasks::reference::job(
            need(&self.kind, "--kind")?,
            target,
            refs,
            self.prompt.as_deref(),
            seed,
            self.instruction.as_deref(),
        )?))
    }
}
