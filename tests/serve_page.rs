//! The chat page of `ace serve` in headless Chromium, driven as a person would through the
//! Chrome DevTools Protocol: open it, upload a sample with the file picker, paint a mask with
//! the mouse, send two turns, see two images, retry the last with another seed, reload and find
//! the chat still there, and the same on a phone-sized screen. The screenshot in the README is this test's
//! (`ACE_UPDATE_SCREENSHOT=1 cargo test --test serve_page` writes docs/serve.png).

mod serve_support;

use serde_json::{json, Value};
use serve_support::*;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A headless Chromium and the DevTools connection to its page.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> &'static str {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .expect("no chromium on PATH: the page test needs it (scripts/setup-system.sh installs it)")
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1100,820",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium says where DevTools listens");
        let host = browser_ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let page_ws = loop {
            let targets: Value = get(&format!("http://{host}/json/list"), &[]).json();
            if let Some(t) = targets
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["type"] == "page")
            {
                break t["webSocketDebuggerUrl"].as_str().unwrap().to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ws, _) = tungstenite::connect(page_ws.as_str()).expect("DevTools connection");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        }
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        }
    }

    /// Calls a DevTools method and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).unwrap();
        loop {
            let msg = self.ws.read().expect("a DevTools message");
            let Ok(text) = msg.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page; on timeout, fails with the page's error line.
    fn wait_for(&mut self, expr: &str, seconds: u64) {
        let start = Instant::now();
        while self.eval(expr) != json!(true) {
            if start.elapsed() > Duration::from_secs(seconds) {
                let error = self.eval("document.getElementById('error')?.textContent");
                panic!("waited {seconds} s for {expr}; the page says: {error}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The centre of the element `selector` (scrolled into view).
    fn centre(&mut self, selector: &str) -> (f64, f64) {
        let r = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector:?}); e.scrollIntoView({{block: 'center'}}); \
               const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
        ));
        (r[0].as_f64().unwrap(), r[1].as_f64().unwrap())
    }

    fn mouse(&mut self, kind: &str, (x, y): (f64, f64), buttons: u32) {
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1}),
        );
    }

    /// Clicks the element `selector` with the mouse.
    fn click(&mut self, selector: &str) {
        let at = self.centre(selector);
        self.mouse("mousePressed", at, 1);
        self.mouse("mouseReleased", at, 0);
    }

    /// Clicks into `selector` and types `text`.
    fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector);
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// A PNG of the page as shown, also kept as `name` in the tests' temporary folder.
    fn screenshot(&mut self, name: &str) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            shot["data"].as_str().unwrap(),
        )
        .unwrap();
        std::fs::write(
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name),
            &png,
        )
        .unwrap();
        png
    }

    fn screen(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }
}

/// How many turn images the page shows, loaded.
const OUTPUTS: &str = "[...document.querySelectorAll('img.output')].filter(i => i.complete && i.naturalWidth > 0).length";

