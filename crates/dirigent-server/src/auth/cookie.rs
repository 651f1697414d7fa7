//! Browser sessions: the session token in an HttpOnly, SameSite=Strict cookie (Secure under
//! TLS), and the CSRF token every state-changing request sent with that cookie must carry.
//!
//! The CSRF token is derived from the session token, so the server stores nothing more and
//! only a holder of the session (never another site, which cannot read the cookie) knows it.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use sha2::{Digest, Sha256};

/// The cookie carrying a login session.
pub const SESSION_COOKIE: &str = "dirigent_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The `Set-Cookie` value that gives the browser `token` for `max_age_seconds`.
pub fn set_session(token: &str, max_age_seconds: i64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_seconds}{secure}"
    ))
    .ok()
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub fn clear_session(secure: bool) -> HeaderValue {
    HeaderValue::from_static(if secure {
        "dirigent_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure"
    } else {
        "dirigent_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    })
}

/// The session token in the request's cookies, if any.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

/// The CSRF token belonging to a session token.
pub fn csrf_token(session_token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"dirigent csrf\0")
        .chain_update(session_token.as_bytes())
        .finalize();
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether a request authenticated by the cookie `session_token` may proceed: reads always,
/// anything else only with the session's CSRF token in [`CSRF_HEADER`].
pub fn passes_csrf_check(method: &Method, headers: &HeaderMap, session_token: &str) -> bool {
    if [Method::GET, Method::HEAD, Method::OPTIONS].contains(method) {
        return true;
    }
    let expected = csrf_token(session_token);
    headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        assert_eq!(session_token(&headers), None);
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; dirigent_session=dgs_abc; x=y"),
        );
        assert_eq!(session_token(&headers), Some("dgs_abc"));
    }

    #[test]
    fn writes_need_the_sessions_own_csrf_token() {
        let mut headers = HeaderMap::new();
        assert!(passes_csrf_check(&Method::GET, &headers, "dgs_a"));
        assert!(!passes_csrf_check(&Method::POST, &headers, "dgs_a"));
        headers.insert(CSRF_HEADER, csrf_token("dgs_b").parse().unwrap());
        assert!(!passes_csrf_check(&Method::DELETE, &headers, "dgs_a"));
        headers.insert(CSRF_HEADER, csrf_token("dgs_a").parse().unwrap());
        assert!(passes_csrf_check(&Method::DELETE, &headers, "dgs_a"));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let plain = set_session("dgs_a", 60, false).unwrap();
        assert_eq!(
            plain,
            "dirigent_session=dgs_a; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        let secure = set_session("dgs_a", 60, true).unwrap();
        assert!(secure.to_str().unwrap().ends_with("; Secure"));
        assert_eq!(
            clear_session(false).to_str().unwrap(),
            plain
                .to_str()
                .unwrap()
                .replace("dgs_a", "")
                .replace("60", "0")
        );
    }
}
