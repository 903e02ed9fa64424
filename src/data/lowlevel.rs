//! Pairs for low-level visual analysis and controllable generation (appendix B.2 of the paper):
//! each photo goes through each analysis operation, giving an analysis pair (photo ->
//! condition, `analysis.OP`) and a controllable-generation pair (condition -> photo,
//! `control.OP`, with the photo's caption when one is known). With probability `regional` a
//! pair is regional: the operation applies only inside a random mask, which the record carries.
//!
//! Layout written under the dataset folder: `conditions/OP/NAME.png`, `masks/OP/NAME.png`
//! (regional pairs only; NAME is the photo's path below the photo folder, without its
//! extension) and `data.jsonl`; photos are referenced where they are.

use crate::analyze::{self, Operation};
use crate::data::dataset::{self, Record};
use crate::data::image_complete as complete;
use crate::data::masks::{self, Coverage, MaskKind};
use crate::data::templates::Templates;
use crate::inputs::{Input, Source};
use crate::{Error, Result};
use image::{DynamicImage, GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Settings of a low-level pair run.
#[derive(Debug, Clone)]
pub struct LowLevelConfig {
    /// Probability that a (photo, operation) pair is regional.
    pub regional: f64,
    /// Coverage of the regional masks.
    pub coverage: Coverage,
    pub seed: u64,
}

/// Counts for the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LowLevelStats {
    pub images: usize,
    /// Records written (two per photo and operation).
    pub pairs: usize,
    /// Records that are regional.
    pub regional: usize,
    /// Conditions computed now / found complete from an earlier run.
    pub computed: usize,
    pub reused: usize,
    /// Photos that could not be read (each listed in `failures`).
    pub failed: usize,
    /// Photos not processed because a stop was requested.
    pub skipped: usize,
    pub failures: Vec<String>,
}

/// The operations `ace data lowlevel` can apply, by name: those that need no model files
/// (depth and pose need ONNX networks and are made with `ace analyze`).
pub const OPERATIONS: &[&str] = &[
    "canny", "contour", "degrade", "doodle", "gray", "mosaic", "scribble", "segment",
];

/// The operation called `name`, with the reference's parameters.
pub fn operation(name: &str) -> Result<Box<dyn Operation>> {
    use crate::analyze::{contour, degrade, doodle, scribble, segment};
    Ok(match name {
        "canny" => Box::new(analyze::Canny::default()),
        "contour" => Box::new(analyze::Contour::new(contour::Params::default())?),
        "degrade" => Box::new(analyze::Degrade::new(degrade::Params::default())?),
        "doodle" => Box::new(analyze::Doodle::new(doodle::Params::default())?),
        "gray" => Box::new(analyze::Gray),
        "mosaic" => Box::new(analyze::Mosaic::default()),
        "scribble" => Box::new(analyze::Scribble::new(scribble::Params::default())?),
        "segment" => Box::new(analyze::Segment::new(segment::Params::default())?),
        _ => {
            return Err(Error::invalid(
                "operation",
                format!("'{name}' (available: {})", OPERATIONS.join(", ")),
            ))
        }
    })
}

/// The photos of a folder (png, jpg, jpeg, webp, bmp, tiff, gif), and of its subfolders with
/// `recursive`, sorted by name; a folder without photos is an error.
pub fn list_images(dir: &Path, recursive: bool) -> Result<Vec<Input>> {
    let found = crate::inputs::expand(&[dir.to_string_lossy().into_owned()], recursive);
    match found.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(found.inputs),
    }
}

/// The name a photo's conditions and masks are stored under: its path below the photo folder
/// without the extension.
fn stored_name(photo: &Input) -> PathBuf {
    photo.relative.with_extension("")
}

/// Reads captions: JSON lines `{"image": NAME, "caption": TEXT}`, NAME being a photo's file
/// name.
pub fn load_captions(path: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Line {
        image: String,
        caption: String,
    }
    let text = crate::textfile::read_list(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line: Line = serde_json::from_str(l).map_err(|e| Error::Config {
                path: path.to_path_buf(),
                message: format!(
                    "line {}: {e} (expected {{\"image\": NAME, \"caption\": TEXT}})",
                    i + 1
                ),
            })?;
            Ok((line.image, line.caption))
        })
        .collect()
}

