//! Which model a command loads and how: `--preset`/`--config` and `--model-dir`
//! ([`ModelSource`], shared by every command that loads the model and by `ace model`), and
//! loading it on the chosen device in the chosen dtypes ([`LoadOptions`]): the prompts first,
//! then the DiT and the VAE, each phase timed ([`Phases`]).

use crate::cli::Global;
use ace::config::AceConfig;
use ace::device::parse_dtype;
use ace::memory::PhaseUse;
use ace::model::text::PromptCache;
use ace::pipeline::{encode_prompts_first, text_embedder, Ace};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::path::{Path, PathBuf};

/// Which model: a built-in preset or a config file, and where its weights are. Shared by every
/// command that loads the model (and by `ace model`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ModelSource {
    /// Built-in model config: ace_0.6b_512 (default) or ace_0.6b_1024.
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    pub preset: Option<String>,
    /// Model config file in the official ACE inference YAML schema.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder holding a downloaded model snapshot (resolves hf:// and ms:// weight names).
    #[arg(long, value_name = "DIR", env = "ACE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
}

impl ModelSource {
    /// The config the flags name (the default preset without either), and its name.
    pub fn load(&self) -> Result<(AceConfig, String)> {
        load_config(self.config.as_deref(), self.preset.as_deref())
    }
}

/// How the weights are used: the DiT's and VAE's dtype, the T5's, and the prompt cache.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct LoadOptions {
    /// Weight dtype of the DiT and the VAE: f32, bf16, f16 (a GPU only) or auto (bf16 on a CUDA
    /// GPU or a CPU with AVX512-BF16/AMX, else f32). bf16 on the CPU: the DiT's linear layers,
    /// the VAE's convolutions and the T5's products in bf16, the rest in f32.
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Weight dtype of the T5 text encoder: f32, bf16 or f16 (default: the config's T5_DTYPE,
    /// bf16 for the released models). On the CPU its products run in f32 from these weights
    /// (in bf16 under `--dtype bf16`).
    #[arg(long, value_name = "DTYPE")]
    pub text_dtype: Option<String>,
    /// Encode every prompt with the T5 instead of looking it up in the prompt-embedding cache
    /// (ACE_CACHE_DIR, default ~/.cache/ace).
    #[arg(long)]
    pub no_prompt_cache: bool,
}

/// The time and peak memory of each phase of a run, in order, for `-v` and `--json`.
#[derive(Debug, Default)]
pub struct Phases(Vec<(String, PhaseUse)>);

impl Phases {
    /// Runs `f` as the phase `name`.
    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let (out, used) = ace::memory::measure(f);
        self.push(name, used);
        out
    }

    /// Records a phase measured elsewhere; says it under -v.
    pub fn push(&mut self, name: &str, used: PhaseUse) {
        log::info!(
            "{name}: {:.2} s, peak RSS {:.2} GiB",
            used.seconds,
            used.peak_rss_mib / 1024.0
        );
        self.0.push((name.to_string(), used));
    }

    /// `{"name": {"seconds", "peak_rss_mib"}, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(n, u)| (n.clone(), serde_json::json!(u)))
                .collect(),
        )
    }
}

/// The prompt-embedding cache, unless `disabled`; a cache folder that cannot be used is a
/// warning, and the run goes on without it.
pub fn prompt_cache(disabled: bool) -> Option<PromptCache> {
    if disabled {
        return None;
    }
    match PromptCache::default_location() {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("prompt cache not used: {e}");
            None
        }
    }
}

/// The weight files of `cfg` (under `model_dir` when given). When they are missing and no
/// folder was given, the error says how to get them, naming the command's flag for the folder
/// (`dir_flag`).
pub fn model_files(
    cfg: &AceConfig,
    model_dir: Option<&Path>,
    dir_flag: &str,
) -> Result<ace::config::ModelFiles> {
    cfg.model_files(model_dir).map_err(|e| {
        let remote = cfg
            .weight_specs()
            .is_ok_and(|specs| specs.iter().any(|(_, s)| s.contains("://")));
        if model_dir.is_none() && remote {
            anyhow::anyhow!(
                "{e}\npass {dir_flag} DIR (a downloaded snapshot of the model repository) or \
                 fetch it into the Hugging Face cache with `ace model download`"
            )
        } else {
            anyhow::Error::new(e)
        }
    })
}

