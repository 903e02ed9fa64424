//! The ACE text embedder (scepter's `ACETextEmbedder`): clean each prompt, tokenise it to the
//! fixed `LENGTH`, run the T5 encoder, and keep the rows of the real tokens (the DiT reads only
//! the first `t_len` rows of each context, `t_len` being the attention-mask sum). It also makes
//! the image indicator embeddings: the first-token hidden state of each identifier `{image}`,
//! `{image1}` ... `{image9}`, encoded like any prompt.
//!
//! The embedder holds the tokenizer and where the encoder is, not the encoder itself: each
//! [`TextEmbedder::encode`] looks its prompts up in the prompt cache, opens the T5 only for those
//! it lacks, encodes them all in one pass over the weights and lets go of the weights again. A
//! run encodes everything it needs first, before the DiT is loaded, so that the two never take
//! memory at the same time.

use super::cache::{PromptCache, PromptKey};
use super::clean::Clean;
use super::t5::{self, T5Encoder};
use super::tokenizer::{T5Tokenizer, Tokens};
use crate::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// A cleaned prompt and its tokens, as the encoder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub cleaned: String,
    pub tokens: Tokens,
}

/// What the embedder did so far: of the distinct prompts (token sequences) it was asked for,
/// how many came from the cache and how many the encoder computed, in how many passes over
/// its weights, and the seconds those passes took.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TextReport {
    pub cached: usize,
    pub encoded: usize,
    pub encoder_passes: usize,
    pub encoder_seconds: f64,
}

/// Prompt-to-context encoder of ACE.
pub struct TextEmbedder {
    tokenizer: T5Tokenizer,
    clean: Clean,
    encoder_dir: PathBuf,
    dtype: DType,
    /// Whether the T5's linear layers multiply in bf16 on the CPU (`--dtype bf16`).
    bf16_products: bool,
    device: Device,
    cache: Option<PromptCache>,
    identity: OnceLock<Option<String>>,
    /// States the disk cache does not hold (no cache, or a write that failed).
    memory: Mutex<HashMap<Vec<u32>, Tensor>>,
    report: Mutex<TextReport>,
    /// The token sequences counted in the report already.
    counted: Mutex<std::collections::HashSet<Vec<u32>>>,
}

impl TextEmbedder {
    /// An embedder over the T5 encoder folder and the tokenizer folder; `length` is `LENGTH` and
    /// `clean` is `CLEAN` of the model YAML's `COND_STAGE_MODEL`, `dtype` the dtype the
    /// weights are used in (`T5_DTYPE`). Only the tokenizer is read here. With `cache`,
    /// embeddings are looked up there first and stored there once computed.
    pub fn new(
        encoder_dir: &Path,
        tokenizer_dir: &Path,
        length: usize,
        clean: Clean,
        device: &Device,
        dtype: DType,
        cache: Option<PromptCache>,
    ) -> Result<Self> {
        Ok(TextEmbedder {
            tokenizer: T5Tokenizer::from_dir(tokenizer_dir, length)?,
            clean,
            encoder_dir: encoder_dir.to_path_buf(),
            dtype,
            bf16_products: false,
            device: device.clone(),
            cache,
            identity: OnceLock::new(),
            memory: Mutex::default(),
            report: Mutex::default(),
            counted: Mutex::default(),
        })
    }

    /// With `on`, the T5 runs its linear layers' products in bf16 on the CPU (`--dtype bf16`;
    /// [`T5Encoder::with_bf16_products`]), its states cached apart from those of f32 products.
    pub fn with_bf16_products(mut self, on: bool) -> Self {
        self.bf16_products = on && self.device.is_cpu();
        self
    }

    /// The fixed token length (`LENGTH`).
    pub fn length(&self) -> usize {
        self.tokenizer.length()
    }

    /// The width of each context row (`d_model` of the T5 encoder, from its `config.json`).
    pub fn hidden_size(&self) -> Result<usize> {
        Ok(t5::read_config(&self.encoder_dir.join("config.json"))?.d_model)
    }

