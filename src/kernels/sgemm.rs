//! f32 matrix products through OpenBLAS's `sgemm`. OpenBLAS runs single-threaded; the work is
//! split over candle's rayon pool instead (matrices of a batch, row blocks of each), so that
//! the products and candle's own parallel ops share one set of threads.

use super::param_grad::{self, GradBuffer};
use super::row_sums;
use super::Activation;
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage,
    Tensor,
};
use cblas_sys::{cblas_sgemm, CBLAS_LAYOUT, CBLAS_TRANSPOSE};
use rayon::prelude::*;
use std::sync::{Arc, Once};

extern "C" {
    /// OpenBLAS's own thread count (not part of CBLAS).
    fn openblas_set_num_threads(num_threads: std::os::raw::c_int);
}

/// Fewest rows of a product worth a task of their own.
const MIN_ROWS_PER_TASK: usize = 32;

/// `alpha * a @ b` through [`Sgemm`], copying an operand first only when its strides are not
/// ones BLAS can read in place.
pub fn matmul_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    let a = readable(a)?;
    let b = readable(b)?;
    a.apply_op2(&b, Sgemm { alpha })
}

/// `t` itself when BLAS can read its matrices in place, else a contiguous copy.
pub fn readable(t: &Tensor) -> Result<Tensor> {
    if Operand::of(t.layout()).is_some() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// How BLAS reads one operand: `batch` matrices, each `rows x cols`, row-major or
/// (`transposed`) column-major with leading dimension `ld`, laid out as [`Batch`] says.
#[derive(Debug, Clone, Copy)]
pub struct Operand {
    pub offset: usize,
    pub batch: usize,
    layout: Batch,
    pub rows: usize,
    pub cols: usize,
    transposed: bool,
    ld: usize,
}

impl Operand {
    /// The operand of a layout, `None` when its strides are not ones BLAS can take.
    pub fn of(layout: &Layout) -> Option<Self> {
        let dims = layout.dims();
        let strides = layout.stride();
        let r = dims.len();
        if r < 2 {
            return None;
        }
        let (rows, cols) = (dims[r - 2], dims[r - 1]);
        let (rs, cs) = (strides[r - 2], strides[r - 1]);
        let (transposed, ld) = if cs == 1 || cols == 1 {
            (false, if rows == 1 { cols } else { rs })
        } else if rs == 1 || rows == 1 {
            (true, if cols == 1 { rows } else { cs })
        } else {
            return None;
        };
        // The leading dimension must span a whole row (a whole column when transposed).
        if ld < if transposed { rows } else { cols }.max(1) {
            return None;
        }
        let matrices = Batch::of(&dims[..r - 2], &strides[..r - 2])?;
        Some(Self {
            offset: layout.start_offset(),
            batch: dims[..r - 2].iter().product(),
            layout: matrices,
            rows,
            cols,
            transposed,
            ld,
        })
    }

    /// One contiguous row-major `rows x cols` matrix.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        Self {
            offset: 0,
            batch: 1,
            layout: Batch::SHARED,
            rows,
            cols,
            transposed: false,
            ld: cols.max(1),
        }
    }

    /// The same matrices read transposed (`cols x rows`), without moving data.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            transposed: !self.transposed,
            ..self
        }
    }

    /// The strides of each matrix along its rows and its columns.
    #[cfg_attr(not(feature = "onednn"), allow(dead_code))]
    pub fn strides(&self) -> (usize, usize) {
        if self.transposed {
            (1, self.ld)
        } else {
            (self.ld, 1)
        }
    }

    /// Where matrix `i` of the batch starts (the one matrix, for an operand shared by all).
    pub fn matrix(&self, i: usize) -> usize {
        self.offset + self.layout.offset(i)
    }

    /// Rows `start..start + len` of matrix `i`: its data from the returned offset on.
    pub fn rows_at(&self, i: usize, start: usize, len: usize) -> (usize, Self) {
        let skip = if self.transposed {
            start
        } else {
            start * self.ld
        };
        (self.matrix(i) + skip, Self { rows: len, ..*self })
    }

    /// Elements a BLAS call reads from the start of one matrix.
    fn span(&self) -> usize {
        let (lines, width) = if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        if lines == 0 || width == 0 {
            0
        } else {
            (lines - 1) * self.ld + width
        }
    }
}

