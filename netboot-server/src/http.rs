//! HTTP boot: per-host iPXE scripts, image artefacts (Content-Length, HEAD, single Range), signed
//! rules. No redirects. Artefacts come from the verified in-memory image only.
use crate::BootConfigKind;
use crate::Shared;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fleet::{ClientKind, EventSource, Mac};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/boot/{file}", get(boot_script))
        .route("/image/{name}", get(artefact).head(artefact))
        .route("/agent/rules.json", get(rules_doc))
        .route("/agent/rules.json.sig", get(rules_sig))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared)
}

/// The agent API, mounted on the HTTPS listener only (the agent pins its certificate).
pub fn agent_router(shared: Arc<Shared>) -> Router {
    use axum::routing::post;
    Router::new()
        .route("/agent/v1/hello", post(crate::agent_api::hello))
        .route("/agent/v1/step", post(crate::agent_api::step))
        .route("/agent/v1/report", post(crate::agent_api::report))
        .route(
            "/agent/v1/bitlocker-key",
            post(crate::agent_api::bitlocker_key),
        )
        .with_state(shared)
}

pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

async fn boot_script(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
) -> Response {
    let Some(mac) = file.strip_suffix(".ipxe") else {
        return text(StatusCode::NOT_FOUND, "expected /boot/<mac>.ipxe\n");
    };
    let mac: Mac = match mac.parse() {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let script = s.boot_config(
        mac,
        peer,
        ClientKind::Ipxe(fleet::Arch::Bios),
        BootConfigKind::Ipxe,
    );
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        script,
    )
        .into_response()
}

/// Parses a single `bytes=` range (RFC 9110 14.1.2) against `len`. `Err` means unsatisfiable.
pub fn parse_range(h: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        // Multiple ranges: serve the whole file (allowed by RFC 9110).
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end: u64 = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().ok()?.min(len.saturating_sub(1))
        };
        if start >= len || start > end {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(r))
}

async fn artefact(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(data) = s.image.get(&name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{name}: not in the signed recovery image\n"),
        );
    };
    let len = data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| parse_range(h, len));
    let mac = q
        .get("host")
        .and_then(|m| m.parse::<Mac>().ok())
        .or_else(|| s.fleet.peer_mac(peer.ip()));
    if method == Method::GET && range.is_none() {
        if let Some(mac) = mac {
            s.fleet.event(
                mac,
                EventSource::Http,
                "http-download",
                format!("{name} ({len} bytes) to {}", peer.ip()),
                crate::now_ms(),
            );
        }
    }
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b),
        Some(Err(())) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    let body_len = if len == 0 { 0 } else { end - start + 1 };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, body_len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    let body = if method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        // Zero-copy: the body borrows the verified in-memory artefact.
        Body::from(bytes_of(data, start as usize, (end + 1) as usize))
    };
    resp.body(body)
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

fn bytes_of(data: Arc<[u8]>, start: usize, end: usize) -> axum::body::Bytes {
    struct Slice(Arc<[u8]>, usize, usize);
    impl AsRef<[u8]> for Slice {
        fn as_ref(&self) -> &[u8] {
            &self.0[self.1..self.2]
        }
    }
    axum::body::Bytes::from_owner(Slice(data, start, end))
}

async fn rules_doc(State(s): State<Arc<Shared>>) -> Response {
    match &s.rules {
        Some(r) => (
            [(header::CONTENT_TYPE, "application/json")],
            bytes_of(r.document.clone(), 0, r.document.len()),
        )
            .into_response(),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no signed remediation rules loaded\n",
        ),
    }
}

async fn rules_sig(State(s): State<Arc<Shared>>) -> Response {
    match &s.rules {
        Some(r) => (
            [(header::CONTENT_TYPE, "text/plain")],
            bytes_of(r.signature.clone(), 0, r.signature.len()),
        )
            .into_response(),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no signed remediation rules loaded\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=9-1", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=x-1", 100), None);
    }
}
