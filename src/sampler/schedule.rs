//! scepter's `LinearScheduler`: betas linear in [BETA_MIN, BETA_MAX] over NUM_TIMESTEPS,
//! `sigma_t = sqrt(1 - prod(1 - beta))`, `alpha_bar_t = sqrt(1 - sigma_t^2)`, and the
//! log-SNR interpolation `t_to_sigma` used for fractional timesteps.

use crate::{Error, Result};

/// The linear noise schedule, tabulated at the integer timesteps.
#[derive(Debug, Clone)]
pub struct LinearSchedule {
    sigmas: Vec<f32>,
    alphas_bar: Vec<f32>,
}

impl LinearSchedule {
    /// The official schedule: 1000 steps, beta from 1e-4 to 0.02.
    pub fn official() -> Self {
        Self::new(1000, 1e-4, 0.02).expect("the official schedule is valid")
    }

    /// Tabulates the schedule (`torch.linspace` in float32, then a float32 cumulative product).
    pub fn new(num_timesteps: usize, beta_min: f64, beta_max: f64) -> Result<Self> {
        if num_timesteps < 2 || !(0.0..1.0).contains(&beta_min) || !(0.0..1.0).contains(&beta_max) {
            return Err(Error::invalid(
                "noise schedule",
                format!(
                    "NUM_TIMESTEPS {num_timesteps}, BETA_MIN {beta_min}, BETA_MAX {beta_max} \
                     (need at least 2 steps and betas in [0, 1))"
                ),
            ));
        }
        let (start, end) = (beta_min as f32, beta_max as f32);
        let step = (end - start) / (num_timesteps - 1) as f32;
        let halfway = num_timesteps / 2;
        // torch's CPU cumprod accumulates float32 in double precision.
        let mut prod = 1f64;
        let mut sigmas = Vec::with_capacity(num_timesteps);
        for i in 0..num_timesteps {
            // torch.linspace fills the first half from the start and the second from the end,
            // each value with one rounding (a fused multiply-add).
            let beta = if i < halfway {
                (f64::from(start) + f64::from(step) * i as f64) as f32
            } else {
                (f64::from(end) - f64::from(step) * (num_timesteps - i - 1) as f64) as f32
            };
            prod *= f64::from(1.0 - beta);
            sigmas.push((1.0 - prod as f32).sqrt());
        }
        let alphas_bar = sigmas.iter().map(|s| (1.0 - s * s).sqrt()).collect();
        Ok(Self { sigmas, alphas_bar })
    }

    /// Number of training timesteps.
    pub fn num_timesteps(&self) -> usize {
        self.sigmas.len()
    }

    /// `sigma_t` at an integer timestep (clamped to the last one).
    pub fn sigma(&self, t: usize) -> f32 {
        self.sigmas[t.min(self.sigmas.len() - 1)]
    }

    /// `alpha_bar_t` at an integer timestep (clamped to the last one).
    pub fn alpha_bar(&self, t: usize) -> f32 {
        self.alphas_bar[t.min(self.alphas_bar.len() - 1)]
    }

    /// scepter's `t_to_sigma`: interpolates `log(sigma / alpha_bar)` linearly between the
    /// neighbouring integer timesteps and returns that VE sigma.
    pub fn ve_sigma(&self, t: f32) -> f32 {
        let log_snr = |i: usize| {
            let s = self.sigmas[i];
            (s * s / (1.0 - s * s)).sqrt().ln()
        };
        let last = self.sigmas.len() - 1;
        let (lo, hi) = (
            (t.floor() as usize).min(last),
            (t.ceil() as usize).min(last),
        );
        let w = t - t.trunc();
        let v = (1.0 - w) * log_snr(lo) + w * log_snr(hi);
        if v.is_finite() {
            v.exp()
        } else {
            f32::INFINITY
        }
    }

    /// The fractional timestep whose [`ve_sigma`](Self::ve_sigma) is `sigma` (its inverse:
    /// linear in log-sigma between the neighbouring integer timesteps), clamped to the
    /// schedule's ends.
    pub fn timestep_of_ve_sigma(&self, sigma: f32) -> f32 {
        let log = |t: usize| self.ve_sigma(t as f32).ln();
        let target = sigma.ln();
        let last = self.sigmas.len() - 1;
        if target <= log(0) {
            return 0.0;
        }
        if target >= log(last) {
            return last as f32;
        }
        // ve_sigma grows with t: the first integer timestep at or above the target.
        let (mut lo, mut hi) = (0usize, last);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if log(mid) < target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (a, b) = (log(lo), log(hi));
        lo as f32 + if b > a { (target - a) / (b - a) } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_of_the_official_schedule() {
        let s = LinearSchedule::official();
        assert_eq!(s.num_timesteps(), 1000);
        assert!((s.sigma(0) - 0.01).abs() < 1e-6);
        assert!((s.alpha_bar(999) - 0.006_35).abs() < 2e-5);
        assert!((s.sigma(999) - 0.999_979_8).abs() < 1e-7);
        assert!(LinearSchedule::new(1, 0.1, 0.2).is_err());
    }

    #[test]
    fn timestep_of_ve_sigma_inverts_it() {
        let s = LinearSchedule::official();
        for t in [0.0f32, 3.5, 250.0, 600.25, 998.0] {
            let back = s.timestep_of_ve_sigma(s.ve_sigma(t));
            assert!((back - t).abs() < 1e-2, "{t} -> {back}");
        }
    }

    #[test]
    fn ve_sigma_at_integers_is_sigma_over_alpha() {
        let s = LinearSchedule::official();
        for t in [0usize, 10, 500, 999] {
            let want = s.sigma(t) / s.alpha_bar(t);
            assert!((s.ve_sigma(t as f32) - want).abs() <= 1e-4 * want, "t={t}");
        }
    }
}
