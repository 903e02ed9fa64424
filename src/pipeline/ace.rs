//! `Ace`: the three models of LdmACE (DiT, T5 text embedder, VAE) and the image indicator
//! embeddings, loaded once, and `generate`, which runs one request: prepare the inputs, encode
//! the edit images and prompts, sample the target latent with guided DDIM and decode it.

use super::{mask_to_latent, Noise, Plan, PreparedImage};
use crate::config::{AceConfig, ModelFiles};
use crate::model::checkpoint;
use crate::model::dit::{DitAce, Sample};
use crate::model::text::{Clean, PromptCache, TextEmbedder};
use crate::model::vae::AutoencoderKl;
use crate::sampler::{plan as plan_sampler, Guidance, LinearSchedule, SamplerSettings};
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
    /// The sampler, and how much of the way from noise it goes (`--strength`).
    pub sampler: SamplerSettings,
    /// For text-to-image with a strength below 1: the picture to start from (`--init-image`),
    /// resized to the output size. An edit starts from its target input instead.
    pub init: Option<RgbImage>,
    /// What is done to the image before it is written ([`super::finish`]).
    pub finish: super::Finish,
}

/// Most tokens one DiT forward of `-n` images takes at once (the batch is split beyond it).
pub const MAX_BATCH_TOKENS: usize = 8192;

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
    files: ModelFiles,
    identity: std::sync::OnceLock<std::collections::BTreeMap<String, String>>,
    /// The DiT with the LoRA adapters folded into it; replaced when a run asks for others.
    dit: std::sync::RwLock<AdaptedDit>,
    text: TextEmbedder,
    vae: AutoencoderKl,
    text_position_embeddings: Tensor,
    schedule: LinearSchedule,
    device: Device,
    /// The weights' dtype (`--dtype`).
    dtype: DType,
    /// The activations' and the VAE's: `dtype`, but f32 on the CPU (see
    /// [`crate::model::cpu_bf16`]).
    activations: DType,
}

/// LoRA adapters to apply: each file with its factor.
pub type Loras = [(std::path::PathBuf, f64)];

/// The DiT as loaded, with the adapters folded into it (`None` only while they change).
struct AdaptedDit {
    model: Option<DitAce>,
    loras: Vec<(std::path::PathBuf, f64)>,
}

