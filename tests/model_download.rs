//! `ace model download` against a tiny Hugging Face hub served on 127.0.0.1: the files a config
//! names land in the cache under HF_HOME, byte for byte, and a second run downloads nothing.

use assert_cmd::Command;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn ace() -> Command {
    let mut cmd = Command::cargo_bin("ace").unwrap();
    cmd.timeout(std::time::Duration::from_secs(60));
    cmd
}

/// A response: status line, extra headers, body.
type Response = (&'static str, Vec<String>, Vec<u8>);

/// Serves HTTP on 127.0.0.1: `answer(path, range)` makes each response; every requested path
/// (with its range) is logged.
fn serve_with(
    answer: impl Fn(&str, Option<(usize, Option<usize>)>) -> Response + Send + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = Some((a.parse().unwrap(), b.parse().ok()));
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let logged = match range {
                Some((a, _)) => format!("{path} range {a}-"),
                None => path.clone(),
            };
            seen.lock().unwrap().push(logged);
            let (status, headers, body) = answer(&path, range);
            let mut stream = stream;
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        }
    });
    (addr, log)
}

/// `data[start..=end]` as a 206 answer with its Content-Range.
fn ranged(data: &[u8], range: Option<(usize, Option<usize>)>, extra: Vec<String>) -> Response {
    let (start, end) = range.unwrap_or((0, None));
    let end = end.unwrap_or(data.len() - 1).min(data.len() - 1);
    let mut headers = extra;
    headers.push(format!("Content-Range: bytes {start}-{end}/{}", data.len()));
    ("206 Partial Content", headers, data[start..=end].to_vec())
}

/// The Hugging Face hub's two endpoints that hf-hub uses, for repository `repo`: its info and
/// ranged file reads.
fn serve_hf(
    repo: &'static str,
    files: BTreeMap<String, Vec<u8>>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    serve_with(move |path, range| {
        if path == format!("/api/models/{repo}/revision/main") {
            let siblings: Vec<_> = files
                .keys()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body = serde_json::json!({"siblings": siblings, "sha": "c0ffee"});
            return ("200 OK", vec![], body.to_string().into_bytes());
        }
        let file = path.strip_prefix(&format!("/{repo}/resolve/main/"));
        match file.and_then(|f| files.get(f).map(|d| (f, d))) {
            Some((f, data)) => ranged(
                data,
                range,
                vec![
                    format!("ETag: \"etag-{}\"", f.replace('/', "-")),
                    "x-repo-commit: c0ffee".to_string(),
                ],
            ),
            None => ("404 Not Found", vec![], Vec::new()),
        }
    })
}

fn serve(files: BTreeMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    serve_hf("org/tiny", files)
}

/// ModelScope's file API for repository `iic/tiny`: the recursive listing (with sizes and
/// SHA-256, and a folder entry) and ranged file reads by `FilePath`. A file listed with
/// `wrong_sha` gets a checksum that its bytes do not have.
fn serve_modelscope(
    files: BTreeMap<String, Vec<u8>>,
    wrong_sha: Option<&'static str>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    use sha2::Digest;
    serve_with(move |path, range| {
        if path.starts_with("/api/v1/models/iic/tiny/repo/files?") {
            let mut listed: Vec<serde_json::Value> = files
                .iter()
                .map(|(f, d)| {
                    let sha: String = sha2::Sha256::digest(d)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    let sha = if Some(f.as_str()) == wrong_sha { "0".repeat(64) } else { sha };
                    serde_json::json!({"Path": f, "Name": f, "Type": "blob", "Size": d.len(), "Sha256": sha})
                })
                .collect();
            listed.push(
                serde_json::json!({"Path": "models", "Name": "models", "Type": "tree", "Size": 0}),
            );
            let body = serde_json::json!({"Code": 200, "Data": {"Files": listed}});
            return ("200 OK", vec![], body.to_string().into_bytes());
        }
        let file = path
            .strip_prefix("/api/v1/models/iic/tiny/repo?")
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("FilePath=")))
            .map(|f| f.replace("%2F", "/"));
        match file.and_then(|f| files.get(&f)) {
            Some(data) if range.is_some() => ranged(data, range, vec![]),
            Some(data) => ("200 OK", vec![], data.clone()),
            None => ("404 Not Found", vec![], Vec::new()),
        }
    })
}