/// Builds the dataset `out` from `images` with `ops`. A photo that cannot be read, or whose
/// name another photo has already taken (`a.png` and `a.jpg`), is reported in the stats and
/// skipped; anything else failing is an error. Stops between photos when a stop is requested.
pub fn build(
    images: &[Input],
    ops: &[Box<dyn Operation>],
    captions: &BTreeMap<String, String>,
    out: &Path,
    cfg: &LowLevelConfig,
) -> Result<LowLevelStats> {
    if !(0.0..=1.0).contains(&cfg.regional) {
        return Err(Error::invalid(
            "regional probability",
            format!("{} (expected 0..1)", cfg.regional),
        ));
    }
    let templates = Templates::builtin()?;
    for op in ops {
        templates.phrasings(&format!("analysis.{}", op.name()))?;
        templates.phrasings(&format!("control.{}", op.name()))?;
        for sub in ["conditions", "masks"] {
            let d = out.join(sub).join(op.name());
            crate::output::create_dir(&d)?;
        }
    }
    let mut first_of: HashMap<PathBuf, &Path> = HashMap::new();
    let per_image: Vec<Option<Result<Vec<Made>>>> = images
        .iter()
        .map(|photo| {
            let taken = first_of.insert(stored_name(photo), photo.display_path());
            taken.map(|first| {
                Err(Error::Image {
                    path: photo.display_path().to_path_buf(),
                    message: format!(
                        "its conditions would be stored under the name of {}",
                        first.display()
                    ),
                })
            })
        })
        .collect::<Vec<_>>()
        .into_par_iter()
        .zip(images.par_iter().enumerate())
        .map(|(clash, (i, photo))| {
            if let Some(e) = clash {
                return Some(e);
            }
            if crate::cancel::requested() {
                return None;
            }
            let Source::File(path) = &photo.source else {
                return Some(Err(Error::invalid(
                    "photo",
                    "standard input is not a photo folder",
                )));
            };
            Some(photo_pairs(
                photo, path, i, ops, captions, &templates, out, cfg,
            ))
        })
        .collect();
    let mut stats = LowLevelStats {
        images: images.len(),
        ..Default::default()
    };
    let mut analysis = Vec::new();
    let mut control = Vec::new();
    for (photo, r) in images.iter().zip(per_image) {
        match r {
            None => stats.skipped += 1,
            Some(Ok(pairs)) => {
                for m in pairs {
                    stats.regional += 2 * m.regional as usize;
                    if m.computed {
                        stats.computed += 1
                    } else {
                        stats.reused += 1
                    }
                    analysis.push(m.analysis);
                    control.push(m.control);
                }
            }
            Some(Err(e @ Error::Image { .. })) | Some(Err(e @ Error::Io { .. })) => {
                stats.failed += 1;
                let text = e.to_string();
                let path = photo.display_path().display().to_string();
                stats.failures.push(if text.starts_with(&path) {
                    text
                } else {
                    format!("{path}: {text}")
                });
            }
            Some(Err(e)) => return Err(e),
        }
    }
    analysis.extend(control);
    stats.pairs = analysis.len();
    dataset::write(out, &analysis)?;
    Ok(stats)
}

