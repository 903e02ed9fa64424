//! `ace analyze <op> --engine ace`: the flags that choose the ACE model for an analysis and
//! load it (`ace::tasks::analysis`). They carry an `ace-` prefix where an operation has a flag
//! of the same name (`--seed`, `--model`).

use crate::cli::Global;
use crate::model_source::{load_config, load_model, LoadOptions, Phases};
use ace::analyze::Operation;
use ace::sampler::Guidance;
use ace::tasks::analysis::AceAnalysis;
use std::path::PathBuf;

/// Which engine computes the analysis, and the ACE model's options.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// builtin (the operation in this program) or ace (the ACE model, asked by instruction).
    #[arg(long, default_value = "builtin", value_parser = ["builtin", "ace"])]
    pub engine: String,
    /// With --engine ace: built-in model config (default ace_0.6b_512).
    #[arg(long, value_name = "NAME", conflicts_with = "ace_config")]
    pub ace_preset: Option<String>,
    /// With --engine ace: model config file (official ACE inference YAML).
    #[arg(long, value_name = "FILE")]
    pub ace_config: Option<PathBuf>,
    /// With --engine ace: folder holding a downloaded model snapshot.
    #[arg(long, value_name = "DIR", env = "ACE_MODEL_DIR")]
    pub ace_model_dir: Option<PathBuf>,
    /// With --engine ace: sampling steps (default: the config's).
    #[arg(long, value_name = "N")]
    pub ace_steps: Option<usize>,
    /// With --engine ace: noise seed (also picks the instruction's phrasing).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub ace_seed: u64,
    /// With --engine ace: the instruction as given, instead of a phrasing of analysis.<op>.
    #[arg(long, value_name = "TEXT")]
    pub ace_instruction: Option<String>,
}

impl EngineArgs {
    /// Whether the ACE model computes the analysis.
    pub fn is_ace(&self) -> bool {
        self.engine == "ace"
    }

    /// The model-based operation `name`.
    pub fn build(&self, name: &'static str, global: &Global) -> anyhow::Result<Box<dyn Operation>> {
        let (cfg, _) = load_config(self.ace_config.as_deref(), self.ace_preset.as_deref())?;
        let defaults = &cfg.default_paras.input;
        let guidance = Guidance::new(defaults.guide_scale, defaults.guide_rescale)?;
        let steps = self.ace_steps.unwrap_or(defaults.sample_steps);
        let instruction =
            AceAnalysis::instruction(name, self.ace_seed, self.ace_instruction.as_deref())?;
        let load = LoadOptions {
            dtype: "f32".into(),
            text_dtype: None,
            no_prompt_cache: false,
        };
        let model = load_model(
            &cfg,
            (self.ace_model_dir.as_deref(), "--ace-model-dir"),
            &load,
            global,
            &AceAnalysis::prompts(&instruction, guidance, &cfg)?,
            &[],
            &mut Phases::default(),
        )?;
        Ok(Box::new(AceAnalysis::new(
            name,
            model,
            instruction,
            steps,
            guidance,
            self.ace_seed,
        )))
    }
}
