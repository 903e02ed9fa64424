//! The DiT blocks' gated residual connection `x + h * gate` (adaLN-single's gates, one value
//! per channel) as one parallel pass. Composed from candle ops it is a broadcast product and
//! a sum, each a single-threaded pass over the tokens, and under training the product is kept
//! for the backward pass besides `h`, whose backward pass adds a single-threaded reduction
//! of the broadcast gate.

use super::contiguous;
use super::read;
use super::row_sums::map_rows_and_sum;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel task of the forward pass.
const CHUNK_ROWS: usize = 16;

/// `x + h * gate` for `x`, `h` `[rows, dim]` and `gate` `[1, dim]` (or `[dim]`).
pub struct GatedResidual;

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "gated-residual"
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
        let h = contiguous::<f32>(self.name(), s2, l2)?;
        let gate = contiguous::<f32>(self.name(), s3, l3)?;
        let dim = gate.len();
        if dim == 0 || x.len() != h.len() || x.len() % dim != 0 || l1.dims().last() != Some(&dim) {
            candle_core::bail!(
                "gated-residual: x {:?}, h {:?}, gate {:?} do not fit together",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK_ROWS * dim)
            .zip(
                x.par_chunks(CHUNK_ROWS * dim)
                    .zip(h.par_chunks(CHUNK_ROWS * dim)),
            )
            .for_each(|(out, (x, h))| {
                for ((out, x), h) in out.chunks_mut(dim).zip(x.chunks(dim)).zip(h.chunks(dim)) {
                    for (((o, &x), &h), &g) in out.iter_mut().zip(x).zip(h).zip(gate) {
                        *o = x + h * g;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// `dx = d`, `dh = d * gate`, `dgate = sum over rows of d * h`.
    fn bwd(
        &self,
        _x: &Tensor,
        h: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dim = gate.elem_count();
        let (dh, dgate) = read::<f32, 3, _>(self.name(), [grad, h, gate], |[d, hs, gate]| {
            let mut dh = vec![0f32; d.len()];
            let dgate = map_rows_and_sum(&mut dh, dim, dim, |r, dh, dgate| {
                let rows = r * dim..(r + 1) * dim;
                let (d, h) = (&d[rows.clone()], &hs[rows]);
                for i in 0..dim {
                    dh[i] = d[i] * gate[i];
                    dgate[i] += d[i] * h[i];
                }
            });
            Ok((dh, dgate))
        })?;
        let dev = h.device();
        Ok((
            Some(grad.clone()),
            Some(Tensor::from_vec(dh, h.shape(), dev)?),
            Some(Tensor::from_vec(dgate, gate.shape(), dev)?),
        ))
    }
}
