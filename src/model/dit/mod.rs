//! DiTACE, the diffusion transformer of ACE (upstream `modules/model/backbone/ace.py`).
//!
//! One sample is a list of frames: frame 0 is the noisy target latent, frames 1.. are the edit
//! images' latents; each carries a mask channel and its own T5 context. All frames' tokens go
//! through the blocks as one sequence (long-context attention, 3D RoPE over frame/row/column),
//! each frame cross-attends to its own context, and image indicator embeddings (the embedded T5
//! states of `{image}`, `{image1}`, ...) tell frames and contexts apart. Only the target frame's
//! tokens come out, as the eps prediction.
//!
//! What does not change across sampling steps is computed once per run ([`prepared`]); samples
//! of the same frames at the same timestep (guidance's conditional and negative passes) go
//! through the blocks together, one batch of tokens.

pub mod attention;
pub mod block;
pub mod config;
pub mod embedders;
pub mod final_layer;
pub mod layers;
pub mod layout;
pub mod prepared;
pub mod rope;

pub use config::Config;
pub use prepared::Prepared;

use crate::model::checkpoint;
use crate::model::cpu_bf16::{self, Products};
use crate::model::segments;
use crate::{Error, Result};
use attention::KeysValues;
use block::DitBlock;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use embedders::{PatchEmbedder, TBlock, TimestepEmbedder};
use final_layer::FinalLayer;
use layers::Mlp;
use prepared::PreparedSample;
use rope::Rope;
use std::path::Path;

/// One sample of a batch: its frames, their masks and their contexts, index for index.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `[IN_CHANNELS, h_i, w_i]` latents; frame 0 is the noisy target, 1.. the edit images.
    pub frames: Vec<Tensor>,
    /// `[1, h_i, w_i]` masks at latent size (all ones where the frame has none).
    pub masks: Vec<Tensor>,
    /// Per frame `[t_len_i, Y_CHANNELS]` T5 states of the real tokens only (including `</s>`),
    /// before `y_embedder`.
    pub contexts: Vec<Tensor>,
}

/// The DiT with its weights.
#[derive(Debug, Clone)]
pub struct DitAce {
    x_embedder: PatchEmbedder,
    t_embedder: TimestepEmbedder,
    y_embedder: Mlp,
    t_block: TBlock,
    blocks: Vec<DitBlock>,
    final_layer: FinalLayer,
    rope: Rope,
    cfg: Config,
    dtype: DType,
    device: Device,
}

