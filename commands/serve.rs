//! `ace serve`: loads the model once and serves the chat page and the HTTP API
//! (`ace::serve`) until SIGINT, SIGTERM or SIGHUP stops it cleanly (exit status 130, 143, 129,
//! as for every command). Prints `ace: serving on http://ADDRESS` once it listens, and one line
//! per request unless `-q`.

use crate::cli::Global;
use crate::model_source::{LoadOptions, ModelSource, Phases};
use crate::Outcome;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;

/// Serve the chat page and the HTTP API (OpenAI Images API and ACE's own) on one loaded model.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: ModelSource,
    #[command(flatten)]
    pub load: LoadOptions,
    /// Address to listen on; any address but loopback needs --token.
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the line 'ace: serving on ...' says which).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Bearer token asked of every request but GET /ace/health (a browser opens
    /// /?token=TOKEN once).
    #[arg(long, value_name = "TOKEN", env = "ACE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Most jobs waiting for the model; more are answered 429 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub queue: usize,
    /// Folder of the chats (session files as `ace edit --session` writes them) and images
    /// (default: ACE_DATA_DIR, else ~/.local/share/ace/serve).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Longest wait, in seconds, of an OpenAI images call for its images (its job is then
    /// cancelled and the call answered 504).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub timeout: u64,
    /// LoRA adapters folded into the DiT for requests that name none, FILE[:SCALE]
    /// (repeatable), as for `ace edit`.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<ace::model::lora::LoraSpec>,
    /// Folder of LoRA adapters (files or adapter folders) that requests may name in their
    /// `lora` field, NAME[:SCALE]; the DiT is reloaded when a job's adapters differ from the
    /// last job's.
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
}

/// The device's kind, for `/ace/model`.
fn device_name(device: &candle_core::Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else if device.is_metal() {
        "metal"
    } else {
        "cpu"
    }
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    // A refused address is said before the model loads.
    ace::serve::auth::bind_address(&args.host, args.port, args.token.as_deref())?;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => ace::serve::store::default_dir()?,
    };
    if let Some(dir) = &args.lora_dir {
        if !dir.is_dir() {
            anyhow::bail!("--lora-dir {}: not a folder", dir.display());
        }
    }
    let (cfg, config_name) = args.source.load()?;
    let model = crate::model_source::load_model(
        &cfg,
        (args.source.model_dir.as_deref(), "--model-dir"),
        &args.load,
        global,
        std::slice::from_ref(&cfg.model.default_n_prompt),
        &ace::model::lora::LoraSpec::list(&args.loras),
        &mut Phases::default(),
    )?;
    let options = ace::serve::Options {
        host: args.host,
        port: args.port,
        token: args.token,
        queue: args.queue,
        data_dir: data_dir.clone(),
        timeout: std::time::Duration::from_secs(args.timeout.max(1)),
        model_name: config_name,
        device: device_name(&ace::device::open(global.device)?).to_string(),
        dtype: model.dtype().as_str().to_string(),
        loras: ace::serve::loras::LoraLibrary {
            default: args.loras,
            dir: args.lora_dir,
        },
    };
    let log: Option<ace::serve::RequestLog> = if global.quiet {
        None
    } else {
        Some(Arc::new(|line: &ace::serve::requests::Line| {
            eprintln!("ace: {line}")
        }))
    };
    ace::serve::run(model, options, log, |addr| {
        // Said even with -q: it is how a script learns the port.
        eprintln!("ace: serving on http://{addr}");
        log::info!("data folder {}", data_dir.display());
    })?;
    // The server only returns once a signal asked it to stop.
    Ok(Outcome::Interrupted)
}
