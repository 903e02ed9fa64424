//! Spherical k-means over unit-length embeddings, the first level of the paper's hierarchical
//! aggregation (appendix E): it splits a large image collection into clusters small enough for
//! exhaustive pair comparison. Initialisation is greedy k-means++ on a sample; small sets run
//! Lloyd's iterations on everything, large ones Sculley's mini-batch updates. The dot products
//! run as matrix products (candle's CPU GEMM).

use crate::data::embeddings::Embeddings;
use crate::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Sets up to this size run Lloyd's algorithm on every row; larger ones use mini-batches.
pub const LLOYD_MAX_ROWS: usize = 50_000;
/// Rows per mini-batch.
pub const BATCH: usize = 4096;
/// Mini-batches drawn (per-centre learning rate 1/count, as in Sculley 2010 and scikit-learn).
pub const MINI_BATCHES: usize = 100;
/// Lloyd iterations at most (they stop earlier when no assignment changes).
pub const LLOYD_ITERATIONS: usize = 50;
/// Rows per matrix product when assigning.
const CHUNK: usize = 8192;

/// Dot products of every row of `a` with every row of `b` (both row-major with `dim` columns):
/// `a.len()/dim` x `b.len()/dim`, row-major.
pub fn dots(a: &[f32], b: &[f32], dim: usize) -> Result<Vec<f32>> {
    let (n, m) = (a.len() / dim, b.len() / dim);
    let ta = Tensor::from_slice(a, (n, dim), &Device::Cpu)?;
    let tb = Tensor::from_slice(b, (m, dim), &Device::Cpu)?;
    Ok(ta.matmul(&tb.t()?)?.flatten_all()?.to_vec1()?)
}

/// The index of the nearest centroid (largest dot product) for every row of `data`.
pub fn assign(data: &[f32], centroids: &[f32], dim: usize) -> Result<Vec<u32>> {
    let tc = Tensor::from_slice(centroids, (centroids.len() / dim, dim), &Device::Cpu)?.t()?;
    let mut out = Vec::with_capacity(data.len() / dim);
    for chunk in data.chunks(CHUNK * dim) {
        let t = Tensor::from_slice(chunk, (chunk.len() / dim, dim), &Device::Cpu)?;
        out.extend(t.matmul(&tc)?.argmax(1)?.to_vec1::<u32>()?);
    }
    Ok(out)
}

/// Clusters the rows of `emb` (assumed unit length) into `k` clusters; returns the cluster of
/// every row. Deterministic for a given seed.
pub fn cluster(emb: &Embeddings, k: usize, seed: u64) -> Result<Vec<u32>> {
    let k = k.clamp(1, emb.rows);
    if k == 1 {
        return Ok(vec![0; emb.rows]);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sample = sample_rows(emb, (3 * k).max(3 * BATCH).min(emb.rows), &mut rng);
    let mut centroids = kmeans_pp(&sample, emb.dim, k, &mut rng)?;
    if emb.rows <= LLOYD_MAX_ROWS {
        lloyd(emb, &mut centroids, k)
    } else {
        mini_batch(emb, &mut centroids, k, &mut rng)?;
        assign(&emb.data, &centroids, emb.dim)
    }
}

/// `count` distinct rows drawn at random, copied out (all rows, in order, when count = rows).
fn sample_rows(emb: &Embeddings, count: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut idx: Vec<usize> = if count == emb.rows {
        (0..emb.rows).collect()
    } else {
        rand::seq::index::sample(rng, emb.rows, count).into_vec()
    };
    idx.sort_unstable();
    idx.iter()
        .flat_map(|&i| emb.row(i).iter().copied())
        .collect()
}

/// Squared distance between unit vectors from their dot product.
fn dist2(dot: f32) -> f32 {
    (2.0 - 2.0 * dot).max(0.0)
}

/// Greedy k-means++ (Arthur & Vassilvitskii; scikit-learn's 2 + ln k candidates per step, the
/// one that lowers the total squared distance most is kept).
fn kmeans_pp(sample: &[f32], dim: usize, k: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
    let n = sample.len() / dim;
    let row = |i: usize| &sample[i * dim..(i + 1) * dim];
    let trials = 2 + (k as f64).ln() as usize;
    let first = rng.gen_range(0..n);
    let mut centroids = row(first).to_vec();
    let mut closest: Vec<f32> = dots(sample, row(first), dim)?
        .into_iter()
        .map(dist2)
        .collect();
    for _ in 1..k {
        let total: f64 = closest.iter().map(|&d| d as f64).sum();
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                if total <= 0.0 {
                    return rng.gen_range(0..n);
                }
                let mut r = rng.gen::<f64>() * total;
                for (i, &d) in closest.iter().enumerate() {
                    r -= d as f64;
                    if r < 0.0 {
                        return i;
                    }
                }
                n - 1
            })
            .collect();
        let cand: Vec<f32> = candidates
            .iter()
            .flat_map(|&c| row(c).iter().copied())
            .collect();
        // n x trials dot products.
        let d = dots(sample, &cand, dim)?;
        let (best, new_closest) = (0..candidates.len())
            .map(|t| {
                let merged: Vec<f32> = closest
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| c.min(dist2(d[i * candidates.len() + t])))
                    .collect();
                let cost: f64 = merged.iter().map(|&v| v as f64).sum();
                (t, merged, cost)
            })
            .min_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)))
            .map(|(t, merged, _)| (t, merged))
            .expect("at least two candidates");
        centroids.extend_from_slice(row(candidates[best]));
        closest = new_closest;
    }
    Ok(centroids)
}

