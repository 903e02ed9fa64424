//! Reading the text of a generated image (Table 8) with a CRNN text recogniser through OpenCV
//! DNN, as OpenCV's text recognition models work: the whole image in grey (ITU-R 601 luma),
//! resized to 100×32, scaled to [−1, 1]; the output is T × 1 × classes (class 0 the CTC blank,
//! class i the i-th symbol of the charset file), decoded greedily (best class per step, repeats
//! merged, blanks dropped).

use crate::analyze::dnn::{self, ModelFiles};
use crate::resize::resize_bicubic;
use crate::{Error, Result};
use image::RgbImage;
use std::path::Path;

const WIDTH: u32 = 100;
const HEIGHT: u32 = 32;

/// A text recogniser and its symbols.
#[derive(Debug, Clone)]
pub struct TextRecognizer {
    model: ModelFiles,
    charset: Vec<String>,
}

impl TextRecognizer {
    /// Loads the network (on this thread, so a bad file fails early) and the charset (one
    /// symbol a line).
    pub fn new(model: &Path, charset: &Path) -> Result<Self> {
        let model = ModelFiles::from_paths(&[model.to_path_buf()], "--ocr-model")?;
        dnn::preload(&model)?;
        let text = crate::textfile::read_list(charset)?;
        let symbols: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        if symbols.is_empty() {
            return Err(Error::Config {
                path: charset.to_path_buf(),
                message: "empty charset".into(),
            });
        }
        Ok(TextRecognizer {
            model,
            charset: symbols,
        })
    }

    /// The text of `img`.
    pub fn recognize(&self, img: &RgbImage) -> Result<String> {
        let small = resize_bicubic(img, WIDTH, HEIGHT);
        let blob: Vec<f32> = small
            .pixels()
            .map(|p| {
                let y = 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
                y / 127.5 - 1.0
            })
            .collect();
        let out = dnn::forward(
            &self.model,
            &dnn::nchw([1, 1, HEIGHT as usize, WIDTH as usize], &blob)?,
        )?;
        let classes = out.shape.last().copied().unwrap_or(0);
        if classes != self.charset.len() + 1 {
            return Err(Error::Model {
                path: self.model.weights().to_path_buf(),
                message: format!(
                    "output has {classes} classes, the charset {} symbols + blank",
                    self.charset.len()
                ),
            });
        }
        Ok(ctc_greedy(&out.data, classes, &self.charset))
    }
}

/// Greedy CTC decoding of `steps × classes` scores.
pub fn ctc_greedy(scores: &[f32], classes: usize, charset: &[String]) -> String {
    let mut text = String::new();
    let mut previous = 0;
    for step in scores.chunks_exact(classes) {
        let best = step
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        if best != 0 && best != previous {
            text.push_str(&charset[best - 1]);
        }
        previous = best;
    }
    text
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

    #[test]
    fn greedy_decoding_merges_repeats_and_drops_blanks() {
        let cs = vec!["a".to_string(), "b".to_string()];
        // Steps: a, a, blank, a, b.
        let scores = [0., 1., 0., 0., 1., 0., 1., 0., 0., 0., 1., 0., 0., 0., 1.];
        assert_eq!(ctc_greedy(&scores, 3, &cs), "aab");
    }

    #[test]
    fn reads_the_fixture_blocks() {
        let r = TextRecognizer::new(&fixture("recognizer.onnx"), &fixture("charset.txt")).unwrap();
        // Five 20-pixel column blocks: white, white, grey, white, black -> a a _ a b.
        let shades = [255u8, 255, 128, 255, 0];
        let img = RgbImage::from_fn(100, 32, |x, _| {
            let v = shades[(x / 20) as usize];
            image::Rgb([v, v, v])
        });
        assert_eq!(r.recognize(&img).unwrap(), "aab");
    }

    #[test]
    fn a_charset_that_does_not_fit_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cs = dir.path().join("cs.txt");
        std::fs::write(&cs, "a\nb\nc\n").unwrap();
        let r = TextRecognizer::new(&fixture("recognizer.onnx"), &cs).unwrap();
        let e = r
            .recognize(&RgbImage::new(100, 32))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("recognizer.onnx") && e.contains("3 classes"),
            "{e}"
        );
    }
}
