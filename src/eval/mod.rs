//! `ace eval`: benchmark scoring of generation and editing results. Samples come from a
//! manifest, paired folders ([`manifest`]) or the MagicBrush test layout ([`magicbrush`]); each is scored with the pixel metrics of
//! MagicBrush (L1, L2, PSNR, SSIM), CLIP ViT-B/32 similarities (CLIP-I, CLIP-T, CLIP-dir,
//! CLIPimg), DINO ViT-S/16 similarity and, from text already recognised in the image, the text
//! rendering scores. Images are read and preprocessed on all cores and embedded in batches;
//! a sample whose files are missing or unreadable gets `None` for the metrics that need them
//! and an error message, and is left out of those means.

pub mod emu_edit;
pub mod faces;
pub mod magicbrush;
pub mod manifest;
pub mod metrics;
pub mod ocr;
pub mod report;
pub mod results;

pub use manifest::Sample;
pub use results::{Evaluation, Metric, SampleScores};

use crate::model::vision::{clip, dino, preprocess};
use crate::Result;
use image::RgbImage;
use metrics::cosine;
use rayon::prelude::*;
use std::path::Path;

/// The embedding models a run uses (each optional; its metrics are `None` without it).
#[derive(Default)]
pub struct Models {
    pub clip: Option<clip::Clip>,
    pub dino: Option<dino::Dino>,
    pub faces: Option<faces::FaceModels>,
    pub ocr: Option<ocr::TextRecognizer>,
}

/// How a run works.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Samples read and embedded together.
    pub batch_size: usize,
    /// Side of the thumbnails kept for the report (`None`: keep none).
    pub thumbnail: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_size: 32,
            thumbnail: None,
        }
    }
}

