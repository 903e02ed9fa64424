//! The `depth` analysis operation: a MiDaS v2.1 monocular depth network (ONNX, run by OpenCV
//! DNN) turns a photograph into a relative inverse-depth map, drawn as grey (near = bright).
//!
//! Pre-processing follows MiDaS's own ONNX runner: RGB scaled to [0, 1], resized bicubically to
//! the network's square input (256 for `midas_v21_small`, 384 for the large v2.1 model), then
//! normalised with the ImageNet mean/std MiDaS trains with. The v2.1 release ONNX files
//! (`model-small.onnx`, `model-f6b98070.onnx`) expect that; exports that normalise inside the
//! graph (MiDaS v2's `model-f46da743.onnx`) take `normalize: false`.
//!
//! Post-processing: the prediction is resized bicubically back to the input size, then min-max
//! scaled to 0..255 (truncated, as the ControlNet/scepter annotator does) and repeated over
//! three channels.

use crate::analyze::dnn::{self, FlagNames, ModelFiles, Tensor};
use crate::analyze::{cv, Operation};
use crate::{Error, Result};
use image::RgbImage;
use opencv::core::{Mat, Size, CV_32F, CV_32FC3};
use opencv::imgproc;
use opencv::prelude::*;

/// ImageNet channel means (RGB) MiDaS normalises with.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Network input side of `midas_v21_small`.
pub const DEFAULT_SIZE: u32 = 256;

/// The flags of `ace analyze depth`.
pub const FLAGS: FlagNames = FlagNames {
    model: "--model",
    size: "--size",
};

/// What to tell a user who asked for `depth` without a model, in the command's `flags`.
pub fn model_hint(flags: FlagNames) -> String {
    format!(
        "pass {} FILE.onnx with a MiDaS v2.1 ONNX file (model-small.onnx, 256 px, or \
         model-f6b98070.onnx with {} 384)",
        flags.model, flags.size
    )
}

/// Parameters of the `depth` operation.
#[derive(Debug, Clone)]
pub struct DepthParams {
    /// Side of the square network input, in pixels.
    pub size: u32,
    /// Subtract the ImageNet mean and divide by its std (off for exports that do it inside).
    pub normalize: bool,
    /// The flags that set the model and the size, named in errors.
    pub flags: FlagNames,
}

impl Default for DepthParams {
    fn default() -> Self {
        DepthParams {
            size: DEFAULT_SIZE,
            normalize: true,
            flags: FLAGS,
        }
    }
}

/// The `depth` operation with its network.
#[derive(Debug)]
pub struct Depth {
    model: ModelFiles,
    params: DepthParams,
}

impl Depth {
    /// Checks the parameters and loads the network once, so a bad model fails up front.
    /// `model` is the list of files given with `--model` (empty: none).
    pub fn new(model: &[std::path::PathBuf], params: DepthParams) -> Result<Self> {
        if model.is_empty() {
            return Err(Error::ModelRequired {
                what: "depth".into(),
                hint: model_hint(params.flags),
            });
        }
        if !(8..=4096).contains(&params.size) {
            return Err(Error::invalid(
                params.flags.size,
                format!("{} is outside 8..=4096", params.size),
            ));
        }
        let model = ModelFiles::from_paths(model, params.flags.model)?;
        dnn::preload(&model)?;
        Ok(Depth { model, params })
    }
}

impl Operation for Depth {
    fn name(&self) -> &'static str {
        "depth"
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model.weights(),
            "size": self.params.size,
            "normalize": self.params.normalize,
        })
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let blob = blob(image, &self.params)?;
        let prediction = dnn::forward(&self.model, &blob)?;
        let (h, w) = map_shape(&prediction).ok_or_else(|| Error::Model {
            path: self.model.weights().to_path_buf(),
            message: format!(
                "output of shape {:?} is not a depth map (expected 1xHxW or 1x1xHxW)",
                prediction.shape
            ),
        })?;
        to_image(&prediction.data, w, h, image.width(), image.height())
    }
}

