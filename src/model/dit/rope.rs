//! 3D rotary position embedding over the frames of one sample (upstream `pos_embed.py`):
//! a head of size d is read as d/2 complex numbers (adjacent pairs), split into
//! `d - 4*(d//6)`, `2*(d//6)`, `2*(d//6)` dimensions for frame index, row and column; the token
//! at (frame f, row y, column x) is multiplied by `exp(i * pos * theta^(-2j/dim))` with pos = f,
//! y, x in the three parts. Angles, cosines and sines are computed in f64 as upstream; the
//! rotation itself runs in f64 too except on Metal, which has no f64 (there f32).

use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// RoPE base period.
const THETA: f64 = 10000.0;

/// Per-axis inverse frequencies and the table length.
#[derive(Debug, Clone)]
pub struct Rope {
    /// Inverse frequencies of the frame, row and column parts (one per complex pair).
    inv_freqs: [Vec<f64>; 3],
    max_seq_len: usize,
}

/// Per-token rotation tables of one sample, `[tokens, head_dim/2]` each.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rope {
    pub fn new(head_dim: usize, max_seq_len: usize) -> Self {
        let sixth = head_dim / 6;
        let dims = [head_dim - 4 * sixth, 2 * sixth, 2 * sixth];
        let inv = |dim: usize| -> Vec<f64> {
            (0..dim)
                .step_by(2)
                .map(|j| 1.0 / THETA.powf(j as f64 / dim as f64))
                .collect()
        };
        Self {
            inv_freqs: dims.map(inv),
            max_seq_len,
        }
    }

    /// Tables for the tokens of frames of `(rows, cols)` tokens each, frame after frame,
    /// row-major within a frame.
    pub fn tables(&self, frames: &[(usize, usize)], device: &Device) -> Result<RopeTables> {
        let longest = frames
            .iter()
            .flat_map(|&(h, w)| [h, w])
            .chain([frames.len()])
            .max()
            .unwrap_or(0);
        if longest > self.max_seq_len {
            return Err(Error::invalid(
                "DiT input",
                format!(
                    "{} frames of {frames:?} tokens exceed the RoPE table length MAX_SEQ_LEN {}",
                    frames.len(),
                    self.max_seq_len
                ),
            ));
        }
        let half: usize = self.inv_freqs.iter().map(Vec::len).sum();
        let tokens: usize = frames.iter().map(|&(h, w)| h * w).sum();
        let mut cos = Vec::with_capacity(tokens * half);
        let mut sin = Vec::with_capacity(tokens * half);
        for (f, &(h, w)) in frames.iter().enumerate() {
            for y in 0..h {
                for x in 0..w {
                    for (pos, inv) in [f, y, x].iter().zip(&self.inv_freqs) {
                        for &fr in inv {
                            let angle = *pos as f64 * fr;
                            cos.push(angle.cos());
                            sin.push(angle.sin());
                        }
                    }
                }
            }
        }
        let dtype = crate::device::widest_float(device);
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, (tokens, half), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?,
            sin: Tensor::from_vec(sin, (tokens, half), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?,
        })
    }
}

impl RopeTables {
    /// Rotates `[1, heads, tokens, head_dim]` (adjacent pairs as complex numbers).
    pub fn apply(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        crate::kernels::rope_interleaved(xs, &self.cos, &self.sin)
    }

    /// The `cos` and `sin` tables, `[tokens, head_dim / 2]`.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn splits_head_into_frame_row_column_parts() {
        // d = 16: 16 - 4*2 = 8, 4, 4 dimensions -> 4, 2, 2 complex pairs.
        let rope = Rope::new(16, 8);
        let want: [&[f64]; 3] = [&[1.0, 0.1, 0.01, 0.001], &[1.0, 0.01], &[1.0, 0.01]];
        for (got, want) in rope.inv_freqs.iter().zip(want) {
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(want) {
                assert!((a - b).abs() < 1e-15, "{got:?} vs {want:?}");
            }
        }
        // d = 72 (full model): 24 dimensions each.
        let rope = Rope::new(72, 8);
        assert!(rope.inv_freqs.iter().all(|v| v.len() == 12));
    }

    #[test]
    fn rotates_each_token_by_its_frame_row_and_column() {
        let dev = Device::Cpu;
        let rope = Rope::new(6, 8); // one complex pair per axis
                                    // Frame 0 of 1x2 tokens, frame 1 of 2x1 tokens.
        let tables = rope.tables(&[(1, 2), (2, 1)], &dev).unwrap();
        let angles = tables.cos.to_vec2::<f64>().unwrap();
        let expected_pos = [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 1, 0]];
        for (row, pos) in angles.iter().zip(expected_pos) {
            let want: Vec<f64> = pos.iter().map(|&p| (p as f64).cos()).collect();
            assert_eq!(row, &want);
        }
        // (1 + 0i) rotated by angle 1 for the token at column 1 of frame 0.
        let x = Tensor::new(&[1f32, 0.0, 1.0, 0.0, 1.0, 0.0], &dev)
            .unwrap()
            .reshape((1, 1, 1, 6))
            .unwrap()
            .repeat((1, 1, 4, 1))
            .unwrap();
        let y = tables.apply(&x).unwrap().to_dtype(DType::F32).unwrap();
        let token1 = y.get(0).unwrap().get(0).unwrap().get(1).unwrap();
        let got = token1.to_vec1::<f32>().unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        let want = [1.0, 0.0, 1.0, 0.0, c, s];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // (0 + 1i) at frame 1, row 1: rotated by angle 1 on the frame and row parts.
        let x = Tensor::new(&[0f32, 1.0, 0.0, 1.0, 0.0, 1.0], &dev)
            .unwrap()
            .reshape((1, 1, 1, 6))
            .unwrap()
            .repeat((1, 1, 4, 1))
            .unwrap();
        let y = tables.apply(&x).unwrap();
        let got = y
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(3)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = [-s, c, -s, c, 0.0, 1.0];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn refuses_positions_beyond_the_table() {
        let rope = Rope::new(6, 4);
        assert!(rope.tables(&[(4, 4)], &Device::Cpu).is_ok());
        assert!(rope.tables(&[(5, 1)], &Device::Cpu).is_err());
    }
}
