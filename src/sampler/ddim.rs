//! DDIM with eta 0 and "trailing" timesteps, as scepter's `DDIMSampler`: the model sees
//! `round(t_i)`; `x0 = (x_t - sigma_i eps) / alpha_bar_i` with sigma and alpha_bar taken at the
//! integer part of `t_i`; the update uses the VP sigmas of the interpolated schedule plus a
//! final zero.

use super::LinearSchedule;
use crate::{Error, Result};
use candle_core::Tensor;

/// The DDIM plan for a number of steps.
#[derive(Debug, Clone)]
pub struct Ddim {
    timesteps: Vec<f32>,
    sigmas_vp: Vec<f32>,
    sigmas_init: Vec<f32>,
    alphas_bar_init: Vec<f32>,
}

impl Ddim {
    /// Plans `steps` steps on `schedule`: `arange(T-1, -1, -T/steps)` clamped to [0, T-1].
    pub fn new(schedule: &LinearSchedule, steps: usize) -> Result<Self> {
        let t_max = schedule.num_timesteps() - 1;
        if steps == 0 || steps > schedule.num_timesteps() {
            return Err(Error::invalid(
                "steps",
                format!("{steps} (expected 1 to {})", schedule.num_timesteps()),
            ));
        }
        // torch.arange with a float step: length ceil((end - start) / step) and values
        // start + i * step in double precision, stored as float32.
        let step = -((t_max + 1) as f64 / steps as f64);
        let len = ((-1.0 - t_max as f64) / step).ceil() as usize;
        let timesteps: Vec<f32> = (0..len)
            .map(|i| (t_max as f64 + step * i as f64) as f32)
            .map(|t| t.clamp(0.0, t_max as f32))
            .collect();
        let mut sigmas_vp: Vec<f32> = timesteps
            .iter()
            .map(|&t| {
                let s = schedule.ve_sigma(t);
                if s.is_infinite() {
                    1.0
                } else {
                    (s * s / (1.0 + s * s)).sqrt()
                }
            })
            .collect();
        sigmas_vp.push(0.0);
        let index = |t: f32| t as usize;
        let sigmas_init = timesteps
            .iter()
            .map(|&t| schedule.sigma(index(t)))
            .collect();
        let alphas_bar_init = timesteps
            .iter()
            .map(|&t| schedule.alpha_bar(index(t)))
            .collect();
        Ok(Self {
            timesteps,
            sigmas_vp,
            sigmas_init,
            alphas_bar_init,
        })
    }

    /// Number of model evaluations.
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The (fractional) timesteps, from noisiest down.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// The VP sigmas of the timesteps with a final 0.
    pub fn sigmas_vp(&self) -> &[f32] {
        &self.sigmas_vp
    }

    /// sigma at the integer part of each timestep.
    pub fn sigmas_init(&self) -> &[f32] {
        &self.sigmas_init
    }

    /// alpha_bar at the integer part of each timestep.
    pub fn alphas_bar_init(&self) -> &[f32] {
        &self.alphas_bar_init
    }

    /// The timestep the model sees at step `i`: `round(t_i)`, halves to even as torch does.
    pub fn model_timestep(&self, i: usize) -> f32 {
        self.timesteps[i].round_ties_even()
    }

    /// One DDIM step from `x_t` with the (guided) eps prediction; returns `x_{t+1}`, which after
    /// the last step is the predicted clean latent.
    pub fn step(&self, i: usize, x_t: &Tensor, eps: &Tensor) -> Result<Tensor> {
        let (sigma, alpha_bar) = (self.sigmas_init[i], self.alphas_bar_init[i]);
        let (s, s_next) = (self.sigmas_vp[i], self.sigmas_vp[i + 1]);
        let x0 = ((x_t - (eps * f64::from(sigma))?)? / f64::from(alpha_bar))?;
        let d = ((x_t - (&x0 * f64::from((1.0 - s * s).sqrt()))?)? / f64::from(s))?;
        let a_next = (1.0 - s_next * s_next).sqrt();
        let b_next = (s_next * s_next).sqrt();
        Ok(((x0 * f64::from(a_next))? + (d * f64::from(b_next))?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::path::Path;

    fn golden() -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ace-tiny/expected/ddim.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn max_diff(got: &[f32], want: &serde_json::Value) -> f64 {
        let want = want.as_array().unwrap();
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(a, b)| (f64::from(*a) - b.as_f64().unwrap()).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn plans_match_the_reference() {
        let g = golden();
        let schedule = LinearSchedule::official();
        for steps in [3usize, 20, 50] {
            let plan = Ddim::new(&schedule, steps).unwrap();
            let want = &g[steps.to_string()];
            assert_eq!(plan.steps(), steps);
            assert!(
                max_diff(plan.timesteps(), &want["ts"]) <= 1e-6,
                "{steps} ts"
            );
            assert!(
                max_diff(plan.sigmas_vp(), &want["sigmas_vp"]) <= 1e-6,
                "{steps} vp"
            );
            assert!(
                max_diff(plan.sigmas_init(), &want["sigmas_init"]) <= 1e-6,
                "{steps} s"
            );
            // alpha_bar = sqrt(1 - sigma^2) in float32 cancels near t = 999: a sigma one ulp
            // (6e-8) from the reference's moves it by up to 1e-5 there (see the report).
            let a_want = want["alphas_bar_init"].as_array().unwrap();
            for (i, (a, w)) in plan.alphas_bar_init().iter().zip(a_want).enumerate() {
                let s = f64::from(plan.sigmas_init()[i]);
                let bound = 1e-6f64.max(s * 2.0 * 6e-8 / f64::from(*a));
                assert!(
                    (f64::from(*a) - w.as_f64().unwrap()).abs() <= bound,
                    "{steps} a {i}"
                );
            }
        }
    }

    #[test]
    fn model_timesteps_are_rounded() {
        let plan = Ddim::new(&LinearSchedule::official(), 3).unwrap();
        let t: Vec<f32> = (0..3).map(|i| plan.model_timestep(i)).collect();
        assert_eq!(t, vec![999.0, 666.0, 332.0]);
        assert!(Ddim::new(&LinearSchedule::official(), 0).is_err());
    }

    #[test]
    fn exact_eps_recovers_the_clean_latent() {
        // x_t = alpha_bar x0 + sigma eps at the first timestep: the last step returns x0.
        let plan = Ddim::new(&LinearSchedule::official(), 1).unwrap();
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        let eps = Tensor::new(&[1.0f32, 0.0, -0.5], &dev).unwrap();
        let (s, a) = (plan.sigmas_init()[0], plan.alphas_bar_init()[0]);
        let x_t = ((&x0 * f64::from(a)).unwrap() + (&eps * f64::from(s)).unwrap()).unwrap();
        let out = plan.step(0, &x_t, &eps).unwrap().to_vec1::<f32>().unwrap();
        for (o, w) in out.iter().zip([0.5f32, -1.0, 2.0]) {
            assert!((o - w).abs() < 1e-3, "{o} vs {w}");
        }
    }
}
