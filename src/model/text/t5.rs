//! The T5-v1.1 encoder that turns ACE prompts into context rows (Hugging Face's
//! `T5EncoderModel`: `config.json`, weights in safetensors, one file or shards, or a torch
//! `pytorch_model.bin`), streamed through its weights.
//!
//! T5-XXL is 4.7 billion parameters, 9 GB in the bf16 the release stores and its config asks
//! for (`T5_DTYPE`), and ACE runs it only to encode a handful of prompts per image. So the
//! weights stay where the file holds them ([`MappedTensor`]): all prompts of a run go through
//! the layers together, one layer at a time; a layer's weights become compute tensors only
//! while it runs (f32 on the CPU, widened from the stored bf16; the weight dtype itself on a
//! GPU) and are handed back to the page cache afterwards, while the next layer is read ahead.
//! The process never holds more than about one layer of the encoder.
//!
//! The reference runs the encoder on the padded sequence with the attention mask. Masked keys
//! get a bias of the most negative float, so their softmax weight is exactly zero and the rows
//! of the real tokens do not depend on the pads; relative position biases depend only on
//! distances. Encoding the real tokens alone therefore gives the same rows, which is what
//! [`T5Encoder::encode`] is given.

use crate::kernels::{self, Activation};
use crate::model::mapped::{self, MappedTensor};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub use candle_transformers::models::t5::Config;

/// The feed-forward half of a block: gated (`wi_0`, `wi_1`, `wo`; T5 v1.1) or not (`wi`, `wo`).
#[derive(Debug)]
enum FeedForward {
    Gated {
        wi_0: MappedTensor,
        wi_1: MappedTensor,
        wo: MappedTensor,
    },
    Plain {
        wi: MappedTensor,
        wo: MappedTensor,
    },
}

/// One encoder block: self-attention, then the feed-forward layer, each after its RMSNorm.
#[derive(Debug)]
struct Block {
    attention_norm: MappedTensor,
    q: MappedTensor,
    k: MappedTensor,
    v: MappedTensor,
    o: MappedTensor,
    ff_norm: MappedTensor,
    ff: FeedForward,
}

impl Block {
    fn tensors(&self) -> Vec<&MappedTensor> {
        let mut v = vec![
            &self.attention_norm,
            &self.q,
            &self.k,
            &self.v,
            &self.o,
            &self.ff_norm,
        ];
        match &self.ff {
            FeedForward::Gated { wi_0, wi_1, wo } => v.extend([wi_0, wi_1, wo]),
            FeedForward::Plain { wi, wo } => v.extend([wi, wo]),
        }
        v
    }
}

/// A T5 encoder over its mapped weights.
#[derive(Debug)]
pub struct T5Encoder {
    config: Config,
    embedding: MappedTensor,
    relative_attention_bias: MappedTensor,
    blocks: Vec<Block>,
    final_layer_norm: MappedTensor,
    /// The dtype the weights are used in (`T5_DTYPE`): weights stored wider are rounded to it.
    dtype: DType,
    /// Whether the linear layers multiply in bf16 on the CPU ([`T5Encoder::with_bf16_products`]).
    bf16_products: bool,
    device: Device,
}

/// The tensor names of block `i` under `encoder.block.{i}.`.
fn block_names(config: &Config, i: usize) -> Vec<(String, Vec<usize>)> {
    let (d, inner, ff) = (config.d_model, config.num_heads * config.d_kv, config.d_ff);
    let p = format!("encoder.block.{i}.layer");
    let mut names = vec![
        (format!("{p}.0.layer_norm.weight"), vec![d]),
        (format!("{p}.0.SelfAttention.q.weight"), vec![inner, d]),
        (format!("{p}.0.SelfAttention.k.weight"), vec![inner, d]),
        (format!("{p}.0.SelfAttention.v.weight"), vec![inner, d]),
        (format!("{p}.0.SelfAttention.o.weight"), vec![d, inner]),
        (format!("{p}.1.layer_norm.weight"), vec![d]),
    ];
    if config.feed_forward_proj.gated {
        names.push((format!("{p}.1.DenseReluDense.wi_0.weight"), vec![ff, d]));
        names.push((format!("{p}.1.DenseReluDense.wi_1.weight"), vec![ff, d]));
    } else {
        names.push((format!("{p}.1.DenseReluDense.wi.weight"), vec![ff, d]));
    }
    names.push((format!("{p}.1.DenseReluDense.wo.weight"), vec![d, ff]));
    if i == 0 {
        names.push((
            format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
            vec![config.relative_attention_num_buckets, config.num_heads],
        ));
    }
    names
}

