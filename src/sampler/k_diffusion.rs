//! Samplers beyond the reference's, as k-diffusion writes them for an eps model: Euler, Euler
//! ancestral and DPM++ 2M. They step the VE latent `x = x0 + sigma eps` down a list of sigmas
//! (the DDIM plan's timesteps, or Karras et al.'s spacing with rho 7) to 0; the model sees
//! `x / sqrt(1 + sigma^2)` (the VP latent) at the fractional timestep of each sigma, and
//! `denoised = x - sigma eps` is the clean latent it predicts.

use super::method::Sampler;
use super::LinearSchedule;
use crate::{Error, Result};
use candle_core::Tensor;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Which of the k-diffusion samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Euler,
    EulerAncestral,
    DpmPp2m,
}

/// How the sigmas are spaced (`--schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// The DDIM plan's trailing timesteps.
    #[default]
    Default,
    /// Karras et al. (2022): evenly spaced in `sigma^(1/7)` between the schedule's ends.
    Karras,
}

impl std::str::FromStr for Spacing {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "default" | "ddim" => Ok(Spacing::Default),
            "karras" => Ok(Spacing::Karras),
            other => Err(Error::invalid(
                "schedule",
                format!("'{other}' (expected default or karras)"),
            )),
        }
    }
}

impl Spacing {
    pub fn name(self) -> &'static str {
        match self {
            Spacing::Default => "default",
            Spacing::Karras => "karras",
        }
    }
}

/// The sigmas of `steps` steps, from the noisiest down, with a final 0.
pub fn sigmas(schedule: &LinearSchedule, steps: usize, spacing: Spacing) -> Result<Vec<f32>> {
    let mut out: Vec<f32> = match spacing {
        Spacing::Default => super::Ddim::new(schedule, steps)?
            .timesteps()
            .iter()
            .map(|&t| schedule.ve_sigma(t))
            .collect(),
        Spacing::Karras => {
            let last = (schedule.num_timesteps() - 1) as f32;
            let (max, min) = (schedule.ve_sigma(last), schedule.ve_sigma(0.0));
            let rho = 7.0f64;
            let (a, b) = (
                f64::from(max).powf(1.0 / rho),
                f64::from(min).powf(1.0 / rho),
            );
            (0..steps)
                .map(|i| {
                    let ramp = if steps > 1 {
                        i as f64 / (steps - 1) as f64
                    } else {
                        0.0
                    };
                    (a + ramp * (b - a)).powf(rho) as f32
                })
                .collect()
        }
    };
    if out.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(Error::invalid(
            "schedule",
            "its sigmas are not finite and positive",
        ));
    }
    out.push(0.0);
    Ok(out)
}

/// A k-diffusion sampler planned for one run.
pub struct KSampler {
    method: Method,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    first: usize,
    rng: rand_chacha::ChaCha8Rng,
    old_denoised: Option<Tensor>,
}

impl KSampler {
    /// `method` over `sigmas` (with their final 0) on `schedule`, from step `first`; the
    /// ancestral noise is drawn from `seed`.
    pub fn new(
        method: Method,
        schedule: &LinearSchedule,
        sigmas: Vec<f32>,
        first: usize,
        seed: u64,
    ) -> Self {
        let timesteps = sigmas[..sigmas.len() - 1]
            .iter()
            .map(|&s| schedule.timestep_of_ve_sigma(s))
            .collect();
        Self {
            method,
            sigmas,
            timesteps,
            first,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            old_denoised: None,
        }
    }

    fn noise_like(&mut self, x: &Tensor) -> Result<Tensor> {
        let v: Vec<f32> = (0..x.elem_count())
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Ok(Tensor::from_vec(v, x.shape(), x.device())?)
    }
}

impl Sampler for KSampler {
    fn steps(&self) -> std::ops::Range<usize> {
        self.first..self.timesteps.len()
    }

    fn start(&self, noise: &Tensor, source: Option<&Tensor>) -> Result<Tensor> {
        let s = f64::from(self.sigmas[self.first]);
        match (self.first, source) {
            (0, _) => Ok((noise * s)?),
            (_, Some(x0)) => Ok((x0 + (noise * s)?)?),
            (_, None) => Err(Error::invalid(
                "strength",
                "below 1 needs an input image to start from",
            )),
        }
    }

    fn timestep(&self, i: usize) -> f32 {
        self.timesteps[i]
    }

    fn model_input(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let s = f64::from(self.sigmas[i]);
        Ok((x / (1.0 + s * s).sqrt())?)
    }