/// The network input: `image` in RGB, scaled to [0, 1], resized bicubically to `size` x
/// `size`, optionally ImageNet-normalised, as a 1x3xSxS blob.
pub fn blob(image: &RgbImage, params: &DepthParams) -> Result<Mat> {
    let mut unit = Mat::default();
    cv::rgb_to_mat(image)?.convert_to(&mut unit, CV_32FC3, 1.0 / 255.0, 0.0)?;
    let s = params.size as i32;
    let mut resized = Mat::default();
    imgproc::resize(
        &unit,
        &mut resized,
        Size::new(s, s),
        0.0,
        0.0,
        imgproc::INTER_CUBIC,
    )?;
    let pixels = resized.data_typed::<opencv::core::Vec3f>()?;
    let plane = (s * s) as usize;
    let mut data = vec![0f32; 3 * plane];
    for (i, p) in pixels.iter().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = if params.normalize {
                (p[c] - MEAN[c]) / STD[c]
            } else {
                p[c]
            };
        }
    }
    dnn::nchw([1, 3, s as usize, s as usize], &data)
}

/// Height and width of a depth prediction shaped 1xHxW, 1x1xHxW or HxW.
fn map_shape(t: &Tensor) -> Option<(usize, usize)> {
    match t.shape.as_slice() {
        [h, w] | [1, h, w] | [1, 1, h, w] => Some((*h, *w)),
        _ => None,
    }
}

/// The `w` x `h` prediction resized bicubically to `out_w` x `out_h`, min-max scaled to
/// 0..255 (truncated) as a grey RGB image. A flat prediction is black.
pub fn to_image(
    prediction: &[f32],
    w: usize,
    h: usize,
    out_w: u32,
    out_h: u32,
) -> Result<RgbImage> {
    let (lo, hi) = min_max(prediction);
    let flat = (hi - lo).partial_cmp(&(f32::EPSILON * lo.abs().max(hi.abs())));
    if flat != Some(std::cmp::Ordering::Greater) {
        return Ok(RgbImage::new(out_w, out_h));
    }
    let map = Mat::new_rows_cols_with_data::<f32>(h as i32, w as i32, prediction)?;
    let mut resized = Mat::default();
    if (w as u32, h as u32) == (out_w, out_h) {
        resized = map.try_clone()?;
    } else {
        imgproc::resize(
            &map,
            &mut resized,
            Size::new(out_w as i32, out_h as i32),
            0.0,
            0.0,
            imgproc::INTER_CUBIC,
        )?;
    }
    debug_assert_eq!(resized.typ(), CV_32F);
    let values = resized.data_typed::<f32>()?;
    let (lo, hi) = min_max(values);
    let grey = |v: f32| ((v - lo) / (hi - lo) * 255.0).clamp(0.0, 255.0) as u8;
    let buf = values.iter().flat_map(|&v| [grey(v); 3]).collect();
    RgbImage::from_raw(out_w, out_h, buf)
        .ok_or_else(|| Error::invalid("depth map", "buffer size does not match its shape"))
}

