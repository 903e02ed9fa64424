//! The first-stage model of ACE: the KL-regularised autoencoder of latent diffusion
//! (`AutoencoderKL`, scepter's copy of CompVis ldm). Images in [-1, 1] become latents at 1/8
//! (2^(levels-1)) of their size and back. ACE encodes deterministically with the posterior mean;
//! scaling by SCALE_FACTOR, the decoder bias and clamping belong to the pipeline.

pub mod blocks;
pub mod config;
mod conv;
pub mod decoder;
pub mod encoder;
pub mod layout;

pub use config::{Config, DecoderConfig, EncoderConfig};

use crate::model::checkpoint;
use crate::model::cpu_bf16::{self, Products};
use crate::model::recorder::{requested_tensors, TensorSpec};
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use conv::Conv;
use decoder::Decoder;
use encoder::Encoder;
use std::path::Path;

/// `AutoencoderKL`: encoder, `quant_conv` (moments), `post_quant_conv` and decoder.
#[derive(Debug, Clone)]
pub struct AutoencoderKl {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv,
    post_quant_conv: Conv,
    in_channels: usize,
    embed_dim: usize,
}

impl AutoencoderKl {
    /// Builds the model from tensors in ldm naming (see [`layout`]).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        validate(cfg)?;
        let z = cfg.encoder.z_channels;
        Ok(Self {
            encoder: Encoder::new(&cfg.encoder, vb.pp("encoder"))?,
            decoder: Decoder::new(&cfg.decoder, vb.pp("decoder"))?,
            quant_conv: blocks::conv(2 * z, 2 * cfg.embed_dim, 1, vb.pp("quant_conv"))?,
            post_quant_conv: blocks::conv(
                cfg.embed_dim,
                cfg.decoder.z_channels,
                1,
                vb.pp("post_quant_conv"),
            )?,
            in_channels: cfg.encoder.in_channels,
            embed_dim: cfg.embed_dim,
        })
    }

    /// Loads a checkpoint in any supported layout (ldm, scepter, diffusers; file or folder),
    /// checking that it holds every tensor the configuration asks for, with its shape.
    pub fn load(cfg: &Config, checkpoint: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let raw = checkpoint::load(checkpoint, device)?;
        Self::from_checkpoint(cfg, raw, checkpoint, device, dtype)
    }

    /// [`AutoencoderKl::load`] from the tensors of the checkpoint at `checkpoint`, already read.
    /// bf16 on the CPU is an f32 model whose convolutions have bf16 weights
    /// ([`cpu_bf16`]).
    pub fn from_checkpoint(
        cfg: &Config,
        raw: checkpoint::Tensors,
        checkpoint: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        validate(cfg)?;
        let tensors = layout::to_ldm(raw, cfg.encoder.ch_mult.len(), checkpoint)?;
        for (name, shape) in required_tensors(cfg)? {
            let Some(found) = tensors.get(&name) else {
                return Err(Error::Model {
                    path: checkpoint.to_path_buf(),
                    message: format!("VAE tensor {name} is missing"),
                });
            };
            if found.dims() != shape.as_slice() {
                return Err(Error::Model {
                    path: checkpoint.to_path_buf(),
                    message: format!(
                        "VAE tensor {name} has shape {:?}, the configuration asks for {shape:?}",
                        found.dims()
                    ),
                });
            }
        }
        if cpu_bf16::applies(device, dtype) {
            return Self::new(cfg, cpu_bf16::var_builder(tensors, Products::Convolution)?);
        }
        Self::new(cfg, VarBuilder::from_tensors(tensors, dtype, device))
    }

    /// Image [B, IN_CHANNELS, H, W] in [-1, 1] to the posterior mean [B, EMBED_DIM, H/8, W/8]
    /// (unscaled).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.in_channels {
            return Err(Error::Shape {
                name: "VAE input image".into(),
                expected: vec![0, self.in_channels, 0, 0],
                found: dims.to_vec(),
            });
        }
        let moments = self.quant_conv.forward(&self.encoder.forward(x)?)?;
        Ok(moments.narrow(1, 0, self.embed_dim)?)
    }

    /// Unscaled latent [B, EMBED_DIM, h, w] to the decoder output [B, OUT_CH, 8h, 8w], nominally
    /// in [-1, 1] (not clamped).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let dims = z.dims();
        if dims.len() != 4 || dims[1] != self.embed_dim {
            return Err(Error::Shape {
                name: "VAE latent".into(),
                expected: vec![0, self.embed_dim, 0, 0],
                found: dims.to_vec(),
            });
        }
        Ok(self.decoder.forward(&self.post_quant_conv.forward(z)?)?)
    }
}

