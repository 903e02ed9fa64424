//! The frozen half of ACE during training (T5 text embedder, VAE, image indicator embeddings,
//! noise schedule) and the training loss. An example is encoded exactly as inference prepares
//! a request (same image preparation, masks, prompts and contexts), and
//! `loss = mean((eps_theta(x_t, t) - noise)^2)` over the target frame with
//! `x_t = alpha_bar_t x0 + sigma_t noise` (scepter's `LinearScheduler`), averaged over the batch.

use super::dataset::Example;
use crate::config::{AceConfig, ModelFiles};
use crate::imageio;
use crate::model::dit::{DitAce, Sample};
use crate::model::text::PromptCache;
use crate::model::text::TextEmbedder;
use crate::model::vae::AutoencoderKl;
use crate::pipeline::{
    check_references, frame_contexts, frame_prompts, mask_to_latent, prepare_image, text_embedder,
    text_position_embeddings,
};
use crate::sampler::LinearSchedule;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// One example as the DiT consumes it (float32): the clean target latent `x0` with its mask,
/// the edit images' latents and masks, and the per-frame contexts (target frame first).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub target: Tensor,
    pub target_mask: Tensor,
    pub edits: Vec<Tensor>,
    pub edit_masks: Vec<Tensor>,
    pub contexts: Vec<Tensor>,
}

impl Encoded {
    /// Named tensors for the on-disk cache.
    pub fn to_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        out.insert("target".to_string(), self.target.clone());
        out.insert("target_mask".to_string(), self.target_mask.clone());
        for (i, (e, m)) in self.edits.iter().zip(&self.edit_masks).enumerate() {
            out.insert(format!("edit.{i}"), e.clone());
            out.insert(format!("edit_mask.{i}"), m.clone());
        }
        for (i, c) in self.contexts.iter().enumerate() {
            out.insert(format!("context.{i}"), c.clone());
        }
        out
    }

    /// Reads back [`Encoded::to_tensors`]; `source` names the cache file in errors.
    pub fn from_tensors(mut t: HashMap<String, Tensor>, source: &str) -> Result<Self> {
        let mut take = |name: &str| {
            t.remove(name).ok_or_else(|| {
                Error::invalid("cached example", format!("{source}: {name} is missing"))
            })
        };
        let target = take("target")?;
        let target_mask = take("target_mask")?;
        let mut edits = Vec::new();
        let mut edit_masks = Vec::new();
        let mut contexts = Vec::new();
        let n_ctx = t.keys().filter(|k| k.starts_with("context.")).count();
        let n_edit = t.keys().filter(|k| k.starts_with("edit.")).count();
        let mut take = |name: String| {
            t.remove(&name).ok_or_else(|| {
                Error::invalid("cached example", format!("{source}: {name} is missing"))
            })
        };
        for i in 0..n_edit {
            edits.push(take(format!("edit.{i}"))?);
            edit_masks.push(take(format!("edit_mask.{i}"))?);
        }
        for i in 0..n_ctx {
            contexts.push(take(format!("context.{i}"))?);
        }
        Ok(Self {
            target,
            target_mask,
            edits,
            edit_masks,
            contexts,
        })
    }
}

/// Reads a model sub-section into its own config type.
/// The frozen models and the schedule.
pub struct Frozen {
    cfg: AceConfig,
    text: TextEmbedder,
    vae: AutoencoderKl,
    text_position_embeddings: Tensor,
    schedule: LinearSchedule,
    max_seq_len: usize,
    device: Device,
}

impl Frozen {
    /// Encodes the prompts of `examples` and the image indicators (through `cache`, in one
    /// pass over the T5 for those it lacks), then loads the VAE (float32); images are prepared
    /// under a budget of `max_seq_len` tokens per frame.
    pub fn load(
        cfg: &AceConfig,
        files: &ModelFiles,
        max_seq_len: usize,
        device: &Device,
        examples: &[Example],
        cache: Option<PromptCache>,
    ) -> Result<Self> {
        let text = text_embedder(cfg, files, device, None, cache)?;
        let mut prompts = Vec::new();
        for ex in examples {
            prompts.extend(example_contexts(ex)?);
        }
        prompts.sort();
        prompts.dedup();
        text.encode(&prompts)?;
        let text_position_embeddings = text_position_embeddings(cfg, &text)?.to_device(device)?;
        let vae = AutoencoderKl::load(&cfg.vae_config()?, &files.vae, device, DType::F32)?;
        let ns = &cfg.model.diffusion.noise_scheduler;
        Ok(Self {
            schedule: LinearSchedule::new(ns.num_timesteps, ns.beta_min, ns.beta_max)?,
            max_seq_len,
            cfg: cfg.clone(),
            text,
            vae,
            text_position_embeddings,
            device: device.clone(),
        })
    }

