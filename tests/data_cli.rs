//! `ace data` through the real binary: masks, pairs, instructions, and bad inputs.

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::path::Path;

/// The binary with `-v`: the counts these tests read are informational lines, shown on a
/// terminal or with `-v`.
fn ace() -> Command {
    let mut cmd = Command::cargo_bin("ace").unwrap();
    cmd.arg("-v");
    cmd
}

fn coverage(path: &Path) -> f64 {
    let m = image::open(path).unwrap().to_luma8();
    m.pixels().filter(|p| p.0[0] > 128).count() as f64 / (m.width() * m.height()) as f64
}

#[test]
fn masks_meet_coverage_are_reproducible_and_restartable() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        ace()
            .args([
                "data",
                "masks",
                "--size",
                "64x48",
                "--kind",
                "irregular",
                "--count",
                "5",
            ])
            .args(["--seed", "3", "--coverage", "0.2-0.4", "-o"])
            .arg(out)
            .assert()
            .success()
            .stderr(contains("5 written"));
    }
    for i in 0..5 {
        let name = format!("{i:06}.png");
        let c = coverage(&a.join(&name));
        assert!((0.2..=0.4).contains(&c), "{name}: {c}");
        assert_eq!(
            std::fs::read(a.join(&name)).unwrap(),
            std::fs::read(b.join(&name)).unwrap()
        );
    }
    // A restart keeps what is complete and redoes a damaged file.
    std::fs::write(a.join("000002.png"), b"partial").unwrap();
    ace()
        .args([
            "data",
            "masks",
            "--size",
            "64x48",
            "--kind",
            "irregular",
            "--count",
            "5",
        ])
        .args(["--seed", "3", "--coverage", "0.2-0.4", "-o"])
        .arg(&a)
        .assert()
        .success()
        .stderr(contains("1 written, 4 already complete"));
    assert_eq!(
        std::fs::read(a.join("000002.png")).unwrap(),
        std::fs::read(b.join("000002.png")).unwrap()
    );

    for kind in ["box", "outpaint"] {
        let out = dir.path().join(kind);
        ace()
            .args([
                "data", "masks", "--size", "80x60", "--kind", kind, "--count", "3",
            ])
            .args(["--coverage", "0.1-0.3", "-o"])
            .arg(&out)
            .assert()
            .success();
        for i in 0..3 {
            let c = coverage(&out.join(format!("{i:06}.png")));
            assert!((0.1..=0.3).contains(&c), "{kind} {i}: {c}");
        }
    }
}

