//! Who may talk to the server. It listens on loopback unless told otherwise, and any other
//! address needs a token: anyone who reaches the port could otherwise use the model and read
//! every chat. With a token, every endpoint but the health check asks for it, as
//! `Authorization: Bearer TOKEN` (what OpenAI clients send as their API key) or, for a browser,
//! as the cookie that opening `/?token=TOKEN` once sets.

use super::error::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{SocketAddr, ToSocketAddrs};

/// The cookie a browser keeps the token in.
const COOKIE: &str = "ace_token";
/// The one path open without the token.
const HEALTH: &str = "/ace/health";

/// The address to listen on for `host` and `port`; an address that is not loopback needs
/// `token`.
pub fn bind_address(host: &str, port: u16, token: Option<&str>) -> crate::Result<SocketAddr> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| crate::Error::invalid("host", format!("'{host}': {e}")))?
        .next()
        .ok_or_else(|| crate::Error::invalid("host", format!("'{host}' has no address")))?;
    if let Some(t) = token {
        let fits = |b: u8| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\');
        if !t.bytes().all(fits) {
            return Err(crate::Error::invalid(
                "token",
                "use visible ASCII characters other than ; , \" and \\ (it travels in a header \
                 and a cookie)",
            ));
        }
    }
    if !addr.ip().is_loopback() && token.is_none_or(str::is_empty) {
        return Err(crate::Error::invalid(
            "host",
            format!(
                "listening on {} (not loopback) needs --token: anyone who reaches it could \
                 use the model and read every chat",
                addr.ip()
            ),
        ));
    }
    Ok(addr)
}

/// Compares without stopping at the first difference, so the time taken tells nothing of the
/// token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The token a request carries in its `Authorization` header or cookie.
fn presented(req: &Request) -> Vec<String> {
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::to_string);
    bearer.into_iter().chain(cookies).collect()
}

/// The `token` query parameter of a request.
fn query_token(req: &Request) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(url_decode)
}

/// Percent-decodes a query value (`+` is a space).
fn url_decode(s: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16)).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The middleware: passes requests with the token (and the health check), answers 401 to the
/// others. A page opened with `?token=` gets the cookie.
pub async fn check(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = app.options.token.as_deref() else {
        return next.run(req).await;
    };
    if req.uri().path() == HEALTH || presented(&req).iter().any(|t| same(t, token)) {
        return next.run(req).await;
    }
    if query_token(&req).is_some_and(|t| same(&t, token)) {
        let mut response = next.run(req).await;
        let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
        return response;
    }
    ApiError::unauthorized().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_goes_without_a_token() {
        assert!(bind_address("127.0.0.1", 0, None).is_ok());
        assert!(bind_address("::1", 0, None).is_ok());
        let e = bind_address("0.0.0.0", 0, None).unwrap_err().to_string();
        assert!(e.contains("--token"), "{e}");
        assert!(bind_address("0.0.0.0", 0, Some("")).is_err());
        assert!(bind_address("0.0.0.0", 0, Some("s3cret")).is_ok());
        assert!(bind_address("127.0.0.1", 0, Some("two words")).is_err());
    }

    #[test]
    fn tokens_are_read_from_header_cookie_and_query() {
        let req = Request::builder()
            .uri("/x?a=1&token=s%33cret+x")
            .header(header::AUTHORIZATION, "Bearer abc")
            .header(header::COOKIE, "theme=dark; ace_token=def")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(presented(&req), ["abc", "def"]);
        assert_eq!(query_token(&req).as_deref(), Some("s3cret x"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert_eq!(url_decode("%zz%4"), "%zz%4");
        assert_eq!(url_decode("é%C3%A9"), "éé");
    }
}
