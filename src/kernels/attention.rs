//! Fused attention on the CPU: for each matrix of the batch (each head) and each block of
//! queries, the block's scores are computed into a buffer that stays in cache, turned into
//! probabilities in place and multiplied into the values, in parallel over heads and blocks.
//! The full score matrix (64 Mi floats for one 2048-token sample of 16 heads) never exists.
//! With `--dtype bf16`, and recorded under [`super::autocast_bf16`] (training with `USE_AMP`),
//! the products of both passes take bf16 operands, as PyTorch's autocast runs the attention:
//! each head's keys and values rounded once ([`super::bf16::attention_head`]).

use super::exp::{exp, map_in_place, reduce};
use super::sgemm::{gemm, readable, Operand};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Queries per block: a block's scores (`QUERY_BLOCK x keys` floats) fit a core's L2 cache for
/// a few thousand keys.
const QUERY_BLOCK: usize = 64;

/// `softmax(q k^T * scale) v`, see [`super::attention`]; with `merged`, the heads (the last
/// leading dimension) merged back into token-major rows, see [`super::attention_merged`]. The
/// products take bf16 operands with `bf16_products` (`--dtype bf16`), or when the op is recorded
/// inside [`super::autocast_bf16`]. Recorded for backpropagation (an operand tracks
/// gradients), the op keeps only q, k, v and the output: the backward pass recomputes each
/// head's probabilities (training at 1024 tokens otherwise holds 64 MiB of scores and their
/// softmax intermediates per block).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    merged: bool,
    bf16_products: bool,
) -> Result<Tensor> {
    let backward = [q, k, v].iter().any(|t| t.track_op());
    let (q, k, v) = (readable(q)?, readable(k)?, readable(v)?);
    if merged && q.rank() < 3 {
        candle_core::bail!(
            "fused-attention: q {:?} has no head dimension to merge",
            q.dims()
        )
    }
    let op = Attention {
        scale,
        bf16: bf16_products || (backward && super::autocast_active()),
        merged,
    };
    if backward {
        q.apply_op3(&k, &v, op)
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

struct Attention {
    scale: f64,
    /// The products of both passes take bf16 operands (accumulating in f32), as PyTorch's
    /// autocast runs the attention.
    bf16: bool,
    /// The output `[.., tokens, heads * v_dim]` rather than `[.., heads, tokens, v_dim]`: what
    /// the output projection reads, without a merged copy besides it in a training graph.
    merged: bool,
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
            return Ok(self.output(out, dims));
        }
        #[cfg(feature = "onednn")]
        if self.bf16 {
            let d = oq.cols;
            out.par_chunks_mut(q_len * v_dim)
                .enumerate()
                .try_for_each(|(i, out)| {
                    let (keys, values) = (rounded_matrix(k, &ok, i), rounded_matrix(v, &ov, i));
                    let keys_t = super::bf16::Bf16Matrix {
                        values: &keys,
                        k: d,
                        n: k_len,
                        strides: (1, d),
                    };
                    let values = super::bf16::Bf16Matrix {
                        values: &values,
                        k: k_len,
                        n: v_dim,
                        strides: (v_dim, 1),
                    };
                    let queries = &q[oq.matrix(i)..];
                    super::bf16::attention_head(
                        queries,
                        oq.strides(),
                        keys_t,
                        values,
                        self.scale,
                        out,
                    )
                })?;
            return Ok(self.output(out, dims));
        }
        let k_t = ok.t();
        out.par_chunks_mut(q_len * v_dim)
            .enumerate()
            .try_for_each(|(i, out)| {
                let (k_at, v_at) = (ok.matrix(i), ov.matrix(i));
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
                        let sums: Vec<f32> = scores
                            .chunks_mut(k_len.max(1))
                            .map(|row| unnormalised_softmax_in_place(row, 1.0))
                            .collect();
                        let weights = Operand::row_major(rows, k_len);
                        gemm(&scores, &weights, &v[v_at..], &ov, out, 1.0, false)?;
                        // Each output row divided by its sum: the softmax's division on
                        // `v_dim` values rather than on `k_len` probabilities.
                        for (row, sum) in out.chunks_mut(v_dim.max(1)).zip(&sums) {
                            map_in_place(row, |x| x / sum);
                        }
                        Ok::<(), candle_core::Error>(())
                    })
            })?;
        Ok(self.output(out, dims))
    }

    /// In parallel over the matrices of the batch (heads), each on one thread with its own
    /// two score-sized buffers, so that as many heads' scores exist at once as there are
    /// threads.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let flat = |t: &Tensor| -> Result<Tensor> {
            let r = t.rank();
            t.detach().reshape(((), t.dim(r - 2)?, t.dim(r - 1)?))
        };
        // Merged output and gradient as heads again (copies for this pass only).
        let split = |t: &Tensor| -> Result<Tensor> {
            if !self.merged {
                return Ok(t.clone());
            }
            let mut dims = q.dims().to_vec();
            let r = dims.len();
            (dims[r - 3], dims[r - 2]) = (q.dim(r - 2)?, q.dim(r - 3)?);
            dims[r - 1] = v.dim(r - 1)?;
            t.reshape(dims)?.transpose(r - 3, r - 2)
        };
        let (out, grad) = (split(out)?, split(grad)?);
        let (fq, fk, fv, fo, fg) = (flat(q)?, flat(k)?, flat(v)?, flat(&out)?, flat(&grad)?);
        let (heads, n, d) = fq.dims3()?;
        let (_, m, dv) = fv.dims3()?;
        let shape = HeadShape { n, m, d, dv };
        let (dq, dk, dvs) =
            super::read(self.name(), [&fq, &fk, &fv, &fo, &fg], |[q, k, v, o, g]| {
                let mut dq = vec![0f32; heads * n * d];
                let mut dk = vec![0f32; heads * m * d];
                let mut dvs = vec![0f32; heads * m * dv];
                dq.par_chunks_mut((n * d).max(1))
                    .zip(dk.par_chunks_mut((m * d).max(1)))
                    .zip(dvs.par_chunks_mut((m * dv).max(1)))
                    .enumerate()
                    .try_for_each(|(h, ((dq, dk), dvh))| {
                        let head = |t, len| matrix(t, h, len);
                        self.head_grads(
                            shape,
                            [
                                head(q, n * d),
                                head(k, m * d),
                                head(v, m * dv),
                                head(o, n * dv),
                                head(g, n * dv),
                            ],
                            [dq, dk, dvh],
                        )
                    })?;
                Ok((dq, dk, dvs))
            })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dvs, v.shape(), dev)?),
        ))
    }
}

