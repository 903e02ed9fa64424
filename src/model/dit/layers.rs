//! The small building blocks the DiT repeats (upstream `layers.py`): the two-layer MLP with
//! tanh-approximated GELU, RMSNorm computed in f32, the affine-free LayerNorm and the adaLN
//! modulation `x * (1 + scale) + shift`.

use super::rope::RopeTables;
use crate::kernels;
use crate::model::linear::{linear, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// LayerNorm and RMSNorm epsilon used everywhere in the DiT.
pub const NORM_EPS: f64 = 1e-6;

/// `fc1 -> GELU(tanh) -> fc2`, as upstream `Mlp`.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(in_dim: usize, hidden: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(in_dim, hidden, vb.pp("fc1"))?,
            fc2: linear(hidden, out_dim, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = self.fc1.forward(xs)?;
        self.fc2
            .forward_activated(&hidden, kernels::Activation::GeluTanh)
    }
}

/// RMSNorm with a learnt scale; the normalisation runs in f32 whatever the model dtype.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
}

impl RmsNorm {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
        })
    }
}

impl RmsNorm {
    /// The norm of the rows of `xs [batch * tokens, dim]`, split into `heads`:
    /// `[batch, heads, tokens, dim / heads]`, rotated by `rope` when given (one op on the CPU).
    pub fn forward_heads(
        &self,
        xs: &Tensor,
        batch: usize,
        heads: usize,
        rope: Option<&RopeTables>,
    ) -> Result<Tensor> {
        let rotation = rope.map(RopeTables::tables);
        kernels::rms_norm_heads(xs, &self.weight, NORM_EPS, rotation, batch, heads)
    }
}

/// adaLN: the affine-free LayerNorm (eps [`NORM_EPS`]) then `x * (1 + scale) + shift`, with
/// `shift` and `scale` broadcast over tokens.
pub fn modulated_layer_norm(xs: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    kernels::modulated_layer_norm(xs, shift, scale, NORM_EPS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn rms_norm_of_known_numbers() {
        let dev = Device::Cpu;
        let norm = RmsNorm {
            weight: Tensor::new(&[1f32, 2.0], &dev).unwrap(),
        };
        // rms of (3, 4) = sqrt(12.5); outputs (3, 4) / rms * (1, 2).
        let x = Tensor::new(&[[3f32, 4.0]], &dev).unwrap();
        let y = norm.forward_heads(&x, 1, 1, None).unwrap();
        assert_eq!(y.dims(), &[1, 1, 1, 2]);
        let y = y.flatten_all().unwrap();
        let r = (12.5f32 + 1e-6).sqrt();
        close(&y.to_vec1::<f32>().unwrap(), &[3.0 / r, 8.0 / r], 1e-6);
    }

    #[test]
    fn layer_norm_has_no_affine_then_scales_and_shifts_every_token() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]], &dev).unwrap();
        let shift = Tensor::new(&[[10f32, 20.0, 30.0, 40.0]], &dev).unwrap();
        let scale = Tensor::new(&[[1f32, -0.5, 0.0, 0.0]], &dev).unwrap();
        let y = modulated_layer_norm(&x, &shift, &scale)
            .unwrap()
            .flatten_all()
            .unwrap();
        // Row 1: mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5; row 2: mean 2, variance 4.
        let s = (3.5f32 + 1e-6).sqrt();
        let t = (4f32 + 1e-6).sqrt();
        close(
            &y.to_vec1::<f32>().unwrap(),
            &[
                10.0 - 4.0 / s,
                20.0 - 0.5 / s,
                30.0,
                40.0 + 3.0 / s,
                10.0 - 4.0 / t,
                20.0 - 1.0 / t,
                30.0 + 2.0 / t,
                40.0 + 2.0 / t,
            ],
            1e-5,
        );
    }
}