/// The tiny fixture config with some of its weight paths replaced by hub references.
fn tiny_config_naming(replacements: &[(&str, &str)]) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ace-tiny/model/ace_tiny.yaml"
    );
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in replacements {
        assert!(text.contains(from), "{from} not in the tiny config");
        text = text.replace(from, to);
    }
    text
}

#[test]
fn downloads_what_the_config_names_then_uses_the_cache() {
    let files = BTreeMap::from([
        ("models/dit/tiny.pth".to_string(), vec![7u8; 3000]),
        (
            "models/t5/config.json".to_string(),
            b"{\"d_model\": 8}".to_vec(),
        ),
        (
            "models/t5/model.safetensors".to_string(),
            (0..=255u8).collect(),
        ),
        ("README.md".to_string(), b"not named by the config".to_vec()),
    ]);
    let (endpoint, log) = serve(files.clone());
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("tiny.yaml");
    std::fs::write(
        &config,
        tiny_config_naming(&[
            (
                "models/dit/ace_tiny.pth",
                "hf://org/tiny@models/dit/tiny.pth",
            ),
            ("models/text_encoder/t5-tiny", "hf://org/tiny@models/t5"),
        ]),
    )
    .unwrap();
    let run = || {
        Command::cargo_bin("ace")
            .unwrap()
            .args(["model", "download", "--json", "--config"])
            .arg(&config)
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", &endpoint)
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .success()
    };
    let first = String::from_utf8(run().get_output().stdout.clone()).unwrap();
    let lines: Vec<serde_json::Value> = first
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{first}");
    for line in &lines {
        let file = line["file"].as_str().unwrap();
        assert_eq!(line["cached"], false);
        let local = std::path::PathBuf::from(line["local"].as_str().unwrap());
        assert!(
            local.starts_with(home.path().join("hub/models--org--tiny")),
            "{local:?}"
        );
        assert_eq!(std::fs::read(&local).unwrap(), files[file], "{file}");
    }

    let downloads_before = log
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.contains("/resolve/"))
        .count();
    let second = String::from_utf8(run().get_output().stdout.clone()).unwrap();
    assert!(
        second.lines().all(|l| l.contains("\"cached\":true")),
        "{second}"
    );
    let downloads_after = log
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.contains("/resolve/"))
        .count();
    assert_eq!(
        downloads_before, downloads_after,
        "the second run fetched files again"
    );
}

#[test]
fn a_missing_file_in_the_repository_is_a_clear_error() {
    let (endpoint, _) = serve(BTreeMap::from([(
        "models/a.bin".to_string(),
        vec![1u8; 10],
    )]));
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("c.yaml");
    std::fs::write(
        &config,
        tiny_config_naming(&[("models/vae/vae.bin", "hf://org/tiny@models/vae/vae.bin")]),
    )
    .unwrap();
    let out = Command::cargo_bin("ace")
        .unwrap()
        .args(["model", "download", "--config"])
        .arg(&config)
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", &endpoint)
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.contains("models/vae/vae.bin") && err.contains("no file"),
        "{err}"
    );
}

/// The files a tiny config names on ModelScope, and the config.
fn modelscope_files(home: &Path) -> (BTreeMap<String, Vec<u8>>, PathBuf) {
    let files = BTreeMap::from([
        (
            "models/dit/tiny.pth".to_string(),
            (0..5000u32).map(|i| (i * 7) as u8).collect(),
        ),
        (
            "models/t5/config.json".to_string(),
            b"{\"d_model\": 8}".to_vec(),
        ),
        (
            "models/t5/model.safetensors".to_string(),
            (0..=255u8).collect(),
        ),
    ]);
    let config = home.join("tiny.yaml");
    std::fs::write(
        &config,
        tiny_config_naming(&[
            (
                "models/dit/ace_tiny.pth",
                "ms://iic/tiny@models/dit/tiny.pth",
            ),
            ("models/text_encoder/t5-tiny", "ms://iic/tiny@models/t5"),
        ]),
    )
    .unwrap();
    (files, config)
}

