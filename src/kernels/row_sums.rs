//! Sums over the rows of a `[rows, dim]` matrix, the gradient of every per-channel parameter
//! (a bias, a norm's weight, a modulation shift or scale): candle's `sum(0)` is one thread
//! walking the whole matrix. Rows are taken in fixed blocks, each summed in row order into its
//! own partial vector on some thread, and the partials added in block order, so the result is
//! the same whatever the thread count. A backward pass that also writes a gradient row per
//! row (a norm's) does both in the same visit of the row.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// Rows per partial sum.
const BLOCK_ROWS: usize = 64;

/// `out[c] = sum over rows r of row(r, ..)[c]`, where `add_row(r, acc)` adds row `r`'s
/// contribution onto `acc` (`dim` values); with `accumulate` the sums are added onto `out`.
pub fn sum_rows_with(
    rows: usize,
    dim: usize,
    out: &mut [f32],
    accumulate: bool,
    add_row: impl Fn(usize, &mut [f32]) + Sync,
) {
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(BLOCK_ROWS))
        .into_par_iter()
        .map(|block| {
            let mut acc = vec![0f32; dim];
            for r in block * BLOCK_ROWS..((block + 1) * BLOCK_ROWS).min(rows) {
                add_row(r, &mut acc);
            }
            acc
        })
        .collect();
    add_partials(&partials, out, accumulate);
}

/// `out = the column sums of the f32 CPU matrix g (+ out when accumulate)`: a bias's gradient.
pub fn column_sums_into(g: &Tensor, accumulate: bool, out: &mut [f32]) -> Result<()> {
    let (_, dim) = g.dims2()?;
    if out.len() != dim {
        candle_core::bail!("column sums: {dim} columns into a buffer of {}", out.len())
    }
    super::read("column sums", [g], |[rows]| {
        sum_rows_with(rows.len() / dim.max(1), dim, out, accumulate, |r, acc| {
            for (a, v) in acc.iter_mut().zip(&rows[r * dim..(r + 1) * dim]) {
                *a += v;
            }
        });
        Ok(())
    })
}

/// For each row `r` of `rows_out` (`row_len` values each), `f(r, row, acc)` writes that row
/// and adds its contribution onto `acc` (`width` values); returns the sums of `acc` over all
/// rows, as [`sum_rows_with`] adds them.
pub fn map_rows_and_sum(
    rows_out: &mut [f32],
    row_len: usize,
    width: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = rows_out
        .par_chunks_mut((BLOCK_ROWS * row_len).max(1))
        .enumerate()
        .map(|(block, rows)| {
            let mut acc = vec![0f32; width];
            for (i, row) in rows.chunks_mut(row_len.max(1)).enumerate() {
                f(block * BLOCK_ROWS + i, row, &mut acc);
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; width];
    add_partials(&partials, &mut out, false);
    out
}

/// `out = sum of partials (+ out when accumulate)`, in the partials' order.
fn add_partials(partials: &[Vec<f32>], out: &mut [f32], accumulate: bool) {
    if !accumulate {
        out.fill(0.0);
    }
    for partial in partials {
        for (o, p) in out.iter_mut().zip(partial) {
            *o += p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_columns_over_blocks_and_accumulates() {
        // 200 rows (four blocks, the last short) of 3 columns: row r is [r, 2r, 1].
        let m: Vec<f32> = (0..200)
            .flat_map(|r| [r as f32, 2.0 * r as f32, 1.0])
            .collect();
        let mut out = vec![1.0, 1.0, 1.0];
        sum_rows_with(200, 3, &mut out, false, |r, acc| {
            for (a, v) in acc.iter_mut().zip(&m[r * 3..(r + 1) * 3]) {
                *a += v;
            }
        });
        assert_eq!(out, [19900.0, 39800.0, 200.0]);
        out.fill(1.0);
        sum_rows_with(200, 3, &mut out, true, |r, acc| acc[0] += r as f32);
        assert_eq!(out, [19901.0, 1.0, 1.0]);
        sum_rows_with(0, 3, &mut out, false, |_, _| {});
        assert_eq!(out, [0.0, 0.0, 0.0]);
    }

    #[test]
    fn maps_every_row_once_while_summing() {
        // 130 rows of 2 values (three blocks): each row written as [r, -r], summed as [1, r].
        let mut rows = vec![0f32; 260];
        let sums = map_rows_and_sum(&mut rows, 2, 2, |r, row, acc| {
            row.copy_from_slice(&[r as f32, -(r as f32)]);
            acc[0] += 1.0;
            acc[1] += r as f32;
        });
        assert_eq!(sums, [130.0, 8385.0]);
        assert!(rows
            .chunks(2)
            .enumerate()
            .all(|(r, row)| row == [r as f32, -(r as f32)]));
    }
}
