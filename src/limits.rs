//! The largest images a user can ask `ace` to make (a generated image, a mask size, an
//! outpainting canvas), checked before anything is allocated so that an absurd request is a
//! clear error instead of an allocation failure. (Input frames are held to the model's token
//! budget, `MAX_SEQ_LEN`, by resizing; a text-to-image target is not, as in the reference.)

use crate::{Error, Result};

/// Longest side of an image `ace` makes.
pub const MAX_SIDE: u64 = 16384;
/// Most pixels of an image `ace` makes (64 megapixels, 8192 x 8192).
pub const MAX_PIXELS: u64 = 1 << 26;

/// Checks that a `width` x `height` image asked for by `what` (a flag) is within the limits.
pub fn check_size(what: &str, width: u64, height: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::invalid(what, format!("{width}x{height} is empty")));
    }
    if width > MAX_SIDE || height > MAX_SIDE || width.saturating_mul(height) > MAX_PIXELS {
        return Err(Error::invalid(
            what,
            format!(
                "{width}x{height} is too large (at most {MAX_SIDE} pixels a side and {MAX_PIXELS} \
                 pixels in all)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_within_and_beyond_the_limits() {
        assert!(check_size("--size", 8192, 8192).is_ok());
        assert!(check_size("--size", 16384, 16).is_ok());
        let e = check_size("--size", 100_000, 100_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--size") && e.contains("16384"), "{e}");
        assert!(check_size("--size", 16385, 2).is_err());
        assert!(check_size("--size", 9000, 9000).is_err());
        assert!(check_size("--size", 0, 5).is_err());
    }
}
