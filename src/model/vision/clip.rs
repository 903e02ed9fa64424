//! CLIP (ViT-B/32 as `openai/clip-vit-base-patch32`) image and text embeddings in candle, from
//! the Hugging Face layout. The image tower is the crate's image transformer ([`super::vit`]),
//! the text tower candle-transformers' `ClipTextTransformer`; the text embedding is pooled as transformers does: at the first
//! end-of-text token, or at the largest token id for configs whose `eos_token_id` is 2 (the
//! original checkpoints, where end-of-text is the largest id).

use super::locate::read_config;
use super::preprocess::Preprocess;
use super::vit::{ImageEncoder, Naming, VitConfig};
use crate::kernels::Activation;
use crate::model::checkpoint;
use crate::{Error, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{linear_no_bias, Linear, VarBuilder};
use candle_transformers::models::clip::text_model;
use std::path::{Path, PathBuf};

/// The parts of `config.json` the embeddings need; absent fields take transformers' defaults
/// (`CLIPConfig`, `CLIPTextConfig`, `CLIPVisionConfig`: the ViT-B/32 sizes), as configs saved
/// as a diff against those defaults leave them out.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Config {
    #[serde(default = "d512")]
    pub projection_dim: usize,
    #[serde(default)]
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: VisionConfig,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
    pub hidden_act: String,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            max_position_embeddings: 77,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            eos_token_id: 2,
            pad_token_id: 1,
            hidden_act: "quick_gelu".into(),
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

fn d512() -> usize {
    512
}

/// A loaded CLIP model with its tokenizer.
pub struct Clip {
    config: Config,
    vision: ImageEncoder,
    text: text_model::ClipTextTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    tokenizer: tokenizers::Tokenizer,
    device: Device,
}

impl Clip {
    /// Loads `dir` (config.json, weights, tokenizer.json) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Clip> {
        let config: Config = read_config(dir)?;
        for act in [
            &config.text_config.hidden_act,
            &config.vision_config.hidden_act,
        ] {
            if act != "quick_gelu" {
                return Err(Error::Config {
                    path: dir.join("config.json"),
                    message: format!("hidden_act {act:?} is not supported (only quick_gelu)"),
                });
            }
        }
        let tensors = checkpoint::load(dir, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model_error = |e: candle_core::Error| Error::Model {
            path: dir.to_path_buf(),
            message: e.to_string(),
        };
        let t = &config.text_config;
        let text_cfg = text_model::ClipTextConfig {
            vocab_size: t.vocab_size,
            embed_dim: t.hidden_size,
            activation: text_model::Activation::QuickGelu,
            intermediate_size: t.intermediate_size,
            max_position_embeddings: t.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            projection_dim: config.projection_dim,
        };
        let v = &config.vision_config;
        let vision_cfg = VitConfig {
            hidden_size: v.hidden_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            intermediate_size: v.intermediate_size,
            image_size: v.image_size,
            patch_size: v.patch_size,
            num_channels: v.num_channels,
            layer_norm_eps: v.layer_norm_eps,
            activation: Activation::QuickGelu,
        };
        let text = text_model::ClipTextTransformer::new(vb.pp("text_model"), &text_cfg)
            .map_err(model_error)?;
        let vision = ImageEncoder::new(&vision_cfg, Naming::Clip, vb.pp("vision_model"))
            .map_err(model_error)?;
        let visual_projection = linear_no_bias(
            v.hidden_size,
            config.projection_dim,
            vb.pp("visual_projection"),
        )
        .map_err(model_error)?;
        let text_projection = linear_no_bias(
            t.hidden_size,
            config.projection_dim,
            vb.pp("text_projection"),
        )
        .map_err(model_error)?;
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), t.max_position_embeddings)?;
        Ok(Clip {
            config,
            vision,
            text,
            visual_projection,
            text_projection,
            tokenizer,
            device: device.clone(),
        })
    }

    /// The image preprocessing this model expects.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess::clip(self.config.vision_config.image_size as u32)
    }

    /// Projected image embeddings (one row per image) of preprocessed CHW images.
    pub fn embed_images(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.config.vision_config.image_size;
        let x = stack(images, s, &self.device)?;
        let pooled = self.vision.forward(&x)?;
        Ok(self.visual_projection.forward(&pooled)?.to_vec2::<f32>()?)
    }

    /// The token ids of `text` (with start and end tokens, truncated to the context length).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::invalid("caption", format!("{text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Projected text embeddings (one row per text).
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<_>>()?;
        let len = ids.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let t = &self.config.text_config;
        let mut flat = Vec::with_capacity(ids.len() * len);
        for row in &ids {
            flat.extend(row.iter().copied());
            flat.extend(std::iter::repeat_n(t.pad_token_id, len - row.len()));
        }
        let input = Tensor::from_vec(flat, (ids.len(), len), &self.device)?;
        // The causal mask keeps padding after a text's end from reaching its pooled token.
        let hidden = self.text.forward_with_mask(&input, usize::MAX)?;
        let pooled: Vec<Tensor> = ids
            .iter()
            .enumerate()
            .map(|(b, row)| hidden.i((b, pooled_position(row, t.eos_token_id))))
            .collect::<candle_core::Result<_>>()?;
        let pooled = Tensor::stack(&pooled, 0)?;
        Ok(self.text_projection.forward(&pooled)?.to_vec2::<f32>()?)
    }
}

