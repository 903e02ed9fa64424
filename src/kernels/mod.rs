//! CPU kernels for the models' hot paths, where candle's generic CPU ops are slow: matrix
//! products (candle's `gemm` crate reaches about 40 GFLOP/s per core on the machines we
//! measure, OpenBLAS's AVX-512 kernels about 95), attention (candle materialises every score
//! and runs its elementwise ops on one thread), LayerNorm and the MLP activations. A DiT
//! forward is nine tenths matrix products.
//!
//! Each entry point takes the fast path for f32 tensors on the CPU (with the default `openblas`
//! feature) and candle's own ops everywhere else: other devices, other dtypes, builds without
//! the feature (norms and activations need no BLAS and run in every build). Products,
//! attention, norms and activations have backward passes of their own; `--dtype bf16` on the
//! CPU adds the bf16 products of [`bf16`] (oneDNN, default `onednn` feature).

use candle_core::{DType, Device, Result, Tensor};

pub use activation::Activation;
#[cfg(feature = "openblas")]
pub use blas_core::{blas_core, BlasCore};

mod activation;
#[cfg(feature = "openblas")]
mod attention;
#[cfg(feature = "onednn")]
pub mod bf16;
#[cfg(feature = "onednn")]
mod bf16_train;
#[cfg(feature = "openblas")]
mod blas_core;
#[cfg(feature = "openblas")]
pub mod blocks;
#[cfg(feature = "openblas")]
mod conv;
// exp, param_grad and row_sums serve the norms and activations in every build and the OpenBLAS
// kernels (attention, products) besides: without that feature, part of each has no caller.
#[cfg_attr(not(feature = "openblas"), allow(dead_code))]
mod exp;
mod norm;
#[cfg_attr(not(feature = "openblas"), allow(dead_code))]
pub mod param_grad;
mod residual;
mod rope;
#[cfg_attr(not(feature = "openblas"), allow(dead_code))]
mod row_sums;
#[cfg(feature = "openblas")]
mod sgemm;

/// Most attention scores the composed path holds at once (queries are taken in chunks).
const MAX_SCORES: usize = 1 << 26;

/// The elements of a contiguous CPU tensor as `T`, for the ops' `cpu_fwd`; `op` names the op in
/// the errors.
fn contiguous<'a, T: candle_core::WithDType>(
    op: &str,
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} takes contiguous tensors")
    };
    match storage.as_slice::<T>() {
        Ok(values) => Ok(&values[start..end]),
        Err(_) => candle_core::bail!("{op} takes {:?} tensors", T::DTYPE),
    }
}

/// Runs `f` on the elements of the CPU tensors `ts` of dtype `T` (contiguous copies first where
/// they are not; contiguous ones are read in place), for the backward passes and the ops'
/// constant tables; `op` names the op in the errors.
fn read<T: candle_core::WithDType, const N: usize, R>(
    op: &str,
    ts: [&Tensor; N],
    f: impl FnOnce([&[T]; N]) -> Result<R>,
) -> Result<R> {
    let ts: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let held: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = [&[][..]; N];
    for (slice, (storage, layout)) in slices.iter_mut().zip(&held) {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("{op} takes CPU tensors")
        };
        *slice = contiguous::<T>(op, cpu, layout)?;
    }
    f(slices)
}

/// Whether `--dtype bf16` runs on this CPU ([`bf16`]), or why not.
pub fn cpu_bf16_support() -> std::result::Result<(), String> {
    #[cfg(feature = "onednn")]
    {
        if bf16::cpu_has_bf16() {
            Ok(())
        } else {
            Err("this CPU has neither AVX512-BF16 nor AMX instructions".into())
        }
    }
    #[cfg(not(feature = "onednn"))]
    Err("this build has no bf16 products on the CPU (built without the `onednn` feature)".into())
}

/// Whether a tensor is one for the CPU kernels here.
fn on_cpu_f32(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// `alpha * a @ b` over the last two dimensions. `a` is `[.., m, k]`; `b` is `[.., k, n]` with
/// the same leading dimensions, or `[k, n]` shared by every matrix of `a`.
pub fn matmul_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    #[cfg(feature = "openblas")]
    if on_cpu_f32(a) && on_cpu_f32(b) && a.rank() >= 2 && (b.rank() == 2 || b.rank() == a.rank()) {
        return sgemm::matmul_scaled(a, b, alpha);
    }
    let product = if b.rank() == 2 && a.rank() > 2 {
        a.broadcast_matmul(b)?
    } else {
        a.matmul(b)?
    };
    if alpha == 1.0 {
        Ok(product)
    } else {
        product * alpha
    }
}

/// Runs `f` with the tracked f32 CPU linear layers it records taking their products in bf16
/// (automatic mixed precision for training, as PyTorch's CPU autocast; needs bf16
/// instructions, [`cpu_bf16_support`]). In builds without oneDNN it just runs `f`.
pub fn autocast_bf16<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "onednn")]
    return bf16_train::autocast_bf16(f);
    #[cfg(not(feature = "onednn"))]
    f()
}

