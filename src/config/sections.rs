//! The sections of the official inference YAML as typed structs: `DEFAULT_PARAS.INPUT` (the
//! defaults of a request) and the parts of `MODEL` (LdmACE) that the pipeline reads itself. The
//! DiT and VAE sections are kept as YAML and read by those models' own config types. Defaults
//! are scepter's.

use serde::Deserialize;

/// `DEFAULT_PARAS`: the defaults of a request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DefaultParas {
    #[serde(rename = "INPUT", default)]
    pub input: InputDefaults,
}

/// `DEFAULT_PARAS.INPUT`.
#[derive(Debug, Clone, Deserialize)]
pub struct InputDefaults {
    #[serde(rename = "SAMPLER", default = "default_sampler")]
    pub sampler: String,
    /// ace's own: the sigma spacing of a k-diffusion sampler (`default` or `karras`).
    #[serde(rename = "SCHEDULE", default = "default_schedule")]
    pub schedule: String,
    #[serde(rename = "SAMPLE_STEPS", default = "default_sample_steps")]
    pub sample_steps: usize,
    #[serde(rename = "GUIDE_SCALE", default = "default_guide_scale")]
    pub guide_scale: f64,
    #[serde(rename = "GUIDE_RESCALE", default = "default_guide_rescale")]
    pub guide_rescale: f64,
    #[serde(rename = "OUTPUT_HEIGHT", default = "default_output_size")]
    pub output_height: usize,
    #[serde(rename = "OUTPUT_WIDTH", default = "default_output_size")]
    pub output_width: usize,
}

impl Default for InputDefaults {
    fn default() -> Self {
        Self {
            sampler: default_sampler(),
            schedule: default_schedule(),
            sample_steps: default_sample_steps(),
            guide_scale: default_guide_scale(),
            guide_rescale: default_guide_rescale(),
            output_height: default_output_size(),
            output_width: default_output_size(),
        }
    }
}

impl InputDefaults {
    /// The sampler and spacing a run uses when the command line names neither, at strength 1.
    pub fn sampler_settings(&self) -> crate::Result<crate::sampler::SamplerSettings> {
        let settings = crate::sampler::SamplerSettings {
            kind: self.sampler.parse()?,
            spacing: self.schedule.parse()?,
            strength: 1.0,
        };
        settings.validate()?;
        Ok(settings)
    }
}

fn default_sampler() -> String {
    "ddim".into()
}
fn default_schedule() -> String {
    "default".into()
}
fn default_sample_steps() -> usize {
    20
}
fn default_guide_scale() -> f64 {
    4.5
}
fn default_guide_rescale() -> f64 {
    0.5
}
fn default_output_size() -> usize {
    512
}

/// `MODEL` (LdmACE).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    #[serde(rename = "SCALE_FACTOR", default = "default_scale_factor")]
    pub scale_factor: f64,
    #[serde(rename = "SIZE_FACTOR", default = "default_size_factor")]
    pub size_factor: usize,
    #[serde(rename = "DECODER_BIAS", default)]
    pub decoder_bias: f64,
    #[serde(rename = "DEFAULT_N_PROMPT", default)]
    pub default_n_prompt: String,
    #[serde(rename = "TEXT_IDENTIFIER", default)]
    pub text_identifier: Vec<String>,
    #[serde(rename = "USE_TEXT_POS_EMBEDDINGS", default)]
    pub use_text_pos_embeddings: bool,
    #[serde(rename = "DIFFUSION")]
    pub diffusion: DiffusionConfig,
    /// The DiT section, read by the DiT's own config type.
    #[serde(rename = "DIFFUSION_MODEL")]
    pub diffusion_model: serde_yaml::Value,
    /// The VAE section, read by the VAE's own config type.
    #[serde(rename = "FIRST_STAGE_MODEL")]
    pub first_stage_model: serde_yaml::Value,
    #[serde(rename = "COND_STAGE_MODEL")]
    pub cond_stage_model: CondStageConfig,
}

fn default_scale_factor() -> f64 {
    0.18215
}
fn default_size_factor() -> usize {
    8
}

/// `MODEL.DIFFUSION` (ACEDiffusion).
#[derive(Debug, Clone, Deserialize)]
pub struct DiffusionConfig {
    #[serde(rename = "PREDICTION_TYPE", default = "default_prediction_type")]
    pub prediction_type: String,
    #[serde(rename = "NOISE_SCHEDULER")]
    pub noise_scheduler: NoiseSchedulerConfig,
}

fn default_prediction_type() -> String {
    "eps".into()
}

/// `MODEL.DIFFUSION.NOISE_SCHEDULER`; defaults are scepter's `LinearScheduler` ones.
#[derive(Debug, Clone, Deserialize)]
pub struct NoiseSchedulerConfig {
    #[serde(rename = "NAME")]
    pub name: String,
    #[serde(rename = "NUM_TIMESTEPS", default = "default_num_timesteps")]
    pub num_timesteps: usize,
    #[serde(rename = "BETA_MIN", default = "default_beta_min")]
    pub beta_min: f64,
    #[serde(rename = "BETA_MAX", default = "default_beta_max")]
    pub beta_max: f64,
}

fn default_num_timesteps() -> usize {
    1000
}
fn default_beta_min() -> f64 {
    0.00085
}
fn default_beta_max() -> f64 {
    0.012
}

/// `MODEL.COND_STAGE_MODEL` (ACETextEmbedder).
#[derive(Debug, Clone, Deserialize)]
pub struct CondStageConfig {
    #[serde(rename = "PRETRAINED_MODEL")]
    pub pretrained_model: String,
    #[serde(rename = "TOKENIZER_PATH")]
    pub tokenizer_path: String,
    #[serde(rename = "LENGTH", default = "default_length")]
    pub length: usize,
    #[serde(rename = "CLEAN", default = "default_clean")]
    pub clean: String,
    /// The dtype the encoder's weights are used in (scepter's default: float32).
    #[serde(rename = "T5_DTYPE", default = "default_t5_dtype")]
    pub t5_dtype: String,
}

fn default_t5_dtype() -> String {
    "float32".into()
}

fn default_length() -> usize {
    77
}
fn default_clean() -> String {
    "whitespace".into()
}
