//! The ACE text embedder (scepter's `ACETextEmbedder`): clean each prompt, tokenise it to the
//! fixed `LENGTH`, run the T5 encoder, and keep the rows of the real tokens (the DiT reads only
//! the first `t_len` rows of each context, `t_len` being the attention-mask sum). It also makes
//! the image indicator embeddings: the first-token hidden state of each identifier `{image}`,
//! `{image1}` ... `{image9}`, encoded like any prompt.

use super::clean::Clean;
use super::t5::T5Encoder;
use super::tokenizer::{T5Tokenizer, Tokens};
use crate::Result;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// A cleaned prompt and its tokens, as the encoder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub cleaned: String,
    pub tokens: Tokens,
}

/// Prompt-to-context encoder of ACE.
#[derive(Clone)]
pub struct TextEmbedder {
    tokenizer: T5Tokenizer,
    encoder: T5Encoder,
    clean: Clean,
    device: Device,
}

impl TextEmbedder {
    /// Loads the T5 encoder folder and the tokenizer folder; `length` is `LENGTH` and `clean`
    /// is `CLEAN` of the model YAML's `COND_STAGE_MODEL`.
    pub fn load(
        encoder_dir: &Path,
        tokenizer_dir: &Path,
        length: usize,
        clean: Clean,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let tokenizer = T5Tokenizer::from_dir(tokenizer_dir, length)?;
        let encoder = T5Encoder::load(encoder_dir, device, dtype)?;
        Ok(Self::new(tokenizer, encoder, clean, device))
    }

    /// Assembles an embedder from its parts.
    pub fn new(tokenizer: T5Tokenizer, encoder: T5Encoder, clean: Clean, device: &Device) -> Self {
        TextEmbedder {
            tokenizer,
            encoder,
            clean,
            device: device.clone(),
        }
    }

    /// The fixed token length (`LENGTH`).
    pub fn length(&self) -> usize {
        self.tokenizer.length()
    }

    /// The width of each context row (`d_model` of the T5 encoder).
    pub fn hidden_size(&self) -> usize {
        self.encoder.config().d_model
    }

    /// Cleans and tokenises each prompt (no model run), e.g. for a dry run.
    pub fn tokenize(&self, prompts: &[String]) -> Result<Vec<TokenizedPrompt>> {
        prompts
            .iter()
            .map(|p| {
                let cleaned = self.clean.apply(p);
                let tokens = self.tokenizer.encode(&cleaned)?;
                Ok(TokenizedPrompt { cleaned, tokens })
            })
            .collect()
    }

    /// Per prompt, the T5 hidden states of its real tokens, `[t_len, d_model]` in the encoder's
    /// dtype, `t_len` counting the closing `</s>`.
    pub fn encode(&self, prompts: &[String]) -> Result<Vec<Tensor>> {
        self.tokenize(prompts)?
            .iter()
            .map(|p| self.encode_tokens(&p.tokens))
            .collect()
    }

    /// The hidden states `[t_len, d_model]` of the real tokens of one tokenised prompt.
    pub fn encode_tokens(&self, tokens: &Tokens) -> Result<Tensor> {
        let ids = Tensor::new(tokens.real_ids(), &self.device)?.unsqueeze(0)?;
        Ok(self.encoder.forward(&ids)?.squeeze(0)?)
    }

