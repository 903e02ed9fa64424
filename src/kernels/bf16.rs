//! bf16 products on the CPU (`--dtype bf16`), as PyTorch's `torch.autocast("cpu",
//! dtype=torch.bfloat16)` runs them: linear layers with the weight stored in bf16, and the
//! self-attention's two products (scores and weighted values), their operands rounded to bf16;
//! inputs and outputs in f32, the softmax, norms and the rest in f32. The products go through
//! oneDNN's bf16 matmul with f32 accumulation (build/onednn_matmul.c), which uses the
//! AVX512-BF16 or AMX instructions where the CPU has them: twice the f32 rate there, and half
//! the weights' memory. Whether the CPU has them is asked of oneDNN at run time
//! ([`cpu_has_bf16`]). As with the f32 products, the work is split over candle's rayon pool
//! and each oneDNN call runs on one thread.

use candle_core::{DType, Device, Result, Tensor};
use half::bf16;
use rayon::prelude::*;
use std::os::raw::c_int;

extern "C" {
    fn ace_onednn_cpu_isa() -> c_int;
    fn ace_onednn_matmul_bf16(
        m: i64,
        n: i64,
        k: i64,
        a: *const std::ffi::c_void,
        a_bf16: c_int,
        a_m: i64,
        a_k: i64,
        b: *const u16,
        b_k: i64,
        b_n: i64,
        bias: *const f32,
        c: *mut f32,
        ldc: i64,
    ) -> c_int;
}

/// `b [k, n]` in bf16 as the product reads it: its elements and their strides along k and n.
#[derive(Clone, Copy)]
pub(super) struct Bf16Matrix<'a> {
    pub values: &'a [bf16],
    pub k: usize,
    pub n: usize,
    pub strides: (usize, usize),
}

/// The left operand of a product: f32 (rounded to bf16 as the product reads it) or bf16
/// already.
pub(super) trait Left: Copy {
    const IS_BF16: bool;
}

impl Left for f32 {
    const IS_BF16: bool = false;
}

impl Left for bf16 {
    const IS_BF16: bool = true;
}

/// `c[m, n] = a[m, k] b (+ bias)` on this thread: `a` with strides `a_strides` along m and k
/// (f32 rounded to bf16, or bf16), `c` f32 row-major.
pub(super) fn product<A: Left>(
    a: &[A],
    a_strides: (usize, usize),
    b: Bf16Matrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
) -> Result<()> {
    let (k, n) = (b.k, b.n);
    let m = c.len() / n.max(1);
    let b_span = (k.max(1) - 1) * b.strides.0 + (n.max(1) - 1) * b.strides.1 + 1;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if c.len() != m * n
        || a.len() < (m - 1) * a_strides.0 + (k.max(1) - 1) * a_strides.1 + 1
        || b.values.len() < b_span
        || bias.is_some_and(|v| v.len() != n)
    {
        candle_core::bail!("bf16 product: [{m}, {k}] x [{k}, {n}] does not fit its buffers")
    }
    // SAFETY: the lengths were checked against the shapes and strides just above; `a` is f32
    // or bf16 as `A::IS_BF16` tells the shim; bf16 is a u16.
    let status = unsafe {
        ace_onednn_matmul_bf16(
            m as i64,
            n as i64,
            k as i64,
            a.as_ptr().cast(),
            c_int::from(A::IS_BF16),
            a_strides.0 as i64,
            a_strides.1 as i64,
            b.values.as_ptr().cast::<u16>(),
            b.strides.0 as i64,
            b.strides.1 as i64,
            bias.map_or(std::ptr::null(), |v| v.as_ptr()),
            c.as_mut_ptr(),
            n as i64,
        )
    };
    if status != 0 {
        candle_core::bail!("oneDNN bf16 product [{m}, {k}] x [{k}, {n}] failed (status {status})")
    }
    Ok(())
}

/// oneDNN's `dnnl_cpu_isa_avx512_core_bf16`: the bits of an ISA with AVX512-BF16 (AMX's
/// include them).
const ISA_AVX512_CORE_BF16: c_int = 0xe7;

/// Fewest rows of a product worth a task of their own.
const MIN_ROWS_PER_TASK: usize = 64;

