//! A snapshot of the released model in the official layout (`models/dit/ace_0.6b_512px.pth`,
//! `models/vae/vae.bin`, the T5-v1.1-XXL encoder as two bf16 safetensors shards with their
//! index and `config.json`, and the fixture tokenizer) holding random weights of exactly the
//! full-size shapes (`tests/fixtures/full-size-keys.json`): what the full-size benches measure
//! memory and speed on, since the released weights cannot be downloaded here. Written once
//! (about 12.5 GB) and reused while its `.complete` marker is there.

use super::torch_zip;
use candle_core::DType;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const T5_CONFIG: &str = r#"{
  "architectures": ["T5EncoderModel"], "d_ff": 10240, "d_kv": 64, "d_model": 4096,
  "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1,
  "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
  "is_encoder_decoder": true, "is_gated_act": true, "layer_norm_epsilon": 1e-06,
  "model_type": "t5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24,
  "output_past": true, "pad_token_id": 0, "relative_attention_max_distance": 128,
  "relative_attention_num_buckets": 32, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "vocab_size": 32128
}"#;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tensors of one component of `full-size-keys.json`, in file order.
fn keys(component: &str) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("full-size-keys.json"),
    )?)?;
    let map = json["tensors"][component]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("no component {component} in full-size-keys.json"))?;
    map.iter()
        .map(|(k, v)| Ok((k.clone(), serde_json::from_value(v.clone())?)))
        .collect()
}

/// Random values for a tensor named `name`: norm scales 1, other vectors small, matrices
/// uniform with the variance of a 1/fan_in initialisation.
fn values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let is_norm = name.contains("norm") && name.ends_with("weight");
    if is_norm && shape.len() == 1 {
        return vec![1.0; n];
    }
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let bound = if shape.len() == 1 {
        0.02
    } else if name.contains("embed_tokens") || name.starts_with("shared") {
        1.0
    } else {
        (3.0 / fan_in as f32).sqrt()
    };
    const CHUNK: usize = 1 << 20;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ ((i as u64) << 32));
            for v in chunk {
                *v = rng.gen_range(-bound..bound);
            }
        });
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect()
}

/// A torch checkpoint of random f32 weights for `component`.
fn write_torch(path: &Path, component: &str, seed: u64) -> anyhow::Result<()> {
    let keys = keys(component)?;
    let bytes: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| f32_bytes(&values(name, shape, seed + i as u64)))
        .collect();
    let entries: Vec<torch_zip::Entry> = keys
        .iter()
        .zip(&bytes)
        .map(|((name, shape), b)| torch_zip::Entry {
            name,
            dtype: DType::F32,
            shape,
            bytes: b,
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    torch_zip::save(path, &entries)
}

/// One safetensors file of bf16 tensors, written tensor by tensor.
fn write_bf16_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    seed: u64,
) -> anyhow::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let len = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut text = serde_json::to_string(&header)?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 24, std::fs::File::create(path)?);
    f.write_all(&(text.len() as u64).to_le_bytes())?;
    f.write_all(text.as_bytes())?;
    for (i, (name, shape)) in tensors.iter().enumerate() {
        f.write_all(&bf16_bytes(&values(name, shape, seed + i as u64)))?;
    }
    f.flush()?;
    Ok(())
}

/// The T5-XXL encoder in bf16 as two shards with their index.
fn write_t5(dir: &Path, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), T5_CONFIG)?;
    let keys = keys("text_encoder/t5-v1_1-xxl")?;
    let total: usize = keys
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() * 2)
        .sum();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for k in keys {
        bytes += k.1.iter().product::<usize>() * 2;
        if bytes <= total / 2 {
            first.push(k);
        } else {
            second.push(k);
        }
    }
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = BTreeMap::new();
    for (part, (file, tensors)) in names.iter().zip([&first, &second]).enumerate() {
        write_bf16_safetensors(&dir.join(file), tensors, seed + 1000 * part as u64)?;
        for (name, _) in tensors.iter() {
            weight_map.insert(name.clone(), file.to_string());
        }
    }
    let index =
        serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?,
    )?;
    Ok(())
}

/// The snapshot in `dir`, written unless it is complete already.
pub fn full_size(dir: &Path) -> anyhow::Result<()> {
    let done = dir.join(".complete");
    if done.is_file() {
        return Ok(());
    }
    let models = dir.join("models");
    eprintln!(
        "snapshot: writing random full-size weights into {} (about 12.5 GB, once)",
        dir.display()
    );
    write_torch(
        &models.join("dit/ace_0.6b_512px.pth"),
        "dit/ace_0.6b_512px",
        1,
    )?;
    write_torch(&models.join("vae/vae.bin"), "vae/ldm", 2)?;
    write_t5(&models.join("text_encoder/t5-v1_1-xxl"), 3)?;
    let tokenizer = models.join("tokenizer/t5-v1_1-xxl");
    std::fs::create_dir_all(&tokenizer)?;
    let fixture = fixtures().join("ace-tiny/model/models/tokenizer/t5-tiny");
    for f in std::fs::read_dir(&fixture)? {
        let f = f?;
        std::fs::copy(f.path(), tokenizer.join(f.file_name()))?;
    }
    std::fs::write(done, b"")?;
    Ok(())
}
