//! The request log: one line per answered request (method, path, status, milliseconds to the
//! response's head), handed to whoever prints it. The query string is left out: it may carry
//! the token.

use super::AppState;
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

/// The middleware.
pub async fn log(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(log) = app.log.clone() else {
        return next.run(req).await;
    };
    let start = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    log(&Line {
        method,
        path,
        status: response.status().as_u16(),
        millis: start.elapsed().as_secs_f64() * 1e3,
    });
    response
}