/// Every tensor the encoder reads, with its shape, in the Hugging Face names (the token
/// embedding as `shared.weight`; `encoder.embed_tokens.weight`, its tied copy, is read when
/// `shared.weight` is absent).
pub fn tensor_specs(config: &Config) -> Vec<(String, Vec<usize>)> {
    let mut specs = vec![(
        "shared.weight".to_string(),
        vec![config.vocab_size, config.d_model],
    )];
    for i in 0..config.num_layers {
        specs.extend(block_names(config, i));
    }
    specs.push((
        "encoder.final_layer_norm.weight".to_string(),
        vec![config.d_model],
    ));
    specs
}

impl T5Encoder {
    /// Opens a Hugging Face T5 encoder folder (`config.json` plus weights) without reading the
    /// weights; they are used in `dtype` on `device`.
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = read_config(&dir.join("config.json"))?;
        let mut tensors: HashMap<String, MappedTensor> = mapped::open(dir)?
            .into_iter()
            .map(|t| (t.name().to_string(), t))
            .collect();
        if !tensors.contains_key("shared.weight") {
            if let Some(t) = tensors.remove("encoder.embed_tokens.weight") {
                tensors.insert("shared.weight".to_string(), t);
            }
        }
        let mut take = |name: &str, shape: &[usize]| -> Result<MappedTensor> {
            let bad = |message: String| Error::Model {
                path: dir.to_path_buf(),
                message: format!("cannot build the T5 encoder: tensor {name}: {message}"),
            };
            let t = tensors.remove(name).ok_or_else(|| bad("missing".into()))?;
            if t.shape() != shape {
                return Err(bad(format!(
                    "expected shape {shape:?}, found {:?}",
                    t.shape()
                )));
            }
            Ok(t)
        };
        let specs = tensor_specs(&config);
        let shape_of = |name: &str| -> Vec<usize> {
            specs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
                .unwrap_or_default()
        };
        let embedding = take("shared.weight", &shape_of("shared.weight"))?;
        let mut relative_attention_bias = None;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let names = block_names(&config, i);
            let mut get = |suffix: &str| -> Result<MappedTensor> {
                let (name, shape) = names
                    .iter()
                    .find(|(n, _)| n.ends_with(suffix))
                    .expect("block_names lists every suffix asked for");
                take(name, shape)
            };
            if i == 0 {
                relative_attention_bias =
                    Some(get(".0.SelfAttention.relative_attention_bias.weight")?);
            }
            let attention_norm = get(".0.layer_norm.weight")?;
            let (q, k, v, o) = (
                get(".SelfAttention.q.weight")?,
                get(".SelfAttention.k.weight")?,
                get(".SelfAttention.v.weight")?,
                get(".SelfAttention.o.weight")?,
            );
            let ff_norm = get(".1.layer_norm.weight")?;
            let ff = if config.feed_forward_proj.gated {
                FeedForward::Gated {
                    wi_0: get(".wi_0.weight")?,
                    wi_1: get(".wi_1.weight")?,
                    wo: get(".wo.weight")?,
                }
            } else {
                FeedForward::Plain {
                    wi: get(".wi.weight")?,
                    wo: get(".wo.weight")?,
                }
            };
            blocks.push(Block {
                attention_norm,
                q,
                k,
                v,
                o,
                ff_norm,
                ff,
            });
        }
        let final_layer_norm = take(
            "encoder.final_layer_norm.weight",
            &shape_of("encoder.final_layer_norm.weight"),
        )?;
        let relative_attention_bias = relative_attention_bias.ok_or_else(|| Error::Model {
            path: dir.to_path_buf(),
            message: "cannot build the T5 encoder: it has no layers".into(),
        })?;
        Ok(T5Encoder {
            config,
            embedding,
            relative_attention_bias,
            blocks,
            final_layer_norm,
            dtype,
            bf16_products: false,
            device: device.clone(),
        })
    }

    /// With `on`, the linear layers multiply in bf16 on the CPU (`--dtype bf16`, as PyTorch's
    /// CPU autocast runs them): weights read in bf16 (as a bf16 file holds them, else rounded),
    /// inputs rounded to bf16, f32 accumulation; the attention, norms and activations stay
    /// f32. Needs bf16 instructions ([`kernels::cpu_bf16_support`]). On a GPU the weight dtype
    /// already is the compute dtype, and this changes nothing.
    pub fn with_bf16_products(mut self, on: bool) -> Result<Self> {
        if on && self.device.is_cpu() {
            kernels::cpu_bf16_support()
                .map_err(|why| Error::invalid("T5 encoder with bf16 products", why))?;
            self.bf16_products = true;
        }
        Ok(self)
    }

    /// The model configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The dtype products and activations run in: f32 on the CPU (from weights in their own
    /// dtype), the weight dtype elsewhere.
    fn compute_dtype(&self) -> DType {
        if self.device.is_cpu() {
            DType::F32
        } else {
            self.dtype
        }
    }

    /// A weight as a compute tensor, rounded to the weight dtype first when it is stored wider.
    fn weight(&self, m: &MappedTensor) -> Result<Tensor> {
        let compute = self.compute_dtype();
        let t = m.load(&self.device, compute)?;
        Ok(if m.dtype() != self.dtype && self.dtype != compute {
            t.to_dtype(self.dtype)?.to_dtype(compute)?
        } else {
            t
        })
    }

    /// `x @ W^T` for each sequence's rows, each product on its own so that a sequence's
    /// states do not depend on the others encoded with it. On the CPU the weight is read a
    /// block of rows at a time and never whole (widened to f32, or in bf16 with bf16
    /// products); elsewhere it is loaded once for all.
    fn project(&self, xs: &[Tensor], w: &MappedTensor) -> Result<Vec<Tensor>> {
        #[cfg(feature = "openblas")]
        if self.device.is_cpu() {
            use kernels::blocks::{products_by_weight_blocks, WeightRows};
            let &[n, k] = w.shape() else {
                return Err(Error::invalid(
                    "T5 weight",
                    format!("{}: not a matrix", w.name()),
                ));
            };
            let failed = |e: Error| candle_core::Error::Msg(e.to_string());
            #[cfg(feature = "onednn")]
            if self.bf16_products {
                let rows = |start: usize, end: usize, out: &mut [half::bf16]| {
                    w.rows_into_bf16(start, end, out).map_err(failed)
                };
                return Ok(products_by_weight_blocks(
                    xs,
                    n,
                    k,
                    WeightRows::Bf16(&rows),
                )?);
            }
            let round = w.dtype() != self.dtype;
            let dtype = self.dtype;
            let rows = |start: usize, end: usize, out: &mut [f32]| -> candle_core::Result<()> {
                w.rows_into(start, end, out).map_err(failed)?;
                if round {
                    round_to(out, dtype);
                }
                Ok(())
            };
            return Ok(products_by_weight_blocks(xs, n, k, WeightRows::F32(&rows))?);
        }
        let w = self.weight(w)?;
        xs.iter()
            .map(|x| Ok(kernels::matmul(x, &w.t()?)?))
            .collect()
    }

    fn norm(&self, xs: &[Tensor], w: &MappedTensor) -> Result<Vec<Tensor>> {
        let w = self.weight(w)?;
        let eps = self.config.layer_norm_epsilon;
        xs.iter()
            .map(|x| Ok(kernels::rms_norm(x, &w, eps)?))
            .collect()
    }

    /// Last hidden states `[t_len, d_model]` of each token id sequence, every token attending
    /// to every other of its own sequence. All sequences go through each layer together, so
    /// the weights are read once per call however many prompts there are.
    pub fn encode(&self, sequences: &[&[u32]]) -> Result<Vec<Tensor>> {
        if let Some(i) = sequences.iter().position(|s| s.is_empty()) {
            return Err(Error::invalid("T5 input", format!("sequence {i} is empty")));
        }
        let compute = self.compute_dtype();
        let mut xs = sequences
            .iter()
            .map(|ids| {
                let mut rows = self.embedding.rows(ids, &self.device)?;
                if self.embedding.dtype() != self.dtype {
                    rows = rows.to_dtype(self.dtype)?;
                }
                Ok(rows.to_dtype(compute)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let lens: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let biases = self.position_biases(&lens)?;
        if let Some(first) = self.blocks.first() {
            first.tensors().iter().for_each(|t| t.prefetch());
        }
        for (i, block) in self.blocks.iter().enumerate() {
            if crate::cancel::requested() {
                return Err(Error::invalid("run", "interrupted"));
            }
            if let Some(next) = self.blocks.get(i + 1) {
                next.tensors().iter().for_each(|t| t.prefetch());
            }
            xs = self.block(block, &xs, &biases)?;
            block.tensors().iter().for_each(|t| t.release());
        }
        self.norm(&xs, &self.final_layer_norm)
    }

    /// One block on the rows of each sequence.
    fn block(&self, b: &Block, xs: &[Tensor], biases: &[Tensor]) -> Result<Vec<Tensor>> {
        let (heads, d_kv) = (self.config.num_heads, self.config.d_kv);
        let normed = self.norm(xs, &b.attention_norm)?;
        let q = self.project(&normed, &b.q)?;
        let k = self.project(&normed, &b.k)?;
        let v = self.project(&normed, &b.v)?;
        let mut attended = Vec::with_capacity(xs.len());
        for (((q, k), v), bias) in q.iter().zip(&k).zip(&v).zip(biases) {
            let n = q.dim(0)?;
            let split = |t: &Tensor| t.reshape((n, heads, d_kv))?.transpose(0, 1);
            let (q, k, v) = (split(q)?, split(k)?, split(v)?);
            // T5 does not scale the scores.
            let scores = kernels::matmul(&q, &k.t()?)?.broadcast_add(bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
                .to_dtype(v.dtype())?;
            let out = kernels::matmul(&probs, &v)?;
            attended.push(out.transpose(0, 1)?.reshape((n, heads * d_kv))?);
        }
        let out = self.project(&attended, &b.o)?;
        let xs = add(xs, &out)?;

        let normed = self.norm(&xs, &b.ff_norm)?;
        let (hidden, wo) = match &b.ff {
            FeedForward::Gated { wi_0, wi_1, wo } => {
                let gate = self.project(&normed, wi_0)?;
                let linear = self.project(&normed, wi_1)?;
                let hidden = gate
                    .iter()
                    .zip(&linear)
                    .map(|(g, l)| Ok((self.activate(g)? * l)?))
                    .collect::<Result<Vec<_>>>()?;
                (hidden, wo)
            }
            FeedForward::Plain { wi, wo } => {
                let hidden = self
                    .project(&normed, wi)?
                    .iter()
                    .map(|h| self.activate(h))
                    .collect::<Result<Vec<_>>>()?;
                (hidden, wo)
            }
        };
        add(&xs, &self.project(&hidden, wo)?)
    }

    /// The feed-forward activation of the config (`gated-gelu` is the tanh GELU).
    fn activate(&self, x: &Tensor) -> Result<Tensor> {
        use candle_nn::Activation as A;
        Ok(match self.config.feed_forward_proj.activation {
            A::NewGelu | A::GeluPytorchTanh => kernels::activate(x, Activation::GeluTanh)?,
            other => candle_core::Module::forward(&other, x)?,
        })
    }

    /// Per sequence, the relative position bias `[heads, n, n]` of its tokens.
    fn position_biases(&self, lens: &[usize]) -> Result<Vec<Tensor>> {
        let table = self.weight(&self.relative_attention_bias)?;
        lens.iter()
            .map(|&n| {
                let buckets: Vec<u32> = (0..n)
                    .flat_map(|i| (0..n).map(move |j| (i, j)))
                    .map(|(i, j)| self.bucket(i as i64, j as i64))
                    .collect();
                let buckets = Tensor::from_vec(buckets, n * n, &self.device)?;
                let bias = table
                    .index_select(&buckets, 0)?
                    .reshape((n, n, self.config.num_heads))?
                    .permute((2, 0, 1))?
                    .contiguous()?;
                Ok(bias)
            })
            .collect()
    }

    /// Hugging Face's bidirectional `_relative_position_bucket` for query `i` and key `j`, in
    /// f32 as PyTorch computes the logarithmic buckets.
    fn bucket(&self, i: i64, j: i64) -> u32 {
        let total = self.config.relative_attention_num_buckets as u32;
        let half = total / 2;
        let exact = half / 2;
        let distance = j - i;
        let offset = if distance > 0 { half } else { 0 };
        let d = distance.unsigned_abs() as u32;
        if d < exact {
            return offset + d;
        }
        let max_distance = self.config.relative_attention_max_distance as f32;
        let log =
            f32::log(d as f32 / exact as f32, max_distance / exact as f32) * (half - exact) as f32;
        offset + u32::min(exact + log as u32, half - 1)
    }
}

/// The residual sums `a_i + b_i`.
fn add(a: &[Tensor], b: &[Tensor]) -> Result<Vec<Tensor>> {
    a.iter().zip(b).map(|(a, b)| Ok((a + b)?)).collect()
}

/// Rounds f32 values to `dtype` (bf16 or f16) and back: weights stored wider than the dtype
/// they are to be used in.
#[cfg(feature = "openblas")]
fn round_to(values: &mut [f32], dtype: DType) {
    match dtype {
        DType::BF16 => values
            .iter_mut()
            .for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        DType::F16 => values
            .iter_mut()
            .for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        _ => {}
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
    use crate::kernels::tests::max_diff;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    const XXL_CONFIG: &str = r#"{
        "d_ff": 10240, "d_kv": 64, "d_model": 4096, "decoder_start_token_id": 0,
        "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0, "is_encoder_decoder": true, "layer_norm_epsilon": 1e-06,
        "model_type": "t5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24,
        "output_past": true, "pad_token_id": 0, "relative_attention_num_buckets": 32,
        "tie_word_embeddings": false, "vocab_size": 32128
    }"#;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    #[test]
    fn torch_bin_encodes_like_safetensors() {
        let st = fixtures().join("ace-tiny/model/models/text_encoder/t5-tiny");
        let st = T5Encoder::open(&st, &Device::Cpu, DType::F32).unwrap();
        let bin =
            T5Encoder::open(&fixtures().join("t5-tiny-bin"), &Device::Cpu, DType::F32).unwrap();
        let ids = [33u32, 25, 3, 7, 81, 1];
        let a = st.encode(&[&ids]).unwrap();
        let b = bin.encode(&[&ids]).unwrap();
        assert_eq!(a[0].dims(), &[6, 32]);
        assert_eq!(max_diff(&a[0], &b[0]), 0.0);
    }

    #[test]
    fn sequences_encoded_together_equal_each_alone() {
        let dir = fixtures().join("ace-tiny/model/models/text_encoder/t5-tiny");
        let t5 = T5Encoder::open(&dir, &Device::Cpu, DType::F32).unwrap();
        let (a, b) = ([33u32, 25, 3, 7, 81, 1], [5u32, 1]);
        let together = t5.encode(&[&a, &b]).unwrap();
        let alone = [t5.encode(&[&a]).unwrap(), t5.encode(&[&b]).unwrap()];
        // Each sequence is computed on its own: the same bits alone or with others.
        for (t, one) in together.iter().zip(&alone) {
            assert_eq!(max_diff(t, &one[0]), 0.0);
        }
        assert!(t5.encode(&[&[]]).is_err());
        let err = t5.encode(&[&[999_999u32, 1]]).unwrap_err().to_string();
        assert!(
            err.contains("row 999999") && err.contains("shared.weight"),
            "{err}"
        );
    }

    #[test]
    fn buckets_follow_hugging_face() {
        let config: Config = serde_json::from_str(XXL_CONFIG).unwrap();
        let dir = fixtures().join("ace-tiny/model/models/text_encoder/t5-tiny");
        let mut t5 = T5Encoder::open(&dir, &Device::Cpu, DType::F32).unwrap();
        t5.config = config;
        // torch: _relative_position_bucket(relative_position=j-i, bidirectional=True,
        // num_buckets=32, max_distance=128) for these distances.
        for (distance, bucket) in [
            (0i64, 0u32),
            (3, 19),
            (-3, 3),
            (7, 23),
            (8, 24),
            (-8, 8),
            (12, 25),
            (16, 26),
            (-31, 11),
            (32, 28),
            (-64, 14),
            (100, 31),
            (-500, 15),
        ] {
            assert_eq!(t5.bucket(0, distance), bucket, "distance {distance}");
        }
    }

    #[test]
    fn bad_config_and_missing_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{\"d_model\": 4}").unwrap();
        let err = T5Encoder::open(dir.path(), &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("not a T5 config"),
            "{err}"
        );
        let src = fixtures().join("ace-tiny/model/models/text_encoder/t5-tiny");
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let mut tensors =
            candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
        tensors.retain(|k, _| !k.contains("block.1.layer.1"));
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let err = T5Encoder::open(dir.path(), &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("T5 encoder")
                && err.contains("block.1.layer.1")
                && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn xxl_encoder_reads_the_release_tensors() {
        let path = fixtures().join("full-size-keys.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let release: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(json["tensors"]["text_encoder/t5-v1_1-xxl"].clone()).unwrap();
        let config: Config = serde_json::from_str(XXL_CONFIG).unwrap();
        let asked: BTreeMap<String, Vec<usize>> = tensor_specs(&config).into_iter().collect();
        // `encoder.embed_tokens.weight` is the tied copy of `shared.weight` that Hugging Face
        // writes; the encoder reads the shared one.
        let mut expected = release.clone();
        let alias = expected.remove("encoder.embed_tokens.weight").unwrap();
        assert_eq!(Some(&alias), release.get("shared.weight"));
        assert_eq!(asked, expected);
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
