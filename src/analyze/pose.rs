//! The `pose` analysis operation: an OpenPose COCO-18 body network (Caffe or ONNX, run by
//! OpenCV DNN) finds people's keypoints, drawn as ControlNet's OpenPose skeleton on black.
//!
//! Pre-processing is the one the network was trained with (CMU OpenPose, kept by ControlNet and
//! scepter): BGR, resized bicubically to `height` pixels high keeping the aspect ratio, padded
//! right and bottom to a multiple of the stride 8 with grey 128, then `(x - 128) / 256`.
//! The network returns, at stride 8, 19 part heatmaps (18 keypoints + background) followed by
//! 38 part affinity fields (PAFs, an x/y pair per limb).
//!
//! Post-processing: keypoint candidates are heatmap cells above `threshold` that are no lower
//! than their four neighbours, refined to sub-cell precision by a parabola through each axis'
//! neighbours and mapped to image pixels. Candidates are joined into people by the PAF
//! assembly of OpenPose: each limb scores every candidate pair by the field sampled along the
//! segment, pairs are taken greedily by score, and limbs sharing a keypoint are merged into
//! one person; people with fewer than 4 parts or a mean score under 0.4 are dropped.

use crate::analyze::dnn::{self, FlagNames, ModelFiles, Tensor};
use crate::analyze::skeleton::{self, Person, KEYPOINTS, LIMBS};
use crate::analyze::{cv, Operation};
use crate::{Error, Result};
use image::RgbImage;
use opencv::core::{Mat, Scalar, Size, BORDER_CONSTANT, CV_32F};
use opencv::imgproc;
use opencv::prelude::*;

/// Network stride: one heatmap cell per 8x8 input pixels.
pub const STRIDE: usize = 8;
/// Default network input height (OpenPose's box size).
pub const DEFAULT_HEIGHT: u32 = 368;
/// Default heatmap threshold for a keypoint candidate.
pub const DEFAULT_THRESHOLD: f32 = 0.1;
/// Grey the input is padded with and centred on.
const PAD_VALUE: f64 = 128.0;
/// Heatmap channels (18 keypoints + background) before the PAFs.
const HEATMAPS: usize = 19;
/// PAF x/y channels (absolute, in the 57-channel output) of each limb of [`LIMBS`].
const PAF_CHANNELS: [[usize; 2]; 19] = [
    [31, 32],
    [39, 40],
    [33, 34],
    [35, 36],
    [41, 42],
    [43, 44],
    [19, 20],
    [21, 22],
    [23, 24],
    [25, 26],
    [27, 28],
    [29, 30],
    [47, 48],
    [49, 50],
    [53, 54],
    [51, 52],
    [55, 56],
    [37, 38],
    [45, 46],
];
/// Points sampled along a limb when scoring it.
const PAF_SAMPLES: usize = 10;
/// A PAF sample supports a limb above this value.
const PAF_THRESHOLD: f32 = 0.05;
/// Fewest keypoints a person keeps.
const MIN_PARTS: usize = 4;
/// Lowest mean score (per part) a person keeps.
const MIN_MEAN_SCORE: f32 = 0.4;

/// The flags of `ace analyze pose`.
pub const FLAGS: FlagNames = FlagNames {
    model: "--model",
    size: "--height",
};

/// What to tell a user who asked for `pose` without a model, in the command's `flags`.
pub fn model_hint(flags: FlagNames) -> String {
    let m = flags.model;
    format!(
        "pass {m} twice with the OpenPose COCO body model ({m} pose_deploy_linevec.prototxt \
         {m} pose_iter_440000.caffemodel), or {m} FILE.onnx with an ONNX export of it"
    )
}

/// Parameters of the `pose` operation.
#[derive(Debug, Clone)]
pub struct PoseParams {
    /// Network input height in pixels (the width follows the aspect ratio).
    pub height: u32,
    /// Heatmap value a keypoint candidate must exceed.
    pub threshold: f32,
    /// The flags that set the model and the height, named in errors.
    pub flags: FlagNames,
}

impl Default for PoseParams {
    fn default() -> Self {
        PoseParams {
            height: DEFAULT_HEIGHT,
            threshold: DEFAULT_THRESHOLD,
            flags: FLAGS,
        }
    }
}

