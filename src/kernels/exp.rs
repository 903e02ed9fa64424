//! `exp` for the elementwise kernels (activations, softmax) in a form the compiler vectorises:
//! libm's `expf` is a call per value, and calls keep a loop scalar. The method is Cephes'
//! `expf`: `exp(x) = 2^n exp(r)` with `n = round(x / ln 2)`, `r = x - n ln 2` (ln 2 in two parts,
//! so that `r` is exact) and a degree-7 polynomial for `exp(r)` on `|r| <= ln 2 / 2`; relative
//! error within 2e-7. [`map_in_place`] and [`map_into`] run a loop compiled for AVX-512 where
//! the CPU has it (16 lanes), for AVX2 + FMA (8 lanes), or for the baseline; every variant gives
//! the same bits.

/// Largest argument whose result is finite (`2^127 * exp(r)`).
const MAX_ARG: f32 = 88.376_26;
/// Smallest argument whose result is a normal float.
const MIN_ARG: f32 = -87.336_54;
/// `ln 2 = LN2_HI + LN2_LO`, `LN2_HI` with few enough bits that `n * LN2_HI` is exact.
const LN2_HI: f32 = 355.0 / 512.0;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 * 2^23`: adding and subtracting it rounds to the nearest integer.
const ROUNDER: f32 = 12_582_912.0;
/// Cephes' minimax coefficients of `(exp(r) - 1 - r) / r^2`.
#[allow(clippy::excessive_precision)]
const P: [f32; 6] = [
    1.987_569_150_0e-4,
    1.398_199_950_7e-3,
    8.333_451_907_3e-3,
    4.166_579_589_4e-2,
    1.666_666_545_9e-1,
    5.000_000_120_1e-1,
];

/// `e^x`; arguments beyond the float range saturate at its ends (`exp(-100)` gives 1.2e-38,
/// not 0; `exp(100)` 2.4e38, not infinity); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(MIN_ARG, MAX_ARG);
    let n = (x * std::f32::consts::LOG2_E + ROUNDER) - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let poly = P[1..].iter().fold(P[0], |acc, &c| acc * r + c);
    let e_r = poly * (r * r) + r + 1.0;
    // 2^n from its exponent bits: n is in -126..=127 after the clamp.
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `values[i] = f(values[i])`.
pub fn map_in_place(values: &mut [f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { map_in_place_avx512(values, f) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { map_in_place_avx2(values, f) };
    }
    map_in_place_plain(values, f)
}

/// `out[i] = f(input[i])` over the shorter of the two.
pub fn map_into(out: &mut [f32], input: &[f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { map_into_avx512(out, input, f) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { map_into_avx2(out, input, f) };
    }
    map_into_plain(out, input, f)
}

/// `out[i] = f(a[i], b[i])` over the shortest of the three.
pub fn map2_into(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { map2_into_avx512(out, a, b, f) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { map2_into_avx2(out, a, b, f) };
    }
    map2_into_plain(out, a, b, f)
}

/// `values` reduced by `op` from `init`, in [`LANES`] lanes (lane `j` takes every
/// `LANES`-th value from the `j`-th, the tail goes to the first lanes), then the lanes in order:
/// a fixed order, whatever the CPU, that the compiler vectorises. For sums (which it rounds
/// differently from a left-to-right loop) and maxima.
pub fn reduce(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { reduce_avx512(values, init, op) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { reduce_avx2(values, init, op) };
    }
    reduce_plain(values, init, op)
}

/// Lanes of [`reduce`]: one AVX-512 register.
const LANES: usize = 16;

#[inline(always)]
fn reduce_plain(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = op(*l, v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(tail) {
        *l = op(*l, v);
    }
    lanes.into_iter().fold(init, op)
}

#[inline(always)]
fn map_in_place_plain(values: &mut [f32], f: impl Fn(f32) -> f32) {
    for v in values {
        *v = f(*v);
    }
}

#[inline(always)]
fn map_into_plain(out: &mut [f32], input: &[f32], f: impl Fn(f32) -> f32) {
    for (y, &x) in out.iter_mut().zip(input) {
        *y = f(x);
    }
}

#[inline(always)]
fn map2_into_plain(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((y, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *y = f(a, b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map2_into_avx2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    map2_into_plain(out, a, b, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map2_into_avx512(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    map2_into_plain(out, a, b, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_in_place_avx2(values: &mut [f32], f: impl Fn(f32) -> f32) {
    map_in_place_plain(values, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_into_avx2(out: &mut [f32], input: &[f32], f: impl Fn(f32) -> f32) {
    map_into_plain(out, input, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map_in_place_avx512(values: &mut [f32], f: impl Fn(f32) -> f32) {
    map_in_place_plain(values, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map_into_avx512(out: &mut [f32], input: &[f32], f: impl Fn(f32) -> f32) {
    map_into_plain(out, input, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn reduce_avx512(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    reduce_plain(values, init, op)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn reduce_avx2(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    reduce_plain(values, init, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_parts_in_ten_million() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let want = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_saturates_outside_the_float_range_and_keeps_nan() {
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1.2e-38);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 2e38);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_take_sixteen_lanes_in_a_fixed_order() {
        let values: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin()).collect();
        let add = |a: f32, b: f32| a + b;
        assert_eq!(
            reduce(&values, 0.0, add).to_bits(),
            reduce_plain(&values, 0.0, add).to_bits()
        );
        let exact: f64 = values.iter().map(|&v| f64::from(v)).sum();
        assert!((f64::from(reduce(&values, 0.0, add)) - exact).abs() < 1e-5);
        let max = |a: f32, b: f32| if b > a { b } else { a };
        let want = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(reduce(&values, f32::NEG_INFINITY, max), want);
        assert_eq!(reduce(&[], 0.0, add), 0.0);
    }

    #[test]
    fn maps_agree_with_a_plain_loop() {
        let input: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 37.0).collect();
        let mut out = vec![0f32; input.len()];
        map_into(&mut out, &input, exp);
        let mut in_place = input.clone();
        map_in_place(&mut in_place, exp);
        let mut two = vec![0f32; input.len()];
        map2_into(&mut two, &input, &in_place, |x, e| e - exp(x) + x);
        for (((a, b), &c), &x) in out.iter().zip(&in_place).zip(&two).zip(&input) {
            assert_eq!(a.to_bits(), exp(x).to_bits());
            assert_eq!(b.to_bits(), exp(x).to_bits());
            assert_eq!(c.to_bits(), x.to_bits());
        }
    }
}
