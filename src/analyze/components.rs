//! Connected components (8-connectivity) of a label map, in raster order so that component
//! numbers are deterministic: used to drop small strokes (`doodle`) and to split and clean
//! colour clusters into regions (`segment`).

/// The components of `values` (`width` x `height`, row-major): pixels with equal values that
/// touch, diagonals included. Returns the component of each pixel (numbered from 0 in the order
/// their first pixel appears) and the size of each component.
pub(crate) fn label<T: PartialEq + Copy>(
    values: &[T],
    width: u32,
    height: u32,
) -> (Vec<u32>, Vec<usize>) {
    let (w, h) = (width as usize, height as usize);
    const UNSET: u32 = u32::MAX;
    let mut ids = vec![UNSET; values.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..values.len().min(w * h) {
        if ids[start] != UNSET {
            continue;
        }
        let id = sizes.len() as u32;
        let value = values[start];
        ids[start] = id;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % w, i / w);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if ids[j] == UNSET && values[j] == value {
                        ids[j] = id;
                        stack.push(j);
                    }
                }
            }
        }
        sizes.push(size);
    }
    (ids, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonal_neighbours_join_and_numbering_is_raster_order() {
        #[rustfmt::skip]
        let map = [
            1, 0, 0, 2,
            0, 1, 0, 2,
            0, 0, 0, 0,
            3, 3, 0, 1,
        ];
        let (ids, sizes) = label(&map, 4, 4);
        #[rustfmt::skip]
        assert_eq!(ids, vec![
            0, 1, 1, 2,
            1, 0, 1, 2,
            1, 1, 1, 1,
            3, 3, 1, 4,
        ]);
        assert_eq!(sizes, vec![2, 9, 2, 2, 1]);
    }
}