/// Whether this thread is inside [`autocast_bf16`] (never in builds without oneDNN).
pub fn autocast_active() -> bool {
    #[cfg(feature = "onednn")]
    return bf16_train::active();
    #[cfg(not(feature = "onednn"))]
    false
}

/// `x @ w^T + bias` for `x [rows, in]`, `w [out, in]` (PyTorch `nn.Linear`).
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    #[cfg(feature = "onednn")]
    if bf16::takes(x, w) {
        return bf16::linear(x, w, bias);
    }
    #[cfg(feature = "onednn")]
    if let Some(bias) = bias {
        let all = [x, w, bias];
        if autocast_active()
            && all.iter().all(|t| on_cpu_f32(t))
            && x.rank() == 2
            && all.iter().any(|t| t.track_op())
        {
            return bf16_train::linear(x, w, bias);
        }
    }
    #[cfg(feature = "openblas")]
    if let Some(bias) = bias {
        if [x, w, bias].iter().all(|t| on_cpu_f32(t)) && x.rank() == 2 {
            let backward = [x, w, bias].iter().any(|t| t.track_op());
            return sgemm::linear(x, w, bias, backward);
        }
    }
    let out = matmul(x, &w.t()?)?;
    match bias {
        Some(bias) => out.broadcast_add(bias),
        None => Ok(out),
    }
}

/// `act(x) @ w^T + bias`, the [`linear`] layer of the activated `x` (an MLP's second layer).
/// Under training on the f32 CPU path it is one op that keeps only `x`: the activated values
/// are made for the product and recomputed by the backward pass, so a DiT block's
/// `tokens x 4608` activations are not held until the backward pass as well as their input.
pub fn linear_of_activation(
    x: &Tensor,
    act: Activation,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    if let Some(bias) = bias {
        let all = [x, w, bias];
        if all.iter().all(|t| on_cpu_f32(t)) && x.rank() == 2 && all.iter().any(|t| t.track_op()) {
            #[cfg(feature = "onednn")]
            if autocast_active() {
                return bf16_train::linear_of_activation(x, act, w, bias);
            }
            #[cfg(feature = "openblas")]
            return sgemm::linear_of_activation(x, act, w, bias);
        }
    }
    linear(&activate(x, act)?, w, bias)
}

/// `x + h * gate` with `gate` (`[1, dim]`) broadcast over the rows of `x` and `h`: the gated
/// residual connection of the DiT blocks, one parallel pass on f32 CPU tensors.
pub fn gated_residual(x: &Tensor, h: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let all = [x, h, gate];
    if all.iter().all(|t| on_cpu_f32(t)) && x.dims() == h.dims() && gate.elem_count() > 0 {
        let (x, h, gate) = (x.contiguous()?, h.contiguous()?, gate.contiguous()?);
        return if all.iter().any(|t| t.track_op()) {
            x.apply_op3(&h, &gate, residual::GatedResidual)
        } else {
            x.apply_op3_no_bwd(&h, &gate, &residual::GatedResidual)
        };
    }
    x + h.broadcast_mul(gate)?
}

/// `a @ b`, see [`matmul_scaled`].
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_scaled(a, b, 1.0)
}

/// `softmax(q k^T * scale) v` with the softmax in f32, for `q [.., n_q, d]`, `k [.., n_k, d]`,
/// `v [.., n_k, d_v]` with the same leading dimensions (batch, heads).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    #[cfg(feature = "openblas")]
    if [q, k, v].iter().all(|t| on_cpu_f32(t) && t.rank() >= 2) {
        return attention::attention(q, k, v, scale, false, false);
    }
    composed_attention(q, k, v, scale, MAX_SCORES)
}

/// [`attention`] of `q [.., heads, n_q, d]` with the heads merged back into token-major rows,
/// `[.., n_q, heads * d_v]`, as the output projection reads them. On f32 CPU tensors the op
/// writes them so: a training graph keeps no head-major output besides the merged copy.
pub fn attention_merged(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    #[cfg(feature = "openblas")]
    if [q, k, v].iter().all(|t| on_cpu_f32(t) && t.rank() >= 3) {
        return attention::attention(q, k, v, scale, true, false);
    }
    merged(&attention(q, k, v, scale)?)
}

/// `[.., heads, tokens, d]` as `[.., tokens, heads * d]` (a copy): the merge where the fused op
/// does not run.
fn merged(xs: &Tensor) -> Result<Tensor> {
    let r = xs.rank();
    if r < 3 {
        candle_core::bail!("attention output {:?} has no head dimension", xs.dims())
    }
    let mut dims = xs.dims()[..r - 3].to_vec();
    dims.extend([xs.dim(r - 2)?, xs.dim(r - 3)? * xs.dim(r - 1)?]);
    xs.transpose(r - 3, r - 2)?.reshape(dims)
}

