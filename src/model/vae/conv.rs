//! The VAE's convolutions: square kernels with bias, same-size (padding k/2), the encoder's
//! stride-2 downsampling after a bottom/right zero pad, and the decoder's convolution of a 2x
//! nearest upsampling. On the CPU in f32 they run through [`kernels::conv2d`], which reads the
//! pad and the upsampling in place instead of materialising them; elsewhere through candle.

use super::blocks::GroupNorm;
use crate::kernels::{self, ConvParams};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

/// One convolution's weight `[C_out, C_in, k, k]` and bias.
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
}

impl Conv {
    /// `weight` and `bias` under `vb`, as PyTorch's `Conv2d(in_ch, out_ch, kernel)` names them.
    pub fn new(in_ch: usize, out_ch: usize, kernel: usize, vb: VarBuilder) -> Result<Self> {
        let conv = candle_nn::conv2d(in_ch, out_ch, kernel, Conv2dConfig::default(), vb)?;
        let Some(bias) = conv.bias().cloned() else {
            candle_core::bail!("the VAE's convolutions have biases")
        };
        Ok(Self {
            weight: conv.weight().clone(),
            bias,
            kernel,
        })
    }

    /// The convolution of `x` read as `params` say.
    pub fn apply(&self, x: &Tensor, params: ConvParams) -> Result<Tensor> {
        kernels::conv2d(x, &self.weight, &self.bias, params, None, None)
            .unwrap_or_else(|| self.composed(x, params))
    }

    /// The same-size convolution of `pre(x)` (a GroupNorm, then swish when its flag says so)
    /// plus `residual`, each part left out when not given.
    pub fn fused(
        &self,
        x: &Tensor,
        pre: Option<(&GroupNorm, bool)>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let params = self.same_size_params(x, false)?;
        let pre_norm = pre.map(|(norm, swish)| norm.pre(swish));
        if let Some(fast) = kernels::conv2d(x, &self.weight, &self.bias, params, pre_norm, residual)
        {
            return fast;
        }
        let input = match pre {
            Some((norm, swish)) => norm.forward_pre(x, swish)?,
            None => x.clone(),
        };
        let out = self.composed(&input, params)?;
        match residual {
            Some(r) => out + r,
            None => Ok(out),
        }
    }

    /// [`Conv::apply`] from candle ops: the upsampling and the zero pad materialised.
    fn composed(&self, x: &Tensor, params: ConvParams) -> Result<Tensor> {
        let x = if params.upsample {
            let (_, _, h, w) = x.dims4()?;
            x.upsample_nearest2d(2 * h, 2 * w)?
        } else {
            x.clone()
        };
        // Zeros past the bottom and right edges, as many as the output size needs.
        let (_, _, h, w) = x.dims4()?;
        let span = |out: usize| (out.max(1) - 1) * params.stride + self.kernel;
        let extra_h = span(params.out_h).saturating_sub(h + 2 * params.padding);
        let extra_w = span(params.out_w).saturating_sub(w + 2 * params.padding);
        let x = x
            .pad_with_zeros(D::Minus2, 0, extra_h)?
            .pad_with_zeros(D::Minus1, 0, extra_w)?;
        x.conv2d(
            &self.weight.to_dtype(x.dtype())?,
            params.padding,
            params.stride,
            1,
            1,
        )?
        .narrow(D::Minus2, 0, params.out_h)?
        .narrow(D::Minus1, 0, params.out_w)?
        .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }

    /// The same-size convolution (stride 1, padding k/2) of `x`, upsampled 2x first when
    /// `upsample`.
    pub fn same_size(&self, x: &Tensor, upsample: bool) -> Result<Tensor> {
        self.apply(x, self.same_size_params(x, upsample)?)
    }

