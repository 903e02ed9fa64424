//! `--dtype bf16` on the CPU, as PyTorch's CPU autocast runs a model: the weights of its
//! products stored in bf16 and multiplied through the bf16 products of [`crate::kernels`] —
//! the DiT's linear layers (the matrices named `*.weight`), the VAE's convolutions (the
//! `*.weight` of rank 4) — and everything else (norms, embeddings, the DiT's patch
//! convolution, the activations between layers) in f32. A model built from [`var_builder`]
//! computes in f32 and finds those weights in bf16.

use crate::model::checkpoint::Tensors;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// Whether `--dtype bf16` on `device` means bf16 linear weights in an f32 model (the CPU) rather
/// than a model in bf16 throughout (a GPU).
pub fn applies(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::BF16
}

/// The dtype a model loaded in `dtype` on `device` computes in: f32 where [`applies`], else
/// `dtype` itself.
pub fn activations(device: &Device, dtype: DType) -> DType {
    if applies(device, dtype) {
        DType::F32
    } else {
        dtype
    }
}

/// Which weights of a model its bf16 products take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// Linear layers: `*.weight` matrices.
    Linear,
    /// 2D convolutions: `*.weight` of rank 4.
    Convolution,
}

impl Products {
    /// Whether `t`, named `name`, is one of these weights.
    fn takes(self, name: &str, t: &Tensor) -> bool {
        self.takes_rank(name, t.rank())
    }

    /// Whether a weight named `name` of rank `rank` is one of these.
    fn takes_rank(self, name: &str, rank: usize) -> bool {
        let products_rank = match self {
            Products::Linear => 2,
            Products::Convolution => 4,
        };
        name.ends_with(".weight") && rank == products_rank
    }
}

/// The dtype a model of `products` loaded in `dtype` on `device` holds its weight `name` of
/// rank `rank` in: where [`applies`], bf16 for the product weights and f32 for the rest; else
/// `dtype`.
pub fn held_dtype(
    device: &Device,
    dtype: DType,
    products: Products,
    name: &str,
    rank: usize,
) -> DType {
    if !applies(device, dtype) {
        dtype
    } else if products.takes_rank(name, rank) {
        DType::BF16
    } else {
        DType::F32
    }
}

/// Tensors whose product weights stay as stored (bf16) and the rest come in the dtype asked
/// for.
struct ProductWeightsInBf16(Tensors, Products);

impl SimpleBackend for ProductWeightsInBf16 {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("{name}: shape {:?}, expected {s:?}", t.shape())
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let Some(t) = self.0.get(name) else {
            candle_core::bail!("no tensor {name}")
        };
        let t = t.to_device(dev)?;
        if t.dtype() == DType::BF16 && self.1.takes(name, &t) {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// A builder of an f32 model on the CPU from `tensors`, the weights of its `products`
/// converted to bf16 (each freed in its f32 form as it goes).
pub fn var_builder(mut tensors: Tensors, products: Products) -> Result<VarBuilder<'static>> {
    for (name, t) in tensors.iter_mut() {
        if products.takes(name, t) {
            *t = t.to_dtype(DType::BF16)?;
        }
    }
    Ok(VarBuilder::from_backend(
        Box::new(ProductWeightsInBf16(tensors, products)),
        activations(&Device::Cpu, DType::BF16),
        Device::Cpu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_weights_come_in_bf16_and_the_rest_in_f32() {
        let dev = Device::Cpu;
        let tensors = Tensors::from([
            (
                "fc.weight".to_string(),
                Tensor::ones((3, 2), DType::F32, &dev).unwrap(),
            ),
            (
                "fc.bias".to_string(),
                Tensor::ones(3, DType::F32, &dev).unwrap(),
            ),
            (
                "norm.weight".to_string(),
                Tensor::ones(2, DType::BF16, &dev).unwrap(),
            ),
            (
                "table".to_string(),
                Tensor::ones((6, 2), DType::F32, &dev).unwrap(),
            ),
        ]);
        let vb = var_builder(tensors, Products::Linear).unwrap();
        assert_eq!(vb.dtype(), DType::F32);
        let dtype = |name: &str, shape: &[usize]| vb.get(shape, name).unwrap().dtype();
        assert_eq!(dtype("fc.weight", &[3, 2]), DType::BF16);
        assert_eq!(dtype("fc.bias", &[3]), DType::F32);
        assert_eq!(dtype("norm.weight", &[2]), DType::F32);
        assert_eq!(dtype("table", &[6, 2]), DType::F32);
        assert!(vb.get((2, 3), "fc.weight").is_err());
        assert!(vb.get(3, "missing").is_err());
        assert!(applies(&dev, DType::BF16) && !applies(&dev, DType::F32));
        for (name, rank, want) in [
            ("fc.weight", 2, DType::BF16),
            ("fc.bias", 1, DType::F32),
            ("norm.weight", 1, DType::F32),
            ("table", 2, DType::F32),
        ] {
            assert_eq!(
                held_dtype(&dev, DType::BF16, Products::Linear, name, rank),
                want
            );
            assert_eq!(
                held_dtype(&dev, DType::F32, Products::Linear, name, rank),
                DType::F32
            );
        }
        assert_eq!(
            held_dtype(&dev, DType::BF16, Products::Convolution, "conv.weight", 4),
            DType::BF16
        );
        assert_eq!(activations(&dev, DType::BF16), DType::F32);
        assert_eq!(activations(&dev, DType::F16), DType::F16);
    }

    #[test]
    fn convolution_weights_come_in_bf16_and_matrices_in_f32() {
        let dev = Device::Cpu;
        let tensors = Tensors::from([
            (
                "conv.weight".to_string(),
                Tensor::ones((3, 2, 3, 3), DType::F32, &dev).unwrap(),
            ),
            (
                "conv.bias".to_string(),
                Tensor::ones(3, DType::F32, &dev).unwrap(),
            ),
            (
                "fc.weight".to_string(),
                Tensor::ones((3, 2), DType::F32, &dev).unwrap(),
            ),
        ]);
        let vb = var_builder(tensors, Products::Convolution).unwrap();
        let dtype = |name: &str, shape: &[usize]| vb.get(shape, name).unwrap().dtype();
        assert_eq!(dtype("conv.weight", &[3, 2, 3, 3]), DType::BF16);
        assert_eq!(dtype("conv.bias", &[3]), DType::F32);
        assert_eq!(dtype("fc.weight", &[3, 2]), DType::F32);
    }
}
