//! Rotary position embedding on f32 queries and keys with f64 angle tables, in one parallel
//! pass: adjacent pairs are rotated in f64 and rounded once to f32, as converting to f64,
//! rotating and converting back does (the reference rotates in complex128), without the two
//! f64 copies of the tensor. It has a backward pass (the rotation by the opposite angle), so
//! training keeps only its input instead of the composed form's dozen intermediates.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rotates `x [.., tokens, head_dim]` by `cos`/`sin` `[tokens, head_dim / 2]` (f64).
pub struct Rope;

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
        let (CpuStorage::F32(x), CpuStorage::F64(cos), CpuStorage::F64(sin)) = (s1, s2, s3) else {
            candle_core::bail!("rope-interleaved takes f32 values and f64 tables")
        };
        let (Some((x0, x1)), Some((c0, c1)), Some((s0, s1))) = (
            l1.contiguous_offsets(),
            l2.contiguous_offsets(),
            l3.contiguous_offsets(),
        ) else {
            candle_core::bail!("rope-interleaved takes contiguous tensors")
        };
        let dims = l1.dims();
        let (tokens, head_dim) = match dims {
            [.., t, d] => (*t, *d),
            _ => candle_core::bail!("rope-interleaved: x {dims:?} has no token dimension"),
        };
        let half = head_dim / 2;
        if head_dim % 2 != 0 || c1 - c0 < tokens * half || s1 - s0 < tokens * half {
            candle_core::bail!(
                "rope-interleaved: x {dims:?} does not fit tables {:?}",
                l2.dims()
            )
        }
        let (cos, sin) = (&cos[c0..c1], &sin[s0..s1]);
        let mut out = vec![0f32; x1 - x0];
        out.par_chunks_mut(tokens * head_dim)
            .zip(x[x0..x1].par_chunks(tokens * head_dim))
            .for_each(|(out, x)| {
                for (t, (out, x)) in out.chunks_mut(head_dim).zip(x.chunks(head_dim)).enumerate() {
                    for j in 0..half {
                        let (c, s) = (cos[t * half + j], sin[t * half + j]);
                        let (a, b) = (f64::from(x[2 * j]), f64::from(x[2 * j + 1]));
                        out[2 * j] = (a * c - b * s) as f32;
                        out[2 * j + 1] = (a * s + b * c) as f32;
                    }
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
