//! `--dtype bf16` on the CPU, as PyTorch's CPU autocast runs a model: the linear layers'
//! weights (the matrices named `*.weight`) stored in bf16 and multiplied through the bf16
//! products of [`crate::kernels`], everything else (norms, embeddings, convolutions, the
//! activations between layers) in f32. A model built from [`var_builder`] computes in f32 and
//! finds its linear weights in bf16.

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

/// Whether a tensor is a linear layer's weight.
fn is_linear_weight(name: &str, t: &Tensor) -> bool {
    name.ends_with(".weight") && t.rank() == 2
}

/// Tensors whose linear weights stay as stored (bf16) and the rest come in the dtype asked for.
struct LinearWeightsInBf16(Tensors);

impl SimpleBackend for LinearWeightsInBf16 {
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
        if t.dtype() == DType::BF16 && is_linear_weight(name, &t) {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// A builder of an f32 model on the CPU from `tensors`, its linear weights converted to bf16
/// (each freed in its f32 form as it goes).
pub fn var_builder(mut tensors: Tensors) -> Result<VarBuilder<'static>> {
    for (name, t) in tensors.iter_mut() {
        if is_linear_weight(name, t) {
            *t = t.to_dtype(DType::BF16)?;
        }
    }
    Ok(VarBuilder::from_backend(
        Box::new(LinearWeightsInBf16(tensors)),
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
        let vb = var_builder(tensors).unwrap();
        assert_eq!(vb.dtype(), DType::F32);
        let dtype = |name: &str, shape: &[usize]| vb.get(shape, name).unwrap().dtype();
        assert_eq!(dtype("fc.weight", &[3, 2]), DType::BF16);
        assert_eq!(dtype("fc.bias", &[3]), DType::F32);
        assert_eq!(dtype("norm.weight", &[2]), DType::F32);
        assert_eq!(dtype("table", &[6, 2]), DType::F32);
        assert!(vb.get((2, 3), "fc.weight").is_err());
        assert!(vb.get(3, "missing").is_err());
        assert!(applies(&dev, DType::BF16) && !applies(&dev, DType::F32));
        assert_eq!(activations(&dev, DType::BF16), DType::F32);
        assert_eq!(activations(&dev, DType::F16), DType::F16);
    }
}