/// Smallest and largest of `values`.
fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixture() -> Vec<PathBuf> {
        vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dnn/depth.onnx")]
    }

    #[test]
    fn blob_is_rgb_over_255_in_nchw_and_optionally_imagenet_normalised() {
        let img = RgbImage::from_fn(2, 2, |x, y| image::Rgb([(10 * x + 20 * y) as u8, 51, 255]));
        let params = DepthParams {
            size: 2,
            normalize: false,
            flags: FLAGS,
        };
        let b = dnn::tensor(&blob(&img, &params).unwrap()).unwrap();
        assert_eq!(b.shape, vec![1, 3, 2, 2]);
        for (got, v) in b.data[0..4].iter().zip([0.0, 10.0, 20.0, 30.0]) {
            assert!((got - v / 255.0).abs() < 1e-7, "{got} vs {v} / 255");
        }
        assert!(b.data[4..8].iter().all(|v| (v - 0.2).abs() < 1e-7));
        assert!(b.data[8..12].iter().all(|v| (v - 1.0).abs() < 1e-7));

        let n = dnn::tensor(
            &blob(
                &img,
                &DepthParams {
                    normalize: true,
                    ..params
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert!((n.data[4] - (0.2 - 0.456) / 0.224).abs() < 1e-6);
        assert!((n.data[8] - (1.0 - 0.406) / 0.225).abs() < 1e-6);
    }

    #[test]
    fn blob_resizes_to_the_network_side() {
        let img = RgbImage::from_pixel(10, 6, image::Rgb([255, 0, 51]));
        let b = dnn::tensor(
            &blob(
                &img,
                &DepthParams {
                    size: 4,
                    normalize: false,
                    flags: FLAGS,
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(b.shape, vec![1, 3, 4, 4]);
        // A flat image stays flat under bicubic resizing.
        assert!(b.data[..16].iter().all(|&v| (v - 1.0).abs() < 1e-6));
        assert!(b.data[32..].iter().all(|&v| (v - 0.2).abs() < 1e-6));
    }

    #[test]
    fn min_max_scaling_truncates_and_a_flat_map_is_black() {
        let img = to_image(&[0.0, 1.0, 2.0, 3.0, 0.5, 3.0], 3, 2, 3, 2).unwrap();
        let grey: Vec<u8> = img.pixels().map(|p| p.0[0]).collect();
        // 0.5 / 3 * 255 = 42.5 -> 42.
        assert_eq!(grey, vec![0, 85, 170, 255, 42, 255]);
        assert!(img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
        let flat = to_image(&[7.0; 4], 2, 2, 5, 3).unwrap();
        assert_eq!(flat.dimensions(), (5, 3));
        assert!(flat.pixels().all(|p| p.0 == [0, 0, 0]));
    }

    #[test]
    fn runs_the_fixture_network_end_to_end() {
        // depth.onnx: d = 0.5 R + 0.25 G + 0.25 B + 0.1 on [0, 1] input, then 2x2 average
        // pooling: 8x8 in, 4x4 out. Rows of the image are constant, so d depends on the row
        // block only.
        let op = Depth::new(
            &fixture(),
            DepthParams {
                size: 8,
                normalize: false,
                flags: FLAGS,
            },
        )
        .unwrap();
        let img = RgbImage::from_fn(8, 8, |_, y| image::Rgb([(y * 30) as u8, 0, 0]));
        let out = op.apply(&img).unwrap();
        assert_eq!(out.dimensions(), (8, 8));
        let column: Vec<u8> = (0..8).map(|y| out.get_pixel(3, y).0[0]).collect();
        for x in 0..8 {
            assert_eq!(
                (0..8).map(|y| out.get_pixel(x, y).0[0]).collect::<Vec<_>>(),
                column
            );
        }
        // Block means 0.1294, 0.2471, 0.3647, 0.4824 resized 4 -> 8 rows by OpenCV's
        // bicubic (A = -0.75, replicated border): 0.1170, 0.1519, 0.2080, 0.2820, 0.3298,
        // 0.4038, 0.4598, 0.4948, then min-max scaled and truncated.
        assert_eq!(column, vec![0, 23, 61, 111, 143, 193, 231, 255]);
    }

    #[test]
    fn network_values_reach_the_map_exactly() {
        // Same size in and out of the resize: the 4x4 prediction of a 4x4-block image.
        let op = Depth::new(
            &fixture(),
            DepthParams {
                size: 8,
                normalize: false,
                flags: FLAGS,
            },
        )
        .unwrap();
        // Block n = bx + 4 by has R = n^2: the prediction is 0.5 n^2 / 255 + 0.1, so the
        // min-max map is 255 n^2 / 225 = 17 n^2 / 15, truncated (never near an integer
        // except at n = 0 and 15, so float rounding cannot tip it).
        let img = RgbImage::from_fn(8, 8, |x, y| {
            let n = x / 2 + 4 * (y / 2);
            image::Rgb([(n * n) as u8, 0, 0])
        });
        let t = dnn::forward(&op.model, &blob(&img, &op.params).unwrap()).unwrap();
        assert_eq!(t.shape, vec![1, 4, 4]);
        for (n, v) in t.data.iter().enumerate() {
            let want = 0.5 * (n * n) as f32 / 255.0 + 0.1;
            assert!((v - want).abs() < 1e-6, "{n}: {v}");
        }
        let map = to_image(&t.data, 4, 4, 4, 4).unwrap();
        let grey: Vec<u8> = map.pixels().map(|p| p.0[0]).collect();
        let expected: Vec<u8> = (0..16u32).map(|n| (17 * n * n / 15) as u8).collect();
        assert_eq!(grey, expected);
    }

    #[test]
    fn without_a_model_it_names_the_files_and_the_flag() {
        let e = Depth::new(&[], DepthParams::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("depth needs a model: pass --model FILE.onnx"),
            "{e}"
        );
        assert!(e.contains("model-small.onnx"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
}
