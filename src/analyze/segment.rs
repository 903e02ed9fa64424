//! `segment`: classical region segmentation, a model-free stand-in for the paper's
//! segmentation condition. The recipe:
//!
//! 1. mean-shift filtering (OpenCV `pyrMeanShiftFiltering`, spatial radius 8, colour radius 16
//!    by default) flattens texture while keeping edges;
//! 2. k-means with `regions` clusters on the CIE Lab colours (OpenCV's 8-bit Lab) of the
//!    filtered image, fitted on at most 16384 pixels (every n-th in raster order):
//!    k-means++ seeding from a fixed ChaCha8 stream (`seed`), then Lloyd iterations, all on
//!    one thread in a fixed order, so the result is deterministic; every pixel then takes the
//!    nearest centre;
//! 3. connected components (8-connectivity) of the cluster map; components smaller than
//!    `min_area` of the image take the cluster most common around them, and the components are
//!    computed again;
//! 4. each region is filled with the mean colour of the input over it, or, with
//!    `fill = palette`, a fixed colour per cluster (clusters ordered dark to light).

use super::{check, components, cv, Operation};
use crate::{Error, Result};
use image::RgbImage;
use opencv::core::{Mat, Vec3b};
use opencv::imgproc;
use opencv::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// At most this many pixels (every n-th in raster order) fit the k-means centres; all pixels
/// are then assigned to the nearest centre.
const KMEANS_SAMPLE: usize = 16384;

/// How regions are coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// The mean input colour of each region.
    Mean,
    /// A fixed palette colour per cluster.
    Palette,
}

impl std::str::FromStr for Fill {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Fill::Mean),
            "palette" => Ok(Fill::Palette),
            _ => Err(Error::invalid(
                "fill",
                format!("'{s}' (expected mean or palette)"),
            )),
        }
    }
}

/// Parameters of [`Segment`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    /// Number of colour clusters K (2..=64).
    pub regions: u32,
    /// Mean-shift spatial window radius in pixels (0 skips the filtering; up to 64).
    pub spatial_radius: f64,
    /// Mean-shift colour window radius (1..=255).
    pub color_radius: f64,
    /// Components smaller than this fraction of the image are merged into their surroundings.
    pub min_area: f64,
    /// Most k-means iterations.
    pub iterations: u32,
    /// Seed of the k-means++ initialisation.
    pub seed: u64,
    /// How regions are coloured.
    pub fill: Fill,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            regions: 8,
            spatial_radius: 8.0,
            color_radius: 16.0,
            min_area: 0.001,
            iterations: 20,
            seed: 0,
            fill: Fill::Mean,
        }
    }
}

/// The segmentation operation.
#[derive(Debug, Clone)]
pub struct Segment {
    params: Params,
}

impl Segment {
    /// A segmentation operation; fails on a parameter out of range.
    pub fn new(params: Params) -> Result<Self> {
        check::within("regions", params.regions.into(), 2.0, 64.0)?;
        check::within("spatial_radius", params.spatial_radius, 0.0, 64.0)?;
        check::within("color_radius", params.color_radius, 1.0, 255.0)?;
        check::within("min_area", params.min_area, 0.0, 0.5)?;
        check::within("iterations", params.iterations.into(), 1.0, 1000.0)?;
        Ok(Segment { params })
    }
}

impl Operation for Segment {
    fn name(&self) -> &'static str {
        "segment"
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let p = &self.params;
        let (w, h) = image.dimensions();
        let lab = lab_colours(image, p.spatial_radius, p.color_radius)?;
        let stride = lab.len().div_ceil(KMEANS_SAMPLE).max(1);
        let sample: Vec<[f32; 3]> = lab.iter().step_by(stride).copied().collect();
        let centres = kmeans(&sample, p.regions as usize, p.iterations, p.seed);
        let mut clusters: Vec<u32> = lab.iter().map(|c| nearest(&centres, c) as u32).collect();
        let min_area = (p.min_area * f64::from(w) * f64::from(h)).round() as usize;
        absorb_small(&mut clusters, w, h, min_area);
        let (ids, sizes) = components::label(&clusters, w, h);
        let colours: Vec<[u8; 3]> = match p.fill {
            Fill::Mean => region_means(image, &ids, sizes.len()),
            Fill::Palette => {
                let order = dark_to_light(&centres);
                let mut first = vec![0u32; sizes.len()];
                for (&id, &c) in ids.iter().zip(&clusters) {
                    first[id as usize] = c;
                }
                first.iter().map(|&c| palette(order[c as usize])).collect()
            }
        };
        let raw = ids.iter().flat_map(|&id| colours[id as usize]).collect();
        RgbImage::from_raw(w, h, raw)
            .ok_or_else(|| Error::invalid("segment", "buffer size does not match its shape"))
    }
}

