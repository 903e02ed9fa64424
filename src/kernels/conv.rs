//! 2D convolution for the VAE on the CPU: im2col of a band of output rows at a time and one
//! product per band, written straight into the NCHW output. The GroupNorm and swish before a
//! convolution are applied while the bands are gathered, and a residual is added as the
//! output is written, so a resnet block holds its input, one intermediate and its output,
//! never the normalised copies or the separate sum; the 2x nearest upsampling of the decoder
//! is read through rather than materialised. candle's convolution ran at a third of the speed,
//! and a full-resolution 256-channel decoder block at 512 px held over a gigabyte of
//! temporaries. With f32 weights the products go through OpenBLAS; with bf16 weights
//! (`--dtype bf16`, as PyTorch's CPU autocast runs a convolution) the bands are gathered in
//! bf16 and multiplied by oneDNN's bf16 matmul, accumulating in f32. Forward only (the VAE is
//! never trained).

use super::norm::group_stats;
use super::sgemm::{gemm, Operand};
use super::{ConvParams, PreNorm};
use candle_core::{DType, Device, Result, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// Bytes of im2col rows a band may take.
const BAND_BYTES: usize = 8 << 20;

/// The values of a contiguous CPU tensor of `T`.
fn with_values<T: WithDType, R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("conv2d: {what} is not on the CPU")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("conv2d: {what} is not contiguous")
    };
    f(&cpu.as_slice::<T>()?[start..end])
}

/// A pointer to the output that tasks writing disjoint parts of it share.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: every task writes its own band of rows (see `conv2d`), never the same element.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// A convolution weight's element type: what the bands are gathered in and how they are
/// multiplied.
trait Weight: WithDType {
    /// The element of the gathered bands.
    type Column: Copy + Default + Send + Sync;
    fn column(v: f32) -> Self::Column;
    /// The input rows as they are, where they are gathered in f32.
    fn as_columns(values: &[f32]) -> Option<&[Self::Column]>;
    /// `product [c_out, positions] = w [c_out, depth] col [depth, positions]`.
    fn product(w: &[Self], col: &[Self::Column], depth: usize, product: &mut [f32]) -> Result<()>;
}

impl Weight for f32 {
    type Column = f32;
    fn column(v: f32) -> f32 {
        v
    }
    fn as_columns(values: &[f32]) -> Option<&[f32]> {
        Some(values)
    }
    fn product(w: &[f32], col: &[f32], depth: usize, product: &mut [f32]) -> Result<()> {
        let c_out = w.len() / depth.max(1);
        let positions = col.len() / depth.max(1);
        let w_op = Operand::row_major(c_out, depth);
        let col_op = Operand::row_major(depth, positions);
        gemm(w, &w_op, col, &col_op, product, 1.0, false)
    }
}

#[cfg(feature = "onednn")]
impl Weight for half::bf16 {
    type Column = half::bf16;
    fn column(v: f32) -> half::bf16 {
        half::bf16::from_f32(v)
    }
    fn as_columns(_: &[f32]) -> Option<&[half::bf16]> {
        None
    }
    fn product(
        w: &[half::bf16],
        col: &[half::bf16],
        depth: usize,
        product: &mut [f32],
    ) -> Result<()> {
        let positions = col.len() / depth.max(1);
        let col = super::bf16::Bf16Matrix {
            values: col,
            k: depth,
            n: positions,
            strides: (positions, 1),
        };
        super::bf16::product(w, (depth, 1), col, None, product)
    }
}

/// `conv(pre(x)) + bias (+ residual)` for `x [B, C_in, H, W]` f32, `weight [C_out, C_in, k, k]`
/// f32 or bf16, `bias [C_out]`, `residual [B, C_out, out_h, out_w]`, read as `params` say;
/// f32 out.
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
    let conv = Bands {
        params,
        affine,
        swish: pre.is_some_and(|p| p.swish),
        dims: (b, c_in, h, wd),
        c_out,
        k,
    };
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    let mut out = vec![0f32; b * c_out * out_h * out_w];
    with_values(&x, "input", |x| {
        with_values(&bias, "bias", |bias| {
            let mut run = |residual: Option<&[f32]>| match weight.dtype() {
                DType::F32 => with_values(&weight, "weight", |w: &[f32]| {
                    conv.run(x, w, bias, residual, &mut out)
                }),
                #[cfg(feature = "onednn")]
                DType::BF16 => with_values(&weight, "weight", |w: &[half::bf16]| {
                    conv.run(x, w, bias, residual, &mut out)
                }),
                other => candle_core::bail!("conv2d: a weight in {other:?}"),
            };
            match &residual {
                Some(r) => with_values(r, "residual", |r| run(Some(r))),
                None => run(None),
            }
        })
    })?;
    Tensor::from_vec(out, (b, c_out, out_h, out_w), &Device::Cpu)
}

/// One convolution over bands of output rows.
struct Bands {
    params: ConvParams,
    /// Per image and input channel, `pre`'s `(mean, scale, shift)`.
    affine: Option<Vec<(f32, f32, f32)>>,
    swish: bool,
    /// The input's `[B, C_in, H, W]`.
    dims: (usize, usize, usize, usize),
    c_out: usize,
    k: usize,
}