impl DitAce {
    /// Builds the model from weights in the ACE layout.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let hidden = cfg.hidden_size;
        let blocks = (0..cfg.depth)
            .map(|i| DitBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            x_embedder: PatchEmbedder::new(
                cfg.patch_size,
                cfg.in_channels + 1,
                hidden,
                vb.pp("x_embedder"),
            )?,
            t_embedder: TimestepEmbedder::new(hidden, vb.pp("t_embedder"))?,
            y_embedder: Mlp::new(cfg.y_channels, hidden, hidden, vb.pp("y_embedder"))?,
            t_block: TBlock::new(hidden, vb.pp("t_block"))?,
            blocks,
            final_layer: FinalLayer::new(cfg, vb.pp("final_layer"))?,
            rope: Rope::new(cfg.head_dim(), cfg.max_seq_len),
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Loads a checkpoint in the ACE or PixArt-alpha layout (converted, then checked tensor by
    /// tensor) and builds the model in `dtype` on `device` (bf16 on the CPU: the linear weights
    /// in bf16 and the model in f32, see [`crate::model::cpu_bf16`]).
    pub fn load(cfg: &Config, path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_checkpoint(cfg, checkpoint::load(path, device)?, path, device, dtype)
    }

    /// [`DitAce::load`] from the tensors of the checkpoint at `path`, already read.
    pub fn from_checkpoint(
        cfg: &Config,
        tensors: checkpoint::Tensors,
        path: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        cfg.validate()?;
        let tensors = layout::convert(tensors, cfg, path)?;
        layout::check(&tensors, cfg, path)?;
        if cpu_bf16::applies(device, dtype) {
            return Self::new(cfg, cpu_bf16::var_builder(tensors, Products::Linear)?);
        }
        Self::new(cfg, VarBuilder::from_tensors(tensors, dtype, device))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The eps prediction for frame 0 of each sample, `[IN_CHANNELS, h, w]` (in the model dtype):
    /// [`prepare`](Self::prepare) then [`forward_prepared`](Self::forward_prepared) with the
    /// samples' own frame 0.
    ///
    /// `t`: one timestep per sample; `text_position_embeddings`: `[10, Y_CHANNELS]` raw T5
    /// states of the first token of `{image}`, `{image1}`, ..., `{image9}`.
    pub fn forward(
        &self,
        samples: &[Sample],
        t: &[f32],
        text_position_embeddings: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let prepared = self.prepare(samples, text_position_embeddings)?;
        let targets: Vec<Tensor> = samples.iter().map(|s| s.frames[0].clone()).collect();
        self.forward_prepared(&prepared, &targets, t)
    }

    /// The eps prediction for each prepared sample whose noisy target (frame 0) is now
    /// `targets[i]` at timestep `t[i]`. Samples of the same frames at the same timestep (the
    /// conditional and negative passes of guidance) go through the blocks together.
    pub fn forward_prepared(
        &self,
        prepared: &Prepared,
        targets: &[Tensor],
        t: &[f32],
    ) -> Result<Vec<Tensor>> {
        let samples = &prepared.samples;
        for (name, found) in [("DiT targets", targets.len()), ("DiT timesteps", t.len())] {
            if found != samples.len() {
                return Err(Error::Shape {
                    name: name.into(),
                    expected: vec![samples.len()],
                    found: vec![found],
                });
            }
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for i in 0..samples.len() {
            let same = |g: &&mut Vec<usize>| {
                samples[g[0]].grid == samples[i].grid && t[g[0]].to_bits() == t[i].to_bits()
            };
            match groups.iter_mut().find(same) {
                Some(group) => group.push(i),
                None => groups.push(vec![i]),
            }
        }
        let mut outs = vec![None; samples.len()];
        for group in groups {
            let tokens = group
                .iter()
                .map(|&i| self.sample_tokens(i, &samples[i], &targets[i]))
                .collect::<Result<Vec<_>>>()?;
            let eps = self.forward_group(
                &group.iter().map(|&i| &samples[i]).collect::<Vec<_>>(),
                Tensor::cat(&tokens, 0)?,
                t[group[0]],
            )?;
            for (i, eps) in group.into_iter().zip(eps) {
                outs[i] = Some(eps);
            }
        }
        Ok(outs.into_iter().flatten().collect())
    }

    /// The tokens of one sample: its target frame embedded with its indicator, then the
    /// prepared edit images' tokens.
    fn sample_tokens(
        &self,
        index: usize,
        sample: &PreparedSample,
        target: &Tensor,
    ) -> Result<Tensor> {
        let (x, rows, cols) = self.frame_input(index, 0, target, &sample.target_mask)?;
        if (rows, cols) != sample.grid[0] {
            let p = self.cfg.patch_size;
            return Err(Error::Shape {
                name: format!("sample {index} target latent"),
                expected: vec![
                    self.cfg.in_channels,
                    sample.grid[0].0 * p,
                    sample.grid[0].1 * p,
                ],
                found: target.dims().to_vec(),
            });
        }
        let target = self
            .x_embedder
            .forward(&x)?
            .broadcast_add(&sample.target_indicator)?;
        match &sample.edit_tokens {
            Some(edits) => Ok(Tensor::cat(&[&target, edits], 0)?),
            None => Ok(target),
        }
    }

    /// Samples of the same frames through the blocks together at timestep `t`; `xs` holds
    /// their tokens sample after sample. Returns each sample's eps prediction.
    fn forward_group(
        &self,
        group: &[&PreparedSample],
        mut xs: Tensor,
        t: f32,
    ) -> Result<Vec<Tensor>> {
        let first = group[0];
        let frame_tokens: Vec<usize> = first.grid.iter().map(|(h, w)| h * w).collect();
        let tokens: usize = frame_tokens.iter().sum();
        let t = self.t_embedder.forward(&[t], self.dtype, &self.device)?;
        // Training backpropagates block by block (`segments`): each block's output is cut,
        // and so is `t0`, which every block reads. With `USE_GRAD_CHECKPOINT` a block is run
        // again in the backward pass instead of keeping its activations, but for the last, as
        // upstream's `checkpoint_sequential` runs its last segment.
        let t0 = segments::cut(&self.t_block.forward(&t)?)?;
        for (b, block) in self.blocks.iter().enumerate() {
            let recomputed =
                self.cfg.use_grad_checkpoint && b + 1 < self.blocks.len() && segments::recording();
            xs = if recomputed {
                let (block, x, t0) = (block.clone(), xs, t0.clone());
                let (rope, frame_tokens) = (first.rope.clone(), frame_tokens.clone());
                let cross_kv: Vec<Vec<KeysValues>> =
                    group.iter().map(|s| s.cross_kv[b].clone()).collect();
                segments::recomputed(move || {
                    let cross_kv: Vec<&[KeysValues]> = cross_kv.iter().map(Vec::as_slice).collect();
                    block.forward(&x, &t0, &rope, &frame_tokens, &cross_kv)
                })?
            } else {
                let cross_kv: Vec<&[KeysValues]> =
                    group.iter().map(|s| s.cross_kv[b].as_slice()).collect();
                segments::cut(&block.forward(&xs, &t0, &first.rope, &frame_tokens, &cross_kv)?)?
            };
        }
        let out = self.final_layer.forward(&xs, &t)?;
        (0..group.len())
            .map(|k| self.unpatchify(&out.narrow(0, k * tokens, frame_tokens[0])?, first.grid[0]))
            .collect()
    }

    /// Moves an input to the model's device and dtype.
    fn input(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    /// Frame `f` of sample `index` with its mask as an extra channel, checked; with its token
    /// grid.
    fn frame_input(
        &self,
        index: usize,
        f: usize,
        frame: &Tensor,
        mask: &Tensor,
    ) -> Result<(Tensor, usize, usize)> {
        let name = |what: &str| format!("sample {index} frame {f} {what}");
        let frame = self.input(frame)?;
        let mask = self.input(mask)?;
        let (c, h, w) = frame.dims3().map_err(|_| Error::Shape {
            name: name("latent"),
            expected: vec![self.cfg.in_channels, 0, 0],
            found: frame.dims().to_vec(),
        })?;
        let p = self.cfg.patch_size;
        if c != self.cfg.in_channels || h % p != 0 || w % p != 0 || h == 0 || w == 0 {
            return Err(Error::invalid(
                "DiT input",
                format!(
                    "{}: shape {:?}, expected {} channels and a size that is a positive multiple of {p}",
                    name("latent"),
                    frame.dims(),
                    self.cfg.in_channels
                ),
            ));
        }
        if mask.dims() != [1, h, w] {
            return Err(Error::Shape {
                name: name("mask"),
                expected: vec![1, h, w],
                found: mask.dims().to_vec(),
            });
        }
        Ok((Tensor::cat(&[&frame, &mask], 0)?, h / p, w / p))
    }

    /// `[h*w, p*p*C]` tokens of the target frame -> `[IN_CHANNELS, h*p, w*p]` (the first half of
    /// the channels when the variance is predicted too).
    fn unpatchify(&self, xs: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let p = self.cfg.patch_size;
        let c = self.cfg.out_channels();
        Ok(xs
            .reshape((h, w, p, p, c))?
            .permute((4, 0, 2, 1, 3))?
            .reshape((c, h * p, w * p))?
            .narrow(0, 0, self.cfg.in_channels)?)
    }
}
