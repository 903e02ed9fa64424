//! `ace serve` through the real binary on the tiny fixture model: the OpenAI-shaped endpoints
//! (generation and edit, `n` > 1, a mask), a two-turn chat through ACE's endpoints with its
//! progress events in order and continued from the command line, cancelling, a full queue, the
//! token off loopback, paths that try to leave the data folder, a restart after SIGTERM, and
//! LoRA adapters and samplers chosen per request.

mod serve_support;

use base64::Engine;
use image::{DynamicImage, GenericImageView, GrayImage, Rgba, RgbaImage};
use serde_json::{json, Value};
use serve_support::*;
use std::io::{Read, Write};
use std::path::Path;

fn decode(png: &[u8]) -> DynamicImage {
    image::load_from_memory(png).expect("a PNG")
}

fn b64(item: &Value) -> DynamicImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(item["b64_json"].as_str().expect("b64_json"))
        .unwrap();
    decode(&bytes)
}

fn astronaut() -> Vec<u8> {
    std::fs::read(fixture("inputs/astronaut.png")).unwrap()
}

/// A grey mask of `w` x `h`, white in the given rectangle (ACE's convention).
fn white_box(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> Vec<u8> {
    let m = GrayImage::from_fn(w, h, |x, y| {
        let inside = x >= x0 && x < x1 && y >= y0 && y < y1;
        image::Luma([if inside { 255 } else { 0 }])
    });
    png(DynamicImage::ImageLuma8(m))
}

/// Follows a job's events to its end.
fn follow(server: &Server, job: &Value) -> Vec<(String, Value)> {
    let id = job["id"].as_str().expect("a job id");
    events(&server.url(&format!("/ace/jobs/{id}/events")), |name| {
        matches!(name, "done" | "failed" | "cancelled")
    })
}

/// Adds a turn to chat `id` and waits for it; the events.
fn turn(server: &Server, id: &str, parts: &[Part]) -> Vec<(String, Value)> {
    let r = post_form(
        &server.url(&format!("/ace/sessions/{id}/turns")),
        parts,
        &[],
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let events = follow(server, &r.json()["job"]);
    assert_eq!(events.last().unwrap().0, "done", "{events:?}");
    events
}

fn assert_openai_error(r: &Reply, status: u16, param: Option<&str>) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let e = &r.json()["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    assert!(e["type"].is_string(), "{e}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{e}");
    }
}

#[test]
fn openai_generations_make_n_images_as_the_command_line_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let url = server.url("/v1/images/generations");
    let body = json!({
        "model": "dall-e-3", "prompt": "a red fox in the snow", "n": 2, "size": "64x48",
        "response_format": "b64_json", "seed": 5, "steps": 2, "quality": "hd",
    });
    let r = post_json(&url, &body, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r
        .header("server-timing")
        .is_some_and(|t| t.contains("model;dur=")));
    let doc = r.json();
    assert!(doc["created"].as_u64().unwrap() > 0);
    let data = doc["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(
        (data[0]["seed"].as_u64(), data[1]["seed"].as_u64()),
        (Some(5), Some(6))
    );
    let (first, second) = (b64(&data[0]), b64(&data[1]));
    assert_eq!(first.dimensions(), (64, 48));
    assert_ne!(
        first.to_rgb8(),
        second.to_rgb8(),
        "n images from one seed each"
    );

    // The same job on the command line gives the same pixels.
    let cli = dir.path().join("cli.png");
    let status = ace_command(Path::new(env!("CARGO_BIN_EXE_ace")))
        .args(["-q", "generate", "--config"])
        .arg(tiny_config())
        .args([
            "--instruction",
            "a red fox in the snow",
            "--width",
            "64",
            "--height",
            "48",
        ])
        .args(["--seed", "6", "--steps", "2", "-o"])
        .arg(&cli)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(image::open(&cli).unwrap().to_rgb8(), second.to_rgb8());

    // By URL: an absolute address on this server that answers the PNG.
    let body = json!({"prompt": "a red fox in the snow", "size": "64x48", "seed": 5, "steps": 2});
    let r = post_json(&url, &body, &[]);
    assert_eq!(r.status, 200);
    let item = &r.json()["data"][0];
    let image_url = item["url"].as_str().unwrap();
    assert!(image_url.starts_with(&server.base), "{image_url}");
    let fetched = get(image_url, &[]);
    assert_eq!(fetched.header("content-type"), Some("image/png"));
    assert_eq!(decode(&fetched.body).to_rgb8(), first.to_rgb8());

    // Errors in the OpenAI shape.
    assert_openai_error(&post_json(&url, &json!({"n": 1}), &[]), 400, Some("prompt"));
    let many = json!({"prompt": "x", "n": 11});
    assert_openai_error(&post_json(&url, &many, &[]), 400, Some("n"));
    let size = json!({"prompt": "x", "size": "12x"});
    assert_openai_error(&post_json(&url, &size, &[]), 400, Some("size"));
    let format = json!({"prompt": "x", "response_format": "gif"});
    assert_openai_error(&post_json(&url, &format, &[]), 400, Some("response_format"));
    let steps = json!({"prompt": "x", "steps": 0});
    assert_openai_error(&post_json(&url, &steps, &[]), 400, Some("steps"));
    let odd = json!({"prompt": "x", "size": "50x50", "steps": 1});
    assert_openai_error(&post_json(&url, &odd, &[]), 400, None);
    let r = agent_post_raw(&url, "application/json", b"{not json");
    assert_openai_error(&r, 400, None);
    assert_openai_error(&get(&server.url("/v1/nothing"), &[]), 404, None);
    assert_openai_error(&get(&url, &[]), 405, None);

    let log = server.log_lines().join("\n");
    assert!(
        log.lines()
            .any(|l| l.starts_with("ace: POST /v1/images/generations 200 ") && l.ends_with(" ms")),
        "{log}"
    );
    assert!(
        log.contains("ace: POST /v1/images/generations 400 "),
        "{log}"
    );
}