/// Where transformers pools a CLIP text: the first end-of-text token, or the largest id when
/// `eos_token_id` is 2 (legacy configs).
pub fn pooled_position(ids: &[u32], eos_token_id: u32) -> usize {
    let target = if eos_token_id == 2 {
        ids.iter().copied().max().unwrap_or(0)
    } else {
        eos_token_id
    };
    // torch's argmax returns the first of equal maxima, and 0 when there is no match.
    ids.iter().position(|&v| v == target).unwrap_or(0)
}

/// Loads tokenizer.json with truncation to the model's context length.
fn load_tokenizer(path: &PathBuf, max_len: usize) -> Result<tokenizers::Tokenizer> {
    let bad = |message: String| Error::Model {
        path: path.clone(),
        message,
    };
    let mut tok = tokenizers::Tokenizer::from_file(path).map_err(|e| bad(e.to_string()))?;
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map_err(|e| bad(e.to_string()))?;
    tok.with_padding(None);
    Ok(tok)
}

/// A batch tensor (n, 3, s, s) of preprocessed CHW images.
pub(crate) fn stack(images: &[Vec<f32>], s: usize, device: &Device) -> Result<Tensor> {
    let plane = 3 * s * s;
    if let Some(bad) = images.iter().find(|i| i.len() != plane) {
        return Err(Error::Shape {
            name: "pixel_values".into(),
            expected: vec![3, s, s],
            found: vec![bad.len()],
        });
    }
    let flat: Vec<f32> = images.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (images.len(), 3, s, s), device)?)
}

#[cfg(test)]
pub(crate) mod tests {
    //! The tiny CLIP of tests/fixtures/eval-tiny reproduces transformers' token ids and
    //! embeddings (expected.safetensors).
    use super::*;
    use crate::model::vision::preprocess::Preprocess;

    pub(crate) fn expected(name: &str) -> Vec<f32> {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval-tiny");
        let bytes = std::fs::read(root.join("expected.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    pub(crate) fn fixture(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/eval-tiny")
            .join(path)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn absent_config_fields_take_the_transformers_defaults() {
        let c: Config =
            serde_json::from_str(r#"{"text_config": {"hidden_size": 32}, "projection_dim": 24}"#)
                .unwrap();
        assert_eq!(
            (c.text_config.hidden_size, c.text_config.vocab_size),
            (32, 49408)
        );
        assert_eq!(
            (c.vision_config.image_size, c.vision_config.patch_size),
            (224, 32)
        );
        assert_eq!((c.projection_dim, c.text_config.eos_token_id), (24, 2));
    }

    #[test]
    fn pooling_follows_transformers() {
        assert_eq!(pooled_position(&[0, 5, 9, 1, 1], 1), 3);
        assert_eq!(pooled_position(&[49406, 320, 49407, 0], 2), 2);
        assert_eq!(pooled_position(&[0, 5], 1), 0);
    }

    #[test]
    fn tiny_clip_matches_transformers() {
        let clip = Clip::load(&fixture("clip-tiny"), &Device::Cpu).unwrap();
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
        for i in 0..3 {
            let caption = cases["samples"][i]["output_caption"].as_str().unwrap();
            let want_ids: Vec<u32> = cases["metrics"][i]["out_cap_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(clip.tokenize(caption).unwrap(), want_ids);
            let img = image::open(fixture(&format!("data/{i}_gen.png")))
                .unwrap()
                .to_rgb8();
            let pixels = Preprocess::clip(32).apply(&img);
            let got = clip.embed_images(&[pixels]).unwrap();
            let d = max_diff(&got[0], &expected(&format!("{i}.clip_image_embed_gen")));
            assert!(d < 1e-4, "image {i}: {d}");
            // Batched with a longer text, so padding is exercised.
            let texts = [caption, "a much longer caption that pads the other one out"];
            let got = clip.embed_texts(&texts).unwrap();
            let d = max_diff(&got[0], &expected(&format!("{i}.clip_text_embed_out")));
            assert!(d < 1e-4, "text {i}: {d}");
        }
    }
}
