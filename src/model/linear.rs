//! The linear layer of the DiT (PyTorch `nn.Linear`): `x W^T + b` on the last dimension, with
//! the product from [`crate::kernels`] (OpenBLAS on the CPU). Weights are built by candle-nn's
//! `linear` so names (`weight [out, in]`, `bias [out]`) and initialisations stay candle's.

use crate::kernels;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// A linear layer with bias, `weight [out_dim, in_dim]` and `bias [out_dim]` under `vb`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let layer = candle_nn::linear(in_dim, out_dim, vb)?;
    Ok(Linear {
        weight: layer.weight().clone(),
        bias: layer.bias().cloned(),
    })
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let Some((&in_dim, lead)) = dims.split_last() else {
            candle_core::bail!("linear layer on a scalar")
        };
        let out = kernels::linear(&xs.reshape(((), in_dim))?, &self.weight, self.bias.as_ref())?;
        let mut shape = lead.to_vec();
        shape.push(out.dim(1)?);
        out.reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn computes_x_wt_plus_b_on_the_last_dimension() {
        let dev = Device::Cpu;
        let weights = HashMap::from([
            (
                "weight".to_string(),
                Tensor::new(&[[1f32, 2.0], [0.0, -1.0], [3.0, 0.5]], &dev).unwrap(),
            ),
            (
                "bias".to_string(),
                Tensor::new(&[10f32, 20.0, 30.0], &dev).unwrap(),
            ),
        ]);
        let layer = linear(2, 3, VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap();
        let x = Tensor::new(&[[[1f32, 1.0]], [[2.0, -2.0]]], &dev).unwrap();
        let y = layer.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 1, 3]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [13.0, 19.0, 33.5, 8.0, 22.0, 35.0]
        );
    }
}
