//! Checkpoint key layouts of the DiT. The ACE layout is what [`DitAce`](super::DitAce) reads;
//! a PixArt-alpha checkpoint is converted to it as upstream `load_pretrained_model` does
//! (fused `qkv` / `kv_linear` split, `q_linear`/`proj` renamed, `y_embedder.y_proj` flattened,
//! a 4-channel patch embedder zero-padded for the mask channel). Before building the model the
//! converted tensors are checked against the names and shapes the model asks for, so that a
//! wrong file fails with the tensor's name rather than deep inside a layer.

use super::config::Config;
use super::DitAce;
use crate::model::checkpoint::Tensors;
use crate::model::recorder::requested_tensors;
pub use crate::model::recorder::TensorSpec;
use crate::{Error, Result};
use candle_core::Tensor;
use std::path::Path;

/// Renames and splits PixArt-alpha keys into the ACE layout; ACE keys pass unchanged, keys of
/// neither layout are kept (and ignored by the model). `source` names the checkpoint in errors.
pub fn convert(tensors: Tensors, cfg: &Config, source: &Path) -> Result<Tensors> {
    let mut out = Tensors::with_capacity(tensors.len());
    for (name, t) in tensors {
        let name = name
            .replace(".cross_attn.q_linear.", ".cross_attn.q.")
            .replace(".cross_attn.proj.", ".cross_attn.o.")
            .replace(".attn.proj.", ".attn.o.");
        if name.contains(".cross_attn.kv_linear.") {
            let parts = [".cross_attn.k.", ".cross_attn.v."];
            split_rows(
                &mut out,
                &name,
                &t,
                ".cross_attn.kv_linear.",
                &parts,
                source,
            )?;
        } else if name.contains(".attn.qkv.") {
            let parts = [".attn.q.", ".attn.k.", ".attn.v."];
            split_rows(&mut out, &name, &t, ".attn.qkv.", &parts, source)?;
        } else if name.contains("y_embedder.y_proj.") {
            out.insert(name.replace("y_embedder.y_proj.", "y_embedder."), t);
        } else if name == "x_embedder.proj.weight" && t.dim(1).ok() == Some(cfg.in_channels) {
            out.insert(name, pad_mask_channel(&t)?);
        } else {
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// Splits a fused projection along its rows (dim 0) into equal parts, `fused` in `name` replaced
/// by each of `parts` in turn.
fn split_rows(
    out: &mut Tensors,
    name: &str,
    t: &Tensor,
    fused: &str,
    parts: &[&str],
    source: &Path,
) -> Result<()> {
    let rows = t.dim(0)?;
    if rows % parts.len() != 0 {
        return Err(Error::Model {
            path: source.to_path_buf(),
            message: format!(
                "tensor {name}: {rows} rows do not split into {} equal parts",
                parts.len()
            ),
        });
    }
    let size = rows / parts.len();
    for (i, part) in parts.iter().enumerate() {
        out.insert(
            name.replace(fused, part),
            t.narrow(0, i * size, size)?.contiguous()?,
        );
    }
    Ok(())
}

/// Appends one all-zero input channel (the mask) to a `[out, in, p, p]` patch-embedder weight.
fn pad_mask_channel(w: &Tensor) -> Result<Tensor> {
    let (out, _, kh, kw) = w.dims4()?;
    let zeros = Tensor::zeros((out, 1, kh, kw), w.dtype(), w.device())?;
    Ok(Tensor::cat(&[w, &zeros], 1)?)
}

/// Every tensor name and shape the DiT of `cfg` reads, in the order it reads them, without
/// weight memory.
pub fn expected_tensors(cfg: &Config) -> Result<Vec<TensorSpec>> {
    requested_tensors(None, |vb| DitAce::new(cfg, vb))
}

/// Checks that `tensors` hold every tensor the DiT of `cfg` reads, with its shape.
pub fn check(tensors: &Tensors, cfg: &Config, source: &Path) -> Result<()> {
    for (name, shape) in expected_tensors(cfg)? {
        let t = tensors.get(&name).ok_or_else(|| Error::Model {
            path: source.to_path_buf(),
            message: format!("DiT checkpoint has no tensor {name}"),
        })?;
        if t.dims() != shape.as_slice() {
            return Err(Error::Shape {
                name: format!("{name} in {}", source.display()),
                expected: shape,
                found: t.dims().to_vec(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn tiny_cfg() -> Config {
        Config {
            patch_size: 2,
            in_channels: 4,
            hidden_size: 12,
            depth: 1,
            num_heads: 2,
            mlp_ratio: 2.0,
            pred_sigma: true,
            y_channels: 8,
            max_seq_len: 16,
            qk_norm: true,
            use_grad_checkpoint: false,
        }
    }

    fn ramp(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn pixart_keys_are_split_and_renamed() {
        let mut pixart = Tensors::new();
        pixart.insert("blocks.0.attn.qkv.weight".into(), ramp(&[6, 2]));
        pixart.insert("blocks.0.attn.qkv.bias".into(), ramp(&[6]));
        pixart.insert("blocks.0.attn.proj.weight".into(), ramp(&[2, 2]));
        pixart.insert("blocks.0.cross_attn.q_linear.bias".into(), ramp(&[2]));
        pixart.insert("blocks.0.cross_attn.kv_linear.weight".into(), ramp(&[4, 2]));
        pixart.insert("blocks.0.cross_attn.proj.bias".into(), ramp(&[2]));
        pixart.insert("y_embedder.y_proj.fc1.weight".into(), ramp(&[2, 3]));
        pixart.insert("t_block.1.bias".into(), ramp(&[3]));
        let out = convert(pixart, &tiny_cfg(), Path::new("pixart.pth")).unwrap();
        let mut names: Vec<&str> = out.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "blocks.0.attn.k.bias",
                "blocks.0.attn.k.weight",
                "blocks.0.attn.o.weight",
                "blocks.0.attn.q.bias",
                "blocks.0.attn.q.weight",
                "blocks.0.attn.v.bias",
                "blocks.0.attn.v.weight",
                "blocks.0.cross_attn.k.weight",
                "blocks.0.cross_attn.o.bias",
                "blocks.0.cross_attn.q.bias",
                "blocks.0.cross_attn.v.weight",
                "t_block.1.bias",
                "y_embedder.fc1.weight",
            ]
        );
        assert_eq!(values(&out["blocks.0.attn.q.weight"]), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(values(&out["blocks.0.attn.k.weight"]), [4.0, 5.0, 6.0, 7.0]);
        assert_eq!(
            values(&out["blocks.0.attn.v.weight"]),
            [8.0, 9.0, 10.0, 11.0]
        );
        assert_eq!(values(&out["blocks.0.attn.v.bias"]), [4.0, 5.0]);
        assert_eq!(
            values(&out["blocks.0.cross_attn.k.weight"]),
            [0.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(
            values(&out["blocks.0.cross_attn.v.weight"]),
            [4.0, 5.0, 6.0, 7.0]
        );
        assert_eq!(
            values(&out["y_embedder.fc1.weight"]),
            values(&ramp(&[2, 3]))
        );
    }

    #[test]
    fn four_channel_patch_embedder_gets_a_zero_mask_channel() {
        let mut pixart = Tensors::new();
        pixart.insert("x_embedder.proj.weight".into(), ramp(&[2, 4, 1, 1]));
        let out = convert(pixart, &tiny_cfg(), Path::new("pixart.pth")).unwrap();
        let w = &out["x_embedder.proj.weight"];
        assert_eq!(w.dims(), &[2, 5, 1, 1]);
        assert_eq!(
            values(w),
            [0.0, 1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 7.0, 0.0]
        );
        // An ACE (5-channel) weight is kept as is.
        let mut ace = Tensors::new();
        ace.insert("x_embedder.proj.weight".into(), ramp(&[2, 5, 1, 1]));
        let out = convert(ace, &tiny_cfg(), Path::new("ace.pth")).unwrap();
        assert_eq!(
            values(&out["x_embedder.proj.weight"]),
            values(&ramp(&[2, 5, 1, 1]))
        );
    }

    #[test]
    fn uneven_fused_projection_is_an_error_naming_it() {
        let mut pixart = Tensors::new();
        pixart.insert("blocks.0.attn.qkv.weight".into(), ramp(&[5, 2]));
        let err = convert(pixart, &tiny_cfg(), Path::new("bad.pth"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.pth") && err.contains("blocks.0.attn.qkv.weight"),
            "{err}"
        );
    }

    fn complete_checkpoint(cfg: &Config) -> Tensors {
        expected_tensors(cfg)
            .unwrap()
            .into_iter()
            .map(|(name, shape)| {
                (
                    name,
                    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn check_names_missing_and_misshapen_tensors() {
        let cfg = tiny_cfg();
        let full = complete_checkpoint(&cfg);
        assert!(check(&full, &cfg, Path::new("ok.pth")).is_ok());

        let mut missing = full.clone();
        missing.remove("blocks.0.cross_attn.norm_k.weight");
        let err = check(&missing, &cfg, Path::new("m.pth"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.pth") && err.contains("blocks.0.cross_attn.norm_k.weight"),
            "{err}"
        );

        let mut misshapen = full;
        misshapen.insert(
            "t_block.1.weight".into(),
            Tensor::zeros((72, 11), DType::F32, &Device::Cpu).unwrap(),
        );
        match check(&misshapen, &cfg, Path::new("s.pth")) {
            Err(Error::Shape {
                name,
                expected,
                found,
            }) => {
                assert!(name.contains("t_block.1.weight") && name.contains("s.pth"));
                assert_eq!(expected, [72, 12]);
                assert_eq!(found, [72, 11]);
            }
            other => panic!("expected a shape error, got {other:?}"),
        }
    }
}
