//! LoRA adapters applied to the DiT when it is loaded: each adapted linear weight becomes
//! `W + factor * scale * B A` in memory, the files untouched. Adapters come in the layouts
//! people have: an `ace train` LoRA checkpoint (its folder, with `state.json` giving rank and
//! alpha, or its `lora.safetensors`), a PEFT adapter (`adapter_config.json` with `r` and
//! `lora_alpha`, and `adapter_model.safetensors` or `.bin`, keys under `base_model.model.`),
//! scepter's swift adapters (`MODULE.lora_A.ADAPTER.weight`, maybe under `model.`), and bare
//! files with kohya's `lora_down`/`lora_up` and per-module `alpha`. Module names are matched
//! against the DiT's after dropping the prefixes those layouts add; an adapter for a module
//! the model does not have is an error naming it.

use crate::model::checkpoint::{self, Tensors};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Prefixes the layouts put before the DiT's module names.
const PREFIXES: [&str; 4] = ["base_model.model.", "model.", "diffusion_model.", "module."];

/// One adapted module: `A [r, in]`, `B [out, r]`, and its own `alpha` when the file gives one.
#[derive(Debug, Clone)]
struct Pair {
    a: Option<Tensor>,
    b: Option<Tensor>,
    alpha: Option<f64>,
}

/// The adapters of one file or folder.
#[derive(Debug, Clone)]
pub struct LoraFile {
    source: PathBuf,
    /// `alpha / r` from the adapter's config, when it has one.
    scale: Option<f64>,
    modules: BTreeMap<String, Pair>,
}

/// The part of a tensor name after its module: A, B or alpha.
enum Part {
    A,
    B,
    Alpha,
}

/// Splits `MODULE.lora_A[.ADAPTER].weight` (and `lora_B`, kohya's `lora_down`/`lora_up`,
/// `MODULE.alpha`) into the module and the part.
fn split(name: &str) -> Option<(&str, Part)> {
    if let Some(module) = name.strip_suffix(".alpha") {
        return Some((module, Part::Alpha));
    }
    let head = name.strip_suffix(".weight")?;
    for (marker, part) in [
        (".lora_A", Part::A),
        (".lora_B", Part::B),
        (".lora_down", Part::A),
        (".lora_up", Part::B),
    ] {
        if let Some(at) = head.rfind(marker) {
            let rest = &head[at + marker.len()..];
            // Nothing after the marker, or one adapter name (`.default`, `.0_SwiftLoRA`).
            if rest.is_empty() || (rest.starts_with('.') && !rest[1..].contains('.')) {
                return Some((&head[..at], part));
            }
        }
    }
    None
}

/// `alpha / r` of a PEFT or swift `adapter_config.json`, or of an `ace train` `state.json`.
fn config_scale(dir: &Path) -> Result<Option<f64>> {
    let read = |p: &Path| -> Result<Option<serde_json::Value>> {
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Model {
                path: p.to_path_buf(),
                message: format!("not JSON: {e}"),
            })
    };
    let ratio = |alpha: Option<f64>, r: Option<f64>| match (alpha, r) {
        (Some(a), Some(r)) if r > 0.0 => Some(a / r),
        _ => None,
    };
    if let Some(c) = read(&dir.join("adapter_config.json"))? {
        let num = |k: &str| c.get(k).and_then(serde_json::Value::as_f64);
        return Ok(ratio(num("lora_alpha").or(num("alpha")), num("r")));
    }
    if let Some(s) = read(&dir.join("state.json"))? {
        let lora = s.get("lora");
        let num = |k: &str| {
            lora.and_then(|l| l.get(k))
                .and_then(serde_json::Value::as_f64)
        };
        return Ok(ratio(num("alpha"), num("rank")));
    }
    Ok(None)
}

/// The weight file of an adapter folder: `ace train`'s, PEFT's, or the one weight file in it
/// or in its one subfolder (swift keeps each adapter in a folder of its name).
fn weights_in(dir: &Path) -> Result<PathBuf> {
    for name in [
        "lora.safetensors",
        "adapter_model.safetensors",
        "adapter_model.bin",
    ] {
        if dir.join(name).is_file() {
            return Ok(dir.join(name));
        }
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let subfolders: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    if let [one] = subfolders.as_slice() {
        if let Ok(found) = weights_in(one) {
            return Ok(found);
        }
    }
    checkpoint::weight_files(dir)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Model {
            path: dir.to_path_buf(),
            message: "holds no adapter weights".into(),
        })
}

