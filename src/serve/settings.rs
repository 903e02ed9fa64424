//! The model settings a request may give (negative prompt, steps, guidance scale and rescale,
//! seed, output size, target index, sampler and its schedule, LoRA adapters), read from JSON
//! or from multipart text fields under the long-flag names of the command line, checked when
//! the request arrives, and turned into the pipeline's [`Request`] with the config's defaults
//! for what is left out, as the commands do.

use super::error::{ApiError, ApiResult};
use super::loras::LoraLibrary;
use crate::config::AceConfig;
use crate::model::lora::LoraSpec;
use crate::pipeline::{InputImage, Noise, Request, Turn};
use crate::sampler::{Guidance, SamplerKind, SamplerSettings, Spacing};
use serde::Deserialize;

/// Settings of one request; `None` takes the config's default (seed: 0, as on the command
/// line).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Settings {
    #[serde(default, alias = "negative_prompt")]
    pub negative: Option<String>,
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default)]
    pub guide_scale: Option<f64>,
    #[serde(default)]
    pub guide_rescale: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub width: Option<usize>,
    #[serde(default)]
    pub height: Option<usize>,
    #[serde(default)]
    pub tar_index: Option<usize>,
    #[serde(default)]
    pub sampler: Option<SamplerKind>,
    #[serde(default)]
    pub schedule: Option<Spacing>,
    /// LoRA adapters by name in the server's `--lora-dir` (`NAME[:SCALE]`); `None` takes the
    /// server's `--lora`, an empty list none.
    #[serde(default, deserialize_with = "super::loras::deserialize")]
    pub lora: Option<Vec<LoraSpec>>,
}

/// Parses a multipart text field's value.
fn parse<T: std::str::FromStr>(name: &str, value: &str) -> ApiResult<T> {
    value
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_param(name, format!("'{value}' is not a valid value")))
}

/// The multipart field names of the settings.
const FIELDS: [&str; 12] = [
    "negative",
    "negative_prompt",
    "steps",
    "guide_scale",
    "guide_rescale",
    "seed",
    "width",
    "height",
    "tar_index",
    "sampler",
    "schedule",
    "lora",
];

impl Settings {
    /// Takes the multipart text field `name` when it is a setting (`Ok(false)` when it is not);
    /// an empty value leaves the default.
    pub fn set(&mut self, name: &str, value: &str) -> ApiResult<bool> {
        if !FIELDS.contains(&name) {
            return Ok(false);
        }
        let v = value.trim();
        if v.is_empty() {
            return Ok(true);
        }
        match name {
            "negative" | "negative_prompt" => self.negative = Some(value.to_string()),
            "steps" => self.steps = Some(parse(name, v)?),
            "guide_scale" => self.guide_scale = Some(parse(name, v)?),
            "guide_rescale" => self.guide_rescale = Some(parse(name, v)?),
            "seed" => self.seed = Some(parse(name, v)?),
            "width" => self.width = Some(parse(name, v)?),
            "height" => self.height = Some(parse(name, v)?),
            "sampler" => self.sampler = Some(parse(name, v)?),
            "schedule" => self.schedule = Some(parse(name, v)?),
            // Repeated fields add up.
            "lora" => {
                let more = super::loras::split(v)
                    .iter()
                    .map(|item| parse(name, item))
                    .collect::<ApiResult<Vec<LoraSpec>>>()?;
                self.lora.get_or_insert_with(Vec::new).extend(more);
            }
            _ => self.tar_index = Some(parse(name, v)?),
        }
        Ok(true)
    }

    /// Checks the values against `cfg` before the request is queued: steps within the noise
    /// schedule, guidance values the sampler takes, a size within ace's limits, LoRA adapters
    /// the server has.
    pub fn check(&self, cfg: &AceConfig, loras: &LoraLibrary) -> ApiResult<()> {
        loras.resolve(self.lora.as_deref())?;
        let most = cfg.model.diffusion.noise_scheduler.num_timesteps;
        if let Some(steps) = self.steps {
            if steps == 0 || steps > most {
                return Err(ApiError::bad_param(
                    "steps",
                    format!("{steps} (expected 1 to {most})"),
                ));
            }
        }
        self.guidance(cfg)?;
        self.sampler(cfg)?;
        let d = &cfg.default_paras.input;
        let (w, h) = (
            self.width.unwrap_or(d.output_width),
            self.height.unwrap_or(d.output_height),
        );
        crate::limits::check_size("size", w as u64, h as u64)?;
        Ok(())
    }