/// [`attention_merged`] with the two products in bf16 where [`bf16`] runs them (f32 tensors on
/// the CPU, no gradient): the self-attention of a model whose linear layers are bf16
/// (`--dtype bf16` on the CPU), as autocast runs it.
pub fn attention_merged_bf16_products(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    #[cfg(feature = "onednn")]
    if [q, k, v]
        .iter()
        .all(|t| on_cpu_f32(t) && t.rank() >= 3 && !t.track_op())
    {
        return attention::attention(q, k, v, scale, true, true);
    }
    attention_merged(q, k, v, scale)
}

/// [`attention`] from candle ops, queries in chunks so that at most `max_scores` scores exist
/// at a time; candle's fused softmax unless gradients flow through the scores. The scale is
/// applied to the queries (a pass over them rather than over the scores). On CUDA the fused
/// softmax runs on the scores in their own dtype: its kernel accumulates in f32 and rounds
/// once, as converting to f32 and back does, without two more passes over the largest tensor.
fn composed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    max_scores: usize,
) -> Result<Tensor> {
    // Head views of the projections (`Attention::heads`) as matrices candle multiplies.
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let rank = q.rank();
    let (q_len, k_len) = (q.dim(rank - 2)?, k.dim(rank - 2)?);
    let matrices: usize = q.dims()[..rank - 2].iter().product();
    let rows = (max_scores / (matrices * k_len).max(1)).clamp(1, q_len.max(1));
    let q = (q * scale)?;
    let k_t = k.transpose(rank - 2, rank - 1)?;
    let mut outs = Vec::with_capacity(q_len.div_ceil(rows));
    for start in (0..q_len).step_by(rows) {
        let q_c = q.narrow(rank - 2, start, rows.min(q_len - start))?;
        let scores = matmul(&q_c, &k_t)?;
        let probs = if scores.track_op() {
            // Composed of candle ops for the gradients: in f32 throughout.
            candle_nn::ops::softmax(&scores.to_dtype(DType::F32)?, candle_core::D::Minus1)?
        } else if scores.device().is_cuda() {
            candle_nn::ops::softmax_last_dim(&scores)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
        };
        outs.push(matmul(&probs.to_dtype(v.dtype())?, &v)?);
    }
    Tensor::cat(&outs, rank - 2)
}

/// `LayerNorm(x) * (1 + scale) + shift` over the last dimension, the LayerNorm without affine
/// parameters; `shift` and `scale` (`[1, dim]`) are broadcast over the rows of `x`.
pub fn modulated_layer_norm(
    xs: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if [xs, shift, scale].iter().all(|t| on_cpu_f32(t)) {
        let (xs, shift, scale) = (xs.contiguous()?, shift.contiguous()?, scale.contiguous()?);
        let op = norm::ModulatedLayerNorm { eps: eps as f32 };
        return if [&xs, &shift, &scale].iter().any(|t| t.track_op()) {
            xs.apply_op3(&shift, &scale, op)
        } else {
            xs.apply_op3_no_bwd(&shift, &scale, &op)
        };
    }
    let x = xs.to_dtype(DType::F32)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(candle_core::D::Minus1)?)?;
    let std = (centred.sqr()?.mean_keepdim(candle_core::D::Minus1)? + eps)?.sqrt()?;
    let normed = centred.broadcast_div(&std)?.to_dtype(xs.dtype())?;
    normed.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// How a square 2D convolution reads its input `[B, C_in, H, W]`: nearest 2x upsampled first
/// when `upsample`, at `y * stride - padding + ky`; it outputs `out_h x out_w`, reads outside
/// the input being zeros (so the output may reach past the padded input, as the VAE's
/// bottom/right zero pad before its stride-2 convolution does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub upsample: bool,
    pub out_h: usize,
    pub out_w: usize,
}

/// GroupNorm (with its affine map) and swish applied to a convolution's input on the fly.
#[derive(Debug, Clone, Copy)]
pub struct PreNorm<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub groups: usize,
    pub eps: f32,
    pub swish: bool,
}

/// The convolution of `xs` by `weight` (`[C_out, C_in, k, k]`) plus `bias` as `params` say,
/// of `pre(xs)` (GroupNorm and swish on the fly) when given, plus `residual` when given;
/// `None` where the fused kernel does not apply (not f32 on the CPU, gradients, a build
/// without OpenBLAS) and the caller composes it from candle ops. A bf16 weight (`--dtype
/// bf16`) multiplies bf16 bands of an f32 input, as PyTorch's CPU autocast does.
#[cfg_attr(not(feature = "openblas"), allow(unused_variables))]
pub fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    params: ConvParams,
    pre: Option<PreNorm>,
    residual: Option<&Tensor>,
) -> Option<Result<Tensor>> {
    let mut all = vec![xs, bias];
    all.extend(residual);
    if let Some(p) = &pre {
        all.extend([p.weight, p.bias]);
    }
    let bf16_weight = cfg!(feature = "onednn") && weight.dtype() == DType::BF16;
    let weight_fits =
        (on_cpu_f32(weight) || (bf16_weight && weight.device().is_cpu())) && !weight.track_op();
    if !cfg!(feature = "openblas")
        || !weight_fits
        || !all.iter().all(|t| on_cpu_f32(t) && !t.track_op())
    {
        return None;
    }
    #[cfg(feature = "openblas")]
    return Some(conv::conv2d(xs, weight, bias, params, pre, residual));
    #[cfg(not(feature = "openblas"))]
    None
}