/// A LoRA adapter and the factor it is applied with, as users write it: `FILE[:SCALE]` (the
/// scale 1 when left out).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f64,
}

impl std::str::FromStr for LoraSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some((path, scale)) = s.rsplit_once(':') {
            if let Ok(scale) = scale.parse::<f64>() {
                if !scale.is_finite() {
                    return Err(format!("{s}: the scale must be a finite number"));
                }
                return Ok(LoraSpec {
                    path: path.into(),
                    scale,
                });
            }
        }
        Ok(LoraSpec {
            path: s.into(),
            scale: 1.0,
        })
    }
}

impl LoraSpec {
    /// The adapters as the model takes them ([`crate::pipeline::Loras`]).
    pub fn list(specs: &[LoraSpec]) -> Vec<(PathBuf, f64)> {
        specs.iter().map(|l| (l.path.clone(), l.scale)).collect()
    }
}

impl LoraFile {
    /// Reads the adapters at `path` (a file, or a folder of one of the layouts).
    pub fn open(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            weights_in(path)?
        } else {
            path.to_path_buf()
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let tensors = checkpoint::load(&file, &Device::Cpu)?;
        Self::from_tensors(tensors, config_scale(dir)?, &file)
    }

    /// Adapters from named tensors; `scale` is the file's `alpha / r`, `source` names it.
    pub fn from_tensors(tensors: Tensors, scale: Option<f64>, source: &Path) -> Result<Self> {
        let mut modules: BTreeMap<String, Pair> = BTreeMap::new();
        for (name, t) in tensors {
            let Some((module, part)) = split(&name) else {
                continue;
            };
            let pair = modules.entry(module.to_string()).or_insert(Pair {
                a: None,
                b: None,
                alpha: None,
            });
            match part {
                Part::A => pair.a = Some(t),
                Part::B => pair.b = Some(t),
                Part::Alpha => {
                    pair.alpha = Some(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?))
                }
            }
        }
        let bad = |message: String| Error::Model {
            path: source.to_path_buf(),
            message,
        };
        if let Some((m, _)) = modules.iter().find(|(_, p)| p.a.is_none() || p.b.is_none()) {
            return Err(bad(format!("LoRA module {m} lacks its A or B matrix")));
        }
        if modules.is_empty() {
            return Err(bad(
                "holds no LoRA adapters (*.lora_A / *.lora_B weights)".into()
            ));
        }
        Ok(Self {
            source: source.to_path_buf(),
            scale,
            modules,
        })
    }

    /// The file the adapters came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// How many modules it adapts.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Folds the adapters into `base` (DiT weights in ACE names) times `factor`. Every adapted
    /// module must be one of the DiT's; the error names those that are not.
    pub fn apply(&self, base: &mut Tensors, factor: f64) -> Result<usize> {
        let mut missing = Vec::new();
        let mut targets = Vec::new();
        for (module, pair) in &self.modules {
            let mut name = module.as_str();
            let found = loop {
                if base.contains_key(&format!("{name}.weight")) {
                    break Some(name);
                }
                match PREFIXES.iter().find_map(|p| name.strip_prefix(p)) {
                    Some(shorter) => name = shorter,
                    None => break None,
                }
            };
            match found {
                Some(target) => targets.push((target.to_string(), pair)),
                None => missing.push(module.clone()),
            }
        }
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
            let more = missing.len().saturating_sub(shown.len());
            return Err(Error::Model {
                path: self.source.clone(),
                message: format!(
                    "adapts modules the DiT does not have: {}{}",
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            });
        }
        for (target, pair) in &targets {
            let (a, b) = (
                pair.a.as_ref().expect("checked when read"),
                pair.b.as_ref().expect("checked when read"),
            );
            let rank = a.dim(0)? as f64;
            let scale = pair.alpha.map(|al| al / rank).or(self.scale).unwrap_or(1.0);
            let key = format!("{target}.weight");
            let w = &base[&key];
            let delta =
                (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * (scale * factor))?;
            if delta.dims() != w.dims() {
                return Err(Error::Shape {
                    name: format!("LoRA B A of {target} in {}", self.source.display()),
                    expected: w.dims().to_vec(),
                    found: delta.dims().to_vec(),
                });
            }
            let merged = (w.to_dtype(DType::F32)? + delta.to_device(w.device())?)?;
            base.insert(key, merged.to_dtype(w.dtype())?);
        }
        Ok(targets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn base() -> Tensors {
        Tensors::from([
            ("blocks.0.attn.q.weight".to_string(), t(&[1.0; 6], (3, 2))),
            (
                "blocks.0.attn.q.bias".to_string(),
                Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
            ),
        ])
    }

    fn pair(prefix: &str, suffix_a: &str, suffix_b: &str) -> Tensors {
        Tensors::from([
            (
                format!("{prefix}blocks.0.attn.q{suffix_a}"),
                t(&[1.0, 0.0, 0.0, 1.0], (2, 2)),
            ),
            (
                format!("{prefix}blocks.0.attn.q{suffix_b}"),
                t(&[1.0, 0.0, 0.0, 0.0, 0.0, 2.0], (3, 2)),
            ),
        ])
    }

    fn q(base: &Tensors) -> Vec<Vec<f32>> {
        base["blocks.0.attn.q.weight"].to_vec2().unwrap()
    }

    #[test]
    fn every_layout_merges_the_same_product() {
        let src = Path::new("adapter");
        for (prefix, a, b) in [
            ("", ".lora_A.weight", ".lora_B.weight"),
            ("base_model.model.", ".lora_A.weight", ".lora_B.weight"),
            (
                "model.",
                ".lora_A.0_SwiftLoRA.weight",
                ".lora_B.0_SwiftLoRA.weight",
            ),
            ("", ".lora_A.default.weight", ".lora_B.default.weight"),
            ("", ".lora_down.weight", ".lora_up.weight"),
        ] {
            let lora = LoraFile::from_tensors(pair(prefix, a, b), Some(2.0), src).unwrap();
            let mut w = base();
            assert_eq!(lora.apply(&mut w, 0.5).unwrap(), 1, "{prefix}{a}");
            // W + 0.5 * 2 * B A
            assert_eq!(q(&w), [[2.0, 1.0], [1.0, 1.0], [1.0, 3.0]], "{prefix}{a}");
        }
        // A per-module alpha (kohya) overrides the file's scale: alpha 4 over rank 2.
        let mut tensors = pair("", ".lora_down.weight", ".lora_up.weight");
        tensors.insert(
            "blocks.0.attn.q.alpha".into(),
            Tensor::new(4f32, &Device::Cpu).unwrap(),
        );
        let lora = LoraFile::from_tensors(tensors, None, src).unwrap();
        let mut w = base();
        lora.apply(&mut w, 1.0).unwrap();
        assert_eq!(q(&w), [[3.0, 1.0], [1.0, 1.0], [1.0, 5.0]]);
    }

    #[test]
    fn unknown_modules_and_half_pairs_are_named() {
        let src = Path::new("adapter.safetensors");
        let mut tensors = pair("", ".lora_A.weight", ".lora_B.weight");
        tensors.insert("blocks.9.attn.q.lora_A.weight".into(), t(&[1.0; 4], (2, 2)));
        tensors.insert("blocks.9.attn.q.lora_B.weight".into(), t(&[1.0; 6], (3, 2)));
        let err = LoraFile::from_tensors(tensors, None, src)
            .unwrap()
            .apply(&mut base(), 1.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocks.9.attn.q") && err.contains("adapter.safetensors"),
            "{err}"
        );
        let mut half = pair("", ".lora_A.weight", ".lora_B.weight");
        half.remove("blocks.0.attn.q.lora_B.weight");
        let err = LoraFile::from_tensors(half, None, src)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lacks its A or B"), "{err}");
        assert!(LoraFile::from_tensors(base(), None, src).is_err());
    }
}
