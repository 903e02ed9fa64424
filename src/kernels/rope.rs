//! Rotary position embedding on f32 queries and keys with f64 angle tables, in one parallel
//! pass: adjacent pairs are rotated in f64 and rounded once to f32, as converting to f64,
//! rotating and converting back does (the reference rotates in complex128), without the two
//! f64 copies of the tensor. It has a backward pass (the rotation by the opposite angle), so
//! training keeps only its input instead of the composed form's dozen intermediates.

use super::contiguous;
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
        let x = contiguous::<f32>(self.name(), s1, l1)?;
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
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(tokens * head_dim)
            .zip(x.par_chunks(tokens * head_dim))
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
