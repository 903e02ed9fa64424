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

use super::exp::{exp, map_into};
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
    /// `values` as columns' elements into `dst`.
    fn columns(dst: &mut [Self::Column], values: &[f32]);
    /// The input rows as they are, where they are gathered in f32.
    fn as_columns(values: &[f32]) -> Option<&[Self::Column]>;
    /// `product [c_out, positions] = w [c_out, depth] col [depth, positions]`.
    fn product(w: &[Self], col: &[Self::Column], depth: usize, product: &mut [f32]) -> Result<()>;
}

impl Weight for f32 {
    type Column = f32;
    fn columns(dst: &mut [f32], values: &[f32]) {
        dst.copy_from_slice(values);
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
    fn columns(dst: &mut [half::bf16], values: &[f32]) {
        super::bf16::round_into(dst, values);
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
        affine,
        swish: pre.is_some_and(|p| p.swish),
        dims: (b, c_in, h, wd),
        c_out,
        out: (out_h, out_w),
    };
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    let mut out = vec![0f32; b * c_out * out_h * out_w];
    with_values(&x, "input", |x| {
        with_values(&bias, "bias", |bias| {
            let mut run = |residual: Option<&[f32]>| {
                let data = Data { x, bias, residual };
                match weight.dtype() {
                    DType::F32 => with_values(&weight, "weight", |w: &[f32]| {
                        conv.convolve(params, k, data, w, &mut out)
                    }),
                    #[cfg(feature = "onednn")]
                    DType::BF16 => with_values(&weight, "weight", |w: &[half::bf16]| {
                        conv.convolve(params, k, data, w, &mut out)
                    }),
                    other => candle_core::bail!("conv2d: a weight in {other:?}"),
                }
            };
            match &residual {
                Some(r) => with_values(r, "residual", |r| run(Some(r))),
                None => run(None),
            }
        })
    })?;
    Tensor::from_vec(out, (b, c_out, out_h, out_w), &Device::Cpu)
}

/// One convolution, computed over bands of output rows.
struct Bands {
    /// Per image and input channel, `pre`'s `(mean, scale, shift)`.
    affine: Option<Vec<(f32, f32, f32)>>,
    swish: bool,
    /// The input's `[B, C_in, H, W]`.
    dims: (usize, usize, usize, usize),
    c_out: usize,
    /// The output's `(height, width)`.
    out: (usize, usize),
}

/// What a convolution reads besides its weight: the input `[B, C_in, H, W]`, the bias and
/// the residual (the output's shape).
#[derive(Clone, Copy)]
struct Data<'a> {
    x: &'a [f32],
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
}

/// One pass of products over the input: a `k x k` kernel read with `stride` and `pad` (rows,
/// columns) on the input (2x upsampled first when `upsample`), over a `grid` of positions that
/// are the output's, or, for a sub-pixel `phase` `(dy, dx)`, its rows `2y + dy` and columns
/// `2x + dx`.
#[derive(Debug, Clone, Copy)]
struct Pass {
    k: usize,
    stride: usize,
    pad: (usize, usize),
    upsample: bool,
    grid: (usize, usize),
    phase: Option<(usize, usize)>,
}

/// The taps of a 3x3 kernel (along one axis) that read the same input value of a 2x nearest
/// upsampling, for output phase `d` (0: even, 1: odd) and the phase kernel's tap `t`: an even
/// output reads input rows `a - 1` (tap 0) and `a` (taps 1, 2), an odd one `a` (taps 0, 1)
/// and `a + 1` (tap 2).
const PHASE_TAPS: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];

