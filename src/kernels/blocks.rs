//! Products with a weight matrix that is never whole in memory as f32: its rows are produced a
//! block at a time (widened from the bf16 a checkpoint stores, say), each block used by every
//! input while it is in the cache, and each input multiplied on its own. The T5 encoder runs
//! its linear layers this way: 9 GB of bf16 weights never become 18 GB of f32, and a prompt's
//! states do not depend on which other prompts were encoded with it (a product over more rows
//! may sum in another order), so cached and freshly computed states are the same bits. Under
//! `--dtype bf16` the blocks stay bf16 and go through the bf16 products of [`super::bf16`]
//! (the inputs rounded to bf16 as they are read, f32 accumulation), as PyTorch's autocast
//! runs a linear layer: no widening, and the bf16 instructions' rate.

#[cfg(feature = "onednn")]
use super::bf16::{self, Bf16Matrix};
use super::sgemm::{gemm, Operand};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

/// Bytes of f32 weight rows per block: a block stays in the caches while every input uses it.
const BLOCK_BYTES: usize = 4 << 20;

/// Writes rows `start..end` of a weight, row-major, into the buffer.
pub type Rows<'a, T> = dyn Fn(usize, usize, &mut [T]) -> Result<()> + Sync + 'a;

/// A weight as the products read it, a block of rows at a time.
#[derive(Clone, Copy)]
pub enum WeightRows<'a> {
    /// Rows in f32, multiplied in f32.
    F32(&'a Rows<'a, f32>),
    /// Rows in bf16, multiplied in bf16 with f32 accumulation (needs bf16 instructions,
    /// [`super::cpu_bf16_support`]).
    #[cfg(feature = "onednn")]
    Bf16(&'a Rows<'a, half::bf16>),
}

/// `c [rows, len] = x [rows, k] @ block^T` of each input with one block of `len` weight rows.
fn block_products(
    inputs: &[(usize, Vec<f32>)],
    weight: WeightRows,
    start: usize,
    len: usize,
    k: usize,
) -> Result<Vec<Vec<f32>>> {
    match weight {
        WeightRows::F32(rows) => {
            let mut w = vec![0f32; len * k];
            rows(start, start + len, &mut w)?;
            let wt = Operand::row_major(len, k).t();
            inputs
                .iter()
                .map(|(m, x)| {
                    let mut c = vec![0f32; m * len];
                    gemm(x, &Operand::row_major(*m, k), &w, &wt, &mut c, 1.0, false)?;
                    Ok(c)
                })
                .collect()
        }
        #[cfg(feature = "onednn")]
        WeightRows::Bf16(rows) => {
            let mut w = vec![half::bf16::ZERO; len * k];
            rows(start, start + len, &mut w)?;
            // The block transposed: element (k_i, n_j) of `[k, len]` is row n_j's k_i-th.
            let wt = Bf16Matrix {
                values: &w,
                k,
                n: len,
                strides: (1, k),
            };
            inputs
                .iter()
                .map(|(m, x)| {
                    let mut c = vec![0f32; m * len];
                    bf16::product(x.as_slice(), (k, 1), wt, None, &mut c)?;
                    Ok(c)
                })
                .collect()
        }
    }
}

/// `x @ W^T` for each `x` (`[rows, k]` f32 on the CPU), `W` being `n x k`, read a block of
/// rows at a time through `weight`.
pub fn products_by_weight_blocks(
    xs: &[Tensor],
    n: usize,
    k: usize,
    weight: WeightRows,
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
        .map(|&start| block_products(&inputs, weight, start, block.min(n - start), k))
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
    use candle_core::DType;

    /// The products of `weight` (the rows of `w`, `n x k`) with inputs of several row counts
    /// against `x @ w^T`, the inputs rounded to bf16 first when `rounded`; each input's the
    /// same bits alone as with the others.
    fn products_match(weight: WeightRows, w: &Tensor, rounded: bool) {
        let dev = Device::Cpu;
        let (n, k) = w.dims2().unwrap();
        let xs: Vec<Tensor> = [3, 7, 1]
            .iter()
            .map(|&r| Tensor::randn(0f32, 1.0, (r, k), &dev).unwrap())
            .collect();
        let together = products_by_weight_blocks(&xs, n, k, weight).unwrap();
        for (x, got) in xs.iter().zip(&together) {
            let read = if rounded {
                x.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            } else {
                x.clone()
            };
            let want = read.matmul(&w.t().unwrap()).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-3);
            let alone = products_by_weight_blocks(std::slice::from_ref(x), n, k, weight).unwrap();
            assert_eq!(
                alone[0].to_vec2::<f32>().unwrap(),
                got.to_vec2::<f32>().unwrap(),
                "the same bits alone and with others"
            );
        }
        assert!(products_by_weight_blocks(&xs, n, k + 1, weight).is_err());
    }

    #[test]
    fn block_products_equal_whole_products_and_do_not_depend_on_the_batch() {
        let (n, k) = (300, 1000);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rows = |start: usize, end: usize, out: &mut [f32]| -> Result<()> {
            out.copy_from_slice(&values[start * k..end * k]);
            Ok(())
        };
        products_match(WeightRows::F32(&rows), &w, false);
    }

    #[cfg(feature = "onednn")]
    #[test]
    fn bf16_blocks_multiply_the_rounded_operands() {
        if !bf16::cpu_has_bf16() {
            eprintln!("no bf16 instructions on this CPU: bf16 blocks not tested");
            return;
        }
        let (n, k) = (300, 1000);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let values = w.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap();
        let rows = |start: usize, end: usize, out: &mut [half::bf16]| -> Result<()> {
            out.copy_from_slice(&values[start * k..end * k]);
            Ok(())
        };
        products_match(
            WeightRows::Bf16(&rows),
            &w.to_dtype(DType::F32).unwrap(),
            true,
        );
    }
}
