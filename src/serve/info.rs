//! What the server says about itself: the chat page, the health check, the loaded model, its
//! defaults and LoRA adapters, the task phrasings the page offers as shortcuts, the OpenAI
//! model list, and the JSON answers for unknown paths and methods.

use super::error::{ApiError, ApiResult};
use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The chat page: one file, its script and styles inline, shipped inside the binary.
const PAGE: &str = include_str!("page.html");

/// Where the page may load from: itself, and images it made from the user's own files.
const PAGE_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
                           style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                           frame-ancestors 'none'";

/// `GET /`: the chat page.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /ace/health`, open without the token: whether the server answers, and its queue.
pub async fn health(State(app): State<AppState>) -> Json<Value> {
    let (waiting, running) = app.queue.load();
    Json(json!({"status": "ok", "waiting": waiting, "running": running}))
}

/// `GET /ace/model`: the loaded model, its defaults and limits.
pub async fn model(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    let cfg = &app.cfg;
    let d = &cfg.default_paras.input;
    let o = &app.options;
    Ok(Json(json!({
        "name": o.model_name,
        "config": cfg.name,
        "device": o.device,
        "dtype": o.dtype,
        "defaults": {
            "steps": d.sample_steps,
            "guide_scale": d.guide_scale,
            "guide_rescale": d.guide_rescale,
            "width": d.output_width,
            "height": d.output_height,
            "negative": cfg.model.default_n_prompt,
            "seed": 0,
        },
        "limits": {
            "max_steps": cfg.model.diffusion.noise_scheduler.num_timesteps,
            "max_input_images": crate::pipeline::MAX_INPUT_IMAGES,
            "max_seq_len": cfg.max_seq_len()?,
            "max_upload_side": super::upload::MAX_UPLOAD_SIDE,
            "max_upload_pixels": super::upload::MAX_UPLOAD_PIXELS,
            "max_body_bytes": super::MAX_BODY_BYTES,
            "queue": o.queue,
            "timeout_seconds": o.timeout.as_secs(),
        },
        "loras": {
            "default": o.loras.default.iter().map(|l| json!({
                "name": l.path.file_name().map(|n| n.to_string_lossy()),
                "scale": l.scale,
            })).collect::<Vec<_>>(),
            "available": o.loras.available(),
        },
        "dit": cfg.model.diffusion_model,
    })))
}

/// `GET /ace/tasks`: every task of `presets/tasks.yaml` with its phrasings.
pub async fn tasks() -> ApiResult<Json<Value>> {
    let templates = crate::data::templates::Templates::builtin()?;
    let tasks = templates
        .tasks()
        .map(|t| Ok((t.to_string(), json!(templates.phrasings(t)?))))
        .collect::<crate::Result<serde_json::Map<_, _>>>()?;
    Ok(Json(json!({ "tasks": tasks })))
}

/// `GET /v1/models`: the loaded model as the OpenAI model list.
pub async fn models(State(app): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": app.options.model_name, "object": "model", "created": 0, "owned_by": "ace"}],
    }))
}

/// Unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Known paths with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
