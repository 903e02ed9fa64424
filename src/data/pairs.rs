//! Pair mining by hierarchical aggregation (appendix E of the paper): k-means splits the
//! collection into clusters, then inside each cluster every pair is compared and those whose
//! cosine similarity lies in `[low, high]` are candidate pairs; union-find over the candidate
//! pairs gives disjoint sets of related images. The lower bound drops unrelated images, the
//! upper bound near-duplicates (a pair of near-copies teaches no edit).

use crate::data::embeddings::Embeddings;
use crate::data::kmeans;
use crate::data::unionfind::DisjointSets;
use crate::{Error, Result};
use rayon::prelude::*;

/// Settings of the pair miner.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// Number of k-means clusters (`None`: [`default_clusters`]).
    pub clusters: Option<usize>,
    /// Lowest cosine similarity kept.
    pub low: f32,
    /// Highest cosine similarity kept (above it: near-duplicates).
    pub high: f32,
    /// Seed of the clustering.
    pub seed: u64,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            clusters: None,
            low: 0.85,
            high: 0.98,
            seed: 0,
        }
    }
}

/// A candidate pair of rows (`a < b`) and their cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub a: u32,
    pub b: u32,
    pub sim: f32,
}

/// Counts for the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairStats {
    pub rows: usize,
    pub clusters: usize,
    pub largest_cluster: usize,
    /// Pairs compared (within clusters).
    pub compared: u64,
    /// Pairs kept (similarity in range).
    pub kept: u64,
    /// Pairs dropped as near-duplicates (similarity above `high`).
    pub near_duplicates: u64,
    /// Pairs dropped as unrelated (similarity below `low`).
    pub unrelated: u64,
    /// Rows in a set of two or more.
    pub rows_in_sets: usize,
}

/// The result: candidate pairs sorted by `(a, b)`, disjoint sets of two or more rows (sorted,
/// ordered by first member), and the counts.
#[derive(Debug, Clone)]
pub struct Mined {
    pub pairs: Vec<Pair>,
    pub sets: Vec<Vec<u32>>,
    pub stats: PairStats,
}

/// Every pair is compared exactly up to this many rows (one cluster).
pub const EXACT_ROWS: usize = 1024;

/// The number of clusters when none is given: clusters of about `max(1024, sqrt(N))` rows.
/// Up to 1024 rows this is one cluster (every pair compared); beyond, the cost
/// `N * D * (K + N / K)` of assigning rows plus comparing within clusters is near its minimum
/// at `K = sqrt(N)` (1,000,000 rows: 977 clusters of about 1024).
pub fn default_clusters(rows: usize) -> usize {
    let size = (EXACT_ROWS as f64).max((rows as f64).sqrt());
    ((rows as f64 / size).ceil() as usize).max(1)
}

/// Rows of a cluster compared per matrix product.
const BLOCK: usize = 256;

