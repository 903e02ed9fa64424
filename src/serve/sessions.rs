//! The chat endpoints: sessions (list, create, show), a turn added with its images, masks,
//! tasks, outpainting borders and every model setting, a retry of the last turn with another
//! seed, and a turn's images. A turn is queued as a job (202 with the job); it is written to the
//! session file once its image is made. Images are served as PNGs re-encoded from their
//! pixels, never as the bytes stored.

use super::error::{ApiError, ApiResult};
use super::jobs::{self, Job};
use super::settings::Settings;
use super::upload::{self, Form};
use super::work::{TurnWork, Work};
use super::AppState;
use crate::tasks::session::SessionTurn;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// A PNG answer that is never cached (a retry changes a turn's image).
pub fn png_response(png: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        png,
    )
        .into_response()
}

/// A turn as the API shows it, with the URLs of its images.
fn describe_turn(id: &str, index: usize, t: &SessionTurn) -> Value {
    let base = format!("/ace/sessions/{id}/turns/{index}");
    json!({
        "index": index,
        "instruction": t.instruction,
        "seed": t.seed,
        "tasks": t.tasks,
        "inputs": (0..t.inputs.len()).map(|k| format!("{base}/inputs/{k}")).collect::<Vec<_>>(),
        "masks": t.masks.iter().enumerate()
            .map(|(k, m)| m.as_ref().map(|_| format!("{base}/masks/{k}")))
            .collect::<Vec<_>>(),
        "image": format!("{base}/image"),
    })
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// `GET /ace/sessions`: every chat, the latest first.
pub async fn list(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    let sessions = blocking(move || Ok(app.store.list()?)).await?;
    Ok(Json(json!({ "sessions": sessions })))
}

/// `POST /ace/sessions`: a new chat, named by the body's `id` or a fresh one.
pub async fn create(
    State(app): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    #[derive(serde::Deserialize, Default)]
    struct Body {
        #[serde(default)]
        id: Option<String>,
    }
    let body: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not the JSON expected: {e}")))?
    };
    let id = blocking(move || app.store.create(body.id.as_deref())).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "url": format!("/ace/sessions/{id}"), "turns": []})),
    ))
}

/// `GET /ace/sessions/{id}`: the chat's turns.
pub async fn show(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let (id, turns) = blocking(move || Ok((id.clone(), app.store.turns(&id)?))).await?;
    let turns: Vec<Value> = turns
        .iter()
        .enumerate()
        .map(|(i, t)| describe_turn(&id, i, t))
        .collect();
    Ok(Json(json!({"id": id, "turns": turns})))
}

/// Whether a form's switch is on (`true`, `on`, `1`, `yes`); `default` when absent.
fn switch(form: &Form, name: &str, default: bool) -> ApiResult<bool> {
    match form.text(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "true" | "on" | "1" | "yes" => Ok(true),
            "false" | "off" | "0" | "no" | "" => Ok(false),
            _ => Err(ApiError::bad_param(
                name,
                format!("'{v}' (expected true or false)"),
            )),
        },
    }
}

/// The outpainting borders of a form (`outpaint_left`, `_right`, `_top`, `_bottom`), when any
/// is above zero.
fn borders(form: &Form) -> ApiResult<Option<(u32, u32, u32, u32)>> {
    let side = |name: &str| -> ApiResult<u32> {
        match form.text(name).map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| ApiError::bad_param(name, format!("'{v}' is not a pixel count"))),
        }
    };
    let b = (
        side("outpaint_left")?,
        side("outpaint_right")?,
        side("outpaint_top")?,
        side("outpaint_bottom")?,
    );
    Ok((b != (0, 0, 0, 0)).then_some(b))
}

