//! The DiT's weights during training. Full fine-tuning holds every weight as a `Var` (candle's
//! autograd tracks `Var`s); LoRA keeps the pretrained weights fixed and trains only adapters.
//! Either way the unchanged `DitAce` is built on a VarBuilder backend that hands out these
//! tensors (adapted ones as `W + s B A`), so gradients reach the trained `Var`s without any
//! training-specific code in the model.

use super::lora::{Adapters, LoraSpec};
use crate::kernels::param_grad::{self, GradBuffer};
use crate::model::checkpoint;
use crate::model::dit::{self, layout, DitAce};
use crate::model::segments::Segments;
use crate::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The DiT's weights and which of them train.
#[derive(Clone)]
pub struct DitWeights {
    cfg: dit::Config,
    /// Every tensor the DiT reads, by checkpoint name (`Var`-backed under full fine-tuning).
    base: Arc<BTreeMap<String, Tensor>>,
    /// The trained weights by name: all of `base`, or the LoRA matrices.
    trainable: BTreeMap<String, Var>,
    /// Where the linear layers' backward passes put the gradients of the trained weights,
    /// added up over the micro-batches of a step (the rest go to candle's gradient store).
    grad_buffers: BTreeMap<String, Arc<GradBuffer>>,
    /// The gradients candle's store handed back, summed over the micro-batches of a step.
    stored: BTreeMap<String, Tensor>,
    lora: Option<Arc<Adapters>>,
    device: Device,
}

impl DitWeights {
    /// Loads a DiT checkpoint (ACE or PixArt layout) in float32; with `lora`, adapters are
    /// created (from `rng`) and only they train.
    pub fn load(
        cfg: &dit::Config,
        path: &Path,
        lora: Option<&LoraSpec>,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let tensors = layout::convert(checkpoint::load(path, device)?, cfg, path)?;
        layout::check(&tensors, cfg, path)?;
        let wanted: Vec<String> = layout::expected_tensors(cfg)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut base = BTreeMap::new();
        for name in wanted {
            let t = tensors[&name].to_dtype(DType::F32)?;
            base.insert(name, t);
        }
        Self::from_tensors(cfg, base, lora, rng, device)
    }