/// Scales each centroid to unit length (a centroid at the origin is left as is).
fn normalize_rows(centroids: &mut [f32], dim: usize) {
    for c in centroids.chunks_mut(dim) {
        let norm = c.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            c.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

/// Lloyd's iterations: assign, move each centroid to its members' normalised mean; an empty
/// cluster keeps its centroid.
fn lloyd(emb: &Embeddings, centroids: &mut [f32], k: usize) -> Result<Vec<u32>> {
    let dim = emb.dim;
    let mut labels = assign(&emb.data, centroids, dim)?;
    for _ in 0..LLOYD_ITERATIONS {
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &l) in labels.iter().enumerate() {
            let l = l as usize;
            counts[l] += 1;
            for (s, &v) in sums[l * dim..(l + 1) * dim].iter_mut().zip(emb.row(i)) {
                *s += v as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for j in 0..dim {
                    centroids[c * dim + j] = sums[c * dim + j] as f32;
                }
            }
        }
        normalize_rows(centroids, dim);
        let next = assign(&emb.data, centroids, dim)?;
        if next == labels {
            break;
        }
        labels = next;
    }
    Ok(labels)
}

/// Mini-batch k-means: each batch is assigned, then every member pulls its centroid towards it
/// with step 1/(members seen so far).
fn mini_batch(
    emb: &Embeddings,
    centroids: &mut [f32],
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let dim = emb.dim;
    let mut counts = vec![0u64; k];
    for _ in 0..MINI_BATCHES {
        let idx: Vec<usize> = (0..BATCH).map(|_| rng.gen_range(0..emb.rows)).collect();
        let batch: Vec<f32> = idx
            .par_iter()
            .flat_map_iter(|&i| emb.row(i).iter().copied())
            .collect();
        let labels = assign(&batch, centroids, dim)?;
        for (b, &l) in labels.iter().enumerate() {
            let l = l as usize;
            counts[l] += 1;
            let eta = 1.0 / counts[l] as f32;
            for (c, &x) in centroids[l * dim..(l + 1) * dim]
                .iter_mut()
                .zip(&batch[b * dim..(b + 1) * dim])
            {
                *c += eta * (x - *c);
            }
        }
        normalize_rows(centroids, dim);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_and_assign_match_by_hand() {
        let a = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let b = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(dots(&a, &b, 2).unwrap(), vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8]);
        assert_eq!(assign(&a, &b, 2).unwrap(), vec![0, 1, 1]);
    }

    fn four_blobs() -> Embeddings {
        // Four blobs of 10 around the axes of R^4.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut data = Vec::new();
        for g in 0..4 {
            for _ in 0..10 {
                for j in 0..4 {
                    data.push(if j == g { 1.0 } else { 0.0 } + rng.gen_range(-0.1..0.1));
                }
            }
        }
        let mut e = Embeddings {
            rows: 40,
            dim: 4,
            data,
        };
        e.normalize();
        e
    }

    #[test]
    fn lloyd_separates_well_separated_blobs() {
        let e = four_blobs();
        let labels = cluster(&e, 4, 9).unwrap();
        for g in 0..4 {
            let l = labels[g * 10];
            assert!(
                labels[g * 10..g * 10 + 10].iter().all(|&x| x == l),
                "{labels:?}"
            );
        }
        let mut distinct = labels.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4);
        assert_eq!(labels, cluster(&e, 4, 9).unwrap(), "deterministic");
    }

    #[test]
    fn mini_batch_moves_centroids_onto_the_blobs() {
        let e = four_blobs();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut centroids = kmeans_pp(&e.data, 4, 4, &mut rng).unwrap();
        mini_batch(&e, &mut centroids, 4, &mut rng).unwrap();
        for c in centroids.chunks(4) {
            let top = c.iter().cloned().fold(f32::MIN, f32::max);
            assert!(top > 0.95, "centroid {c:?} not on an axis");
        }
    }
}
