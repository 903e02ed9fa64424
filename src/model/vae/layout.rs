//! Checkpoint layouts of the VAE, all brought to the ldm naming the model is built with:
//! - ldm / scepter (`encoder.down.N.block.M...`, `mid.attn_1.{q,k,v,proj_out}`), where scepter
//!   names `quant_conv` `conv1` and `post_quant_conv` `conv2`;
//! - diffusers (`encoder.down_blocks.N.resnets.M`, `conv_shortcut`, `downsamplers.0.conv`,
//!   `mid_block.attentions.0.{to_q,to_k,to_v,to_out.0,group_norm}` or the older
//!   `{query,key,value,proj_attn}`, `up_blocks` numbered from the lowest resolution,
//!   `conv_norm_out`), whose attention projections are Linear weights [C, C] that become 1x1
//!   convolutions [C, C, 1, 1];
//! - any of these under a `first_stage_model.` (whole ldm checkpoints), `vae.` or `module.` prefix.
//!
//! Tensors that are not the VAE's (a whole diffusion checkpoint's other parts, ldm's `loss.*`)
//! are dropped or left unused.

use crate::model::checkpoint::Tensors;
use crate::{Error, Result};
use std::path::Path;

/// Prefixes a VAE state dict may sit under; the keys carrying one are kept, the rest dropped.
const PREFIXES: [&str; 3] = ["first_stage_model.", "vae.", "module."];

/// Renames the tensors of a VAE checkpoint (`path`, for messages) to ldm names; `num_levels` is
/// the length of CH_MULT, needed to renumber diffusers' `up_blocks`.
pub fn to_ldm(tensors: Tensors, num_levels: usize, path: &Path) -> Result<Tensors> {
    let tensors = strip_prefixes(tensors);
    let mut out = Tensors::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let ldm = ldm_name(&name, num_levels).map_err(|message| Error::Model {
            path: path.to_path_buf(),
            message: format!("tensor {name}: {message}"),
        })?;
        let tensor = if is_attention_projection(&ldm) && tensor.rank() == 2 {
            tensor.unsqueeze(2)?.unsqueeze(3)?
        } else {
            tensor
        };
        out.insert(ldm, tensor);
    }
    Ok(out)
}

fn strip_prefixes(mut tensors: Tensors) -> Tensors {
    while let Some(prefix) = PREFIXES
        .iter()
        .find(|p| tensors.keys().any(|k| k.starts_with(*p)))
    {
        tensors = tensors
            .into_iter()
            .filter_map(|(k, t)| k.strip_prefix(prefix).map(|s| (s.to_string(), t)))
            .collect();
    }
    tensors
}

/// The ldm name of one tensor name of any supported layout.
fn ldm_name(name: &str, num_levels: usize) -> std::result::Result<String, String> {
    let parts: Vec<&str> = name.split('.').collect();
    Ok(match parts.as_slice() {
        ["conv1", rest @ ..] => join("quant_conv", rest),
        ["conv2", rest @ ..] => join("post_quant_conv", rest),
        [coder @ ("encoder" | "decoder"), rest @ ..] => {
            format!("{coder}.{}", coder_name(rest, num_levels)?)
        }
        _ => name.to_string(),
    })
}

/// The ldm name inside the encoder or decoder.
fn coder_name(parts: &[&str], num_levels: usize) -> std::result::Result<String, String> {
    let up_level = |i: &str| -> std::result::Result<usize, String> {
        i.parse::<usize>()
            .ok()
            .filter(|i| *i < num_levels)
            .map(|i| num_levels - 1 - i)
            .ok_or_else(|| {
                format!("up_blocks index {i} outside the {num_levels} levels of CH_MULT")
            })
    };
    Ok(match parts {
        ["conv_norm_out", rest @ ..] => join("norm_out", rest),
        ["down_blocks", i, "resnets", j, rest @ ..] => {
            join(&format!("down.{i}.block.{j}"), &resnet_param(rest))
        }
        ["down_blocks", i, "attentions", j, rest @ ..] => {
            join(&format!("down.{i}.attn.{j}"), &attention_param(rest))
        }
        ["down_blocks", i, "downsamplers", "0", rest @ ..] => {
            join(&format!("down.{i}.downsample"), rest)
        }
        ["up_blocks", i, "resnets", j, rest @ ..] => join(
            &format!("up.{}.block.{j}", up_level(i)?),
            &resnet_param(rest),
        ),
        ["up_blocks", i, "attentions", j, rest @ ..] => join(
            &format!("up.{}.attn.{j}", up_level(i)?),
            &attention_param(rest),
        ),
        ["up_blocks", i, "upsamplers", "0", rest @ ..] => {
            join(&format!("up.{}.upsample", up_level(i)?), rest)
        }
        ["mid_block", "resnets", "0", rest @ ..] => join("mid.block_1", &resnet_param(rest)),
        ["mid_block", "resnets", "1", rest @ ..] => join("mid.block_2", &resnet_param(rest)),
        ["mid_block", "attentions", "0", rest @ ..] => join("mid.attn_1", &attention_param(rest)),
        _ => parts.join("."),
    })
}

fn resnet_param<'a>(parts: &[&'a str]) -> Vec<&'a str> {
    match parts {
        ["conv_shortcut", rest @ ..] => [&["nin_shortcut"], rest].concat(),
        _ => parts.to_vec(),
    }
}