    fn same_size_params(&self, x: &Tensor, upsample: bool) -> Result<ConvParams> {
        let (_, _, h, w) = x.dims4()?;
        let scale = if upsample { 2 } else { 1 };
        Ok(ConvParams {
            stride: 1,
            padding: self.kernel / 2,
            upsample,
            out_h: h * scale,
            out_w: w * scale,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.same_size(x, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{max_diff, rounded};
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn the_fast_kernel_matches_candles_convolution() {
        let dev = Device::Cpu;
        for (c_in, c_out, k) in [(5, 7, 3), (6, 4, 1)] {
            let tensors = HashMap::from([
                (
                    "weight".to_string(),
                    Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &dev).unwrap(),
                ),
                (
                    "bias".to_string(),
                    Tensor::randn(0f32, 1.0, c_out, &dev).unwrap(),
                ),
            ]);
            let conv = Conv::new(
                c_in,
                c_out,
                k,
                VarBuilder::from_tensors(tensors, DType::F32, &dev),
            )
            .unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, c_in, 9, 11), &dev).unwrap();
            let cases = [
                (1, k / 2, false, 9, 11),
                (1, k / 2, true, 18, 22),
                (2, 0, false, 4, 5),
            ];
            for (stride, padding, upsample, out_h, out_w) in cases {
                let params = ConvParams {
                    stride,
                    padding,
                    upsample,
                    out_h,
                    out_w,
                };
                let fast = conv.apply(&x, params).unwrap();
                let slow = conv.composed(&x, params).unwrap();
                assert_eq!(fast.dims(), &[2, c_out, out_h, out_w], "{params:?}");
                let diff = max_diff(&fast, &slow);
                assert!(diff < 1e-4, "{params:?}: {diff}");
            }
        }
    }

    #[test]
    fn normalising_on_the_fly_and_adding_the_residual_match_the_composed_block() {
        let dev = Device::Cpu;
        let (c_in, c_out) = (64, 32);
        let vb = |t: Vec<(&str, Tensor)>| {
            let map: HashMap<String, Tensor> =
                t.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            VarBuilder::from_tensors(map, DType::F32, &dev)
        };
        let conv = Conv::new(
            c_in,
            c_out,
            3,
            vb(vec![
                (
                    "weight",
                    Tensor::randn(0f32, 0.1, (c_out, c_in, 3, 3), &dev).unwrap(),
                ),
                ("bias", Tensor::randn(0f32, 1.0, c_out, &dev).unwrap()),
            ]),
        )
        .unwrap();
        let norm = super::super::blocks::normalize(
            c_in,
            vb(vec![
                ("weight", Tensor::randn(0f32, 1.0, c_in, &dev).unwrap()),
                ("bias", Tensor::randn(0f32, 1.0, c_in, &dev).unwrap()),
            ]),
        )
        .unwrap();
        let x = (Tensor::randn(0f32, 3.0, (2, c_in, 10, 8), &dev).unwrap() + 1.5).unwrap();
        let residual = Tensor::randn(0f32, 1.0, (2, c_out, 10, 8), &dev).unwrap();
        let params = conv.same_size_params(&x, false).unwrap();
        for swish in [true, false] {
            let fast = conv
                .fused(&x, Some((&norm, swish)), Some(&residual))
                .unwrap();
            let input = norm.forward_pre(&x, swish).unwrap();
            let slow = (conv.composed(&input, params).unwrap() + &residual).unwrap();
            let diff = max_diff(&fast, &slow);
            assert!(diff < 1e-4, "swish {swish}: {diff}");
        }
    }

    #[test]
    fn bf16_weights_multiply_bf16_bands_as_autocast_does() {
        let dev = Device::Cpu;
        let (c_in, c_out) = (32, 24);
        let weight = (Tensor::randn(0f32, 0.1, (c_out, c_in, 3, 3), &dev).unwrap() + 0.01).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c_out, &dev).unwrap();
        let tensors = HashMap::from([
            ("conv.weight".to_string(), weight.clone()),
            ("conv.bias".to_string(), bias.clone()),
        ]);
        let vb = crate::model::cpu_bf16::var_builder(
            tensors,
            crate::model::cpu_bf16::Products::Convolution,
        )
        .unwrap();
        let conv = Conv::new(c_in, c_out, 3, vb.pp("conv")).unwrap();
        assert_eq!(conv.weight.dtype(), DType::BF16);
        let norm_vb = VarBuilder::from_tensors(
            HashMap::from([
                (
                    "weight".to_string(),
                    Tensor::randn(0f32, 1.0, c_in, &dev).unwrap(),
                ),
                (
                    "bias".to_string(),
                    Tensor::randn(0f32, 1.0, c_in, &dev).unwrap(),
                ),
            ]),
            DType::F32,
            &dev,
        );
        let norm = super::super::blocks::normalize(c_in, norm_vb).unwrap();
        let x = (Tensor::randn(0f32, 2.0, (2, c_in, 9, 7), &dev).unwrap() + 0.5).unwrap();
        let residual = Tensor::randn(0f32, 1.0, (2, c_out, 9, 7), &dev).unwrap();
        // The same convolution in f32 of the operands rounded to bf16.
        let f32_conv = Conv {
            weight: rounded(&weight),
            bias,
            kernel: 3,
        };
        let within = |fast: Tensor, slow: Tensor, limit: f32, what: &str| {
            let scale: f32 = slow.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            let diff = max_diff(&fast, &slow);
            assert!(diff <= limit * scale, "{what}: {diff} of {scale}");
        };
        let fast = match conv.same_size(&x, true) {
            Ok(fast) => fast,
            // No bf16 product on a CPU without the instructions: an error, never a wrong
            // result.
            Err(e) => {
                assert!(crate::kernels::cpu_bf16_support().is_err(), "{e}");
                return;
            }
        };
        within(
            fast,
            f32_conv
                .composed(&rounded(&x), conv.same_size_params(&x, true).unwrap())
                .unwrap(),
            // The 2x upsampling's convolution sums the taps that read the same value, and its
            // phase kernels are rounded to bf16 after the sum.
            4e-3,
            "upsampled",
        );
        let params = conv.same_size_params(&x, false).unwrap();
        let fast = conv.fused(&x, None, Some(&residual)).unwrap();
        let slow = (f32_conv.composed(&rounded(&x), params).unwrap() + &residual).unwrap();
        within(fast, slow, 1e-5, "with residual");
        let fast = conv
            .fused(&x, Some((&norm, true)), Some(&residual))
            .unwrap();
        let input = rounded(&norm.forward_pre(&x, true).unwrap());
        let slow = (f32_conv.composed(&input, params).unwrap() + &residual).unwrap();
        // The kernel's swish (its own exp) and candle's differ by an ulp or two, which now and
        // then rounds an input to the neighbouring bf16 value: one such step moves an output
        // by up to |w| 2^-7 |x| (about 5e-3 here, under the bound of 1e-3 of the largest
        // output, about 9e-3), far below what a wrong tap or channel gives.
        within(fast, slow, 1e-3, "normalised, with residual");
    }
}
