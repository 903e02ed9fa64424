//! The OpenPose body skeleton as ControlNet and scepter draw it: the 18 COCO keypoints, the
//! limbs joining them, their 18 colours, joints as filled circles of radius 4 and limbs as
//! filled ellipses 4 px wide blended 60 % over the canvas. Kept apart from the pose detector
//! so task code (pose-guided generation) can draw skeletons it gets from elsewhere.

use crate::analyze::cv;
use crate::Result;
use image::RgbImage;
use opencv::core::{Mat, Point, Scalar, Size, Vector, CV_8UC3};
use opencv::imgproc;
use opencv::prelude::*;

/// Number of body keypoints (COCO-18: nose, neck, right shoulder/elbow/wrist, left
/// shoulder/elbow/wrist, right hip/knee/ankle, left hip/knee/ankle, right eye, left eye,
/// right ear, left ear).
pub const KEYPOINTS: usize = 18;

/// Keypoint pairs (0-based) of the 19 limbs OpenPose assembles people along; the first
/// [`DRAWN_LIMBS`] are drawn (the last two, ear to shoulder, only help assembly).
pub const LIMBS: [[usize; 2]; 19] = [
    [1, 2],
    [1, 5],
    [2, 3],
    [3, 4],
    [5, 6],
    [6, 7],
    [1, 8],
    [8, 9],
    [9, 10],
    [1, 11],
    [11, 12],
    [12, 13],
    [1, 0],
    [0, 14],
    [14, 16],
    [0, 15],
    [15, 17],
    [2, 16],
    [5, 17],
];

/// How many of [`LIMBS`] are drawn.
pub const DRAWN_LIMBS: usize = 17;

/// RGB colour of keypoint `i` and of limb `i`.
pub const COLORS: [[u8; 3]; 18] = [
    [255, 0, 0],
    [255, 85, 0],
    [255, 170, 0],
    [255, 255, 0],
    [170, 255, 0],
    [85, 255, 0],
    [0, 255, 0],
    [0, 255, 85],
    [0, 255, 170],
    [0, 255, 255],
    [0, 170, 255],
    [0, 85, 255],
    [0, 0, 255],
    [85, 0, 255],
    [170, 0, 255],
    [255, 0, 255],
    [255, 0, 170],
    [255, 0, 85],
];

/// Half-width of a limb ellipse, in pixels.
pub const STICK_WIDTH: i32 = 4;
/// Radius of a joint circle, in pixels.
pub const JOINT_RADIUS: i32 = 4;
/// Weight of the limb layer when blended over the canvas.
const LIMB_ALPHA: f64 = 0.6;

/// One person: the image position (x, y) of each keypoint found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Person {
    pub keypoints: [Option<(f32, f32)>; KEYPOINTS],
}

/// The skeletons of `people` on a black `width` x `height` canvas.
pub fn draw(width: u32, height: u32, people: &[Person]) -> Result<RgbImage> {
    let mut canvas =
        Mat::new_rows_cols_with_default(height as i32, width as i32, CV_8UC3, Scalar::all(0.0))?;
    draw_on(&mut canvas, people)?;
    cv::mat_to_rgb(&canvas)
}