/// Rows per task of a product with `rows` rows: one block per thread. Each call packs the
/// whole right operand (a weight matrix, up to 10 MiB) for oneDNN, so more, smaller blocks
/// cost more than they balance.
pub(super) fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads().max(1))
        .max(MIN_ROWS_PER_TASK)
}

/// `c [m, n] = a b (+ bias)` with `a` f32 row-major `[m, k]` and `b` bf16, over row blocks in
/// parallel.
pub(super) fn rows_product(
    a: &[f32],
    k: usize,
    b: Bf16Matrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
) -> Result<()> {
    let n = b.n.max(1);
    let rows = rows_per_task(c.len() / n);
    c.par_chunks_mut(rows * n)
        .zip(a.par_chunks(rows * k.max(1)))
        .try_for_each(|(c, a)| product(a, (k, 1), b, bias, c))
}

/// `v` rounded to bf16: to nearest, ties to even, NaN kept a quiet NaN (`half`'s and
/// PyTorch's rounding), branch-free so that loops over it vectorise.
#[inline(always)]
pub(super) fn round(v: f32) -> bf16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = ((bits >> 16) as u16) | 0x40;
    bf16::from_bits(if v.is_nan() { nan } else { rounded })
}

/// `values` rounded to bf16 ([`round`]) into `out`, over the shorter of the two.
pub(super) fn round_into(out: &mut [bf16], values: &[f32]) {
    out.iter_mut().zip(values).for_each(|(o, &v)| *o = round(v));
}

/// The values rounded to bf16 ([`round`]), over all cores.
pub(super) fn to_bf16(values: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; values.len()];
    out.par_chunks_mut(1 << 16)
        .zip(values.par_chunks(1 << 16))
        .for_each(|(o, v)| round_into(o, v));
    out
}

/// Queries per block of [`attention_head`]: a block's scores (128 x 2048 floats at 512 px) stay in
/// a core's L2 cache; 64 measured a little slower, 256 slower still.
const QUERY_BLOCK: usize = 128;

/// Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), as oneDNN sees it.
pub fn cpu_has_bf16() -> bool {
    // SAFETY: a query without arguments.
    let isa = unsafe { ace_onednn_cpu_isa() };
    isa & ISA_AVX512_CORE_BF16 == ISA_AVX512_CORE_BF16
}

/// Whether `x @ w^T + bias` is one for [`linear`]: an f32 CPU input and a bf16 weight.
pub fn takes(x: &Tensor, w: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && w.dtype() == DType::BF16
        && x.rank() == 2
        && w.rank() == 2
        && !x.track_op()
}

/// `x @ w^T + bias` for `x` f32 `[m, k]`, `w` bf16 `[n, k]`, `bias` `[n]`; f32 `[m, n]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let (n, wk) = w.dims2()?;
    if wk != k {
        candle_core::bail!("bf16 linear: input [{m}, {k}] against weight [{n}, {wk}]")
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let bias = bias
        .map(|b| b.to_dtype(DType::F32)?.contiguous())
        .transpose()?;
    let (xs, _) = x.storage_and_layout();
    let (ws, _) = w.storage_and_layout();
    let xs = super::contiguous::<f32>("bf16 linear", cpu(&xs)?, x.layout())?;
    let ws = super::contiguous::<bf16>("bf16 linear", cpu(&ws)?, w.layout())?;
    let bias_guard = bias.as_ref().map(|b| b.storage_and_layout());
    let bs = match (&bias_guard, &bias) {
        (Some((s, _)), Some(b)) => {
            let values = super::contiguous::<f32>("bf16 linear", cpu(s)?, b.layout())?;
            if values.len() != n {
                candle_core::bail!("bf16 linear: bias of {} for {n} outputs", values.len())
            }
            Some(values)
        }
        _ => None,
    };
    let weight = Bf16Matrix {
        values: ws,
        k,
        n,
        strides: (1, k),
    };
    let mut out = vec![0f32; m * n];
    rows_product(xs, k, weight, bs, &mut out)?;
    Tensor::from_vec(out, (m, n), &Device::Cpu)
}