/// The `pose` operation with its network.
#[derive(Debug)]
pub struct Pose {
    model: ModelFiles,
    params: PoseParams,
}

impl Pose {
    /// Checks the parameters and loads the network once, so a bad model fails up front.
    /// `model` is the list of files given with `--model` (empty: none).
    pub fn new(model: &[std::path::PathBuf], params: PoseParams) -> Result<Self> {
        if model.is_empty() {
            return Err(Error::ModelRequired {
                what: "pose".into(),
                hint: model_hint(params.flags),
            });
        }
        if !(STRIDE as u32..=4096).contains(&params.height) {
            return Err(Error::invalid(
                params.flags.size,
                format!("{} is outside 8..=4096", params.height),
            ));
        }
        if !(0.0..=1.0).contains(&params.threshold) {
            return Err(Error::invalid(
                "pose threshold",
                format!("{} is outside [0, 1]", params.threshold),
            ));
        }
        let model = ModelFiles::from_paths(model, params.flags.model)?;
        dnn::preload(&model)?;
        Ok(Pose { model, params })
    }

    /// The people found in `image`.
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Person>> {
        let (blob, geometry) = blob(image, self.params.height)?;
        let output = dnn::forward(&self.model, &blob)?;
        let maps = Maps::new(&output).map_err(|message| Error::Model {
            path: self.model.weights().to_path_buf(),
            message,
        })?;
        Ok(assemble(&maps, &geometry, self.params.threshold))
    }
}

impl Operation for Pose {
    fn name(&self) -> &'static str {
        "pose"
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model.weights(),
            "height": self.params.height,
            "threshold": self.params.threshold,
        })
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        skeleton::draw(image.width(), image.height(), &self.detect(image)?)
    }
}

/// How network cells map back to the image.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    /// Resize factor from the image to the network input.
    pub scale: f64,
    /// Size of the resized image before padding.
    pub resized: (u32, u32),
    /// Size of the original image.
    pub image: (u32, u32),
}

impl Geometry {
    /// Image position of a (fractional) heatmap cell: the cell's centre in the resized
    /// image, mapped back through the resize (pixel centres aligned), clamped to the image.
    fn to_image(&self, cx: f32, cy: f32) -> (f32, f32) {
        let back = |c: f32, size: u32| {
            let resized = STRIDE as f64 * c as f64 + (STRIDE as f64 - 1.0) / 2.0;
            (((resized + 0.5) / self.scale - 0.5).clamp(0.0, size as f64 - 1.0)) as f32
        };
        (back(cx, self.image.0), back(cy, self.image.1))
    }
}

/// The network input for `image`: BGR, `height` pixels high, padded to the stride with 128,
/// `(x - 128) / 256`, as a 1x3xHxW blob; and how its cells map back to the image.
pub fn blob(image: &RgbImage, height: u32) -> Result<(Mat, Geometry)> {
    let scale = height as f64 / image.height() as f64;
    let mut resized = Mat::default();
    imgproc::resize(
        &cv::rgb_to_mat(image)?,
        &mut resized,
        Size::default(),
        scale,
        scale,
        imgproc::INTER_CUBIC,
    )?;
    let (rw, rh) = (resized.cols() as usize, resized.rows() as usize);
    let pad = |n: usize| ((STRIDE - n % STRIDE) % STRIDE) as i32;
    let mut padded = Mat::default();
    opencv::core::copy_make_border(
        &resized,
        &mut padded,
        0,
        pad(rh),
        0,
        pad(rw),
        BORDER_CONSTANT,
        Scalar::all(PAD_VALUE),
    )?;
    let blob = opencv::dnn::blob_from_image(
        &padded,
        1.0 / 256.0,
        Size::default(),
        Scalar::all(PAD_VALUE),
        true,
        false,
        CV_32F,
    )?;
    let geometry = Geometry {
        scale,
        resized: (rw as u32, rh as u32),
        image: image.dimensions(),
    };
    Ok((blob, geometry))
}

/// The heatmaps and PAFs of one network output.
#[derive(Debug)]
pub struct Maps<'a> {
    data: &'a [f32],
    width: usize,
    height: usize,
}