/// The DiT of `cfg` from `files`, with `loras` folded in; `loaded` hears the bytes read.
fn load_dit(
    cfg: &AceConfig,
    files: &ModelFiles,
    device: &Device,
    dtype: DType,
    loras: &Loras,
    loaded: &mut dyn FnMut(u64),
) -> Result<AdaptedDit> {
    let dit_cfg = cfg.dit_config()?;
    let tensors = checkpoint::load_observed(&files.dit, device, loaded)?;
    let mut tensors = crate::model::dit::layout::convert(tensors, &dit_cfg, &files.dit)?;
    for (path, factor) in loras {
        crate::model::lora::LoraFile::open(path)?.apply(&mut tensors, *factor)?;
    }
    Ok(AdaptedDit {
        model: Some(DitAce::from_checkpoint(
            &dit_cfg, tensors, &files.dit, device, dtype,
        )?),
        loras: loras.to_vec(),
    })
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
    /// Loads the DiT (with `loras` folded in) and the VAE from `files` in `dtype`; `text` is
    /// the run's text embedder (what it has encoded already is not encoded again). `progress`
    /// hears the bytes read so far and in all.
    pub fn load(
        cfg: &AceConfig,
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
        text: TextEmbedder,
        loras: &Loras,
        progress: Progress,
    ) -> Result<Self> {
        // The dtype of the activations: f32 on the CPU with bf16 weights.
        let activations = crate::model::cpu_bf16::activations(device, dtype);
        let text_position_embeddings = text_position_embeddings(cfg, &text)?
            .to_device(device)?
            .to_dtype(activations)?;
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
        let dit = load_dit(cfg, files, device, dtype, loras, &mut loaded)?;
        if crate::model::cpu_bf16::applies(device, dtype) {
            // The f32 weights read from the checkpoint are gone, their bf16 copies stay: hand
            // the freed half back rather than keep it for activations that never need it.
            crate::memory::release_freed();
        }
        let ns = &cfg.model.diffusion.noise_scheduler;
        Ok(Self {
            schedule: LinearSchedule::new(ns.num_timesteps, ns.beta_min, ns.beta_max)?,
            cfg: cfg.clone(),
            files: files.clone(),
            identity: std::sync::OnceLock::new(),
            dit: std::sync::RwLock::new(dit),
            text,
            vae,
            text_position_embeddings,
            device: device.clone(),
            dtype,
            activations,
        })
    }

    /// Folds `loras` into the DiT instead of the adapters it has (none at first): the DiT is
    /// read again from its file (the page cache holds it) and adapted, the old weights let go
    /// of first so that the two are never in memory together. Nothing happens when they are
    /// the ones it has. When the new adapters cannot be applied, the old ones are put back and
    /// the error says why.
    pub fn use_loras(&self, loras: &Loras) -> Result<()> {
        let poisoned = || Error::invalid("model", "a run failed while changing the LoRA adapters");
        let mut dit = self.dit.write().map_err(|_| poisoned())?;
        if dit.model.is_some() && dit.loras == loras {
            return Ok(());
        }
        let previous = std::mem::take(&mut dit.loras);
        dit.model = None;
        let load = |l: &Loras| {
            load_dit(
                &self.cfg,
                &self.files,
                &self.device,
                self.dtype,
                l,
                &mut |_| {},
            )
        };
        match load(loras) {
            Ok(fresh) => *dit = fresh,
            Err(e) => {
                *dit = load(&previous)?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The LoRA adapters folded into the DiT now.
    pub fn loras(&self) -> Vec<(std::path::PathBuf, f64)> {
        self.dit.read().map(|d| d.loras.clone()).unwrap_or_default()
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the DiT and the VAE.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Per component (`dit`, `vae`, `text_encoder`), the SHA-256 identity of its weight files
    /// ([`crate::model::identity`]), remembered in ace's cache when it can be; computed once.
    pub fn identity(&self) -> Result<std::collections::BTreeMap<String, String>> {
        if let Some(id) = self.identity.get() {
            return Ok(id.clone());
        }
        let memo = crate::cache::root().ok().map(|r| r.join("identity"));
        if let Some(dir) = &memo {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut out = std::collections::BTreeMap::new();
        for (name, path) in [
            ("dit", &self.files.dit),
            ("vae", &self.files.vae),
            ("text_encoder", &self.files.text_encoder),
        ] {
            let files = checkpoint::weight_files(path)?;
            let id = crate::model::identity::weights_identity(&files, memo.as_deref())?;
            out.insert(name.to_string(), id);
        }
        Ok(self.identity.get_or_init(|| out).clone())
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
        let x = p.pixels.unsqueeze(0)?.to_dtype(self.activations)?;
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
            .map(|t| t.to_device(&self.device)?.to_dtype(self.activations))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(distinct.into_iter().zip(states).collect())
    }

    /// Runs one request; `progress` is called after each sampling step. Stops with an error
    /// between steps when cancellation is requested.
    pub fn generate(&self, req: &Request, progress: Progress) -> Result<Generated> {
        let mut all = self.generate_many(req, std::slice::from_ref(&req.noise), progress)?;
        Ok(all.remove(0))
    }

    /// Runs one request once per starting noise (`-n`): the edit images and prompts are
    /// prepared once, and the images are sampled together through the DiT, in groups whose
    /// tokens fit [`MAX_BATCH_TOKENS`]. `progress` hears every step of every group.
    pub fn generate_many(
        &self,
        req: &Request,
        noises: &[Noise],
        progress: Progress,
    ) -> Result<Vec<Generated>> {
        let plan = Plan::new(req, &self.cfg, &self.device)?;
        let (frames, encode) = crate::memory::measure(|| -> Result<_> {
            let (edit_frames, edit_masks) = self.edit_frames(&plan)?;
            let source = self.source_latent(req, &plan, &edit_frames)?;
            Ok((edit_frames, edit_masks, source))
        });
        let (edit_frames, edit_masks, source) = frames?;
        let (latents, sampling) = crate::memory::measure(|| {
            self.sample(
                req,
                &plan,
                &edit_frames,
                &edit_masks,
                source.as_ref(),
                noises,
                progress,
            )
        });
        let latents = latents?;
        // The sampling's activations will not come back: hand their pages to the kernel
        // before the decoder's full-resolution ones are made.
        crate::memory::release_freed();
        let (images, decode) = crate::memory::measure(|| {
            crate::memory::returning_freed(|| -> Result<Vec<Tensor>> {
                latents.iter().map(|x| self.decode(x)).collect()
            })
        });
        let phases = vec![
            ("vae_encode", encode),
            ("sampling", sampling),
            ("decode", decode),
        ];
        Ok(images?
            .into_iter()
            .zip(latents)
            .map(|(image, latent)| Generated {
                image,
                latent,
                prompts: plan.prompts.clone(),
                phases: phases.clone(),
            })
            .collect())
    }

    /// The clean latent sampling starts from when the strength is below 1: the init image's,
    /// else the target input's.
    fn source_latent(
        &self,
        req: &Request,
        plan: &Plan,
        edit_frames: &[Tensor],
    ) -> Result<Option<Tensor>> {
        if !req.sampler.from_image() {
            return Ok(None);
        }
        if let Some(init) = &req.init {
            let (h, w) = plan.target_size;
            let resized = crate::resize::resize_bicubic(init, w as u32, h as u32);
            let prepared =
                super::prepare_image(&resized, None, "", usize::MAX, "init image", &self.device)?;
            return Ok(Some(self.encode_image(&prepared)?));
        }
        match plan.target_from {
            Some(i) => Ok(Some(edit_frames[i].clone())),
            None => Err(Error::invalid(
                "strength",
                "below 1 starts from a picture: give an input image (or --init-image)",
            )),
        }
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

    /// The target latents, one per noise, sampled with the request's sampler and guidance.
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        req: &Request,
        plan: &Plan,
        edit_frames: &[Tensor],
        edit_masks: &[Tensor],
        source: Option<&Tensor>,
        noises: &[Noise],
        progress: Progress,
    ) -> Result<Vec<Tensor>> {
        let guard = self.dit.read().map_err(|_| {
            Error::invalid("model", "a run failed while changing the LoRA adapters")
        })?;
        let dit = guard
            .model
            .as_ref()
            .ok_or_else(|| Error::invalid("model", "the DiT is not loaded"))?;
        let factor = self.cfg.model.size_factor;
        let target_hw = plan.target_size;
        let target_mask = mask_to_latent(&plan.target_mask, factor)?;
        let channels = dit.config().in_channels;
        let latent_shape = [channels, target_hw.0 / factor, target_hw.1 / factor];

        let mut all_prompts = plan.contexts.clone();
        let guided = req.guidance.needs_unconditional();
        if guided {
            all_prompts.extend(plan.negative_contexts.iter().cloned());
        }
        let states = self.encode_prompts(&all_prompts)?;
        let lookup = |list: &[String]| -> Vec<Tensor> {
            list.iter().filter_map(|p| states.get(p).cloned()).collect()
        };
        let cond_contexts = lookup(&plan.contexts);
        let uncond_contexts = lookup(&plan.negative_contexts);
        let masks: Vec<Tensor> = std::iter::once(&target_mask)
            .chain(edit_masks.iter())
            .cloned()
            .collect();
        // Frame 0 of each sample is replaced at every step; the edit frames stay.
        let placeholder = Tensor::zeros(&latent_shape[..], DType::F32, &self.device)?;
        let sample = |contexts: &[Tensor]| Sample {
            frames: std::iter::once(placeholder.clone())
                .chain(edit_frames.iter().cloned())
                .collect(),
            masks: masks.clone(),
            contexts: contexts.to_vec(),
        };
        let per_image = if guided { 2 } else { 1 };
        let tokens = per_image * plan.tokens(factor * dit.config().patch_size);
        let group = (MAX_BATCH_TOKENS / tokens.max(1)).clamp(1, noises.len().max(1));
        let mut latents = Vec::with_capacity(noises.len());
        for chunk in noises.chunks(group) {
            let mut batch = Vec::with_capacity(chunk.len() * per_image);
            for _ in chunk {
                batch.push(sample(&cond_contexts));
                if guided {
                    batch.push(sample(&uncond_contexts));
                }
            }
            // Edit images, contexts and their keys and values are the same at every step.
            let prepared = dit.prepare(&batch, &self.text_position_embeddings)?;
            let mut samplers = chunk
                .iter()
                .map(|n| plan_sampler(req.sampler, &self.schedule, req.steps, n.stream_seed()))
                .collect::<Result<Vec<_>>>()?;
            let mut xs = chunk
                .iter()
                .zip(&samplers)
                .map(|(n, s)| s.start(&n.sample(&latent_shape, &self.device)?, source))
                .collect::<Result<Vec<_>>>()?;
            let steps = samplers[0].steps();
            for i in steps.clone() {
                if crate::cancel::requested() {
                    return Err(Error::invalid("run", "interrupted"));
                }
                let mut targets = Vec::with_capacity(batch.len());
                for (x, s) in xs.iter().zip(&samplers) {
                    let input = s.model_input(i, x)?.to_dtype(self.activations)?;
                    targets.extend(std::iter::repeat_n(input, per_image));
                }
                let t = vec![samplers[0].timestep(i); batch.len()];
                let out = dit.forward_prepared(&prepared, &targets, &t)?;
                for (k, (x, s)) in xs.iter_mut().zip(samplers.iter_mut()).enumerate() {
                    let cond = out[k * per_image].to_dtype(DType::F32)?;
                    let uncond = if guided {
                        Some(out[k * per_image + 1].to_dtype(DType::F32)?)
                    } else {
                        None
                    };
                    let eps = req.guidance.combine(&cond, uncond.as_ref())?;
                    *x = s.step(i, x, &eps)?;
                }
                progress(i - steps.start, steps.len());
            }
            for (x, s) in xs.into_iter().zip(&samplers) {
                latents.push(s.finish(x)?);
            }
        }
        Ok(latents)
    }

    /// The image `[3, H, W]` in [0, 1] of a final latent, as the reference decodes it.
    fn decode(&self, x: &Tensor) -> Result<Tensor> {
        let z = (x.unsqueeze(0)? / self.cfg.model.scale_factor)?.to_dtype(self.activations)?;
        let decoded = self.vae.decode(&z)?.to_dtype(DType::F32)?.squeeze(0)?;
        Ok((((decoded + 1.0)? / 2.0)? + self.cfg.model.decoder_bias / 255.0)?.clamp(0f32, 1f32)?)
    }
}
