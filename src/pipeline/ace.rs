//! `Ace`: the three models of LdmACE (DiT, T5 text embedder, VAE) and the image indicator
//! embeddings, loaded once, and `generate`, which runs one request: prepare the inputs, encode
//! the edit images and prompts, sample the target latent with guided DDIM and decode it.

use super::{mask_to_latent, Noise, Plan, PreparedImage};
use crate::config::{AceConfig, ModelFiles};
use crate::model::checkpoint;
use crate::model::dit::{DitAce, Sample};
use crate::model::text::{Clean, PromptCache, TextEmbedder};
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
    /// Time and peak memory of encoding the edit images, sampling and decoding.
    pub phases: Vec<(&'static str, crate::memory::PhaseUse)>,
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

/// The loaded ACE model: the DiT and the VAE in memory, and the text embedder, which holds
/// the tokenizer and opens the T5 only for prompts it has not encoded yet.
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

/// The text embedder of a config: the T5 tokenizer, where the encoder is, its weight dtype
/// (`text_dtype`, else the config's `T5_DTYPE`), and the prompt cache to go through.
pub fn text_embedder(
    cfg: &AceConfig,
    files: &ModelFiles,
    device: &Device,
    text_dtype: Option<DType>,
    cache: Option<PromptCache>,
) -> Result<TextEmbedder> {
    let cond = &cfg.model.cond_stage_model;
    let clean: Clean = cond.clean.parse()?;
    let dtype = match text_dtype {
        Some(d) => d,
        None => cfg.t5_dtype()?,
    };
    TextEmbedder::new(
        &files.text_encoder,
        &files.tokenizer,
        cond.length,
        clean,
        device,
        dtype,
        cache,
    )
}

/// The image indicator embeddings of a config (T5 states of `{image}`, `{image1}`, ..., or
/// zeros when `USE_TEXT_POS_EMBEDDINGS` is off), f32 on the CPU.
pub fn text_position_embeddings(cfg: &AceConfig, text: &TextEmbedder) -> Result<Tensor> {
    if cfg.model.use_text_pos_embeddings {
        Ok(text
            .text_position_embeddings(&cfg.model.text_identifier)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?)
    } else {
        Ok(Tensor::zeros(
            (10, text.hidden_size()?),
            DType::F32,
            &Device::Cpu,
        )?)
    }
}

/// Encodes `prompts` (the requests' [`super::request_prompts`]) and the image indicators, in
/// one pass over the T5 for those the cache lacks, so that generating later opens no text
/// encoder. Runs before the DiT is loaded: the two never take memory at the same time.
pub fn encode_prompts_first(
    cfg: &AceConfig,
    text: &TextEmbedder,
    prompts: &[String],
) -> Result<()> {
    let mut prompts: Vec<String> = prompts.to_vec();
    if cfg.model.use_text_pos_embeddings {
        prompts.extend(cfg.model.text_identifier.iter().cloned());
    }
    prompts.sort();
    prompts.dedup();
    text.encode(&prompts)?;
    Ok(())
}

impl Ace {
    /// Loads the DiT and the VAE from `files` in `dtype`; `text` is the run's text embedder
    /// (what it has encoded already is not encoded again). `progress` hears the bytes read so
    /// far and in all.
    pub fn load(
        cfg: &AceConfig,
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
        text: TextEmbedder,
        progress: Progress,
    ) -> Result<Self> {
        let text_position_embeddings = text_position_embeddings(cfg, &text)?
            .to_device(device)?
            .to_dtype(dtype)?;
        let total = checkpoint::size_on_disk(&files.vae)? + checkpoint::size_on_disk(&files.dit)?;
        let mut done = 0u64;
        let mut loaded = |bytes: u64| {
            done += bytes;
            progress(done.min(total) as usize, total as usize);
        };
        let vae_tensors = checkpoint::load_observed(&files.vae, device, &mut loaded)?;
        let vae = AutoencoderKl::from_checkpoint(
            &cfg.vae_config()?,
            vae_tensors,
            &files.vae,
            device,
            dtype,
        )?;
        let dit_tensors = checkpoint::load_observed(&files.dit, device, &mut loaded)?;
        let dit =
            DitAce::from_checkpoint(&cfg.dit_config()?, dit_tensors, &files.dit, device, dtype)?;
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

    /// The text embedder (its report says what the T5 did).
    pub fn text(&self) -> &TextEmbedder {
        &self.text
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
        let states = states
            .into_iter()
            .map(|t| t.to_device(&self.device)?.to_dtype(self.dtype))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(distinct.into_iter().zip(states).collect())
    }

    /// Runs one request; `progress` is called after each sampling step. Stops with an error
    /// between steps when cancellation is requested.
    pub fn generate(&self, req: &Request, progress: Progress) -> Result<Generated> {
        let plan = Plan::new(req, &self.cfg, &self.device)?;
        let (frames, encode) = crate::memory::measure(|| self.edit_frames(&plan));
        let (edit_frames, edit_masks) = frames?;
        let (x, sampling) =
            crate::memory::measure(|| self.sample(req, &plan, &edit_frames, &edit_masks, progress));
        let x = x?;
        // The sampling's activations will not come back: hand their pages to the kernel
        // before the decoder's full-resolution ones are made.
        crate::memory::release_freed();
        let (image, decode) =
            crate::memory::measure(|| crate::memory::returning_freed(|| self.decode(&x)));
        Ok(Generated {
            image: image?,
            latent: x,
            prompts: plan.prompts,
            phases: vec![
                ("vae_encode", encode),
                ("sampling", sampling),
                ("decode", decode),
            ],
        })
    }

    /// The edit images' latents and their masks at latent size.
    fn edit_frames(&self, plan: &Plan) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let factor = self.cfg.model.size_factor;
        let mut frames = Vec::with_capacity(plan.frames.len());
        let mut masks = Vec::with_capacity(plan.frames.len());
        for f in &plan.frames {
            frames.push(self.encode_image(&f.prepared)?);
            masks.push(mask_to_latent(&f.prepared.mask, factor)?);
        }
        Ok((frames, masks))
    }

    /// The target latent sampled with guided DDIM from the request's noise.
    fn sample(
        &self,
        req: &Request,
        plan: &Plan,
        edit_frames: &[Tensor],
        edit_masks: &[Tensor],
        progress: Progress,
    ) -> Result<Tensor> {
        let factor = self.cfg.model.size_factor;
        let target_hw = plan.target_size;
        let target_mask = mask_to_latent(&plan.target_mask, factor)?;
        let channels = self.dit.config().in_channels;
        let latent_shape = [channels, target_hw.0 / factor, target_hw.1 / factor];

        let mut all_prompts = plan.contexts.clone();
        if req.guidance.needs_unconditional() {
            all_prompts.extend(plan.negative_contexts.iter().cloned());
        }
        let states = self.encode_prompts(&all_prompts)?;
        let lookup = |list: &[String]| -> Vec<Tensor> {
            list.iter().filter_map(|p| states.get(p).cloned()).collect()
        };
        let cond_contexts = lookup(&plan.contexts);
        let uncond_contexts = lookup(&plan.negative_contexts);

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
        Ok(x)
    }

    /// The image `[3, H, W]` in [0, 1] of a final latent, as the reference decodes it.
    fn decode(&self, x: &Tensor) -> Result<Tensor> {
        let z = (x.unsqueeze(0)? / self.cfg.model.scale_factor)?.to_dtype(self.dtype)?;
        let decoded = self.vae.decode(&z)?.to_dtype(DType::F32)?.squeeze(0)?;
        Ok((((decoded + 1.0)? / 2.0)? + self.cfg.model.decoder_bias / 255.0)?.clamp(0f32, 1f32)?)
    }
}
