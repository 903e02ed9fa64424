//! The OpenAI Images API, so that existing clients and SDKs work unchanged:
//! `POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (multipart: `image` or
//! `image[]`, `mask` whose transparent pixels mark the area to edit, as OpenAI's). Both take
//! `prompt`, `n` (1 to 10), `size` (`WIDTHxHEIGHT` or `auto`), `response_format` (`url`, the
//! default, or `b64_json`) and `model` (accepted and ignored: one model is loaded), and ACE's
//! settings under their flag names (`seed`, `steps`, `guide_scale`, `guide_rescale`,
//! `negative`). The call waits for its images (up to the server's `--timeout`); a client that
//! goes away cancels its job. Each image also reports its seed; a `Server-Timing` header gives
//! the milliseconds spent queued, running the job, and in the model.

use super::error::{ApiError, ApiResult};
use super::jobs::{self, Job, Output};
use super::settings::Settings;
use super::upload::{self, Form};
use super::work::{ImagesWork, Work};
use super::AppState;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most images of one call.
const MAX_N: usize = 10;

/// What both endpoints take besides their images.
#[derive(Debug, Default, Deserialize)]
struct Common {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(flatten)]
    settings: Settings,
}

/// The checked call: prompt, n, `(width, height)`, whether to answer with URLs.
struct Call {
    prompt: String,
    n: usize,
    size: Option<(u32, u32)>,
    url: bool,
}

/// Parses `WIDTHxHEIGHT` (`None` for `auto`).
fn parse_size(size: &str) -> ApiResult<Option<(u32, u32)>> {
    if size.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    let bad = || ApiError::bad_param("size", format!("'{size}' (expected WIDTHxHEIGHT or auto)"));
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    crate::limits::check_size("size", w.into(), h.into())?;
    Ok(Some((w, h)))
}

impl Common {
    fn check(self, app: &AppState) -> ApiResult<(Call, Settings)> {
        let prompt = self
            .prompt
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| ApiError::bad_param("prompt", "missing"))?;
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::bad_param(
                "n",
                format!("{n} (expected 1 to {MAX_N})"),
            ));
        }
        let url = match self.response_format.as_deref().unwrap_or("url") {
            "url" => true,
            "b64_json" => false,
            other => {
                return Err(ApiError::bad_param(
                    "response_format",
                    format!("'{other}' (expected url or b64_json)"),
                ))
            }
        };
        let size = self.size.as_deref().map(parse_size).transpose()?.flatten();
        let settings = self.settings;
        settings.check(&app.cfg, &app.options.loras)?;
        Ok((
            Call {
                prompt,
                n,
                size,
                url,
            },
            settings,
        ))
    }
}

/// Cancels a job whose caller went away before it finished.
struct CancelOnDrop<'a>(&'a AppState, &'a str, bool);

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.2 {
            self.0.queue.cancel(self.1);
        }
    }
}

/// Queues `work`, waits for it (cancelling it when the caller goes away or the server's
/// timeout passes) and answers in the OpenAI shape.
async fn run(
    app: &AppState,
    call: Call,
    work: ImagesWork,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let job = app
        .queue
        .submit(Job::new(jobs::new_id(), "images", Work::Images(work)))?;
    let mut guard = CancelOnDrop(app, &job.id, true);
    let outcome = tokio::time::timeout(app.options.timeout, job.finished()).await;
    job.release_images();
    let output = match outcome {
        Ok(result) => {
            guard.2 = false;
            result?
        }
        Err(_) => return Err(ApiError::timeout(app.options.timeout.as_secs())),
    };
    Ok(answer(&job, &call, &output, headers))
}

/// The scheme and host the client used, for absolute image URLs.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// The OpenAI answer: `{"created", "data": [{"url" | "b64_json", "revised_prompt", "seed"}]}`.
fn answer(job: &Job<Work>, call: &Call, output: &Output, headers: &HeaderMap) -> Response {
    let base = base_url(headers);
    let data: Vec<Value> = output
        .images
        .iter()
        .map(|img| {
            let mut item = json!({"revised_prompt": call.prompt, "seed": img.seed});
            if call.url {
                item["url"] = format!("{base}{}", img.url).into();
            } else {
                item["b64_json"] = base64::engine::general_purpose::STANDARD
                    .encode(img.png.as_slice())
                    .into();
            }
            item
        })
        .collect();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (queued, running) = job.seconds();
    let timing = format!(
        "queue;dur={:.2}, job;dur={:.2}, model;dur={:.2}",
        queued * 1e3,
        running * 1e3,
        output.model_seconds * 1e3
    );
    let mut response = Json(json!({"created": created, "data": data})).into_response();
    if let Ok(v) = HeaderValue::from_str(&timing) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}