/// The uploads of a turn decoded, checked and saved as PNGs in the chat's folder: the images
/// and, by position, their masks (an empty file part is no mask; a mask with no image applies
/// to the previous output).
fn save_uploads(
    app: &AppState,
    id: &str,
    job_id: &str,
    form: &Form,
) -> ApiResult<(Vec<PathBuf>, Vec<Option<PathBuf>>)> {
    let images: Vec<&Bytes> = form.files("image").filter(|b| !b.is_empty()).collect();
    let masks: Vec<&Bytes> = form.files("mask").collect();
    let most = crate::pipeline::MAX_INPUT_IMAGES;
    if images.len() > most {
        return Err(ApiError::bad_param(
            "image",
            format!("{} images (at most {most})", images.len()),
        ));
    }
    if masks.len() > images.len().max(1) {
        return Err(ApiError::bad_param(
            "mask",
            format!(
                "{} masks for {} images (they pair by position)",
                masks.len(),
                images.len()
            ),
        ));
    }
    // Everything is checked before anything is written.
    let decoded = images
        .iter()
        .enumerate()
        .map(|(k, bytes)| upload::decode(bytes, &format!("image[{k}]")))
        .collect::<ApiResult<Vec<_>>>()?;
    let mut checked = Vec::with_capacity(masks.len());
    for (k, bytes) in masks.iter().enumerate() {
        if bytes.is_empty() {
            checked.push(None);
            continue;
        }
        let name = format!("mask[{k}]");
        let mask = upload::ace_mask(&upload::decode(bytes, &name)?);
        if let Some(img) = decoded.get(k) {
            let (w, h) = (img.width(), img.height());
            if mask.dimensions() != (w, h) {
                return Err(ApiError::bad_param(
                    "mask",
                    format!(
                        "{name} is {}x{} but its image is {w}x{h}",
                        mask.width(),
                        mask.height()
                    ),
                ));
            }
        }
        if !mask.pixels().any(|p| p[0] > 128) {
            return Err(ApiError::bad_param(
                &name,
                "selects no pixel (white marks the region)",
            ));
        }
        checked.push(Some(mask));
    }
    let tag = &job_id[..12];
    let image_paths = decoded
        .iter()
        .enumerate()
        .map(|(k, img)| {
            app.store
                .save(id, &format!("in-{tag}-{k}.png"), &upload::png(img)?)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let mask_paths = checked
        .into_iter()
        .enumerate()
        .map(|(k, mask)| {
            mask.map(|m| {
                let png = upload::png(&image::DynamicImage::ImageLuma8(m))?;
                app.store.save(id, &format!("mask-{tag}-{k}.png"), &png)
            })
            .transpose()
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok((image_paths, mask_paths))
}

/// Queues a chat turn; the files it saved are removed when it cannot be queued.
fn queue_turn(
    app: &AppState,
    job_id: String,
    work: TurnWork,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let saved: Vec<PathBuf> = work
        .images
        .iter()
        .cloned()
        .chain(work.masks.iter().flatten().cloned())
        .collect();
    match app.queue.submit(Job::new(job_id, "turn", Work::Turn(work))) {
        Ok(job) => Ok((StatusCode::ACCEPTED, Json(json!({ "job": job.describe() })))),
        Err(e) => {
            for path in saved {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

/// `POST /ace/sessions/{id}/turns` (multipart): `instruction`, `image` files, `mask` files
/// (white marks the region; by position), `task` fields (by position), `use_history`
/// (default true), `outpaint_left`/`_right`/`_top`/`_bottom` and the settings. 202 with the
/// job.
pub async fn add_turn(
    State(app): State<AppState>,
    Path(id): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let form = upload::read_form(multipart).await?;
    let mut settings = Settings::default();
    for (name, value) in &form.texts {
        settings.set(name, value)?;
    }
    settings.check(&app.cfg, &app.options.loras)?;
    let instruction = form
        .text("instruction")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let outpaint = borders(&form)?;
    if instruction.is_none() && outpaint.is_none() {
        return Err(ApiError::bad_param("instruction", "missing"));
    }
    let use_history = switch(&form, "use_history", true)?;
    let tasks = form
        .texts("task")
        .iter()
        .map(|t| t.trim().to_string())
        .collect();
    let job_id = jobs::new_id();
    let form = Arc::new(form);
    let (state, session, job) = (app.clone(), id.clone(), job_id.clone());
    let (images, masks) = blocking(move || {
        state.store.turns(&session)?;
        save_uploads(&state, &session, &job, &form)
    })
    .await?;
    let work = TurnWork {
        session: id,
        images,
        masks,
        tasks,
        instruction,
        outpaint,
        settings,
        use_history,
        retry: false,
    };
    queue_turn(&app, job_id, work)
}

/// `POST /ace/sessions/{id}/retry` (JSON: the settings, `seed` above all, and `use_history`):
/// makes the last turn again and replaces it. 202 with the job.
pub async fn retry(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    #[derive(serde::Deserialize, Default)]
    struct Body {
        #[serde(flatten)]
        settings: Settings,
        #[serde(default)]
        use_history: Option<bool>,
    }
    let body: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not the JSON expected: {e}")))?
    };
    body.settings.check(&app.cfg, &app.options.loras)?;
    let (state, session) = (app.clone(), id.clone());
    let turns = blocking(move || state.store.turns(&session)).await?;
    if turns.is_empty() {
        return Err(ApiError::bad_request("the chat has no turn to retry"));
    }
    let work = TurnWork {
        session: id,
        images: Vec::new(),
        masks: Vec::new(),
        tasks: Vec::new(),
        instruction: None,
        outpaint: None,
        settings: body.settings,
        use_history: body.use_history.unwrap_or(true),
        retry: true,
    };
    queue_turn(&app, jobs::new_id(), work)
}

/// The file of a turn's image: `image` (its output), `inputs/K` or `masks/K`.
fn turn_file(t: &SessionTurn, part: &str, index: Option<usize>) -> Option<PathBuf> {
    match (part, index) {
        ("image", None) => Some(t.output.clone()),
        ("inputs", Some(k)) => t.inputs.get(k).cloned(),
        ("masks", Some(k)) => t.masks.get(k).cloned().flatten(),
        _ => None,
    }
}

/// Reads a turn's image and answers it as a PNG made from its pixels.
async fn serve_turn_file(
    app: AppState,
    id: String,
    turn: usize,
    part: String,
    index: Option<usize>,
) -> ApiResult<Response> {
    let png = blocking(move || {
        let turns = app.store.turns(&id)?;
        let t = turns
            .get(turn)
            .ok_or_else(|| ApiError::not_found(format!("session '{id}' has no turn {turn}")))?;
        let path = turn_file(t, &part, index)
            .ok_or_else(|| ApiError::not_found(format!("turn {turn} has no such image")))?;
        let img = crate::imageio::load(&path)
            .map_err(|_| ApiError::not_found(format!("turn {turn}: its image cannot be read")))?;
        Ok(upload::png(&img)?)
    })
    .await?;
    Ok(png_response(png))
}

/// `GET /ace/sessions/{id}/turns/{turn}/image`.
pub async fn turn_image(
    State(app): State<AppState>,
    Path((id, turn, part)): Path<(String, usize, String)>,
) -> ApiResult<Response> {
    serve_turn_file(app, id, turn, part, None).await
}

/// `GET /ace/sessions/{id}/turns/{turn}/inputs/{k}` and `.../masks/{k}`.
pub async fn turn_input(
    State(app): State<AppState>,
    Path((id, turn, part, index)): Path<(String, usize, String, usize)>,
) -> ApiResult<Response> {
    serve_turn_file(app, id, turn, part, Some(index)).await
}
