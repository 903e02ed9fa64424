//! AdamW exactly as `torch.optim.AdamW` computes it (single-tensor path): decoupled weight decay
//! `p *= 1 - lr*wd` first, then `m = lerp(m, g, 1-beta1)`, `v = beta2*v + (1-beta2)*g^2`,
//! `p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)`. candle-nn's AdamW computes the
//! same update but keeps its moments private; training needs them in checkpoints (resume must
//! continue the same loss curve), so the state lives here, by parameter name. Also the global
//! gradient-norm clipping of `torch.nn.utils.clip_grad_norm_`.

use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use std::collections::BTreeMap;

/// AdamW hyper-parameters (`SOLVER.OPTIMIZER`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter.
#[derive(Debug, Clone)]
struct Moments {
    m: Tensor,
    v: Tensor,
}

/// The optimizer and its state.
#[derive(Debug, Clone)]
pub struct AdamW {
    params: AdamWParams,
    /// Number of updates done (torch's `step` state).
    step: u64,
    moments: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(params: AdamWParams) -> Result<Self> {
        let ok = params.lr >= 0.0
            && (0.0..1.0).contains(&params.beta1)
            && (0.0..1.0).contains(&params.beta2)
            && params.eps >= 0.0
            && params.weight_decay >= 0.0;
        if !ok {
            return Err(Error::invalid(
                "AdamW parameters",
                format!("{params:?} (need lr, eps, weight decay >= 0 and betas in [0, 1))"),
            ));
        }
        Ok(Self {
            params,
            step: 0,
            moments: BTreeMap::new(),
        })
    }

    pub fn params(&self) -> AdamWParams {
        self.params
    }

    /// Changes the hyper-parameters, keeping the moments (a new training stage).
    pub fn set_params(&mut self, params: AdamWParams) {
        self.params = params;
    }

    /// Number of updates done so far.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// One update of every parameter that has a gradient in `grads` (by name; detached, as
    /// [`super::weights::DitWeights::gradients`] gives them).
    pub fn step(
        &mut self,
        vars: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
    ) -> Result<()> {
        self.step += 1;
        let AdamWParams {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let t = self.step as i32;
        let step_size = lr / (1.0 - beta1.powi(t));
        let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for (name, var) in vars {
            let Some(g) = grads.get(name) else { continue };
            let p = var.as_tensor();
            let g = g.to_dtype(p.dtype())?;
            let state = match self.moments.remove(name) {
                Some(s) => s,
                None => Moments {
                    m: p.zeros_like()?,
                    v: p.zeros_like()?,
                },
            };
            let decayed = (p.detach() * (1.0 - lr * weight_decay))?;
            // torch's lerp with weight < 0.5: m + w * (g - m).
            let m = (&state.m + ((&g - &state.m)? * (1.0 - beta1))?)?;
            let v = ((&state.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((v.sqrt()? / bias_correction2_sqrt)? + eps)?;
            let next = (decayed - ((&m / &denom)? * step_size)?)?;
            var.set(&next)?;
            self.moments.insert(name.clone(), Moments { m, v });
        }
        Ok(())
    }

    /// The state as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) and the step count.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut out = BTreeMap::new();
        for (name, s) in &self.moments {
            out.insert(format!("exp_avg.{name}"), s.m.clone());
            out.insert(format!("exp_avg_sq.{name}"), s.v.clone());
        }
        (out, self.step)
    }

    /// Restores a state written by [`AdamW::state`]; `source` names it in errors.
    pub fn load_state(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        step: u64,
        source: &str,
    ) -> Result<()> {
        let mut moments = BTreeMap::new();
        for (key, m) in tensors {
            let Some(name) = key.strip_prefix("exp_avg.") else {
                continue;
            };
            let v = tensors.get(&format!("exp_avg_sq.{name}")).ok_or_else(|| {
                Error::invalid(
                    "optimizer state",
                    format!("{source}: exp_avg_sq.{name} is missing"),
                )
            })?;
            moments.insert(
                name.to_string(),
                Moments {
                    m: m.clone(),
                    v: v.clone(),
                },
            );
        }
        self.moments = moments;
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of the gradients (computed in float32, summed in float64).
pub fn grad_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.values() {
        total += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    Ok(total.sqrt())
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`, as
/// `clip_grad_norm_` (factor `max_norm / (norm + 1e-6)`, only when below 1). Returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads)?;
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        for g in grads.values_mut() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn params() -> AdamWParams {
        AdamWParams {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }

    #[test]
    fn two_steps_match_hand_computed_torch_adamw() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let vars = BTreeMap::from([("w".to_string(), var.clone())]);
        let mut opt = AdamW::new(params()).unwrap();
        let g = Tensor::new(&[0.5f32, -1.0], &Device::Cpu).unwrap();
        let grads = BTreeMap::from([("w".to_string(), g)]);
        opt.step(&vars, &grads).unwrap();
        // Step 1: m_hat = g, v_hat = g^2, so the update is lr * sign(g) (up to eps).
        let p1: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        let want1 = [1.0 * (1.0 - 0.001) - 0.1, -2.0 * (1.0 - 0.001) + 0.1];
        for (a, b) in p1.iter().zip(want1) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{p1:?}");
        }
        opt.step(&vars, &grads).unwrap();
        // Step 2 with the same gradient: m = g (0.1 + 0.09 = 0.19 of g, / 0.19), v likewise.
        let p2: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        let want2 = [want1[0] * 0.999 - 0.1, want1[1] * 0.999 + 0.1];
        for (a, b) in p2.iter().zip(want2) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{p2:?}");
        }
        assert_eq!(opt.steps_done(), 2);
    }

    #[test]
    fn state_round_trips() {
        let var = Var::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let vars = BTreeMap::from([("w".to_string(), var.clone())]);
        let grads = BTreeMap::from([(
            "w".to_string(),
            Tensor::new(&[0.3f32, -0.1, 0.7], &Device::Cpu).unwrap(),
        )]);
        let mut a = AdamW::new(params()).unwrap();
        a.step(&vars, &grads).unwrap();
        let (state, step) = a.state();
        let mut b = AdamW::new(params()).unwrap();
        b.load_state(&state, step, "test").unwrap();
        let twin = Var::new(
            var.as_tensor().to_vec1::<f32>().unwrap().as_slice(),
            &Device::Cpu,
        )
        .unwrap();
        let twin_vars = BTreeMap::from([("w".to_string(), twin.clone())]);
        a.step(&vars, &grads).unwrap();
        b.step(&twin_vars, &grads).unwrap();
        assert_eq!(
            var.as_tensor().to_vec1::<f32>().unwrap(),
            twin.as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut grads = BTreeMap::from([
            (
                "a".to_string(),
                Tensor::new(&[3.0f32], &Device::Cpu).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::new(&[4.0f32], &Device::Cpu).unwrap(),
            ),
        ]);
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let a = grads["a"].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5, "{a}");
        // Below the limit nothing changes.
        let norm = clip_grad_norm(&mut grads, 10.0).unwrap();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!((grads["b"].to_vec1::<f32>().unwrap()[0] - 0.8).abs() < 1e-5);
    }
}
