//! DiTACE, the diffusion transformer of ACE (upstream `modules/model/backbone/ace.py`).
//!
//! One sample is a list of frames: frame 0 is the noisy target latent, frames 1.. are the edit
//! images' latents; each carries a mask channel and its own T5 context. All frames' tokens go
//! through the blocks as one sequence (long-context attention, 3D RoPE over frame/row/column),
//! each frame cross-attends to its own context, and image indicator embeddings (the embedded T5
//! states of `{image}`, `{image1}`, ...) tell frames and contexts apart. Only the target frame's
//! tokens come out, as the eps prediction.

pub mod attention;
pub mod block;
pub mod config;
pub mod embedders;
pub mod final_layer;
pub mod layers;
pub mod layout;
pub mod rope;

pub use config::Config;

use crate::model::checkpoint;
use crate::{Error, Result};
use block::DitBlock;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use embedders::{PatchEmbedder, TBlock, TimestepEmbedder};
use final_layer::FinalLayer;
use layers::Mlp;
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
    /// tensor) and builds the model in `dtype` on `device`.
    pub fn load(cfg: &Config, path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        cfg.validate()?;
        let tensors = layout::convert(checkpoint::load(path, device)?, cfg, path)?;
        layout::check(&tensors, cfg, path)?;
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

    /// The eps prediction for frame 0 of each sample, `[IN_CHANNELS, h, w]` (in the model dtype).
    ///
    /// `t`: `[B]` timesteps, one per sample; `text_position_embeddings`: `[10, Y_CHANNELS]` raw T5
    /// states of the first token of `{image}`, `{image1}`, ..., `{image9}`.
    pub fn forward(
        &self,
        samples: &[Sample],
        t: &Tensor,
        text_position_embeddings: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let t: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        if t.len() != samples.len() {
            return Err(Error::Shape {
                name: "DiT timesteps".into(),
                expected: vec![samples.len()],
                found: vec![t.len()],
            });
        }
        let tpe = self.input(text_position_embeddings)?;
        match tpe.dims() {
            [_, c] if *c == self.cfg.y_channels => {}
            dims => {
                return Err(Error::Shape {
                    name: "text position embeddings".into(),
                    expected: vec![10, self.cfg.y_channels],
                    found: dims.to_vec(),
                })
            }
        }
        let indicators = self.y_embedder.forward(&tpe)?;
        samples
            .iter()
            .zip(t)
            .enumerate()
            .map(|(i, (sample, t))| self.forward_sample(i, sample, t, &indicators))
            .collect()
    }

    /// Moves an input to the model's device and dtype.
    fn input(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    /// One sample through the whole network; `indicators` are the embedded image indicators.
    fn forward_sample(
        &self,
        index: usize,
        sample: &Sample,
        t: f32,
        indicators: &Tensor,
    ) -> Result<Tensor> {
        let n = sample.frames.len();
        if n == 0 || sample.masks.len() != n || sample.contexts.len() != n {
            return Err(Error::invalid(
                "DiT input",
                format!(
                    "sample {index}: {n} frames, {} masks and {} contexts (need as many, at least one)",
                    sample.masks.len(),
                    sample.contexts.len()
                ),
            ));
        }
        if n > indicators.dim(0)? {
            return Err(Error::invalid(
                "DiT input",
                format!(
                    "sample {index}: {n} frames but only {} image indicator embeddings",
                    indicators.dim(0)?
                ),
            ));
        }
        // Frame 0 (the target) takes the last used indicator, frame i >= 1 takes indicator i-1.
        let indicator = |frame: usize| indicators.get(if frame == 0 { n - 1 } else { frame - 1 });

        let mut tokens = Vec::with_capacity(n);
        let mut grid = Vec::with_capacity(n);
        let mut contexts = Vec::with_capacity(n);
        for f in 0..n {
            let (x, rows, cols) = self.frame_input(index, f, sample)?;
            tokens.push(self.x_embedder.forward(&x)?.broadcast_add(&indicator(f)?)?);
            grid.push((rows, cols));
            let context = self.context_input(index, f, &sample.contexts[f])?;
            contexts.push(
                self.y_embedder
                    .forward(&context)?
                    .broadcast_add(&indicator(f)?)?,
            );
        }
        let frame_tokens: Vec<usize> = grid.iter().map(|(h, w)| h * w).collect();
        let mut xs = Tensor::cat(&tokens, 0)?;

        let t = self.t_embedder.forward(&[t], self.dtype, &self.device)?;
        let t0 = self.t_block.forward(&t)?;
        let rope = self.rope.tables(&grid, &self.device)?;
        for block in &self.blocks {
            xs = block.forward(&xs, &t0, &rope, &frame_tokens, &contexts)?;
        }
        let out = self.final_layer.forward(&xs, &t)?;
        self.unpatchify(&out.narrow(0, 0, frame_tokens[0])?, grid[0])
    }

    /// Frame `f` of a sample with its mask as an extra channel, checked; with its token grid.
    fn frame_input(
        &self,
        index: usize,
        f: usize,
        sample: &Sample,
    ) -> Result<(Tensor, usize, usize)> {
        let name = |what: &str| format!("sample {index} frame {f} {what}");
        let frame = self.input(&sample.frames[f])?;
        let mask = self.input(&sample.masks[f])?;
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

    /// The context of frame `f`, checked.
    fn context_input(&self, index: usize, f: usize, context: &Tensor) -> Result<Tensor> {
        let context = self.input(context)?;
        match context.dims() {
            [rows, c] if *rows > 0 && *c == self.cfg.y_channels => Ok(context),
            dims => Err(Error::Shape {
                name: format!("sample {index} frame {f} context (at least one row)"),
                expected: vec![
                    dims.first().copied().unwrap_or(1).max(1),
                    self.cfg.y_channels,
                ],
                found: dims.to_vec(),
            }),
        }
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
