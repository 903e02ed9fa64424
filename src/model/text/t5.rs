//! The T5-v1.1 encoder that turns ACE prompts into context rows: candle-transformers'
//! `T5EncoderModel` (Hugging Face names and `config.json`), loaded from safetensors (one file or
//! shards, memory-mapped) or a torch `pytorch_model.bin`.
//!
//! The reference runs Hugging Face's encoder on the padded sequence with the attention mask.
//! Masked keys get a bias of the most negative float, so their softmax weight is exactly zero
//! and the rows of the real tokens do not depend on the pads; relative position biases depend
//! only on distances. Encoding the real tokens alone therefore gives the same rows, which is
//! what [`T5Encoder::forward`] is given (candle's encoder takes no mask).

use crate::model::checkpoint;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::t5::T5EncoderModel;
use std::path::Path;

pub use candle_transformers::models::t5::Config;

/// A T5 encoder with its configuration.
#[derive(Clone)]
pub struct T5Encoder {
    model: T5EncoderModel,
    config: Config,
}

impl T5Encoder {
    /// Builds the encoder from weights named as in Hugging Face's `T5EncoderModel`
    /// (`shared.weight` or `encoder.embed_tokens.weight`, `encoder.block.N...`,
    /// `encoder.final_layer_norm.weight`).
    pub fn new(config: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(T5Encoder {
            model: T5EncoderModel::load(vb, config)?,
            config: config.clone(),
        })
    }

    /// Loads a Hugging Face T5 encoder folder: `config.json` plus safetensors (maybe sharded
    /// with an index) or torch weights.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = read_config(&dir.join("config.json"))?;
        let files = checkpoint::weight_files(dir)?;
        let vb = if files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "safetensors"))
        {
            // SAFETY: the weight files are mapped read-only and not written while ace runs.
            unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }.map_err(|e| {
                Error::Model {
                    path: dir.to_path_buf(),
                    message: format!("cannot map the T5 weights: {e}"),
                }
            })?
        } else {
            VarBuilder::from_tensors(checkpoint::load(dir, device)?, dtype, device)
        };
        Self::new(&config, vb).map_err(|e| Error::Model {
            path: dir.to_path_buf(),
            message: format!("cannot build the T5 encoder: {e}"),
        })
    }

    /// The model configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Last hidden states `[batch, tokens, d_model]` of token ids `[batch, tokens]` (u32),
    /// every token attending to every other.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        // The encoder keeps no state between calls (its cache is decoder-only); cloning shares
        // the weights and lets `forward` take `&self`.
        Ok(self.model.clone().forward(ids)?)
    }
}

/// Reads a Hugging Face T5 `config.json`.
pub fn read_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: format!("not a T5 config: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::recorder::requested_tensors;

    const XXL_CONFIG: &str = r#"{
        "d_ff": 10240, "d_kv": 64, "d_model": 4096, "decoder_start_token_id": 0,
        "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0, "is_encoder_decoder": true, "layer_norm_epsilon": 1e-06,
        "model_type": "t5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24,
        "output_past": true, "pad_token_id": 0, "relative_attention_num_buckets": 32,
        "tie_word_embeddings": false, "vocab_size": 32128
    }"#;
    use std::collections::BTreeMap;

    #[test]
    fn torch_bin_loads_like_safetensors() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let st = fixtures.join("ace-tiny/model/models/text_encoder/t5-tiny");
        let st = T5Encoder::load(&st, &Device::Cpu, DType::F32).unwrap();
        let bin = T5Encoder::load(&fixtures.join("t5-tiny-bin"), &Device::Cpu, DType::F32).unwrap();
        let ids = Tensor::new(&[[33u32, 25, 3, 7, 81, 1]], &Device::Cpu).unwrap();
        let a = st.forward(&ids).unwrap();
        let b = bin.forward(&ids).unwrap();
        assert_eq!(a.dims(), &[1, 6, 32]);
        let diff: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn bad_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{\"d_model\": 4}").unwrap();
        let err = T5Encoder::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("not a T5 config"),
            "{err}"
        );
    }

    #[test]
    fn xxl_encoder_asks_for_the_release_tensors() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/full-size-keys.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let release: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(json["tensors"]["text_encoder/t5-v1_1-xxl"].clone()).unwrap();
        let config: Config = serde_json::from_str(XXL_CONFIG).unwrap();
        let known = release.keys().cloned().collect();
        let asked: BTreeMap<String, Vec<usize>> = requested_tensors(Some(known), |vb| {
            let encoder = T5Encoder::new(&config, vb)?;
            assert_eq!(encoder.config().d_model, 4096);
            Ok::<_, candle_core::Error>(())
        })
        .unwrap()
        .into_iter()
        .collect();

        // `encoder.embed_tokens.weight` is the tied copy of `shared.weight` that Hugging Face
        // writes; the encoder reads the shared one.
        let mut expected = release.clone();
        let alias = expected.remove("encoder.embed_tokens.weight").unwrap();
        assert_eq!(Some(&alias), release.get("shared.weight"));
        assert_eq!(asked, expected);
        // The release count includes the tied copy.
        let params: usize = asked
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum::<usize>()
            + alias.iter().product::<usize>();
        assert_eq!(
            Some(params as u64),
            json["param_counts"]["text_encoder/t5-v1_1-xxl"].as_u64()
        );
    }
}