/// Scores every sample; `progress(n)` is called as each batch of `n` samples is done.
pub fn evaluate(
    samples: &[Sample],
    models: &Models,
    options: &Options,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Evaluation> {
    let mut scored = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(options.batch_size.max(1)) {
        if crate::cancel::requested() {
            break;
        }
        let mut loaded: Vec<Loaded> = chunk
            .par_iter()
            .map(|s| Loaded::read(s, models, options))
            .collect();
        embed(&mut loaded, models)?;
        scored.extend(loaded.into_iter().map(Loaded::finish));
        progress(chunk.len());
    }
    Ok(Evaluation::new(scored))
}

/// One sample while it is being scored: its images' preprocessed pixels, then embeddings.
struct Loaded {
    scores: SampleScores,
    clip_pixels: [Option<Vec<f32>>; 3],
    dino_pixels: [Option<Vec<f32>>; 2],
    clip_images: [Option<Vec<f32>>; 3],
    clip_texts: [Option<Vec<f32>>; 2],
    dino_images: [Option<Vec<f32>>; 2],
    texts: [Option<String>; 2],
}

/// Index of the generated, ground-truth and input image in the per-image arrays.
const GEN: usize = 0;
const GT: usize = 1;
const INPUT: usize = 2;

impl Loaded {
    /// Reads the sample's images (reporting those that fail), scores the pixel metrics and the
    /// text metrics, and preprocesses the images for the embedding models.
    fn read(sample: &Sample, models: &Models, options: &Options) -> Loaded {
        let mut scores = SampleScores::new(sample);
        let mut open = |path: &Option<std::path::PathBuf>| -> Option<RgbImage> {
            let path = path.as_deref()?;
            match load_rgb(path) {
                Ok(img) => Some(img),
                Err(e) => {
                    scores.errors.push(e.to_string());
                    None
                }
            }
        };
        let images = [
            open(&sample.generated),
            open(&sample.ground_truth),
            open(&sample.input),
        ];
        if let (Some(g), Some(t)) = (&images[GEN], &images[GT]) {
            let p = metrics::pixel::score(g, t);
            scores.set(Metric::L1, Some(p.l1));
            scores.set(Metric::L2, Some(p.l2));
            scores.set(Metric::Psnr, Some(p.psnr));
            scores.set(Metric::Ssim, p.ssim);
        }
        if let Some(faces) = &models.faces {
            face_metrics(faces, &images, &mut scores);
        }
        let recognized = match (
            &sample.recognized_text,
            &models.ocr,
            &images[GEN],
            &sample.text,
        ) {
            (Some(t), _, _, _) => Some(t.clone()),
            (None, Some(ocr), Some(img), Some(_)) => match ocr.recognize(img) {
                Ok(t) => Some(t),
                Err(e) => {
                    scores.errors.push(e.to_string());
                    None
                }
            },
            _ => None,
        };
        if let (Some(got), Some(want)) = (&recognized, &sample.text) {
            scores.set(
                Metric::SentenceAccuracy,
                Some(metrics::text::sentence_accuracy(got, want)),
            );
            scores.set(
                Metric::NormalizedEditSimilarity,
                Some(metrics::text::normalized_edit_similarity(got, want)),
            );
        }
        if let Some(side) = options.thumbnail {
            scores.thumbnails = images
                .iter()
                .map(|i| i.as_ref().map(|i| report::thumbnail(i, side)))
                .collect();
        }
        let clip_pre = models.clip.as_ref().map(|c| c.preprocess());
        let dino_pre = models.dino.as_ref().map(|d| d.preprocess());
        let pre = |p: Option<preprocess::Preprocess>, i: usize| {
            p.and_then(|p| images[i].as_ref().map(|img| p.apply(img)))
        };
        Loaded {
            clip_pixels: [pre(clip_pre, GEN), pre(clip_pre, GT), pre(clip_pre, INPUT)],
            dino_pixels: [pre(dino_pre, GEN), pre(dino_pre, GT)],
            clip_images: Default::default(),
            clip_texts: Default::default(),
            dino_images: Default::default(),
            texts: [sample.output_caption.clone(), sample.input_caption.clone()],
            scores,
        }
    }

    /// The embedding metrics from the embeddings.
    fn finish(mut self) -> SampleScores {
        let [gen, gt, input] = &self.clip_images;
        let [out_cap, in_cap] = &self.clip_texts;
        let both =
            |a: &Option<Vec<f32>>, b: &Option<Vec<f32>>| Some(cosine(a.as_ref()?, b.as_ref()?));
        self.scores.set(Metric::ClipI, both(gen, gt));
        self.scores.set(Metric::ClipT, both(gen, out_cap));
        self.scores.set(Metric::ClipImg, both(input, gen));
        let dir = (|| {
            let d_img = difference(gen.as_ref()?, input.as_ref()?);
            let d_txt = difference(out_cap.as_ref()?, in_cap.as_ref()?);
            Some(cosine(&d_img, &d_txt))
        })();
        self.scores.set(Metric::ClipDir, dir);
        let [dgen, dgt] = &self.dino_images;
        self.scores.set(Metric::Dino, both(dgen, dgt));
        self.scores
    }
}

/// Face similarity and effectiveness: the generated face against the input's (else the
/// ground truth's); a network failure is reported on the sample.
fn face_metrics(
    faces: &faces::FaceModels,
    images: &[Option<RgbImage>; 3],
    scores: &mut SampleScores,
) {
    let reference = images[INPUT].as_ref().or(images[GT].as_ref());
    let (Some(generated), Some(reference)) = (images[GEN].as_ref(), reference) else {
        return;
    };
    match (
        faces.face_embedding(generated),
        faces.face_embedding(reference),
    ) {
        (Ok(g), Ok(r)) => {
            let (sim, effective) = faces::face_scores(g.as_deref(), r.as_deref());
            scores.set(Metric::FaceSimilarity, sim);
            scores.set(Metric::FaceEffective, effective);
        }
        (Err(e), _) | (_, Err(e)) => scores.errors.push(e.to_string()),
    }
}

/// `a − b`.
fn difference(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// Runs the embedding models over every preprocessed image and caption of a batch.
fn embed(batch: &mut [Loaded], models: &Models) -> Result<()> {
    if let Some(clip) = &models.clip {
        for slot in 0..3 {
            let (idx, pix): (Vec<usize>, Vec<Vec<f32>>) = batch
                .iter_mut()
                .enumerate()
                .filter_map(|(i, l)| l.clip_pixels[slot].take().map(|p| (i, p)))
                .unzip();
            for (i, e) in idx.into_iter().zip(clip.embed_images(&pix)?) {
                batch[i].clip_images[slot] = Some(e);
            }
        }
        for slot in 0..2 {
            let (idx, texts): (Vec<usize>, Vec<String>) = batch
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.texts[slot].clone().map(|t| (i, t)))
                .unzip();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for (i, e) in idx.into_iter().zip(clip.embed_texts(&refs)?) {
                batch[i].clip_texts[slot] = Some(e);
            }
        }
    }
    if let Some(dino) = &models.dino {
        for slot in 0..2 {
            let (idx, pix): (Vec<usize>, Vec<Vec<f32>>) = batch
                .iter_mut()
                .enumerate()
                .filter_map(|(i, l)| l.dino_pixels[slot].take().map(|p| (i, p)))
                .unzip();
            for (i, e) in idx.into_iter().zip(dino.embed_images(&pix)?) {
                batch[i].dino_images[slot] = Some(e);
            }
        }
    }
    Ok(())
}

/// Reads an image as 8-bit RGB; a missing file is named as such.
fn load_rgb(path: &Path) -> Result<RgbImage> {
    if !path.exists() {
        return Err(crate::Error::Image {
            path: path.to_path_buf(),
            message: "no such file".into(),
        });
    }
    crate::imageio::load_rgb(path)
}
