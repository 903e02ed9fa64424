//! Range checks shared by the analysis operations' `new` constructors, so that every bad
//! parameter is reported the same way: its name, its value and the range it must lie in.

use crate::{Error, Result};

/// `value` must be finite and within `lo..=hi`.
pub(crate) fn within(what: &str, value: f64, lo: f64, hi: f64) -> Result<()> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!("{value} (expected {lo} to {hi})"),
        ))
    }
}

/// `range` must be `[low, high]` with `lo <= low <= high <= hi`.
pub(crate) fn span(what: &str, range: [f64; 2], lo: f64, hi: f64) -> Result<()> {
    within(what, range[0], lo, hi)?;
    within(what, range[1], lo, hi)?;
    if range[0] > range[1] {
        return Err(Error::invalid(
            what,
            format!(
                "{}..{} (the low end is above the high end)",
                range[0], range[1]
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_name_the_parameter_and_the_bounds() {
        assert!(within("sigma", 0.5, 0.1, 10.0).is_ok());
        let e = within("sigma", f64::NAN, 0.1, 10.0)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "invalid sigma: NaN (expected 0.1 to 10)");
        assert!(span("scale", [0.4, 0.8], 0.01, 1.0).is_ok());
        let e = span("scale", [0.8, 0.4], 0.01, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("low end is above"), "{e}");
        assert!(span("scale", [0.4, 1.5], 0.01, 1.0).is_err());
    }
}