impl<'a> Maps<'a> {
    /// Checks that `t` is 1xCxHxW with at least the 57 COCO channels.
    pub fn new(t: &'a Tensor) -> Result<Self, String> {
        match t.shape.as_slice() {
            &[1, c, h, w] if c >= HEATMAPS + 2 * LIMBS.len() && h > 0 && w > 0 => Ok(Maps {
                data: &t.data,
                width: w,
                height: h,
            }),
            s => Err(format!(
                "output of shape {s:?} is not OpenPose COCO (expected 1x57xHxW: 19 heatmaps, 38 PAFs)"
            )),
        }
    }

    fn channel(&self, c: usize) -> &[f32] {
        let n = self.width * self.height;
        &self.data[c * n..(c + 1) * n]
    }

    /// Bilinear sample of channel `c` at cell position (x, y), clamped to the grid.
    fn sample(&self, c: usize, x: f32, y: f32) -> f32 {
        let map = self.channel(c);
        let x = x.clamp(0.0, (self.width - 1) as f32);
        let y = y.clamp(0.0, (self.height - 1) as f32);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let at = |x: usize, y: usize| map[y * self.width + x];
        let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
        let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }
}

/// A keypoint candidate: its part, heatmap position (cells), image position and score.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub part: usize,
    pub cell: (f32, f32),
    pub pixel: (f32, f32),
    pub score: f32,
}

/// Offset of a parabola's vertex through (-1, l), (0, c), (1, r), within half a cell.
fn vertex(l: f32, c: f32, r: f32) -> f32 {
    let curvature = l - 2.0 * c + r;
    if curvature < 0.0 {
        ((l - r) / (2.0 * curvature)).clamp(-0.5, 0.5)
    } else {
        0.0
    }
}

/// Candidates of keypoint `part`: cells inside the unpadded image above `threshold` and no
/// lower than their four neighbours (zero outside the grid).
pub fn candidates(maps: &Maps, geometry: &Geometry, part: usize, threshold: f32) -> Vec<Candidate> {
    let map = maps.channel(part);
    let (w, h) = (maps.width, maps.height);
    let at = |x: isize, y: isize| {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0.0
        } else {
            map[y as usize * w + x as usize]
        }
    };
    let mut out = Vec::new();
    for y in 0..h.min((geometry.resized.1 as usize).div_ceil(STRIDE)) {
        for x in 0..w.min((geometry.resized.0 as usize).div_ceil(STRIDE)) {
            let (xi, yi) = (x as isize, y as isize);
            let v = at(xi, yi);
            let (l, r, u, d) = (
                at(xi - 1, yi),
                at(xi + 1, yi),
                at(xi, yi - 1),
                at(xi, yi + 1),
            );
            if v > threshold && v >= l && v >= r && v >= u && v >= d {
                let cell = (x as f32 + vertex(l, v, r), y as f32 + vertex(u, v, d));
                out.push(Candidate {
                    part,
                    cell,
                    pixel: geometry.to_image(cell.0, cell.1),
                    score: v,
                });
            }
        }
    }
    out
}

/// The PAF score of limb `k` from candidate `a` to `b`, with the distance prior, if the
/// field supports the limb along most of its length.
fn limb_score(
    maps: &Maps,
    geometry: &Geometry,
    k: usize,
    a: &Candidate,
    b: &Candidate,
) -> Option<f32> {
    let (dx, dy) = (b.cell.0 - a.cell.0, b.cell.1 - a.cell.1);
    let norm = (dx * dx + dy * dy).sqrt().max(1e-3);
    let (ux, uy) = (dx / norm, dy / norm);
    let [cx, cy] = PAF_CHANNELS[k];
    let scores: Vec<f32> = (0..PAF_SAMPLES)
        .map(|i| {
            let t = i as f32 / (PAF_SAMPLES - 1) as f32;
            let (x, y) = (a.cell.0 + t * dx, a.cell.1 + t * dy);
            maps.sample(cx, x, y) * ux + maps.sample(cy, x, y) * uy
        })
        .collect();
    let (px, py) = (b.pixel.0 - a.pixel.0, b.pixel.1 - a.pixel.1);
    let pixel_norm = (px * px + py * py).sqrt().max(1e-3);
    let prior = (0.5 * geometry.image.1 as f32 / pixel_norm - 1.0).min(0.0);
    let score = scores.iter().sum::<f32>() / PAF_SAMPLES as f32 + prior;
    let supported = scores.iter().filter(|&&s| s > PAF_THRESHOLD).count();
    (supported as f32 > 0.8 * PAF_SAMPLES as f32 && score > 0.0).then_some(score)
}