/// Where the matrices of a batch lie: the leading dimensions collapse into at most two
/// equally spaced levels, `inner` matrices `inner_stride` apart within each group and the
/// groups `outer_stride` apart. Heads split off a `[batch, tokens, heads * head_dim]` tensor
/// (`[batch, heads, tokens, head_dim]` by strides) take both levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batch {
    inner: usize,
    inner_stride: usize,
    outer_stride: usize,
}

impl Batch {
    /// One matrix for every index (an operand without leading dimensions).
    const SHARED: Batch = Batch {
        inner: 1,
        inner_stride: 0,
        outer_stride: 0,
    };

    /// The levels of leading `dims` with `strides`, `None` when they need more than two.
    fn of(dims: &[usize], strides: &[usize]) -> Option<Self> {
        // Groups of dimensions that collapse into one stride, innermost first: (count, stride).
        let mut levels: Vec<(usize, usize)> = Vec::with_capacity(2);
        for (&d, &s) in dims.iter().zip(strides).rev().filter(|(&d, _)| d != 1) {
            match levels.last_mut() {
                Some((count, stride)) if *stride * *count == s => *count *= d,
                _ => levels.push((d, s)),
            }
        }
        match levels[..] {
            [] => Some(Self::SHARED),
            [(_, stride)] => Some(Batch {
                inner: usize::MAX,
                inner_stride: stride,
                outer_stride: 0,
            }),
            [(inner, inner_stride), (_, outer_stride)] => Some(Batch {
                inner,
                inner_stride,
                outer_stride,
            }),
            _ => None,
        }
    }

    /// Offset of matrix `i` from the first.
    fn offset(&self, i: usize) -> usize {
        (i / self.inner) * self.outer_stride + (i % self.inner) * self.inner_stride
    }
}

/// `c = alpha * a @ b (+ c when accumulate)` for one matrix of each on the calling thread:
/// `a` (`m x k`) and `b` (`k x n`) read from the given slices as their operands say, `c`
/// row-major `m x n`.
pub fn gemm(
    a: &[f32],
    oa: &Operand,
    b: &[f32],
    ob: &Operand,
    c: &mut [f32],
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let (m, k, n) = (oa.rows, oa.cols, ob.cols);
    if ob.rows != k || a.len() < oa.span() || b.len() < ob.span() || c.len() < m * n {
        candle_core::bail!(
            "sgemm: {m}x{k} @ {}x{n} does not fit its buffers ({}, {}, {})",
            ob.rows,
            a.len(),
            b.len(),
            c.len()
        )
    }
    if m * n == 0 {
        return Ok(());
    }
    static SINGLE_THREADED: Once = Once::new();
    // SAFETY: plain setter of OpenBLAS's thread count, called once before any product.
    SINGLE_THREADED.call_once(|| unsafe { openblas_set_num_threads(1) });
    let flag = |o: &Operand| {
        if o.transposed {
            CBLAS_TRANSPOSE::CblasTrans
        } else {
            CBLAS_TRANSPOSE::CblasNoTrans
        }
    };
    // SAFETY: the checks above keep every read inside `a` and `b` (`span` is the last element
    // a call touches plus one) and every write inside `c`.
    unsafe {
        cblas_sgemm(
            CBLAS_LAYOUT::CblasRowMajor,
            flag(oa),
            flag(ob),
            m as i32,
            n as i32,
            k as i32,
            alpha,
            a.as_ptr(),
            oa.ld as i32,
            b.as_ptr(),
            ob.ld as i32,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(),
            n as i32,
        );
    }
    Ok(())
}

/// `out = alpha * a @ b (+ out when accumulate)` for every matrix of the batch (`b` one matrix
/// for all when it has no leading dimensions), in parallel over matrices and row blocks.
fn products(
    a: &[f32],
    oa: &Operand,
    b: &[f32],
    ob: &Operand,
    alpha: f32,
    accumulate: bool,
    out: &mut [f32],
) -> Result<()> {
    let (m, n) = (oa.rows, ob.cols);
    if m * n == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let blocks_per_matrix = threads
        .div_ceil(oa.batch)
        .min(m.div_ceil(MIN_ROWS_PER_TASK));
    let block_rows = m.div_ceil(blocks_per_matrix.max(1));
    out.par_chunks_mut(m * n)
        .enumerate()
        .try_for_each(|(i, c)| {
            let b_at = ob.matrix(i);
            c.par_chunks_mut(block_rows * n)
                .enumerate()
                .try_for_each(|(block, c)| {
                    let (a_at, oa) = oa.rows_at(i, block * block_rows, c.len() / n);
                    gemm(&a[a_at..], &oa, &b[b_at..], ob, c, alpha, accumulate)
                })
        })
}