/// `POST /v1/images/generations`.
pub async fn generations(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body.map_err(|e| match e.status().as_u16() {
        413 => ApiError::too_large(e.body_text()),
        _ => ApiError::bad_request(e.body_text()),
    })?;
    let common: Common = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not the JSON expected: {e}")))?;
    let (call, mut settings) = common.check(&app)?;
    if let Some((w, h)) = call.size {
        settings.width = Some(w as usize);
        settings.height = Some(h as usize);
    }
    let work = ImagesWork {
        instruction: call.prompt.clone(),
        images: Vec::new(),
        settings,
        n: call.n,
        resize: None,
        keep: call.url,
    };
    run(&app, call, work, &headers).await
}

/// The edit's input images, the first with its mask: the `mask` file's transparent pixels,
/// else the first image's own transparent pixels, as OpenAI reads them.
fn edit_images(form: &Form) -> ApiResult<Vec<crate::pipeline::InputImage>> {
    let files: Vec<&Bytes> = form.files("image").collect();
    if files.is_empty() {
        return Err(ApiError::bad_param("image", "missing"));
    }
    if files.len() > crate::pipeline::MAX_INPUT_IMAGES {
        return Err(ApiError::bad_param(
            "image",
            format!(
                "{} images (at most {})",
                files.len(),
                crate::pipeline::MAX_INPUT_IMAGES
            ),
        ));
    }
    let mut images = Vec::with_capacity(files.len());
    for (i, bytes) in files.iter().enumerate() {
        let name = format!("image[{i}]");
        let decoded = upload::decode(bytes, &name)?;
        let mask = if i > 0 {
            None
        } else if let Some(m) = form.files("mask").next() {
            let m = upload::decode(m, "mask")?;
            Some(upload::alpha_mask(&m).ok_or_else(|| {
                ApiError::bad_param(
                    "mask",
                    "has no alpha channel (its transparent pixels mark the area to edit)",
                )
            })?)
        } else {
            upload::alpha_mask(&decoded).filter(|m| m.pixels().any(|p| p[0] == 255))
        };
        let rgb = decoded.to_rgb8();
        if let Some(m) = &mask {
            crate::tasks::check_mask(m, &rgb, "mask")?;
        }
        let task = if mask.is_some() {
            crate::tasks::inpaint::TASK
        } else {
            ""
        };
        images.push(crate::tasks::input(&name, rgb, mask, task));
    }
    Ok(images)
}

/// `POST /v1/images/edits`.
pub async fn edits(
    State(app): State<AppState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let form = upload::read_form(multipart).await?;
    let mut common = Common::default();
    for (name, value) in &form.texts {
        match name.as_str() {
            "prompt" => common.prompt = Some(value.clone()),
            "n" => {
                common.n =
                    Some(value.trim().parse().map_err(|_| {
                        ApiError::bad_param("n", format!("'{value}' is not a number"))
                    })?)
            }
            "size" => common.size = Some(value.clone()),
            "response_format" => common.response_format = Some(value.clone()),
            other => {
                common.settings.set(other, value)?;
            }
        }
    }
    let (call, settings) = common.check(&app)?;
    let form = Arc::new(form);
    let images = tokio::task::spawn_blocking(move || edit_images(&form))
        .await
        .map_err(ApiError::internal)??;
    let work = ImagesWork {
        instruction: call.prompt.clone(),
        images,
        settings,
        n: call.n,
        resize: call.size,
        keep: call.url,
    };
    run(&app, call, work, &headers).await
}

/// `GET /ace/images/{name}`: an image an OpenAI call made, by the URL it answered.
pub async fn image(State(app): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let path = app.store.image(&name)?;
    let png = tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .map_err(ApiError::internal)?
        .map_err(|_| ApiError::not_found(format!("no image '{name}'")))?;
    Ok(super::sessions::png_response(png))
}
