//! Signals (items 5 and 6): SIGTERM and SIGHUP stop a batch as SIGINT does, leaving no
//! temporary file; stale temporary files of dead processes are removed by the next run; a
//! signal that comes while the output is written lets it finish and the run exit 0, never
//! "complete output and exit 130".

use crate::common::*;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("ace"));
    cmd.env(
        "ACE_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ace-cache"),
    );
    cmd.args(["--device", "cpu"]);
    cmd
}

fn send(child: &std::process::Child, signal: i32) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// Waits until `dir` holds a finished output (a name without a leading dot).
fn wait_for_output(dir: &Path) {
    let start = Instant::now();
    while !names(dir).iter().any(|n| !n.starts_with('.')) {
        assert!(start.elapsed() < Duration::from_secs(60), "no output came");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Item 5: SIGTERM and SIGHUP in the middle of a batch: exit 143 and 129 after cleanup, no
/// `.ace-*` temporary file left, every output written is complete.
#[test]
fn sigterm_and_sighup_stop_a_batch_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for i in 0..40 {
        std::fs::copy(
            root().join("samples/chelsea.png"),
            photos.join(format!("p{i:02}.png")),
        )
        .unwrap();
    }
    for (signal, status) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
        let out = dir.path().join(format!("out{signal}"));
        let mut child = binary()
            .args(["-q", "--jobs", "1", "analyze", "degrade"])
            .arg(&photos)
            .arg("-o")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_output(&out);
        send(&child, signal);
        let result = child.wait().unwrap();
        assert_eq!(result.code(), Some(status), "signal {signal}: {result:?}");
        let left = names(&out);
        assert!(left.len() < 40, "the batch was not stopped");
        for name in &left {
            assert!(!name.starts_with('.'), "temporary file left: {name}");
            image::open(out.join(name)).unwrap();
        }
    }
}

/// Item 5: a temporary file of ours left by a process that no longer runs (SIGKILL) is removed
/// when a later run writes into that folder; one of a live process is kept.
#[test]
fn stale_temporary_files_of_dead_processes_are_removed() {
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // Above the kernel's largest pid, so no process has it.
    let dead = format!(".ace-{host}-4194305-AbCdEf.tmp");
    let live = format!(".ace-{host}-{}-AbCdEf.tmp", std::process::id());
    for name in [&dead, &live] {
        std::fs::write(dir.path().join(name), b"partial").unwrap();
    }
    code(
        ace()
            .args(["analyze", "gray"])
            .arg(input("coffee"))
            .arg("-o")
            .arg(dir.path().join("gray.png")),
        0,
    );
    assert_eq!(names(dir.path()), [live, "gray.png".to_string()]);
}

/// Item 6: SIGINT while the output is being written (here: standard output, which the reader
/// holds back) lets the run finish its output and exit 0.
#[test]
fn a_signal_while_the_output_is_written_lets_it_finish() {
    let mut child = binary()
        .args(["-q", "generate", "--instruction", "a cat", "--steps", "1"])
        .args(["--width", "256", "--height", "256", "--config"])
        .arg(tiny_config())
        .args(["-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut png = vec![0u8; 1];
    stdout.read_exact(&mut png).unwrap();
    // The pipe holds 64 KiB; the process is blocked writing the rest when the signal comes.
    send(&child, libc::SIGINT);
    stdout.read_to_end(&mut png).unwrap();
    let status = child.wait().unwrap();
    assert!(
        png.len() > 2 * 65536,
        "the output fits the pipe: {} bytes",
        png.len()
    );
    assert_eq!(status.code(), Some(0), "{status:?}");
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (256, 256));
}

/// Item 6: SIGINT at any other moment of a generation: either the image is written and the
/// exit status is 0, or nothing is written and it is 130.
#[test]
fn a_generation_stopped_by_sigint_writes_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (i, delay) in [150u64, 400, 800].into_iter().enumerate() {
        let out = dir.path().join(format!("out{i}.png"));
        let mut child = binary()
            .args(["-q", "generate", "--instruction", "a cat", "--steps", "4"])
            .args(["--width", "128", "--height", "128", "--config"])
            .arg(tiny_config())
            .arg("-o")
            .arg(&out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        send(&child, libc::SIGINT);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(0), _) => assert!(out.is_file(), "exit 0 without its output"),
            (Some(130), _) => assert!(!out.exists(), "exit 130 after writing its output"),
            // Still starting (the program's code not yet running): the default action.
            (None, Some(libc::SIGINT)) => assert!(!out.exists(), "killed after writing"),
            other => panic!("exit {other:?}"),
        }
        assert!(names(dir.path()).iter().all(|n| !n.starts_with('.')));
    }
}