impl Bands {
    fn run<W: Weight>(
        &self,
        x: &[f32],
        w: &[W],
        bias: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        let (b, c_in, h, wd) = self.dims;
        let (k, c_out, p) = (self.k, self.c_out, self.params);
        let (out_h, out_w) = (p.out_h, p.out_w);
        let plane = out_h * out_w;
        let depth = c_in * k * k;
        let element = std::mem::size_of::<W::Column>();
        let band = (BAND_BYTES / (element * depth * out_w).max(1)).clamp(1, out_h.max(1));
        let tasks: Vec<(usize, usize)> = (0..b)
            .flat_map(|i| (0..out_h).step_by(band).map(move |y| (i, y)))
            .collect();
        let scale_up = if p.upsample { 2 } else { 1 };
        let (in_h, in_w) = (scale_up * h, scale_up * wd);
        let output = Output(out.as_mut_ptr());
        tasks.par_iter().try_for_each(|&(i, y0)| {
            let rows = band.min(out_h - y0);
            let positions = rows * out_w;
            let image = &x[i * c_in * h * wd..(i + 1) * c_in * h * wd];
            // The input rows this band reads (in the input's own rows), `pre` applied and
            // converted once per value rather than once per tap.
            let first = (y0 * p.stride).saturating_sub(p.padding) / scale_up;
            let last = ((y0 + rows - 1) * p.stride + k - 1)
                .saturating_sub(p.padding)
                .min(in_h - 1)
                / scale_up;
            let span = (last + 1).saturating_sub(first);
            let gathered: Option<Vec<W::Column>> = match (&self.affine, W::as_columns(image)) {
                (None, Some(_)) => None,
                (affine, _) => {
                    Some(self.source_rows::<W>(image, affine.as_deref(), i, first, span))
                }
            };
            let (source, source_first, source_rows) = match &gathered {
                Some(buf) => (buf.as_slice(), first, span),
                None => (W::as_columns(image).unwrap_or_default(), 0, h),
            };
            // im2col: row (ci, ky, kx) of `col` holds, for each output position of the band,
            // the input value that tap reads (zero outside the input).
            let mut col = vec![W::Column::default(); depth * positions];
            for (r, col_row) in col.chunks_mut(positions).enumerate() {
                let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                let channel = &source[ci * source_rows * wd..(ci + 1) * source_rows * wd];
                // The output columns whose tap kx lands inside the input: ox * stride + kx -
                // padding in 0 .. in_w.
                let lo = p.padding.saturating_sub(kx).div_ceil(p.stride);
                let hi = (in_w + p.padding)
                    .checked_sub(kx + 1)
                    .map_or(0, |last| (last / p.stride + 1).min(out_w));
                for (row, dst) in col_row.chunks_mut(out_w).enumerate() {
                    let iy = ((y0 + row) * p.stride + ky).checked_sub(p.padding);
                    let Some(iy) = iy.filter(|&iy| iy < in_h) else {
                        continue;
                    };
                    let src = &channel[(iy / scale_up - source_first) * wd..][..wd];
                    if lo >= hi {
                        continue;
                    }
                    let from = lo * p.stride + kx - p.padding;
                    match (p.stride, scale_up) {
                        (1, 1) => dst[lo..hi].copy_from_slice(&src[from..from + hi - lo]),
                        (1, 2) => {
                            for (ox, v) in dst[lo..hi].iter_mut().enumerate() {
                                *v = src[(from + ox) >> 1];
                            }
                        }
                        _ => {
                            for (ox, v) in dst[lo..hi].iter_mut().enumerate() {
                                *v = src[(from + ox * p.stride) / scale_up];
                            }
                        }
                    }
                }
            }
            let mut product = vec![0f32; c_out * positions];
            W::product(w, &col, depth, &mut product)?;
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
                // SAFETY: `at .. at + positions` lies inside `out` (channel c of image i, rows
                // y0 .. y0 + rows) and belongs to this task alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(values.as_ptr(), out.0.add(at), positions);
                }
            }
            Ok(())
        })
    }

    /// Rows `first .. first + span` of every channel of `image` (image `i`), with `affine`
    /// (then swish) applied when given, as the bands' elements.
    fn source_rows<W: Weight>(
        &self,
        image: &[f32],
        affine: Option<&[(f32, f32, f32)]>,
        i: usize,
        first: usize,
        span: usize,
    ) -> Vec<W::Column> {
        let (_, c_in, h, wd) = self.dims;
        let mut buf = vec![W::Column::default(); c_in * span * wd];
        for (ci, dst) in buf.chunks_mut(span * wd).enumerate() {
            let src = &image[ci * h * wd + first * wd..][..span * wd];
            match affine {
                Some(a) => {
                    let (mean, scale, shift) = a[i * c_in + ci];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        let y = (v - mean) * scale + shift;
                        *d = W::column(if self.swish {
                            y / (1.0 + (-y).exp())
                        } else {
                            y
                        });
                    }
                }
                None => dst
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, &v)| *d = W::column(v)),
            }
        }
        buf
    }
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
    with_values(x, "input", |x: &[f32]| {
        with_values(&gw, "norm weight", |gw: &[f32]| {
            with_values(&gb, "norm bias", |gb: &[f32]| {
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