/// The records of one photo, for every operation.
#[allow(clippy::too_many_arguments)]
fn photo_pairs(
    photo: &Input,
    path: &Path,
    i: usize,
    ops: &[Box<dyn Operation>],
    captions: &BTreeMap<String, String>,
    templates: &Templates,
    out: &Path,
    cfg: &LowLevelConfig,
) -> Result<Vec<Made>> {
    let img = crate::imageio::load_rgb(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let relative = photo.relative.to_string_lossy().replace('\\', "/");
    let caption = captions.get(&relative).or_else(|| captions.get(&name));
    ops.iter()
        .enumerate()
        .map(|(o, op)| {
            pair(
                &img,
                photo,
                path,
                (i, o),
                op.as_ref(),
                caption.map(String::as_str),
                templates,
                out,
                cfg,
            )
        })
        .collect()
}

/// The two records of one photo and operation.
struct Made {
    analysis: Record,
    control: Record,
    regional: bool,
    /// The condition was computed now (not found complete on disk).
    computed: bool,
}

/// The analysis and control records of one photo and operation, writing the condition (and
/// mask) unless an earlier run left them complete.
#[allow(clippy::too_many_arguments)]
fn pair(
    img: &RgbImage,
    photo: &Input,
    path: &Path,
    (image_index, op_index): (usize, usize),
    op: &dyn Operation,
    caption: Option<&str>,
    templates: &Templates,
    out: &Path,
    cfg: &LowLevelConfig,
) -> Result<Made> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(((image_index as u64) << 16) | op_index as u64);
    let regional = rng.gen_bool(cfg.regional);
    let stored = stored_name(photo);
    let stem = stored.to_string_lossy().replace('\\', "/");
    let (w, h) = img.dimensions();
    let file = format!("{stem}.png");
    let mask_path = out.join("masks").join(op.name()).join(&file);
    let cond_path = out.join("conditions").join(op.name()).join(&file);
    let mask: Option<GrayImage> = if regional {
        let kind = if rng.gen_bool(0.5) {
            MaskKind::Irregular
        } else {
            MaskKind::Box
        };
        let m = masks::generate(kind, w, h, cfg.coverage, cfg.seed, rng.gen())?;
        if !complete(&mask_path, w, h) {
            crate::imageio::save(&DynamicImage::ImageLuma8(m.clone()), &mask_path, None)?;
        }
        Some(m)
    } else {
        None
    };
    let computed = !complete(&cond_path, w, h);
    if computed {
        let cond = analyze::apply(op, img, mask.as_ref())?;
        crate::imageio::save(&DynamicImage::ImageRgb8(cond), &cond_path, None)?;
    }
    let rel_photo = dataset::relative(path, out)?;
    let rel_cond = dataset::relative(&cond_path, out)?;
    let rel_mask = mask
        .as_ref()
        .map(|_| dataset::relative(&mask_path, out))
        .transpose()?;
    let mut slots = BTreeMap::new();
    if let Some(c) = caption {
        slots.insert("caption".to_string(), c.to_string());
    }
    let instruction = |task: &str, rng: &mut ChaCha8Rng| -> Result<String> {
        templates.render(task, &slots, rng)?.ok_or_else(|| {
            Error::invalid(
                "templates",
                format!("task '{task}' has no phrasing without a caption"),
            )
        })
    };
    let id = format!("{stem}-{}", op.name());
    let analysis_task = format!("analysis.{}", op.name());
    let control_task = format!("control.{}", op.name());
    let analysis = Record {
        id: format!("{id}-analysis"),
        instruction: instruction(&analysis_task, &mut rng)?,
        task: analysis_task,
        inputs: vec![rel_photo.clone()],
        masks: vec![rel_mask.clone()],
        target: rel_cond.clone(),
        caption: None,
    };
    let control = Record {
        id: format!("{id}-control"),
        instruction: instruction(&control_task, &mut rng)?,
        task: control_task,
        inputs: vec![rel_cond],
        masks: vec![rel_mask],
        target: rel_photo,
        caption: caption.map(str::to_string),
    };
    Ok(Made {
        analysis,
        control,
        regional,
        computed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testing::Invert;

    fn photos(dir: &Path) -> Vec<Input> {
        (0..3)
            .map(|i| {
                let p = dir.join(format!("p{i}.png"));
                RgbImage::from_fn(40, 30, |x, y| {
                    image::Rgb([x as u8 * 6, y as u8 * 8, i * 50])
                })
                .save(&p)
                .unwrap();
                Input::file(p)
            })
            .collect()
    }

    #[test]
    fn analysis_and_control_pairs_global_and_regional() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = photos(dir.path());
        let out = dir.path().join("ds");
        let captions = BTreeMap::from([("p1.png".to_string(), "a blue square".to_string())]);
        let cfg = LowLevelConfig {
            regional: 0.5,
            coverage: "0.2-0.4".parse().unwrap(),
            seed: 5,
        };
        let ops: Vec<Box<dyn Operation>> = vec![Box::new(Invert("gray"))];
        let s = build(&imgs, &ops, &captions, &out, &cfg).unwrap();
        assert_eq!((s.pairs, s.computed, s.reused, s.failed), (6, 3, 0, 0));
        let recs = dataset::read(&out).unwrap();
        assert_eq!(recs.len(), 6);
        for r in &recs[..3] {
            assert_eq!(r.task, "analysis.gray");
            let cond = crate::imageio::load_rgb(&out.join(&r.target)).unwrap();
            let photo = crate::imageio::load_rgb(&out.join(&r.inputs[0])).unwrap();
            match &r.masks[0] {
                None => assert!(cond
                    .pixels()
                    .zip(photo.pixels())
                    .all(|(c, p)| c.0[0] == 255 - p.0[0])),
                Some(m) => {
                    let m = crate::imageio::load(&out.join(m)).unwrap().to_luma8();
                    assert!((0.2..=0.4).contains(&masks::coverage(&m)));
                    for ((c, p), k) in cond.pixels().zip(photo.pixels()).zip(m.pixels()) {
                        let expect = if k.0[0] > 128 { 255 - p.0[0] } else { p.0[0] };
                        assert_eq!(c.0[0], expect);
                    }
                }
            }
        }
        assert_eq!(recs[4].task, "control.gray");
        assert_eq!(recs[4].caption.as_deref(), Some("a blue square"));
        assert_eq!(recs[4].inputs[0], recs[1].target);

        // A rerun reuses every condition and writes the same records.
        let again = build(&imgs, &ops, &captions, &out, &cfg).unwrap();
        assert_eq!((again.computed, again.reused), (0, 3));
        assert_eq!(dataset::read(&out).unwrap(), recs);
    }

    #[test]
    fn operations_by_name_have_templates() {
        let t = Templates::builtin().unwrap();
        for name in OPERATIONS {
            let op = operation(name).unwrap();
            assert_eq!(op.name(), *name);
            t.phrasings(&format!("analysis.{name}")).unwrap();
            t.phrasings(&format!("control.{name}")).unwrap();
        }
        let err = operation("blur").err().expect("blur is not an operation");
        assert!(err.to_string().contains("canny, contour, degrade"), "{err}");
    }

    #[test]
    fn unreadable_photo_is_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut imgs = photos(dir.path());
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"nope").unwrap();
        imgs.push(Input::file(bad));
        let cfg = LowLevelConfig {
            regional: 0.0,
            coverage: "0.1-0.5".parse().unwrap(),
            seed: 0,
        };
        let ops: Vec<Box<dyn Operation>> = vec![Box::new(Invert("gray"))];
        let s = build(&imgs, &ops, &BTreeMap::new(), &dir.path().join("ds"), &cfg).unwrap();
        assert_eq!((s.failed, s.pairs, s.regional), (1, 6, 0));
        assert!(s.failures[0].contains("bad.png"));
    }

    #[test]
    fn subfolders_keep_their_names_and_clashes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            RgbImage::new(8, 8)
                .save(dir.path().join(sub).join("x.png"))
                .unwrap();
        }
        RgbImage::new(8, 8)
            .save(dir.path().join("a/x.bmp"))
            .unwrap();
        let imgs = list_images(dir.path(), true).unwrap();
        assert_eq!(imgs.len(), 3);
        assert!(list_images(dir.path(), false).is_err());
        let cfg = LowLevelConfig {
            regional: 0.0,
            coverage: "0.1-0.5".parse().unwrap(),
            seed: 0,
        };
        let ops: Vec<Box<dyn Operation>> = vec![Box::new(Invert("gray"))];
        let out = dir.path().join("ds");
        let s = build(&imgs, &ops, &BTreeMap::new(), &out, &cfg).unwrap();
        assert_eq!((s.failed, s.pairs), (1, 4));
        assert!(s.failures[0].contains("x.png"), "{:?}", s.failures);
        assert!(out.join("conditions/gray/a/x.png").is_file());
        assert!(out.join("conditions/gray/b/x.png").is_file());
    }
}
