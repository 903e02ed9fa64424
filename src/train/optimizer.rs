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

/// The constants of one update, as torch computes them in f64; each element's update uses them
/// rounded to f32, as candle's scalar ops do.
#[derive(Debug, Clone, Copy)]
struct Update {
    /// `1 - lr * weight_decay`.
    decay: f64,
    /// `1 - beta1`, torch's lerp weight.
    keep1: f64,
    beta2: f64,
    /// `1 - beta2`.
    keep2: f64,
    /// `1 / sqrt(1 - beta2^t)`.
    inv_bias_correction2_sqrt: f64,
    eps: f64,
    /// `lr / (1 - beta1^t)`.
    step_size: f64,
}

impl Update {
    /// One element: the parameter, its moments and gradient in; the new three out, with
    /// candle's ops in the composed path's order (so both give the same bits).
    #[inline(always)]
    fn element(&self, p: f32, m: f32, v: f32, g: f32) -> (f32, f32, f32) {
        let f = |x: f64| x as f32;
        let decayed = p * f(self.decay);
        // torch's lerp with weight < 0.5: m + w * (g - m).
        let m = m + (g - m) * f(self.keep1);
        let v = v * f(self.beta2) + (g * g) * f(self.keep2);
        let denom = v.sqrt() * f(self.inv_bias_correction2_sqrt) + f(self.eps);
        (decayed - (m / denom) * f(self.step_size), m, v)
    }
}

/// The update through candle's ops (any device, any dtype): the moments' new values; the
/// parameter is set in place.
fn composed_update(var: &Var, g: &Tensor, state: &Moments, u: Update) -> Result<(Tensor, Tensor)> {
    let p = var.as_tensor();
    let decayed = (p.detach() * u.decay)?;
    let m = (&state.m + ((g - &state.m)? * u.keep1)?)?;
    let v = ((&state.v * u.beta2)? + (g.sqr()? * u.keep2)?)?;
    let denom = ((v.sqrt()? * u.inv_bias_correction2_sqrt)? + u.eps)?;
    let next = (decayed - ((&m / &denom)? * u.step_size)?)?;
    var.set(&next)?;
    Ok((m, v))
}

