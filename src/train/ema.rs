//! Exponential moving average of the trained weights (`USE_EMA`): after every optimizer update
//! `ema = decay * ema + (1 - decay) * w`. The averaged weights are what a finished run usually
//! ships; they are kept beside the live ones and saved in every checkpoint.

use crate::{Error, Result};
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;

/// The averaged copy of a set of named weights.
#[derive(Debug, Clone)]
pub struct Ema {
    decay: f64,
    weights: BTreeMap<String, Tensor>,
}

impl Ema {
    /// Starts the average at the current weights.
    pub fn new(decay: f64, vars: &BTreeMap<String, Var>) -> Result<Self> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::invalid(
                "EMA_DECAY",
                format!("{decay} (must be in [0, 1])"),
            ));
        }
        let weights = vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self { decay, weights })
    }

    /// Moves the average towards the current weights.
    pub fn update(&mut self, vars: &BTreeMap<String, Var>) -> Result<()> {
        for (name, var) in vars {
            let Some(avg) = self.weights.get_mut(name) else {
                continue;
            };
            *avg = ((&*avg * self.decay)? + (var.as_tensor().detach() * (1.0 - self.decay))?)?;
        }
        Ok(())
    }

    pub fn weights(&self) -> &BTreeMap<String, Tensor> {
        &self.weights
    }

    /// Replaces the averages by saved ones; every averaged weight must be present.
    pub fn load(&mut self, saved: &BTreeMap<String, Tensor>, source: &str) -> Result<()> {
        for (name, avg) in self.weights.iter_mut() {
            let t = saved.get(name).ok_or_else(|| {
                Error::invalid("EMA weights", format!("{source}: {name} is missing"))
            })?;
            if t.dims() != avg.dims() {
                return Err(Error::Shape {
                    name: format!("EMA {name} in {source}"),
                    expected: avg.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            *avg = t.to_dtype(avg.dtype())?.to_device(avg.device())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn average_moves_by_one_minus_decay() {
        let var = Var::new(&[0.0f32, 10.0], &Device::Cpu).unwrap();
        let vars = BTreeMap::from([("w".to_string(), var.clone())]);
        let mut ema = Ema::new(0.9, &vars).unwrap();
        var.set(&Tensor::new(&[1.0f32, 0.0], &Device::Cpu).unwrap())
            .unwrap();
        ema.update(&vars).unwrap();
        let got: Vec<f32> = ema.weights()["w"].to_vec1().unwrap();
        assert!(
            (got[0] - 0.1).abs() < 1e-6 && (got[1] - 9.0).abs() < 1e-5,
            "{got:?}"
        );
        assert!(Ema::new(1.5, &vars).is_err());
    }
}
