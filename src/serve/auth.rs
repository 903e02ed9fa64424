//! Who may talk to the server. It listens on loopback unless told otherwise, and any other
//! address needs a token: anyone who reaches the port could otherwise use the model and read
//! every chat. With a token, every endpoint but the health check asks for it, as
//! `Authorization: Bearer TOKEN` (what OpenAI clients send as their API key) or, for a browser,
//! as the cookie that opening `/?token=TOKEN` once sets. Pages of other sites the user visits
//! reach loopback too: a request that changes something from another origin is refused, and
//! without a token only loopback host names are served, so that a name made to resolve to
//! 127.0.0.1 (DNS rebinding) cannot read the chats.

use super::error::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
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

/// A header's text.
fn header_text(req: &Request, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Whether a request that may change something (not GET or HEAD) comes from a page of another
/// origin than this server (as its `Host`, or a proxy's `X-Forwarded-Host`, names it).
fn cross_origin_write(req: &Request) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let Some(origin) = header_text(req, header::ORIGIN) else {
        return false;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    let forwarded = header::HeaderName::from_static("x-forwarded-host");
    ![header_text(req, header::HOST), header_text(req, forwarded)]
        .into_iter()
        .flatten()
        .any(|h| h.eq_ignore_ascii_case(origin_host))
}

/// Whether the `Host` header names this machine's loopback (`localhost`, `127.x.y.z`, `[::1]`).
fn loopback_host(req: &Request) -> bool {
    let Some(host) = header_text(req, header::HOST) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The middleware: refuses writes from other origins, and names other than loopback without a
/// token; with a token, passes requests that carry it (and the health check) and answers 401
/// to the others. A page opened with `?token=` gets the cookie.
pub async fn check(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if cross_origin_write(&req) {
        return ApiError::forbidden("a request from a page of another origin").into_response();
    }
    let Some(token) = app.options.token.as_deref() else {
        if !loopback_host(&req) {
            return ApiError::forbidden(
                "without --token only loopback host names (localhost, 127.0.0.1, [::1]) are \
                 served",
            )
            .into_response();
        }
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

    fn request(method: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().method(method).uri("/ace/sessions");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn other_origins_and_other_names_are_told_apart() {
        let host = ("host", "127.0.0.1:8080");
        let same = request("POST", &[host, ("origin", "http://127.0.0.1:8080")]);
        assert!(!cross_origin_write(&same));
        let evil = request("POST", &[host, ("origin", "http://evil.example")]);
        assert!(cross_origin_write(&evil));
        assert!(!cross_origin_write(&request(
            "GET",
            &[host, ("origin", "http://evil.example")]
        )));
        assert!(!cross_origin_write(&request("POST", &[host])));
        let proxied = request(
            "POST",
            &[
                host,
                ("x-forwarded-host", "ace.example"),
                ("origin", "https://ace.example"),
            ],
        );
        assert!(!cross_origin_write(&proxied));
        for ok in [
            "localhost:1",
            "127.0.0.1",
            "127.3.2.1:80",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            assert!(loopback_host(&request("GET", &[("host", ok)])), "{ok}");
        }
        for bad in ["evil.example:8080", "10.0.0.1", "localhost.evil.example"] {
            assert!(!loopback_host(&request("GET", &[("host", bad)])), "{bad}");
        }
        assert!(!loopback_host(&request("GET", &[])));
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
