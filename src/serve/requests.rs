//! The request log: one line per request (method, path, status, milliseconds to the
//! response's head), handed to whoever prints it; a client that went away before its answer is
//! logged with status 499, as nginx does. The query string is left out: it may carry the token.

use super::{AppState, RequestLog};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// One answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub millis: f64,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {:.1} ms",
            self.method, self.path, self.status, self.millis
        )
    }
}

/// Status logged for a request whose client went away before its answer.
const CLIENT_GONE: u16 = 499;

/// A request being answered; logs itself when dropped.
struct Pending {
    log: RequestLog,
    method: String,
    path: String,
    start: Instant,
    status: u16,
}

impl Drop for Pending {
    fn drop(&mut self) {
        (self.log)(&Line {
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            status: self.status,
            millis: self.start.elapsed().as_secs_f64() * 1e3,
        });
    }
}

/// The middleware.
pub async fn log(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(log) = app.log.clone() else {
        return next.run(req).await;
    };
    let mut pending = Pending {
        log,
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        start: Instant::now(),
        status: CLIENT_GONE,
    };
    let response = next.run(req).await;
    pending.status = response.status().as_u16();
    response
}
