//! Random masks for inpainting and outpainting pairs (appendix B of the paper, after LaMa):
//! free-form strokes (LaMa's irregular generator: random walks of thick line segments with random
//! angles, lengths and brush widths), boxes, and outpainting masks that extend the frame on
//! random sides. Each mask has a coverage (masked fraction) inside a requested range and is a
//! pure function of `(seed, index)`, so any mask of a set can be regenerated on its own.
//!
//! Masks are 8-bit: 255 masked, 0 kept.

use crate::{Error, Result};
use image::{GrayImage, Luma};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape family of a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    /// Free-form strokes (LaMa's irregular masks).
    Irregular,
    /// Filled axis-aligned boxes (LaMa's rectangle masks).
    Box,
    /// The centre kept, random sides masked (the frame is extended there).
    Outpaint,
}

impl std::str::FromStr for MaskKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "irregular" => Ok(MaskKind::Irregular),
            "box" => Ok(MaskKind::Box),
            "outpaint" => Ok(MaskKind::Outpaint),
            _ => Err(Error::invalid(
                "mask kind",
                format!("'{s}' (expected irregular, box or outpaint)"),
            )),
        }
    }
}

/// A closed range of mask coverage, the masked fraction of the pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coverage {
    pub min: f64,
    pub max: f64,
}

impl Coverage {
    /// Whether a fraction lies in the range.
    pub fn contains(&self, fraction: f64) -> bool {
        fraction >= self.min && fraction <= self.max
    }
}

impl std::str::FromStr for Coverage {
    type Err = Error;
    /// Parses `MIN-MAX` (e.g. `0.1-0.5`) with 0 <= MIN <= MAX <= 1 and MAX > 0.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("coverage", format!("'{s}': {why}"));
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| bad("expected MIN-MAX, e.g. 0.1-0.5"))?;
        let min: f64 = a.trim().parse().map_err(|_| bad("MIN is not a number"))?;
        let max: f64 = b.trim().parse().map_err(|_| bad("MAX is not a number"))?;
        if !(0.0..=1.0).contains(&min) || !(0.0..=1.0).contains(&max) || min > max || max <= 0.0 {
            return Err(bad("need 0 <= MIN <= MAX <= 1 and MAX > 0"));
        }
        Ok(Coverage { min, max })
    }
}

/// Parses a size `WxH` (e.g. `512x384`), both at least 2 and within [`crate::limits`].
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let bad = || {
        Error::invalid(
            "size",
            format!("'{s}' (expected WxH, e.g. 512x512, each at least 2)"),
        )
    };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    if w < 2 || h < 2 {
        return Err(bad());
    }
    crate::limits::check_size("size", u64::from(w), u64::from(h))?;
    Ok((w, h))
}

/// The masked fraction of a mask (pixels above 128 count as masked).
pub fn coverage(mask: &GrayImage) -> f64 {
    let masked = mask.pixels().filter(|p| p.0[0] > 128).count();
    masked as f64 / (mask.width() as f64 * mask.height() as f64).max(1.0)
}

/// Tries per mask before giving up: a try that overshoots the range starts afresh.
const ATTEMPTS: usize = 200;

/// Mask number `index` of the set seeded with `seed`: `kind`, `width` x `height`, with a
/// coverage drawn uniformly in `range` (so a set spreads over the whole range). Fails when the
/// range cannot be met at this size (e.g. a coverage finer than one pixel).
pub fn generate(
    kind: MaskKind,
    width: u32,
    height: u32,
    range: Coverage,
    seed: u64,
    index: u64,
) -> Result<GrayImage> {
    if width < 2 || height < 2 {
        return Err(Error::invalid(
            "mask size",
            format!("{width}x{height} (need at least 2x2)"),
        ));
    }
    crate::limits::check_size("mask size", u64::from(width), u64::from(height))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    for _ in 0..ATTEMPTS {
        let mask = match kind {
            MaskKind::Irregular => grow(width, height, range, &mut rng, stroke_walk),
            MaskKind::Box => grow(width, height, range, &mut rng, random_box),
            MaskKind::Outpaint => outpaint(width, height, range, &mut rng),
        };
        if range.contains(coverage(&mask)) {
            return Ok(mask);
        }
    }
    Err(Error::invalid(
        "coverage",
        format!(
            "no {} mask of {width}x{height} with coverage in {}-{} after {ATTEMPTS} tries",
            format!("{kind:?}").to_lowercase(),
            range.min,
            range.max
        ),
    ))
}

