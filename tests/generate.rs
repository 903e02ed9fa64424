//! Whole runs of `ace generate` / `ace edit` on the tiny ACE model against the reference's
//! outputs (tests/fixtures/ace-tiny/cases.json), and the CLI's error paths.

mod tiny_support;

use assert_cmd::Command;
use candle_core::{Device, Tensor};
use std::path::Path;
use tiny_support::{ace, ace_with_warnings, cases, fixtures};

fn load(path: &Path, name: &str) -> Vec<f32> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let t: &Tensor = t
        .get(name)
        .unwrap_or_else(|| panic!("{}: no {name}", path.display()));
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The command line of one case of cases.json.
fn case_args(case: &serde_json::Value, dir: &Path) -> Vec<String> {
    let root = fixtures();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let images = case["images"].as_array().unwrap();
    let mut args: Vec<String> = Vec::new();
    if images.is_empty() {
        let hw = case["output_hw"].as_array().unwrap();
        args.extend(["generate".into(), "--height".into(), hw[0].to_string()]);
        args.extend(["--width".into(), hw[1].to_string()]);
    } else {
        args.push("edit".into());
        for (i, img) in images.iter().enumerate() {
            args.extend(["--image".into(), root.join(s(img)).display().to_string()]);
            let mask = &case["masks"][i];
            let mask = if mask.is_null() {
                "none".into()
            } else {
                root.join(s(mask)).display().to_string()
            };
            args.extend(["--mask".into(), mask]);
            args.extend(["--task".into(), s(&case["tasks"][i])]);
        }
    }
    let history = case["history"].as_array().unwrap();
    if !history.is_empty() {
        let entries: Vec<serde_json::Value> = history
            .iter()
            .map(|h| {
                serde_json::json!({
                    "image": root.join(s(&h["image"])),
                    "instruction": h["prompt"],
                })
            })
            .collect();
        let file = dir.join("history.json");
        std::fs::write(&file, serde_json::to_string(&entries).unwrap()).unwrap();
        args.extend(["--history".into(), file.display().to_string()]);
        // The reference's TAR_INDEX 0 (the first history image); ace's default is the image
        // being edited.
        args.extend(["--tar-index".into(), "0".into()]);
    }
    let noise = s(&case["init_noise"]);
    args.extend([
        "--instruction".into(),
        s(&case["prompt"]),
        "--negative".into(),
        s(&case["negative_prompt"]),
        "--config".into(),
        root.join("model/ace_tiny.yaml").display().to_string(),
        "--noise".into(),
        root.join(noise).display().to_string(),
        "--steps".into(),
        case["steps"].to_string(),
        "--guide-scale".into(),
        case["guide_scale"].to_string(),
        "--guide-rescale".into(),
        case["guide_rescale"].to_string(),
    ]);
    args
}

