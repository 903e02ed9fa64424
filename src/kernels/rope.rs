//! Rotary position embedding on f32 queries and keys with f64 angle tables, in one parallel
//! pass: adjacent pairs are rotated in f64 and rounded once to f32, as converting to f64,
//! rotating and converting back does (the reference rotates in complex128), without the two
//! f64 copies of the tensor. It has a backward pass (the rotation by the opposite angle), so
//! training keeps only its input instead of the composed form's dozen intermediates. It reads
//! heads split off a projection in place, and queries and keys take their RMSNorm in the same
//! pass ([`NormedHeads`]): the candle graph of a training step keeps every
//! op's output until its backward pass ends, so each op less is a tensor less held (at full size,
//! 1024 tokens: 765 MiB of the 3.7 GiB of activations).

use super::contiguous;
use super::norm::RmsNorm;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rotates `x [.., tokens, head_dim]` by `cos`/`sin` `[tokens, head_dim / 2]` (f64), into a
/// contiguous tensor. `x` may be a strided view whose last dimension is contiguous (heads split
/// off a `[tokens, dim]` projection and transposed), so that no head-major copy of it exists.
pub struct Rope;

/// Where each vector along the last dimension of `layout` starts, in the tensor's logical
/// order; that dimension must be contiguous.
fn vector_starts(layout: &Layout) -> Result<Vec<usize>> {
    let (dims, strides) = (layout.dims(), layout.stride());
    let Some((&len, lead)) = dims.split_last() else {
        candle_core::bail!("rope-interleaved: x is a scalar")
    };
    if len > 1 && strides[lead.len()] != 1 {
        candle_core::bail!(
            "rope-interleaved: x {dims:?} (strides {strides:?}) has no contiguous last dimension"
        )
    }
    let count = lead.iter().product();
    let mut starts = Vec::with_capacity(count);
    let mut index = vec![0usize; lead.len()];
    let mut at = layout.start_offset();
    for _ in 0..count {
        starts.push(at);
        // The next index, the last leading dimension fastest.
        for k in (0..lead.len()).rev() {
            index[k] += 1;
            at += strides[k];
            if index[k] < lead[k] {
                break;
            }
            at -= strides[k] * lead[k];
            index[k] = 0;
        }
    }
    Ok(starts)
}

/// One vector rotated into `out`: pair `j` (elements `x(2j)`, `x(2j + 1)`) by the angle of
/// `cos[j]`/`sin[j]`, in f64, rounded once.
#[inline(always)]
fn rotate(x: impl Fn(usize) -> f32, cos: &[f64], sin: &[f64], out: &mut [f32]) {
    for (j, (&c, &s)) in cos.iter().zip(sin).enumerate() {
        let (a, b) = (f64::from(x(2 * j)), f64::from(x(2 * j + 1)));
        out[2 * j] = (a * c - b * s) as f32;
        out[2 * j + 1] = (a * s + b * c) as f32;
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope-interleaved"
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
        let cos = contiguous::<f64>(self.name(), s2, l2)?;
        let sin = contiguous::<f64>(self.name(), s3, l3)?;
        let dims = l1.dims();
        let (tokens, head_dim) = match dims {
            [.., t, d] => (*t, *d),
            _ => candle_core::bail!("rope-interleaved: x {dims:?} has no token dimension"),
        };
        let half = head_dim / 2;
        if head_dim % 2 != 0 || cos.len() < tokens * half || sin.len() < tokens * half {
            candle_core::bail!(
                "rope-interleaved: x {dims:?} does not fit tables {:?}",
                l2.dims()
            )
        }
        let x = s1.as_slice::<f32>()?;
        let starts = vector_starts(l1)?;
        let mut out = vec![0f32; starts.len() * head_dim];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        out.par_chunks_mut(tokens * head_dim)
            .zip(starts.par_chunks(tokens))
            .for_each(|(out, starts)| {
                for (t, (out, &at)) in out.chunks_mut(head_dim).zip(starts).enumerate() {
                    let x = &x[at..at + head_dim];
                    let angles = t * half..(t + 1) * half;
                    rotate(|i| x[i], &cos[angles.clone()], &sin[angles], out);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// The rotation is orthogonal: the gradient rotates back by the opposite angle.
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, &sin.neg()?, &Rope)?;
        Ok((Some(back), None, None))
    }
}

/// Queries or keys in one pass from their projection `x [batch * tokens, dim]`: RMSNorm over
/// `dim` (as [`RmsNorm`]), split into `heads` and, given angle tables (`[tokens, head_dim / 2]`,
/// f64, constants of the op), each head's vectors rotated as [`Rope`] does, into
/// `[batch, heads, tokens, head_dim]` with the same bits as the ops one after another. Training
/// keeps only `x`, not the normalised projection nor a copy of it besides the output; the
/// backward pass recomputes the norm.
pub struct NormedHeads {
    pub norm: RmsNorm,
    /// `cos` and `sin` of the rotation (the self-attention's), if any.
    pub rotation: Option<(Tensor, Tensor)>,
    pub batch: usize,
    pub heads: usize,
}

impl CustomOp2 for NormedHeads {
    fn name(&self) -> &'static str {
        "rms-norm-heads"
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
        let (x_dims, weight_dims) = (l1.dims(), l2.dims());
        match &self.rotation {
            Some((cos, sin)) => super::read::<f64, 2, _>(self.name(), [cos, sin], |[c, s]| {
                self.forward(x, weight, x_dims, weight_dims, Some((c, s)))
            }),
            None => self.forward(x, weight, x_dims, weight_dims, None),
        }
    }

    /// The gradient rotated back (by the opposite angle) if it was rotated, merged into
    /// token-major rows, then RMSNorm's backward pass.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let heads = match &self.rotation {
            Some((cos, sin)) => grad
                .contiguous()?
                .apply_op3_no_bwd(cos, &sin.neg()?, &Rope)?,
            None => grad.clone(),
        };
        let back = heads.transpose(1, 2)?.reshape(x.shape())?;
        let (dx, dweight) = self.norm.backward(x, weight, &back)?;
        Ok((Some(dx), Some(dweight)))
    }
}