/// `x @ w^T + bias` for `x [rows, in]`, `w [out, in]`, `bias [out]`, the bias written first
/// and the product added onto it; with `backward` the op records itself for backpropagation
/// (keeping x, w and bias only, not a biasless product as well), and the gradients of a
/// weight or bias registered in [`param_grad`] go to its buffer.
pub fn linear(x: &Tensor, w: &Tensor, bias: &Tensor, backward: bool) -> Result<Tensor> {
    // Registered weights are looked up by the caller's tensors (`readable` may copy).
    let op = backward.then(|| Linear::tracked(None, w, bias));
    let (x, w, bias) = (readable(x)?, readable(w)?, bias.contiguous()?);
    match op {
        Some(op) => x.apply_op3(&w, &bias, op),
        None => x.apply_op3_no_bwd(&w, &bias, &Linear::default()),
    }
}

/// [`linear`] of `act(x)` recording itself for backpropagation with `x` as its input (see
/// [`super::linear_of_activation`]).
pub fn linear_of_activation(
    x: &Tensor,
    act: Activation,
    w: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let op = Linear::tracked(Some(act), w, bias);
    let (x, w, bias) = (x.contiguous()?, readable(w)?, bias.contiguous()?);
    x.apply_op3(&w, &bias, op)
}

#[derive(Default)]
struct Linear {
    /// Applied to the input before the product (its values are not kept).
    input_activation: Option<Activation>,
    weight_grad: Option<Arc<GradBuffer>>,
    bias_grad: Option<Arc<GradBuffer>>,
}

impl Linear {
    /// The op of a tracked layer, sending the gradients of a registered weight or bias to its
    /// buffer.
    fn tracked(input_activation: Option<Activation>, w: &Tensor, bias: &Tensor) -> Self {
        Self {
            input_activation,
            weight_grad: param_grad::buffer_of(w),
            bias_grad: param_grad::buffer_of(bias),
        }
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "openblas-linear"
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
        let (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(bias)) = (s1, s2, s3) else {
            candle_core::bail!("openblas-linear takes f32")
        };
        let (Some(ox), Some(ow), Some((b0, b1))) =
            (Operand::of(l1), Operand::of(l2), l3.contiguous_offsets())
        else {
            candle_core::bail!("openblas-linear: operand strides BLAS cannot read")
        };
        let (rows, out_dim) = (ox.rows, ow.rows);
        if l1.dims().len() != 2 || l2.dims().len() != 2 || ow.cols != ox.cols || b1 - b0 != out_dim
        {
            candle_core::bail!(
                "openblas-linear: x {:?}, w {:?}, bias {:?} do not fit together",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let mut out = bias[b0..b1].repeat(rows);
        match self.input_activation {
            Some(act) => {
                let Some((start, end)) = l1.contiguous_offsets() else {
                    candle_core::bail!("openblas-linear: an activated input must be contiguous")
                };
                let activated = act.apply(&x[start..end]);
                let oa = Operand::row_major(rows, ox.cols);
                products(&activated, &oa, w, &ow.t(), 1.0, true, &mut out)?;
            }
            None => products(x, &ox, w, &ow.t(), 1.0, true, &mut out)?,
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, out_dim))))
    }

    /// `dx = g w`, `dw = g^T x`, `dbias = sum over rows of g`; `dw` and `dbias` into their
    /// buffers when registered. With an input activation, `x` above is `act(x)` (recomputed)
    /// and `dx` goes on through the activation's derivative.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = matmul_scaled(&grad, &w.detach(), 1.0)?;
        let (x, dx) = match self.input_activation {
            Some(act) => (
                x.detach().contiguous()?.apply_op1_no_bwd(&act)?,
                act.backward(x, &dx)?,
            ),
            None => (x.detach(), dx),
        };
        let dw = param_grad::gradient(
            self.weight_grad.as_ref(),
            w.shape(),
            w.device(),
            |out, accumulate| product_into(&grad.t()?, &x, accumulate, out),
        )?;
        let dbias = param_grad::gradient(
            self.bias_grad.as_ref(),
            bias.shape(),
            bias.device(),
            |out, accumulate| row_sums::column_sums_into(&grad, accumulate, out),
        )?;
        Ok((Some(dx), dw, dbias))
    }
}

