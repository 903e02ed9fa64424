//! The run-time options of every generation subcommand that users of image tools reach for
//! first: the sampler, `--strength` (start from an input, SDEdit), several images per call,
//! the output kept at the input's size, LoRA adapters applied at load, and re-running a job
//! from the settings a PNG of ace records.

use ace::model::lora::LoraSpec;
use ace::pipeline::ResizeFilter;
use ace::sampler::{SamplerKind, Spacing};
use std::path::PathBuf;

/// How a generation samples and what it writes.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// Sampler: ddim (the reference's), euler, euler_ancestral or dpmpp_2m; the default is the
    /// config's DEFAULT_PARAS.INPUT.SAMPLER (ddim in the official configs).
    #[arg(long, value_name = "NAME")]
    pub sampler: Option<SamplerKind>,
    /// Sigma spacing of the k-diffusion samplers: default (the DDIM timesteps) or karras; the
    /// default is the config's DEFAULT_PARAS.INPUT.SCHEDULE (default).
    #[arg(long, value_name = "NAME")]
    pub schedule: Option<Spacing>,
    /// Start from the first input image's latent noised this far, 0 < S <= 1 (SDEdit: the last
    /// floor(steps * S) steps run); 1 starts from pure noise.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub strength: f64,
    /// Write N images, seeds SEED..SEED+N-1, named STEM-0001.EXT, STEM-0002.EXT, ...; they are
    /// sampled together through the DiT as far as memory allows.
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 1)]
    pub count: usize,
    /// Return the output at the target input's exact size (the model works at its token
    /// budget's size), resized back with --resize-filter.
    #[arg(long)]
    pub keep_size: bool,
    /// Filter of --keep-size: lanczos3 (default), bicubic, bilinear or nearest.
    #[arg(long, value_name = "FILTER", default_value = "lanczos3")]
    pub resize_filter: ResizeFilter,
    /// LoRA adapters applied to the DiT at load, FILE[:SCALE] (repeatable): an `ace train`
    /// LoRA checkpoint (folder or lora.safetensors), or a PEFT / scepter (swift) adapter
    /// folder or file; the weight files are not changed.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<LoraSpec>,
    /// Run again the job that made PNG (its command line, folder and seed, recorded in the
    /// file), after checking that its inputs are the same files; -o names the new output.
    #[arg(long, value_name = "PNG")]
    pub repeat: Option<PathBuf>,
}