/// One head of the attention with bf16 products (`attention.rs`): `softmax(queries keys_t *
/// scale) values` into `out` (`[n_q, d_v]` row-major), `queries` f32 with strides
/// `q_strides` along queries and features, the keys (transposed) and values in bf16; in
/// parallel over blocks of queries, each block's scores in a buffer that stays in cache.
pub(super) fn attention_head(
    queries: &[f32],
    q_strides: (usize, usize),
    keys_t: Bf16Matrix,
    values: Bf16Matrix,
    scale: f64,
    out: &mut [f32],
) -> Result<()> {
    let (k_len, v_dim) = (keys_t.n, values.n.max(1));
    out.par_chunks_mut(QUERY_BLOCK * v_dim)
        .enumerate()
        .try_for_each(|(block, out)| {
            let rows = out.len() / v_dim;
            let block_queries = &queries[block * QUERY_BLOCK * q_strides.0..];
            let mut scores = vec![0f32; rows * k_len];
            product(block_queries, q_strides, keys_t, None, &mut scores)?;
            let sums: Vec<f32> = scores
                .chunks_mut(k_len.max(1))
                .map(|row| super::attention::unnormalised_softmax_in_place(row, scale))
                .collect();
            product(&scores, (k_len, 1), values, None, out)?;
            for (row, sum) in out.chunks_mut(v_dim).zip(&sums) {
                super::exp::map_in_place(row, |x| x / sum);
            }
            Ok(())
        })
}

/// The CPU storage of a tensor on the CPU.
fn cpu(s: &candle_core::Storage) -> Result<&candle_core::CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("bf16 linear runs on the CPU"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::max_diff as max_abs_diff;
    use super::*;

    #[test]
    fn matches_the_f32_product_of_the_rounded_weights() {
        let dev = Device::Cpu;
        let (m, k, n) = (150, 40, 24);
        let x = Tensor::arange(0f32, (m * k) as f32, &dev)
            .unwrap()
            .affine(0.01, -30.0)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((m, k))
            .unwrap();
        let w = Tensor::arange(0f32, (n * k) as f32, &dev)
            .unwrap()
            .affine(0.37, 1.0)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((n, k))
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let bias = Tensor::arange(0f32, n as f32, &dev).unwrap();
        assert!(takes(&x, &w));
        let got = match linear(&x, &w, Some(&bias)) {
            Ok(got) => got,
            // oneDNN emulates bf16 on AVX-512 CPUs without the instructions, and has no bf16
            // product on older ones: an error there, never a wrong result.
            Err(e) => {
                assert!(!cpu_has_bf16(), "{e}");
                assert!(e.to_string().contains("oneDNN bf16 product"), "{e}");
                return;
            }
        };
        // The input is rounded to bf16 too, as autocast does; products accumulate in f32.
        let x16 = x
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let w32 = w.to_dtype(DType::F32).unwrap();
        let want = x16
            .matmul(&w32.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-3, "{diff}");
        let none = linear(&x, &w, None).unwrap();
        assert_eq!(none.dims(), [m, n]);
        assert!(linear(&x.narrow(1, 0, 8).unwrap(), &w, None).is_err());
    }

    #[test]
    fn attention_matches_the_f32_attention_of_rounded_operands() {
        let dev = Device::Cpu;
        // Two heads, 150 queries (two blocks and a tail), 70 keys, 24-wide values.
        let wave = |n: usize, a: f64, dims: &[usize]| {
            Tensor::arange(0f32, n as f32, &dev)
                .unwrap()
                .affine(a, 0.3)
                .unwrap()
                .sin()
                .unwrap()
                .reshape(dims)
                .unwrap()
        };
        let q = wave(2 * 150 * 16, 0.11, &[1, 2, 150, 16]);
        let k = wave(2 * 70 * 16, 0.07, &[1, 2, 70, 16]);
        let v = wave(2 * 70 * 24, 0.05, &[1, 2, 70, 24]);
        let got = match super::super::attention_merged_bf16_products(&q, &k, &v, 0.25) {
            Ok(got) => got,
            Err(e) => {
                assert!(!cpu_has_bf16(), "{e}");
                return;
            }
        };
        let rounded = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        let (q16, k16, v16) = (
            rounded(&q).unwrap(),
            rounded(&k).unwrap(),
            rounded(&v).unwrap(),
        );
        let want = super::super::attention_merged(&q16, &k16, &v16, 0.25).unwrap();
        assert_eq!(got.dims(), [1, 150, 48]);
        let diff = max_abs_diff(&got, &want);
        // The probabilities are rounded to bf16 before the second product (8 bits).
        assert!(diff < 1e-2, "{diff}");
    }
}
