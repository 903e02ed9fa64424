//! LoRA adapters on the DiT's linear layers: a target weight `W [out, in]` is used as
//! `W + (alpha / r) * B A` with `A [r, in]` (uniform in `±1/sqrt(in)`, peft's kaiming default)
//! and `B [out, r]` (zeros, so training starts from the pretrained model). Only `A` and `B`
//! train. Adapters are named as peft does (`MODULE.lora_A.weight`, `MODULE.lora_B.weight`) and
//! `merge` folds them into the base weights for a plain DiT checkpoint (`ace train merge-lora`).

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Which modules get adapters and their size (`SOLVER.TUNER`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// A module gets an adapter when its name equals a target or ends with `.TARGET`:
    /// `attn.q` matches `blocks.3.attn.q` (not `blocks.3.cross_attn.q`), `q` matches both.
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// `alpha / rank`, the factor of `B A`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    fn matches(&self, module: &str) -> bool {
        self.targets.iter().any(|t| {
            module == t
                || module
                    .strip_suffix(t.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }
}

/// Name of the A matrix of `module`.
pub fn a_name(module: &str) -> String {
    format!("{module}.lora_A.weight")
}

/// Name of the B matrix of `module`.
pub fn b_name(module: &str) -> String {
    format!("{module}.lora_B.weight")
}

/// The adapted modules: `module -> (A, B)`.
#[derive(Debug, Clone)]
pub struct Adapters {
    spec: LoraSpec,
    modules: BTreeMap<String, (Var, Var)>,
}

impl Adapters {
    /// New adapters for every 2-D `MODULE.weight` of `base` that the spec targets.
    pub fn new(
        spec: &LoraSpec,
        base: &BTreeMap<String, Tensor>,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<Self> {
        if spec.rank == 0 || spec.targets.is_empty() {
            return Err(Error::invalid(
                "LoRA tuner",
                "R must be positive and TARGET_MODULES must name at least one module",
            ));
        }
        let mut modules = BTreeMap::new();
        for (name, w) in base {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            if w.rank() != 2 || !spec.matches(module) {
                continue;
            }
            let (out, inp) = w.dims2()?;
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..spec.rank * inp)
                .map(|_| rng.gen_range(-bound..bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (spec.rank, inp), device)?)?;
            let b = Var::zeros((out, spec.rank), DType::F32, device)?;
            modules.insert(module.to_string(), (a, b));
        }
        if modules.is_empty() {
            return Err(Error::invalid(
                "LoRA TARGET_MODULES",
                format!(
                    "{:?} match no linear layer of the DiT (e.g. attn.q, cross_attn.k, mlp.fc1)",
                    spec.targets
                ),
            ));
        }
        Ok(Self {
            spec: spec.clone(),
            modules,
        })
    }

    pub fn spec(&self) -> &LoraSpec {
        &self.spec
    }

    /// The trainable matrices by name.
    pub fn vars(&self) -> BTreeMap<String, Var> {
        let mut out = BTreeMap::new();
        for (module, (a, b)) in &self.modules {
            out.insert(a_name(module), a.clone());
            out.insert(b_name(module), b.clone());
        }
        out
    }

    /// The weight a layer sees: `base + scale * B A` for an adapted `MODULE.weight`, else
    /// `base` itself.
    pub fn effective(&self, name: &str, base: &Tensor) -> Result<Tensor> {
        let adapter = name
            .strip_suffix(".weight")
            .and_then(|m| self.modules.get(m));
        match adapter {
            Some((a, b)) => Ok((b.as_tensor().matmul(a.as_tensor())? * self.spec.scale())?
                .to_dtype(base.dtype())?
                .add(base)?),
            None => Ok(base.clone()),
        }
    }
}

/// Folds saved adapters (`MODULE.lora_A.weight` / `lora_B`) into `base` with factor `scale`
/// ([`crate::model::lora`]); `source` names the adapter file in errors. Returns how many
/// modules were merged.
pub fn merge(
    base: &mut BTreeMap<String, Tensor>,
    adapters: &BTreeMap<String, Tensor>,
    scale: f64,
    source: &str,
) -> Result<usize> {
    let lora = crate::model::lora::LoraFile::from_tensors(
        adapters.clone().into_iter().collect(),
        Some(scale),
        std::path::Path::new(source),
    )?;
    let mut weights: crate::model::checkpoint::Tensors = std::mem::take(base).into_iter().collect();
    let merged = lora.apply(&mut weights, 1.0);
    *base = weights.into_iter().collect();
    merged
}

/// Merges the adapters of a LoRA training checkpoint (its live weights, or with `use_ema` its
/// EMA) into a DiT checkpoint (`base`, by default the one training started from) and writes the
/// whole merged DiT to `output` (safetensors, ACE names). Returns the number of merged modules.
pub fn merge_checkpoint(
    checkpoint: &std::path::Path,
    base: Option<&std::path::Path>,
    use_ema: bool,
    output: &std::path::Path,
) -> Result<usize> {
    let device = Device::Cpu;
    let ck = super::checkpointing::load(checkpoint, &device)?;
    let source = checkpoint.display().to_string();
    let info = ck.state.lora.as_ref().ok_or_else(|| {
        Error::invalid(
            "merge-lora",
            format!("{source}: not a LoRA checkpoint (no TUNER)"),
        )
    })?;
    let adapters = if use_ema {
        ck.ema.as_ref().ok_or_else(|| {
            Error::invalid(
                "merge-lora",
                format!("{source}: has no EMA weights (USE_EMA was off)"),
            )
        })?
    } else {
        &ck.weights
    };
    let base_path = base
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| ck.state.base_model.clone());
    let mut weights: BTreeMap<String, Tensor> =
        crate::model::checkpoint::load(&base_path, &device)?
            .into_iter()
            .collect();
    let scale = info.alpha / info.rank as f64;
    let merged = merge(&mut weights, adapters, scale, &source)?;
    super::checkpointing::save_tensors_atomic(&weights, output)?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn base() -> BTreeMap<String, Tensor> {
        let dev = Device::Cpu;
        BTreeMap::from([
            (
                "blocks.0.attn.q.weight".to_string(),
                Tensor::ones((3, 2), DType::F32, &dev).unwrap(),
            ),
            (
                "blocks.0.attn.q.bias".to_string(),
                Tensor::ones(3, DType::F32, &dev).unwrap(),
            ),
            (
                "blocks.0.cross_attn.q.weight".to_string(),
                Tensor::ones((3, 2), DType::F32, &dev).unwrap(),
            ),
            (
                "x_embedder.proj.weight".to_string(),
                Tensor::ones((3, 5, 2, 2), DType::F32, &dev).unwrap(),
            ),
        ])
    }

    fn spec(targets: &[&str]) -> LoraSpec {
        LoraSpec {
            rank: 2,
            alpha: 4.0,
            targets: targets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn targets_match_whole_name_parts() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let ad = Adapters::new(&spec(&["attn.q"]), &base(), &mut rng, &Device::Cpu).unwrap();
        let names: Vec<String> = ad.vars().into_keys().collect();
        // `attn.q` matches `blocks.0.attn.q` but not `cross_attn.q` (not after a dot).
        assert_eq!(
            names,
            [
                "blocks.0.attn.q.lora_A.weight",
                "blocks.0.attn.q.lora_B.weight"
            ]
        );
        assert!(Adapters::new(&spec(&["nothing"]), &base(), &mut rng, &Device::Cpu).is_err());
    }

    #[test]
    fn effective_weight_starts_at_base_and_merge_adds_scaled_product() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let b = base();
        let ad = Adapters::new(&spec(&["q"]), &b, &mut rng, &Device::Cpu).unwrap();
        let name = "blocks.0.attn.q.weight";
        let w = ad.effective(name, &b[name]).unwrap();
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            b[name].to_vec2::<f32>().unwrap()
        );

        let dev = Device::Cpu;
        let saved = BTreeMap::from([
            (
                "blocks.0.attn.q.lora_A.weight".to_string(),
                Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap(),
            ),
            (
                "blocks.0.attn.q.lora_B.weight".to_string(),
                Tensor::new(&[[1f32, 0.0], [0.0, 0.0], [0.0, 2.0]], &dev).unwrap(),
            ),
        ]);
        let mut merged = base();
        assert_eq!(merge(&mut merged, &saved, 2.0, "t").unwrap(), 1);
        assert_eq!(
            merged[name].to_vec2::<f32>().unwrap(),
            [[3.0, 1.0], [1.0, 1.0], [1.0, 5.0]]
        );
    }
}
