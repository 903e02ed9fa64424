//! `Ace`: the three models of LdmACE (DiT, T5 text embedder, VAE) and the image indicator
//! embeddings, loaded once, and `generate`, which runs one request: prepare the inputs, encode
//! the edit images and prompts, sample the target latent with guided DDIM and decode it.

use super::{mask_to_latent, Noise, Plan, PreparedImage};
use crate::config::{AceConfig, ModelFiles};
use crate::model::dit::{DitAce, Sample};
use crate::model::text::{Clean, TextEmbedder};
use crate::model::vae::AutoencoderKl;
use crate::sampler::{Ddim, Guidance, LinearSchedule};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};
use std::collections::HashMap;

/// One input image with its optional mask and task (`inpainting` blanks the masked pixels).
#[derive(Debug, Clone)]
pub struct InputImage {
    /// Names the image in errors (usually its file).
    pub name: String,
    pub image: RgbImage,
    pub mask: Option<GrayImage>,
    pub task: String,
}

/// An earlier turn of a multi-turn edit: its image and instruction.
#[derive(Debug, Clone)]
pub struct Turn {
    pub input: InputImage,
    pub instruction: String,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request {
    pub instruction: String,
    /// Input images, `{image}`, `{image1}`, ... (history images come before them).
    pub images: Vec<InputImage>,
    pub history: Vec<Turn>,
    /// The negative prompt; `None` takes the config's `DEFAULT_N_PROMPT`.
    pub negative: Option<String>,
    /// `(height, width)` of a text-to-image output; `None` takes the config's defaults.
    pub size: Option<(usize, usize)>,
    pub steps: usize,
    pub guidance: Guidance,
    pub noise: Noise,
    /// Which input (history included) gives the output its size and mask.
    pub tar_index: usize,
}

/// Per-step progress: step index (from 0), number of steps.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// The result of a request.
#[derive(Debug, Clone)]
pub struct Generated {
    /// `[3, H, W]` float32 in [0, 1] (before 8-bit rounding).
    pub image: Tensor,
    /// The final latent `[C, h, w]`, scaled as the DiT sees it.
    pub latent: Tensor,
    /// The prompts of the frames as the model saw them (before cleaning).
    pub prompts: Vec<String>,
}

impl Generated {
    /// The image in 8 bits as the reference makes it: `uint8(x * 255)`, truncating.
    pub fn to_rgb8(&self) -> Result<RgbImage> {
        let (_, h, w) = self.image.dims3()?;
        let v: Vec<f32> = self.image.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let plane = h * w;
        let mut out = RgbImage::new(w as u32, h as u32);
        for (i, px) in out.pixels_mut().enumerate() {
            for c in 0..3 {
                px[c] = (v[c * plane + i] * 255.0) as u8;
            }
        }
        Ok(out)
    }
}

/// The loaded ACE model.
pub struct Ace {
    cfg: AceConfig,
    dit: DitAce,
    text: TextEmbedder,
    vae: AutoencoderKl,
    text_position_embeddings: Tensor,
    schedule: LinearSchedule,
    device: Device,
    dtype: DType,
}

/// The parts of ACE that condition the DiT and are never trained: the T5 text embedder, the
/// VAE, and the image indicator embeddings (T5 states of `{image}`, `{image1}`, ...).
pub struct Conditioning {
    pub text: TextEmbedder,
    pub vae: AutoencoderKl,
    pub text_position_embeddings: Tensor,
}

impl Conditioning {
    /// Loads T5 and the VAE from `files` in `dtype` and computes the indicator embeddings once.
    pub fn load(
        cfg: &AceConfig,
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let cond = &cfg.model.cond_stage_model;
        let clean: Clean = cond.clean.parse()?;
        let text = TextEmbedder::load(
            &files.text_encoder,
            &files.tokenizer,
            cond.length,
            clean,
            device,
            dtype,
        )?;
        let vae = AutoencoderKl::load(&cfg.vae_config()?, &files.vae, device, dtype)?;
        let text_position_embeddings = if cfg.model.use_text_pos_embeddings {
            text.text_position_embeddings(&cfg.model.text_identifier)?
        } else {
            Tensor::zeros((10, text.hidden_size()), dtype, device)?
        };
        Ok(Self {
            text,
            vae,
            text_position_embeddings,
        })
    }
}

impl Ace {
    /// Loads the three models from `files` and computes the image indicator embeddings.
    pub fn load(
        cfg: &AceConfig,
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let Conditioning {
            text,
            vae,
            text_position_embeddings,
        } = Conditioning::load(cfg, files, device, dtype)?;
        let dit = DitAce::load(&cfg.dit_config()?, &files.dit, device, dtype)?;
        let ns = &cfg.model.diffusion.noise_scheduler;
        Ok(Self {
            schedule: LinearSchedule::new(ns.num_timesteps, ns.beta_min, ns.beta_max)?,
            cfg: cfg.clone(),
            dit,
            text,
            vae,
            text_position_embeddings,
            device: device.clone(),
            dtype,
        })
    }