#[test]
fn masks_reject_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    ace()
        .args([
            "data", "masks", "--size", "64", "--kind", "box", "--count", "1", "-o",
        ])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(contains("WxH"));
    ace()
        .args([
            "data", "masks", "--size", "64x64", "--kind", "box", "--count", "1",
        ])
        .args(["--coverage", "0.7-0.2", "-o"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(contains("coverage"));
}

/// 5 groups of 20 noisy copies of random centres in 64-D, saved as .npy, with ids.
fn grouped_embeddings(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut data = Vec::new();
    for _ in 0..5 {
        let centre: Vec<f32> = (0..64).map(|_| rng.sample(StandardNormal)).collect();
        for _ in 0..20 {
            data.extend(
                centre
                    .iter()
                    .map(|&c| c + 0.3 * rng.sample::<f32, _>(StandardNormal)),
            );
        }
    }
    let npy = dir.join("emb.npy");
    ace::data::embeddings::save_npy(&npy, 100, 64, &data).unwrap();
    let ids = dir.join("ids.txt");
    let names: Vec<String> = (0..100).map(|i| format!("img{i:03}.png")).collect();
    std::fs::write(&ids, names.join("\n") + "\n").unwrap();
    (npy, ids)
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pairs_recover_the_groups_and_name_rows_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let (npy, ids) = grouped_embeddings(dir.path());
    let out = dir.path().join("pairs.jsonl");
    ace()
        .args(["data", "pairs", "--clusters", "5", "--embeddings"])
        .arg(&npy)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("100 rows in 5 clusters").and(contains("5 sets holding 100 rows")));
    let all = lines(&out);
    let sets: Vec<&serde_json::Value> = all.iter().filter(|v| v.get("set").is_some()).collect();
    assert_eq!(sets.len(), 5);
    for (k, s) in sets.iter().enumerate() {
        let members: Vec<u64> = s["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_u64().unwrap())
            .collect();
        assert_eq!(
            members,
            (k as u64 * 20..(k as u64 + 1) * 20).collect::<Vec<_>>()
        );
    }
    let pairs: Vec<&serde_json::Value> = all.iter().filter(|v| v.get("a").is_some()).collect();
    assert!(!pairs.is_empty());
    for p in &pairs {
        let sim = p["sim"].as_f64().unwrap();
        assert!((0.85..=0.98).contains(&sim), "{p}");
        assert_eq!(p["a"].as_u64().unwrap() / 20, p["b"].as_u64().unwrap() / 20);
    }

    // Same input, same seed: the same bytes; an existing complete output is kept.
    let again = dir.path().join("again.jsonl");
    ace()
        .args(["data", "pairs", "--clusters", "5", "--embeddings"])
        .arg(&npy)
        .arg("--out")
        .arg(&again)
        .assert()
        .success();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    ace()
        .args(["data", "pairs", "--embeddings"])
        .arg(&npy)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("already complete"));

    // Ids and --sets-only.
    let named = dir.path().join("named.jsonl");
    ace()
        .args(["data", "pairs", "--sets-only", "--embeddings"])
        .arg(&npy)
        .arg("--ids")
        .arg(&ids)
        .arg("--out")
        .arg(&named)
        .assert()
        .success();
    let named = lines(&named);
    assert_eq!(named.len(), 5);
    assert_eq!(named[1]["members"][0], "img020.png");
}

#[test]
fn pairs_reject_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.npy");
    std::fs::write(&bad, b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i4'").unwrap();
    let out = dir.path().join("p.jsonl");
    ace()
        .args(["data", "pairs", "--embeddings"])
        .arg(&bad)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("broken.npy"));
    assert!(!out.exists(), "no partial output");

    let (npy, _) = grouped_embeddings(dir.path());
    let short_ids = dir.path().join("ids.txt");
    std::fs::write(&short_ids, "a\nb\n").unwrap();
    ace()
        .args(["data", "pairs", "--embeddings"])
        .arg(&npy)
        .arg("--ids")
        .arg(&short_ids)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("ids.txt").and(contains("2 ids for 100")));

    ace()
        .args(["data", "pairs", "--encoder", "clip", "--images"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("--clip-model"));
}

#[test]
fn pairs_from_images_embedded_with_clip_name_the_images() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval-tiny");
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("photos");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    for (i, entry) in std::fs::read_dir(fixtures.join("data"))
        .unwrap()
        .enumerate()
    {
        let path = entry.unwrap().path();
        let dest = if i % 2 == 0 {
            images.join(path.file_name().unwrap())
        } else {
            images.join("sub").join(path.file_name().unwrap())
        };
        std::fs::copy(&path, dest).unwrap();
    }
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    let out = dir.path().join("pairs.jsonl");
    // One cluster and bounds [-1, 0.99999]: all 36 pairs of 9 images are compared; the one
    // pair of identical images (similarity 1 up to rounding) is dropped as a near-duplicate.
    ace()
        .args([
            "data",
            "pairs",
            "--encoder",
            "clip",
            "--clusters",
            "1",
            "--low=-1",
            "--high=0.99999",
            "--pairs-only",
            "--clip-model",
        ])
        .arg(fixtures.join("clip-tiny"))
        .arg("--images")
        .arg(&images)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(contains("broken.png").and(contains(
            "36 pairs compared: 35 kept, 1 dropped as near-duplicates",
        )));
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 35, "{text}");
    let mut named = std::collections::BTreeSet::new();
    for l in &lines {
        for side in ["a", "b"] {
            named.insert(l[side].as_str().unwrap().to_string());
        }
        let sim = l["sim"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&sim), "{l}");
    }
    assert_eq!(named.len(), 9);
    // Ids are paths from the pairs file's folder, as `ace data instructions` resolves them.
    assert!(named.iter().all(|n| n.starts_with("photos/")), "{named:?}");
    assert!(
        named.iter().any(|n| n.starts_with("photos/sub/")),
        "{named:?}"
    );
    assert!(!named.iter().any(|n| n.contains("broken")));
}

