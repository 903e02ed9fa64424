//! The models' norms in one parallel pass: the DiT's modulated LayerNorm
//! `LN(x) * (1 + scale) + shift` (affine-free, two-pass mean and variance as PyTorch) and
//! RMSNorm, where the composed candle ops take five to ten single-threaded passes over the
//! tokens and, in training, keep every intermediate for the backward pass (their backward
//! passes recompute the normalised values from the input); and the VAE's GroupNorm, whose
//! composed form held four full-resolution temporaries at once besides being slow (the
//! GroupNorm and swish before a convolution are fused into the convolution, `conv.rs`). The
//! backward passes are one parallel visit of each row too, recomputing its statistics from the
//! input, with the parameters' gradients summed on the way (`row_sums`).

use super::row_sums::map_rows_and_sum;
use super::{contiguous, read};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// `LN(x) * (1 + scale) + shift` over the last dimension of `x`; `shift` and `scale` hold one
/// value per channel.
pub struct ModulatedLayerNorm {
    pub eps: f32,
}

impl CustomOp3 for ModulatedLayerNorm {
    fn name(&self) -> &'static str {
        "modulated-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(self.name(), s1, l1)?;
        let shift = contiguous::<f32>(self.name(), s2, l2)?;
        let scale = contiguous::<f32>(self.name(), s3, l3)?;
        let dim = l1.dims().last().copied().unwrap_or(0);
        if dim == 0 || shift.len() != dim || scale.len() != dim {
            candle_core::bail!(
                "modulated-layer-norm: x {:?}, shift {:?}, scale {:?} do not fit together",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .for_each(|(y, x)| {
                let (mean, inv_std) = self.statistics(x);
                for (((y, &x), &shift), &scale) in y.iter_mut().zip(x).zip(shift).zip(scale) {
                    *y = (x - mean) * inv_std * (1.0 + scale) + shift;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// With `y = (x - mean) / std`: `dshift = sum g`, `dscale = sum g y`, and
    /// `dx = (d - mean(d) - y mean(d y)) / std` for `d = g (1 + scale)`.
    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dim = x.dim(D::Minus1)?;
        let (dx, sums) = read(self.name(), [x, grad, scale], |[xs, g, scale]| {
            let mut dx = vec![0f32; xs.len()];
            let sums = map_rows_and_sum(&mut dx, dim, 2 * dim, |r, dx, acc| {
                let (x, g) = (&xs[r * dim..(r + 1) * dim], &g[r * dim..(r + 1) * dim]);
                let (mean, inv_std) = self.statistics(x);
                let (dshift, dscale) = acc.split_at_mut(dim);
                let (mut sum_d, mut sum_dy) = (0f32, 0f32);
                for i in 0..dim {
                    let y = (x[i] - mean) * inv_std;
                    let d = g[i] * (1.0 + scale[i]);
                    sum_d += d;
                    sum_dy += d * y;
                    dshift[i] += g[i];
                    dscale[i] += g[i] * y;
                }
                let (mean_d, mean_dy) = (sum_d / dim as f32, sum_dy / dim as f32);
                for i in 0..dim {
                    let y = (x[i] - mean) * inv_std;
                    dx[i] = (g[i] * (1.0 + scale[i]) - mean_d - y * mean_dy) * inv_std;
                }
            });
            Ok((dx, sums))
        })?;
        let (dshift, dscale) = sums.split_at(dim);
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_slice(dshift, shift.shape(), dev)?),
            Some(Tensor::from_slice(dscale, scale.shape(), dev)?),
        ))
    }
}

impl ModulatedLayerNorm {
    /// Mean and `1 / sqrt(variance + eps)` of one row, two-pass as PyTorch.
    fn statistics(&self, x: &[f32]) -> (f32, f32) {
        let dim = x.len() as f32;
        let mean = x.iter().sum::<f32>() / dim;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim;
        (mean, 1.0 / (var + self.eps).sqrt())
    }
}

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
pub struct RmsNorm {
    pub eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(self.name(), s1, l1)?;
        let weight = contiguous::<f32>(self.name(), s2, l2)?;
        let dim = l1.dims().last().copied().unwrap_or(0);
        if dim == 0 || weight.len() != dim {
            candle_core::bail!("rms-norm: x {:?}, weight {:?}", l1.dims(), l2.dims())
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .for_each(|(y, x)| {
                let inv = self.inverse_rms(x);
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
                    *y = x * inv * w;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dweight) = self.backward(x, weight, grad)?;
        Ok((Some(dx), Some(dweight)))
    }
}

impl RmsNorm {
    /// The gradients of `x` and `weight` from that of the output. With `y = x / r`:
    /// `dweight = sum g y`, `dx = (d - y mean(d y)) / r` for `d = g weight`.
    pub(super) fn backward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let dim = x.dim(D::Minus1)?;
        let (dx, dweight) = read("rms-norm", [x, grad, weight], |[xs, g, w]| {
            let mut dx = vec![0f32; xs.len()];
            let dweight = map_rows_and_sum(&mut dx, dim, dim, |r, dx, dweight| {
                let (x, g) = (&xs[r * dim..(r + 1) * dim], &g[r * dim..(r + 1) * dim]);
                let inv = self.inverse_rms(x);
                let mut sum_dy = 0f32;
                for i in 0..dim {
                    let y = x[i] * inv;
                    sum_dy += g[i] * w[i] * y;
                    dweight[i] += g[i] * y;
                }
                let mean_dy = sum_dy / dim as f32;
                for i in 0..dim {
                    dx[i] = (g[i] * w[i] - x[i] * inv * mean_dy) * inv;
                }
            });
            Ok((dx, dweight))
        })?;
        let dev = x.device();
        Ok((
            Tensor::from_vec(dx, x.shape(), dev)?,
            Tensor::from_vec(dweight, weight.shape(), dev)?,
        ))
    }