fn attention_param<'a>(parts: &[&'a str]) -> Vec<&'a str> {
    let (head, rest) = match parts {
        ["group_norm", rest @ ..] => ("norm", rest),
        ["to_q" | "query", rest @ ..] => ("q", rest),
        ["to_k" | "key", rest @ ..] => ("k", rest),
        ["to_v" | "value", rest @ ..] => ("v", rest),
        ["to_out", "0", rest @ ..] | ["proj_attn", rest @ ..] => ("proj_out", rest),
        _ => return parts.to_vec(),
    };
    [&[head], rest].concat()
}

fn join(head: &str, rest: &[&str]) -> String {
    std::iter::once(head)
        .chain(rest.iter().copied())
        .collect::<Vec<_>>()
        .join(".")
}

/// Whether an ldm name is the weight of an attention q/k/v/proj_out projection.
fn is_attention_projection(ldm: &str) -> bool {
    let parts: Vec<&str> = ldm.split('.').collect();
    matches!(
        parts.as_slice(),
        [.., "q" | "k" | "v" | "proj_out", "weight"]
    ) && parts.iter().any(|p| *p == "attn" || *p == "attn_1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn renamed(name: &str) -> String {
        ldm_name(name, 4).unwrap()
    }

    #[test]
    fn ldm_names_stay() {
        for name in [
            "encoder.down.1.block.0.nin_shortcut.weight",
            "decoder.up.3.upsample.conv.bias",
            "encoder.mid.attn_1.proj_out.weight",
            "quant_conv.weight",
            "post_quant_conv.bias",
            "loss.logvar",
        ] {
            assert_eq!(renamed(name), name);
        }
    }

    #[test]
    fn scepter_conv1_conv2_are_the_quant_convs() {
        assert_eq!(renamed("conv1.weight"), "quant_conv.weight");
        assert_eq!(renamed("conv2.bias"), "post_quant_conv.bias");
        // Inside a resnet block conv1/conv2 keep their names.
        assert_eq!(
            renamed("encoder.mid.block_1.conv1.weight"),
            "encoder.mid.block_1.conv1.weight"
        );
    }

    #[test]
    fn diffusers_names_map_to_ldm() {
        let cases = [
            (
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
                "encoder.down.1.block.0.nin_shortcut.weight",
            ),
            (
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
                "encoder.down.2.downsample.conv.bias",
            ),
            (
                "encoder.mid_block.resnets.1.norm2.weight",
                "encoder.mid.block_2.norm2.weight",
            ),
            (
                "encoder.mid_block.attentions.0.group_norm.bias",
                "encoder.mid.attn_1.norm.bias",
            ),
            (
                "encoder.mid_block.attentions.0.to_out.0.weight",
                "encoder.mid.attn_1.proj_out.weight",
            ),
            (
                "decoder.mid_block.attentions.0.query.weight",
                "decoder.mid.attn_1.q.weight",
            ),
            (
                "decoder.mid_block.attentions.0.proj_attn.bias",
                "decoder.mid.attn_1.proj_out.bias",
            ),
            (
                "decoder.up_blocks.0.resnets.2.conv1.weight",
                "decoder.up.3.block.2.conv1.weight",
            ),
            (
                "decoder.up_blocks.3.resnets.0.conv_shortcut.bias",
                "decoder.up.0.block.0.nin_shortcut.bias",
            ),
            (
                "decoder.up_blocks.1.upsamplers.0.conv.weight",
                "decoder.up.2.upsample.conv.weight",
            ),
            (
                "decoder.up_blocks.2.attentions.1.to_k.weight",
                "decoder.up.1.attn.1.k.weight",
            ),
            ("decoder.conv_norm_out.weight", "decoder.norm_out.weight"),
        ];
        for (diffusers, ldm) in cases {
            assert_eq!(renamed(diffusers), ldm, "{diffusers}");
        }
    }

    #[test]
    fn up_block_beyond_ch_mult_is_an_error_naming_the_tensor() {
        let dev = Device::Cpu;
        let tensors = Tensors::from([(
            "decoder.up_blocks.4.resnets.0.conv1.bias".to_string(),
            Tensor::zeros(4, DType::F32, &dev).unwrap(),
        )]);
        let err = to_ldm(tensors, 4, Path::new("vae.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vae.safetensors") && err.contains("up_blocks.4"),
            "{err}"
        );
    }

    #[test]
    fn prefixes_are_stripped_and_other_parts_dropped() {
        let dev = Device::Cpu;
        let t = || Tensor::zeros(2, DType::F32, &dev).unwrap();
        let tensors = Tensors::from([
            ("module.first_stage_model.conv1.bias".to_string(), t()),
            ("module.model.diffusion_model.x.bias".to_string(), t()),
        ]);
        let out = to_ldm(tensors, 4, Path::new("x")).unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["quant_conv.bias"]);
    }

    #[test]
    fn linear_attention_weights_become_1x1_convolutions() {
        let dev = Device::Cpu;
        let tensors = Tensors::from([
            (
                "encoder.mid_block.attentions.0.to_v.weight".to_string(),
                Tensor::zeros((8, 8), DType::F32, &dev).unwrap(),
            ),
            (
                "encoder.mid_block.attentions.0.to_v.bias".to_string(),
                Tensor::zeros(8, DType::F32, &dev).unwrap(),
            ),
        ]);
        let out = to_ldm(tensors, 4, Path::new("x")).unwrap();
        assert_eq!(out["encoder.mid.attn_1.v.weight"].dims(), &[8, 8, 1, 1]);
        assert_eq!(out["encoder.mid.attn_1.v.bias"].dims(), &[8]);
    }
}
