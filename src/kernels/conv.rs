//! 2D convolution for the VAE on the CPU: im2col of a band of output rows at a time and one
//! OpenBLAS product per band, written straight into the NCHW output. The GroupNorm and swish
//! before a convolution are applied while the bands are gathered, and a residual is added
//! as the output is written, so a resnet block holds its input, one intermediate and its
//! output, never the normalised copies or the separate sum; the 2x nearest upsampling of the
//! decoder is read through rather than materialised. candle's convolution ran at a third of
//! the speed, and a full-resolution 256-channel decoder block at 512 px held over a gigabyte
//! of temporaries. Forward only (the VAE is never trained).

use super::norm::group_stats;
use super::sgemm::{gemm, Operand};
use super::{ConvParams, PreNorm};
use candle_core::{Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// Bytes of im2col rows a band may take.
const BAND_BYTES: usize = 8 << 20;

/// The values of a contiguous f32 CPU tensor.
fn with_values<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("conv2d: {what} is not on the CPU")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("conv2d: {what} is not contiguous")
    };
    f(&cpu.as_slice::<f32>()?[start..end])
}

/// A pointer to the output that tasks writing disjoint parts of it share.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: every task writes its own band of rows (see `conv2d`), never the same element.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// `conv(pre(x)) + bias (+ residual)` for `x [B, C_in, H, W]`, `weight [C_out, C_in, k, k]`,
/// `bias [C_out]`, `residual [B, C_out, out_h, out_w]`, read as `params` say.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    params: ConvParams,
    pre: Option<PreNorm>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (weight, bias) = (weight.contiguous()?, bias.contiguous()?);
    let (b, c_in, h, wd) = x.dims4()?;
    let (c_out, w_in, k, k2) = weight.dims4()?;
    if w_in != c_in || k != k2 || params.stride == 0 || bias.dims1()? != c_out {
        candle_core::bail!(
            "conv2d: input {:?}, weight {:?}, bias {:?}",
            x.dims(),
            weight.dims(),
            bias.dims()
        )
    }
    let (out_h, out_w) = (params.out_h, params.out_w);
    if let Some(r) = residual {
        if r.dims() != [b, c_out, out_h, out_w] {
            candle_core::bail!(
                "conv2d: residual {:?} for output {:?}",
                r.dims(),
                [b, c_out, out_h, out_w]
            )
        }
    }
    // Per image and input channel, `pre` as `(v - mean) * scale + shift` (then swish).
    let affine = match pre {
        Some(p) => Some(pre_affine(&x, p)?),
        None => None,
    };
    let swish = pre.is_some_and(|p| p.swish);
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    let (in_h, in_w) = if params.upsample {
        (2 * h, 2 * wd)
    } else {
        (h, wd)
    };
    let plane = out_h * out_w;
    let depth = c_in * k * k;
    let mut out = vec![0f32; b * c_out * plane];
    let band = (BAND_BYTES / (4 * depth * out_w).max(1)).clamp(1, out_h.max(1));
    let tasks: Vec<(usize, usize)> = (0..b)
        .flat_map(|i| (0..out_h).step_by(band).map(move |y| (i, y)))
        .collect();
    let output = Output(out.as_mut_ptr());
    let w_op = Operand::row_major(c_out, depth);
    with_values(&x, "input", |x| {
        with_values(&weight, "weight", |w| {
            with_values(&bias, "bias", |bias| {
                let run = |residual: Option<&[f32]>| {
                    tasks.par_iter().try_for_each(|&(i, y0)| {
                        let rows = band.min(out_h - y0);
                        let positions = rows * out_w;
                        let image = &x[i * c_in * h * wd..(i + 1) * c_in * h * wd];
                        // The input rows this band reads (in the input's own rows), with
                        // `pre` applied once to each value rather than once per tap.
                        let scale_up = if params.upsample { 2 } else { 1 };
                        let first = (y0 * params.stride).saturating_sub(params.padding) / scale_up;
                        let last = ((y0 + rows - 1) * params.stride + k - 1)
                            .saturating_sub(params.padding)
                            .min(in_h - 1)
                            / scale_up;
                        let span = (last + 1).saturating_sub(first);
                        let normed: Option<Vec<f32>> = affine.as_ref().map(|a| {
                            let mut buf = vec![0f32; c_in * span * wd];
                            for (ci, dst) in buf.chunks_mut(span * wd).enumerate() {
                                let (mean, scale, shift) = a[i * c_in + ci];
                                let src = &image[ci * h * wd + first * wd..][..span * wd];
                                for (d, &v) in dst.iter_mut().zip(src) {
                                    let y = (v - mean) * scale + shift;
                                    *d = if swish { y / (1.0 + (-y).exp()) } else { y };
                                }
                            }
                            buf
                        });
                        let (source, source_first, source_rows) = match &normed {
                            Some(buf) => (buf.as_slice(), first, span),
                            None => (image, 0, h),
                        };
                        let mut col = vec![0f32; depth * positions];
                        for (r, col_row) in col.chunks_mut(positions).enumerate() {
                            let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                            let channel =
                                &source[ci * source_rows * wd..(ci + 1) * source_rows * wd];
                            for (p, v) in col_row.iter_mut().enumerate() {
                                let (oy, ox) = (y0 + p / out_w, p % out_w);
                                let iy = (oy * params.stride + ky).checked_sub(params.padding);
                                let ix = (ox * params.stride + kx).checked_sub(params.padding);
                                let (Some(iy), Some(ix)) = (iy, ix) else {
                                    continue;
                                };
                                if iy >= in_h || ix >= in_w {
                                    continue;
                                }
                                let (sy, sx) = (iy / scale_up, ix / scale_up);
                                *v = channel[(sy - source_first) * wd + sx];
                            }
                        }
                        let mut product = vec![0f32; c_out * positions];
                        let col_op = Operand::row_major(depth, positions);
                        gemm(w, &w_op, &col, &col_op, &mut product, 1.0, false)?;
                        let out = output;
                        for (c, values) in product.chunks_mut(positions).enumerate() {
                            let at = (i * c_out + c) * plane + y0 * out_w;
                            values.iter_mut().for_each(|v| *v += bias[c]);
                            if let Some(r) = residual {
                                values
                                    .iter_mut()
                                    .zip(&r[at..at + positions])
                                    .for_each(|(v, r)| *v += r);
                            }
                            // SAFETY: `at .. at + positions` lies inside `out` (channel c of
                            // image i, rows y0 .. y0 + rows) and belongs to this task alone.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    values.as_ptr(),
                                    out.0.add(at),
                                    positions,
                                );
                            }
                        }
                        Ok::<_, candle_core::Error>(())
                    })
                };
                match &residual {
                    Some(r) => with_values(r, "residual", |r| run(Some(r))),
                    None => run(None),
                }
            })
        })
    })?;
    Tensor::from_vec(out, (b, c_out, out_h, out_w), &Device::Cpu)
}