    /// As [`DitWeights::load`] from tensors already in memory (float32, ACE names).
    pub fn from_tensors(
        cfg: &dit::Config,
        base: BTreeMap<String, Tensor>,
        lora: Option<&LoraSpec>,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<Self> {
        let (base, trainable, lora) = match lora {
            Some(spec) => {
                let adapters = Adapters::new(spec, &base, rng, device)?;
                (base, adapters.vars(), Some(Arc::new(adapters)))
            }
            None => {
                let mut vars = BTreeMap::new();
                let mut tracked = BTreeMap::new();
                for (name, t) in base {
                    let var = Var::from_tensor(&t)?;
                    tracked.insert(name.clone(), var.as_tensor().clone());
                    vars.insert(name, var);
                }
                (tracked, vars, None)
            }
        };
        let grad_buffers = trainable
            .iter()
            .map(|(name, var)| (name.clone(), param_grad::register(var.as_tensor())))
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            base: Arc::new(base),
            trainable,
            grad_buffers,
            stored: BTreeMap::new(),
            lora,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &dit::Config {
        &self.cfg
    }

    /// The trained weights by name.
    pub fn trainable(&self) -> &BTreeMap<String, Var> {
        &self.trainable
    }

    /// Backpropagates `loss`, segment by segment as its forward pass was cut under
    /// [`record`](crate::model::segments::record) (the DiT's blocks; `Segments::default()`
    /// for one pass), and adds the gradients of the trained weights onto those of the earlier
    /// micro-batches since [`DitWeights::take_gradients`] (the linear layers' weights in place,
    /// in their buffers).
    /// The loss and the segments are taken by value: candle keeps every intermediate of a
    /// graph alive for as long as its root lives, so each segment goes as soon as its
    /// gradients are out, before the next one's arrive and before anything else (the next
    /// micro-batch, the optimizer's moments) allocates. After an error, take the gradients to
    /// start afresh.
    pub fn accumulate(&mut self, loss: Tensor, segments: Segments) -> Result<()> {
        let trainable = &self.trainable;
        let stored = &mut self.stored;
        segments.backward(loss, |store| {
            for (name, var) in trainable {
                // Detached: a gradient computed from tracked tensors carries their graph too.
                if let Some(g) = store.get(var.as_tensor()).map(Tensor::detach) {
                    let sum = match stored.remove(name) {
                        Some(earlier) => (earlier + g)?,
                        None => g,
                    };
                    stored.insert(name.clone(), sum);
                }
            }
            Ok(())
        })
    }

    /// The gradients gathered since the last take, by name; gathering starts afresh.
    pub fn take_gradients(&mut self) -> Result<BTreeMap<String, Tensor>> {
        let mut grads = std::mem::take(&mut self.stored);
        for (name, buffer) in &self.grad_buffers {
            if let Some(buffered) = buffer.take(&self.device)? {
                let grad = match grads.remove(name) {
                    Some(stored) => (stored + buffered)?,
                    None => buffered,
                };
                grads.insert(name.clone(), grad);
            }
        }
        Ok(grads)
    }

    /// The gradients of `loss` alone: [`DitWeights::accumulate`], then
    /// [`DitWeights::take_gradients`].
    pub fn backward(
        &mut self,
        loss: Tensor,
        segments: Segments,
    ) -> Result<BTreeMap<String, Tensor>> {
        self.accumulate(loss, segments)?;
        self.take_gradients()
    }

    pub fn lora(&self) -> Option<&LoraSpec> {
        self.lora.as_deref().map(Adapters::spec)
    }

    /// The DiT on the current weights, tracked for gradients.
    pub fn model(&self) -> Result<DitAce> {
        let backend = Backend {
            base: self.base.clone(),
            lora: self.lora.clone(),
        };
        DitAce::new(
            &self.cfg,
            VarBuilder::from_backend(Box::new(backend), DType::F32, self.device.clone()),
        )
    }

    /// The DiT on the current weights without gradient tracking (validation): the weights are
    /// detached views, so a later optimizer step shows through; build it, use it, drop it.
    pub fn frozen_model(&self) -> Result<DitAce> {
        let detached = self
            .base
            .iter()
            .map(|(n, t)| {
                let w = match &self.lora {
                    Some(ad) => ad.effective(n, t)?,
                    None => t.clone(),
                };
                Ok((n.clone(), w.detach()))
            })
            .collect::<Result<_>>()?;
        let backend = Backend {
            base: Arc::new(detached),
            lora: None,
        };
        DitAce::new(
            &self.cfg,
            VarBuilder::from_backend(Box::new(backend), DType::F32, self.device.clone()),
        )
    }

    /// Sets the trained weights to saved values; each must be present with its shape.
    pub fn load_trainable(&self, saved: &BTreeMap<String, Tensor>, source: &str) -> Result<()> {
        for (name, var) in &self.trainable {
            let t = saved.get(name).ok_or_else(|| {
                Error::invalid("checkpoint", format!("{source}: weight {name} is missing"))
            })?;
            if t.dims() != var.dims() {
                return Err(Error::Shape {
                    name: format!("{name} in {source}"),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(&self.device)?)?;
        }
        Ok(())
    }
}

/// Hands the DiT its weights by name, adapters applied.
struct Backend {
    base: Arc<BTreeMap<String, Tensor>>,
    lora: Option<Arc<Adapters>>,
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            });
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let base = self
            .base
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })?;
        let w = match &self.lora {
            Some(ad) => ad
                .effective(name, base)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            None => base.clone(),
        };
        w.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.base.contains_key(name)
    }
}