#[test]
fn instructions_turn_pairs_into_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
    for f in ["a.png", "b.png", "c.png"] {
        img.save(d.join(f)).unwrap();
    }
    let pairs = d.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        concat!(
            "{\"set\": 0, \"members\": [\"a.png\", \"b.png\", \"c.png\"]}\n",
            "{\"a\": \"a.png\", \"b\": \"b.png\", \"sim\": 0.9, \"object_name\": \"the lamp\"}\n",
            "{\"a\": \"b.png\", \"b\": \"c.png\", \"sim\": 0.91, \"object_name\": \"a chair\"}\n",
            "{\"a\": \"b.png\", \"b\": \"missing.png\", \"sim\": 0.91, \"object_name\": \"a chair\"}\n",
        ),
    )
    .unwrap();
    let out = d.join("dataset");
    ace()
        .args([
            "data",
            "instructions",
            "--task",
            "object.add",
            "--seed",
            "4",
            "--in",
        ])
        .arg(&pairs)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(
            contains("2 pairs kept")
                .and(contains("1 with a missing image"))
                .and(contains("pairs.jsonl: line 4: ").and(contains("missing.png: no such file"))),
        );
    let recs = lines(&out.join("data.jsonl"));
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["task"], "object.add");
    assert!(recs[0]["instruction"]
        .as_str()
        .unwrap()
        .contains("the lamp"));
    assert_eq!(recs[0]["inputs"][0], "../a.png");
    assert_eq!(recs[0]["target"], "../b.png");
    assert!(recs[1]["instruction"].as_str().unwrap().contains("a chair"));

    ace()
        .args(["data", "instructions", "--task", "juggling", "--in"])
        .arg(&pairs)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("juggling"));
}

#[test]
fn lowlevel_builds_analysis_and_control_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for i in 0..2u8 {
        image::RgbImage::from_fn(96, 64, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, i * 90])
        })
        .save(photos.join(format!("p{i}.png")))
        .unwrap();
    }
    let captions = dir.path().join("captions.jsonl");
    std::fs::write(
        &captions,
        "{\"image\": \"p0.png\", \"caption\": \"a colour ramp\"}\n",
    )
    .unwrap();
    let run = |out: &Path| {
        ace()
            .args([
                "data",
                "lowlevel",
                "--ops",
                "canny,gray,mosaic",
                "--regional",
                "0.5",
                "--seed",
                "2",
            ])
            .arg("--images")
            .arg(&photos)
            .arg("--captions")
            .arg(&captions)
            .arg("--out")
            .arg(out)
            .assert()
            .success()
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run(&a).stderr(contains("2 images, 12 pairs kept").and(contains("6 computed, 0 reused")));
    run(&b);
    run(&a).stderr(contains("0 computed, 6 reused"));
    assert_eq!(
        std::fs::read(a.join("data.jsonl")).unwrap(),
        std::fs::read(b.join("data.jsonl")).unwrap()
    );
    let recs = lines(&a.join("data.jsonl"));
    assert_eq!(recs.len(), 12);
    let gray = recs.iter().find(|r| r["id"] == "p0-gray-analysis").unwrap();
    assert_eq!(gray["task"], "analysis.gray");
    assert_eq!(gray["inputs"][0], "../photos/p0.png");
    let cond = image::open(a.join(gray["target"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    if gray["masks"][0].is_null() {
        assert!(
            cond.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]),
            "a global grey condition"
        );
    }
    let control = recs.iter().find(|r| r["id"] == "p0-canny-control").unwrap();
    assert_eq!(control["caption"], "a colour ramp");
    assert_eq!(control["target"], "../photos/p0.png");

    ace()
        .args(["data", "lowlevel", "--ops", "blur", "--images"])
        .arg(&photos)
        .arg("--out")
        .arg(dir.path().join("c"))
        .assert()
        .code(2)
        .stderr(contains("blur"));
}
