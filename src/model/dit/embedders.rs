//! The DiT's input embedders: the patch embedder (`x_embedder`, a stride-p convolution over a
//! frame's latent plus mask channel), the timestep embedder (`t_embedder`, sinusoidal features
//! then an MLP) and the adaLN-single projection of the timestep (`t_block`). The caption
//! embedder (`y_embedder`) is a plain [`Mlp`](super::layers::Mlp).

use crate::model::linear::{linear, Linear};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, VarBuilder};

/// Size of the sinusoidal timestep features (upstream `frequency_embedding_size`).
pub const FREQUENCY_EMBEDDING_SIZE: usize = 256;
/// Longest period of the sinusoidal timestep features.
const MAX_PERIOD: f64 = 10000.0;

/// `x_embedder`: turns a `[C, h, w]` frame into `h/p * w/p` tokens, row-major.
#[derive(Debug, Clone)]
pub struct PatchEmbedder {
    proj: Conv2d,
}

impl PatchEmbedder {
    pub fn new(patch: usize, in_channels: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            stride: patch,
            ..Default::default()
        };
        Ok(Self {
            proj: conv2d(in_channels, hidden, patch, cfg, vb.pp("proj"))?,
        })
    }

    /// `[C, h, w]` -> `[(h/p) * (w/p), hidden]`.
    pub fn forward(&self, frame: &Tensor) -> Result<Tensor> {
        let x = self.proj.forward(&frame.unsqueeze(0)?)?;
        x.flatten_from(2)?.squeeze(0)?.t()?.contiguous()
    }
}

/// `t_embedder`: sinusoidal features of the timestep, then `Linear-SiLU-Linear`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedder {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedder {
    pub fn new(hidden: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("mlp");
        Ok(Self {
            linear_1: linear(FREQUENCY_EMBEDDING_SIZE, hidden, vb.pp("0"))?,
            linear_2: linear(hidden, hidden, vb.pp("2"))?,
        })
    }

    /// `[B]` timesteps -> `[B, hidden]`.
    pub fn forward(&self, t: &[f32], dtype: DType, device: &Device) -> Result<Tensor> {
        let freq = timestep_embedding(t, FREQUENCY_EMBEDDING_SIZE, device)?.to_dtype(dtype)?;
        self.linear_2
            .forward(&self.linear_1.forward(&freq)?.silu()?)
    }
}

/// Sinusoidal embedding of (possibly fractional) timesteps, `[cos | sin]` (cos first), computed
/// in f32 in the same order of operations as upstream so that large timesteps round alike.
pub fn timestep_embedding(t: &[f32], dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let scale = -(MAX_PERIOD.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|j| (scale * j as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        let args = freqs.iter().map(|f| ti * f);
        out.extend(args.clone().map(f32::cos));
        out.extend(args.map(f32::sin));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_vec(out, (t.len(), dim), device)
}

/// `t_block`: `SiLU -> Linear` to the six adaLN-single modulation vectors.
#[derive(Debug, Clone)]
pub struct TBlock {
    linear: Linear,
}

impl TBlock {
    pub fn new(hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: linear(hidden, 6 * hidden, vb.pp("1"))?,
        })
    }
}

impl Module for TBlock {
    fn forward(&self, t: &Tensor) -> Result<Tensor> {
        self.linear.forward(&t.silu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_embedding_is_cos_then_sin() {
        let e = timestep_embedding(&[0.0, 2.0], 4, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // half = 2: frequencies 1 and 1e4^(-1/2) = 0.01.
        assert_eq!(e[0], vec![1.0, 1.0, 0.0, 0.0]);
        let want = [2f32.cos(), 0.02f32.cos(), 2f32.sin(), 0.02f32.sin()];
        for (a, b) in e[1].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?} vs {want:?}", e[1]);
        }
    }

    #[test]
    fn timestep_embedding_pads_odd_sizes_with_zero() {
        let e = timestep_embedding(&[1.0], 3, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(e[0], vec![1f32.cos(), 1f32.sin(), 0.0]);
    }

    #[test]
    fn patch_embedder_orders_tokens_row_major() {
        let dev = Device::Cpu;
        // One output channel summing each 2x2 patch of a single input channel.
        let mut map = std::collections::HashMap::new();
        map.insert(
            "proj.weight".to_string(),
            Tensor::ones((1, 1, 2, 2), DType::F32, &dev).unwrap(),
        );
        map.insert(
            "proj.bias".to_string(),
            Tensor::zeros(1, DType::F32, &dev).unwrap(),
        );
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        let pe = PatchEmbedder::new(2, 1, 1, vb).unwrap();
        let frame = Tensor::arange(0f32, 16.0, &dev)
            .unwrap()
            .reshape((1, 2, 8))
            .unwrap();
        let tokens = pe.forward(&frame).unwrap();
        assert_eq!(tokens.dims(), &[4, 1]);
        // Patches of [[0..8],[8..16]]: (0+1+8+9), (2+3+10+11), ...
        assert_eq!(
            tokens.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![18.0, 26.0, 34.0, 42.0]
        );
    }
}
