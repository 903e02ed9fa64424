//! Face identity preservation (Table 7): the face in the generated image is compared with the
//! face in the reference (the input image, else the ground truth) by the cosine of their
//! ArcFace embeddings; a sample is "effective" when that similarity exceeds 0.3493. Faces are
//! found by an SSD face detector (OpenCV's res10 layout: a 300×300 BGR input with the mean
//! (104, 177, 123) subtracted, detections as rows of image id, label, confidence and a
//! normalised box); the most confident face above 0.5 is cropped, resized to 112×112 and
//! embedded by an ArcFace network (RGB, (x − 127.5) / 127.5). Both run through OpenCV DNN,
//! one network per thread.

use crate::analyze::dnn::{self, ModelFiles};
use crate::resize::resize_bicubic;
use crate::{Error, Result};
use image::RgbImage;
use std::path::Path;

/// Similarity above which a sample counts as effective.
pub const EFFECTIVE_THRESHOLD: f64 = 0.3493;
/// Detections below this confidence are ignored.
pub const DETECTION_THRESHOLD: f32 = 0.5;
const DETECTOR_SIZE: u32 = 300;
const DETECTOR_MEAN: [f32; 3] = [104.0, 177.0, 123.0];
const FACE_SIZE: u32 = 112;

/// A face box in pixels: x, y, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaceBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The detector and embedder networks.
#[derive(Debug, Clone)]
pub struct FaceModels {
    detector: ModelFiles,
    embedder: ModelFiles,
}

impl FaceModels {
    /// Checks and loads both networks (on this thread) so a bad file fails early.
    pub fn new(detector: &Path, embedder: &Path) -> Result<Self> {
        let m = FaceModels {
            detector: ModelFiles::from_paths(&[detector.to_path_buf()], "--face-detector")?,
            embedder: ModelFiles::from_paths(&[embedder.to_path_buf()], "--face-model")?,
        };
        dnn::preload(&m.detector)?;
        dnn::preload(&m.embedder)?;
        Ok(m)
    }

    /// The most confident face of `img`, if any.
    pub fn detect(&self, img: &RgbImage) -> Result<Option<FaceBox>> {
        let small = resize_bicubic(img, DETECTOR_SIZE, DETECTOR_SIZE);
        let blob = planar(&small, |c, v| v - DETECTOR_MEAN[c], true);
        let n = DETECTOR_SIZE as usize;
        let out = dnn::forward(&self.detector, &dnn::nchw([1, 3, n, n], &blob)?)?;
        if out.shape.last() != Some(&7) {
            return Err(Error::Model {
                path: self.detector.weights().to_path_buf(),
                message: format!("expected detections of 7 values, got shape {:?}", out.shape),
            });
        }
        let best = out
            .data
            .chunks_exact(7)
            .filter(|d| d[2] >= DETECTION_THRESHOLD)
            .max_by(|a, b| a[2].total_cmp(&b[2]));
        let (w, h) = (img.width() as f32, img.height() as f32);
        Ok(best.and_then(|d| {
            let x1 = (d[3].clamp(0.0, 1.0) * w).floor() as u32;
            let y1 = (d[4].clamp(0.0, 1.0) * h).floor() as u32;
            let x2 = (d[5].clamp(0.0, 1.0) * w).ceil() as u32;
            let y2 = (d[6].clamp(0.0, 1.0) * h).ceil() as u32;
            (x2 > x1 && y2 > y1).then_some(FaceBox {
                x: x1,
                y: y1,
                width: x2 - x1,
                height: y2 - y1,
            })
        }))
    }

    /// The ArcFace embedding of the face in `face` of `img`.
    pub fn embed(&self, img: &RgbImage, face: FaceBox) -> Result<Vec<f32>> {
        let crop =
            image::imageops::crop_imm(img, face.x, face.y, face.width, face.height).to_image();
        let crop = resize_bicubic(&crop, FACE_SIZE, FACE_SIZE);
        let blob = planar(&crop, |_, v| (v - 127.5) / 127.5, false);
        let n = FACE_SIZE as usize;
        Ok(dnn::forward(&self.embedder, &dnn::nchw([1, 3, n, n], &blob)?)?.data)
    }

    /// The embedding of the most confident face of `img`, `None` when it shows none.
    pub fn face_embedding(&self, img: &RgbImage) -> Result<Option<Vec<f32>>> {
        self.detect(img)?.map(|f| self.embed(img, f)).transpose()
    }
}

/// The face similarity and effectiveness of one sample from the two embeddings: without a
/// reference face neither is defined; a reference face the generated image lost scores as not
/// effective.
pub fn face_scores(
    generated: Option<&[f32]>,
    reference: Option<&[f32]>,
) -> (Option<f64>, Option<f64>) {
    match (generated, reference) {
        (_, None) => (None, None),
        (None, Some(_)) => (None, Some(0.0)),
        (Some(g), Some(r)) => {
            let sim = super::metrics::cosine(g, r);
            (
                Some(sim),
                Some(f64::from(u8::from(sim > EFFECTIVE_THRESHOLD))),
            )
        }
    }
}

/// CHW float planes of `img`, channel order RGB or (with `bgr`) BGR, each value mapped by `f`.
fn planar(img: &RgbImage, f: impl Fn(usize, f32) -> f32, bgr: bool) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            let src = if bgr { 2 - c } else { c };
            out[c * plane + i] = f(c, f32::from(p[src]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/eval-dnn")
            .join(name)
    }

    fn models() -> FaceModels {
        FaceModels::new(
            &fixture("face_detector.onnx"),
            &fixture("face_embedder.onnx"),
        )
        .unwrap()
    }

    #[test]
    fn detects_the_confident_box_in_pixels() {
        let img = RgbImage::new(200, 100);
        let b = models().detect(&img).unwrap().unwrap();
        assert_eq!(
            b,
            FaceBox {
                x: 50,
                y: 20,
                width: 100,
                height: 60
            }
        );
    }

    #[test]
    fn embeds_the_face_crop() {
        // A face of colour (255, 0, 127.5): normalised (1, -1, 0); e = (1, -1, 0, 0.5).
        let mut img = RgbImage::from_pixel(200, 100, image::Rgb([9, 9, 9]));
        for y in 20..80 {
            for x in 50..150 {
                img.put_pixel(x, y, image::Rgb([255, 0, 128]));
            }
        }
        let e = models().face_embedding(&img).unwrap().unwrap();
        let b = (128.0 - 127.5) / 127.5;
        let want = [1.0, -1.0, b, 0.5 + b];
        assert!(
            e.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-4),
            "{e:?}"
        );
    }

    #[test]
    fn scores_follow_the_threshold() {
        let (a, b) = ([1.0, 0.0], [1.0, 1.0]);
        let (sim, eff) = face_scores(Some(&a), Some(&b));
        assert!((sim.unwrap() - 0.5f64.sqrt()).abs() < 1e-9);
        assert_eq!(eff, Some(1.0));
        assert_eq!(
            face_scores(Some(&[1.0, 0.0]), Some(&[0.0, 1.0])).1,
            Some(0.0)
        );
        assert_eq!(face_scores(None, Some(&a)), (None, Some(0.0)));
        assert_eq!(face_scores(Some(&a), None), (None, None));
    }

    #[test]
    fn a_missing_model_is_named() {
        let e = FaceModels::new(&fixture("nope.onnx"), &fixture("face_embedder.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.onnx"), "{e}");
    }
}
