//! The run-time options of the generation subcommands through the real binary on the tiny
//! model: `--strength`, sizes kept (`--keep-size`, inpainting's paste-back, outpainting's exact
//! ratio), RGBA layers, `-n`, and `--repeat` from a PNG's record.

mod tiny_support;

use image::{GenericImageView, RgbImage};
use std::path::{Path, PathBuf};
use tiny_support::{ace, fixtures};

/// `ace SUB ... --config tiny -o out` with `args` in between.
fn run(sub: &[&str], args: &[&str], out: &Path) {
    let mut cmd = ace();
    cmd.args(sub)
        .args(args)
        .arg("--config")
        .arg(fixtures().join("model/ace_tiny.yaml"))
        .arg("-o")
        .arg(out);
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn rgb(path: &Path) -> RgbImage {
    image::open(path).unwrap().to_rgb8()
}

/// Mean absolute difference in levels.
fn mean_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64
}

/// A photo whose sides are not multiples of 16 (the model works at 80x64 for it).
fn odd_photo(dir: &Path) -> PathBuf {
    let src = rgb(&fixtures().join("inputs/chelsea.png"));
    let img = image::imageops::resize(&src, 90, 70, image::imageops::FilterType::Triangle);
    let path = dir.join("odd.png");
    img.save(&path).unwrap();
    path
}

/// The latent the model starts from with a strength below 1: the prepared input through the
/// tiny VAE, times SCALE_FACTOR.
fn input_latent(path: &Path, size: Option<(u32, u32)>) -> Vec<f32> {
    let dev = candle_core::Device::Cpu;
    let cfg = ace::config::AceConfig::load(&fixtures().join("model/ace_tiny.yaml")).unwrap();
    let files = cfg.model_files(None).unwrap();
    let vae = ace::model::vae::AutoencoderKl::load(
        &cfg.vae_config().unwrap(),
        &files.vae,
        &dev,
        candle_core::DType::F32,
    )
    .unwrap();
    let mut img = rgb(path);
    if let Some((w, h)) = size {
        img = ace::resize::resize_bicubic(&img, w, h);
    }
    let max = if size.is_some() {
        usize::MAX
    } else {
        cfg.max_seq_len().unwrap()
    };
    let p = ace::pipeline::prepare_image(&img, None, "", max, "input", &dev).unwrap();
    let z = vae.encode(&p.pixels.unsqueeze(0).unwrap()).unwrap();
    let z = (z * cfg.model.scale_factor).unwrap();
    z.flatten_all().unwrap().to_vec1().unwrap()
}

/// The final latent a run saved with --save-latent.
fn saved_latent(path: &Path) -> Vec<f32> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    t["latent"].flatten_all().unwrap().to_vec1().unwrap()
}

/// Root mean square distance.
fn rms(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    (a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / a.len() as f64)
        .sqrt()
}

#[test]
fn strength_one_is_todays_run_and_lower_stays_closer_to_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("inputs/astronaut.png");
    let image = input.display().to_string();
    let edit = |name: &str, extra: &[&str]| -> (RgbImage, Vec<f32>) {
        let out = dir.path().join(format!("{name}.png"));
        let latent = dir.path().join(format!("{name}.safetensors"));
        let latent_arg = latent.display().to_string();
        let mut args = vec![
            "--image",
            &image,
            "--instruction",
            "paint {image}",
            "--steps",
            "10",
            "--save-latent",
            &latent_arg,
        ];
        args.extend_from_slice(extra);
        run(&["edit"], &args, &out);
        (rgb(&out), saved_latent(&latent))
    };
    let (today, today_latent) = edit("a", &[]);
    assert_eq!(edit("b", &["--strength", "1"]).0, today);
    // Distances in the latent the model works in (the tiny random VAE does not give the
    // photo back, so pixels would measure the VAE).
    let source = input_latent(&input, None);
    let low = rms(&edit("low", &["--strength", "0.2"]).1, &source);
    let high = rms(&edit("high", &["--strength", "0.8"]).1, &source);
    let full = rms(&today_latent, &source);
    eprintln!("latent distance to the input: strength 0.2 {low:.3}, 0.8 {high:.3}, 1 {full:.3}");
    assert!(low < high && high < full, "{low} {high} {full}");
    // generate starts from --init-image the same way.
    let out = dir.path().join("init.png");
    let latent = dir.path().join("init.safetensors");
    run(
        &["generate"],
        &[
            "--instruction",
            "a cat",
            "--width",
            "96",
            "--height",
            "128",
            "--steps",
            "10",
            "--init-image",
            &image,
            "--strength",
            "0.3",
            "--save-latent",
            latent.to_str().unwrap(),
        ],
        &out,
    );
    let init = rms(
        &saved_latent(&latent),
        &input_latent(&input, Some((96, 128))),
    );
    eprintln!("generate --init-image at strength 0.3: {init:.3}");
    assert!(init < full, "{init} {full}");
}

