//! The small building blocks the DiT repeats (upstream `layers.py`): the two-layer MLP with
//! tanh-approximated GELU, RMSNorm computed in f32, the affine-free LayerNorm and the adaLN
//! modulation `x * (1 + scale) + shift`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

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
        // candle's `gelu` is the tanh approximation (PyTorch `approximate='tanh'`).
        self.fc2.forward(&self.fc1.forward(xs)?.gelu()?)
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

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let x = xs.to_dtype(DType::F32)?;
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + NORM_EPS)?.sqrt()?;
        x.broadcast_div(&rms)?
            .to_dtype(xs.dtype())?
            .broadcast_mul(&self.weight)
    }
}

/// LayerNorm over the last dimension without scale or bias (eps [`NORM_EPS`]).
pub fn layer_norm(xs: &Tensor) -> Result<Tensor> {
    let x = xs.to_dtype(DType::F32)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let std = (centred.sqr()?.mean_keepdim(D::Minus1)? + NORM_EPS)?.sqrt()?;
    centred.broadcast_div(&std)?.to_dtype(xs.dtype())
}

/// adaLN modulation: `x * (1 + scale) + shift`, with `shift` and `scale` broadcast over tokens.
pub fn modulate(xs: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    xs.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
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
        let y = norm.forward(&x).unwrap().flatten_all().unwrap();
        let r = (12.5f32 + 1e-6).sqrt();
        close(&y.to_vec1::<f32>().unwrap(), &[3.0 / r, 8.0 / r], 1e-6);
    }

    #[test]
    fn layer_norm_has_no_affine() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0, 3.0, 6.0]], &dev).unwrap();
        let y = layer_norm(&x).unwrap().flatten_all().unwrap();
        // mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5
        let s = (3.5f32 + 1e-6).sqrt();
        close(
            &y.to_vec1::<f32>().unwrap(),
            &[-2.0 / s, -1.0 / s, 0.0, 3.0 / s],
            1e-6,
        );
    }

    #[test]
    fn modulate_scales_then_shifts_every_token() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let shift = Tensor::new(&[[10f32, 20.0]], &dev).unwrap();
        let scale = Tensor::new(&[[1f32, -0.5]], &dev).unwrap();
        let y = modulate(&x, &shift, &scale).unwrap().flatten_all().unwrap();
        close(&y.to_vec1::<f32>().unwrap(), &[12.0, 21.0, 16.0, 22.0], 0.0);
    }
}