    pub fn schedule(&self) -> &LinearSchedule {
        &self.schedule
    }

    pub fn text_position_embeddings(&self) -> &Tensor {
        &self.text_position_embeddings
    }

    /// Prepares and encodes one example as inference would prepare the same request with the
    /// target in place of the output.
    pub fn encode(&self, ex: &Example) -> Result<Encoded> {
        let contexts = example_contexts(ex)?;
        let factor = self.cfg.model.size_factor;
        let mut edits = Vec::new();
        let mut edit_masks = Vec::new();
        for (path, mask) in ex.inputs.iter().zip(&ex.masks) {
            let image = imageio::load_rgb(path)?;
            let mask = mask
                .as_deref()
                .map(imageio::load)
                .transpose()?
                .map(|m| m.to_luma8());
            let p = prepare_image(
                &image,
                mask.as_ref(),
                &ex.task,
                self.max_seq_len,
                &path.display().to_string(),
                &self.device,
            )?;
            edits.push(self.encode_pixels(&p.pixels)?);
            edit_masks.push(mask_to_latent(&p.mask, factor)?);
        }
        let target_image = imageio::load_rgb(&ex.target)?;
        let target = prepare_image(
            &target_image,
            None,
            "",
            self.max_seq_len,
            &ex.target.display().to_string(),
            &self.device,
        )?;
        let x0 = self.encode_pixels(&target.pixels)?;
        // The target frame takes the mask of the first input, as at inference.
        let target_mask = match edit_masks.first() {
            Some(m) if m.dims() == [1, x0.dim(1)?, x0.dim(2)?] => m.clone(),
            _ => Tensor::ones((1, x0.dim(1)?, x0.dim(2)?), DType::F32, &self.device)?,
        };
        let contexts = self
            .text
            .encode(&contexts)?
            .into_iter()
            .map(|c| c.to_device(&self.device)?.to_dtype(DType::F32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Encoded {
            target: x0,
            target_mask,
            edits,
            edit_masks,
            contexts,
        })
    }

    /// VAE posterior mean times SCALE_FACTOR of `[3, H, W]` pixels: `[C, h, w]`.
    fn encode_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        let z = self.vae.encode(&pixels.unsqueeze(0)?)?.squeeze(0)?;
        Ok((z * self.cfg.model.scale_factor)?)
    }
}

/// The per-frame contexts of an example, as inference makes them for the same request.
fn example_contexts(ex: &Example) -> Result<Vec<String>> {
    let prompts = frame_prompts(&[], &ex.instruction, ex.inputs.len());
    check_references(&prompts, ex.inputs.len())?;
    Ok(frame_contexts(&prompts, !ex.inputs.is_empty()))
}

/// The diffusion loss of a batch at integer timesteps `ts` with the given noise (one
/// `[C, h, w]` tensor per example): the mean over the batch of each example's mean squared
/// error between the eps prediction and the noise.
pub fn diffusion_loss(
    dit: &DitAce,
    text_position_embeddings: &Tensor,
    schedule: &LinearSchedule,
    batch: &[Encoded],
    ts: &[usize],
    noises: &[Tensor],
) -> Result<Tensor> {
    if batch.is_empty() || ts.len() != batch.len() || noises.len() != batch.len() {
        return Err(Error::invalid(
            "training batch",
            format!(
                "{} examples, {} timesteps, {} noises (need as many, at least one)",
                batch.len(),
                ts.len(),
                noises.len()
            ),
        ));
    }
    let mut samples = Vec::with_capacity(batch.len());
    for ((ex, &t), noise) in batch.iter().zip(ts).zip(noises) {
        if noise.dims() != ex.target.dims() {
            return Err(Error::Shape {
                name: "training noise".into(),
                expected: ex.target.dims().to_vec(),
                found: noise.dims().to_vec(),
            });
        }
        let x_t = ((&ex.target * f64::from(schedule.alpha_bar(t)))?
            + (noise * f64::from(schedule.sigma(t)))?)?;
        samples.push(Sample {
            frames: std::iter::once(x_t)
                .chain(ex.edits.iter().cloned())
                .collect(),
            masks: std::iter::once(ex.target_mask.clone())
                .chain(ex.edit_masks.iter().cloned())
                .collect(),
            contexts: ex.contexts.clone(),
        });
    }
    let t: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
    let outs = dit.forward(&samples, &t, text_position_embeddings)?;
    let mut total: Option<Tensor> = None;
    for (out, noise) in outs.iter().zip(noises) {
        let mse = (out.to_dtype(DType::F32)? - noise)?.sqr()?.mean_all()?;
        total = Some(match total {
            Some(acc) => (acc + mse)?,
            None => mse,
        });
    }
    let total = total.ok_or_else(|| Error::invalid("training batch", "empty"))?;
    Ok((total / batch.len() as f64)?)
}
