//! The DiT against the reference: the full-size model asks for exactly the tensors of the
//! released checkpoints, and the tiny model reproduces the reference's two-sample forward.

use ace::model::dit::{layout, Config, DitAce, Sample};
use candle_core::{DType, Device, IndexOp, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The `MODEL.DIFFUSION_MODEL` section of the official `ace_0.6b_512.yaml`, with the given
/// MAX_SEQ_LEN (1024 for 512px, 4096 for 1024px).
fn official_config(max_seq_len: usize) -> Config {
    let yaml = format!(
        "NAME: DiTACE\nPRETRAINED_MODEL: ms://iic/ACE-0.6B-512px@models/dit/ace_0.6b_512px.pth\n\
         IGNORE_KEYS: []\nPATCH_SIZE: 2\nIN_CHANNELS: 4\nHIDDEN_SIZE: 1152\nDEPTH: 28\n\
         NUM_HEADS: 16\nMLP_RATIO: 4.0\nPRED_SIGMA: True\nDROP_PATH: 0.0\nWINDOW_DIZE: 0\n\
         Y_CHANNELS: 4096\nMAX_SEQ_LEN: {max_seq_len}\nQK_NORM: True\nUSE_GRAD_CHECKPOINT: True\n\
         ATTENTION_BACKEND: flash_attn\n"
    );
    serde_yaml::from_str(&yaml).unwrap()
}

#[test]
fn full_size_model_reads_exactly_the_released_tensors() {
    let text = std::fs::read_to_string(fixture("full-size-keys.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (name, max_seq_len) in [("dit/ace_0.6b_512px", 1024), ("dit/ace_0.6b_1024px", 4096)] {
        let want: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(json["tensors"][name].clone()).unwrap();
        let requested = layout::expected_tensors(&official_config(max_seq_len)).unwrap();
        let got: BTreeMap<String, Vec<usize>> = requested.iter().cloned().collect();
        assert_eq!(got.len(), requested.len(), "{name}: a tensor is read twice");
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, extra {extra:?}"
        );
        for (k, shape) in &want {
            assert_eq!(&got[k], shape, "{name}: shape of {k}");
        }
        let params: usize = got.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(params as u64, json["param_counts"][name].as_u64().unwrap());
    }
}

/// Rows of `context` (`[LENGTH, C]`) that `mask` (`[LENGTH]`, int) marks as real tokens.
fn real_rows(context: &Tensor, mask: &Tensor) -> Tensor {
    let len = mask
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    context.narrow(0, 0, len as usize).unwrap()
}

fn tiny_config() -> Config {
    Config::from_yaml_file(&fixture("ace-tiny/model/ace_tiny.yaml")).unwrap()
}

fn tiny_checkpoint() -> PathBuf {
    fixture("ace-tiny/model/models/dit/ace_tiny.pth")
}

#[test]
fn tiny_model_matches_the_reference_forward() {
    assert_matches_the_reference_forward(DType::F32, 1e-4);
}

#[test]
fn tiny_model_in_half_precision_is_close_to_the_reference() {
    // The path a GPU takes in bf16/f16 (candle's ops rather than the f32 CPU kernels), in f16,
    // which candle's CPU products support.
    assert_matches_the_reference_forward(DType::F16, 5e-3);
}

#[test]
fn tiny_model_with_bf16_linear_layers_on_the_cpu_is_close_to_the_reference() {
    // `--dtype bf16` on the CPU: linear weights in bf16 through oneDNN, the rest in f32.
    if let Err(why) = ace::kernels::cpu_bf16_support() {
        // The command line refuses bf16 here (tests/generate.rs checks the message).
        assert!(why.contains("AVX512-BF16"), "{why}");
        return;
    }
    assert_matches_the_reference_forward(DType::BF16, 1e-2);
}

/// The tiny model in `dtype` on the golden batch: each sample's output within `relative` of
/// the largest reference value (at least 1).
fn assert_matches_the_reference_forward(dtype: DType, relative: f32) {
    let dit = DitAce::load(&tiny_config(), &tiny_checkpoint(), &Device::Cpu, dtype).unwrap();
    let (samples, t, tpe) = golden_inputs();
    let outs = dit.forward(&samples, &t, &tpe).unwrap();
    let golden: HashMap<String, Tensor> = candle_core::safetensors::load(
        fixture("ace-tiny/expected/dit_forward.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (b, out) in outs.iter().enumerate() {
        // bf16 on the CPU computes in f32 from bf16 linear weights.
        let computed = if dtype == DType::BF16 {
            DType::F32
        } else {
            dtype
        };
        assert_eq!(out.dtype(), computed);
        let want = &golden[&format!("b{b}.out")];
        assert_eq!(out.dims(), want.dims());
        let err = max_abs_diff(&out.to_dtype(DType::F32).unwrap(), want);
        let peak = peak(want);
        let tol = relative * peak.max(1.0);
        eprintln!(
            "{dtype:?} sample {b}: max |a-b| = {err:e} (max |b| = {peak}, tolerance {tol:e})"
        );
        assert!(
            err <= tol,
            "{dtype:?} sample {b}: max |a-b| = {err} > {tol}"
        );
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The ACE-layout tiny checkpoint rewritten in the PixArt-alpha layout (fused projections,
/// `q_linear`, `proj`, `y_embedder.y_proj`, a 4-channel patch embedder) plus the ACE tensors
/// with the patch embedder's mask channel zeroed, which the converted PixArt model must equal.
fn pixart_and_ace_without_mask(dir: &Path) -> (PathBuf, PathBuf) {
    let dev = Device::Cpu;
    let mut ace = ace::model::checkpoint::load(&tiny_checkpoint(), &dev).unwrap();
    let w = ace["x_embedder.proj.weight"].clone();
    let zeros = Tensor::zeros((w.dim(0).unwrap(), 1, 2, 2), DType::F32, &dev).unwrap();
    let four = w.narrow(1, 0, 4).unwrap();
    ace.insert(
        "x_embedder.proj.weight".into(),
        Tensor::cat(&[&four, &zeros], 1).unwrap(),
    );
    let mut pixart = HashMap::new();
    // (a part's marker, the fused name, the markers of all parts in row order)
    let fused: [(&str, &str, &[&str]); 2] = [
        (
            ".attn.q.",
            ".attn.qkv.",
            &[".attn.q.", ".attn.k.", ".attn.v."],
        ),
        (
            ".cross_attn.k.",
            ".cross_attn.kv_linear.",
            &[".cross_attn.k.", ".cross_attn.v."],
        ),
    ];
    for (name, t) in &ace {
        if let Some((first, whole, parts)) = fused.iter().find(|(f, _, _)| name.contains(f)) {
            let rows: Vec<Tensor> = parts
                .iter()
                .map(|p| ace[&name.replace(first, p)].clone())
                .collect();
            pixart.insert(name.replace(first, whole), Tensor::cat(&rows, 0).unwrap());
            continue;
        }
        let other_part = [".attn.k.", ".attn.v.", ".cross_attn.v."];
        if other_part.iter().any(|p| name.contains(p)) {
            continue;
        }
        let renamed = name
            .replace(".cross_attn.q.", ".cross_attn.q_linear.")
            .replace(".cross_attn.o.", ".cross_attn.proj.")
            .replace(".attn.o.", ".attn.proj.")
            .replace("y_embedder.", "y_embedder.y_proj.");
        pixart.insert(renamed, t.clone());
    }
    pixart.insert("x_embedder.proj.weight".into(), four);
    for fused in [
        "blocks.1.attn.qkv.bias",
        "blocks.1.cross_attn.kv_linear.weight",
    ] {
        assert!(pixart.contains_key(fused), "{fused} not built");
    }
    assert!(!pixart
        .keys()
        .any(|k| k.contains(".attn.k.") || k.contains(".o.")));
    assert!(pixart.contains_key("y_embedder.y_proj.fc1.weight"));
    let (p, a) = (dir.join("pixart.safetensors"), dir.join("ace.safetensors"));
    candle_core::safetensors::save(&pixart, &p).unwrap();
    candle_core::safetensors::save(&ace, &a).unwrap();
    (p, a)
}

#[test]
fn pixart_layout_checkpoint_loads_as_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let (pixart, ace_ckpt) = pixart_and_ace_without_mask(dir.path());
    let cfg = tiny_config();
    let from_pixart = DitAce::load(&cfg, &pixart, &Device::Cpu, DType::F32).unwrap();
    let from_ace = DitAce::load(&cfg, &ace_ckpt, &Device::Cpu, DType::F32).unwrap();
    let (samples, t, tpe) = golden_inputs();
    let a = from_pixart.forward(&samples, &t, &tpe).unwrap();
    let b = from_ace.forward(&samples, &t, &tpe).unwrap();
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }
}

fn tiny_model() -> DitAce {
    DitAce::load(&tiny_config(), &tiny_checkpoint(), &Device::Cpu, DType::F32).unwrap()
}

fn peak(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn samples_batched_together_match_samples_run_alone() {
    let dit = tiny_model();
    let (samples, t, tpe) = golden_inputs();
    // The 3-frame sample, again with other contexts (as a negative pass), and at another step.
    let first = samples[0].clone();
    let mut negative = first.clone();
    negative.contexts = first.contexts.iter().map(|c| (c * -0.5).unwrap()).collect();
    let batch = [first.clone(), negative, first, samples[1].clone()];
    let ts = [t[0], t[0], t[0] * 0.5, t[1]];
    let together = dit.forward(&batch, &ts, &tpe).unwrap();
    for (i, (sample, &t)) in batch.iter().zip(&ts).enumerate() {
        let alone = dit
            .forward(std::slice::from_ref(sample), &[t], &tpe)
            .unwrap();
        let err = max_abs_diff(&together[i], &alone[0]);
        let tol = 1e-5 * peak(&alone[0]).max(1.0);
        assert!(err <= tol, "sample {i}: max |a-b| = {err} > {tol}");
    }
    assert!(
        max_abs_diff(&together[0], &together[1]) > 1e-3,
        "contexts ignored"
    );
    assert!(
        max_abs_diff(&together[0], &together[2]) > 1e-3,
        "timestep ignored"
    );
}

#[test]
fn prepared_samples_take_each_steps_target() {
    let dit = tiny_model();
    let (samples, t, tpe) = golden_inputs();
    let whole = dit.forward(&samples, &t, &tpe).unwrap();
    // Prepared with a different target of the same shape: only the shape is read.
    let mut first_step = samples.clone();
    for s in &mut first_step {
        s.frames[0] = s.frames[0].zeros_like().unwrap();
    }
    let prepared = dit.prepare(&first_step, &tpe).unwrap();
    assert_eq!(prepared.len(), 2);
    let targets: Vec<Tensor> = samples.iter().map(|s| s.frames[0].clone()).collect();
    let outs = dit.forward_prepared(&prepared, &targets, &t).unwrap();
    for (a, b) in outs.iter().zip(&whole) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }

    let err = dit
        .forward_prepared(&prepared, &targets[..1], &t)
        .unwrap_err()
        .to_string();
    assert!(err.contains("DiT targets"), "{err}");
    let mut wrong = targets.clone();
    wrong[1] = wrong[0].clone();
    let err = dit
        .forward_prepared(&prepared, &wrong, &t)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sample 1"), "{err}");
}

#[test]
fn checkpoint_errors_name_the_tensor_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let mut tensors = ace::model::checkpoint::load(&tiny_checkpoint(), &dev).unwrap();
    tensors.remove("blocks.1.mlp.fc2.bias");
    let path = dir.path().join("cut.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = DitAce::load(&tiny_config(), &path, &dev, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.safetensors") && err.contains("blocks.1.mlp.fc2.bias"),
        "{err}"
    );
}

/// The golden batch as [`Sample`]s, with its timesteps and text position embeddings.
fn golden_inputs() -> (Vec<Sample>, Vec<f32>, Tensor) {
    let dev = Device::Cpu;
    let golden: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture("ace-tiny/expected/dit_forward.safetensors"), &dev)
            .unwrap();
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("ace-tiny/expected/dit_forward.json")).unwrap(),
    )
    .unwrap();
    let frames_per_sample: Vec<usize> =
        serde_json::from_value(info["frames_per_sample"].clone()).unwrap();
    assert_eq!(frames_per_sample, [3, 1]);

    let mut samples = Vec::new();
    let mut ts = Vec::new();
    for (b, &n) in frames_per_sample.iter().enumerate() {
        let get = |k: &str| golden.get(&format!("b{b}.{k}")).cloned();
        let mut frames = vec![get("x").unwrap()];
        let mut masks = vec![get("x_mask")];
        for j in 0..n - 1 {
            frames.push(get(&format!("edit{j}")).unwrap());
            masks.push(get(&format!("edit{j}_mask")));
        }
        let masks = frames
            .iter()
            .zip(masks)
            .map(|(f, m)| {
                m.unwrap_or_else(|| {
                    let (_, h, w) = f.dims3().unwrap();
                    Tensor::ones((1, h, w), DType::F32, &dev).unwrap()
                })
            })
            .collect();
        let (context, context_mask) = (get("context").unwrap(), get("context_mask").unwrap());
        let contexts = (0..n)
            .map(|i| real_rows(&context.i(i).unwrap(), &context_mask.i(i).unwrap()))
            .collect();
        samples.push(Sample {
            frames,
            masks,
            contexts,
        });
        ts.extend(
            get("t")
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    (samples, ts, golden["text_position_embeddings"].clone())
}