/// The f32 values of a CPU storage, for the backward passes that write into buffers.
fn cpu_f32(storage: &Storage) -> Result<&[f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
        _ => candle_core::bail!("openblas-linear backward takes f32 CPU tensors"),
    }
}

/// `out = a @ b (+ out when accumulate)` for the matrices `a` and `b`, `out` row-major.
fn product_into(a: &Tensor, b: &Tensor, accumulate: bool, out: &mut [f32]) -> Result<()> {
    let (a, b) = (readable(a)?, readable(b)?);
    let ((sa, la), (sb, lb)) = (a.storage_and_layout(), b.storage_and_layout());
    let (Some(oa), Some(ob)) = (Operand::of(la), Operand::of(lb)) else {
        candle_core::bail!("openblas-linear: operand strides BLAS cannot read")
    };
    if oa.batch != 1 || ob.batch != 1 || ob.rows != oa.cols || out.len() != oa.rows * ob.cols {
        candle_core::bail!(
            "openblas-linear: {:?} @ {:?} does not fit a buffer of {}",
            la.dims(),
            lb.dims(),
            out.len()
        )
    }
    products(cpu_f32(&sa)?, &oa, cpu_f32(&sb)?, &ob, 1.0, accumulate, out)
}

/// `alpha * a @ b` over the batch, see [`products`].
struct Sgemm {
    alpha: f64,
}

impl CustomOp2 for Sgemm {
    fn name(&self) -> &'static str {
        "openblas-sgemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("openblas-sgemm takes f32, got {:?}", s1.dtype())
        };
        let (Some(oa), Some(ob)) = (Operand::of(l1), Operand::of(l2)) else {
            candle_core::bail!("openblas-sgemm: operand strides BLAS cannot read")
        };
        if ob.rows != oa.cols || (l2.dims().len() > 2 && ob.batch != oa.batch) {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: l1.shape().clone(),
                rhs: l2.shape().clone(),
                op: "matmul",
            });
        }
        let mut dims = l1.dims()[..l1.dims().len() - 2].to_vec();
        dims.extend([oa.rows, ob.cols]);
        let mut out = vec![0f32; oa.batch * oa.rows * ob.cols];
        products(a, &oa, b, &ob, self.alpha as f32, false, &mut out)?;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    /// `d(alpha a b)/da = alpha g b^T`, `d/db = alpha a^T g` (summed over the batch when `b`
    /// is one matrix for all).
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Detached operands: the gradients must not carry the forward graph.
        let (a, b) = (&a.detach(), &b.detach());
        let grad_a = matmul_scaled(grad, &b.t()?, self.alpha)?;
        let grad_b = if b.rank() == 2 && a.rank() > 2 {
            let k = a.dim(candle_core::D::Minus1)?;
            let n = grad.dim(candle_core::D::Minus1)?;
            matmul_scaled(
                &a.reshape(((), k))?.t()?,
                &grad.reshape(((), n))?,
                self.alpha,
            )?
        } else {
            matmul_scaled(&a.t()?, grad, self.alpha)?
        };
        Ok((Some(grad_a), Some(grad_b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets of every matrix of a layout, as [`Operand`] reads them.
    fn offsets(dims: &[usize], strides: &[usize]) -> Option<Vec<usize>> {
        let batch = Batch::of(dims, strides)?;
        Some(
            (0..dims.iter().product())
                .map(|i| batch.offset(i))
                .collect(),
        )
    }

    #[test]
    fn leading_dimensions_collapse_into_at_most_two_levels() {
        // Contiguous [2, 3] matrices of 10 elements: one level.
        assert_eq!(
            offsets(&[2, 3], &[30, 10]).unwrap(),
            [0, 10, 20, 30, 40, 50]
        );
        // Heads of a [2 batch, 5 tokens, 3 heads x 4] tensor: heads 4 apart, samples 60 apart.
        assert_eq!(offsets(&[2, 3], &[60, 4]).unwrap(), [0, 4, 8, 60, 64, 68]);
        // Size-one dimensions are skipped; a broadcast dimension (stride 0) repeats matrices.
        assert_eq!(offsets(&[2, 1, 2], &[0, 99, 7]).unwrap(), [0, 7, 0, 7]);
        assert_eq!(offsets(&[], &[]).unwrap(), [0]);
        // Three levels are left to a copy.
        assert!(offsets(&[2, 2, 2], &[100, 1000, 7]).is_none());
    }
}
