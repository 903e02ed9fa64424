//! The building blocks shared by the VAE encoder and decoder (CompVis ldm `model.py`, as scepter
//! copies it): GroupNorm(32, eps 1e-6), swish, the resnet block without time embedding, the
//! single-head spatial self-attention with 1x1-convolution projections, and the 2x resamplers
//! (stride-2 convolution after an asymmetric zero pad, nearest upsampling then a convolution).

use super::conv::Conv;
use crate::kernels;
use crate::kernels::{ConvParams, PreNorm};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `Normalize`: GroupNorm with 32 groups, eps 1e-6 and an affine map.
pub(crate) fn normalize(channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    if !channels.is_multiple_of(GROUPS) {
        candle_core::bail!("GroupNorm({GROUPS}) cannot split {channels} channels");
    }
    Ok(GroupNorm {
        weight: vb.get(channels, "weight")?,
        bias: vb.get(channels, "bias")?,
    })
}

const GROUPS: usize = 32;
const EPS: f64 = 1e-6;

/// GroupNorm over [B, C, H, W]. The group statistics are summed by rows (over the width, then
/// over the rows and the group's channels) rather than in one long run: one f32 run over a
/// full-resolution group loses about ten times PyTorch's accuracy. Half precision inputs get
/// their statistics in f32.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
}

impl GroupNorm {
    /// The norm, then swish when `swish`, as a convolution's input to apply on the fly.
    pub fn pre(&self, swish: bool) -> PreNorm<'_> {
        PreNorm {
            weight: &self.weight,
            bias: &self.bias,
            groups: GROUPS,
            eps: EPS as f32,
            swish,
        }
    }

    /// The norm, then swish (`x * sigmoid(x)`) when `swish`.
    pub fn forward_pre(&self, x: &Tensor, swish: bool) -> Result<Tensor> {
        let normed = self.forward(x)?;
        if swish {
            candle_nn::ops::silu(&normed)
        } else {
            Ok(normed)
        }
    }

    /// The norm from candle ops, for other devices and dtypes.
    fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let internal = match x.dtype() {
            DType::F16 | DType::BF16 => DType::F32,
            dtype => dtype,
        };
        let grouped = x
            .to_dtype(internal)?
            .reshape((b, GROUPS, c / GROUPS, h, w))?;
        let count = ((c / GROUPS) * h * w) as f64;
        let group_mean = |t: &Tensor| -> Result<Tensor> {
            t.sum_keepdim(4)?.sum_keepdim(3)?.sum_keepdim(2)? / count
        };
        let centred = grouped.broadcast_sub(&group_mean(&grouped)?)?;
        let var = group_mean(&centred.sqr()?)?;
        let normed = centred
            .broadcast_div(&(var + EPS)?.sqrt()?)?
            .reshape((b, c, h, w))?
            .to_dtype(x.dtype())?;
        normed
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match kernels::group_norm(x, &self.weight, &self.bias, GROUPS, EPS) {
            Some(fused) => fused,
            None => self.composed(x),
        }
    }
}

/// A square convolution with stride 1 that keeps the spatial size (padding k/2).
pub(crate) fn conv(in_ch: usize, out_ch: usize, kernel: usize, vb: VarBuilder) -> Result<Conv> {
    Conv::new(in_ch, out_ch, kernel, vb)
}

/// `ResnetBlock`: norm1-swish-conv1-norm2-swish-conv2 plus the input, through a 1x1
/// `nin_shortcut` when the channel count changes.
#[derive(Debug, Clone)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv,
    norm2: GroupNorm,
    conv2: Conv,
    nin_shortcut: Option<Conv>,
}

impl ResnetBlock {
    pub fn new(in_ch: usize, out_ch: usize, vb: VarBuilder) -> Result<Self> {
        let nin_shortcut = if in_ch != out_ch {
            Some(conv(in_ch, out_ch, 1, vb.pp("nin_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: normalize(in_ch, vb.pp("norm1"))?,
            conv1: conv(in_ch, out_ch, 3, vb.pp("conv1"))?,
            norm2: normalize(out_ch, vb.pp("norm2"))?,
            conv2: conv(out_ch, out_ch, 3, vb.pp("conv2"))?,
            nin_shortcut,
        })
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Each convolution normalises its input on the fly and the residual is added as the
        // output is written: the block holds x, one intermediate and its output.
        let h = self.conv1.fused(x, Some((&self.norm1, true)), None)?;
        match &self.nin_shortcut {
            Some(shortcut) => {
                let h2 = self.conv2.fused(&h, Some((&self.norm2, true)), None)?;
                drop(h);
                shortcut.fused(x, None, Some(&h2))
            }
            None => self.conv2.fused(&h, Some((&self.norm2, true)), Some(x)),
        }
    }
}

/// `AttnBlock`: one attention head over all positions, channels as the head dimension, softmax
/// scale 1/sqrt(C), computed in f32; the result goes through `proj_out` and is added to the input.
#[derive(Debug, Clone)]
pub struct AttnBlock {
    norm: GroupNorm,
    q: Conv,
    k: Conv,
    v: Conv,
    proj_out: Conv,
}

impl AttnBlock {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: normalize(channels, vb.pp("norm"))?,
            q: conv(channels, channels, 1, vb.pp("q"))?,
            k: conv(channels, channels, 1, vb.pp("k"))?,
            v: conv(channels, channels, 1, vb.pp("v"))?,
            proj_out: conv(channels, channels, 1, vb.pp("proj_out"))?,
        })
    }
}

