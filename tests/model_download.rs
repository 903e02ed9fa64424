//! `ace model download` against a tiny Hugging Face hub served on 127.0.0.1: the files a config
//! names land in the cache under HF_HOME, byte for byte, and a second run downloads nothing.

use assert_cmd::Command;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// Serves the hub's two endpoints that hf-hub uses: repository info and ranged file reads.
fn serve(files: BTreeMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
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
            let mut range_start = 0usize;
            let mut range_end: Option<usize> = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range_start = a.parse().unwrap();
                    range_end = b.parse().ok();
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            seen.lock().unwrap().push(path.clone());
            let mut stream = stream;
            let (status, headers, body): (&str, Vec<String>, Vec<u8>) =
                if path == "/api/models/org/tiny/revision/main" {
                    let siblings: Vec<_> = files
                        .keys()
                        .map(|f| serde_json::json!({ "rfilename": f }))
                        .collect();
                    let body = serde_json::json!({"siblings": siblings, "sha": "c0ffee"});
                    ("200 OK", vec![], body.to_string().into_bytes())
                } else if let Some(file) = path.strip_prefix("/org/tiny/resolve/main/") {
                    match files.get(file) {
                        Some(data) => {
                            let end = range_end.unwrap_or(data.len() - 1).min(data.len() - 1);
                            let headers = vec![
                                format!("ETag: \"etag-{}\"", file.replace('/', "-")),
                                "x-repo-commit: c0ffee".to_string(),
                                format!("Content-Range: bytes {range_start}-{end}/{}", data.len()),
                            ];
                            (
                                "206 Partial Content",
                                headers,
                                data[range_start..=end].to_vec(),
                            )
                        }
                        None => ("404 Not Found", vec![], Vec::new()),
                    }
                } else {
                    ("404 Not Found", vec![], Vec::new())
                };
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