/// Adds shapes with `add` until the coverage reaches a target drawn uniformly in the range
/// (the caller rejects a result above its maximum). The number of shapes is thus drawn by the
/// range, as LaMa draws it by `max_times`.
fn grow(
    width: u32,
    height: u32,
    range: Coverage,
    rng: &mut ChaCha8Rng,
    add: fn(&mut GrayImage, &mut ChaCha8Rng) -> u64,
) -> GrayImage {
    let target = rng.gen_range(range.min..=range.max).max(f64::MIN_POSITIVE);
    let total = f64::from(width) * f64::from(height);
    let mut mask = GrayImage::new(width, height);
    let mut masked = 0u64;
    // Shapes cover a small fraction each; the cap only guards against a pathological range.
    for _ in 0..10_000 {
        masked += add(&mut mask, rng);
        if masked as f64 / total >= target {
            break;
        }
    }
    mask
}

/// One LaMa stroke: a random walk of 1-5 thick segments from a random start, each with a random
/// angle (0.01 + 0..4 radians, mirrored on every other stroke), length and brush width. LaMa's parameters (max_len 60, max_width 20, for 256-pixel
/// images) are scaled by the image's shorter side.
fn stroke_walk(mask: &mut GrayImage, rng: &mut ChaCha8Rng) -> u64 {
    let (w, h) = mask.dimensions();
    let scale = w.min(h) as f64 / 256.0;
    let max_angle = 4u32;
    let mut x = rng.gen_range(0..w) as f64;
    let mut y = rng.gen_range(0..h) as f64;
    let flip = rng.gen_bool(0.5);
    let mut added = 0;
    for _ in 0..rng.gen_range(1..=5) {
        let mut angle = 0.01 + rng.gen_range(0..max_angle) as f64;
        if flip {
            angle = std::f64::consts::TAU - angle;
        }
        let length = (10.0 + rng.gen_range(0.0..60.0)) * scale;
        let brush = ((5.0 + rng.gen_range(0.0..20.0)) * scale).max(1.0);
        let ex = (x + length * angle.sin()).clamp(0.0, (w - 1) as f64);
        let ey = (y + length * angle.cos()).clamp(0.0, (h - 1) as f64);
        added += draw_capsule(mask, (x, y), (ex, ey), brush / 2.0);
        x = ex;
        y = ey;
    }
    added
}

/// One LaMa box: sides between 30 and 100 pixels at 256 (scaled), a margin of 10 from the edge.
fn random_box(mask: &mut GrayImage, rng: &mut ChaCha8Rng) -> u64 {
    let (w, h) = mask.dimensions();
    let scale = w.min(h) as f64 / 256.0;
    let margin = ((10.0 * scale) as u32).min(w / 4).min(h / 4);
    let side = |limit: u32, rng: &mut ChaCha8Rng| {
        let room = limit - 2 * margin;
        let lo = ((30.0 * scale) as u32).clamp(1, room);
        let hi = ((100.0 * scale) as u32).clamp(lo, room);
        rng.gen_range(lo..=hi)
    };
    let bw = side(w, rng);
    let bh = side(h, rng);
    let x0 = rng.gen_range(margin..=w - margin - bw);
    let y0 = rng.gen_range(margin..=h - margin - bh);
    let mut added = 0;
    for y in y0..y0 + bh {
        for x in x0..x0 + bw {
            added += set(mask, x, y);
        }
    }
    added
}

/// Masks one pixel; 1 when it was not masked before.
fn set(mask: &mut GrayImage, x: u32, y: u32) -> u64 {
    let p = mask.get_pixel_mut(x, y);
    let new = u64::from(p.0[0] != 255);
    p.0[0] = 255;
    new
}