#[test]
fn sizes_are_kept_exactly_and_pixels_outside_the_mask_stay() {
    let dir = tempfile::tempdir().unwrap();
    let photo = odd_photo(dir.path());
    let p = photo.display().to_string();
    let plain = dir.path().join("plain.png");
    run(
        &["edit"],
        &["--image", &p, "--instruction", "x {image}", "--steps", "1"],
        &plain,
    );
    assert_eq!(rgb(&plain).dimensions(), (80, 64), "the model's own size");
    let kept = dir.path().join("kept.png");
    run(
        &["edit"],
        &[
            "--image",
            &p,
            "--instruction",
            "x {image}",
            "--steps",
            "1",
            "--keep-size",
        ],
        &kept,
    );
    assert_eq!(rgb(&kept).dimensions(), (90, 70));

    // Inpainting keeps every pixel outside the mask, at the image's size.
    let mask = image::GrayImage::from_fn(90, 70, |x, y| {
        image::Luma([if (30..70).contains(&x) && (20..50).contains(&y) {
            255
        } else {
            0
        }])
    });
    let mask_path = dir.path().join("mask.png");
    mask.save(&mask_path).unwrap();
    let m = mask_path.display().to_string();
    let filled = dir.path().join("filled.png");
    run(
        &["inpaint"],
        &["--image", &p, "--mask", &m, "--steps", "2"],
        &filled,
    );
    let (original, filled) = (rgb(&photo), rgb(&filled));
    assert_eq!(filled.dimensions(), (90, 70));
    let mut inside_changed = 0;
    for (x, y, px) in filled.enumerate_pixels() {
        if mask.get_pixel(x, y)[0] == 0 {
            assert_eq!(px, original.get_pixel(x, y), "outside the mask at {x},{y}");
        } else if px != original.get_pixel(x, y) {
            inside_changed += 1;
        }
    }
    assert!(inside_changed > 0);
    let raw = dir.path().join("raw.png");
    run(
        &["inpaint"],
        &[
            "--image",
            &p,
            "--mask",
            &m,
            "--steps",
            "2",
            "--no-paste-back",
        ],
        &raw,
    );
    assert_eq!(rgb(&raw).dimensions(), (80, 64));

    // Outpainting to 16:9 hits the ratio to the pixel, the photo in it unchanged.
    let wide = dir.path().join("wide.png");
    run(
        &["outpaint"],
        &["--image", &p, "--ratio", "16:9", "--steps", "1"],
        &wide,
    );
    let wide = rgb(&wide);
    assert_eq!(wide.dimensions(), (124, 70));
    let left = (124 - 90) / 2;
    for (x, y, px) in original.enumerate_pixels() {
        assert_eq!(wide.get_pixel(x + left, y), px, "photo pixel {x},{y}");
    }
}

