//! What a generated image was made from, written into its PNG (an `ace` iTXt chunk holding this
//! record as JSON, and an AUTOMATIC1111-style `parameters` chunk that other tools read) and its
//! JSON result: the command line and folder it ran in, every setting, the model files'
//! identities, every input and mask by path and SHA-256, the LoRAs. `--repeat FILE` runs the
//! recorded command again, after checking that its inputs are still the same files.

use ace::sampler::Spacing;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The PNG chunk holding the record.
pub const KEYWORD: &str = "ace";

/// A file by its path and SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: PathBuf,
    pub sha256: String,
}

impl FileRecord {
    pub fn of(path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            sha256: digest(path)?,
        })
    }
}

/// The SHA-256 of a file, or of a folder's files (an adapter folder): their names and hashes.
fn digest(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return Ok(ace::model::identity::sha256_file(path)?);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(ace::model::identity::weights_identity(&files, None)?)
}

/// Everything one image was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// `ace VERSION`.
    pub software: String,
    /// The command line after the program's name, without the flags that only say where the
    /// output goes (`-o`, `--json`, `--batch`, `--repeat`, ...).
    pub command: Vec<String>,
    /// The folder it ran in (relative paths of the command start there).
    pub cwd: PathBuf,
    pub instruction: String,
    pub negative: String,
    /// The noise seed (`None` when the noise came from a file).
    pub seed: Option<u64>,
    pub noise: Option<String>,
    pub steps: usize,
    pub guide_scale: f64,
    pub guide_rescale: f64,
    pub sampler: String,
    /// The sigma spacing (`--schedule`); records older than it used the default.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    pub strength: f64,
    pub width: u32,
    pub height: u32,
    pub config: String,
    pub device: String,
    pub dtype: String,
    pub text_dtype: String,
    /// Per component (dit, vae, text_encoder), the SHA-256 identity of its weight files.
    pub model: std::collections::BTreeMap<String, String>,
    /// Every input file (images, masks, history, noise).
    pub inputs: Vec<FileRecord>,
    /// LoRA adapters and their scales.
    pub loras: Vec<(FileRecord, f64)>,
    /// With `-n`: how many images were sampled together, and which this one is (from 0).
    pub count: usize,
    pub index: usize,
}

fn default_schedule() -> String {
    Spacing::Default.name().to_string()
}

/// The flags of a run that say where and how its output goes, not what it is.
const OUTPUT_FLAGS: [&str; 8] = [
    "output",
    "json",
    "batch",
    "shard",
    "resume",
    "repeat",
    "dry-run",
    "save-latent",
];

impl RunRecord {
    /// The command line of a run, `argv` with the program's name, without the output flags.
    pub fn command_of(argv: &[String]) -> Vec<String> {
        let drop: Vec<String> = OUTPUT_FLAGS.iter().map(|s| s.to_string()).collect();
        crate::argv::strip(argv, &drop)
            .into_iter()
            .skip(1)
            .collect()
    }

    /// The AUTOMATIC1111 `parameters` text: the prompt, the negative prompt and one line of
    /// settings.
    pub fn parameters(&self) -> String {
        let mut text = self.instruction.clone();
        if !self.negative.is_empty() {
            text.push_str(&format!("\nNegative prompt: {}", self.negative));
        }
        let seed = self.seed.map_or_else(|| "-1".into(), |s| s.to_string());
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, Schedule type: {}, CFG scale: {}, CFG rescale: {}, Seed: {seed}, Size: {}x{}, \
             Model: {}, Denoising strength: {}, Version: {}",
            self.steps,
            self.sampler,
            self.schedule,
            self.guide_scale,
            self.guide_rescale,
            self.width,
            self.height,
            self.config,
            self.strength,
            self.software
        ));
        text
    }

    /// The record of a PNG written by ace.
    pub fn read(png: &Path) -> Result<Self> {
        let file = std::fs::File::open(png).with_context(|| format!("{}", png.display()))?;
        let decoder = png::Decoder::new(std::io::BufReader::new(file));
        let reader = decoder
            .read_info()
            .with_context(|| format!("{}: not a PNG", png.display()))?;
        let info = reader.info();
        // Written as tEXt when plain ASCII, as iTXt otherwise.
        let latin1 = info
            .uncompressed_latin1_text
            .iter()
            .find(|c| c.keyword == KEYWORD)
            .map(|c| Ok(c.text.clone()));
        let text = latin1
            .or_else(|| {
                info.utf8_text
                    .iter()
                    .find(|c| c.keyword == KEYWORD)
                    .map(|c| c.get_text())
            })
            .transpose()
            .with_context(|| format!("{}: unreadable '{KEYWORD}' chunk", png.display()))?;
        let Some(text) = text else {
            bail!(
                "{}: holds no record of how it was made (it was not written by this ace)",
                png.display()
            );
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: the '{KEYWORD}' chunk is not a run record",
                png.display()
            )
        })
    }

    /// Checks that the recorded inputs are the same files still.
    pub fn check_inputs(&self) -> Result<()> {
        for f in self.inputs.iter().chain(self.loras.iter().map(|(f, _)| f)) {
            let path = self.cwd.join(&f.path);
            let now =
                digest(&path).with_context(|| format!("{}: recorded input", path.display()))?;
            if now != f.sha256 {
                bail!(
                    "{}: changed since the image was made (SHA-256 {} then, {now} now)",
                    path.display(),
                    f.sha256
                );
            }
        }
        Ok(())
    }
}

/// The command line `--repeat` runs: the recorded one with its seed made explicit, writing to
/// `output` (made absolute, since the run goes to the recorded folder). An image of an `-n`
/// run is made again with its whole group (sampled together, the same bits), of which the
/// caller keeps image `record.index`.
pub fn repeat_args(record: &RunRecord, output: &Path) -> Result<Vec<String>> {
    let output = std::path::absolute(output).with_context(|| format!("{}", output.display()))?;
    let mut args = vec!["ace".to_string()];
    args.extend(record.command.iter().cloned());
    if let (Some(seed), false) = (record.seed, record.command.iter().any(|a| a == "--seed")) {
        args.push("--seed".into());
        args.push((seed - record.index as u64).to_string());
    }
    args.push("-o".into());
    args.push(output.display().to_string());
    Ok(args)
}
