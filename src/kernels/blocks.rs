//! Products with a weight matrix that is never whole in memory as f32: its rows are produced a
//! block at a time (widened from the bf16 a checkpoint stores, say), each block used by every
//! input while it is in the cache, and each input multiplied on its own. The T5 encoder runs
//! its linear layers this way: 9 GB of bf16 weights never become 18 GB of f32, and a prompt's
//! states do not depend on which other prompts were encoded with it (a product over more rows
//! may sum in another order), so cached and freshly computed states are the same bits.

use super::sgemm::{gemm, Operand};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

/// Bytes of f32 weight rows per block: a block stays in the caches while every input uses it.
const BLOCK_BYTES: usize = 4 << 20;

/// Writes rows `start..end` of a weight, row-major, into the buffer.
pub type WeightRows<'a> = dyn Fn(usize, usize, &mut [f32]) -> Result<()> + Sync + 'a;

/// `x @ W^T` for each `x` (`[rows, k]` f32 on the CPU), `W` being `n x k`, of which
/// `weight_rows(start, end, out)` writes rows `start..end` (row-major) into `out`.
pub fn products_by_weight_blocks(
    xs: &[Tensor],
    n: usize,
    k: usize,
    weight_rows: &WeightRows,
) -> Result<Vec<Tensor>> {
    let inputs: Vec<(usize, Vec<f32>)> = xs
        .iter()
        .map(|x| {
            let (rows, cols) = x.dims2()?;
            if cols != k {
                candle_core::bail!("product with a {n}x{k} weight: input has {cols} columns")
            }
            Ok((rows, x.flatten_all()?.to_vec1::<f32>()?))
        })
        .collect::<Result<_>>()?;
    let block = (BLOCK_BYTES / (4 * k.max(1))).max(16) / 16 * 16;
    let starts: Vec<usize> = (0..n).step_by(block.max(1)).collect();
    let blocks: Vec<Vec<Vec<f32>>> = starts
        .par_iter()
        .map(|&start| {
            let len = block.min(n - start);
            let mut w = vec![0f32; len * k];
            weight_rows(start, start + len, &mut w)?;
            let wt = Operand::row_major(len, k).t();
            inputs
                .iter()
                .map(|(rows, x)| {
                    let mut c = vec![0f32; rows * len];
                    gemm(
                        x,
                        &Operand::row_major(*rows, k),
                        &w,
                        &wt,
                        &mut c,
                        1.0,
                        false,
                    )?;
                    Ok(c)
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    inputs
        .iter()
        .enumerate()
        .map(|(i, (rows, _))| {
            let mut out = vec![0f32; rows * n];
            for (&start, parts) in starts.iter().zip(&blocks) {
                let len = block.min(n - start);
                for r in 0..*rows {
                    out[r * n + start..r * n + start + len]
                        .copy_from_slice(&parts[i][r * len..(r + 1) * len]);
                }
            }
            Tensor::from_vec(out, (*rows, n), &Device::Cpu)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_products_equal_whole_products_and_do_not_depend_on_the_batch() {
        let dev = Device::Cpu;
        let (n, k) = (300, 1000);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rows = |start: usize, end: usize, out: &mut [f32]| -> Result<()> {
            out.copy_from_slice(&values[start * k..end * k]);
            Ok(())
        };
        let xs: Vec<Tensor> = [3, 7, 1]
            .iter()
            .map(|&r| Tensor::randn(0f32, 1.0, (r, k), &dev).unwrap())
            .collect();
        let together = products_by_weight_blocks(&xs, n, k, &rows).unwrap();
        for (x, got) in xs.iter().zip(&together) {
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-3);
            let alone = products_by_weight_blocks(std::slice::from_ref(x), n, k, &rows).unwrap();
            assert_eq!(
                alone[0].to_vec2::<f32>().unwrap(),
                got.to_vec2::<f32>().unwrap(),
                "the same bits alone and with others"
            );
        }
        assert!(products_by_weight_blocks(&xs, n, k + 1, &rows).is_err());
    }
}