/// Per image and channel, the `(mean, scale, shift)` that GroupNorm with `pre`'s affine map is:
/// `(v - mean) * scale + shift`.
fn pre_affine(x: &Tensor, pre: PreNorm) -> Result<Vec<(f32, f32, f32)>> {
    let (b, c, h, w) = x.dims4()?;
    if pre.groups == 0 || !c.is_multiple_of(pre.groups) {
        candle_core::bail!("conv2d: GroupNorm({}) of {c} channels", pre.groups)
    }
    let gw = pre.weight.contiguous()?;
    let gb = pre.bias.contiguous()?;
    let per_group = c / pre.groups;
    let group_len = per_group * h * w;
    with_values(x, "input", |x| {
        with_values(&gw, "norm weight", |gw| {
            with_values(&gb, "norm bias", |gb| {
                if gw.len() != c || gb.len() != c {
                    candle_core::bail!("conv2d: GroupNorm affine of {} for {c} channels", gw.len())
                }
                let stats: Vec<(f32, f32)> = x
                    .par_chunks(group_len.max(1))
                    .map(|g| group_stats(g, w, pre.eps))
                    .collect();
                Ok((0..b * c)
                    .map(|ic| {
                        let (i, ch) = (ic / c, ic % c);
                        let (mean, std) = stats[i * pre.groups + ch / per_group];
                        (mean, gw[ch] / std, gb[ch])
                    })
                    .collect())
            })
        })
    })
}