/// Mines pairs and sets from `emb`, whose rows are normalised here (cosine similarity).
pub fn mine(mut emb: Embeddings, cfg: &PairConfig) -> Result<Mined> {
    if !(-1.0..=1.0).contains(&cfg.low) || !(-1.0..=1.0).contains(&cfg.high) || cfg.low > cfg.high {
        return Err(Error::invalid(
            "similarity bounds",
            format!("[{}, {}] (need -1 <= low <= high <= 1)", cfg.low, cfg.high),
        ));
    }
    if emb.rows > u32::MAX as usize {
        return Err(Error::invalid(
            "embeddings",
            format!("{} rows (at most 2^32)", emb.rows),
        ));
    }
    emb.normalize();
    let k = cfg
        .clusters
        .unwrap_or_else(|| default_clusters(emb.rows))
        .clamp(1, emb.rows);
    let labels = kmeans::cluster(&emb, k, cfg.seed)?;
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); k];
    for (i, &l) in labels.iter().enumerate() {
        members[l as usize].push(i as u32);
    }
    // Largest clusters first, for load balance.
    members.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let per_cluster: Vec<(Vec<Pair>, [u64; 3])> = members
        .par_iter()
        .map(|m| compare_within(&emb, m, cfg.low, cfg.high))
        .collect::<Result<_>>()?;

    let mut stats = PairStats {
        rows: emb.rows,
        clusters: members.iter().filter(|m| !m.is_empty()).count(),
        largest_cluster: members.first().map_or(0, Vec::len),
        ..Default::default()
    };
    let mut pairs = Vec::new();
    for (p, [kept, dup, unrelated]) in per_cluster {
        pairs.extend(p);
        stats.kept += kept;
        stats.near_duplicates += dup;
        stats.unrelated += unrelated;
    }
    stats.compared = stats.kept + stats.near_duplicates + stats.unrelated;
    pairs.sort_unstable_by_key(|p| (p.a, p.b));
    let mut sets = DisjointSets::new(emb.rows);
    for p in &pairs {
        sets.union(p.a, p.b);
    }
    let sets = sets.sets(2);
    stats.rows_in_sets = sets.iter().map(Vec::len).sum();
    Ok(Mined { pairs, sets, stats })
}

/// The JSON lines of a result: the sets (`{"set": K, "members": [ids]}`) then the pairs
/// (`{"a": id, "b": id, "sim": S}`), each part when asked for. Ids are `ids[row]` when given,
/// else row numbers.
pub fn to_jsonl(m: &Mined, ids: Option<&[String]>, sets: bool, pairs: bool) -> String {
    use serde_json::{json, Value};
    let id = |r: u32| -> Value {
        match ids {
            Some(ids) => Value::String(ids[r as usize].clone()),
            None => json!(r),
        }
    };
    let mut out = String::new();
    let mut line = |v: Value| {
        out.push_str(&v.to_string());
        out.push('\n');
    };
    if sets {
        for (k, s) in m.sets.iter().enumerate() {
            line(json!({"set": k, "members": s.iter().map(|&r| id(r)).collect::<Vec<_>>()}));
        }
    }
    if pairs {
        for p in &m.pairs {
            // Rounded to 6 decimals: stable text across BLAS blockings.
            let sim = (p.sim as f64 * 1e6).round() / 1e6;
            line(json!({"a": id(p.a), "b": id(p.b), "sim": sim}));
        }
    }
    out
}