#[test]
fn whole_runs_match_the_reference() {
    let cases = cases();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let out = dir.path().join(format!("{name}.png"));
        let tensors = dir.path().join(format!("{name}.safetensors"));
        let mut args = case_args(case, dir.path());
        args.extend(["-o".into(), out.display().to_string()]);
        args.extend([
            "--save-latent".into(),
            tensors.display().to_string(),
            "--json".into(),
        ]);
        let assert = ace().args(&args).assert().success();
        let summary: serde_json::Value =
            serde_json::from_slice(&assert.get_output().stdout).unwrap();
        assert_eq!(summary["prompts"], case["prompts_seen_by_model"], "{name}");

        let expected = fixtures().join(format!("expected/run_{name}.safetensors"));
        let (lat, lat_ref) = (load(&tensors, "latent"), load(&expected, "latent"));
        let (img, img_ref) = (load(&tensors, "image"), load(&expected, "image"));
        assert_eq!(lat.len(), lat_ref.len(), "{name}: latent size");
        assert_eq!(img.len(), img_ref.len(), "{name}: image size");
        let scale = lat_ref.iter().fold(0f32, |m, v| m.max(v.abs()));
        let lat_err = lat
            .iter()
            .zip(&lat_ref)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let diffs: Vec<f32> = img
            .iter()
            .zip(&img_ref)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let max = diffs.iter().fold(0f32, |m, v| m.max(*v));
        report.push(format!(
            "{name}: latent {:.2e} of max, image mean {:.3}/255 max {:.3}/255",
            lat_err / scale,
            mean * 255.0,
            max * 255.0
        ));
        assert!(lat_err <= 2e-3 * scale, "{}", report.join("\n"));
        assert!(
            mean <= 0.5 / 255.0 && max <= 4.0 / 255.0,
            "{}",
            report.join("\n")
        );

        // The 8-bit output truncates as the reference does (uint8(x * 255)).
        let png = image::open(&out).unwrap().to_rgb8();
        let png_ref = image::open(fixtures().join(format!("expected/run_{name}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(png.dimensions(), png_ref.dimensions(), "{name}: png size");
        let levels: Vec<u8> = png
            .iter()
            .zip(png_ref.iter())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let mean_levels = levels.iter().map(|&v| f64::from(v)).sum::<f64>() / levels.len() as f64;
        assert!(
            mean_levels <= 0.5 && levels.iter().all(|&v| v <= 4),
            "{name}: png differs by {mean_levels} levels on average"
        );
    }
    eprintln!("{}", report.join("\n"));
}

/// Runs the seven cases with `extra` arguments: each image within 2/255 on average of the
/// reference's f32 image.
fn runs_stay_within_two_levels(extra: &[&str], what: &str) {
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tensors = dir.path().join(format!("{name}.safetensors"));
        let mut args = case_args(case, dir.path());
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push("--save-latent".into());
        args.push(tensors.display().to_string());
        args.extend(["-o".into(), dir.path().join("x.png").display().to_string()]);
        ace().args(&args).assert().success();
        let img = load(&tensors, "image");
        let img_ref = load(
            &fixtures().join(format!("expected/run_{name}.safetensors")),
            "image",
        );
        let mean = img
            .iter()
            .zip(&img_ref)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / img.len() as f32;
        report.push(format!(
            "{name}: {what}, image mean {:.3}/255",
            mean * 255.0
        ));
        assert!(mean <= 2.0 / 255.0, "{}", report.join("\n"));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn bf16_text_encoder_stays_within_two_levels_of_the_f32_images() {
    // T5_DTYPE bfloat16 (the released models' setting) against the reference's f32 images.
    runs_stay_within_two_levels(&["--text-dtype", "bf16"], "bf16 T5");
}

/// The first case (text to image) with `--dtype DTYPE` into `dir/OUT`, oneDNN seeing the CPU
/// as `isa` when given; not quiet, so that warnings show.
fn first_case_in(dtype: &str, dir: &Path, out: &str, isa: Option<&str>) -> std::process::Output {
    let cases = cases();
    let mut cmd = ace_with_warnings();
    if let Some(isa) = isa {
        cmd.env("ONEDNN_MAX_CPU_ISA", isa);
    }
    cmd.args(case_args(&cases["cases"][0], dir))
        .args(["--dtype", dtype, "-o"])
        .arg(dir.join(out));
    cmd.output().unwrap()
}

#[test]
fn bf16_dit_on_the_cpu_stays_within_two_levels_of_the_f32_images() {
    match ace::kernels::cpu_bf16_support() {
        Ok(()) => runs_stay_within_two_levels(&["--dtype", "bf16"], "bf16 DiT"),
        // Without bf16 instructions the refusal is what there is to see.
        Err(why) => {
            let dir = tempfile::tempdir().unwrap();
            let out = first_case_in("bf16", dir.path(), "x.png", None);
            assert_eq!(out.status.code(), Some(2));
            assert!(String::from_utf8_lossy(&out.stderr).contains(&why));
        }
    }
}

#[test]
fn dtype_bf16_on_a_cpu_without_bf16_instructions_is_refused_and_auto_runs_f32() {
    // oneDNN takes the CPU for one with AVX2 only.
    let dir = tempfile::tempdir().unwrap();
    let refused = first_case_in("bf16", dir.path(), "bf16.png", Some("AVX2"));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--dtype bf16 on the CPU: this CPU has neither AVX512-BF16 nor AMX"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!dir.path().join("bf16.png").exists());
    let auto = first_case_in("auto", dir.path(), "auto.png", Some("AVX2"));
    let err = String::from_utf8_lossy(&auto.stderr);
    assert!(auto.status.success(), "{err}");
    assert!(err.contains("--dtype auto: this CPU has neither"), "{err}");
    assert!(first_case_in("f32", dir.path(), "f32.png", Some("AVX2"))
        .status
        .success());
    assert_eq!(
        image::open(dir.path().join("auto.png")).unwrap().to_rgb8(),
        image::open(dir.path().join("f32.png")).unwrap().to_rgb8()
    );
}

fn tiny_edit(out: &Path, instruction: &str, image: &Path) -> Command {
    let mut cmd = ace();
    cmd.args([
        "edit",
        "--steps",
        "1",
        "--seed",
        "3",
        "--instruction",
        instruction,
    ]);
    cmd.arg("--image").arg(image);
    cmd.arg("--config")
        .arg(fixtures().join("model/ace_tiny.yaml"));
    cmd.arg("-o").arg(out);
    cmd
}

#[test]
fn png_carries_the_settings_and_stdout_works() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixtures().join("inputs/astronaut.png");
    let out = dir.path().join("out.png");
    tiny_edit(&out, "make {image} brighter", &image)
        .assert()
        .success();
    let decoder = png::Decoder::new(std::fs::File::open(&out).unwrap());
    let reader = decoder.read_info().unwrap();
    let text: Vec<(String, String)> = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    assert!(text.contains(&("seed".into(), "3".into())), "{text:?}");
    assert!(
        text.contains(&("instruction".into(), "make {image} brighter".into())),
        "{text:?}"
    );
    assert!(
        text.iter().any(|(k, v)| k == "steps" && v == "1"),
        "{text:?}"
    );

    let out = tiny_edit(Path::new("-"), "make {image} brighter", &image)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(image::load_from_memory(&out.stdout).unwrap().width(), 96);
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixtures().join("inputs/astronaut.png");
    let out = dir.path().join("out.png");

    let assert = tiny_edit(&out, "put {image2} into {image}", &image)
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(err.contains("{image2}"), "{err}");
    assert!(!out.exists());

    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let assert = tiny_edit(&out, "x", &broken).assert().failure();
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        err.contains("broken.png") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!out.exists());

    let assert = ace()
        .args([
            "generate",
            "--instruction",
            "x",
            "--preset",
            "ace_0.6b_512",
            "--model-dir",
        ])
        .arg(dir.path())
        .arg("-o")
        .arg(&out)
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        err.contains("expected layout") && err.contains("models/vae/vae.bin"),
        "{err}"
    );
    assert!(!out.exists());
}