fn agent_post_raw(url: &str, content_type: &str, body: &[u8]) -> Reply {
    let (status, body) = match ureq::post(url)
        .set("Content-Type", content_type)
        .send_bytes(body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    Reply {
        status,
        headers: Vec::new(),
        body: body.into_bytes(),
    }
}

#[test]
fn openai_edits_take_images_and_a_transparent_mask() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let url = server.url("/v1/images/edits");
    let photo = astronaut();
    let (w, h) = decode(&photo).dimensions();
    // OpenAI's convention: transparent pixels mark the area to edit.
    let mut mask = RgbaImage::from_pixel(w, h, Rgba([0, 0, 0, 255]));
    for y in 16..64 {
        for x in 16..64 {
            mask.put_pixel(x, y, Rgba([0, 0, 0, 0]));
        }
    }
    let mask = png(DynamicImage::ImageRgba8(mask));
    let text = |k: &'static str, v: &str| Part::Text(k, v.to_string());
    let edit = |extra: Vec<Part>| {
        let mut parts = vec![
            Part::File("image", "astronaut.png".into(), photo.clone()),
            text("prompt", "put a red hat on the astronaut"),
            text("steps", "2"),
            text("seed", "3"),
            text("response_format", "b64_json"),
        ];
        parts.extend(extra);
        post_form(&url, &parts, &[])
    };
    let r = edit(vec![
        Part::File("mask", "mask.png".into(), mask.clone()),
        text("n", "2"),
        text("model", "gpt-image-1"),
    ]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let data = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2);
    let masked = b64(&data[0]);
    assert_eq!(masked.dimensions(), (w, h));
    assert_ne!(masked.to_rgb8(), b64(&data[1]).to_rgb8());
    let unmasked = b64(&edit(vec![]).json()["data"][0]);
    assert_ne!(
        masked.to_rgb8(),
        unmasked.to_rgb8(),
        "the mask changed nothing"
    );

    // `image[]` with two images, and `size` resizes the result.
    let r = post_form(
        &url,
        &[
            Part::File("image[]", "a.png".into(), photo.clone()),
            Part::File(
                "image[]",
                "b.png".into(),
                std::fs::read(fixture("inputs/chelsea.png")).unwrap(),
            ),
            text(
                "prompt",
                "put the cat of {image1} next to the astronaut of {image}",
            ),
            text("steps", "1"),
            text("size", "32x32"),
            text("response_format", "b64_json"),
        ],
        &[],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(b64(&r.json()["data"][0]).dimensions(), (32, 32));

    // A mask without alpha, of another size, a non-image and an absurd size are refused.
    let opaque = white_box(w, h, (0, 0, 8, 8));
    assert_openai_error(
        &edit(vec![Part::File("mask", "m.png".into(), opaque)]),
        400,
        Some("mask"),
    );
    let small = png(DynamicImage::ImageRgba8(RgbaImage::new(8, 8)));
    assert_openai_error(
        &edit(vec![Part::File("mask", "m.png".into(), small)]),
        400,
        None,
    );
    let r = post_form(
        &url,
        &[
            Part::File("image", "x.png".into(), b"hello".to_vec()),
            text("prompt", "x"),
        ],
        &[],
    );
    assert_openai_error(&r, 400, Some("image[0]"));
    let wide = png(DynamicImage::ImageLuma8(GrayImage::new(9000, 1)));
    let r = post_form(
        &url,
        &[
            Part::File("image", "w.png".into(), wide),
            text("prompt", "x"),
        ],
        &[],
    );
    assert_openai_error(&r, 413, None);
    let r = post_form(&url, &[text("prompt", "x")], &[]);
    assert_openai_error(&r, 400, Some("image"));
    let r = post_json(&url, &json!({"prompt": "x"}), &[]);
    assert_openai_error(&r, 400, None);
}

#[test]
fn a_two_turn_chat_reports_progress_in_order_and_goes_on_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let r = post_json(&server.url("/ace/sessions"), &json!({"id": "trip"}), &[]);
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["id"], "trip");
    let again = post_json(&server.url("/ace/sessions"), &json!({"id": "trip"}), &[]);
    assert_openai_error(&again, 409, None);

    let photo = astronaut();
    let (w, h) = decode(&photo).dimensions();
    let text = |k: &'static str, v: &str| Part::Text(k, v.to_string());
    let first = turn(
        &server,
        "trip",
        &[
            text(
                "instruction",
                "fill the masked area of {image} with flowers",
            ),
            Part::File("image", "astronaut.png".into(), photo.clone()),
            Part::File("mask", "mask.png".into(), white_box(w, h, (10, 10, 50, 60))),
            text("task", "inpainting"),
            text("steps", "3"),
            text("seed", "7"),
        ],
    );
    // queued (position 0), started, progress 1, 2, 3, done: in this order.
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["queued", "started", "progress", "progress", "progress", "done"]
    );
    let steps: Vec<u64> = first
        .iter()
        .filter(|(n, _)| n == "progress")
        .map(|(_, e)| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    assert_eq!(first[2].1["steps"], 3);
    let done = &first.last().unwrap().1["output"];
    assert_eq!(
        (done["session"].as_str(), done["turn"].as_u64()),
        (Some("trip"), Some(0))
    );

    // The second turn edits the first one's output, with it in its history.
    let second = turn(
        &server,
        "trip",
        &[
            text("instruction", "add a hat to {image}"),
            text("steps", "2"),
            text("use_history", "true"),
        ],
    );
    assert_eq!(second.last().unwrap().1["output"]["turn"], 1);

    let chat = get(&server.url("/ace/sessions/trip"), &[]).json();
    let turns = chat["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0]["seed"], 7);
    assert_eq!(turns[0]["tasks"], json!(["inpainting"]));
    for url in [
        turns[0]["image"].as_str().unwrap(),
        turns[0]["inputs"][0].as_str().unwrap(),
        turns[0]["masks"][0].as_str().unwrap(),
        turns[1]["image"].as_str().unwrap(),
        turns[1]["inputs"][0].as_str().unwrap(),
    ] {
        let r = get(&server.url(url), &[]);
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(decode(&r.body).dimensions(), (w, h), "{url}");
    }
    // The uploaded mask is kept as ACE reads masks: white where the edit goes.
    let mask =
        decode(&get(&server.url(turns[0]["masks"][0].as_str().unwrap()), &[]).body).to_luma8();
    assert_eq!(
        (mask.get_pixel(20, 20)[0], mask.get_pixel(5, 5)[0]),
        (255, 0)
    );

    // The session file is `ace edit --session`'s: turn 2 edits turn 1's output.
    let file = data.join("sessions/trip.jsonl");
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["inputs"][0], lines[0]["output"]);
    assert!(Path::new(lines[0]["output"].as_str().unwrap()).is_absolute());

    // The command line goes on with the chat, and the server shows its turn.
    let out = dir.path().join("turn3.png");
    let status = ace_command(Path::new(env!("CARGO_BIN_EXE_ace")))
        .args(["-q", "edit", "--config"])
        .arg(tiny_config())
        .arg("--session")
        .arg(&file)
        .args([
            "--instruction",
            "make {image} look like autumn",
            "--steps",
            "1",
            "-o",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let chat = get(&server.url("/ace/sessions/trip"), &[]).json();
    assert_eq!(chat["turns"].as_array().unwrap().len(), 3);
    assert_eq!(
        chat["turns"][2]["instruction"],
        "make {image} look like autumn"
    );
    let r = get(&server.url("/ace/sessions/trip/turns/2/image"), &[]);
    assert_eq!(
        decode(&r.body).to_rgb8(),
        image::open(&out).unwrap().to_rgb8()
    );
    let list = get(&server.url("/ace/sessions"), &[]).json();
    let trip = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "trip")
        .unwrap()
        .clone();
    assert_eq!(trip["turns"], 3);

    // Retry the last turn with another seed: it is replaced, not added.
    let r = post_json(
        &server.url("/ace/sessions/trip/retry"),
        &json!({"seed": 99, "steps": 1}),
        &[],
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(follow(&server, &r.json()["job"]).last().unwrap().0, "done");
    let chat = get(&server.url("/ace/sessions/trip"), &[]).json();
    assert_eq!(chat["turns"].as_array().unwrap().len(), 3);
    assert_eq!(chat["turns"][2]["seed"], 99);
    assert_eq!(
        chat["turns"][2]["instruction"],
        "make {image} look like autumn"
    );

    // A turn with outpainting borders and no instruction draws a phrasing.
    let out = turn(
        &server,
        "trip",
        &[
            text("outpaint_left", "16"),
            text("outpaint_bottom", "16"),
            text("steps", "1"),
        ],
    );
    let output = &out.last().unwrap().1["output"]["images"][0];
    assert_eq!(
        (output["width"].as_u64(), output["height"].as_u64()),
        (Some(w as u64 + 16), Some(h as u64 + 16))
    );
}

/// Starts a long job (1000 steps) in chat `id` and waits until it runs; its id.
fn start_long_turn(server: &Server, id: &str) -> String {
    let r = post_form(
        &server.url(&format!("/ace/sessions/{id}/turns")),
        &[
            Part::Text("instruction", "make {image} darker".into()),
            Part::File("image", "a.png".into(), astronaut()),
            Part::Text("steps", "1000".into()),
        ],
        &[],
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let job = r.json()["job"]["id"].as_str().unwrap().to_string();
    let seen = events(&server.url(&format!("/ace/jobs/{job}/events")), |n| {
        matches!(n, "progress" | "done" | "failed" | "cancelled")
    });
    assert_eq!(seen.last().unwrap().0, "progress", "{seen:?}");
    job
}

#[test]
fn cancel_stops_jobs_and_a_full_queue_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--queue", "1"]);
    post_json(&server.url("/ace/sessions"), &json!({"id": "c"}), &[]);
    let running = start_long_turn(&server, "c");
    let form = [
        Part::Text("instruction", "make {image} lighter".into()),
        Part::File("image", "a.png".into(), astronaut()),
        Part::Text("steps", "1000".into()),
    ];
    let waiting = post_form(&server.url("/ace/sessions/c/turns"), &form, &[]);
    assert_eq!(waiting.status, 202);
    let waiting = waiting.json()["job"].clone();
    assert_eq!(
        (waiting["status"].as_str(), waiting["position"].as_u64()),
        (Some("queued"), Some(0))
    );

    let full = post_form(&server.url("/ace/sessions/c/turns"), &form, &[]);
    assert_openai_error(&full, 429, None);
    assert_eq!(full.json()["error"]["code"], "rate_limit_exceeded");
    let retry: u64 = full
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let r = post_json(
        &server.url("/v1/images/generations"),
        &json!({"prompt": "x", "steps": 1}),
        &[],
    );
    assert_openai_error(&r, 429, None);
    assert!(r.header("retry-after").is_some());

    // The waiting job leaves the queue at once; the running one stops at its next step.
    let id = waiting["id"].as_str().unwrap();
    let r = post_json(
        &server.url(&format!("/ace/jobs/{id}/cancel")),
        &json!({}),
        &[],
    );
    assert_eq!(r.json()["status"], "cancelled");
    let r = post_json(
        &server.url(&format!("/ace/jobs/{running}/cancel")),
        &json!({}),
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["cancel_requested"], true);
    let story = events(&server.url(&format!("/ace/jobs/{running}/events")), |n| {
        matches!(n, "done" | "failed" | "cancelled")
    });
    assert_eq!(story.last().unwrap().0, "cancelled");
    let steps = story.iter().filter(|(n, _)| n == "progress").count();
    assert!(steps < 1000, "all {steps} steps ran");
    let job = get(&server.url(&format!("/ace/jobs/{running}")), &[]).json();
    assert_eq!(job["status"], "cancelled");
    assert_openai_error(&get(&server.url("/ace/jobs/nope"), &[]), 404, None);

    // Nothing was recorded, and the model serves the next job.
    assert_eq!(
        get(&server.url("/ace/sessions/c"), &[]).json()["turns"],
        json!([])
    );
    let r = post_json(
        &server.url("/v1/images/generations"),
        &json!({"prompt": "x", "steps": 1, "size": "32x32"}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // A client that goes away while its images are made cancels its job.
    let body = json!({"prompt": "x", "steps": 1000, "size": "512x512"}).to_string();
    let mut client =
        std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    let head = format!(
        "POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    client
        .write_all(format!("{head}{body}").as_bytes())
        .unwrap();
    let running = || get(&server.url("/ace/health"), &[]).json()["running"] == true;
    let start = std::time::Instant::now();
    while !running() {
        assert!(start.elapsed().as_secs() < 30, "the job never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(client);
    let start = std::time::Instant::now();
    while running() {
        assert!(
            start.elapsed().as_secs() < 30,
            "the job of a gone client still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let line = "ace: POST /v1/images/generations 499 ";
    let log = server.wait_for_log(line);
    assert!(log.contains(line), "{log}");
}

#[test]
fn a_token_is_required_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let refused = ace_command(Path::new(env!("CARGO_BIN_EXE_ace")))
        .args(["serve", "--host", "0.0.0.0", "--port", "0", "--config"])
        .arg(tiny_config())
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--token") && stderr.lines().count() == 1,
        "{stderr}"
    );

    let server = Server::start(&data, &["--host", "0.0.0.0", "--token", "s3cret"]);
    let port = server.base.rsplit(':').next().unwrap().to_string();
    assert!(
        server.base.starts_with("http://0.0.0.0:"),
        "{}",
        server.base
    );
    // Only loopback traffic: the server listens everywhere, the test talks to 127.0.0.1.
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert_eq!(get(&url("/ace/health"), &[]).status, 200);
    let r = get(&url("/ace/sessions"), &[]);
    assert_openai_error(&r, 401, None);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    assert_eq!(
        get(&url("/ace/sessions"), &[("Authorization", "Bearer wrong")]).status,
        401
    );
    assert_eq!(
        get(&url("/ace/sessions"), &[("Authorization", "Bearer s3cret")]).status,
        200
    );
    assert_eq!(get(&url("/"), &[]).status, 401);
    let r = post_json(&url("/v1/images/generations"), &json!({"prompt": "x"}), &[]);
    assert_openai_error(&r, 401, None);
    // A browser opens /?token= once and then goes on with the cookie.
    let page = get(&url("/?token=s3cret"), &[]);
    assert_eq!(page.status, 200);
    let cookie = page
        .header("set-cookie")
        .expect("a cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(cookie, "ace_token=s3cret");
    assert_eq!(get(&url("/ace/model"), &[("Cookie", &cookie)]).status, 200);
}

/// Sends `request` as it is (no client normalises its path) and returns the answer's text.
fn raw(base: &str, request: &str) -> String {
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn paths_that_leave_the_data_folder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        dir.path().join("secret.jsonl"),
        "{\"instruction\":\"secret\"}\n",
    )
    .unwrap();
    let server = Server::start(&data, &[]);
    for path in [
        "/ace/sessions/..%2Fsecret",
        "/ace/sessions/..%2F..%2Fsecret",
        "/ace/sessions/a.b",
        "/ace/sessions/..%2Fsecret/turns/0/image",
        "/ace/images/..%2Fsessions%2Fx.jsonl",
        "/ace/images/..%2F..%2Fsecret.jsonl",
    ] {
        let r = get(&server.url(path), &[]);
        assert_openai_error(&r, 400, None);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("\"secret\""),
            "{path}"
        );
    }
    let r = post_json(&server.url("/ace/sessions"), &json!({"id": "../evil"}), &[]);
    assert_openai_error(&r, 400, Some("session"));
    let r = post_json(
        &server.url("/ace/sessions/..%2F..%2Fsecret/retry"),
        &json!({}),
        &[],
    );
    assert_openai_error(&r, 400, None);
    // Paths as sent, which no client library normalises first.
    for path in [
        "/ace/sessions/../../secret",
        "/ace/images/../../secret.jsonl",
        "/ace/sessions/%2e%2e%2f%2e%2e%2fsecret",
        "/ace/images/%2e%2e%2fsessions%2fu.jsonl",
    ] {
        let answer = raw(
            &server.base,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        );
        let status = answer.split_whitespace().nth(1).unwrap_or_default();
        assert!(status == "400" || status == "404", "{path}: {answer}");
        assert!(!answer.contains("secret\""), "{answer}");
    }
    // Pages of other sites reach loopback too: their writes, and other host names, are refused.
    let evil = [("Origin", "http://evil.example")];
    let r = post_json(&server.url("/ace/sessions"), &json!({"id": "evil"}), &evil);
    assert_openai_error(&r, 403, None);
    assert!(!data.join("sessions/evil.jsonl").exists());
    let answer = raw(
        &server.base,
        "GET /ace/sessions HTTP/1.1\r\nHost: rebound.example:80\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    // A file name in an upload never names a file.
    post_json(&server.url("/ace/sessions"), &json!({"id": "u"}), &[]);
    // A turn refused for its mask writes nothing.
    let r = post_form(
        &server.url("/ace/sessions/u/turns"),
        &[
            Part::Text("instruction", "x {image}".into()),
            Part::File("image", "a.png".into(), astronaut()),
            Part::File("mask", "m.png".into(), white_box(8, 8, (0, 0, 4, 4))),
        ],
        &[],
    );
    assert_openai_error(&r, 400, Some("mask"));
    assert!(!data.join("sessions/u").exists());
    let r = post_form(
        &server.url("/ace/sessions/u/turns"),
        &[
            Part::Text("instruction", "x {image}".into()),
            Part::File("image", "../../../escaped.png".into(), astronaut()),
            Part::Text("steps", "1".into()),
        ],
        &[],
    );
    assert_eq!(r.status, 202);
    follow(&server, &r.json()["job"]);
    assert!(!dir.path().join("escaped.png").exists());
    let kept: Vec<String> = std::fs::read_dir(data.join("sessions/u"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        kept.iter()
            .all(|n| n.starts_with("in-") || n.starts_with("out-")),
        "{kept:?}"
    );
}

#[test]
fn sigterm_stops_cleanly_and_a_restart_keeps_every_finished_turn() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    post_json(&server.url("/ace/sessions"), &json!({"id": "keep"}), &[]);
    turn(
        &server,
        "keep",
        &[
            Part::Text("instruction", "a lighthouse at night".into()),
            Part::Text("width", "32".into()),
            Part::Text("height", "32".into()),
            Part::Text("steps", "2".into()),
        ],
    );
    let before = std::fs::read_to_string(data.join("sessions/keep.jsonl")).unwrap();
    // A turn is running when the signal comes: it is cancelled, nothing partial is written.
    start_long_turn(&server, "keep");
    let started = std::time::Instant::now();
    let status = server.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(started.elapsed().as_secs() < 30);
    assert_eq!(
        std::fs::read_to_string(data.join("sessions/keep.jsonl")).unwrap(),
        before
    );
    let leftovers: Vec<_> = walk(&data)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let server = Server::start(&data, &[]);
    let list = get(&server.url("/ace/sessions"), &[]).json();
    assert_eq!(list["sessions"][0]["id"], "keep");
    assert_eq!(list["sessions"][0]["turns"], 1);
    assert_eq!(list["sessions"][0]["title"], "a lighthouse at night");
    let r = get(&server.url("/ace/sessions/keep/turns/0/image"), &[]);
    assert_eq!(decode(&r.body).dimensions(), (32, 32));
    assert_openai_error(
        &get(&server.url("/ace/sessions/keep/turns/1/image"), &[]),
        404,
        None,
    );
    let status = server.stop_with(libc::SIGINT);
    assert_eq!(status.code(), Some(130));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn requests_choose_loras_from_the_lora_dir_and_samplers_as_the_command_line_does() {
    let dir = tempfile::tempdir().unwrap();
    let loras = dir.path().join("loras");
    std::fs::create_dir(&loras).unwrap();
    write_lora(&loras.join("style.safetensors"));
    std::fs::write(dir.path().join("outside.safetensors"), b"x").unwrap();
    let lora_dir = loras.to_str().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--lora-dir", lora_dir]);
    let model = get(&server.url("/ace/model"), &[]).json();
    assert_eq!(model["loras"]["available"], json!(["style.safetensors"]));

    let url = server.url("/v1/images/generations");
    let ask = |extra: Value| {
        let mut body = json!({
            "prompt": "a red fox in the snow", "size": "64x48", "response_format": "b64_json",
            "seed": 3, "steps": 2, "sampler": "euler", "schedule": "karras",
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = post_json(&url, &body, &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        b64(&r.json()["data"][0]).to_rgb8()
    };
    let plain = ask(json!({}));
    let styled = ask(json!({"lora": ["style.safetensors:0.8"]}));
    assert_ne!(plain, styled, "the adapter changes the image");
    // The next job without one gets the plain model back.
    assert_eq!(ask(json!({"lora": "none"})), plain);

    // The same jobs on the command line give the same pixels.
    let cli = |extra: &[&str], out: &Path| {
        let status = ace_command(Path::new(env!("CARGO_BIN_EXE_ace")))
            .args(["-q", "generate", "--config"])
            .arg(tiny_config())
            .args(["--instruction", "a red fox in the snow"])
            .args([
                "--width", "64", "--height", "48", "--seed", "3", "--steps", "2",
            ])
            .args(["--sampler", "euler", "--schedule", "karras"])
            .args(extra)
            .arg("-o")
            .arg(out)
            .status()
            .unwrap();
        assert!(status.success());
        image::open(out).unwrap().to_rgb8()
    };
    let lora_arg = format!("{}:0.8", loras.join("style.safetensors").display());
    let via_cli = cli(&["--lora", &lora_arg], &dir.path().join("cli-lora.png"));
    assert_eq!(via_cli, styled);
    assert_eq!(cli(&[], &dir.path().join("cli.png")), plain);

    // Names only, inside the folder.
    for bad in [
        "../outside.safetensors",
        "missing.safetensors",
        "/etc/passwd",
    ] {
        let body = json!({"prompt": "x", "steps": 1, "lora": [bad]});
        assert_openai_error(&post_json(&url, &body, &[]), 400, Some("lora"));
    }
    let form = [
        Part::Text("prompt", "x".into()),
        Part::Text("lora", "../outside.safetensors".into()),
        Part::File("image", "a.png".into(), astronaut()),
    ];
    let edits = server.url("/v1/images/edits");
    assert_openai_error(&post_form(&edits, &form, &[]), 400, Some("lora"));
}
