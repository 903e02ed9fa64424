//! DINO (ViT-S/16 as `facebook/dino-vits16`, a transformers `ViTModel`) image embeddings in
//! candle: the CLS token of the last hidden state after the final layer norm. The embeddings
//! and encoder are candle-transformers' ViT blocks, which follow the same checkpoint names.

use super::clip::stack;
use super::locate::read_config;
use super::preprocess::Preprocess;
use crate::model::checkpoint;
use crate::{Error, Result};
use candle_core::{DType, Device, IndexOp, Module};
use candle_nn::{layer_norm, LayerNorm, VarBuilder};
use candle_transformers::models::vit;
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

impl From<Config> for vit::Config {
    fn from(c: Config) -> Self {
        vit::Config {
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            intermediate_size: c.intermediate_size,
            hidden_act: c.hidden_act,
            layer_norm_eps: c.layer_norm_eps,
            image_size: c.image_size,
            patch_size: c.patch_size,
            num_channels: c.num_channels,
            qkv_bias: c.qkv_bias,
        }
    }
}

/// A loaded DINO ViT.
pub struct Dino {
    config: vit::Config,
    embeddings: vit::Embeddings,
    encoder: vit::Encoder,
    layernorm: LayerNorm,
    device: Device,
}

impl Dino {
    /// Loads `dir` (config.json and weights; a `vit.` prefix, as in classification
    /// checkpoints, is accepted) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Dino> {
        let config: vit::Config = read_config::<Config>(dir)?.into();
        let tensors = checkpoint::load(dir, device)?;
        let prefixed = tensors.contains_key("vit.embeddings.cls_token");
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let vb = if prefixed { vb.pp("vit") } else { vb };
        let model_error = |e: candle_core::Error| Error::Model {
            path: dir.to_path_buf(),
            message: e.to_string(),
        };
        let embeddings =
            vit::Embeddings::new(&config, false, vb.pp("embeddings")).map_err(model_error)?;
        let encoder = vit::Encoder::new(&config, vb.pp("encoder")).map_err(model_error)?;
        let layernorm = layer_norm(
            config.hidden_size,
            config.layer_norm_eps,
            vb.pp("layernorm"),
        )
        .map_err(model_error)?;
        Ok(Dino {
            config,
            embeddings,
            encoder,
            layernorm,
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
        let hidden = self.embeddings.forward(&x, None, false)?;
        let hidden = self.encoder.forward(&hidden)?;
        let cls = self.layernorm.forward(&hidden.i((.., 0))?)?;
        Ok(cls.to_vec2::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::clip::tests::{expected, fixture};

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
