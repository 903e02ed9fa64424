//! The linear layer of a training step under automatic mixed precision (the reference's
//! `SOLVER.USE_AMP`; on the CPU PyTorch autocasts to bf16): the weights stay f32, as AdamW
//! updates them, and each of the layer's three products rounds its operands to bf16 and
//! accumulates in f32 through oneDNN ([`super::bf16`]): `x W^T` forward, `g W` and `g^T x`
//! backward; an MLP's second layer takes its activation in the same op ([`linear_of_activation`],
//! the activated values recomputed by the backward pass rather than kept). The attention's
//! products do the same in both passes (`attention.rs`); everything else (the softmax, norms,
//! activations, the loss) stays f32, and so do the gradients.
//! Autocast is a region, [`autocast_bf16`], as PyTorch's context manager is: the layers it
//! records keep their precision through the backward pass that runs after it.

use super::activation::Activation;
use super::bf16::{product, rows_per_task, rows_product, to_bf16, Bf16Matrix};
use super::param_grad::{self, GradBuffer};
use super::{read, row_sums};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::Arc;

thread_local! {
    /// Whether this thread is inside [`autocast_bf16`].
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the tracked f32 CPU linear layers it records taking bf16 products (the CPU
/// must have bf16 instructions, [`super::cpu_bf16_support`]).
pub fn autocast_bf16<R>(f: impl FnOnce() -> R) -> R {
    let before = ACTIVE.with(|a| a.replace(true));
    let out = f();
    ACTIVE.with(|a| a.set(before));
    out
}

/// Whether [`autocast_bf16`] is on for this thread.
pub fn active() -> bool {
    ACTIVE.with(Cell::get)
}

/// `x @ w^T + bias` recorded for backpropagation with its products in bf16; gradients of a
/// registered weight or bias go to its buffer.
pub fn linear(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    record(None, x, w, bias)
}

/// [`linear`] of `act(x)`, keeping only `x` for the backward pass, which recomputes the
/// activation (an MLP's second layer, as [`super::linear_of_activation`]).
pub fn linear_of_activation(
    x: &Tensor,
    act: Activation,
    w: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    record(Some(act), x, w, bias)
}

fn record(
    input_activation: Option<Activation>,
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let op = AutocastLinear {
        input_activation,
        weight_grad: param_grad::buffer_of(w),
        bias_grad: param_grad::buffer_of(bias),
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &bias.contiguous()?, op)
}

struct AutocastLinear {
    /// Applied to the input before the product (its values are not kept).
    input_activation: Option<Activation>,
    weight_grad: Option<Arc<GradBuffer>>,
    bias_grad: Option<Arc<GradBuffer>>,
}

impl CustomOp3 for AutocastLinear {
    fn name(&self) -> &'static str {
        "autocast-linear"
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
        let x = super::contiguous::<f32>(self.name(), s1, l1)?;
        let w = super::contiguous::<f32>(self.name(), s2, l2)?;
        let bias = super::contiguous::<f32>(self.name(), s3, l3)?;
        let (Ok((rows, k)), Ok((n, wk))) = (l1.shape().dims2(), l2.shape().dims2()) else {
            candle_core::bail!("autocast-linear: x {:?}, w {:?}", l1.dims(), l2.dims())
        };
        if wk != k || bias.len() != n {
            candle_core::bail!(
                "autocast-linear: x {:?}, w {:?}, bias {:?} do not fit together",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let w = to_bf16(w);
        let activated = self.input_activation.map(|act| act.apply(x));
        let x = activated.as_deref().unwrap_or(x);
        // `W^T [k, n]` read from `W [n, k]`.
        let weight_t = Bf16Matrix {
            values: &w,
            k,
            n,
            strides: (1, k),
        };
        let mut out = vec![0f32; rows * n];
        rows_product(x, k, weight_t, Some(bias), &mut out)?;
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    /// `dx = g W`, `dW = g^T x`, `dbias = sum over rows of g`, the products in bf16. With an
    /// input activation, `x` above is `act(x)` (recomputed) and `dx` goes on through the
    /// activation's derivative.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, k) = x.dims2()?;
        let (n, _) = w.dims2()?;
        let grad = grad.contiguous()?;
        let (dx, inputs) = read(self.name(), [x, w, &grad], |[xs, ws, g]| {
            let mut dx = vec![0f32; rows * k];
            let w = to_bf16(ws);
            // `W [n, k]` as it is.
            let weight = Bf16Matrix {
                values: &w,
                k: n,
                n: k,
                strides: (k, 1),
            };
            rows_product(g, n, weight, None, &mut dx)?;
            let inputs = match self.input_activation {
                Some(act) => to_bf16(&act.apply(xs)),
                None => to_bf16(xs),
            };
            Ok((dx, inputs))
        })?;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dx = match self.input_activation {
            Some(act) => act.backward(x, &dx)?,
            None => dx,
        };
        let dw = param_grad::gradient(
            self.weight_grad.as_ref(),
            w.shape(),
            w.device(),
            |out, accumulate| {
                read(self.name(), [&grad], |[g]| {
                    weight_gradient(g, n, &inputs, k, accumulate, out)
                })
            },
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

/// `out = g^T x (+ out when accumulate)` for `g [rows, n]` f32 and `x [rows, k]` in bf16,
/// `out [n, k]`, by blocks of its rows in parallel.
fn weight_gradient(
    g: &[f32],
    n: usize,
    x: &[bf16],
    k: usize,
    accumulate: bool,
    out: &mut [f32],
) -> Result<()> {
    let rows = x.len() / k.max(1);
    let inputs = Bf16Matrix {
        values: x,
        k: rows,
        n: k,
        strides: (k, 1),
    };
    // oneDNN writes its products: onto earlier gradients through a temporary.
    let mut fresh = if accumulate {
        vec![0f32; out.len()]
    } else {
        Vec::new()
    };
    let target: &mut [f32] = if accumulate { &mut fresh } else { &mut *out };
    // Rows i.. of `g^T` are columns i.. of `g`: strides 1 along them, n along k.
    let block = rows_per_task(n);
    target
        .par_chunks_mut(block * k.max(1))
        .enumerate()
        .try_for_each(|(i, c)| product(&g[i * block..], (1, n), inputs, None, c))?;
    if accumulate {
        for (o, f) in out.iter_mut().zip(&fresh) {
            *o += f;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{max_diff as max_abs_diff, rounded};
    use super::*;
    use candle_core::{Device, Var};

    /// The layer and its three gradients against f32 products of the bf16-rounded operands,
    /// with the weight and bias registered (gathered in place over two uses) and without.
    #[test]
    fn products_are_those_of_the_rounded_operands_forward_and_backward() {
        let dev = Device::Cpu;
        let (rows, k, n) = (150, 40, 24);
        let x = Var::randn(0f32, 1.0, (rows, k), &dev).unwrap();
        let w = Var::randn(0f32, 0.2, (n, k), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, n, &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (rows, n), &dev).unwrap();
        let y = match autocast_bf16(|| super::super::linear(&x, &w, Some(&b))) {
            Ok(y) => y,
            // oneDNN has no bf16 product on CPUs without AVX-512: an error there (the trainer
            // runs f32 on them and says so), never a wrong result.
            Err(e) => {
                assert!(super::super::cpu_bf16_support().is_err(), "{e}");
                return;
            }
        };
        let want = rounded(&x)
            .matmul(&rounded(&w).t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(
            max_abs_diff(&y, &want) < 1e-4,
            "{}",
            max_abs_diff(&y, &want)
        );
        // d(sum(y * g)) is g: dx = g W, dW = g^T x, dbias = column sums of g.
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let want_dx = rounded(&g).matmul(&rounded(&w)).unwrap();
        let want_dw = rounded(&g).t().unwrap().matmul(&rounded(&x)).unwrap();
        let want_db = g.sum(0).unwrap();
        let got = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
        for (got, want) in [
            (got(&x), &want_dx),
            (got(&w), &want_dw),
            (got(&b), &want_db),
        ] {
            let d = max_abs_diff(&got, want);
            assert!(d < 1e-3, "{d}");
        }
        // Registered: the weight's and bias's gradients of two uses gather in their buffers.
        let buffers = [&w, &b].map(|v| param_grad::register(v.as_tensor()));
        let twice = autocast_bf16(|| -> Result<Tensor> {
            let y = super::super::linear(&x, &w, Some(&b))?;
            (&y * &g)?.sum_all()? + (&y * &g)?.sum_all()?
        })
        .unwrap();
        let store = twice.backward().unwrap();
        assert!(store.get(w.as_tensor()).is_none());
        for (buffer, want) in buffers.iter().zip([&want_dw, &want_db]) {
            let got = buffer.take(&dev).unwrap().unwrap();
            let d = max_abs_diff(&got, &(want * 2.0).unwrap());
            assert!(d < 2e-3, "{d}");
        }
        // Outside the region the layer is the f32 one again.
        let plain = super::super::linear(&x, &w, Some(&b)).unwrap();
        let f32_want = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_abs_diff(&plain, &f32_want) < 1e-5);
    }

    /// The attention recorded inside the region: its forward is the inference path's bf16
    /// attention, whatever the strides of its operands, and its backward products in bf16 stay
    /// within bf16's rounding of the f32 gradients.
    #[test]
    fn attention_in_bf16_is_autocasts_and_its_backward_stays_near_the_f32_one() {
        if super::super::cpu_bf16_support().is_err() {
            // The region is never entered on such CPUs (the trainer runs f32); the bf16
            // product's refusal there is tested beside the linear layer.
            return;
        }
        let dev = Device::Cpu;
        // Fixed pseudo-random values, uniform over [-1.7, 1.7] (variance 1): candle's randn
        // cannot be seeded, and a rare draw went past the bound.
        let values = |t: usize, d: usize, seed: u64| {
            let mut state = seed;
            let v: Vec<f32> = (0..2 * t * d)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 1.7
                })
                .collect();
            Tensor::from_vec(v, (1, 2, t, d), &dev).unwrap()
        };
        let var = |t, d, seed| Var::from_tensor(&values(t, d, seed)).unwrap();
        let (q, k, v) = (var(70, 8, 1), var(20, 8, 2), var(20, 5, 3));
        let g = values(70, 5, 4);
        let grads = |amp: bool| {
            let out = || super::super::attention(&q, &k, &v, 0.4);
            let out = if amp { autocast_bf16(out) } else { out() }.unwrap();
            (out * &g).unwrap().sum_all().unwrap().backward().unwrap()
        };
        // Inference with `--dtype bf16` (nothing tracked) and the recorded op, heads merged.
        let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
        let inference = super::super::attention_merged_bf16_products(&qd, &kd, &vd, 0.4).unwrap();
        let recorded = autocast_bf16(|| super::super::attention_merged(&q, &k, &v, 0.4)).unwrap();
        assert_eq!(max_abs_diff(&recorded, &inference), 0.0);
        // q read transposed and k, v through a strided view: the same values.
        let q_t = Var::from_tensor(&q.t().unwrap().contiguous().unwrap()).unwrap();
        let kv =
            Var::from_tensor(&Tensor::cat(&[k.as_tensor(), k.as_tensor()], 3).unwrap()).unwrap();
        let strided = autocast_bf16(|| {
            let k_view = kv.narrow(3, 8, 8)?;
            super::super::attention_merged(&q_t.t()?, &k_view, &v, 0.4)
        })
        .unwrap();
        assert_eq!(max_abs_diff(&strided, &inference), 0.0);
        let (bf16, f32) = (grads(true), grads(false));
        for x in [&q, &k, &v] {
            let (a, b) = (
                bf16.get(x.as_tensor()).unwrap(),
                f32.get(x.as_tensor()).unwrap(),
            );
            let scale = max_abs_diff(b, &b.zeros_like().unwrap());
            let d = max_abs_diff(a, b);
            assert!(d > 0.0 && d < 2e-2 * scale, "{d} of {scale}");
        }
    }

    /// The MLP's second layer under autocast: `act(x) W^T + b` with `act(x)` and `W` rounded,
    /// and its input's gradient through the activation's derivative.
    #[test]
    fn activated_input_is_rounded_after_the_activation() {
        if super::super::cpu_bf16_support().is_err() {
            return;
        }
        let dev = Device::Cpu;
        let act = Activation::GeluTanh;
        let x = Var::randn(0f32, 1.0, (90, 32), &dev).unwrap();
        let w = Var::randn(0f32, 0.2, (12, 32), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, 12, &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (90, 12), &dev).unwrap();
        let y =
            autocast_bf16(|| super::super::linear_of_activation(&x, act, &w, Some(&b))).unwrap();
        let activated = x.as_tensor().gelu().unwrap();
        let want = rounded(&activated)
            .matmul(&rounded(&w).t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(
            max_abs_diff(&y, &want) < 1e-4,
            "{}",
            max_abs_diff(&y, &want)
        );
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let d_activated = rounded(&g).matmul(&rounded(&w)).unwrap();
        let want_dx = act.backward(x.as_tensor(), &d_activated).unwrap();
        let want_dw = rounded(&g)
            .t()
            .unwrap()
            .matmul(&rounded(&activated))
            .unwrap();
        let got = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
        for (got, want) in [(got(&x), &want_dx), (got(&w), &want_dw)] {
            let d = max_abs_diff(&got, want);
            assert!(d < 1e-3, "{d}");
        }
    }
}