/// `[.., heads, tokens, v_dim]` values (row-major) as `[.., tokens, heads * v_dim]`, in
/// parallel over the output rows.
fn merge_heads(values: &[f32], heads: usize, tokens: usize, v_dim: usize) -> Vec<f32> {
    let mut merged = vec![0f32; values.len()];
    let row = heads * v_dim;
    if row == 0 || tokens == 0 {
        return merged;
    }
    merged.par_chunks_mut(row).enumerate().for_each(|(r, out)| {
        let (b, t) = (r / tokens, r % tokens);
        for (h, out) in out.chunks_mut(v_dim).enumerate() {
            let at = ((b * heads + h) * tokens + t) * v_dim;
            out.copy_from_slice(&values[at..at + v_dim]);
        }
    });
    merged
}

/// Matrix `i` of `op` over `values`, rounded to bf16 into a row-major buffer.
#[cfg(feature = "onednn")]
fn rounded_matrix(values: &[f32], op: &Operand, i: usize) -> Vec<half::bf16> {
    let ((rs, cs), at) = (op.strides(), op.matrix(i));
    if cs == 1 && op.cols > 0 {
        // Rows in memory (heads split off token-major rows among them): rounded a row at a time.
        let mut out = vec![half::bf16::ZERO; op.rows * op.cols];
        for (r, row) in out.chunks_mut(op.cols).enumerate() {
            super::bf16::round_into(row, &values[at + r * rs..][..op.cols]);
        }
        return out;
    }
    (0..op.rows)
        .flat_map(|r| (0..op.cols).map(move |c| at + r * rs + c * cs))
        .map(|at| super::bf16::round(values[at]))
        .collect()
}

/// Matrix `h` of a batch of `len`-element matrices.
fn matrix(t: &[f32], h: usize, len: usize) -> &[f32] {
    &t[h * len..(h + 1) * len]
}

/// One head's sizes: `n` queries, `m` keys, `d` per query and key, `dv` per value.
#[derive(Clone, Copy)]
struct HeadShape {
    n: usize,
    m: usize,
    d: usize,
    dv: usize,
}

impl Attention {
    /// The op's output from the head-major values of `dims` (`[.., heads, tokens, v_dim]`).
    fn output(&self, out: Vec<f32>, dims: Vec<usize>) -> (CpuStorage, Shape) {
        if !self.merged {
            return (CpuStorage::F32(out), Shape::from(dims));
        }
        let r = dims.len();
        let (heads, tokens, v_dim) = (dims[r - 3], dims[r - 2], dims[r - 1]);
        let mut merged_dims = dims[..r - 3].to_vec();
        merged_dims.extend([tokens, heads * v_dim]);
        (
            CpuStorage::F32(merge_heads(&out, heads, tokens, v_dim)),
            Shape::from(merged_dims),
        )
    }