/// GroupNorm of `[B, C, ...]` into `groups` groups with per-channel `weight` and `bias`;
/// `None` where the fused op does not apply (not f32 on the CPU, or gradients flow) and the
/// caller composes it.
pub fn group_norm(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> Option<Result<Tensor>> {
    if ![xs, weight, bias]
        .iter()
        .all(|t| on_cpu_f32(t) && !t.track_op())
    {
        return None;
    }
    let op = norm::GroupNorm {
        groups,
        eps: eps as f32,
    };
    Some((|| {
        xs.contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
    })())
}

/// RMSNorm over the last dimension, `x / sqrt(mean(x^2) + eps) * weight`, computed in f32.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if [xs, weight].iter().all(|t| on_cpu_f32(t)) {
        let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
        let op = norm::RmsNorm { eps: eps as f32 };
        return if xs.track_op() || weight.track_op() {
            xs.apply_op2(&weight, op)
        } else {
            xs.apply_op2_no_bwd(&weight, &op)
        };
    }
    if !xs.track_op() && !weight.track_op() {
        // One kernel on the GPU (sums in f32, one rounding), candle's op on other CPU dtypes.
        return candle_nn::ops::rms_norm(&xs.contiguous()?, &weight.contiguous()?, eps as f32);
    }
    let x = xs.to_dtype(DType::F32)?;
    let rms = (x.sqr()?.mean_keepdim(candle_core::D::Minus1)? + eps)?.sqrt()?;
    x.broadcast_div(&rms)?
        .to_dtype(xs.dtype())?
        .broadcast_mul(weight)
}

/// `xs [batch * tokens, dim]` as `[batch, heads, tokens, dim / heads]`, a view (the attention
/// and RoPE kernels read it in place).
pub fn split_heads(xs: &Tensor, batch: usize, heads: usize) -> Result<Tensor> {
    let (rows, dim) = xs.dims2()?;
    xs.reshape((batch, rows / batch, heads, dim / heads))?
        .transpose(1, 2)
}

/// Queries or keys from their projection `xs [batch * tokens, dim]`: [`rms_norm`] with
/// `weight`, [`split_heads`], then, given `rotation` (`cos`, `sin`), [`rope_interleaved`]; one
/// op on f32 CPU tensors (with f64 tables).
pub fn rms_norm_heads(
    xs: &Tensor,
    weight: &Tensor,
    eps: f64,
    rotation: Option<(&Tensor, &Tensor)>,
    batch: usize,
    heads: usize,
) -> Result<Tensor> {
    let f64_tables =
        rotation.is_none_or(|(c, s)| c.dtype() == DType::F64 && s.dtype() == DType::F64);
    if on_cpu_f32(xs) && on_cpu_f32(weight) && f64_tables {
        let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
        let op = rope::NormedHeads {
            norm: norm::RmsNorm { eps: eps as f32 },
            rotation: rotation.map(|(cos, sin)| (cos.clone(), sin.clone())),
            batch,
            heads,
        };
        return if xs.track_op() || weight.track_op() {
            xs.apply_op2(&weight, op)
        } else {
            xs.apply_op2_no_bwd(&weight, &op)
        };
    }
    let normed = split_heads(&rms_norm(xs, weight, eps)?, batch, heads)?;
    match rotation {
        Some((cos, sin)) => rope_interleaved(&normed, cos, sin),
        None => Ok(normed),
    }
}

/// Rotary position embedding of `xs [.., tokens, head_dim]`: adjacent pairs rotated by the
/// angles whose `cos` and `sin` are `[tokens, head_dim / 2]`, computed in the tables' dtype.
pub fn rope_interleaved(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(xs) && cos.dtype() == DType::F64 && sin.dtype() == DType::F64 {
        let xs = if xs.stride().last() == Some(&1) {
            xs.clone()
        } else {
            xs.contiguous()?
        };
        return if xs.track_op() {
            xs.apply_op3(cos, sin, rope::Rope)
        } else {
            xs.apply_op3_no_bwd(cos, sin, &rope::Rope)
        };
    }
    let x = xs.to_dtype(cos.dtype())?.contiguous()?;
    // candle's fused kernel has no backward pass: under training the composed form runs.
    let rotated = if x.track_op() {
        candle_nn::rotary_emb::rope_i_slow(&x, cos, sin)?
    } else {
        candle_nn::rotary_emb::rope_i(&x, cos, sin)?
    };
    rotated.to_dtype(xs.dtype())
}

