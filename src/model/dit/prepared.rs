//! What of a DiT input stays the same across the sampling steps of one run, computed once:
//! the edit images' tokens (patch embedding plus image indicator embedding), the contexts
//! through `y_embedder` with their indicators, every block's cross-attention keys and values
//! per frame, and the RoPE tables of the frames' token grid. A sampling step then embeds only
//! the noisy target frame ([`DitAce::forward_prepared`]). Training prepares and runs each
//! batch at once ([`DitAce::forward`]): the same computation, gradients flowing through both.

use super::attention::KeysValues;
use super::rope::RopeTables;
use super::{DitAce, Sample};
use crate::model::segments;
use crate::{Error, Result};
use candle_core::{Module, Tensor};

/// A batch of samples with everything but their noisy target embedded.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub(super) samples: Vec<PreparedSample>,
}

impl Prepared {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// One sample of a [`Prepared`] batch.
#[derive(Debug, Clone)]
pub(super) struct PreparedSample {
    /// `(rows, cols)` of tokens per frame, the target first.
    pub grid: Vec<(usize, usize)>,
    /// `[1, h, w]` mask of the target frame, in the model dtype on the model device.
    pub target_mask: Tensor,
    /// `[hidden]` image indicator embedding of the target frame.
    pub target_indicator: Tensor,
    /// `[tokens of frames 1.., hidden]`, the edit images' tokens; `None` without edit images.
    pub edit_tokens: Option<Tensor>,
    /// RoPE tables of all the sample's tokens.
    pub rope: RopeTables,
    /// Per block, per frame: cross-attention keys and values of the frame's context.
    pub cross_kv: Vec<Vec<KeysValues>>,
}

impl DitAce {
    /// Prepares `samples` for [`forward_prepared`](Self::forward_prepared); frame 0 of each is
    /// read for its shape only (each step brings its own noisy target).
    /// `text_position_embeddings`: `[10, Y_CHANNELS]` raw T5 states of the first token of
    /// `{image}`, `{image1}`, ..., `{image9}`.
    pub fn prepare(
        &self,
        samples: &[Sample],
        text_position_embeddings: &Tensor,
    ) -> Result<Prepared> {
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
        let mut prepared: Vec<PreparedSample> = Vec::with_capacity(samples.len());
        for (index, sample) in samples.iter().enumerate() {
            let p = self.prepare_sample(index, sample, &indicators, &prepared)?;
            prepared.push(p);
        }
        Ok(Prepared { samples: prepared })
    }

    /// One sample, checked, with `indicators` the embedded image indicators; it shares the
    /// RoPE tables of an `earlier` sample of the same frames.
    fn prepare_sample(
        &self,
        index: usize,
        sample: &Sample,
        indicators: &Tensor,
        earlier: &[PreparedSample],
    ) -> Result<PreparedSample> {
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

        let mut grid = Vec::with_capacity(n);
        let mut edit_tokens = Vec::with_capacity(n - 1);
        let mut contexts = Vec::with_capacity(n);
        for f in 0..n {
            let (x, rows, cols) =
                self.frame_input(index, f, &sample.frames[f], &sample.masks[f])?;
            grid.push((rows, cols));
            if f > 0 {
                edit_tokens.push(self.x_embedder.forward(&x)?.broadcast_add(&indicator(f)?)?);
            }
            let context = self.context_input(index, f, &sample.contexts[f])?;
            // Cut for training (`segments`): every block's keys and values come from it.
            contexts.push(segments::cut(
                &self
                    .y_embedder
                    .forward(&context)?
                    .broadcast_add(&indicator(f)?)?,
            )?);
        }
        let cross_kv = self
            .blocks
            .iter()
            .map(|block| {
                contexts
                    .iter()
                    .map(|c| block.context_keys_values(c))
                    .collect::<candle_core::Result<Vec<_>>>()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let rope = match earlier.iter().find(|e| e.grid == grid) {
            Some(e) => e.rope.clone(),
            None => self.rope.tables(&grid, &self.device)?,
        };
        Ok(PreparedSample {
            grid,
            target_mask: self.input(&sample.masks[0])?,
            target_indicator: indicator(0)?,
            edit_tokens: if edit_tokens.is_empty() {
                None
            } else {
                Some(Tensor::cat(&edit_tokens, 0)?)
            },
            rope,
            cross_kv,
        })
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
}