fn validate(cfg: &Config) -> Result<()> {
    let bad = |message: String| Err(Error::invalid("FIRST_STAGE_MODEL configuration", message));
    if !cfg.encoder.double_z {
        return bad(
            "ENCODER.DOUBLE_Z must be true: AutoencoderKL's quant_conv takes mean and log-variance"
                .into(),
        );
    }
    if cfg.encoder.ch_mult.is_empty() || cfg.decoder.ch_mult.is_empty() {
        return bad("CH_MULT must not be empty".into());
    }
    let widths = cfg
        .encoder
        .ch_mult
        .iter()
        .map(|m| (m * cfg.encoder.ch, "ENCODER"))
        .chain(
            cfg.decoder
                .ch_mult
                .iter()
                .map(|m| (m * cfg.decoder.ch, "DECODER")),
        );
    for (width, part) in widths {
        if width == 0 || width % 32 != 0 {
            return bad(format!(
                "{part}: CH x CH_MULT gives {width} channels, which GroupNorm(32) cannot split"
            ));
        }
    }
    Ok(())
}

/// Every tensor name (ldm naming) and shape the configuration asks a checkpoint for, in the order
/// the model is built; nothing is allocated.
pub fn required_tensors(cfg: &Config) -> Result<Vec<TensorSpec>> {
    requested_tensors(None, |vb| AutoencoderKl::new(cfg, vb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::max_diff;
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;

    const SCALE_FACTOR: f64 = 0.18215;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel)
    }

    fn config(yaml: &str) -> Config {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn full_size() -> Config {
        let part = "{CH: 128, OUT_CH: 3, NUM_RES_BLOCKS: 2, IN_CHANNELS: 3, ATTN_RESOLUTIONS: [], \
                    CH_MULT: [1, 2, 4, 4], Z_CHANNELS: 4, DOUBLE_Z: true}";
        config(&format!(
            "NAME: AutoencoderKL\nEMBED_DIM: 4\nENCODER: {part}\nDECODER: {part}\n"
        ))
    }

    /// Two levels with attention at the lowest one, so that level attention is exercised too.
    fn small() -> Config {
        let part =
            "{CH: 32, NUM_RES_BLOCKS: 1, ATTN_RESOLUTIONS: [1], CH_MULT: [1, 2], Z_CHANNELS: 4}";
        config(&format!("EMBED_DIM: 4\nENCODER: {part}\nDECODER: {part}\n"))
    }

    fn tiny() -> Config {
        let text = std::fs::read_to_string(fixture("ace-tiny/model/ace_tiny.yaml")).unwrap();
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        serde_yaml::from_value(yaml["MODEL"]["FIRST_STAGE_MODEL"].clone()).unwrap()
    }

    fn wave(n: usize, freq: f64, phase: f64) -> Tensor {
        Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .affine(freq, phase)
            .unwrap()
            .sin()
            .unwrap()
    }

    /// Deterministic weights for every tensor `cfg` asks for, in ldm naming.
    fn ldm_weights(cfg: &Config) -> HashMap<String, Tensor> {
        required_tensors(cfg)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let n: usize = shape.iter().product();
                let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
                let t = (wave(n, 0.61, i as f64) * (1.0 / (fan_in as f64).sqrt())).unwrap();
                (name, t.reshape(shape).unwrap())
            })
            .collect()
    }

    /// ldm to diffusers naming, written independently of `layout`: old-style attention names in
    /// the decoder, new-style in the encoder, Linear attention weights.
    fn diffusers_name(ldm: &str, levels: usize) -> String {
        let p: Vec<&str> = ldm.split('.').collect();
        let attn = |coder: &str, q: &str| -> String {
            let new = coder == "encoder";
            match q {
                "norm" => "group_norm",
                "q" => {
                    if new {
                        "to_q"
                    } else {
                        "query"
                    }
                }
                "k" => {
                    if new {
                        "to_k"
                    } else {
                        "key"
                    }
                }
                "v" => {
                    if new {
                        "to_v"
                    } else {
                        "value"
                    }
                }
                "proj_out" => {
                    if new {
                        "to_out.0"
                    } else {
                        "proj_attn"
                    }
                }
                other => panic!("unexpected attention part {other}"),
            }
            .to_string()
        };
        let res = |x: &str| {
            if x == "nin_shortcut" {
                "conv_shortcut"
            } else {
                x
            }
            .to_string()
        };
        let tail = |from: usize| p[from..].join(".");
        let mapped = match p[1] {
            "down" if p[3] == "block" => format!(
                "down_blocks.{}.resnets.{}.{}.{}",
                p[2],
                p[4],
                res(p[5]),
                tail(6)
            ),
            "down" if p[3] == "attn" => format!(
                "down_blocks.{}.attentions.{}.{}.{}",
                p[2],
                p[4],
                attn(p[0], p[5]),
                tail(6)
            ),
            "down" => format!("down_blocks.{}.downsamplers.0.{}", p[2], tail(4)),
            "up" => {
                let i = levels - 1 - p[2].parse::<usize>().unwrap();
                match p[3] {
                    "block" => format!("up_blocks.{i}.resnets.{}.{}.{}", p[4], res(p[5]), tail(6)),
                    "attn" => format!(
                        "up_blocks.{i}.attentions.{}.{}.{}",
                        p[4],
                        attn(p[0], p[5]),
                        tail(6)
                    ),
                    _ => format!("up_blocks.{i}.upsamplers.0.{}", tail(4)),
                }
            }
            "mid" if p[2] == "attn_1" => {
                format!("mid_block.attentions.0.{}.{}", attn(p[0], p[3]), tail(4))
            }
            "mid" => {
                let j = if p[2] == "block_1" { 0 } else { 1 };
                format!("mid_block.resnets.{j}.{}.{}", res(p[3]), tail(4))
            }
            "norm_out" => format!("conv_norm_out.{}", tail(2)),
            _ => tail(1),
        };
        match p[0] {
            "encoder" | "decoder" => format!("{}.{mapped}", p[0]),
            _ => ldm.to_string(),
        }
    }

    fn save(dir: &Path, file: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
        let path = dir.join(file);
        candle_core::safetensors::save(tensors, &path).unwrap();
        path
    }

    fn max_abs(a: &Tensor) -> f32 {
        a.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn full_size_asks_for_exactly_the_release_tensors() {
        let text = std::fs::read_to_string(fixture("full-size-keys.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(json["tensors"]["vae/ldm"].clone()).unwrap();
        let asked = required_tensors(&full_size()).unwrap();
        let params: usize = asked.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let asked: BTreeMap<String, Vec<usize>> = asked.into_iter().collect();
        assert_eq!(asked, expected);
        assert_eq!(
            params as u64,
            json["param_counts"]["vae/ldm"].as_u64().unwrap()
        );
    }

    #[test]
    fn matches_the_reference_on_the_tiny_model() {
        let dev = Device::Cpu;
        let cfg = tiny();
        let vae = AutoencoderKl::load(
            &cfg,
            &fixture("ace-tiny/model/models/vae/vae.bin"),
            &dev,
            DType::F32,
        )
        .unwrap();
        let golden =
            candle_core::safetensors::load(fixture("ace-tiny/expected/vae.safetensors"), &dev)
                .unwrap();
        let image = golden["image"].unsqueeze(0).unwrap();
        let latent = (vae.encode(&image).unwrap() * SCALE_FACTOR)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let expected = &golden["latent"];
        let err = max_diff(&latent, expected);
        eprintln!(
            "VAE latent: max |a-b| = {err:e}, max |b| = {}",
            max_abs(expected)
        );
        assert!(
            err <= 1e-4 * max_abs(expected).max(1.0),
            "latent max error {err}"
        );
        let z = (golden["latent"].unsqueeze(0).unwrap() / SCALE_FACTOR).unwrap();
        let decoded = vae.decode(&z).unwrap().squeeze(0).unwrap();
        let expected = &golden["decoded"];
        let err = max_diff(&decoded, expected);
        eprintln!(
            "VAE decoded: max |a-b| = {err:e}, max |b| = {}",
            max_abs(expected)
        );
        assert!(
            err <= 1e-4 * max_abs(expected).max(1.0),
            "decoded max error {err}"
        );
    }

    #[test]
    fn ldm_scepter_and_diffusers_layouts_give_the_same_model() {
        let dev = Device::Cpu;
        let cfg = small();
        let levels = cfg.encoder.ch_mult.len();
        let ldm = ldm_weights(&cfg);
        let scepter: HashMap<String, Tensor> = ldm
            .iter()
            .map(|(k, t)| {
                let k = k
                    .replace("post_quant_conv", "conv2")
                    .replace("quant_conv", "conv1");
                (format!("first_stage_model.{k}"), t.clone())
            })
            .collect();
        let diffusers: HashMap<String, Tensor> = ldm
            .iter()
            .map(|(k, t)| {
                let name = diffusers_name(k, levels);
                let linear = name.contains("attentions") && t.rank() == 4;
                let t = if linear {
                    t.squeeze(3).unwrap().squeeze(2).unwrap()
                } else {
                    t.clone()
                };
                (format!("vae.{name}"), t)
            })
            .collect();
        assert!(diffusers
            .keys()
            .any(|k| k.contains("up_blocks.0.attentions.0.query")));
        let dir = tempfile::tempdir().unwrap();
        let image = (wave(3 * 16 * 16, 0.37, 0.2)
            .reshape((1, 3, 16, 16))
            .unwrap()
            * 0.9)
            .unwrap();
        let latent = (wave(4 * 8 * 8, 0.53, 0.7).reshape((1, 4, 8, 8)).unwrap() * 2.0).unwrap();
        let run = |file: &str, tensors: &HashMap<String, Tensor>| {
            let path = save(dir.path(), file, tensors);
            let vae = AutoencoderKl::load(&cfg, &path, &dev, DType::F32).unwrap();
            (vae.encode(&image).unwrap(), vae.decode(&latent).unwrap())
        };
        let (mean, decoded) = run("ldm.safetensors", &ldm);
        assert_eq!(mean.dims(), &[1, 4, 8, 8]);
        assert_eq!(decoded.dims(), &[1, 3, 16, 16]);
        assert!(max_abs(&mean) > 1e-3 && max_abs(&decoded) > 1e-3);
        for (file, tensors) in [
            ("scepter.safetensors", &scepter),
            ("diffusers.safetensors", &diffusers),
        ] {
            let (m, d) = run(file, tensors);
            assert_eq!(max_diff(&m, &mean), 0.0, "{file}: encode differs");
            assert_eq!(max_diff(&d, &decoded), 0.0, "{file}: decode differs");
        }
    }

    #[test]
    fn a_missing_or_misshapen_tensor_is_named_with_the_file() {
        let cfg = small();
        let dir = tempfile::tempdir().unwrap();
        let mut weights = ldm_weights(&cfg);
        weights.remove("decoder.mid.attn_1.k.bias");
        let path = save(dir.path(), "missing.safetensors", &weights);
        let err = AutoencoderKl::load(&cfg, &path, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.safetensors") && err.contains("decoder.mid.attn_1.k.bias"),
            "{err}"
        );

        let mut weights = ldm_weights(&cfg);
        weights.insert(
            "quant_conv.bias".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let path = save(dir.path(), "shape.safetensors", &weights);
        let err = AutoencoderKl::load(&cfg, &path, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shape.safetensors")
                && err.contains("quant_conv.bias")
                && err.contains("[3]"),
            "{err}"
        );
    }

    #[test]
    fn configurations_it_cannot_build_are_refused() {
        let mut cfg = small();
        cfg.encoder.double_z = false;
        let err = required_tensors(&cfg).unwrap_err().to_string();
        assert!(err.contains("DOUBLE_Z"), "{err}");
        let mut cfg = small();
        cfg.decoder.ch = 48;
        let err = required_tensors(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("DECODER") && err.contains("GroupNorm"),
            "{err}"
        );
    }

    #[test]
    fn wrong_input_shapes_are_errors() {
        let cfg = small();
        let vae = AutoencoderKl::new(
            &cfg,
            VarBuilder::from_tensors(ldm_weights(&cfg), DType::F32, &Device::Cpu),
        )
        .unwrap();
        let gray = Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(vae.encode(&gray), Err(Error::Shape { .. })));
        let latent = Tensor::zeros((1, 8, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(vae.decode(&latent), Err(Error::Shape { .. })));
    }
}
