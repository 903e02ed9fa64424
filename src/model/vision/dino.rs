//! DINO (ViT-S/16 as `facebook/dino-vits16`, a transformers `ViTModel`) image embeddings in
//! candle: the CLS token of the last hidden state after the final layer norm, from the
//! crate's image transformer ([`super::vit`]).

use super::clip::stack;
use super::locate::read_config;
use super::preprocess::Preprocess;
use super::vit::{ImageEncoder, Naming, VitConfig};
use crate::kernels::Activation;
use crate::model::checkpoint;
use crate::{Error, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::Path;

/// `config.json` of a transformers `ViTModel`; absent fields take `ViTConfig`'s defaults, as
/// configs saved as a diff against them leave them out.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: candle_nn::Activation,
    pub layer_norm_eps: f64,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: candle_nn::Activation::Gelu,
            layer_norm_eps: 1e-12,
            image_size: 224,
            patch_size: 16,
            num_channels: 3,
            qkv_bias: true,
        }
    }
}

impl Config {
    fn vit(&self, dir: &Path) -> Result<VitConfig> {
        let activation = match self.hidden_act {
            candle_nn::Activation::Gelu => Activation::GeluErf,
            candle_nn::Activation::NewGelu | candle_nn::Activation::GeluPytorchTanh => {
                Activation::GeluTanh
            }
            other => {
                return Err(Error::Config {
                    path: dir.join("config.json"),
                    message: format!("hidden_act {other:?} is not supported"),
                })
            }
        };
        Ok(VitConfig {
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            image_size: self.image_size,
            patch_size: self.patch_size,
            num_channels: self.num_channels,
            layer_norm_eps: self.layer_norm_eps,
            activation,
        })
    }
}

/// A loaded DINO ViT.
pub struct Dino {
    config: VitConfig,
    encoder: ImageEncoder,
    device: Device,
}

impl Dino {
    /// Loads `dir` (config.json and weights; a `vit.` prefix, as in classification
    /// checkpoints, is accepted) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Dino> {
        let config = read_config::<Config>(dir)?.vit(dir)?;
        let tensors = checkpoint::load(dir, device)?;
        let prefixed = tensors.contains_key("vit.embeddings.cls_token");
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let vb = if prefixed { vb.pp("vit") } else { vb };
        let model_error = |e: candle_core::Error| Error::Model {
            path: dir.to_path_buf(),
            message: e.to_string(),
        };
        let encoder = ImageEncoder::new(&config, Naming::Vit, vb).map_err(model_error)?;
        Ok(Dino {
            config,
            encoder,
            device: device.clone(),
        })
    }

    /// The image preprocessing this model expects.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess::dino(self.config.image_size as u32)
    }

    /// CLS embeddings (one row per image) of preprocessed CHW images.
    pub fn embed_images(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = stack(images, self.config.image_size, &self.device)?;
        Ok(self.encoder.forward(&x)?.to_vec2::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vision::clip::tests::{expected, fixture};

    #[test]
    fn tiny_dino_matches_transformers() {
        let dino = Dino::load(&fixture("dino-tiny"), &Device::Cpu).unwrap();
        assert_eq!(dino.preprocess().short_side, 36);
        let pixels: Vec<Vec<f32>> = (0..3)
            .map(|i| {
                let img = image::open(fixture(&format!("data/{i}_gen.png")))
                    .unwrap()
                    .to_rgb8();
                dino.preprocess().apply(&img)
            })
            .collect();
        let got = dino.embed_images(&pixels).unwrap();
        for (i, g) in got.iter().enumerate() {
            let want = expected(&format!("{i}.dino_cls_gen"));
            let d = g
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "image {i}: {d}");
        }
    }
}
