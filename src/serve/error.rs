//! What the server answers when a request cannot be served: a status code and a JSON body in
//! the OpenAI API's error shape (`{"error": {"message", "type", "param", "code"}}`), used by
//! every endpoint so that one client-side check reads them all. Errors of the library map to
//! 400 when the request was at fault (bad image, bad value) and to 500 otherwise; a 500's
//! details go to the server's log, not to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The OpenAI `type`: invalid_request_error, authentication_error, requests, server_error.
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for the `Retry-After` header (a full queue).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 about one field of the request.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::bad_request(format!("{param}: {}", message.into()))
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            code: Some("not_found"),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
        }
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method not allowed on this path",
        )
    }

    /// 409: the thing exists already.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", message)
    }

    /// 401: no or a wrong token.
    pub fn unauthorized() -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong token: send 'Authorization: Bearer TOKEN' (a browser opens \
                 /?token=TOKEN once)",
            )
        }
    }

    /// 403: a request refused whoever sends it (another origin, another host name).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "invalid_request_error", message)
    }

    /// 429: the queue is full; try again in `retry_after` seconds.
    pub fn queue_full(waiting: usize, retry_after: u64) -> Self {
        ApiError {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                format!("the queue is full ({waiting} jobs waiting); retry in {retry_after} s"),
            )
        }
    }

    /// 413: the body or an image is larger than the server takes.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
    }

    /// 408: the body did not arrive in time.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "the request body did not arrive in time",
        )
    }

    /// 504: the images were not made within the server's --timeout (the job was cancelled).
    pub fn timeout(seconds: u64) -> Self {
        ApiError {
            code: Some("timeout"),
            ..Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                format!(
                    "not done within {seconds} s (the server's --timeout); the job was cancelled"
                ),
            )
        }
    }

    /// 503: the server is stopping, or the job was cancelled.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    /// 500: a fault of the server; the details are logged, the client gets a pointer to them.
    pub fn internal(details: impl std::fmt::Display) -> Self {
        log::error!("{details}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error (the server's log has the details)",
        )
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// Whether a library error was the request's fault (a bad value, image, mask or document).
pub fn is_client_error(e: &crate::Error) -> bool {
    use crate::Error::*;
    matches!(
        e,
        Invalid { .. } | Image { .. } | Config { .. } | Shape { .. }
    )
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        if is_client_error(&e) {
            ApiError::bad_request(e.to_string())
        } else {
            ApiError::internal(e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ace\""),
            );
        }
        response
    }
}

/// Longest error text of another layer carried over into the JSON shape.
const MAX_CARRIED_TEXT: usize = 4096;

/// Middleware: gives every error answer the JSON shape, also those made outside the handlers
/// (a path that does not parse, a body over the limit), keeping their status and text.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let headers = response.headers().clone();
    let text = axum::body::to_bytes(response.into_body(), MAX_CARRIED_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status, kind, message).into_response();
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_take_the_openai_shape_and_headers() {
        let e = ApiError::bad_param("n", "must be between 1 and 10");
        assert_eq!(e.body()["error"]["param"], "n");
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        let r = ApiError::queue_full(4, 7).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let from: ApiError = crate::Error::invalid("size", "0x0 is empty").into();
        assert_eq!(from.status, StatusCode::BAD_REQUEST);
        let io = crate::Error::io("/x", std::io::Error::other("disk"));
        let hidden: ApiError = io.into();
        assert_eq!(hidden.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!hidden.message.contains("/x"));
    }
}
