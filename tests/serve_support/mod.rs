//! Running `ace serve` on the tiny fixture model for the integration tests and the bench: start
//! it on a free port (read from its `ace: serving on http://...` line), keep its later stderr
//! lines (the request log), stop it with a signal; and plain HTTP calls (JSON, multipart,
//! Server-Sent Events) through ureq.

#![allow(dead_code)] // each test file uses its part

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

pub fn fixture(path: &str) -> PathBuf {
    root().join("tests/fixtures/ace-tiny").join(path)
}

/// The tiny model's config.
pub fn tiny_config() -> PathBuf {
    fixture("model/ace_tiny.yaml")
}

/// A running `ace serve`.
pub struct Server {
    child: Child,
    pub base: String,
    /// Its stderr lines after the serving line.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The `ace` command with the test's cache folder, on the CPU, one thread.
pub fn ace_command(binary: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.env(
        "ACE_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ace-cache"),
    );
    cmd.args(["--device", "cpu", "--jobs", "1"]);
    cmd
}

impl Server {
    /// Starts `ace serve` on the tiny model with `data_dir` and the extra `args`.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        Self::start_binary(Path::new(env!("CARGO_BIN_EXE_ace")), data_dir, args)
    }

    /// Starts `binary serve ...`.
    pub fn start_binary(binary: &Path, data_dir: &Path, args: &[&str]) -> Server {
        let mut cmd = ace_command(binary);
        cmd.arg("serve")
            .arg("--config")
            .arg(tiny_config())
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("ace serve starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("ace: serving on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(url.to_string()));
                    }
                    continue;
                }
                lines.lock().unwrap().push(line.clone());
                if let Some(t) = &tx {
                    let _ = t.send(Err(line));
                }
            }
        });
        let start = Instant::now();
        let mut before = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(Ok(base)) => {
                    return Server { child, base, log };
                }
                Ok(Err(line)) => before.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "ace serve did not start in {:?}: {}",
                        start.elapsed(),
                        before.join("\n")
                    );
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `signal` and waits for the process to end (at most 60 s).
    pub fn stop_with(mut self, signal: i32) -> ExitStatus {
        // SAFETY: signals our own child process, by its id.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "ace serve did not stop after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 10 s) for a log line that contains `text`; all lines so far.
    pub fn wait_for_log(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.log_lines().join("\n");
            if log.contains(text) || start.elapsed() > Duration::from_secs(10) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = response.header(&n).unwrap_or_default().to_string();
            (n, v)
        })
        .collect();
    let mut body = Vec::new();
    response.into_reader().read_to_end(&mut body).unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build()
}

/// `GET url` with optional extra headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    reply(req.call())
}

/// `POST url` with a JSON body.
pub fn post_json(url: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent().post(url).set("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    reply(req.send_bytes(body.to_string().as_bytes()))
}

/// One part of a multipart form: a text field, or a file (with a file name).
pub enum Part {
    Text(&'static str, String),
    File(&'static str, String, Vec<u8>),
}

/// The multipart body of `parts` and its content type.
pub fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "ace-test-boundary-7d1c9f";
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match part {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                        .as_bytes(),
                );
            }
            Part::File(name, file, bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `POST url` with a multipart form.
pub fn post_form(url: &str, parts: &[Part], headers: &[(&str, &str)]) -> Reply {
    let (content_type, body) = multipart(parts);
    let mut req = agent().post(url).set("Content-Type", &content_type);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    reply(req.send_bytes(&body))
}

/// The events of a Server-Sent Events stream as (name, data), until it closes or `stop` says
/// so of an event.
pub fn events(url: &str, stop: impl Fn(&str) -> bool) -> Vec<(String, serde_json::Value)> {
    let response = agent().get(url).call().expect("the event stream opens");
    assert_eq!(
        response.content_type(),
        "text/event-stream",
        "not an event stream"
    );
    let mut out = Vec::new();
    let (mut name, mut data) = (String::new(), String::new());
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            let value: serde_json::Value = serde_json::from_str(&data).unwrap();
            let done = stop(&name);
            out.push((std::mem::take(&mut name), value));
            data.clear();
            if done {
                break;
            }
        }
    }
    out
}

/// A PNG file's bytes.
pub fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A LoRA adapter for the tiny DiT's first attention query, in the bare file layout.
pub fn write_lora(path: &Path) {
    use candle_core::{Device, Tensor};
    let a = Tensor::arange(0f32, 256.0, &Device::Cpu)
        .and_then(|t| t.affine(1.0 / 256.0, -0.5))
        .and_then(|t| t.reshape((4, 64)))
        .unwrap();
    let b = a.t().unwrap().contiguous().unwrap();
    let tensors = std::collections::HashMap::from([
        ("blocks.0.attn.q.lora_A.weight".to_string(), a),
        ("blocks.0.attn.q.lora_B.weight".to_string(), b),
    ]);
    candle_core::safetensors::save(&tensors, path).unwrap();
}