    fn guidance(&self, cfg: &AceConfig) -> crate::Result<Guidance> {
        let defaults = &cfg.default_paras.input;
        Guidance::new(
            self.guide_scale.unwrap_or(defaults.guide_scale),
            self.guide_rescale.unwrap_or(defaults.guide_rescale),
        )
    }

    /// The sampler and schedule asked for, the config's where not.
    fn sampler(&self, cfg: &AceConfig) -> crate::Result<SamplerSettings> {
        let configured = cfg.default_paras.input.sampler_settings()?;
        let settings = SamplerSettings {
            kind: self.sampler.unwrap_or(configured.kind),
            spacing: self.schedule.unwrap_or(configured.spacing),
            strength: 1.0,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The seed of the first image.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }

    /// The pipeline request for `instruction` on `images` after `history`, with noise from
    /// `seed`.
    pub fn request(
        &self,
        cfg: &AceConfig,
        instruction: &str,
        images: Vec<InputImage>,
        history: Vec<Turn>,
        seed: u64,
    ) -> crate::Result<Request> {
        let defaults = &cfg.default_paras.input;
        Ok(Request {
            instruction: instruction.to_string(),
            images,
            history,
            negative: self.negative.clone(),
            size: Some((
                self.height.unwrap_or(defaults.output_height),
                self.width.unwrap_or(defaults.output_width),
            )),
            steps: self.steps.unwrap_or(defaults.sample_steps),
            guidance: self.guidance(cfg)?,
            noise: Noise::Seed(seed),
            tar_index: self.tar_index.unwrap_or(0),
            sampler: self.sampler(cfg)?,
            init: None,
            // The output as the model makes it, as the reference's chat shows it.
            finish: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AceConfig {
        AceConfig::preset(crate::config::DEFAULT_PRESET).unwrap()
    }

    #[test]
    fn fields_parse_and_defaults_fill_the_rest() {
        let mut s = Settings::default();
        assert!(s.set("steps", "4").unwrap());
        assert!(s.set("seed", " 9 ").unwrap());
        assert!(s.set("width", "").unwrap());
        assert!(!s.set("instruction", "x").unwrap());
        // Repeated LoRA fields add up; `none` asks for none.
        assert!(s.set("lora", "a.safetensors:0.5, b").unwrap());
        assert!(s.set("lora", "c").unwrap());
        let scales: Vec<_> = s.lora.iter().flatten().map(|l| l.scale).collect();
        assert_eq!(scales, [0.5, 1.0, 1.0]);
        let mut none = Settings::default();
        none.set("lora", "none").unwrap();
        assert_eq!(none.lora, Some(Vec::new()));
        assert!(s.set("lora", "a:nan").is_err());
        assert_eq!(
            s.set("steps", "many").unwrap_err().param.as_deref(),
            Some("steps")
        );
        let cfg = cfg();
        let r = s.request(&cfg, "a cat", Vec::new(), Vec::new(), 9).unwrap();
        assert_eq!(r.steps, 4);
        assert!(matches!(r.noise, Noise::Seed(9)));
        let d = &cfg.default_paras.input;
        assert_eq!(r.size, Some((d.output_height, d.output_width)));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let cfg = cfg();
        for bad in [
            Settings {
                steps: Some(0),
                ..Default::default()
            },
            Settings {
                steps: Some(100_000),
                ..Default::default()
            },
            Settings {
                guide_rescale: Some(2.0),
                ..Default::default()
            },
            Settings {
                width: Some(100_000),
                height: Some(100_000),
                ..Default::default()
            },
            // This server has no LoRA folder.
            Settings {
                lora: Some(vec!["style.safetensors".parse().unwrap()]),
                ..Default::default()
            },
        ] {
            let loras = LoraLibrary::default();
            assert_eq!(bad.check(&cfg, &loras).unwrap_err().status, 400, "{bad:?}");
        }
        assert!(Settings::default()
            .check(&cfg, &LoraLibrary::default())
            .is_ok());
    }
}