#[test]
fn decoupled_layers_can_be_rgba() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("subject.png");
    let image = fixtures()
        .join("inputs/astronaut.png")
        .display()
        .to_string();
    let mask = fixtures().join("inputs/mask.png").display().to_string();
    run(
        &["layer", "decouple"],
        &[
            "--image", &image, "--mask", &mask, "--part", "subject", "--alpha", "--steps", "1",
        ],
        &out,
    );
    let img = image::open(&out).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgba8);
    let alpha = |x, y| img.get_pixel(x, y)[3];
    let m = image::open(fixtures().join("inputs/mask.png"))
        .unwrap()
        .to_luma8();
    let (w, h) = img.dimensions();
    let at = |x: u32, y: u32| m.get_pixel(x * m.width() / w, y * m.height() / h)[0];
    type Pixels = Vec<(u32, u32)>;
    let (opaque, clear): (Pixels, Pixels) = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| at(x, y) == 0 || at(x, y) == 255)
        .partition(|&(x, y)| at(x, y) == 255);
    assert!(!opaque.is_empty() && !clear.is_empty());
    assert!(clear.iter().filter(|&&(x, y)| alpha(x, y) == 0).count() * 10 > clear.len() * 9);
    assert!(opaque.iter().filter(|&&(x, y)| alpha(x, y) == 255).count() * 10 > opaque.len() * 9);
}

#[test]
fn several_images_per_call_and_repeat_from_the_png() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixtures().join("inputs/coffee.png").display().to_string();
    let args = [
        "--image",
        &image,
        "--instruction",
        "paint {image}",
        "--steps",
        "3",
        "--seed",
        "7",
    ];
    let out = dir.path().join("cup.png");
    let mut with_n = args.to_vec();
    with_n.extend(["-n", "3"]);
    run(&["edit"], &with_n, &out);
    assert!(!out.exists());
    let batch: Vec<RgbImage> = (1..=3)
        .map(|i| rgb(&dir.path().join(format!("cup-{i:04}.png"))))
        .collect();
    assert!(batch[0] != batch[1] && batch[1] != batch[2] && batch[0] != batch[2]);
    // Each equals its own run (seed 7 + i) up to the summation order of the batched products:
    // within 1/255 on average (measured: at most 0.02).
    for (i, img) in batch.iter().enumerate() {
        let single = dir.path().join(format!("single-{i}.png"));
        let seed = (7 + i).to_string();
        let mut one = args.to_vec();
        one[7] = &seed;
        run(&["edit"], &one, &single);
        let d = mean_diff(img, &rgb(&single));
        eprintln!("-n image {i}: {d:.4} levels from its single run");
        assert!(d <= 1.0, "image {i}: {d}");
    }

    // --repeat makes the same pixels from the PNG's record: a single image, and one of a group.
    let single = dir.path().join("single-1.png");
    for (made, again) in [
        (single, "again.png"),
        (dir.path().join("cup-0002.png"), "again2.png"),
    ] {
        let again = dir.path().join(again);
        ace()
            .args(["edit", "--repeat"])
            .arg(&made)
            .arg("-o")
            .arg(&again)
            .assert()
            .success();
        assert_eq!(rgb(&again), rgb(&made), "{}", made.display());
    }
    // A changed input is refused.
    let copy = dir.path().join("copy.png");
    std::fs::copy(fixtures().join("inputs/coffee.png"), &copy).unwrap();
    let made = dir.path().join("from-copy.png");
    run(
        &["edit"],
        &[
            "--image",
            copy.to_str().unwrap(),
            "--instruction",
            "x {image}",
            "--steps",
            "1",
        ],
        &made,
    );
    rgb(&fixtures().join("inputs/chelsea.png"))
        .save(&copy)
        .unwrap();
    let out = ace()
        .args(["edit", "--repeat"])
        .arg(&made)
        .arg("-o")
        .arg(dir.path().join("never.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("copy.png") && err.contains("changed"), "{err}");

    // The PNG carries an AUTOMATIC1111-style `parameters` chunk.
    let decoder = png::Decoder::new(std::fs::File::open(&made).unwrap());
    let reader = decoder.read_info().unwrap();
    let params = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == "parameters")
        .map(|c| c.text.clone())
        .unwrap();
    assert!(
        params.starts_with("x {image}\nSteps: 1, Sampler: ddim"),
        "{params}"
    );
}