impl Module for AttnBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let normed = self.norm.forward(x)?;
        // [B, C, H, W] -> [B, HW, C] in f32
        let tokens = |conv: &Conv| -> Result<Tensor> {
            conv.forward(&normed)?
                .to_dtype(DType::F32)?
                .reshape((b, c, n))?
                .transpose(1, 2)
        };
        let (q, v) = (tokens(&self.q)?, tokens(&self.v)?);
        let k = tokens(&self.k)?;
        let attended = kernels::attention(&q, &k, &v, (c as f64).powf(-0.5))?;
        let attended = attended
            .transpose(1, 2)?
            .reshape((b, c, h, w))?
            .to_dtype(x.dtype())?;
        x + self.proj_out.forward(&attended)?
    }
}

/// `Downsample`: halves the spatial size, by a stride-2 3x3 convolution after padding one zero
/// row at the bottom and one zero column at the right, or by 2x2 average pooling.
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: Option<Conv>,
}

impl Downsample {
    pub fn new(channels: usize, with_conv: bool, vb: VarBuilder) -> Result<Self> {
        let conv = if with_conv {
            Some(Conv::new(channels, channels, 3, vb.pp("conv"))?)
        } else {
            None
        };
        Ok(Self { conv })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.conv {
            Some(conv) => {
                // A 3x3 stride-2 convolution of the input padded by one zero row and column.
                let (_, _, h, w) = x.dims4()?;
                let out = |n: usize| (n + 1).saturating_sub(3) / 2 + 1;
                conv.apply(
                    x,
                    ConvParams {
                        stride: 2,
                        padding: 0,
                        upsample: false,
                        out_h: out(h),
                        out_w: out(w),
                    },
                )
            }
            None => x.avg_pool2d(2),
        }
    }
}

/// `Upsample`: doubles the spatial size by nearest-neighbour repetition, then a 3x3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: Option<Conv>,
}

impl Upsample {
    pub fn new(channels: usize, with_conv: bool, vb: VarBuilder) -> Result<Self> {
        let conv = if with_conv {
            Some(conv(channels, channels, 3, vb.pp("conv"))?)
        } else {
            None
        };
        Ok(Self { conv })
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.conv {
            Some(conv) => conv.same_size(x, true),
            None => {
                let (_, _, h, w) = x.dims4()?;
                x.upsample_nearest2d(2 * h, 2 * w)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn vb(tensors: Vec<(&str, Tensor)>) -> VarBuilder<'static> {
        let map: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, t)| (k.to_string(), t))
            .collect();
        VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
    }

    #[test]
    fn downsample_pads_bottom_and_right_only() {
        let dev = Device::Cpu;
        let down = Downsample::new(
            1,
            true,
            vb(vec![
                (
                    "conv.weight",
                    Tensor::ones((1, 1, 3, 3), DType::F32, &dev).unwrap(),
                ),
                ("conv.bias", Tensor::zeros(1, DType::F32, &dev).unwrap()),
            ]),
        )
        .unwrap();
        let x = Tensor::ones((1, 1, 4, 4), DType::F32, &dev).unwrap();
        let y = down
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![9.0, 6.0, 6.0, 4.0]);
    }

    #[test]
    fn upsample_repeats_each_pixel_twice_each_way() {
        let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let up = Upsample::new(1, false, vb(vec![])).unwrap();
        let y = up
            .forward(&x)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let expected = [
            [1f32, 1., 2., 2.],
            [1., 1., 2., 2.],
            [3., 3., 4., 4.],
            [3., 3., 4., 4.],
        ];
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            expected.map(|r| r.to_vec()).to_vec()
        );
    }

    #[test]
    fn fused_group_norm_matches_the_composed_one() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 2.0, (2, 64, 9, 7), &dev).unwrap() + 3.0).unwrap();
        let norm = normalize(
            64,
            vb(vec![
                ("weight", Tensor::randn(0f32, 1.0, 64, &dev).unwrap()),
                ("bias", Tensor::randn(0f32, 1.0, 64, &dev).unwrap()),
            ]),
        )
        .unwrap();
        let composed = norm.composed(&x).unwrap();
        let fused = norm.forward(&x).unwrap();
        let diff: f32 = (fused - composed)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn group_norm_uses_biased_variance_and_eps_1e6() {
        let dev = Device::Cpu;
        // 32 channels, one per group, each holding [c, c + 2]: mean c + 1, variance 1.
        let values: Vec<f32> = (0..32).flat_map(|c| [c as f32, c as f32 + 2.0]).collect();
        let x = Tensor::from_vec(values, (1, 32, 1, 2), &dev).unwrap();
        let norm = normalize(
            32,
            vb(vec![
                ("weight", Tensor::ones(32, DType::F32, &dev).unwrap()),
                ("bias", Tensor::zeros(32, DType::F32, &dev).unwrap()),
            ]),
        )
        .unwrap();
        let y = norm
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let expected = 1.0 / (1.0f64 + 1e-6).sqrt();
        for pair in y.chunks(2) {
            assert!((pair[0] as f64 + expected).abs() < 1e-6, "{pair:?}");
            assert!((pair[1] as f64 - expected).abs() < 1e-6, "{pair:?}");
        }
    }
}