/// All pairs of one cluster with their similarity in `[low, high]`, and the counts
/// (kept, above `high`, below `low`).
fn compare_within(
    emb: &Embeddings,
    members: &[u32],
    low: f32,
    high: f32,
) -> Result<(Vec<Pair>, [u64; 3])> {
    let dim = emb.dim;
    let rows: Vec<f32> = members
        .iter()
        .flat_map(|&i| emb.row(i as usize).iter().copied())
        .collect();
    let n = members.len();
    let mut pairs = Vec::new();
    let (mut dup, mut unrelated) = (0u64, 0u64);
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        // Row i of the block against rows i+1.. of the cluster.
        let sims = kmeans::dots(&rows[start * dim..end * dim], &rows[start * dim..], dim)?;
        let width = n - start;
        for i in 0..end - start {
            for j in i + 1..width {
                let s = sims[i * width + j];
                if s > high {
                    dup += 1;
                } else if s < low {
                    unrelated += 1;
                } else {
                    let (a, b) = (members[start + i], members[start + j]);
                    pairs.push(Pair {
                        a: a.min(b),
                        b: a.max(b),
                        sim: s,
                    });
                }
            }
        }
    }
    let kept = pairs.len() as u64;
    Ok((pairs, [kept, dup, unrelated]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    /// `groups` groups of `size` noisy copies of random centres in `dim` dimensions; the noise
    /// puts copies of one centre at cosine similarity about 0.9 to each other.
    fn groups(groups: usize, size: usize, dim: usize, seed: u64) -> Embeddings {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut data = Vec::new();
        for _ in 0..groups {
            let centre: Vec<f32> = (0..dim).map(|_| rng.sample(StandardNormal)).collect();
            for _ in 0..size {
                data.extend(
                    centre
                        .iter()
                        .map(|&c| c + 0.33 * rng.sample::<f32, _>(StandardNormal)),
                );
            }
        }
        Embeddings {
            rows: groups * size,
            dim,
            data,
        }
    }

    fn expected_groups(groups: usize, size: usize) -> Vec<Vec<u32>> {
        (0..groups)
            .map(|g| ((g * size) as u32..((g + 1) * size) as u32).collect())
            .collect()
    }

    #[test]
    fn recovers_known_groups_with_and_without_clustering() {
        let emb = groups(5, 20, 64, 11);
        for clusters in [None, Some(5)] {
            let cfg = PairConfig {
                clusters,
                ..Default::default()
            };
            let m = mine(emb.clone(), &cfg).unwrap();
            assert_eq!(m.sets, expected_groups(5, 20), "clusters {clusters:?}");
            assert!(m.pairs.iter().all(|p| (0.85..=0.98).contains(&p.sim)));
            // No pair crosses groups.
            assert!(m.pairs.iter().all(|p| p.a / 20 == p.b / 20));
            assert_eq!(m.stats.rows_in_sets, 100);
        }
    }

    #[test]
    fn bounds_drop_near_duplicates_and_unrelated_rows() {
        let mut emb = groups(2, 10, 64, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Row 20: a near-copy of row 0 (similarity > 0.98), rows 21-22: a near-duplicate pair
        // far from everything, row 23: an unrelated random row.
        let mut extra: Vec<f32> = emb
            .row(0)
            .iter()
            .map(|&v| v + 0.01 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let lone: Vec<f32> = (0..64).map(|_| rng.sample(StandardNormal)).collect();
        extra.extend(lone.iter().copied());
        extra.extend(
            lone.iter()
                .map(|&v| v + 0.01 * rng.sample::<f32, _>(StandardNormal)),
        );
        extra.extend((0..64).map(|_| rng.sample::<f32, _>(StandardNormal)));
        emb.data.extend(extra);
        emb.rows += 4;
        let m = mine(emb, &PairConfig::default()).unwrap();
        assert!(
            !m.pairs.iter().any(|p| (p.a, p.b) == (0, 20)),
            "near-duplicate pair kept"
        );
        assert!(!m.pairs.iter().any(|p| p.a >= 21 || p.b >= 21));
        assert!(m.stats.near_duplicates >= 2);
        // Row 20 still joins group 0 through its other, merely similar, members.
        let mut g0: Vec<u32> = (0..10).collect();
        g0.push(20);
        assert_eq!(m.sets, vec![g0, (10..20).collect()]);
        assert_eq!(m.stats.compared, 24 * 23 / 2);
    }

    #[test]
    fn same_seed_same_result_and_default_cluster_rule() {
        let emb = groups(4, 30, 32, 8);
        let cfg = PairConfig {
            clusters: Some(4),
            seed: 3,
            ..Default::default()
        };
        let (a, b) = (mine(emb.clone(), &cfg).unwrap(), mine(emb, &cfg).unwrap());
        assert_eq!((a.pairs, a.sets), (b.pairs, b.sets));
        assert_eq!(default_clusters(1), 1);
        assert_eq!(default_clusters(1024), 1);
        assert_eq!(default_clusters(1025), 2);
        assert_eq!(default_clusters(1_000_000), 977);
        assert_eq!(default_clusters(4_000_000), 2000);
    }

    #[test]
    fn bad_bounds_are_errors() {
        let cfg = PairConfig {
            low: 0.9,
            high: 0.8,
            ..Default::default()
        };
        assert!(mine(groups(1, 3, 4, 0), &cfg).is_err());
    }
}
