//! What the console and the admin API demand of the connection: TLS, except from the server's
//! own machine. Plain HTTP carries what firmware needs (boot scripts, artefacts; mounted beside
//! this router by the server); here a browser is redirected to HTTPS, a bearer token sent in
//! clear is refused (it crossed the LAN readable), and every other request is refused with the
//! HTTPS address. Also: the headers every console answer carries, and the login rate limit.
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Where the console is served over TLS, and which peers count as this machine.
#[derive(Debug, Clone)]
pub struct PlainHttp {
    /// `https://ip:port`, the redirect target.
    pub https_base: String,
    /// The server's own addresses (a request from one never left the machine).
    pub local: Vec<IpAddr>,
}

impl PlainHttp {
    /// Whether a request from `ip` never crossed the network (loopback, or one of the
    /// server's own addresses: Linux drops packets from the wire that claim those).
    pub fn is_local(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || self.local.contains(&ip)
    }
}

/// Middleware for the console's routes on the plain-HTTP listener.
pub async fn plain_http(
    State(p): State<Arc<PlainHttp>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if p.is_local(peer.ip()) {
        return next.run(req).await;
    }
    let target = format!(
        "{}{}",
        p.https_base,
        req.uri()
            .path_and_query()
            .map(|x| x.as_str())
            .unwrap_or("/")
    );
    if req.headers().contains_key(header::AUTHORIZATION) {
        tracing::warn!(%peer, path = %req.uri().path(), "bearer token sent over plain HTTP refused");
        return crate::auth::error(
            StatusCode::FORBIDDEN,
            format!("the admin API takes bearer tokens over HTTPS only ({target}); this token crossed the network in clear: revoke it (unbrick tokens revoke NAME) and make a new one"),
        );
    }
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, target)],
            "the console is served over HTTPS\n",
        )
            .into_response();
    }
    crate::auth::error(
        StatusCode::FORBIDDEN,
        format!("the console and the admin API are served over HTTPS only: {target}"),
    )
}

/// Refuses a request whose declared body is larger than the API reads ([`crate::api::MAX_BODY`])
/// with 413 and the reason, before a byte of it is read; a chunked body is cut at the same size
/// by the router's body limit.
pub async fn body_limit(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > crate::api::MAX_BODY as u64) {
        return crate::auth::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is {} MB; the API reads at most {} MiB (a 100,000-host import is about 5 MB): split it",
                declared.unwrap_or(0) / 1_000_000,
                crate::api::MAX_BODY >> 20
            ),
        );
    }
    next.run(req).await
}

/// Headers on every console and API answer: no framing, no sniffing, no referrer, scripts and
/// styles only from the console itself.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Failed logins an address may make per [`LOGIN_WINDOW_MS`] before it must wait.
pub const LOGIN_FAILURES_PER_IP: u32 = 5;
/// Failed logins all addresses together may make per window (a spread-out guesser).
pub const LOGIN_FAILURES_TOTAL: u32 = 100;
/// The rate limit's window.
pub const LOGIN_WINDOW_MS: u64 = 60_000;

/// Counts failed logins per address and in all; a limited caller is refused before its token
/// is looked at, so guessing costs a minute per few tries.
#[derive(Default)]
pub struct LoginLimiter(Mutex<(HashMap<IpAddr, Window>, Window)>);

/// A window's start and the failures in it.
type Window = (u64, u32);

impl LoginLimiter {
    /// Seconds to wait when `ip` (or everyone) used up the window's failures at `now_ms`.
    pub fn wait_secs(&self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        let g = self.0.lock().unwrap();
        let left = |start: u64| {
            (start + LOGIN_WINDOW_MS)
                .saturating_sub(now_ms)
                .div_ceil(1000)
        };
        if let Some((start, n)) = g.0.get(&ip) {
            if *n >= LOGIN_FAILURES_PER_IP && now_ms < start + LOGIN_WINDOW_MS {
                return Some(left(*start));
            }
        }
        let (start, n) = g.1;
        (n >= LOGIN_FAILURES_TOTAL && now_ms < start + LOGIN_WINDOW_MS).then(|| left(start))
    }

    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now_ms: u64) {
        let mut g = self.0.lock().unwrap();
        if g.0.len() > 10_000 {
            g.0.retain(|_, (s, _)| now_ms < *s + LOGIN_WINDOW_MS);
        }
        let e = g.0.entry(ip).or_insert((now_ms, 0));
        if now_ms >= e.0 + LOGIN_WINDOW_MS {
            *e = (now_ms, 0);
        }
        e.1 += 1;
        if now_ms >= g.1 .0 + LOGIN_WINDOW_MS {
            g.1 = (now_ms, 0);
        }
        g.1 .1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_limits_per_address_and_in_all() {
        let l = LoginLimiter::default();
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        let b: IpAddr = "10.0.0.6".parse().unwrap();
        for _ in 0..LOGIN_FAILURES_PER_IP {
            assert_eq!(l.wait_secs(a, 1000), None);
            l.failed(a, 1000);
        }
        assert_eq!(l.wait_secs(a, 1000), Some(60));
        assert_eq!(l.wait_secs(b, 1000), None, "another address is not limited");
        assert_eq!(
            l.wait_secs(a, 1000 + LOGIN_WINDOW_MS),
            None,
            "the window ends"
        );
        for i in 0..LOGIN_FAILURES_TOTAL {
            l.failed(IpAddr::from([10, 1, (i >> 8) as u8, i as u8]), 2000);
        }
        assert!(l.wait_secs(b, 2000).is_some(), "a spread-out guesser");
    }

    #[test]
    fn local_peers() {
        let p = PlainHttp {
            https_base: "https://10.99.0.1:8443".into(),
            local: vec!["10.99.0.1".parse().unwrap()],
        };
        assert!(p.is_local("127.0.0.1".parse().unwrap()));
        assert!(p.is_local("::1".parse().unwrap()));
        assert!(p.is_local("::ffff:10.99.0.1".parse().unwrap()));
        assert!(!p.is_local("10.99.0.2".parse().unwrap()));
    }
}
