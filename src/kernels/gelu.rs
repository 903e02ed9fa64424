//! The tanh GELU over all cores: candle's CPU unary ops run on one thread, and the DiT's MLP
//! applies GELU to `tokens x 4608` values per block.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// GELU, tanh approximation: `0.5 x (1 + tanh(u))`, computed as the equal `x sigmoid(2u)`
/// because `expf` costs a sixth of `tanhf` (3.7 vs 21.7 ns here); the two agree to 1e-7.
pub struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("gelu-tanh takes f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu-tanh takes a contiguous tensor")
        };
        let input = &data[start..end];
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(CHUNK)
            .zip(input.par_chunks(CHUNK))
            .for_each(|(out, input)| {
                for (y, &x) in out.iter_mut().zip(input) {
                    *y = x / (1.0 + (-2.0 * SQRT_TWO_OVER_PI * x * (1.0 + 0.044715 * x * x)).exp());
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI: f32 = 0.797_884_560_802_865_4;