#[test]
fn the_chat_page_works_in_a_headless_browser() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let loras = dir.path().join("loras");
    std::fs::create_dir(&loras).unwrap();
    write_lora(&loras.join("style.safetensors"));
    let server = Server::start(&data, &["-v", "--lora-dir", loras.to_str().unwrap()]);
    let mut b = Browser::launch();
    b.screen(1100, 820, false);
    b.call("Page.enable", json!({}));
    b.call("Page.navigate", json!({"url": server.url("/")}));
    b.wait_for("document.body?.dataset.ready === 'yes'", 30);
    assert_eq!(b.eval("document.getElementById('error').textContent"), "");
    assert!(
        b.eval("document.querySelectorAll('#task option').length")
            .as_u64()
            .unwrap()
            > 10
    );

    // Upload a sample through the file picker.
    let doc = b.call("DOM.getDocument", json!({"depth": 0}));
    let input = b.call(
        "DOM.querySelector",
        json!({"nodeId": doc["root"]["nodeId"], "selector": "#file"}),
    );
    let sample = fixture("inputs/astronaut.png");
    b.call(
        "DOM.setFileInputFiles",
        json!({"nodeId": input["nodeId"], "files": [sample.display().to_string()]}),
    );
    b.wait_for(
        "document.querySelectorAll('#attachments img').length === 1",
        10,
    );

    // Paint a mask with the mouse over the upper left of the image.
    b.click("#paint");
    b.wait_for(
        "document.getElementById('painter').dataset.ready === 'yes'",
        10,
    );
    let rect = b.eval(
        "(() => { const r = document.getElementById('strokes').getBoundingClientRect(); \
           return [r.left, r.top, r.width, r.height]; })()",
    );
    let (x, y, w, h) = (
        rect[0].as_f64().unwrap(),
        rect[1].as_f64().unwrap(),
        rect[2].as_f64().unwrap(),
        rect[3].as_f64().unwrap(),
    );
    b.mouse("mousePressed", (x + 0.2 * w, y + 0.2 * h), 1);
    for i in 1..=10 {
        let t = f64::from(i) / 10.0;
        b.mouse("mouseMoved", (x + (0.2 + 0.2 * t) * w, y + 0.2 * h), 1);
    }
    b.mouse("mouseReleased", (x + 0.4 * w, y + 0.2 * h), 0);
    assert_eq!(b.eval("state.painted"), json!(true));

    // Settings: few steps, a fixed seed.
    b.click("#settings summary");
    b.type_into("#steps", "2");
    b.click("#randomseed");
    b.type_into(
        "#instruction",
        "fill the painted area of {image} with flowers",
    );
    b.click("#send");
    b.wait_for(&format!("{OUTPUTS} === 1"), 120);

    // The server recorded the turn with the painted mask: white where the stroke went.
    let list = get(&server.url("/ace/sessions"), &[]).json();
    let id = list["sessions"][0]["id"].as_str().unwrap().to_string();
    let chat = get(&server.url(&format!("/ace/sessions/{id}")), &[]).json();
    let mask_url = chat["turns"][0]["masks"][0]
        .as_str()
        .expect("a mask was sent");
    let mask = image::load_from_memory(&get(&server.url(mask_url), &[]).body)
        .unwrap()
        .to_luma8();
    let (mw, mh) = mask.dimensions();
    let at = |fx: f64, fy: f64| {
        mask.get_pixel((fx * f64::from(mw)) as u32, (fy * f64::from(mh)) as u32)[0]
    };
    assert_eq!((at(0.3, 0.2), at(0.8, 0.9)), (255, 0));

    // The second turn edits the first one's output, with another sampler and a LoRA adapter
    // of the server's folder.
    assert_eq!(
        b.eval("[...document.querySelectorAll('#lora option')].map(o => o.value).join()"),
        ",none,style.safetensors"
    );
    b.eval(
        "document.getElementById('sampler').value = 'euler'; \
         document.getElementById('lora').value = 'style.safetensors'; \
         document.getElementById('lora_scale').value = '0.5'",
    );
    b.type_into("#instruction", "add a hat to {image}");
    b.click("#send");
    b.wait_for(&format!("{OUTPUTS} === 2"), 120);
    assert_eq!(b.eval("document.getElementById('error').textContent"), "");
    let chat = get(&server.url(&format!("/ace/sessions/{id}")), &[]).json();
    assert_eq!(chat["turns"].as_array().unwrap().len(), 2);
    assert_eq!(chat["turns"][1]["instruction"], "add a hat to {image}");
    assert!(server
        .wait_for_log("LoRA adapters now: [")
        .contains("style.safetensors:0.5]"));

    // Retry the last turn: it is made again with another seed, not added.
    b.click("button.retry");
    b.wait_for(
        &format!(
            "{OUTPUTS} === 2 && !document.getElementById('status').classList.contains('on') \
             && ![...document.querySelectorAll('.turn .meta')].at(-1).textContent.includes('seed 0')"
        ),
        120,
    );
    let chat = get(&server.url(&format!("/ace/sessions/{id}")), &[]).json();
    assert_eq!(chat["turns"].as_array().unwrap().len(), 2);
    assert_ne!(chat["turns"][1]["seed"], 0);

    b.click("#settings summary");
    let png = b.screenshot("serve.png");
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 1100);
    if std::env::var_os("ACE_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(root().join("docs/serve.png"), &png).unwrap();
    }

    // Reload: the chat is still there, from the address and the server.
    b.call("Page.reload", json!({}));
    b.wait_for("document.body?.dataset.ready === 'yes'", 30);
    b.wait_for(&format!("{OUTPUTS} === 2"), 30);
    assert!(b
        .eval("location.hash")
        .as_str()
        .unwrap()
        .contains(&format!("chat={id}")));
    assert_eq!(
        b.eval("document.querySelectorAll('#chatlist li').length"),
        1
    );

    // On a phone-sized screen nothing overflows sideways and the composer is in reach.
    b.screen(390, 844, true);
    b.call("Page.reload", json!({}));
    b.wait_for("document.body?.dataset.ready === 'yes'", 30);
    b.wait_for(&format!("{OUTPUTS} === 2"), 30);
    assert_eq!(
        b.eval("document.documentElement.scrollWidth <= 390"),
        json!(true)
    );
    let send = b.eval(
        "(() => { const r = document.getElementById('send').getBoundingClientRect(); \
           return r.right <= 390 && r.bottom <= 844 && r.width > 0; })()",
    );
    assert_eq!(send, json!(true));
    assert_eq!(
        b.eval("getComputedStyle(document.getElementById('chats')).display"),
        "none"
    );
    b.screenshot("serve-phone.png");
    b.click("#menu");
    assert_eq!(
        b.eval("getComputedStyle(document.getElementById('chats')).display"),
        "block"
    );
}