/// Loads the model of `cfg` (weights under `model_dir`, given with `dir_flag`) for a run that
/// needs `prompts`: first the text phase, which encodes them and the image indicators (T5
/// weights opened only for prompts the cache lacks, and let go of afterwards), then the DiT and
/// the VAE (`loras` folded into the DiT). Each is one of `phases`.
pub fn load_model(
    cfg: &AceConfig,
    (model_dir, dir_flag): (Option<&Path>, &str),
    opts: &LoadOptions,
    global: &Global,
    prompts: &[String],
    loras: &ace::pipeline::Loras,
    phases: &mut Phases,
) -> Result<Ace> {
    let files = model_files(cfg, model_dir, dir_flag)?;
    let text_dtype = opts
        .text_dtype
        .as_deref()
        .map(parse_dtype)
        .transpose()
        .context("--text-dtype")?;
    let device = ace::device::open(global.device)?;
    let dtype = model_dtype(&opts.dtype, &device)?;
    let text = phases.run("text", || -> Result<_> {
        // `--dtype bf16` on the CPU: the T5's products in bf16 too, as autocast runs them.
        let text = text_embedder(
            cfg,
            &files,
            &device,
            text_dtype,
            prompt_cache(opts.no_prompt_cache),
        )?
        .with_bf16_products(ace::model::cpu_bf16::applies(&device, dtype));
        encode_prompts_first(cfg, &text, prompts)?;
        Ok(text)
    })?;
    let r = text.report();
    log::info!(
        "text: {} prompts from the cache, {} encoded in {} pass(es) over the T5 ({:.2} s)",
        r.cached,
        r.encoded,
        r.encoder_passes,
        r.encoder_seconds
    );
    // A bar for the weights, shown once loading has taken a second.
    let start = std::time::Instant::now();
    let mut bar = None;
    let mut progress = |done: usize, total: usize| {
        if bar.is_none() && start.elapsed().as_secs_f64() > 1.0 {
            bar = Some(crate::ui::progress_bar(
                global,
                total as u64,
                "loading",
                "bytes",
            ));
        }
        if let Some(Some(b)) = &bar {
            b.set_position(done as u64);
        }
    };
    let model = phases.run("load", || {
        Ace::load(cfg, &files, &device, dtype, text, loras, &mut progress)
    })?;
    if let Some(Some(b)) = bar {
        b.finish_and_clear();
    }
    Ok(model)
}

/// The DiT's and VAE's dtype for `--dtype NAME` on `device`. `auto` is bf16 where that is fast
/// (a CUDA GPU, a CPU with bf16 instructions) and f32 elsewhere, with a warning on a CPU
/// without them; an explicit bf16 on such a CPU, or f16 on any CPU, is an error.
fn model_dtype(name: &str, device: &candle_core::Device) -> Result<DType> {
    let cpu_bf16 = || ace::kernels::cpu_bf16_support();
    if name.eq_ignore_ascii_case("auto") {
        return Ok(if device.is_cuda() {
            DType::BF16
        } else if device.is_cpu() {
            match cpu_bf16() {
                Ok(()) => DType::BF16,
                Err(why) => {
                    log::warn!("--dtype auto: {why}; running in f32");
                    DType::F32
                }
            }
        } else {
            DType::F32
        });
    }
    let dtype = parse_dtype(name).context("--dtype")?;
    if device.is_cpu() {
        match dtype {
            DType::F16 => bail!("--dtype {name} needs a GPU (on the CPU: bf16 or f32)"),
            DType::BF16 => {
                if let Err(why) = cpu_bf16() {
                    bail!("--dtype {name} on the CPU: {why}; use --dtype f32 (or auto)")
                }
            }
            _ => {}
        }
    }
    Ok(dtype)
}

/// The config a --config file or --preset names (the default preset without either), and its
/// name for reports.
pub fn load_config(config: Option<&Path>, preset: Option<&str>) -> Result<(AceConfig, String)> {
    Ok(match (config, preset) {
        (Some(path), _) => (AceConfig::load(path)?, path.display().to_string()),
        (None, Some(name)) => (AceConfig::preset(name)?, name.to_string()),
        (None, None) => (
            AceConfig::preset(ace::config::DEFAULT_PRESET)?,
            ace::config::DEFAULT_PRESET.to_string(),
        ),
    })
}