    fn step(&mut self, i: usize, x: &Tensor, eps: &Tensor) -> Result<Tensor> {
        let (s, next) = (f64::from(self.sigmas[i]), f64::from(self.sigmas[i + 1]));
        match self.method {
            Method::Euler => Ok((x + (eps * (next - s))?)?),
            Method::EulerAncestral => {
                let up = if s > 0.0 {
                    (next * next * (s * s - next * next) / (s * s))
                        .max(0.0)
                        .sqrt()
                        .min(next)
                } else {
                    0.0
                };
                let down = (next * next - up * up).max(0.0).sqrt();
                let x = (x + (eps * (down - s))?)?;
                if next > 0.0 {
                    let n = self.noise_like(&x)?;
                    Ok((x + (n * up)?)?)
                } else {
                    Ok(x)
                }
            }
            Method::DpmPp2m => {
                let denoised = (x - (eps * s)?)?;
                let out = if next == 0.0 {
                    denoised.clone()
                } else {
                    let t = |sigma: f64| -sigma.ln();
                    let h = t(next) - t(s);
                    let previous = (i > self.first)
                        .then(|| f64::from(self.sigmas[i - 1]))
                        .zip(self.old_denoised.as_ref());
                    let d = match previous {
                        Some((prev_sigma, old)) => {
                            let r = (t(s) - t(prev_sigma)) / h;
                            ((&denoised * (1.0 + 1.0 / (2.0 * r)))? - (old * (1.0 / (2.0 * r)))?)?
                        }
                        None => denoised.clone(),
                    };
                    ((x * (next / s))? - (d * (-h).exp_m1())?)?
                };
                self.old_denoised = Some(denoised);
                Ok(out)
            }
        }
    }

    fn finish(&self, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn karras_sigmas_span_the_schedule_and_default_ones_follow_ddim() {
        let s = LinearSchedule::official();
        let k = sigmas(&s, 10, Spacing::Karras).unwrap();
        assert_eq!(k.len(), 11);
        assert!((k[0] - s.ve_sigma(999.0)).abs() < 1e-3 * k[0]);
        assert!((k[9] - s.ve_sigma(0.0)).abs() < 1e-6);
        assert_eq!(k[10], 0.0);
        assert!(k.windows(2).all(|w| w[0] > w[1]));
        let d = sigmas(&s, 4, Spacing::Default).unwrap();
        let ddim = super::super::Ddim::new(&s, 4).unwrap();
        for (sigma, t) in d.iter().zip(ddim.timesteps()) {
            assert_eq!(*sigma, s.ve_sigma(*t));
        }
        assert_eq!("KARRAS".parse::<Spacing>().unwrap(), Spacing::Karras);
    }

    /// With the true eps of a clean latent, every sampler lands on that latent.
    #[test]
    fn exact_eps_recovers_the_clean_latent() {
        let s = LinearSchedule::official();
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        let noise = Tensor::new(&[1.0f32, 0.3, -0.5], &dev).unwrap();
        for method in [Method::Euler, Method::EulerAncestral, Method::DpmPp2m] {
            for spacing in [Spacing::Default, Spacing::Karras] {
                let mut k = KSampler::new(method, &s, sigmas(&s, 8, spacing).unwrap(), 0, 1);
                let mut x = (&x0 + k.start(&noise, None).unwrap()).unwrap();
                for i in k.steps() {
                    // eps of x = x0 + sigma eps.
                    let eps = ((&x - &x0).unwrap() / f64::from(k.sigmas[i])).unwrap();
                    x = k.step(i, &x, &eps).unwrap();
                }
                let got = k.finish(x).unwrap().to_vec1::<f32>().unwrap();
                for (g, w) in got.iter().zip([0.5f32, -1.0, 2.0]) {
                    assert!((g - w).abs() < 1e-3, "{method:?} {spacing:?}: {g} vs {w}");
                }
            }
        }
    }

    /// For data N(mu, c^2) the ODE has a closed form: from `x` at sigma_max it ends at
    /// `mu + c / sqrt(c^2 + sigma_max^2) (x - mu)`. Euler is first order and DPM++ 2M second
    /// order in the step count: doubling the step count halves Euler's error and, once the steps are fine enough, quarters
    /// DPM++ 2M's.
    #[test]
    fn solvers_converge_at_their_order_on_a_gaussian() {
        let s = LinearSchedule::official();
        let dev = Device::Cpu;
        let (mu, c) = (0.5f64, 0.8f64);
        let error = |method: Method, steps: usize| {
            let sig = sigmas(&s, steps, Spacing::Karras).unwrap();
            let max = f64::from(sig[0]);
            let mut k = KSampler::new(method, &s, sig, 0, 1);
            let noise = Tensor::new(&[1.0f32], &dev).unwrap();
            let mut x = k.start(&noise, None).unwrap();
            for i in k.steps() {
                let sigma = f64::from(k.sigmas[i]);
                // eps = (x - D(x)) / sigma with the exact denoiser D.
                let denoised =
                    ((x.clone() - mu).unwrap() * (c * c / (c * c + sigma * sigma))).unwrap() + mu;
                let eps = ((&x - denoised.unwrap()).unwrap() / sigma).unwrap();
                x = k.step(i, &x, &eps).unwrap();
            }
            let got = f64::from(k.finish(x).unwrap().to_vec1::<f32>().unwrap()[0]);
            let want = mu + c / (c * c + max * max).sqrt() * (max - mu);
            (got - want).abs()
        };
        let (euler_10, euler_20) = (error(Method::Euler, 10), error(Method::Euler, 20));
        let (dpm_10, dpm_20, dpm_40) = (
            error(Method::DpmPp2m, 10),
            error(Method::DpmPp2m, 20),
            error(Method::DpmPp2m, 40),
        );
        assert!(euler_20 < euler_10 * 0.6, "{euler_10} {euler_20}");
        assert!(dpm_20 < dpm_10 * 0.45, "{dpm_10} {dpm_20}");
        assert!(dpm_40 < dpm_20 * 0.3, "{dpm_20} {dpm_40}");
        assert!(dpm_10 < euler_10 * 0.5, "{dpm_10} {euler_10}");
    }
}
