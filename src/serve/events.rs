//! The jobs endpoints: a job's state and queue position, its events as Server-Sent Events
//! (every event from the first, in order, then each new one as it happens, the stream closing
//! after the final one), and cancelling it.

use super::error::{ApiError, ApiResult};
use super::jobs::{Job, Next};
use super::work::Work;
use super::AppState;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;

fn job(app: &AppState, id: &str) -> ApiResult<Arc<Job<Work>>> {
    app.queue
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no job '{}'", id.escape_debug())))
}

/// `GET /ace/jobs/{id}`.
pub async fn show(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(job(&app, &id)?.describe()))
}

/// `POST /ace/jobs/{id}/cancel`: a waiting job is cancelled at once, a running one at its
/// next step (its events say when).
pub async fn cancel(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = app
        .queue
        .cancel(&id)
        .ok_or_else(|| ApiError::not_found(format!("no job '{}'", id.escape_debug())))?;
    Ok(Json(job.describe()))
}

/// The events of `job` from the first, each as an SSE event named by its type, with its index
/// as the event id.
pub fn follow(job: Arc<Job<Work>>) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let rx = job.subscribe();
    futures_util::stream::unfold((job, rx, 0usize), |(job, mut rx, i)| async move {
        loop {
            rx.borrow_and_update();
            match job.next(i) {
                Next::Event(e) => {
                    let data = serde_json::to_string(&e).unwrap_or_default();
                    let sse = SseEvent::default()
                        .event(e.name())
                        .id(i.to_string())
                        .data(data);
                    return Some((Ok(sse), (job, rx, i + 1)));
                }
                Next::End => return None,
                Next::Wait => {
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    })
}

/// `GET /ace/jobs/{id}/events`.
pub async fn stream(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    Ok(Sse::new(follow(job(&app, &id)?)).keep_alive(KeepAlive::default()))
}