    /// The config the model was loaded from.
    pub fn config(&self) -> &AceConfig {
        &self.cfg
    }

    /// VAE encode of a prepared image, times SCALE_FACTOR: `[C, h, w]` float32.
    fn encode_image(&self, p: &PreparedImage) -> Result<Tensor> {
        let x = p.pixels.unsqueeze(0)?.to_dtype(self.dtype)?;
        let z = self.vae.encode(&x)?.to_dtype(DType::F32)?.squeeze(0)?;
        Ok((z * self.cfg.model.scale_factor)?)
    }

    /// Encodes every distinct prompt once.
    fn encode_prompts(&self, prompts: &[String]) -> Result<HashMap<String, Tensor>> {
        let mut distinct: Vec<String> = prompts.to_vec();
        distinct.sort();
        distinct.dedup();
        let states = self.text.encode(&distinct)?;
        Ok(distinct.into_iter().zip(states).collect())
    }

    /// Runs one request; `progress` is called after each sampling step. Stops with an error
    /// between steps when cancellation is requested.
    pub fn generate(&self, req: &Request, progress: Progress) -> Result<Generated> {
        let plan = Plan::new(req, &self.cfg, &self.device)?;
        let factor = self.cfg.model.size_factor;
        let target_hw = plan.target_size;
        let contexts = &plan.contexts;
        let null_contexts = &plan.negative_contexts;
        let prepared: Vec<&PreparedImage> = plan.frames.iter().map(|f| &f.prepared).collect();

        let mut edit_frames = Vec::with_capacity(prepared.len());
        let mut edit_masks = Vec::with_capacity(prepared.len());
        for p in prepared {
            edit_frames.push(self.encode_image(p)?);
            edit_masks.push(mask_to_latent(&p.mask, factor)?);
        }
        let target_mask = mask_to_latent(&plan.target_mask, factor)?;
        let channels = self.dit.config().in_channels;
        let latent_shape = [channels, target_hw.0 / factor, target_hw.1 / factor];

        let mut all_prompts = contexts.clone();
        if req.guidance.needs_unconditional() {
            all_prompts.extend(null_contexts.iter().cloned());
        }
        let states = self.encode_prompts(&all_prompts)?;
        let lookup = |list: &[String]| -> Vec<Tensor> {
            list.iter().filter_map(|p| states.get(p).cloned()).collect()
        };
        let cond_contexts = lookup(contexts);
        let uncond_contexts = lookup(null_contexts);

        let ddim = Ddim::new(&self.schedule, req.steps)?;
        let mut x = req.noise.sample(&latent_shape, &self.device)?;
        let masks: Vec<Tensor> = std::iter::once(&target_mask)
            .chain(edit_masks.iter())
            .cloned()
            .collect();
        let sample = |contexts: &[Tensor]| Sample {
            frames: std::iter::once(x.clone())
                .chain(edit_frames.iter().cloned())
                .collect(),
            masks: masks.clone(),
            contexts: contexts.to_vec(),
        };
        let mut batch = vec![sample(&cond_contexts)];
        if req.guidance.needs_unconditional() {
            batch.push(sample(&uncond_contexts));
        }
        // Edit images, contexts and their keys and values are the same at every step.
        let prepared = self.dit.prepare(&batch, &self.text_position_embeddings)?;
        for i in 0..ddim.steps() {
            if crate::cancel::requested() {
                return Err(Error::invalid("run", "interrupted"));
            }
            let target = x.to_dtype(self.dtype)?;
            let out = self.dit.forward_prepared(
                &prepared,
                &vec![target; prepared.len()],
                &vec![ddim.model_timestep(i); prepared.len()],
            )?;
            let cond = out[0].to_dtype(DType::F32)?;
            let uncond = out.get(1).map(|u| u.to_dtype(DType::F32)).transpose()?;
            let eps = req.guidance.combine(&cond, uncond.as_ref())?;
            x = ddim.step(i, &x, &eps)?;
            progress(i, ddim.steps());
        }

        let z = (x.unsqueeze(0)? / self.cfg.model.scale_factor)?.to_dtype(self.dtype)?;
        let decoded = self.vae.decode(&z)?.to_dtype(DType::F32)?.squeeze(0)?;
        let image =
            (((decoded + 1.0)? / 2.0)? + self.cfg.model.decoder_bias / 255.0)?.clamp(0f32, 1f32)?;
        Ok(Generated {
            image,
            latent: x,
            prompts: plan.prompts,
        })
    }
}