    /// `1 / sqrt(mean(x^2) + eps)` of one row.
    pub(super) fn inverse_rms(&self, x: &[f32]) -> f32 {
        let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        1.0 / (mean_square + self.eps).sqrt()
    }
}

/// GroupNorm over `[B, C, ...]` with an affine map (one weight and bias per channel). The group
/// statistics are summed by rows of the last
/// dimension (f32 within a row, f64 across rows), two-pass: one long f32 run over a
/// full-resolution group loses about ten times PyTorch's accuracy. Forward only.
pub struct GroupNorm {
    pub groups: usize,
    pub eps: f32,
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(self.name(), s1, l1)?;
        let weight = contiguous::<f32>(self.name(), s2, l2)?;
        let bias = contiguous::<f32>(self.name(), s3, l3)?;
        let dims = l1.dims();
        let channels = dims.get(1).copied().unwrap_or(0);
        let row = dims.last().copied().unwrap_or(1).max(1);
        if dims.len() < 3
            || self.groups == 0
            || !channels.is_multiple_of(self.groups)
            || weight.len() != channels
            || bias.len() != channels
        {
            candle_core::bail!(
                "group-norm: x {dims:?}, weight {:?}, bias {:?} do not fit {} groups",
                l2.dims(),
                l3.dims(),
                self.groups
            )
        }
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let group_len = per_group * spatial;
        let mut out = vec![0f32; x.len()];
        if group_len == 0 {
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        out.par_chunks_mut(group_len)
            .zip(x.par_chunks(group_len))
            .enumerate()
            .for_each(|(i, (y, x))| {
                let (mean, std) = group_stats(x, row, self.eps);
                let first = (i % self.groups) * per_group;
                for (c, (y, x)) in y.chunks_mut(spatial).zip(x.chunks(spatial)).enumerate() {
                    let (w, b) = (weight[first + c], bias[first + c]);
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = (x - mean) / std * w + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Mean and standard deviation (`sqrt(var + eps)`, biased variance, two passes) of one group's
/// values, summed by rows of `row` values: f32 within a row, f64 across rows.
pub fn group_stats(values: &[f32], row: usize, eps: f32) -> (f32, f32) {
    let count = values.len().max(1) as f64;
    let rows = || values.chunks(row.max(1));
    let mean = (rows()
        .map(|r| f64::from(r.iter().sum::<f32>()))
        .sum::<f64>()
        / count) as f32;
    let var = rows()
        .map(|r| f64::from(r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()))
        .sum::<f64>()
        / count;
    (mean, (var as f32 + eps).sqrt())
}
