//! The DiT's modulated LayerNorm in one parallel pass per token: `LN(x) * (1 + scale) + shift`
//! with the affine-free LayerNorm (two-pass mean and variance, as PyTorch), where the composed
//! candle ops take about ten single-threaded passes over the tokens.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

/// `LN(x) * (1 + scale) + shift` over the last dimension of `x`; `shift` and `scale` hold one
/// value per channel.
pub struct ModulatedLayerNorm {
    pub eps: f32,
}

impl CustomOp3 for ModulatedLayerNorm {
    fn name(&self) -> &'static str {
        "modulated-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(shift), CpuStorage::F32(scale)) = (s1, s2, s3)
        else {
            candle_core::bail!("modulated-layer-norm takes f32")
        };
        let (Some((x0, x1)), Some((h0, h1)), Some((c0, c1))) = (
            l1.contiguous_offsets(),
            l2.contiguous_offsets(),
            l3.contiguous_offsets(),
        ) else {
            candle_core::bail!("modulated-layer-norm takes contiguous tensors")
        };
        let dim = l1.dims().last().copied().unwrap_or(0);
        if dim == 0 || h1 - h0 != dim || c1 - c0 != dim {
            candle_core::bail!(
                "modulated-layer-norm: x {:?}, shift {:?}, scale {:?} do not fit together",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let (shift, scale) = (&shift[h0..h1], &scale[c0..c1]);
        let mut out = vec![0f32; x1 - x0];
        out.par_chunks_mut(dim)
            .zip(x[x0..x1].par_chunks(dim))
            .for_each(|(y, x)| {
                let mean = x.iter().sum::<f32>() / dim as f32;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
                let inv_std = 1.0 / (var + self.eps).sqrt();
                for (((y, &x), &shift), &scale) in y.iter_mut().zip(x).zip(shift).zip(scale) {
                    *y = (x - mean) * inv_std * (1.0 + scale) + shift;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
