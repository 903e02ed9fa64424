//! Image embeddings for pair mining computed in-process with the CLIP image encoder of
//! `ace eval` (the paper mines pairs on such embeddings, appendix E): images are read and
//! preprocessed in parallel, embedded in batches, and unreadable images are reported, not
//! silently dropped.

use super::embeddings::Embeddings;
use crate::inputs::Input;
use crate::model::vision::clip::Clip;
use crate::{Error, Result};
use rayon::prelude::*;

/// Images embedded per forward pass.
const BATCH: usize = 16;

/// The embedded images: one row per readable image, its id (the image's path relative to the
/// operand that found it), and the errors of the images that could not be read.
pub struct Embedded {
    pub embeddings: Embeddings,
    pub ids: Vec<String>,
    pub failures: Vec<Error>,
}

/// Embeds `inputs` with `clip`'s image tower (projected embeddings).
pub fn clip_images(inputs: &[Input], clip: &Clip) -> Result<Embedded> {
    let preprocess = clip.preprocess();
    let loaded: Vec<(String, Result<Vec<f32>>)> = inputs
        .par_iter()
        .map(|input| {
            let id = input.relative.to_string_lossy().into_owned();
            (id, input.load().map(|img| preprocess.apply(&img.to_rgb8())))
        })
        .collect();
    let mut ids = Vec::new();
    let mut pixels = Vec::new();
    let mut failures = Vec::new();
    for (id, result) in loaded {
        match result {
            Ok(p) => {
                ids.push(id);
                pixels.push(p);
            }
            Err(e) => failures.push(e),
        }
    }
    let mut data = Vec::new();
    let mut dim = 0;
    for chunk in pixels.chunks(BATCH) {
        for row in clip.embed_images(chunk)? {
            dim = row.len();
            data.extend(row);
        }
    }
    Ok(Embedded {
        embeddings: Embeddings {
            rows: ids.len(),
            dim,
            data,
        },
        ids,
        failures,
    })
}