/// The (mean-shift filtered) image as 8-bit Lab triples in float.
fn lab_colours(image: &RgbImage, spatial_radius: f64, color_radius: f64) -> Result<Vec<[f32; 3]>> {
    let rgb = cv::rgb_to_mat(image)?;
    let filtered = if spatial_radius > 0.0 {
        let mut out = Mat::default();
        imgproc::pyr_mean_shift_filtering_def(&rgb, &mut out, spatial_radius, color_radius)?;
        out
    } else {
        rgb
    };
    let mut lab = Mat::default();
    imgproc::cvt_color_def(&filtered, &mut lab, imgproc::COLOR_RGB2Lab)?;
    Ok(lab
        .data_typed::<Vec3b>()?
        .iter()
        .map(|v| v.0.map(f32::from))
        .collect())
}

fn distance(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    (0..3).map(|c| (a[c] - b[c]).powi(2)).sum()
}

/// Index of the centre nearest to `colour` (the first on ties).
fn nearest(centres: &[[f32; 3]], colour: &[f32; 3]) -> usize {
    let mut best = (0, f32::INFINITY);
    for (i, c) in centres.iter().enumerate() {
        let d = distance(c, colour);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// k-means++ seeding then Lloyd iterations; fewer than `k` centres when the image has fewer
/// distinct colours. Sequential, so deterministic.
fn kmeans(points: &[[f32; 3]], k: usize, iterations: u32, seed: u64) -> Vec<[f32; 3]> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let Some(first) = points.get(rng.gen_range(0..points.len().max(1))) else {
        return vec![[0.0; 3]];
    };
    let mut centres = vec![*first];
    let mut nearest_d: Vec<f64> = points
        .iter()
        .map(|p| f64::from(distance(p, first)))
        .collect();
    while centres.len() < k {
        let total: f64 = nearest_d.iter().sum();
        if total <= 0.0 {
            break;
        }
        let mut target = rng.gen::<f64>() * total;
        let mut chosen = points.len() - 1;
        for (i, d) in nearest_d.iter().enumerate() {
            if target < *d {
                chosen = i;
                break;
            }
            target -= d;
        }
        let c = points[chosen];
        centres.push(c);
        for (d, p) in nearest_d.iter_mut().zip(points) {
            *d = d.min(f64::from(distance(p, &c)));
        }
    }
    let mut assignment = vec![usize::MAX; points.len()];
    for _ in 0..iterations {
        let mut changed = false;
        let mut sums = vec![[0f64; 4]; centres.len()];
        for (a, p) in assignment.iter_mut().zip(points) {
            let n = nearest(&centres, p);
            changed |= *a != n;
            *a = n;
            for c in 0..3 {
                sums[n][c] += f64::from(p[c]);
            }
            sums[n][3] += 1.0;
        }
        for (centre, s) in centres.iter_mut().zip(&sums) {
            if s[3] > 0.0 {
                *centre = [0, 1, 2].map(|c| (s[c] / s[3]) as f32);
            }
        }
        if !changed {
            break;
        }
    }
    centres
}

/// Gives every component smaller than `min_area` the cluster most common on its border
/// (the lowest cluster number on ties), largest components first.
fn absorb_small(clusters: &mut [u32], width: u32, height: u32, min_area: usize) {
    let (ids, sizes) = components::label(clusters, width, height);
    let (w, h) = (width as usize, height as usize);
    let mut votes: Vec<std::collections::BTreeMap<u32, usize>> =
        vec![Default::default(); sizes.len()];
    for i in 0..clusters.len() {
        let id = ids[i] as usize;
        if sizes[id] >= min_area {
            continue;
        }
        let (x, y) = (i % w, i / w);
        for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
            for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                let j = ny * w + nx;
                if ids[j] as usize != id {
                    *votes[id].entry(clusters[j]).or_default() += 1;
                }
            }
        }
    }
    let winner: Vec<Option<u32>> = votes
        .iter()
        .map(|v| {
            v.iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(&c, _)| c)
        })
        .collect();
    for (c, &id) in clusters.iter_mut().zip(&ids) {
        if let Some(new) = winner[id as usize] {
            *c = new;
        }
    }
}