    /// Gradients of one head on this thread (row-major slices `q [n, d]`, `k [m, d]`,
    /// `v [m, dv]`, the output `o [n, dv]` and its gradient `g [n, dv]`): with
    /// `P = softmax(scale q k^T)`, `dv = P^T g`, `dS = P (g v^T - rowsum(g o))`,
    /// `dq = scale dS k`, `dk = scale dS^T q`.
    fn head_grads(
        &self,
        HeadShape { n, m, d, dv }: HeadShape,
        [q, k, v, o, g]: [&[f32]; 5],
        [dq, dk, dvh]: [&mut [f32]; 3],
    ) -> Result<()> {
        let scale = self.scale as f32;
        let right = |values, rows, cols| Right::new(values, rows, cols, self.bf16);
        let (qr, kr, vr, gr) = (
            right(q, n, d),
            right(k, m, d),
            right(v, m, dv),
            right(g, n, dv),
        );
        let mut probs = vec![0f32; n * m];
        mul((q, n, d, false), kr.t(), &mut probs, 1.0)?;
        for row in probs.chunks_mut(m.max(1)) {
            let sum = unnormalised_softmax_in_place(row, self.scale);
            map_in_place(row, |x| x / sum);
        }
        mul((&probs, n, m, true), gr.as_is(), dvh, 1.0)?;
        let mut ds = vec![0f32; n * m];
        mul((g, n, dv, false), vr.t(), &mut ds, 1.0)?;
        for (i, (ds, p)) in ds
            .chunks_mut(m.max(1))
            .zip(probs.chunks(m.max(1)))
            .enumerate()
        {
            let row = i * dv..(i + 1) * dv;
            let delta: f32 = g[row.clone()].iter().zip(&o[row]).map(|(g, o)| g * o).sum();
            for (ds, &p) in ds.iter_mut().zip(p) {
                *ds = p * (*ds - delta);
            }
        }
        mul((&ds, n, m, false), kr.as_is(), dq, scale)?;
        mul((&ds, n, m, true), qr.as_is(), dk, scale)
    }
}

/// The right operand of one of a head's backward products: a row-major `rows x cols` matrix
/// in f32 and, for bf16 products, rounded to bf16; read as it is or transposed.
struct Right<'a> {
    values: &'a [f32],
    #[cfg(feature = "onednn")]
    rounded: Option<Vec<half::bf16>>,
    rows: usize,
    cols: usize,
}

/// A [`Right`] operand as one product reads it.
#[derive(Clone, Copy)]
struct RightView<'a> {
    operand: &'a Right<'a>,
    transposed: bool,
}

impl<'a> Right<'a> {
    fn new(values: &'a [f32], rows: usize, cols: usize, bf16: bool) -> Self {
        #[cfg(not(feature = "onednn"))]
        let _ = bf16;
        Self {
            values,
            #[cfg(feature = "onednn")]
            rounded: bf16.then(|| super::bf16::to_bf16(values)),
            rows,
            cols,
        }
    }

    fn as_is(&'a self) -> RightView<'a> {
        RightView {
            operand: self,
            transposed: false,
        }
    }

    fn t(&'a self) -> RightView<'a> {
        RightView {
            operand: self,
            transposed: true,
        }
    }
}

/// `c = alpha * a @ b` on this thread for `a` a row-major `(values, rows, cols)` matrix read
/// transposed when its flag says so: through OpenBLAS in f32, or through oneDNN's bf16
/// product (operands rounded, f32 accumulation) when `b` has its bf16 values.
fn mul(
    (a, rows, cols, a_transposed): (&[f32], usize, usize, bool),
    b: RightView,
    c: &mut [f32],
    alpha: f32,
) -> Result<()> {
    let Right {
        values,
        rows: br,
        cols: bc,
        ..
    } = *b.operand;
    #[cfg(feature = "onednn")]
    if let Some(rounded) = &b.operand.rounded {
        let a_strides = if a_transposed { (1, cols) } else { (cols, 1) };
        let (k, n, strides) = if b.transposed {
            (bc, br, (1, bc))
        } else {
            (br, bc, (bc, 1))
        };
        let matrix = super::bf16::Bf16Matrix {
            values: rounded,
            k,
            n,
            strides,
        };
        super::bf16::product(a, a_strides, matrix, None, c)?;
        if alpha != 1.0 {
            c.iter_mut().for_each(|x| *x *= alpha);
        }
        return Ok(());
    }
    let rm = Operand::row_major;
    let oa = if a_transposed {
        rm(rows, cols).t()
    } else {
        rm(rows, cols)
    };
    let ob = if b.transposed {
        rm(br, bc).t()
    } else {
        rm(br, bc)
    };
    gemm(a, &oa, values, &ob, c, alpha, false)
}

/// The softmax's numerators of `scale * row`, `exp(scale * (x - max))`, in place with the
/// vectorised [`exp`] (`scale` > 0); returns their sum, which divides them into the softmax
/// (candle's `softmax_last_dim` divides the row itself).
pub(super) fn unnormalised_softmax_in_place(row: &mut [f32], scale: f64) -> f32 {
    let scale = scale as f32;
    let max = reduce(row, f32::NEG_INFINITY, |m, x| if x > m { x } else { m });
    map_in_place(row, |x| exp(scale * (x - max)));
    reduce(row, 0.0, |s, x| s + x)
}
