//! Pair mining at scale: 1,000,000 random 768-dimensional embeddings (generated here, seeded)
//! through k-means + union-find with the default settings; prints the time and the peak memory
//! (VmHWM). `ACE_BENCH_ROWS` sets another row count. Run with `cargo bench --bench pairs`.

mod common;

use ace::data::embeddings::Embeddings;
use ace::data::pairs::{mine, PairConfig};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;
use std::time::Instant;

const DIM: usize = 768;
const CHUNK_ROWS: usize = 4096;

fn main() -> ace::Result<()> {
    let rows: usize = std::env::var("ACE_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    common::print_machine();
    let start = Instant::now();
    let mut data = vec![0f32; rows * DIM];
    data.par_chunks_mut(CHUNK_ROWS * DIM)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            rng.set_stream(i as u64);
            chunk
                .iter_mut()
                .for_each(|v| *v = rng.sample(StandardNormal));
        });
    let generated = start.elapsed().as_secs_f64();
    let emb = Embeddings {
        rows,
        dim: DIM,
        data,
    };
    let start = Instant::now();
    let mined = mine(emb, &PairConfig::default())?;
    let secs = start.elapsed().as_secs_f64();
    let s = &mined.stats;
    println!(
        "pairs bench: {rows} x {DIM} embeddings (generated in {generated:.1} s); mined in {secs:.1} s \
         on {} threads: {} clusters (largest {}), {} pairs compared, {} kept, {} near-duplicates, \
         {} sets; peak memory (VmHWM) {} MiB",
        rayon::current_num_threads(),
        s.clusters,
        s.largest_cluster,
        s.compared,
        s.kept,
        s.near_duplicates,
        mined.sets.len(),
        common::peak_rss_kib() / 1024
    );
    Ok(())
}