    /// The image indicator embeddings `[n, d_model]`: row i is the first-token hidden state of
    /// `identifiers[i]`. Computed once per model load.
    pub fn text_position_embeddings(&self, identifiers: &[String]) -> Result<Tensor> {
        let rows = self
            .encode(identifiers)?
            .iter()
            .map(|h| h.narrow(0, 0, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::text::image_identifiers;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ace-tiny")
    }

    fn tiny_embedder() -> TextEmbedder {
        let models = fixtures().join("model/models");
        TextEmbedder::load(
            &models.join("text_encoder/t5-tiny"),
            &models.join("tokenizer/t5-tiny"),
            24,
            Clean::Whitespace,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap()
    }

    /// max |a - b| / max(1, max |b|), the golden tolerance measure.
    fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap();
        diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1.0)
    }

    fn as_u32(t: &Tensor) -> Vec<u32> {
        t.to_dtype(DType::U32).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn matches_reference_tokens_and_hidden_states() {
        let expected = fixtures().join("expected");
        let golden =
            candle_core::safetensors::load(expected.join("text.safetensors"), &Device::Cpu)
                .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(expected.join("text.json")).unwrap())
                .unwrap();
        let texts: Vec<String> = serde_json::from_value(json["texts"].clone()).unwrap();
        let cleaned: Vec<String> = serde_json::from_value(json["cleaned"].clone()).unwrap();
        let embedder = tiny_embedder();
        assert_eq!(embedder.length(), 24);
        assert_eq!(embedder.hidden_size(), 32);

        let tokenized = embedder.tokenize(&texts).unwrap();
        let hidden = embedder.encode(&texts).unwrap();
        let mut worst = 0f32;
        for (i, (p, h)) in tokenized.iter().zip(&hidden).enumerate() {
            assert_eq!(p.cleaned, cleaned[i]);
            assert_eq!(
                p.tokens.ids,
                as_u32(&golden[&format!("text{i}.ids")]),
                "text{i} ids"
            );
            assert_eq!(
                p.tokens.mask,
                as_u32(&golden[&format!("text{i}.mask")]),
                "text{i} mask"
            );
            let t_len = p.tokens.len();
            assert_eq!(h.dims(), &[t_len, 32]);
            let want = golden[&format!("text{i}.hidden")]
                .narrow(0, 0, t_len)
                .unwrap();
            let err = relative_error(h, &want);
            assert!(err <= 1e-4, "text{i}: relative error {err}");
            worst = worst.max(err);
        }
        assert_eq!(tokenized[0].tokens.len(), 24, "the first text is truncated");

        let pos = embedder
            .text_position_embeddings(&image_identifiers())
            .unwrap();
        let err = relative_error(&pos, &golden["text_position_embeddings"]);
        assert!(
            err <= 1e-4,
            "text position embeddings: relative error {err}"
        );
        eprintln!("text: worst hidden-state error {worst:e}, position embeddings {err:e}");
    }

    #[test]
    fn sharded_safetensors_load_like_one_file() {
        let models = fixtures().join("model/models");
        let dir = tempfile::tempdir().unwrap();
        let src = models.join("text_encoder/t5-tiny");
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let tensors =
            candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
        let tokens = T5Tokenizer::from_dir(&models.join("tokenizer/t5-tiny"), 24)
            .unwrap()
            .encode("make it red")
            .unwrap();
        let from_st = T5Encoder::load(&src, &Device::Cpu, DType::F32).unwrap();
        // A sharded safetensors copy with an index must give the same encoder.
        let (a, b): (Vec<_>, Vec<_>) = tensors.iter().partition(|(k, _)| k.contains("block.0"));
        let mut weight_map = serde_json::Map::new();
        for (name, part) in [("a.safetensors", &a), ("b.safetensors", &b)] {
            let map: std::collections::HashMap<String, Tensor> = part
                .iter()
                .map(|(k, v)| ((*k).clone(), (*v).clone()))
                .collect();
            candle_core::safetensors::save(&map, dir.path().join(name)).unwrap();
            for k in map.keys() {
                weight_map.insert(k.clone(), name.into());
            }
        }
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            serde_json::json!({ "weight_map": weight_map }).to_string(),
        )
        .unwrap();
        let sharded = T5Encoder::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
        let ids = Tensor::new(tokens.real_ids(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = from_st.forward(&ids).unwrap();
        assert_eq!(relative_error(&sharded.forward(&ids).unwrap(), &want), 0.0);
        let missing = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), missing.path().join("config.json")).unwrap();
        candle_core::safetensors::save(
            &a.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            missing.path().join("model.safetensors"),
        )
        .unwrap();
        let err = T5Encoder::load(missing.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("T5 encoder"), "{err}");
    }
}
