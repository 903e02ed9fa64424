//! The MLP activations over all cores: candle's CPU unary ops run on one thread, and the
//! models apply them to `tokens x intermediate` values per block (`tokens x 4608` in the DiT).
//! Their backward passes too (training): candle's derivative of GELU is ten single-threaded
//! passes with libm's `tanh` and `powf`, here one parallel pass.

use super::contiguous;
use super::exp::{exp, map2_into, map_into};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// The activations of the models here, with the formulas of PyTorch (and candle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `0.5 x (1 + tanh(u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)` (`approximate='tanh'`),
    /// computed as the equal `x sigmoid(2u)`: `exp` costs a sixth of `tanh` (3.7 vs 21.7 ns
    /// with libm here) and the two agree to 1e-7.
    GeluTanh,
    /// `0.5 x (1 + erf(x / sqrt 2))`, the exact GELU, with erf as PyTorch's vectorised CPU
    /// kernels compute it (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7): a sixth of the cost
    /// of libm's `erff` (24 ns here).
    GeluErf,
    /// `x sigmoid(1.702 x)` (CLIP's `quick_gelu`).
    QuickGelu,
}

#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI: f32 = 0.797_884_560_802_865_4;

#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    x / (1.0 + exp(-2.0 * SQRT_TWO_OVER_PI * x * (1.0 + 0.044715 * x * x)))
}

#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// `sigmoid(z)` with the vectorised [`exp`].
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// d/dx of `x sigmoid(s(x))`: `sigmoid(s) + x sigmoid(s) (1 - sigmoid(s)) s'(x)`.
#[inline(always)]
fn x_sigmoid_derivative(x: f32, s: f32, ds: f32) -> f32 {
    let sig = sigmoid(s);
    sig + x * sig * (1.0 - sig) * ds
}

/// d/dx of [`gelu_tanh`]: `s = 2 sqrt(2/pi) (x + 0.044715 x^3)`.
#[inline(always)]
fn gelu_tanh_derivative(x: f32) -> f32 {
    let c = 2.0 * SQRT_TWO_OVER_PI;
    let s = c * x * (1.0 + 0.044715 * x * x);
    x_sigmoid_derivative(x, s, c * (1.0 + 3.0 * 0.044715 * x * x))
}

/// d/dx of [`gelu_erf`]: `Phi(x) + x phi(x)`.
#[inline(always)]
fn gelu_erf_derivative(x: f32) -> f32 {
    #[allow(clippy::excessive_precision)]
    const ONE_OVER_SQRT_TWO_PI: f32 = 0.398_942_280_401_432_7;
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
        + x * ONE_OVER_SQRT_TWO_PI * exp(-0.5 * x * x)
}

/// d/dx of [`quick_gelu`].
#[inline(always)]
fn quick_gelu_derivative(x: f32) -> f32 {
    x_sigmoid_derivative(x, 1.702 * x, 1.702)
}

/// `out[i] = f(input[i])` over all cores; one vectorised loop per function, with no dispatch
/// inside.
fn map_parallel(input: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; input.len()];
    out.par_chunks_mut(CHUNK)
        .zip(input.par_chunks(CHUNK))
        .for_each(|(out, input)| map_into(out, input, &f));
    out
}

/// erf by Abramowitz & Stegun 7.1.26, the formula of ATen's `Vectorized<float>::erf`:
/// `sign(x) (1 - t p(t) exp(-x^2))` with `t = 1 / (1 + 0.3275911 |x|)`.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    ];
    let t = 1.0 / (1.0 + P * x.abs());
    let poly = (((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0];
    (1.0 - t * poly * exp(-x * x)).copysign(x)
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        match self {
            Activation::GeluTanh => "gelu-tanh",
            Activation::GeluErf => "gelu-erf",
            Activation::QuickGelu => "quick-gelu",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let input = contiguous::<f32>(self.name(), storage, layout)?;
        Ok((CpuStorage::F32(self.apply(input)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.backward(arg, grad_res)?))
    }
}

impl Activation {
    /// The activation of every value, over all cores.
    pub(super) fn apply(self, input: &[f32]) -> Vec<f32> {
        match self {
            Activation::GeluTanh => map_parallel(input, gelu_tanh),
            Activation::GeluErf => map_parallel(input, gelu_erf),
            Activation::QuickGelu => map_parallel(input, quick_gelu),
        }
    }

    /// The gradient of the input `x` from the output's gradient: `grad` times the derivative,
    /// in one parallel pass ([`Derivative`]).
    pub(super) fn backward(self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let grad = grad.contiguous()?;
        x.detach()
            .contiguous()?
            .apply_op2_no_bwd(&grad, &Derivative(self))
    }
}

/// `grad * act'(x)` for the input `x` of an [`Activation`] and its output's gradient `grad`.
struct Derivative(Activation);

impl CustomOp2 for Derivative {
    fn name(&self) -> &'static str {
        "activation-derivative"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(self.name(), s1, l1)?;
        let grad = contiguous::<f32>(self.name(), s2, l2)?;
        if x.len() != grad.len() {
            candle_core::bail!(
                "activation-derivative: {:?} against {:?}",
                l1.dims(),
                l2.dims()
            )
        }
        let out = match self.0 {
            Activation::GeluTanh => times_derivative(x, grad, gelu_tanh_derivative),
            Activation::GeluErf => times_derivative(x, grad, gelu_erf_derivative),
            Activation::QuickGelu => times_derivative(x, grad, quick_gelu_derivative),
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `grad[i] * derivative(x[i])` over all cores; one loop per derivative, inlined so that it
/// vectorises (through a function pointer it ran a call per value).
fn times_derivative(x: &[f32], grad: &[f32], derivative: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(out, (x, grad))| map2_into(out, x, grad, |x, g| g * derivative(x)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn derivatives_match_central_differences() {
        type Function = fn(f32) -> f32;
        let fs: [(Function, Function); 3] = [
            (gelu_tanh, gelu_tanh_derivative),
            (gelu_erf, gelu_erf_derivative),
            (quick_gelu, quick_gelu_derivative),
        ];
        for (f, df) in fs {
            for i in -60..=60 {
                let x = f64::from(i) / 10.0;
                let h = 1e-3;
                let at = |x: f64| f64::from(f(x as f32));
                let numeric = (at(x + h) - at(x - h)) / (2.0 * h);
                let d = (f64::from(df(x as f32)) - numeric).abs();
                assert!(d < 2e-3, "derivative at {x}: {} vs {numeric}", df(x as f32));
            }
        }
    }

    #[test]
    fn backward_matches_candles_gelu() {
        let dev = Device::Cpu;
        let x = Var::new(&[-3.0f32, -1.0, -0.2, 0.0, 0.4, 1.5, 4.0], &dev).unwrap();
        let weights = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0, 1.0, -1.0, 2.0], &dev).unwrap();
        let ours = super::super::activate(x.as_tensor(), Activation::GeluTanh).unwrap();
        let grads = (ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got: Vec<f32> = grads.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        let theirs = x.as_tensor().gelu().unwrap();
        let grads = (theirs * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let want: Vec<f32> = grads.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn erf_is_within_the_formula_bound_of_libm() {
        for i in -800..=800 {
            let x = i as f32 / 100.0;
            let d = (super::erf(x) - candle_core::cpu::erf::erf_f32(x)).abs();
            assert!(d <= 3e-7, "erf({x}) off by {d}");
        }
    }
}