/// Mean input colour of each region, rounded.
fn region_means(image: &RgbImage, ids: &[u32], regions: usize) -> Vec<[u8; 3]> {
    let mut sums = vec![[0u64; 4]; regions];
    for (p, &id) in image.pixels().zip(ids) {
        let s = &mut sums[id as usize];
        for (sum, &v) in s.iter_mut().zip(&p.0) {
            *sum += u64::from(v);
        }
        s[3] += 1;
    }
    sums.iter()
        .map(|s| [0, 1, 2].map(|c| ((s[c] * 2 + s[3]) / (2 * s[3].max(1))) as u8))
        .collect()
}

/// Rank of each cluster centre by lightness (Lab L), darkest first.
fn dark_to_light(centres: &[[f32; 3]]) -> Vec<usize> {
    let mut by_l: Vec<usize> = (0..centres.len()).collect();
    by_l.sort_by(|&a, &b| centres[a][0].total_cmp(&centres[b][0]).then(a.cmp(&b)));
    let mut rank = vec![0; centres.len()];
    for (r, &c) in by_l.iter().enumerate() {
        rank[c] = r;
    }
    rank
}

/// The `i`-th palette colour: hues a golden angle apart, alternating two lightnesses.
fn palette(i: usize) -> [u8; 3] {
    let hue = (i as f64 * 137.507_764) % 360.0;
    let (s, v) = if i.is_multiple_of(2) {
        (0.65, 0.95)
    } else {
        (0.8, 0.7)
    };
    let c = v * s;
    let x = c * (1.0 - ((hue / 60.0) % 2.0 - 1.0).abs());
    let (r, g, b) = match (hue / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    [r, g, b].map(|u| ((u + v - c) * 255.0).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testing;

    #[test]
    fn expected_outputs() {
        for (name, fill) in [
            ("chelsea256", Fill::Mean),
            ("astronaut", Fill::Mean),
            ("coffee", Fill::Palette),
        ] {
            let op = Segment::new(Params {
                fill,
                ..Params::default()
            })
            .unwrap();
            let out = op.apply(&testing::photo(name)).unwrap();
            let fill = if fill == Fill::Mean {
                "mean"
            } else {
                "palette"
            };
            testing::assert_golden(&out, &format!("segment_{name}_{fill}"));
        }
    }

    #[test]
    fn two_colour_halves_give_two_regions_with_their_colours() {
        let img = RgbImage::from_fn(20, 10, |x, _| {
            image::Rgb(if x < 8 { [200, 30, 30] } else { [20, 40, 220] })
        });
        let op = Segment::new(Params {
            regions: 2,
            ..Params::default()
        })
        .unwrap();
        assert_eq!(op.apply(&img).unwrap(), img);
    }

    #[test]
    fn small_components_are_absorbed() {
        let mut clusters = vec![0u32; 100];
        clusters[55] = 1;
        absorb_small(&mut clusters, 10, 10, 2);
        assert!(clusters.iter().all(|&c| c == 0), "{clusters:?}");
    }

    #[test]
    fn regions_bounds_the_number_of_colours() {
        let img = testing::photo("chelsea");
        for k in [2u32, 5] {
            let op = Segment::new(Params {
                regions: k,
                fill: Fill::Palette,
                min_area: 0.0,
                ..Params::default()
            })
            .unwrap();
            let out = op.apply(&img).unwrap();
            let colours: std::collections::BTreeSet<[u8; 3]> = out.pixels().map(|p| p.0).collect();
            assert_eq!(colours.len(), k as usize);
        }
    }

    #[test]
    fn palette_colours_are_distinct() {
        let colours: std::collections::BTreeSet<[u8; 3]> = (0..64).map(palette).collect();
        assert_eq!(colours.len(), 64);
    }

    #[test]
    fn properties_and_regional() {
        testing::check_properties(&Segment::new(Params::default()).unwrap());
    }

    #[test]
    fn rejects_out_of_range_parameters() {
        let e = Segment::new(Params {
            regions: 1,
            ..Params::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("regions"), "{e}");
        assert!("palette".parse::<Fill>().is_ok() && "random".parse::<Fill>().is_err());
    }
}
