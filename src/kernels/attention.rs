//! Fused attention on the CPU: for each matrix of the batch (each head) and each block of
//! queries, the block's scores are computed into a buffer that stays in cache, turned into
//! probabilities in place and multiplied into the values, in parallel over heads and blocks.
//! The full score matrix (64 Mi floats for one 2048-token sample of 16 heads) never exists.

use super::sgemm::{gemm, readable, Operand};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Queries per block: a block's scores (`QUERY_BLOCK x keys` floats) fit a core's L2 cache for
/// a few thousand keys.
const QUERY_BLOCK: usize = 64;

/// `softmax(q k^T * scale) v`, see [`super::attention`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    readable(q)?.apply_op3_no_bwd(&readable(k)?, &readable(v)?, &Attention { scale })
}

struct Attention {
    scale: f64,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (s1, s2, s3) else {
            candle_core::bail!("fused-attention takes f32")
        };
        let (Some(oq), Some(ok), Some(ov)) = (Operand::of(l1), Operand::of(l2), Operand::of(l3))
        else {
            candle_core::bail!("fused-attention: operand strides BLAS cannot read")
        };
        let lead = &l1.dims()[..l1.dims().len() - 2];
        if oq.cols != ok.cols
            || ok.rows != ov.rows
            || l2.dims()[..l2.dims().len() - 2] != *lead
            || l3.dims()[..l3.dims().len() - 2] != *lead
        {
            candle_core::bail!(
                "fused-attention: q {:?}, k {:?}, v {:?} do not fit together",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let (q_len, k_len, v_dim) = (oq.rows, ok.rows, ov.cols);
        let mut dims = lead.to_vec();
        dims.extend([q_len, v_dim]);
        let mut out = vec![0f32; oq.batch * q_len * v_dim];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from(dims)));
        }
        let k_t = ok.t();
        out.par_chunks_mut(q_len * v_dim)
            .enumerate()
            .try_for_each(|(i, out)| {
                let k_at = ok.offset + i * ok.stride;
                let v_at = ov.offset + i * ov.stride;
                out.par_chunks_mut(QUERY_BLOCK * v_dim)
                    .enumerate()
                    .try_for_each(|(block, out)| {
                        let rows = out.len() / v_dim;
                        let (q_at, oq) = oq.rows_at(i, block * QUERY_BLOCK, rows);
                        let mut scores = vec![0f32; rows * k_len];
                        gemm(
                            &q[q_at..],
                            &oq,
                            &k[k_at..],
                            &k_t,
                            &mut scores,
                            self.scale as f32,
                            false,
                        )?;
                        scores.chunks_mut(k_len.max(1)).for_each(softmax_in_place);
                        let probs = Operand::row_major(rows, k_len);
                        gemm(&scores, &probs, &v[v_at..], &ov, out, 1.0, false)
                    })
            })?;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `exp(x - max) / sum`, as candle's `softmax_last_dim`.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in row.iter_mut() {
        *x /= sum;
    }
}