/// The update of an f32 parameter on the CPU in one parallel pass: the parameter in place (as
/// `Var::set` writes it), the moments into new tensors (a checkpoint being written may hold the
/// old ones). The composed path makes thirteen passes over each parameter, each on one thread
/// into a new allocation.
mod fused {
    use super::{Moments, Update};
    use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Storage, Tensor};
    use rayon::prelude::*;
    use std::sync::Mutex;

    /// Elements per task.
    const CHUNK: usize = 1 << 16;

    /// Whether the parameter, its gradient and moments (none before the first step) are f32 on
    /// the CPU, contiguous.
    pub fn applies(p: &Tensor, g: &Tensor, state: Option<&Moments>) -> bool {
        let ok = |t: &Tensor| {
            matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && t.is_contiguous()
        };
        ok(p)
            && ok(g)
            && g.shape() == p.shape()
            && state.is_none_or(|s| ok(&s.m) && ok(&s.v) && s.m.shape() == p.shape())
    }

    /// The in-place op on the parameter; the gradient and the moments are read beside it.
    struct Step<'a> {
        grad: &'a [f32],
        /// The moments, `None` before the first step (zeros).
        moments: Option<(&'a [f32], &'a [f32])>,
        update: Update,
        new_moments: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
    }

    impl InplaceOp1 for Step<'_> {
        fn name(&self) -> &'static str {
            "adamw-step"
        }

        fn cpu_fwd(&self, p: &mut CpuStorage, lp: &Layout) -> candle_core::Result<()> {
            let CpuStorage::F32(p) = p else {
                candle_core::bail!("adamw-step takes f32")
            };
            let Some((a, b)) = lp.contiguous_offsets() else {
                candle_core::bail!("adamw-step takes contiguous tensors")
            };
            let p = &mut p[a..b];
            let n = p.len();
            let sizes_fit = self.grad.len() == n
                && self
                    .moments
                    .is_none_or(|(m, v)| m.len() == n && v.len() == n);
            if !sizes_fit {
                candle_core::bail!("adamw-step: parameter, moments and gradient differ in size")
            }
            // The new moments are written once, not zeroed first: a pass over 2n values less.
            let (mut m_out, mut v_out) = (Vec::with_capacity(n), Vec::with_capacity(n));
            p.par_chunks_mut(CHUNK)
                .zip(m_out.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
                .zip(v_out.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(i, ((p, m_new), v_new))| {
                    let at = i * CHUNK;
                    for j in 0..p.len() {
                        let k = at + j;
                        let (m, v) = self.moments.map_or((0.0, 0.0), |(m, v)| (m[k], v[k]));
                        let (pn, mn, vn) = self.update.element(p[j], m, v, self.grad[k]);
                        p[j] = pn;
                        m_new[j].write(mn);
                        v_new[j].write(vn);
                    }
                });
            // SAFETY: the chunks cover 0..n of both (the same CHUNK over n elements as `p`),
            // and every element of every chunk was written just above.
            unsafe {
                m_out.set_len(n);
                v_out.set_len(n);
            }
            let mut out = self
                .new_moments
                .lock()
                .map_err(|_| candle_core::Error::Msg("adamw-step: poisoned".into()))?;
            *out = Some((m_out, v_out));
            Ok(())
        }
    }

    /// The contiguous f32 values of a CPU storage.
    fn values<'a>(s: &'a Storage, l: &Layout) -> candle_core::Result<&'a [f32]> {
        match (s, l.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b]),
            _ => candle_core::bail!("adamw-step takes contiguous f32 tensors on the CPU"),
        }
    }

    /// Updates `p` in place; returns the new moments.
    pub fn update(
        p: &Tensor,
        g: &Tensor,
        state: Option<&Moments>,
        update: Update,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (gs, gl) = g.storage_and_layout();
        let locked = state.map(|s| (s.m.storage_and_layout(), s.v.storage_and_layout()));
        let moments = match &locked {
            Some(((ms, ml), (vs, vl))) => Some((values(ms, ml)?, values(vs, vl)?)),
            None => None,
        };
        let step = Step {
            grad: values(&gs, gl)?,
            moments,
            update,
            new_moments: Mutex::new(None),
        };
        p.inplace_op1(&step)?;
        let Some((m, v)) = step.new_moments.into_inner().ok().flatten() else {
            candle_core::bail!("adamw-step produced no moments")
        };
        Ok((
            Tensor::from_vec(m, p.shape(), &Device::Cpu)?,
            Tensor::from_vec(v, p.shape(), &Device::Cpu)?,
        ))
    }
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
            let state = self.moments.remove(name);
            let update = Update {
                decay: 1.0 - lr * weight_decay,
                keep1: 1.0 - beta1,
                beta2,
                keep2: 1.0 - beta2,
                inv_bias_correction2_sqrt: 1.0 / bias_correction2_sqrt,
                eps,
                step_size,
            };
            let (m, v) = if fused::applies(p, &g, state.as_ref()) {
                fused::update(p, &g, state.as_ref(), update)?
            } else {
                // Moments start at zero (torch's first step).
                let state = match state {
                    Some(s) => s,
                    None => Moments {
                        m: p.zeros_like()?,
                        v: p.zeros_like()?,
                    },
                };
                composed_update(var, &g, &state, update)?
            };
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
    fn the_fused_update_equals_the_composed_one() {
        let dev = Device::Cpu;
        let n = 200_003; // several tasks and a tail
        let wave = |a: f64, b: f64| {
            Tensor::arange(0f32, n as f32, &dev)
                .unwrap()
                .affine(a, b)
                .unwrap()
                .sin()
                .unwrap()
        };
        let (p, g) = (wave(0.001, 0.2), wave(0.37, 1.0));
        let state = Moments {
            m: (wave(0.01, 0.0) * 0.1).unwrap(),
            v: (wave(0.02, 0.5).sqr().unwrap() * 0.01).unwrap(),
        };
        let update = Update {
            decay: 1.0 - 0.1 * 0.01,
            keep1: 0.1,
            beta2: 0.999,
            keep2: 0.001,
            inv_bias_correction2_sqrt: 1.0 / (1.0f64 - 0.999f64.powi(3)).sqrt(),
            eps: 1e-8,
            step_size: 0.1 / (1.0 - 0.9f64.powi(3)),
        };
        let fused_p = Var::from_tensor(&p).unwrap();
        assert!(fused::applies(fused_p.as_tensor(), &g, Some(&state)));
        let (fm, fv) = fused::update(fused_p.as_tensor(), &g, Some(&state), update).unwrap();
        let composed_p = Var::from_tensor(&p).unwrap();
        let (cm, cv) = composed_update(&composed_p, &g, &state, update).unwrap();
        let values = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        assert_eq!(values(fused_p.as_tensor()), values(composed_p.as_tensor()));
        assert_eq!(values(&fm), values(&cm));
        assert_eq!(values(&fv), values(&cv));
        // The old moments are left as they were.
        assert_eq!(values(&state.m), values(&(wave(0.01, 0.0) * 0.1).unwrap()));
        // The first step: no moments yet, as zeros.
        let zeros = Moments {
            m: p.zeros_like().unwrap(),
            v: p.zeros_like().unwrap(),
        };
        let (fused_p, composed_p) = (Var::from_tensor(&p).unwrap(), Var::from_tensor(&p).unwrap());
        let (fm, fv) = fused::update(fused_p.as_tensor(), &g, None, update).unwrap();
        let (cm, cv) = composed_update(&composed_p, &g, &zeros, update).unwrap();
        assert_eq!(values(fused_p.as_tensor()), values(composed_p.as_tensor()));
        assert_eq!((values(&fm), values(&fv)), (values(&cm), values(&cv)));
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