/// Draws `people` onto an RGB 8-bit Mat: all joints first, then each limb, person by person,
/// blended over what is there (so joints under a limb take 40 % of their colour).
pub fn draw_on(canvas: &mut Mat, people: &[Person]) -> Result<()> {
    let color = |i: usize| {
        let [r, g, b] = COLORS[i];
        Scalar::new(r as f64, g as f64, b as f64, 0.0)
    };
    for i in 0..KEYPOINTS {
        for person in people {
            if let Some((x, y)) = person.keypoints[i] {
                let center = Point::new(x as i32, y as i32);
                imgproc::circle(
                    canvas,
                    center,
                    JOINT_RADIUS,
                    color(i),
                    -1,
                    imgproc::LINE_8,
                    0,
                )?;
            }
        }
    }
    for (i, &[a, b]) in LIMBS.iter().take(DRAWN_LIMBS).enumerate() {
        for person in people {
            let (Some((xa, ya)), Some((xb, yb))) = (person.keypoints[a], person.keypoints[b])
            else {
                continue;
            };
            let (xa, ya, xb, yb) = (xa as f64, ya as f64, xb as f64, yb as f64);
            let center = Point::new(((xa + xb) / 2.0) as i32, ((ya + yb) / 2.0) as i32);
            let length = ((xa - xb).powi(2) + (ya - yb).powi(2)).sqrt();
            let angle = (ya - yb).atan2(xa - xb).to_degrees();
            let mut polygon = Vector::<Point>::new();
            imgproc::ellipse_2_poly(
                center,
                Size::new((length / 2.0) as i32, STICK_WIDTH),
                angle as i32,
                0,
                360,
                1,
                &mut polygon,
            )?;
            let mut layer = canvas.try_clone()?;
            imgproc::fill_convex_poly(&mut layer, &polygon, color(i), imgproc::LINE_8, 0)?;
            let mut blended = Mat::default();
            opencv::core::add_weighted(
                &*canvas,
                1.0 - LIMB_ALPHA,
                &layer,
                LIMB_ALPHA,
                0.0,
                &mut blended,
                -1,
            )?;
            *canvas = blended;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A person with only the given keypoints.
    fn person(points: &[(usize, (f32, f32))]) -> Person {
        let mut p = Person::default();
        for &(i, xy) in points {
            p.keypoints[i] = Some(xy);
        }
        p
    }

    /// `0.4 * under + 0.6 * over`, rounded as OpenCV's addWeighted does.
    fn blend(under: [u8; 3], over: [u8; 3]) -> [u8; 3] {
        std::array::from_fn(|c| (0.4 * under[c] as f32 + 0.6 * over[c] as f32).round() as u8)
    }

    #[test]
    fn a_lone_joint_is_a_radius_4_disc_in_its_colour() {
        let img = draw(20, 20, &[person(&[(4, (10.7, 9.2))])]).unwrap();
        // Truncated to (10, 9); radius 4 reaches (14, 9) but not (15, 9).
        assert_eq!(img.get_pixel(10, 9).0, COLORS[4]);
        assert_eq!(img.get_pixel(14, 9).0, COLORS[4]);
        assert_eq!(img.get_pixel(10, 5).0, COLORS[4]);
        assert_eq!(img.get_pixel(15, 9).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(13, 12).0, [0, 0, 0]);
    }

    #[test]
    fn a_limb_is_blended_over_its_joints() {
        // Neck (1) and right shoulder (2): limb 0, horizontal, 10 px long.
        let img = draw(30, 20, &[person(&[(1, (20.0, 10.0)), (2, (10.0, 10.0))])]).unwrap();
        let limb = COLORS[0];
        // Joint centres lie on the ellipse: 40 % joint + 60 % limb.
        assert_eq!(img.get_pixel(20, 10).0, blend(COLORS[1], limb));
        assert_eq!(img.get_pixel(10, 10).0, blend(COLORS[2], limb));
        // Mid-limb on black: 60 % of the limb colour.
        assert_eq!(img.get_pixel(15, 10).0, blend([0; 3], limb));
        // The ellipse is 4 px tall either side at the middle, not 5.
        assert_eq!(img.get_pixel(15, 14).0, blend([0; 3], limb));
        assert_eq!(img.get_pixel(15, 15).0, [0, 0, 0]);
        // A joint pixel the ellipse misses keeps its colour.
        assert_eq!(img.get_pixel(24, 10).0, COLORS[1]);
    }

    #[test]
    fn limbs_need_both_ends_and_ear_limbs_are_not_drawn() {
        // Right shoulder (2) and right ear (16) form limb 17, which is not drawn.
        let img = draw(40, 40, &[person(&[(2, (5.0, 5.0)), (16, (30.0, 30.0))])]).unwrap();
        assert_eq!(img.get_pixel(17, 17).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(5, 5).0, COLORS[2]);
        assert_eq!(img.get_pixel(30, 30).0, COLORS[16]);
    }
}