/// Fills every pixel whose centre lies within `radius` of the segment `a`-`b` (a thick line with
/// round caps, as OpenCV draws LaMa's strokes); returns the number of pixels newly masked.
fn draw_capsule(mask: &mut GrayImage, a: (f64, f64), b: (f64, f64), radius: f64) -> u64 {
    let (w, h) = mask.dimensions();
    let x0 = (a.0.min(b.0) - radius).floor().max(0.0) as u32;
    let x1 = ((a.0.max(b.0) + radius).ceil() as u32).min(w - 1);
    let y0 = (a.1.min(b.1) - radius).floor().max(0.0) as u32;
    let y1 = ((a.1.max(b.1) + radius).ceil() as u32).min(h - 1);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let mut added = 0;
    for y in y0..=y1 {
        for x in x0..=x1 {
            let (px, py) = (x as f64 - a.0, y as f64 - a.1);
            let t = if len2 > 0.0 {
                ((px * dx + py * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (ox, oy) = (px - t * dx, py - t * dy);
            if ox * ox + oy * oy <= radius * radius {
                added += set(mask, x, y);
            }
        }
    }
    added
}

/// An outpainting mask: a target coverage drawn from the range, spread over random sides (left
/// and right share the horizontal margin, top and bottom the vertical one).
fn outpaint(width: u32, height: u32, range: Coverage, rng: &mut ChaCha8Rng) -> GrayImage {
    let target = rng.gen_range(range.min..=range.max).min(0.95);
    // 0: horizontal sides only, 1: vertical only, 2: both.
    let (horizontal, vertical) = match rng.gen_range(0..3) {
        0 => (target, 0.0),
        1 => (0.0, target),
        _ => {
            // (1 - a)(1 - b) = 1 - target with 0 <= a <= target.
            let a = rng.gen_range(0.0..=target);
            (a, 1.0 - (1.0 - target) / (1.0 - a))
        }
    };
    let split = |total: f64, rng: &mut ChaCha8Rng| {
        let first = if rng.gen_bool(0.5) {
            total
        } else {
            total * rng.gen::<f64>()
        };
        if rng.gen_bool(0.5) {
            (first, total - first)
        } else {
            (total - first, first)
        }
    };
    let (left, right) = split(horizontal, rng);
    let (top, bottom) = split(vertical, rng);
    let px = |f: f64, n: u32| (f * n as f64).round() as u32;
    let (l, r) = (px(left, width), width - px(right, width));
    let (t, b) = (px(top, height), height - px(bottom, height));
    GrayImage::from_fn(width, height, |x, y| {
        let kept = x >= l && x < r && y >= t && y < b;
        Luma([if kept { 0 } else { 255 }])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Coverage {
        s.parse().unwrap()
    }

    #[test]
    fn every_kind_meets_its_coverage_range() {
        for (kind, r) in [
            (MaskKind::Irregular, "0.1-0.5"),
            (MaskKind::Irregular, "0.3-0.4"),
            (MaskKind::Box, "0.1-0.5"),
            (MaskKind::Box, "0.05-0.15"),
            (MaskKind::Outpaint, "0.2-0.6"),
            (MaskKind::Outpaint, "0.45-0.5"),
        ] {
            let r = range(r);
            for i in 0..12 {
                let m = generate(kind, 96, 64, r, 7, i).unwrap();
                let c = coverage(&m);
                assert!(r.contains(c), "{kind:?} #{i}: coverage {c} outside {r:?}");
                assert!(m.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
            }
        }
    }

    #[test]
    fn coverages_spread_over_the_range() {
        let r = range("0.1-0.5");
        for kind in [MaskKind::Irregular, MaskKind::Box] {
            let c: Vec<f64> = (0..40)
                .map(|i| coverage(&generate(kind, 96, 96, r, 1, i).unwrap()))
                .collect();
            let (lo, hi) = c
                .iter()
                .fold((1f64, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(lo < 0.2 && hi > 0.4, "{kind:?}: coverages in [{lo}, {hi}]");
        }
    }

    #[test]
    fn same_seed_and_index_give_the_same_mask() {
        let r = range("0.1-0.5");
        let a = generate(MaskKind::Irregular, 64, 64, r, 3, 5).unwrap();
        assert_eq!(a, generate(MaskKind::Irregular, 64, 64, r, 3, 5).unwrap());
        assert_ne!(a, generate(MaskKind::Irregular, 64, 64, r, 3, 6).unwrap());
        assert_ne!(a, generate(MaskKind::Irregular, 64, 64, r, 4, 5).unwrap());
    }

    #[test]
    fn outpaint_keeps_one_centred_rectangle() {
        let m = generate(MaskKind::Outpaint, 80, 60, range("0.3-0.5"), 1, 0).unwrap();
        let kept: Vec<(u32, u32)> = m
            .enumerate_pixels()
            .filter(|p| p.2 .0[0] == 0)
            .map(|p| (p.0, p.1))
            .collect();
        let (xs, ys): (Vec<u32>, Vec<u32>) = kept.iter().cloned().unzip();
        let w = xs.iter().max().unwrap() - xs.iter().min().unwrap() + 1;
        let h = ys.iter().max().unwrap() - ys.iter().min().unwrap() + 1;
        assert_eq!(
            (w * h) as usize,
            kept.len(),
            "the kept region is a rectangle"
        );
    }

    #[test]
    fn capsule_has_round_caps_of_the_radius() {
        let mut m = GrayImage::new(21, 21);
        assert_eq!(draw_capsule(&mut m, (10.0, 10.0), (10.0, 10.0), 3.0), 29);
        // A disc of radius 3 on the integer grid has 29 pixels.
        assert_eq!(m.pixels().filter(|p| p.0[0] == 255).count(), 29);
    }

    #[test]
    fn bad_ranges_and_kinds_are_errors() {
        for s in ["0.5", "0.6-0.2", "a-0.3", "0-1.5", "0-0"] {
            assert!(s.parse::<Coverage>().is_err(), "{s}");
        }
        assert!("blob".parse::<MaskKind>().is_err());
        assert_eq!(parse_size("512x384").unwrap(), (512, 384));
        for s in ["512", "0x4", "ax3", "1x9"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        // A coverage range narrower than one pixel of a 2x2 image cannot be met.
        assert!(generate(MaskKind::Box, 2, 2, range("0.3-0.4"), 0, 0).is_err());
    }
}