/// `act(xs)` elementwise, see [`Activation`].
pub fn activate(xs: &Tensor, act: Activation) -> Result<Tensor> {
    if on_cpu_f32(xs) {
        let xs = xs.contiguous()?;
        return if xs.track_op() {
            xs.apply_op1(act)
        } else {
            xs.apply_op1_no_bwd(&act)
        };
    }
    match act {
        Activation::GeluTanh => xs.gelu(),
        Activation::GeluErf => xs.gelu_erf(),
        Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{IndexOp, Var};

    /// Rounded to bf16 and back, as the bf16 products read their operands.
    pub(crate) fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    /// The largest absolute difference between two tensors of the same shape.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Asserts that the gradients of `sum(ours^2)` and `sum(theirs^2)` with respect to `vars`
    /// agree within `tol`.
    fn assert_same_gradients(ours: Tensor, theirs: Tensor, vars: &[&Var], tol: f32) {
        let grads = |y: Tensor| y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (ours, theirs) = (grads(ours), grads(theirs));
        for v in vars {
            let (a, b) = (
                ours.get(v.as_tensor()).unwrap(),
                theirs.get(v.as_tensor()).unwrap(),
            );
            assert!(max_diff(a, b) < tol, "{}", max_diff(a, b));
        }
    }

    #[test]
    fn product_of_known_matrices() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &dev).unwrap();
        let b = Tensor::new(&[[1f32, 0.0, 2.0], [0.0, 1.0, 3.0]], &dev).unwrap();
        let got = matmul_scaled(&a, &b, 0.5).unwrap();
        let want = Tensor::new(
            &[[0.5f32, 1.0, 4.0], [1.5, 2.0, 9.0], [2.5, 3.0, 14.0]],
            &dev,
        )
        .unwrap();
        assert!(max_diff(&got, &want) < 1e-6);
    }

    #[test]
    fn strided_batched_and_shared_operands_match_candle() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 70, 4), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 3, 6, 4), &dev).unwrap();
        // b transposed in place (strides), a narrowed (an offset), a shared right operand.
        let bt = b.transpose(2, 3).unwrap();
        let want = a.matmul(&bt.contiguous().unwrap()).unwrap();
        assert!(max_diff(&matmul(&a, &bt).unwrap(), &want) < 1e-5);
        let a_rows = a.narrow(2, 1, 3).unwrap();
        let want = a_rows
            .contiguous()
            .unwrap()
            .matmul(&bt.contiguous().unwrap());
        assert!(max_diff(&matmul(&a_rows, &bt).unwrap(), &want.unwrap()) < 1e-5);
        let w = Tensor::randn(0f32, 1.0, (7, 4), &dev).unwrap();
        let got = matmul(&a, &w.t().unwrap()).unwrap();
        assert_eq!(got.dims(), &[2, 3, 70, 7]);
        let want = a.i((1, 2)).unwrap().matmul(&w.t().unwrap()).unwrap();
        assert!(max_diff(&got.i((1, 2)).unwrap(), &want) < 1e-5);
        // Heads split off a [tokens, dim] projection: matrices apart by a stride, rows by another.
        let x = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let heads = x.reshape((5, 2, 4)).unwrap().transpose(0, 1).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 4, 3), &dev).unwrap();
        let want = heads.contiguous().unwrap().matmul(&k).unwrap();
        assert!(max_diff(&matmul(&heads, &k).unwrap(), &want) < 1e-5);
    }

    #[test]
    fn product_gradients_match_candle_matmul() {
        let dev = Device::Cpu;
        let a = Var::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        assert_same_gradients(
            matmul_scaled(&a, &w.t().unwrap(), 0.5).unwrap(),
            (a.broadcast_matmul(&w.t().unwrap()).unwrap() * 0.5).unwrap(),
            &[&a, &w],
            1e-4,
        );
    }

    #[test]
    fn fused_attention_gradients_match_composed_ones() {
        let dev = Device::Cpu;
        let var = |t: usize, d: usize| Var::randn(0f32, 1.0, (2, 3, t, d), &dev).unwrap();
        let (q, k, v) = (var(70, 8), var(20, 8), var(20, 5));
        assert_same_gradients(
            attention(&q, &k, &v, 0.4).unwrap(),
            composed_attention(&q, &k, &v, 0.4, MAX_SCORES).unwrap(),
            &[&q, &k, &v],
            1e-4,
        );
    }

    #[test]
    fn fused_norm_gradients_match_composed_ones() {
        let dev = Device::Cpu;
        // A large common offset: the variance must not be taken as E[x^2] - E[x]^2. 150 rows:
        // the parameters' gradients sum three blocks of rows.
        let x = (Tensor::randn(0f32, 1.0, (150, 16), &dev).unwrap() + 3.0).unwrap();
        let [shift, scale, weight] =
            [(1, 16), (1, 16), (16, 1)].map(|s| Tensor::randn(0f32, 1.0, s, &dev).unwrap());
        let weight = weight.flatten_all().unwrap();
        // The same values in f32 (the fused kernels) and in f64 (candle's composed ops).
        let vars = |dtype| {
            [&x, &shift, &scale, &weight]
                .map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap())
        };
        let norms = |[x, shift, scale, weight]: &[Var; 4]| {
            (modulated_layer_norm(x, shift, scale, 1e-6).unwrap()
                + rms_norm(x, weight, 1e-6).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
        };
        let (fused, composed) = (vars(DType::F32), vars(DType::F64));
        let grads = |v: &[Var; 4]| {
            norms(v)
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (ours, theirs) = (grads(&fused), grads(&composed));
        for (f, c) in fused.iter().zip(&composed) {
            let a = ours.get(f.as_tensor()).unwrap();
            let b = theirs
                .get(c.as_tensor())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            // Relative to the largest gradient: summed over 150 rows, some reach the hundreds.
            let scale = 1.0 + max_diff(&b, &b.zeros_like().unwrap());
            assert!(
                max_diff(a, &b) < 1e-5 * scale,
                "{} of {scale}",
                max_diff(a, &b)
            );
        }
    }

    /// Random RoPE angle tables (f64 cos and sin) for 10 tokens of head width 8.
    fn angle_tables(dev: &Device) -> (Tensor, Tensor) {
        let angles = Tensor::randn(0f64, 2.0, (10, 4), dev).unwrap();
        (angles.cos().unwrap(), angles.sin().unwrap())
    }

    #[test]
    fn rope_matches_candle_in_f64_with_its_gradient() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (1, 3, 10, 8), &dev).unwrap();
        let (cos, sin) = angle_tables(&dev);
        let want = candle_nn::rotary_emb::rope_i(&x.to_dtype(DType::F64).unwrap(), &cos, &sin)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let got = rope_interleaved(x.as_tensor(), &cos, &sin).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0);
        let composed =
            candle_nn::rotary_emb::rope_i_slow(&x.to_dtype(DType::F64).unwrap(), &cos, &sin)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
        assert_same_gradients(got, composed, &[&x], 1e-5);
    }

    #[test]
    fn rope_reads_head_views_in_place() {
        let dev = Device::Cpu;
        // Two samples of 10 tokens, 3 heads of 8: heads split off the rows, not copied.
        let x = Var::randn(0f32, 1.0, (20, 24), &dev).unwrap();
        let (cos, sin) = angle_tables(&dev);
        let view = split_heads(x.as_tensor(), 2, 3).unwrap();
        assert!(!view.is_contiguous());
        let got = rope_interleaved(&view, &cos, &sin).unwrap();
        let want = rope_interleaved(&view.contiguous().unwrap(), &cos, &sin).unwrap();
        assert_eq!(got.dims(), &[2, 3, 10, 8]);
        assert_eq!(max_diff(&got, &want), 0.0);
        let composed = candle_nn::rotary_emb::rope_i_slow(
            &view,
            &cos.to_dtype(DType::F32).unwrap(),
            &sin.to_dtype(DType::F32).unwrap(),
        )
        .unwrap();
        assert_same_gradients(got, composed, &[&x], 1e-5);
    }

    #[test]
    fn normed_heads_are_the_ops_one_after_another() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (20, 24), &dev).unwrap();
        let w = Var::randn(1f32, 0.3, 24, &dev).unwrap();
        let (cos, sin) = angle_tables(&dev);
        let (xs, ws) = (x.as_tensor(), w.as_tensor());
        let normed = rms_norm(xs, ws, 1e-6).unwrap();
        let heads = split_heads(&normed, 2, 3).unwrap().contiguous().unwrap();
        // Unrotated (the cross-attention's queries, the context's keys), then rotated.
        let got = rms_norm_heads(xs, ws, 1e-6, None, 2, 3).unwrap();
        assert_eq!(got.dims(), &[2, 3, 10, 8]);
        assert_eq!(max_diff(&got, &heads), 0.0);
        assert_same_gradients(got, heads.clone(), &[&x, &w], 1e-5);
        let got = rms_norm_heads(xs, ws, 1e-6, Some((&cos, &sin)), 2, 3).unwrap();
        let want = rope_interleaved(&heads, &cos, &sin).unwrap();
        assert_eq!(got.dims(), &[2, 3, 10, 8]);
        assert_eq!(max_diff(&got, &want), 0.0);
        assert_same_gradients(got, want, &[&x, &w], 1e-5);
        // Tables too short for the tokens, heads that do not divide the width.
        let short = cos.narrow(0, 0, 9).unwrap();
        assert!(rms_norm_heads(xs, ws, 1e-6, Some((&short, &sin)), 2, 3).is_err());
        assert!(rms_norm_heads(xs, ws, 1e-6, None, 2, 5).is_err());
    }

    #[test]
    fn fused_linear_gradients_match_composed_ones() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (70, 6), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (5, 6), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, 5, &dev).unwrap();
        let composed = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert_same_gradients(
            linear(&x, &w, Some(&b)).unwrap(),
            composed,
            &[&x, &w, &b],
            1e-3,
        );
    }

    #[test]
    fn linear_of_activation_matches_its_composed_form_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (70, 6), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (5, 6), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, 5, &dev).unwrap();
        for act in [Activation::GeluTanh, Activation::GeluErf] {
            let fused = linear_of_activation(&x, act, &w, Some(&b)).unwrap();
            let composed = linear(&activate(&x, act).unwrap(), &w, Some(&b)).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-5);
            assert_same_gradients(fused, composed, &[&x, &w, &b], 1e-4);
        }
    }

    #[test]
    fn gated_residual_matches_its_composed_form_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (150, 12), &dev).unwrap();
        let h = Var::randn(0f32, 1.0, (150, 12), &dev).unwrap();
        let gate = Var::randn(0f32, 1.0, (1, 12), &dev).unwrap();
        let fused = gated_residual(&x, &h, &gate).unwrap();
        let composed = (x.as_tensor() + h.broadcast_mul(&gate).unwrap()).unwrap();
        assert_eq!(max_diff(&fused, &composed), 0.0);
        // The gate's gradient sums 150 rows of values near 10: f32 rounding reaches 1e-4.
        assert_same_gradients(fused, composed, &[&x, &h, &gate], 1e-3);
    }

    #[test]
    fn registered_weights_gather_their_gradients_in_place() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (70, 6), &dev).unwrap();
        let x2 = Tensor::randn(0f32, 1.0, (130, 6), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (5, 6), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, 5, &dev).unwrap();
        // The layer used twice; candle's gradients first, then the buffers'.
        let loss = || {
            let y = (linear(&x, &w, Some(&b))
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                + linear(&x2, &w, Some(&b)).unwrap().sum_all().unwrap())
            .unwrap();
            y.backward().unwrap()
        };
        let want = loss();
        let buffers = [&w, &b].map(|v| param_grad::register(v.as_tensor()));
        let got = loss();
        assert!(got.get(w.as_tensor()).is_none() && got.get(b.as_tensor()).is_none());
        for (buffer, v) in buffers.iter().zip([&w, &b]) {
            let g = buffer.take(&dev).unwrap().unwrap();
            let d = max_diff(&g, want.get(v.as_tensor()).unwrap());
            assert!(d < 1e-3, "{d}");
        }
        // The input's gradient still goes through candle.
        let d = max_diff(
            got.get(x.as_tensor()).unwrap(),
            want.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-4, "{d}");
    }

    #[test]
    fn fused_linear_matches_product_plus_bias() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (70, 6), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 6), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        let want = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_diff(&linear(&x, &w, Some(&b)).unwrap(), &want) < 1e-5);
        let want = x.matmul(&w.t().unwrap()).unwrap();
        assert!(max_diff(&linear(&x, &w, None).unwrap(), &want) < 1e-5);
    }

    #[test]
    fn attention_weights_values_by_softmax_of_scaled_scores() {
        let dev = Device::Cpu;
        // One head of size 4, one query, two keys.
        let q = Tensor::new(&[[[[1f32, 0.0, 0.0, 0.0]]]], &dev).unwrap();
        let k = Tensor::new(&[[[[2f32, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]], &dev).unwrap();
        let v = Tensor::new(&[[[[1f32, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]]], &dev).unwrap();
        // scores (2/2, 0) -> weights (e/(e+1), 1/(e+1)).
        let e = 1f32.exp();
        let want = Tensor::new(&[[[[e / (e + 1.0), 1.0 / (e + 1.0), 0.0, 0.0]]]], &dev).unwrap();
        for got in [
            attention(&q, &k, &v, 0.5).unwrap(),
            composed_attention(&q, &k, &v, 0.5, MAX_SCORES).unwrap(),
            // One query per chunk.
            composed_attention(&q, &k, &v, 0.5, 1).unwrap(),
        ] {
            assert!(max_diff(&got, &want) < 1e-6);
        }
    }

    #[test]
    fn fused_attention_matches_composed_on_strided_heads() {
        let dev = Device::Cpu;
        // 300 queries (several query blocks and a ragged last one), 70 keys, 3 heads of 8,
        // values of another width, heads split off [batch, tokens, dim] without a copy.
        let heads = |t: usize, d: usize| {
            Tensor::randn(0f32, 1.0, (2, t, 3 * d), &dev)
                .unwrap()
                .reshape((2, t, 3, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        };
        let (q, k, v) = (heads(300, 8), heads(70, 8), heads(70, 5));
        let got = attention(&q, &k, &v, 0.3).unwrap();
        let want = composed_attention(&q, &k, &v, 0.3, MAX_SCORES).unwrap();
        assert_eq!(got.dims(), &[2, 3, 300, 5]);
        assert!(max_diff(&got, &want) < 1e-5);
        let chunked = composed_attention(&q, &k, &v, 0.3, 3 * 70 * 7).unwrap();
        assert!(max_diff(&chunked, &want) < 1e-6);
    }

    #[test]
    fn merged_attention_is_the_attention_with_its_heads_merged() {
        let dev = Device::Cpu;
        // 2 samples, 3 heads, 130 queries (a ragged query block), 70 keys, values of width 5.
        let q = Var::randn(0f32, 1.0, (2, 3, 130, 8), &dev).unwrap();
        let k = Var::randn(0f32, 1.0, (2, 3, 70, 8), &dev).unwrap();
        let v = Var::randn(0f32, 1.0, (2, 3, 70, 5), &dev).unwrap();
        let (q, k, v) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let heads_then_copy = |t: Tensor| t.transpose(1, 2).unwrap().reshape((2, 130, 15)).unwrap();
        let want = heads_then_copy(attention(q, k, v, 0.3).unwrap());
        // Recorded for the backward pass and not: the same values.
        let got = attention_merged(q, k, v, 0.3).unwrap();
        assert_eq!(got.dims(), &[2, 130, 15]);
        assert_eq!(max_diff(&got, &want), 0.0);
        let untracked = attention_merged(&q.detach(), &k.detach(), &v.detach(), 0.3).unwrap();
        assert_eq!(max_diff(&untracked, &want), 0.0);
        let vars: Vec<Var> = [q, k, v]
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let (qv, kv, vv) = (
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
        );
        assert_same_gradients(
            attention_merged(qv, kv, vv, 0.3).unwrap(),
            heads_then_copy(composed_attention(qv, kv, vv, 0.3, MAX_SCORES).unwrap()),
            &vars.iter().collect::<Vec<_>>(),
            1e-4,
        );
    }

    #[test]
    fn fused_norms_match_composed_ones() {
        let dev = Device::Cpu;
        // A large common offset: the variance must not be taken as E[x^2] - E[x]^2.
        let x = (Tensor::randn(0f32, 1.0, (3, 64), &dev).unwrap() + 300.0).unwrap();
        let shift = Tensor::randn(0f32, 1.0, (1, 64), &dev).unwrap();
        let scale = Tensor::randn(0f32, 1.0, (1, 64), &dev).unwrap();
        let got = modulated_layer_norm(&x, &shift, &scale, 1e-6).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        // A tracked input takes the composed path.
        let want = modulated_layer_norm(xv.as_tensor(), &shift, &scale, 1e-6).unwrap();
        assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
        let weight = Tensor::randn(0f32, 1.0, 64, &dev).unwrap();
        let got = rms_norm(&x, &weight, 1e-6).unwrap();
        let want = rms_norm(xv.as_tensor(), &weight, 1e-6).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn half_precision_takes_candles_ops_within_its_rounding() {
        // The path of GPUs and of f16 on the CPU: candle's fused RMSNorm and the composed
        // attention, checked against the f32 kernels at f16's precision (11 bits).
        let dev = Device::Cpu;
        let half = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
        let f32 = |t: Tensor| t.to_dtype(DType::F32).unwrap();
        let x = Tensor::randn(0f32, 1.0, (6, 64), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1.0, 64, &dev).unwrap();
        let want = rms_norm(&x, &weight, 1e-6).unwrap();
        let got = f32(rms_norm(&half(&x), &half(&weight), 1e-6).unwrap());
        let peak = max_diff(&want, &want.zeros_like().unwrap());
        assert!(
            max_diff(&got, &want) < 2e-3 * peak,
            "{}",
            max_diff(&got, &want)
        );

        let [q, k, v] = [(2, 3, 40, 8), (2, 3, 50, 8), (2, 3, 50, 8)]
            .map(|s| Tensor::randn(0f32, 1.0, s, &dev).unwrap());
        let want = attention(&q, &k, &v, 0.35).unwrap();
        let got = f32(attention(&half(&q), &half(&k), &half(&v), 0.35).unwrap());
        assert!(max_diff(&got, &want) < 4e-3, "{}", max_diff(&got, &want));
    }

    #[test]
    fn activations_match_candle_ones() {
        let dev = Device::Cpu;
        // Large inputs (several parallel chunks); tracked inputs take candle's ops.
        let x = Tensor::randn(0f32, 2.0, (3, 50_000), &dev).unwrap();
        let tracked = Var::from_tensor(&x).unwrap();
        for act in [
            Activation::GeluTanh,
            Activation::GeluErf,
            Activation::QuickGelu,
        ] {
            let got = activate(&x, act).unwrap();
            let want = activate(tracked.as_tensor(), act).unwrap();
            assert!(max_diff(&got, &want) < 1e-5, "{act:?}");
        }
    }

    #[test]
    fn gelu_is_the_tanh_approximation() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[-3f32, -1.0, 0.0, 0.5, 2.0], &dev).unwrap();
        let want: Vec<f32> = [-3f32, -1.0, 0.0, 0.5, 2.0]
            .iter()
            .map(|&v| {
                let inner = (2.0 / std::f32::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
                0.5 * v * (1.0 + inner.tanh())
            })
            .collect();
        let got = activate(&x, Activation::GeluTanh)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