#[test]
fn ms_references_come_from_modelscope_and_resume() {
    let home = tempfile::tempdir().unwrap();
    let (files, config) = modelscope_files(home.path());
    let (endpoint, log) = serve_modelscope(files.clone(), None);
    let cache = home.path().join("modelscope");
    // An earlier download stopped after 1000 bytes of the DiT.
    let dit = cache.join("models/iic/tiny/models/dit/tiny.pth");
    std::fs::create_dir_all(dit.parent().unwrap()).unwrap();
    let partial = PathBuf::from(format!("{}.incomplete", dit.display()));
    std::fs::write(&partial, &files["models/dit/tiny.pth"][..1000]).unwrap();
    let run = || {
        let out = ace()
            .args(["model", "download", "--json", "--config"])
            .arg(&config)
            .env("MODELSCOPE_ENDPOINT", &endpoint)
            .env("MODELSCOPE_CACHE", &cache)
            .env("HF_HOME", home.path().join("hf"))
            .assert()
            .success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    };
    let first = run();
    assert_eq!(first.lines().count(), 3, "{first}");
    for (name, data) in &files {
        let local = cache.join("models/iic/tiny").join(name);
        assert_eq!(&std::fs::read(&local).unwrap(), data, "{name}");
    }
    assert!(!partial.exists());
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|p| p.contains("tiny.pth") && p.ends_with("range 1000-")),
        "the DiT resumed at byte 1000: {:?}",
        log.lock().unwrap()
    );
    let requests = log.lock().unwrap().len();
    let second = run();
    assert!(
        second.lines().all(|l| l.contains("\"cached\":true")),
        "{second}"
    );
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), requests + 1, "only the listing again: {seen:?}");
    // The config now finds its ms:// weights in the ModelScope cache (its other paths are
    // local, beside it).
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ace-tiny/model");
    for rel in [
        "models/vae/vae.bin",
        "models/tokenizer/t5-tiny/tokenizer.json",
        "models/tokenizer/t5-tiny/spiece.model",
    ] {
        std::fs::create_dir_all(home.path().join(rel).parent().unwrap()).unwrap();
        std::fs::copy(fixture.join(rel), home.path().join(rel)).unwrap();
    }
    let info = ace()
        .args(["model", "info", "--json", "--config"])
        .arg(&config)
        .env("MODELSCOPE_CACHE", &cache)
        .env("HF_HOME", home.path().join("hf"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&info.stdout).to_string() + &String::from_utf8_lossy(&info.stderr);
    assert!(text.contains(&dit.display().to_string()), "{text}");
}

#[test]
fn an_unreachable_modelscope_falls_back_to_the_hugging_face_mirror() {
    let home = tempfile::tempdir().unwrap();
    let (files, config) = modelscope_files(home.path());
    let (hf, _) = serve_hf("scepter-studio/tiny", files.clone());
    // Nothing listens on a port just closed.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let download = |source: &str| {
        ace()
            .args([
                "model", "download", "--json", "--source", source, "--config",
            ])
            .arg(&config)
            .env("MODELSCOPE_ENDPOINT", &closed)
            .env("MODELSCOPE_CACHE", home.path().join("modelscope"))
            .env("HF_HOME", home.path().join("hf"))
            .env("HF_ENDPOINT", &hf)
            .output()
            .unwrap()
    };
    let only_ms = download("ms");
    assert_eq!(only_ms.status.code(), Some(2));
    let err = String::from_utf8_lossy(&only_ms.stderr).to_string();
    assert!(
        err.contains("ModelScope did not answer") && err.contains("--source hf"),
        "{err}"
    );
    for source in ["auto", "hf"] {
        let out = download(source);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(stdout.contains("scepter-studio/tiny"), "{stdout}");
    }
    let local = home
        .path()
        .join("hf/hub/models--scepter-studio--tiny/snapshots/c0ffee/models/dit/tiny.pth");
    assert_eq!(std::fs::read(local).unwrap(), files["models/dit/tiny.pth"]);
}

#[test]
fn a_download_that_does_not_match_its_checksum_is_removed() {
    let home = tempfile::tempdir().unwrap();
    let (files, config) = modelscope_files(home.path());
    let (endpoint, _) = serve_modelscope(files, Some("models/t5/model.safetensors"));
    let out = ace()
        .args(["model", "download", "--config"])
        .arg(&config)
        .env("MODELSCOPE_ENDPOINT", &endpoint)
        .env("MODELSCOPE_CACHE", home.path().join("ms"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("SHA-256"),
        "{err}"
    );
    let dir = home.path().join("ms/models/iic/tiny/models/t5");
    assert!(!dir.join("model.safetensors").exists());
    assert!(!dir.join("model.safetensors.incomplete").exists());
}