/// Every sampler through one `--batch` (the model loads once): deterministic per seed, and the
/// deterministic ones closing in, as their steps grow, on the result they all approximate (the
/// probability-flow ODE's, which a 200-step DDIM run stands for here); the 50-step DDIM run is
/// on the way there too. Euler on the DDIM timesteps is DDIM itself.
#[test]
fn samplers_are_deterministic_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    let latent = |name: &str| dir.path().join(format!("{name}.safetensors"));
    let mut job = |name: &str, sampler: &str, schedule: &str, steps: usize, seed: u64| {
        let line = serde_json::json!({
            "instruction": "a red fox in the snow",
            "seed": seed,
            "steps": steps,
            "sampler": sampler,
            "schedule": schedule,
            "width": 64,
            "height": 64,
            "save_latent": latent(name),
            "output": dir.path().join(format!("{name}.png")),
        });
        lines.push_str(&format!("{line}\n"));
    };
    job("ddim-200", "ddim", "default", 200, 5);
    job("ddim-50", "ddim", "default", 50, 5);
    job("ddim-10", "ddim", "default", 10, 5);
    let deterministic = [
        ("euler", "default"),
        ("euler", "karras"),
        ("dpmpp_2m", "default"),
        ("dpmpp_2m", "karras"),
    ];
    for (sampler, schedule) in deterministic {
        for steps in [10, 20, 40] {
            job(
                &format!("{sampler}-{schedule}-{steps}"),
                sampler,
                schedule,
                steps,
                5,
            );
        }
    }
    job("ancestral-a", "euler_ancestral", "karras", 10, 5);
    job("ancestral-b", "euler_ancestral", "karras", 10, 5);
    job("ancestral-c", "euler_ancestral", "karras", 10, 6);
    job("dpmpp_2m-again", "dpmpp_2m", "karras", 10, 5);
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(&jobs, lines).unwrap();
    let output = ace()
        .args(["generate", "--batch"])
        .arg(&jobs)
        .arg("--config")
        .arg(fixtures().join("model/ace_tiny.yaml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let get = |name: &str| saved_latent(&latent(name));
    let limit = get("ddim-200");
    let scale = rms(&limit, &vec![0.0; limit.len()]);
    let distance = |name: &str| rms(&get(name), &limit) / scale;
    assert_eq!(get("ancestral-a"), get("ancestral-b"));
    assert_ne!(get("ancestral-a"), get("ancestral-c"));
    assert_eq!(get("dpmpp_2m-again"), get("dpmpp_2m-karras-10"));
    let ddim_50 = distance("ddim-50");
    assert!(ddim_50 < distance("ddim-10"));
    for (sampler, schedule) in deterministic {
        let d: Vec<f64> = [10, 20, 40]
            .iter()
            .map(|steps| distance(&format!("{sampler}-{schedule}-{steps}")))
            .collect();
        eprintln!("{sampler} {schedule}: relative distance to DDIM-200 at 10/20/40 steps {d:.4?}, DDIM-50 {ddim_50:.4}");
        assert!(d[0] > d[1] && d[1] > d[2], "{sampler} {schedule}: {d:?}");
        assert!(
            d[2] < 2.0 * ddim_50,
            "{sampler} {schedule}: {d:?} vs {ddim_50}"
        );
    }
    let ddim_10 = get("ddim-10");
    let euler_10 = get("euler-default-10");
    assert!(
        rms(&ddim_10, &euler_10) < 1e-4 * scale,
        "euler on the DDIM timesteps is DDIM"
    );
}