impl NormedHeads {
    /// The forward pass on the values of `x` and `weight`, with the angle tables' values.
    fn forward(
        &self,
        x: &[f32],
        weight: &[f32],
        x_dims: &[usize],
        weight_dims: &[usize],
        tables: Option<(&[f64], &[f64])>,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, heads) = (self.batch, self.heads);
        let (rows, dim) = match x_dims {
            &[rows, dim] => (rows, dim),
            dims => candle_core::bail!("rms-norm-heads: x {dims:?} is not [rows, dim]"),
        };
        let head_dim = dim.checked_div(heads).unwrap_or(0);
        let tokens = rows.checked_div(batch).unwrap_or(0);
        let half = head_dim / 2;
        let tables_fit = tables.is_none_or(|(cos, sin)| {
            head_dim % 2 == 0 && cos.len() >= tokens * half && sin.len() >= tokens * half
        });
        if weight.len() != dim
            || head_dim == 0
            || head_dim * heads != dim
            || tokens * batch != rows
            || !tables_fit
        {
            candle_core::bail!(
                "rms-norm-heads: x {:?}, weight {:?}, {batch} samples of {heads} heads, tables {:?}",
                x_dims,
                weight_dims,
                self.rotation.as_ref().map(|(cos, _)| cos.dims())
            )
        }
        let shape = Shape::from((batch, heads, tokens, head_dim));
        if rows == 0 {
            return Ok((CpuStorage::F32(Vec::new()), shape));
        }
        let inverse_rms: Vec<f32> = x
            .par_chunks(dim)
            .map(|r| self.norm.inverse_rms(r))
            .collect();
        let mut out = vec![0f32; rows * dim];
        out.par_chunks_mut(tokens * head_dim)
            .enumerate()
            .for_each(|(m, out)| {
                let (b, h) = (m / heads, m % heads);
                let w = &weight[h * head_dim..(h + 1) * head_dim];
                for (t, out) in out.chunks_mut(head_dim).enumerate() {
                    let r = b * tokens + t;
                    let (x, inv) = (&x[r * dim + h * head_dim..][..head_dim], inverse_rms[r]);
                    match tables {
                        Some((cos, sin)) => {
                            let angles = t * half..(t + 1) * half;
                            rotate(
                                |i| x[i] * inv * w[i],
                                &cos[angles.clone()],
                                &sin[angles],
                                out,
                            );
                        }
                        None => {
                            for ((y, &x), &w) in out.iter_mut().zip(x).zip(w) {
                                *y = x * inv * w;
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), shape))
    }
}