    /// The dtype the weights are used in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// What was done so far.
    pub fn report(&self) -> TextReport {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
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

    /// The dtype the states come out in: f32 on the CPU, the weight dtype elsewhere.
    fn states_dtype(&self) -> DType {
        if self.device.is_cpu() {
            DType::F32
        } else {
            self.dtype
        }
    }

    /// The encoder's identity for cache keys, computed once; `None` (no caching) when it
    /// cannot be computed.
    fn identity(&self) -> Option<&str> {
        self.identity
            .get_or_init(|| {
                let cache = self.cache.as_ref()?;
                let files = crate::model::checkpoint::weight_files(&self.encoder_dir).ok()?;
                match cache.identity(&files) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        log::warn!("prompt cache not used: {e}");
                        None
                    }
                }
            })
            .as_deref()
    }

    fn key(&self, ids: &[u32]) -> Option<PromptKey> {
        Some(PromptKey {
            encoder: self.identity()?.to_string(),
            length: self.length(),
            clean: format!("{:?}", self.clean).to_lowercase(),
            ids: ids.to_vec(),
            weights: self.dtype.as_str().to_string(),
            states: self.states_dtype().as_str().to_string(),
            products: self.bf16_products.then(|| DType::BF16.as_str().to_string()),
        })
    }

    /// States already known for `ids`: in memory, else in the cache.
    fn known(&self, ids: &[u32]) -> Option<Tensor> {
        if let Some(t) = self.memory.lock().ok()?.get(ids) {
            return Some(t.clone());
        }
        let cache = self.cache.as_ref()?;
        cache.get(&self.key(ids)?, &self.device)
    }

    /// Keeps computed states: in the cache, else (no cache, or it could not be written) in
    /// memory.
    fn keep(&self, ids: &[u32], states: &Tensor) {
        if let (Some(cache), Some(key)) = (&self.cache, self.key(ids)) {
            match cache.put(&key, states) {
                Ok(()) => return,
                Err(e) => log::warn!("prompt cache: entry not written ({e}); kept in memory"),
            }
        }
        if let Ok(mut m) = self.memory.lock() {
            m.insert(ids.to_vec(), states.clone());
        }
    }

    /// Per prompt, the T5 hidden states of its real tokens, `[t_len, d_model]` (f32 on the
    /// CPU), `t_len` counting the closing `</s>`. Prompts the cache lacks are encoded together
    /// in one pass over the encoder's weights.
    pub fn encode(&self, prompts: &[String]) -> Result<Vec<Tensor>> {
        let tokenized = self.tokenize(prompts)?;
        let mut found: HashMap<Vec<u32>, Tensor> = HashMap::new();
        let mut missing: Vec<Vec<u32>> = Vec::new();
        let mut cached = 0;
        let mut counted = self.counted.lock().ok();
        for p in &tokenized {
            let ids = p.tokens.real_ids();
            if found.contains_key(ids) || missing.iter().any(|m| m == ids) {
                continue;
            }
            match self.known(ids) {
                Some(t) => {
                    if counted.as_mut().is_some_and(|c| c.insert(ids.to_vec())) {
                        cached += 1;
                    }
                    found.insert(ids.to_vec(), t);
                }
                None => missing.push(ids.to_vec()),
            }
        }
        if let Some(c) = counted.as_mut() {
            c.extend(missing.iter().cloned());
        }
        drop(counted);
        let start = Instant::now();
        if !missing.is_empty() {
            let encoder = T5Encoder::open(&self.encoder_dir, &self.device, self.dtype)?
                .with_bf16_products(self.bf16_products)?;
            let sequences: Vec<&[u32]> = missing.iter().map(Vec::as_slice).collect();
            let states = encoder.encode(&sequences)?;
            drop(encoder);
            crate::memory::release_freed();
            for (ids, s) in missing.iter().zip(states) {
                self.keep(ids, &s);
                found.insert(ids.clone(), s);
            }
        }
        if let Ok(mut r) = self.report.lock() {
            r.cached += cached;
            if !missing.is_empty() {
                r.encoded += missing.len();
                r.encoder_passes += 1;
                r.encoder_seconds += start.elapsed().as_secs_f64();
            }
        }
        Ok(tokenized
            .iter()
            .map(|p| found[p.tokens.real_ids()].clone())
            .collect())
    }

    /// The image indicator embeddings `[n, d_model]`: row i is the first-token hidden state of
    /// `identifiers[i]`.
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

    fn embedder(encoder: &Path, dtype: DType, cache: Option<PromptCache>) -> TextEmbedder {
        let models = fixtures().join("model/models");
        TextEmbedder::new(
            encoder,
            &models.join("tokenizer/t5-tiny"),
            24,
            Clean::Whitespace,
            &Device::Cpu,
            dtype,
            cache,
        )
        .unwrap()
    }

    fn tiny_encoder() -> PathBuf {
        fixtures().join("model/models/text_encoder/t5-tiny")
    }

    fn tiny_embedder() -> TextEmbedder {
        embedder(&tiny_encoder(), DType::F32, None)
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
        assert_eq!(embedder.hidden_size().unwrap(), 32);

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
        let from_st = T5Encoder::open(&src, &Device::Cpu, DType::F32).unwrap();
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
        let sharded = T5Encoder::open(dir.path(), &Device::Cpu, DType::F32).unwrap();
        let ids = [tokens.real_ids()];
        let want = &from_st.encode(&ids).unwrap()[0];
        assert_eq!(relative_error(&sharded.encode(&ids).unwrap()[0], want), 0.0);
        let missing = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), missing.path().join("config.json")).unwrap();
        candle_core::safetensors::save(
            &a.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            missing.path().join("model.safetensors"),
        )
        .unwrap();
        let err = T5Encoder::open(missing.path(), &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("T5 encoder"), "{err}");
    }

    /// The golden texts and their reference hidden states (real rows only).
    fn golden_texts() -> (Vec<String>, Vec<Tensor>) {
        let expected = fixtures().join("expected");
        let golden =
            candle_core::safetensors::load(expected.join("text.safetensors"), &Device::Cpu)
                .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(expected.join("text.json")).unwrap())
                .unwrap();
        let texts: Vec<String> = serde_json::from_value(json["texts"].clone()).unwrap();
        let want = (0..texts.len())
            .map(|i| {
                let mask = as_u32(&golden[&format!("text{i}.mask")]);
                let n = mask.iter().filter(|&&m| m != 0).count();
                golden[&format!("text{i}.hidden")].narrow(0, 0, n).unwrap()
            })
            .collect();
        (texts, want)
    }

    /// Of bf16 weights against the golden states, relative to the largest state. The
    /// reference's T5_DTYPE bfloat16 rounds every weight to bf16 (a relative change of at most
    /// 2^-9). The tiny random encoder amplifies the rounding: its unscaled attention logits
    /// have a spread of about 8, so the softmax is sharp. Measured: 0.108 of the largest state
    /// with f32 products (0.024-0.055 on average against states of mean 0.8).
    const BF16_TOLERANCE: f32 = 0.15;

    #[test]
    fn bf16_weights_stay_within_their_tolerance_of_the_golden_states() {
        // The products here still run in f32, and give exactly what f32 weights stored as bf16
        // give.
        const TOLERANCE: f32 = BF16_TOLERANCE;
        let (texts, want) = golden_texts();
        let bf16 = embedder(&tiny_encoder(), DType::BF16, None);
        let mut worst = 0f32;
        for (got, want) in bf16.encode(&texts).unwrap().iter().zip(&want) {
            assert_eq!(got.dtype(), DType::F32);
            worst = worst.max(relative_error(got, want));
        }
        assert!(worst <= TOLERANCE, "bf16 T5: relative error {worst}");
        assert!(worst > 0.0, "bf16 weights must change the states a little");
        eprintln!("text: bf16 weights, worst relative error {worst:e}");
    }

    #[test]
    fn bf16_products_stay_within_the_bf16_tolerance_and_are_cached_apart() {
        if let Err(why) = crate::kernels::cpu_bf16_support() {
            eprintln!("{why}: bf16 products not tested");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = PromptCache::open(dir.path()).unwrap();
        let (texts, want) = golden_texts();
        let f32_products = embedder(&tiny_encoder(), DType::BF16, Some(cache.clone()))
            .encode(&texts)
            .unwrap();
        let bf16 =
            embedder(&tiny_encoder(), DType::BF16, Some(cache.clone())).with_bf16_products(true);
        let states = bf16.encode(&texts).unwrap();
        assert_eq!(
            bf16.report().cached,
            0,
            "states of f32 products are not served"
        );
        let (mut worst, mut moved) = (0f32, 0f32);
        for ((got, want), wide) in states.iter().zip(&want).zip(&f32_products) {
            assert_eq!(got.dtype(), DType::F32);
            worst = worst.max(relative_error(got, want));
            moved = moved.max(relative_error(got, wide));
        }
        eprintln!(
            "text: bf16 products, worst relative error {worst:e} ({moved:e} from f32 products)"
        );
        assert!(
            worst <= BF16_TOLERANCE,
            "bf16 products: relative error {worst}"
        );
        assert!(
            moved > 0.0,
            "rounding the inputs to bf16 must change the states a little"
        );
        let again = embedder(&tiny_encoder(), DType::BF16, Some(cache)).with_bf16_products(true);
        for (a, b) in again.encode(&texts).unwrap().iter().zip(&states) {
            assert_eq!(relative_error(a, b), 0.0);
        }
        assert_eq!(again.report().cached, texts.len());
    }

    #[test]
    fn cached_states_equal_computed_ones_and_follow_the_weights() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PromptCache::open(dir.path()).unwrap();
        let (texts, _) = golden_texts();
        let uncached = tiny_embedder().encode(&texts).unwrap();
        let first = embedder(&tiny_encoder(), DType::F32, Some(cache.clone()));
        let got = first.encode(&texts).unwrap();
        assert_eq!(first.report().encoded, texts.len());
        assert_eq!(first.report().encoder_passes, 1);
        let again = first.encode(&texts).unwrap();
        assert_eq!(first.report().cached, 0, "counted once, as encoded");
        assert_eq!(
            first.report().encoder_passes,
            1,
            "all cached: no second pass"
        );
        let warm = embedder(&tiny_encoder(), DType::F32, Some(cache.clone()));
        warm.encode(&texts).unwrap();
        assert_eq!(
            (warm.report().cached, warm.report().encoded),
            (texts.len(), 0)
        );
        for ((a, b), c) in got.iter().zip(&again).zip(&uncached) {
            assert_eq!(relative_error(a, c), 0.0);
            assert_eq!(relative_error(b, c), 0.0);
        }
        // Every entry corrupted: ignored, recomputed, equal again.
        for e in std::fs::read_dir(cache.dir()).unwrap() {
            let p = e.unwrap().path();
            let mut bytes = std::fs::read(&p).unwrap();
            let n = bytes.len();
            bytes[n - 3] ^= 0x11;
            std::fs::write(&p, &bytes).unwrap();
        }
        let fresh = embedder(&tiny_encoder(), DType::F32, Some(cache.clone()));
        for (a, c) in fresh.encode(&texts).unwrap().iter().zip(&uncached) {
            assert_eq!(relative_error(a, c), 0.0);
        }
        assert_eq!(fresh.report().encoded, texts.len());
        // Other weights (a copy with one tensor changed) are another encoder: nothing cached
        // is served for them.
        let other = tempfile::tempdir().unwrap();
        std::fs::copy(
            tiny_encoder().join("config.json"),
            other.path().join("config.json"),
        )
        .unwrap();
        let mut tensors =
            candle_core::safetensors::load(tiny_encoder().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let w = tensors.get_mut("encoder.final_layer_norm.weight").unwrap();
        *w = (&*w * 2.0).unwrap();
        candle_core::safetensors::save(&tensors, other.path().join("model.safetensors")).unwrap();
        let changed = embedder(other.path(), DType::F32, Some(cache.clone()));
        let states = changed.encode(&texts).unwrap();
        assert_eq!(changed.report().cached, 0);
        let expected = embedder(other.path(), DType::F32, None)
            .encode(&texts)
            .unwrap();
        for (a, c) in states.iter().zip(&expected) {
            assert_eq!(relative_error(a, c), 0.0);
        }
        // bf16 weights are other entries too.
        let bf16 = embedder(&tiny_encoder(), DType::BF16, Some(cache));
        bf16.encode(&texts).unwrap();
        assert_eq!(bf16.report().cached, 0);
    }

    #[test]
    fn an_entry_that_cannot_be_written_is_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PromptCache::open(dir.path()).unwrap();
        // The entries' folder turns into a file: every write fails, as on a full disk.
        std::fs::remove_dir_all(cache.dir()).unwrap();
        std::fs::write(cache.dir(), b"").unwrap();
        let (texts, _) = golden_texts();
        let e = embedder(&tiny_encoder(), DType::F32, Some(cache));
        let first = e.encode(&texts).unwrap();
        let again = e.encode(&texts).unwrap();
        assert_eq!(
            e.report().encoder_passes,
            1,
            "the second call is served from memory"
        );
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(relative_error(a, b), 0.0);
        }
    }
}
