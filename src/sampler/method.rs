//! The samplers a run may use on ACE's eps model, behind one interface: where sampling starts
//! (pure noise, or with `--strength` below 1 an input's latent noised part of the way, as
//! SDEdit does), which timestep and latent the model is shown at each step, and how a step
//! moves on. DDIM (the reference's, bit for bit) works on the VP latent; the k-diffusion style
//! samplers work on the VE latent `x0 + sigma eps` and show the model `x / sqrt(1 + sigma^2)`.

use super::k_diffusion::{sigmas, KSampler, Method, Spacing};
use super::{Ddim, LinearSchedule};
use crate::{Error, Result};
use candle_core::Tensor;

/// Which sampler (`--sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// The reference's DDIM, eta 0, trailing timesteps.
    #[default]
    Ddim,
    /// Euler's method on the probability-flow ODE (k-diffusion `sample_euler`).
    Euler,
    /// Euler with fresh noise each step (k-diffusion `sample_euler_ancestral`, eta 1).
    EulerAncestral,
    /// DPM-Solver++(2M), second order multistep (k-diffusion `sample_dpmpp_2m`).
    DpmPp2m,
}

impl SamplerKind {
    /// Every sampler by its name.
    pub const ALL: &'static [(&'static str, SamplerKind)] = &[
        ("ddim", SamplerKind::Ddim),
        ("euler", SamplerKind::Euler),
        ("euler_ancestral", SamplerKind::EulerAncestral),
        ("dpmpp_2m", SamplerKind::DpmPp2m),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("ddim", |(n, _)| n)
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
        Self::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                Error::invalid("sampler", format!("'{s}' (expected {})", names.join(", ")))
            })
    }
}

/// How a run samples: the sampler, its sigma spacing and how much of the way from noise it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSettings {
    pub kind: SamplerKind,
    /// The sigma spacing of the k-diffusion samplers (DDIM keeps the reference's timesteps).
    pub spacing: Spacing,
    /// In (0, 1]: 1 starts from pure noise; below 1 starts from an input's latent noised to
    /// `strength` of the way (the last `floor(steps * strength)` steps run).
    pub strength: f64,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        Self {
            kind: SamplerKind::Ddim,
            spacing: Spacing::Default,
            strength: 1.0,
        }
    }
}

impl SamplerSettings {
    /// Checks the strength, and that a spacing other than the default comes with a sampler
    /// that uses it.
    pub fn validate(&self) -> Result<()> {
        if self.kind == SamplerKind::Ddim && self.spacing != Spacing::Default {
            return Err(Error::invalid(
                "schedule",
                format!(
                    "'{}' needs a k-diffusion sampler (euler, euler_ancestral, dpmpp_2m); \
                     ddim keeps the reference's timesteps",
                    self.spacing.name()
                ),
            ));
        }
        if !(self.strength > 0.0 && self.strength <= 1.0) {
            return Err(Error::invalid(
                "strength",
                format!("{} (expected more than 0, at most 1)", self.strength),
            ));
        }
        Ok(())
    }

    /// Whether sampling starts from an input's latent rather than from pure noise.
    pub fn from_image(&self) -> bool {
        self.strength < 1.0
    }
}

/// A sampler planned for one run.
pub trait Sampler {
    /// The steps the run makes (`first..last` of the plan's timesteps).
    fn steps(&self) -> std::ops::Range<usize>;
    /// The state sampling starts from: `noise`, or `source` (a clean latent) noised to the first
    /// step the strength leaves.
    fn start(&self, noise: &Tensor, source: Option<&Tensor>) -> Result<Tensor>;
    /// The timestep the model sees at step `i`.
    fn timestep(&self, i: usize) -> f32;
    /// The latent the model sees at step `i` for the state `x`.
    fn model_input(&self, i: usize, x: &Tensor) -> Result<Tensor>;
    /// One step from state `x` with the (guided) eps prediction.
    fn step(&mut self, i: usize, x: &Tensor, eps: &Tensor) -> Result<Tensor>;
    /// The clean latent of the final state.
    fn finish(&self, x: Tensor) -> Result<Tensor>;
}

/// The first of `steps` steps that `strength` leaves to run.
fn first_step(steps: usize, strength: f64) -> Result<usize> {
    if strength >= 1.0 {
        return Ok(0);
    }
    let run = (steps as f64 * strength).floor() as usize;
    if run == 0 {
        return Err(Error::invalid(
            "strength",
            format!("{strength} of {steps} steps leaves none to run (raise --strength or --steps)"),
        ));
    }
    Ok(steps - run)
}

/// The sampler `settings` name, planned for `steps` steps on `schedule`; a stochastic sampler
/// draws its noise from `seed`.
pub fn plan(
    settings: SamplerSettings,
    schedule: &LinearSchedule,
    steps: usize,
    seed: u64,
) -> Result<Box<dyn Sampler>> {
    settings.validate()?;
    let first = first_step(steps, settings.strength)?;
    let method = match settings.kind {
        SamplerKind::Ddim => {
            return Ok(Box::new(DdimSampler {
                plan: Ddim::new(schedule, steps)?,
                first,
            }))
        }
        SamplerKind::Euler => Method::Euler,
        SamplerKind::EulerAncestral => Method::EulerAncestral,
        SamplerKind::DpmPp2m => Method::DpmPp2m,
    };
    let sigmas = sigmas(schedule, steps, settings.spacing)?;
    Ok(Box::new(KSampler::new(
        method, schedule, sigmas, first, seed,
    )))
}