impl Bands {
    /// The convolution of `x` by `w` (`[C_out, C_in, k, k]`) as `params` say, into `out`.
    /// The 3x3 convolution of a 2x upsampling (the decoder's) runs as four 2x2 convolutions of
    /// the input itself, one per sub-pixel phase, with the taps that read the same value
    /// summed: the same sums in 4/9 of the products.
    fn convolve<W: Weight>(
        &self,
        params: ConvParams,
        k: usize,
        data: Data,
        w: &[W],
        out: &mut [f32],
    ) -> Result<()> {
        let (_, c_in, h, wd) = self.dims;
        let sub_pixel = params.upsample
            && k == 3
            && params.stride == 1
            && params.padding == 1
            && self.out == (2 * h, 2 * wd);
        if !sub_pixel {
            let pass = Pass {
                k,
                stride: params.stride,
                pad: (params.padding, params.padding),
                upsample: params.upsample,
                grid: self.out,
                phase: None,
            };
            return self.run(pass, data, w, out);
        }
        for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let mut phase_w = Vec::with_capacity(self.c_out * c_in * 4);
            for filter in w.chunks_exact(9) {
                for taps_y in PHASE_TAPS[dy] {
                    for taps_x in PHASE_TAPS[dx] {
                        let sum: f64 = taps_y
                            .iter()
                            .flat_map(|&ky| taps_x.iter().map(move |&kx| filter[ky * 3 + kx]))
                            .map(|v| v.to_f64())
                            .sum();
                        phase_w.push(W::from_f64(sum));
                    }
                }
            }
            let pass = Pass {
                k: 2,
                stride: 1,
                pad: (1 - dy, 1 - dx),
                upsample: false,
                grid: (h, wd),
                phase: Some((dy, dx)),
            };
            self.run(pass, data, &phase_w, out)?;
        }
        Ok(())
    }

    /// One pass of products into `out`, band by band in parallel.
    fn run<W: Weight>(&self, pass: Pass, data: Data, w: &[W], out: &mut [f32]) -> Result<()> {
        let Data { x, bias, residual } = data;
        let (b, c_in, h, wd) = self.dims;
        let (k, c_out, stride) = (pass.k, self.c_out, pass.stride);
        let (pad_y, pad_x) = pass.pad;
        let (grid_h, grid_w) = pass.grid;
        let (out_h, out_w) = self.out;
        let plane = out_h * out_w;
        let depth = c_in * k * k;
        let element = std::mem::size_of::<W::Column>();
        let band = (BAND_BYTES / (element * depth * grid_w).max(1)).clamp(1, grid_h.max(1));
        let tasks: Vec<(usize, usize)> = (0..b)
            .flat_map(|i| (0..grid_h).step_by(band).map(move |y| (i, y)))
            .collect();
        let scale_up = if pass.upsample { 2 } else { 1 };
        let (in_h, in_w) = (scale_up * h, scale_up * wd);
        let output = Output(out.as_mut_ptr());
        tasks.par_iter().try_for_each(|&(i, y0)| {
            let rows = band.min(grid_h - y0);
            let positions = rows * grid_w;
            let image = &x[i * c_in * h * wd..(i + 1) * c_in * h * wd];
            // The input rows this band reads (in the input's own rows), `pre` applied and
            // converted once per value rather than once per tap.
            let first = (y0 * stride).saturating_sub(pad_y) / scale_up;
            let last = ((y0 + rows - 1) * stride + k - 1)
                .saturating_sub(pad_y)
                .min(in_h - 1)
                / scale_up;
            let span = (last + 1).saturating_sub(first);
            let gathered: Vec<W::Column>;
            let (source, source_first, source_rows) = match (&self.affine, W::as_columns(image)) {
                (None, Some(image)) => (image, 0, h),
                (affine, _) => {
                    gathered = self.source_rows::<W>(image, affine.as_deref(), i, first, span);
                    (gathered.as_slice(), first, span)
                }
            };
            // im2col: row (ci, ky, kx) of `col` holds, for each position of the band, the
            // input value that tap reads (zero outside the input).
            let mut col = vec![W::Column::default(); depth * positions];
            for (r, col_row) in col.chunks_mut(positions).enumerate() {
                let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                let channel = &source[ci * source_rows * wd..(ci + 1) * source_rows * wd];
                // The grid columns whose tap kx lands inside the input: ox * stride + kx -
                // pad_x in 0 .. in_w.
                let lo = pad_x.saturating_sub(kx).div_ceil(stride);
                let hi = (in_w + pad_x)
                    .checked_sub(kx + 1)
                    .map_or(0, |last| (last / stride + 1).min(grid_w));
                for (row, dst) in col_row.chunks_mut(grid_w).enumerate() {
                    let iy = ((y0 + row) * stride + ky).checked_sub(pad_y);
                    let Some(iy) = iy.filter(|&iy| iy < in_h) else {
                        continue;
                    };
                    let src = &channel[(iy / scale_up - source_first) * wd..][..wd];
                    if lo >= hi {
                        continue;
                    }
                    let from = lo * stride + kx - pad_x;
                    match (stride, scale_up) {
                        (1, 1) => dst[lo..hi].copy_from_slice(&src[from..from + hi - lo]),
                        (1, 2) => {
                            for (ox, v) in dst[lo..hi].iter_mut().enumerate() {
                                *v = src[(from + ox) >> 1];
                            }
                        }
                        _ => {
                            for (ox, v) in dst[lo..hi].iter_mut().enumerate() {
                                *v = src[(from + ox * stride) / scale_up];
                            }
                        }
                    }
                }
            }
            let mut product = vec![0f32; c_out * positions];
            W::product(w, &col, depth, &mut product)?;
            let out = output;
            for (c, values) in product.chunks_mut(positions).enumerate() {
                let channel_at = (i * c_out + c) * plane;
                values.iter_mut().for_each(|v| *v += bias[c]);
                match pass.phase {
                    None => {
                        let at = channel_at + y0 * out_w;
                        if let Some(r) = residual {
                            values
                                .iter_mut()
                                .zip(&r[at..at + positions])
                                .for_each(|(v, r)| *v += r);
                        }
                        // SAFETY: `at .. at + positions` lies inside `out` (channel c of image
                        // i, rows y0 .. y0 + rows) and belongs to this task alone.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                values.as_ptr(),
                                out.0.add(at),
                                positions,
                            );
                        }
                    }
                    Some((dy, dx)) => {
                        for (row, values) in values.chunks(grid_w).enumerate() {
                            let at = channel_at + (2 * (y0 + row) + dy) * out_w + dx;
                            for (ox, &v) in values.iter().enumerate() {
                                let at = at + 2 * ox;
                                let v = v + residual.map_or(0.0, |r| r[at]);
                                // SAFETY: `at` is row 2 (y0 + row) + dy, column 2 ox + dx of
                                // channel c of image i, inside `out` (the output is twice the
                                // grid); this task alone writes its rows of this phase.
                                unsafe { *out.0.add(at) = v };
                            }
                        }
                    }
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
        let mut row = vec![0f32; span * wd];
        for (ci, dst) in buf.chunks_mut(span * wd).enumerate() {
            let src = &image[ci * h * wd + first * wd..][..span * wd];
            let values = match affine {
                Some(a) => {
                    let (mean, scale, shift) = a[i * c_in + ci];
                    if self.swish {
                        map_into(&mut row, src, |v| {
                            let y = (v - mean) * scale + shift;
                            y / (1.0 + exp(-y))
                        });
                    } else {
                        map_into(&mut row, src, |v| (v - mean) * scale + shift);
                    }
                    &row
                }
                None => src,
            };
            W::columns(dst, values);
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
