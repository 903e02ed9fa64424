//! `ace serve`'s own cost per request, against the same jobs through `ace edit --batch` (the
//! baseline: one process, the model loaded once, no HTTP), on the tiny fixture model with the
//! release binary. The same edit (a 96x128 photo, 2 steps, one seed per job) runs N times as a
//! batch and N times as `POST /v1/images/edits` calls, one client after the other, then from
//! four clients at once. Prints per request the wall time, the model's time (the batch's
//! `seconds.generate`, the server's `Server-Timing: model`), what is left (the overhead: reading
//! and writing images, HTTP, queueing), and requests per second, with the server against the
//! batch as ratios. `cargo bench --bench serve`; ACE_BENCH_REQUESTS (default 48) sets N.

mod common;
#[path = "../tests/serve_support/mod.rs"]
mod serve_support;

use serve_support::{ace_command, fixture, post_form, tiny_config, Part, Server};
use std::path::Path;
use std::time::Instant;

/// Steps of every job: the model's time stays small, so that the overhead shows.
const STEPS: &str = "2";
const INSTRUCTION: &str = "make {image} look like a watercolor painting";

/// Mean, median and 90th percentile.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    (s.iter().sum::<f64>() / s.len() as f64, at(0.5), at(0.9))
}

/// Per job: (wall ms, model ms) through `ace edit --batch`, and the process's whole seconds.
fn batch(n: usize, work: &Path) -> anyhow::Result<(Vec<(f64, f64)>, f64)> {
    let image = fixture("inputs/astronaut.png");
    let lines: String = (0..n)
        .map(|i| {
            let out = work.join(format!("batch/{i}.png"));
            format!(
                "{}\n",
                serde_json::json!({"image": [image], "instruction": INSTRUCTION, "seed": i, "output": out})
            )
        })
        .collect();
    let jobs = work.join("jobs.jsonl");
    std::fs::write(&jobs, lines)?;
    let start = Instant::now();
    let out = ace_command(Path::new(env!("CARGO_BIN_EXE_ace")))
        .args(["-q", "edit", "--config"])
        .arg(tiny_config())
        .args(["--steps", STEPS, "--batch"])
        .arg(&jobs)
        .output()?;
    let whole = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "ace edit --batch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut per_job = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let s = &v["seconds"];
        per_job.push((
            s["total"].as_f64().unwrap_or(f64::NAN) * 1e3,
            s["generate"].as_f64().unwrap_or(f64::NAN) * 1e3,
        ));
    }
    Ok((per_job, whole))
}

/// One edit call: (wall ms, model ms).
fn edit(server: &Server, photo: &[u8], seed: usize) -> (f64, f64) {
    let start = Instant::now();
    let r = post_form(
        &server.url("/v1/images/edits"),
        &[
            Part::File("image", "astronaut.png".into(), photo.to_vec()),
            Part::Text("prompt", INSTRUCTION.into()),
            Part::Text("steps", STEPS.into()),
            Part::Text("seed", seed.to_string()),
            Part::Text("response_format", "b64_json".into()),
        ],
        &[],
    );
    let wall = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let model = r
        .header("server-timing")
        .and_then(|t| {
            t.split(',')
                .find_map(|m| m.trim().strip_prefix("model;dur="))
                .and_then(|d| d.parse().ok())
        })
        .expect("Server-Timing: model;dur=");
    (wall, model)
}

fn report(name: &str, runs: &[(f64, f64)]) -> (f64, f64) {
    let walls: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let overheads: Vec<f64> = runs.iter().map(|r| r.0 - r.1).collect();
    let models: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let (wall, _, _) = stats(&walls);
    let (model, _, _) = stats(&models);
    let (over, over_median, over_p90) = stats(&overheads);
    println!(
        "{name:<28} {wall:>9.2} {model:>9.2} {over:>12.2} {over_median:>12.2} {over_p90:>10.2}"
    );
    (wall, over)
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("serve: run with `cargo bench --bench serve`");
        return Ok(());
    }
    println!("cpu: {}", common::cpu_description());
    let n: usize = std::env::var("ACE_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
        .max(4);
    let work = tempfile::tempdir()?;
    let photo = std::fs::read(fixture("inputs/astronaut.png"))?;

    let (batch_jobs, batch_whole) = batch(n, work.path())?;
    let server = Server::start(&work.path().join("data"), &["--queue", "64"]);
    for seed in 0..3 {
        edit(&server, &photo, seed); // warm-up: prompt states, allocator
    }
    let sequential: Vec<(f64, f64)> = (0..n).map(|i| edit(&server, &photo, i)).collect();
    let start = Instant::now();
    let concurrent: Vec<(f64, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|c| {
                let (server, photo) = (&server, &photo);
                s.spawn(move || {
                    (0..n / 4)
                        .map(|i| edit(server, photo, c * n + i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread"))
            .collect()
    });
    let concurrent_seconds = start.elapsed().as_secs_f64();

    println!(
        "tiny model, 96x128 edit, {STEPS} steps, {n} requests; milliseconds per request \
         (overhead = wall - model)"
    );
    println!(
        "{:<28} {:>9} {:>9} {:>12} {:>12} {:>10}",
        "", "wall", "model", "overhead", "median", "p90"
    );
    let (batch_wall, batch_over) = report("ace edit --batch (baseline)", &batch_jobs);
    let (seq_wall, seq_over) = report("ace serve, 1 client", &sequential);
    report("ace serve, 4 clients", &concurrent);
    let batch_rate = n as f64 / (batch_jobs.iter().map(|j| j.0).sum::<f64>() / 1e3);
    let seq_rate = 1e3 / seq_wall;
    let conc_rate = concurrent.len() as f64 / concurrent_seconds;
    println!(
        "requests/s: batch {batch_rate:.1} (whole process {:.1} with the model load), \
         serve 1 client {seq_rate:.1}, serve 4 clients {conc_rate:.1}",
        n as f64 / batch_whole
    );
    println!(
        "serve / batch: wall per request {:.2}x, overhead {:+.2} ms per request beyond the \
         batch's ({seq_over:.2} vs {batch_over:.2}); 4 clients / batch: requests/s {:.2}x",
        seq_wall / batch_wall,
        seq_over - batch_over,
        conc_rate / batch_rate
    );
    server.stop_with(libc::SIGTERM);
    Ok(())
}
