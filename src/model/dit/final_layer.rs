//! The DiT's output layer (upstream `T2IFinalLayer`): LayerNorm modulated by the timestep
//! embedding (before `t_block`) and a linear map of each token to its patch of output channels.

use super::config::Config;
use super::layers::modulated_layer_norm;
use crate::model::linear::{linear, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct FinalLayer {
    linear: Linear,
    /// Learnt offsets of shift and scale, `[2, hidden]`.
    scale_shift_table: Tensor,
}

impl FinalLayer {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let out = cfg.patch_size * cfg.patch_size * cfg.out_channels();
        Ok(Self {
            linear: linear(hidden, out, vb.pp("linear"))?,
            scale_shift_table: vb.get((2, hidden), "scale_shift_table")?,
        })
    }

    /// `xs`: `[tokens, hidden]`, `t`: `[1, hidden]` -> `[tokens, p*p*out_channels]`.
    pub fn forward(&self, xs: &Tensor, t: &Tensor) -> Result<Tensor> {
        let table = self.scale_shift_table.broadcast_add(t)?;
        let (shift, scale) = (table.narrow(0, 0, 1)?, table.narrow(0, 1, 1)?);
        self.linear
            .forward(&modulated_layer_norm(xs, &shift, &scale)?)
    }
}
