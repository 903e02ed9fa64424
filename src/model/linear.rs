//! The linear layer of the DiT and the image transformers (PyTorch `nn.Linear`): `x W^T + b`
//! on the last dimension, with the product from [`crate::kernels`] (OpenBLAS on the CPU).
//! Weights are built by candle-nn's `linear` so names (`weight [out, in]`, `bias [out]`) and
//! initialisations stay candle's.

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

impl Linear {
    /// Whether the weight is stored in bf16 (`--dtype bf16`).
    pub fn is_bf16(&self) -> bool {
        self.weight.dtype() == candle_core::DType::BF16
    }

    /// One layer whose output is the outputs of `layers` side by side (the query, key and value
    /// projections of one input as a single product); all take the same input and have biases.
    pub fn stacked(layers: &[Linear]) -> Result<Linear> {
        let weights: Vec<&Tensor> = layers.iter().map(|l| &l.weight).collect();
        let biases = layers
            .iter()
            .map(|l| l.bias.as_ref())
            .collect::<Option<Vec<_>>>();
        let Some(biases) = biases else {
            candle_core::bail!("stacked linear layers must all have biases")
        };
        Ok(Linear {
            weight: Tensor::cat(&weights, 0)?,
            bias: Some(Tensor::cat(&biases, 0)?),
        })
    }
}

impl Linear {
    /// The layer applied to `act(xs)` ([`kernels::linear_of_activation`]: under training the
    /// activated values are not kept for the backward pass).
    pub fn forward_activated(&self, xs: &Tensor, act: kernels::Activation) -> Result<Tensor> {
        self.on_rows(xs, |x| {
            kernels::linear_of_activation(x, act, &self.weight, self.bias.as_ref())
        })
    }

    /// `f` on `xs` flattened to `[rows, in_dim]`, its output shaped back.
    fn on_rows(&self, xs: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let dims = xs.dims();
        let Some((&in_dim, lead)) = dims.split_last() else {
            candle_core::bail!("linear layer on a scalar")
        };
        let out = f(&xs.reshape(((), in_dim))?)?;
        let mut shape = lead.to_vec();
        shape.push(out.dim(1)?);
        out.reshape(shape)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.on_rows(xs, |x| kernels::linear(x, &self.weight, self.bias.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// The 2 -> 3 layer of known weights `[[1, 2], [0, -1], [3, 0.5]]`, bias `[10, 20, 30]`.
    fn known_layer() -> Linear {
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
        linear(2, 3, VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap()
    }

    #[test]
    fn computes_x_wt_plus_b_on_the_last_dimension() {
        let dev = Device::Cpu;
        let layer = known_layer();
        let x = Tensor::new(&[[[1f32, 1.0]], [[2.0, -2.0]]], &dev).unwrap();
        let y = layer.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 1, 3]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [13.0, 19.0, 33.5, 8.0, 22.0, 35.0]
        );
    }

    #[test]
    fn stacked_layers_give_their_outputs_side_by_side() {
        let dev = Device::Cpu;
        let stacked = Linear::stacked(&[known_layer(), known_layer()]).unwrap();
        let x = Tensor::new(&[[1f32, 1.0], [2.0, -2.0]], &dev).unwrap();
        let y = stacked.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            y,
            [
                [13.0, 19.0, 33.5, 13.0, 19.0, 33.5],
                [8.0, 22.0, 35.0, 8.0, 22.0, 35.0]
            ]
        );
        let biasless = Linear {
            weight: Tensor::ones((1, 2), DType::F32, &dev).unwrap(),
            bias: None,
        };
        assert!(Linear::stacked(&[known_layer(), biasless]).is_err());
    }
}
