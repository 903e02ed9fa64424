//! Classifier-free guidance with rescale: `out = u + s (c - u)`, then when r > 0
//! `out *= r * std(c) / std(out) + (1 - r)` with unbiased standard deviations over all the
//! elements of the sample. With s <= 1 only the conditional pass runs and nothing is rescaled.

use crate::device::widest_float;
use crate::{Error, Result};
use candle_core::Tensor;

/// Guide scale and rescale factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    pub scale: f64,
    pub rescale: f64,
}

impl Guidance {
    /// Checks the values: a finite scale, a rescale in [0, 1].
    pub fn new(scale: f64, rescale: f64) -> Result<Self> {
        if !scale.is_finite() {
            return Err(Error::invalid("guide scale", format!("{scale}")));
        }
        if !(0.0..=1.0).contains(&rescale) {
            return Err(Error::invalid(
                "guide rescale",
                format!("{rescale} (expected 0 to 1)"),
            ));
        }
        Ok(Self { scale, rescale })
    }

    /// Whether the negative-context pass is needed (scale above 1).
    pub fn needs_unconditional(&self) -> bool {
        self.scale > 1.0
    }

    /// Combines the conditional and (when needed) unconditional eps of one sample.
    pub fn combine(&self, cond: &Tensor, uncond: Option<&Tensor>) -> Result<Tensor> {
        let uncond = match uncond {
            Some(u) if self.needs_unconditional() => u,
            _ => return Ok(cond.clone()),
        };
        let out = (uncond + ((cond - uncond)? * self.scale)?)?;
        if self.rescale <= 0.0 {
            return Ok(out);
        }
        // Computed on the device, without reading anything back: no sync inside a step.
        let ratio = (std_unbiased(cond)? / (std_unbiased(&out)? + 1e-12)?)?;
        let factor = ((ratio * self.rescale)? + (1.0 - self.rescale))?;
        Ok(out.broadcast_mul(&factor.to_dtype(out.dtype())?)?)
    }
}

/// Unbiased standard deviation over all elements as a one-element tensor on `x`'s device,
/// accumulated in double precision (single on Metal).
fn std_unbiased(x: &Tensor) -> Result<Tensor> {
    let x = x.flatten_all()?.to_dtype(widest_float(x.device()))?;
    let n = x.elem_count() as f64;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let var = (centred.sqr()?.sum_keepdim(0)? / (n - 1.0).max(1.0))?;
    Ok(var.sqrt()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn plain_guidance_extrapolates() {
        let g = Guidance::new(3.0, 0.0).unwrap();
        let out = g.combine(&t(&[1.0, 2.0]), Some(&t(&[0.0, 1.0]))).unwrap();
        assert_eq!(out.to_vec1::<f32>().unwrap(), vec![3.0, 4.0]);
    }

    #[test]
    fn full_rescale_restores_the_conditional_std() {
        let g = Guidance::new(4.5, 1.0).unwrap();
        let c = t(&[1.0, -1.0, 0.5, 2.0]);
        let out = g.combine(&c, Some(&t(&[0.2, 0.1, -0.3, 0.0]))).unwrap();
        let std = |x: &Tensor| std_unbiased(x).unwrap().to_vec1::<f64>().unwrap()[0];
        let (sc, so) = (std(&c), std(&out));
        assert!((sc - so).abs() < 1e-5, "{sc} vs {so}");
        // unbiased std of [1, -1, 0.5, 2] is sqrt(1.5625)
        assert!((sc - 1.25).abs() < 1e-12);
    }

    #[test]
    fn scale_one_or_less_is_the_conditional_pass() {
        let c = t(&[1.0, 2.0]);
        for s in [1.0, 0.5] {
            let g = Guidance::new(s, 0.5).unwrap();
            assert!(!g.needs_unconditional());
            let out = g.combine(&c, Some(&t(&[9.0, 9.0]))).unwrap();
            assert_eq!(out.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        }
        assert!(Guidance::new(4.5, 1.5).is_err());
    }
}