/// DDIM as the reference runs it.
struct DdimSampler {
    plan: Ddim,
    first: usize,
}

impl Sampler for DdimSampler {
    fn steps(&self) -> std::ops::Range<usize> {
        self.first..self.plan.steps()
    }

    fn start(&self, noise: &Tensor, source: Option<&Tensor>) -> Result<Tensor> {
        match (self.first, source) {
            (0, _) => Ok(noise.clone()),
            (k, Some(x0)) => {
                // The VP latent at step k: sqrt(1 - s^2) x0 + s noise, s the step's VP sigma.
                let s = self.plan.sigmas_vp()[k];
                Ok(((x0 * f64::from((1.0 - s * s).sqrt()))? + (noise * f64::from(s))?)?)
            }
            (_, None) => Err(Error::invalid(
                "strength",
                "below 1 needs an input image to start from",
            )),
        }
    }

    fn timestep(&self, i: usize) -> f32 {
        self.plan.model_timestep(i)
    }

    fn model_input(&self, _i: usize, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn step(&mut self, i: usize, x: &Tensor, eps: &Tensor) -> Result<Tensor> {
        self.plan.step(i, x, eps)
    }

    fn finish(&self, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Spacing;
    use candle_core::Device;

    #[test]
    fn strength_picks_the_last_steps_and_noises_the_source() {
        let schedule = LinearSchedule::official();
        assert_eq!(first_step(20, 1.0).unwrap(), 0);
        assert_eq!(first_step(20, 0.5).unwrap(), 10);
        assert_eq!(first_step(20, 0.26).unwrap(), 15);
        assert!(first_step(3, 0.2).is_err());
        let bad = SamplerSettings {
            strength: 0.0,
            ..Default::default()
        };
        assert!(plan(bad, &schedule, 10, 0).is_err());
        let dev = Device::Cpu;
        let noise = Tensor::new(&[1f32, -1.0], &dev).unwrap();
        let x0 = Tensor::new(&[0.5f32, 0.25], &dev).unwrap();
        let full = plan(SamplerSettings::default(), &schedule, 10, 0).unwrap();
        assert_eq!(full.steps(), 0..10);
        let start = full.start(&noise, Some(&x0)).unwrap();
        assert_eq!(
            start.to_vec1::<f32>().unwrap(),
            [1.0, -1.0],
            "strength 1 is pure noise"
        );
        let half = SamplerSettings {
            strength: 0.5,
            ..Default::default()
        };
        let sampler = plan(half, &schedule, 10, 0).unwrap();
        assert_eq!(sampler.steps(), 5..10);
        let start = sampler
            .start(&noise, Some(&x0))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let s = Ddim::new(&schedule, 10).unwrap().sigmas_vp()[5];
        let a = (1.0 - s * s).sqrt();
        assert!((start[0] - (0.5 * a + s)).abs() < 1e-6);
        assert!(sampler.start(&noise, None).is_err());
        assert_eq!("DDIM".parse::<SamplerKind>().unwrap(), SamplerKind::Ddim);
        assert!("plms".parse::<SamplerKind>().is_err());
    }

    /// Runs every step of `settings` from `noise` with a made-up eps model.
    fn sample(settings: SamplerSettings, seed: u64) -> Vec<f32> {
        let schedule = LinearSchedule::official();
        let dev = Device::Cpu;
        let noise = Tensor::new(&[0.8f32, -1.2, 0.1, 0.5], &dev).unwrap();
        let mut sampler = plan(settings, &schedule, 6, seed).unwrap();
        let mut x = sampler.start(&noise, None).unwrap();
        for i in sampler.steps() {
            let input = sampler.model_input(i, &x).unwrap();
            let t = f64::from(sampler.timestep(i)) / 1000.0;
            let eps = ((input.sin().unwrap() * 0.9).unwrap() + t).unwrap();
            x = sampler.step(i, &x, &eps).unwrap();
        }
        sampler.finish(x).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn every_sampler_is_deterministic_per_seed_and_only_ancestral_draws_noise() {
        for (name, kind) in SamplerKind::ALL {
            for spacing in [Spacing::Default, Spacing::Karras] {
                let settings = SamplerSettings {
                    kind: *kind,
                    spacing,
                    strength: 1.0,
                };
                if *kind == SamplerKind::Ddim && spacing == Spacing::Karras {
                    assert!(settings.validate().is_err(), "ddim keeps its timesteps");
                    continue;
                }
                let a = sample(settings, 7);
                assert!(a.iter().all(|v| v.is_finite()), "{name}");
                assert_eq!(a, sample(settings, 7), "{name} {spacing:?}");
                let other_seed = sample(settings, 8);
                assert_eq!(
                    a != other_seed,
                    *kind == SamplerKind::EulerAncestral,
                    "{name} {spacing:?}"
                );
            }
        }
    }
}