/// One person being assembled: a candidate index per part, the summed score, the part count.
struct Row {
    parts: [Option<usize>; KEYPOINTS],
    score: f32,
    count: usize,
}

/// The people in `maps`: keypoint candidates joined along the limbs by their PAFs.
pub fn assemble(maps: &Maps, geometry: &Geometry, threshold: f32) -> Vec<Person> {
    let mut all: Vec<Candidate> = Vec::new();
    let mut by_part: Vec<Vec<usize>> = Vec::with_capacity(KEYPOINTS);
    for part in 0..KEYPOINTS {
        let found = candidates(maps, geometry, part, threshold);
        by_part.push((all.len()..all.len() + found.len()).collect());
        all.extend(found);
    }
    let mut rows: Vec<Row> = Vec::new();
    for (k, &[pa, pb]) in LIMBS.iter().enumerate() {
        let (ca, cb) = (&by_part[pa], &by_part[pb]);
        if ca.is_empty() || cb.is_empty() {
            continue;
        }
        // Every supported pair, best first; then greedily, each candidate used once.
        let mut pairs: Vec<(usize, usize, f32)> = Vec::new();
        for &i in ca {
            for &j in cb {
                if let Some(s) = limb_score(maps, geometry, k, &all[i], &all[j]) {
                    pairs.push((i, j, s));
                }
            }
        }
        pairs.sort_by(|x, y| y.2.total_cmp(&x.2));
        let mut chosen: Vec<(usize, usize, f32)> = Vec::new();
        for (i, j, s) in pairs {
            if chosen.iter().all(|&(ci, cj, _)| ci != i && cj != j) {
                chosen.push((i, j, s));
                if chosen.len() >= ca.len().min(cb.len()) {
                    break;
                }
            }
        }
        for (a, b, s) in chosen {
            let found: Vec<usize> = rows
                .iter()
                .enumerate()
                .filter(|(_, r)| r.parts[pa] == Some(a) || r.parts[pb] == Some(b))
                .map(|(n, _)| n)
                .take(2)
                .collect();
            match *found.as_slice() {
                [j] => {
                    let row = &mut rows[j];
                    if row.parts[pb] != Some(b) {
                        row.parts[pb] = Some(b);
                        row.count += 1;
                        row.score += all[b].score + s;
                    }
                }
                [j1, j2] => {
                    let disjoint = (0..KEYPOINTS)
                        .all(|p| rows[j1].parts[p].is_none() || rows[j2].parts[p].is_none());
                    if disjoint {
                        let other = rows.remove(j2);
                        let row = &mut rows[j1];
                        for p in 0..KEYPOINTS {
                            row.parts[p] = row.parts[p].or(other.parts[p]);
                        }
                        row.count += other.count;
                        row.score += other.score + s;
                    } else {
                        let row = &mut rows[j1];
                        row.parts[pb] = Some(b);
                        row.count += 1;
                        row.score += all[b].score + s;
                    }
                }
                _ if k < skeleton::DRAWN_LIMBS => {
                    let mut parts = [None; KEYPOINTS];
                    parts[pa] = Some(a);
                    parts[pb] = Some(b);
                    rows.push(Row {
                        parts,
                        score: all[a].score + all[b].score + s,
                        count: 2,
                    });
                }
                _ => {}
            }
        }
    }
    rows.into_iter()
        .filter(|r| r.count >= MIN_PARTS && r.score / r.count as f32 >= MIN_MEAN_SCORE)
        .map(|r| Person {
            keypoints: r.parts.map(|c| c.map(|c| all[c].pixel)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixture() -> Vec<PathBuf> {
        vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dnn/pose.onnx")]
    }

    fn fixture_op() -> Pose {
        let params = PoseParams {
            height: 48,
            ..PoseParams::default()
        };
        Pose::new(&fixture(), params).unwrap()
    }

    #[test]
    fn blob_is_bgr_centred_on_128_over_256_and_padded_grey() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([10 * x as u8, 20 * y as u8, 255]));
        let (b, g) = blob(&img, 2).unwrap();
        assert_eq!(
            g,
            Geometry {
                scale: 1.0,
                resized: (3, 2),
                image: (3, 2)
            }
        );
        let t = dnn::tensor(&b).unwrap();
        assert_eq!(t.shape, vec![1, 3, 8, 8]);
        let at = |c: usize, x: usize, y: usize| t.data[c * 64 + y * 8 + x];
        // Channel 0 is blue, 2 is red.
        assert_eq!(at(0, 1, 1), (255.0 - 128.0) / 256.0);
        assert_eq!(at(1, 1, 1), (20.0 - 128.0) / 256.0);
        assert_eq!(at(2, 2, 0), (20.0 - 128.0) / 256.0);
        assert_eq!(at(2, 0, 0), -0.5);
        // Padding right and below is grey, i.e. zero.
        assert_eq!(at(0, 3, 0), 0.0);
        assert_eq!(at(2, 7, 7), 0.0);
    }

    #[test]
    fn blob_keeps_the_aspect_ratio_at_the_given_height() {
        let img = RgbImage::from_pixel(30, 20, image::Rgb([128, 128, 128]));
        let (b, g) = blob(&img, 10).unwrap();
        assert_eq!(g.resized, (15, 10));
        assert_eq!(dnn::tensor(&b).unwrap().shape, vec![1, 3, 16, 16]);
        // Cell 0's centre is pixel 3.5 of the resized image, 7.5 of the original.
        assert_eq!(g.to_image(0.0, 0.0), (7.5, 7.5));
    }

    #[test]
    fn parabola_vertex_moves_toward_the_higher_neighbour() {
        assert_eq!(vertex(0.5, 1.0, 0.5), 0.0);
        assert!((vertex(0.5, 1.0, 0.25) + 0.1).abs() < 1e-7);
        assert_eq!(vertex(0.0, 1.0, 1.0), 0.5);
        assert_eq!(vertex(1.0, 1.0, 1.0), 0.0);
    }

    #[test]
    fn finds_the_fixture_person_with_sub_cell_keypoints() {
        // pose.onnx: 6x6 cells for a 48x48 input, peaks at the cells listed in
        // scripts/make_dnn_fixtures.py; cell (x, y) is centred on pixel (8x + 3.5, 8y + 3.5).
        let people = fixture_op().detect(&RgbImage::new(48, 48)).unwrap();
        assert_eq!(people.len(), 1);
        let k = &people[0].keypoints;
        let near = |p: Option<(f32, f32)>, x: f32, y: f32| {
            let (px, py) = p.unwrap();
            (px - x).abs() < 1e-4 && (py - y).abs() < 1e-4
        };
        // The nose's neighbours are 0.5 left and 0.25 right: the vertex is 0.1 cells left.
        assert!(near(k[0], 18.7, 11.5), "{:?}", k[0]);
        assert!(near(k[1], 19.5, 19.5), "{:?}", k[1]);
        assert!(near(k[2], 11.5, 19.5), "{:?}", k[2]);
        assert!(near(k[3], 11.5, 27.5), "{:?}", k[3]);
        assert!(near(k[5], 27.5, 19.5), "{:?}", k[5]);
        assert!(near(k[6], 27.5, 27.5), "{:?}", k[6]);
        for i in [4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17] {
            assert_eq!(k[i], None, "part {i}");
        }
    }

    #[test]
    fn a_high_threshold_leaves_no_one() {
        let op = Pose::new(
            &fixture(),
            PoseParams {
                height: 48,
                threshold: 1.0,
                ..PoseParams::default()
            },
        )
        .unwrap();
        let out = op.apply(&RgbImage::new(48, 48)).unwrap();
        assert!(out.pixels().all(|p| p.0 == [0, 0, 0]));
    }

    #[test]
    fn draws_the_fixture_skeleton() {
        let out = fixture_op().apply(&RgbImage::new(48, 48)).unwrap();
        assert_eq!(out.dimensions(), (48, 48));
        let blend = |under: [u8; 3], over: [u8; 3]| -> [u8; 3] {
            std::array::from_fn(|c| (0.4 * under[c] as f32 + 0.6 * over[c] as f32).round() as u8)
        };
        let c = skeleton::COLORS;
        // Right elbow (11, 27) lies on limb 2 (right shoulder to elbow).
        assert_eq!(out.get_pixel(11, 27).0, blend(c[3], c[2]));
        assert_eq!(out.get_pixel(11, 27).0, [255, 204, 0]);
        // Below the elbow the joint circle is not under any limb.
        assert_eq!(out.get_pixel(11, 31).0, c[3]);
        // Left elbow (27, 27) under limb 4 (left shoulder to elbow); its lower rim is not.
        assert_eq!(out.get_pixel(27, 27).0, blend(c[6], c[4]));
        assert_eq!(out.get_pixel(27, 31).0, c[6]);
        // (23, 22): limb 1 (neck to left shoulder) over black, then limb 4 over that.
        assert_eq!(out.get_pixel(23, 22).0, blend(blend([0; 3], c[1]), c[4]));
        assert_eq!(out.get_pixel(23, 22).0, [163, 173, 0]);
        // The nose circle's left rim, outside limb 12.
        assert_eq!(out.get_pixel(14, 11).0, c[0]);
        // Far from everyone: black.
        assert_eq!(out.get_pixel(44, 44).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(2, 44).0, [0, 0, 0]);
    }

    #[test]
    fn drawing_matches_the_reference_drawing_pixel_for_pixel() {
        // pose_expected.png: the fixture person drawn by the ControlNet/scepter procedure with
        // OpenCV's Python bindings (scripts/make_dnn_fixtures.py).
        let expected = image::open(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dnn/pose_expected.png"),
        )
        .unwrap()
        .to_rgb8();
        let out = fixture_op().apply(&RgbImage::new(48, 48)).unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn paf_against_the_limb_direction_joins_nothing() {
        // Two candidates of the neck and right shoulder whose field points the wrong way.
        let (w, h) = (6, 6);
        let mut data = vec![0f32; 57 * w * h];
        data[w * 2 + 2] = 1.0; // nose, unused
        data[w * h + 2 * w + 2] = 1.0; // neck at (2, 2)
        data[2 * w * h + 2 * w + 4] = 1.0; // right shoulder at (4, 2)
        for x in 2..=4 {
            data[31 * w * h + 2 * w + x] = -1.0; // limb 0 field points left
        }
        let t = Tensor {
            shape: vec![1, 57, 6, 6],
            data,
        };
        let maps = Maps::new(&t).unwrap();
        let g = Geometry {
            scale: 1.0,
            resized: (48, 48),
            image: (48, 48),
        };
        let (neck, sho) = (
            &candidates(&maps, &g, 1, 0.1)[0],
            &candidates(&maps, &g, 2, 0.1)[0],
        );
        assert_eq!(limb_score(&maps, &g, 0, neck, sho), None);
        assert_eq!(
            limb_score(&maps, &g, 0, sho, neck).map(|s| (s * 1e4).round()),
            Some(1e4)
        );
    }

    /// A 57-channel output on a `w` x `h` grid with a 1.0 peak for each (part, cell) and, for
    /// each limb k, its unit direction in its PAF channels over the box between its ends.
    fn synthetic(w: usize, h: usize, peaks: &[(usize, (usize, usize))], limbs: &[usize]) -> Tensor {
        let mut data = vec![0f32; 57 * w * h];
        let cell = |part: usize| peaks.iter().find(|p| p.0 == part).unwrap().1;
        for &(part, (x, y)) in peaks {
            data[part * w * h + y * w + x] = 1.0;
        }
        for &k in limbs {
            let [a, b] = LIMBS[k];
            let ((xa, ya), (xb, yb)) = (cell(a), cell(b));
            let (dx, dy) = (xb as f32 - xa as f32, yb as f32 - ya as f32);
            let n = (dx * dx + dy * dy).sqrt();
            for y in ya.min(yb)..=ya.max(yb) {
                for x in xa.min(xb)..=xa.max(xb) {
                    data[PAF_CHANNELS[k][0] * w * h + y * w + x] = dx / n;
                    data[PAF_CHANNELS[k][1] * w * h + y * w + x] = dy / n;
                }
            }
        }
        Tensor {
            shape: vec![1, 57, h, w],
            data,
        }
    }

    fn parts_of(p: &Person) -> Vec<usize> {
        (0..KEYPOINTS)
            .filter(|&i| p.keypoints[i].is_some())
            .collect()
    }

    #[test]
    fn two_people_side_by_side_stay_apart() {
        // Neck, right shoulder, right elbow, left shoulder each, 5 cells apart; limbs 0, 1, 2.
        let mut peaks = Vec::new();
        for dx in [0, 5] {
            peaks.extend([
                (1, (2 + dx, 2)),
                (2, (1 + dx, 2)),
                (3, (1 + dx, 3)),
                (5, (3 + dx, 2)),
            ]);
        }
        // Fields for the first person only here; the second's are added below at its cells.
        let mut t = synthetic(10, 6, &peaks[..4], &[0, 1, 2]);
        let second = synthetic(10, 6, &peaks[4..], &[0, 1, 2]);
        for (v, s) in t.data.iter_mut().zip(&second.data) {
            *v += s;
        }
        let maps = Maps::new(&t).unwrap();
        let g = Geometry {
            scale: 1.0,
            resized: (80, 48),
            image: (80, 48),
        };
        let people = assemble(&maps, &g, 0.1);
        assert_eq!(people.len(), 2);
        for (person, dx) in people.iter().zip([0.0, 40.0]) {
            assert_eq!(parts_of(person), vec![1, 2, 3, 5]);
            assert_eq!(person.keypoints[1], Some((19.5 + dx, 19.5)));
            assert_eq!(person.keypoints[3], Some((11.5 + dx, 27.5)));
        }
    }

    #[test]
    fn limbs_joining_two_partial_people_merge_them() {
        // Right shoulder-elbow (limb 2) and nose-eye-ear (limbs 13, 14) start two rows of 2
        // and 3 parts, both too small to keep; limb 17 (shoulder to ear) merges them.
        let peaks = [
            (0, (5, 1)),
            (14, (4, 1)),
            (16, (3, 2)),
            (2, (3, 4)),
            (3, (3, 6)),
        ];
        let t = synthetic(8, 8, &peaks, &[2, 13, 14, 17]);
        let maps = Maps::new(&t).unwrap();
        let g = Geometry {
            scale: 1.0,
            resized: (64, 64),
            image: (64, 64),
        };
        let people = assemble(&maps, &g, 0.1);
        assert_eq!(people.len(), 1);
        assert_eq!(parts_of(&people[0]), vec![0, 2, 3, 14, 16]);
        // Without limb 17 nothing joins them and both rows are dropped.
        let t = synthetic(8, 8, &peaks, &[2, 13, 14]);
        assert!(assemble(&Maps::new(&t).unwrap(), &g, 0.1).is_empty());
    }

    #[test]
    fn wrong_output_shape_and_missing_model_are_errors() {
        let t = Tensor {
            shape: vec![1, 19, 4, 4],
            data: vec![0.0; 19 * 16],
        };
        assert!(Maps::new(&t).unwrap_err().contains("1x57xHxW"));
        let e = Pose::new(&[], PoseParams::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("pose needs a model: pass --model twice"),
            "{e}"
        );
        assert!(
            e.contains("pose_iter_440000.caffemodel") && e.contains(".onnx"),
            "{e}"
        );
        // The depth fixture loads but is not an OpenPose network.
        let depth =
            vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dnn/depth.onnx")];
        let op = Pose::new(
            &depth,
            PoseParams {
                height: 8,
                ..PoseParams::default()
            },
        )
        .unwrap();
        let e = op.apply(&RgbImage::new(8, 8)).unwrap_err().to_string();
        assert!(
            e.contains("depth.onnx") && e.contains("not OpenPose COCO"),
            "{e}"
        );
    }
}
