//! HTTP boot: per-host iPXE scripts, image artefacts (Content-Length, HEAD, single Range), signed
//! rules. No redirects. Artefacts come from the verified in-memory image only.
use crate::reply::text;
use crate::{BootConfigKind, Booter};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fleet::{ClientKind, EventSource, Mac};
use netboot_proto::range::parse_range;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The boot edge's HTTP routes: boot scripts, artefacts, the signed rules, /healthz.
pub fn router(shared: Arc<Booter>) -> Router {
    Router::new()
        .route("/boot/{file}", get(boot_script))
        .route("/image/{name}", get(artefact).head(artefact))
        .route("/agent/rules.json", get(rules_doc))
        .route("/agent/rules.json.sig", get(rules_sig))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared)
}

async fn boot_script(
    State(s): State<Arc<Booter>>,
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
    // After the TCP handshake the kernel holds a neighbour entry for an on-link peer; should
    // it be missing, it is resolved off the runtime.
    let l2 = match s.neighbours.lookup(peer.ip()) {
        Some(m) => Some(m),
        None if s.neighbours.on_link(peer.ip()) => {
            let n = s.neighbours.clone();
            tokio::task::spawn_blocking(move || n.resolve(peer.ip()))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let script = s.boot_config(
        mac,
        s.claimant(peer, l2),
        ClientKind::Ipxe(fleet::Arch::Bios),
        BootConfigKind::Ipxe,
    );
    // A token (and the campaign slot it took) is durable before the machine hears of it: a
    // crash then cannot leave a machine booting a payload its server has no record of.
    let durable = match &script.failed {
        Some(e) => Err(e.clone()),
        None if script.token_issued => s.fleet.durable().await.map_err(|e| e.to_string()),
        None => Ok(()),
    };
    {
        if let Err(e) = durable {
            tracing::error!("{mac}: boot script not sent, the store cannot write: {e}");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "10")],
                format!("the server cannot save this boot ({e}); trying again shortly\n"),
            )
                .into_response();
        }
    }
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        script.text,
    )
        .into_response()
}

async fn artefact(
    State(s): State<Arc<Booter>>,
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
                fleet_service::now_ms(),
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
        // The body is a slice of the sealed image: on the plain listener it goes out with
        // sendfile (src/sealed.rs), on HTTPS through rustls.
        Body::from(data.slice(start as usize..(end + 1) as usize))
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

async fn rules_doc(State(s): State<Arc<Booter>>) -> Response {
    let r = &s.rules;
    (
        [(header::CONTENT_TYPE, "application/json")],
        bytes_of(r.document.clone(), 0, r.document.len()),
    )
        .into_response()
}

async fn rules_sig(State(s): State<Arc<Booter>>) -> Response {
    let r = &s.rules;
    (
        [(header::CONTENT_TYPE, "text/plain")],
        bytes_of(r.signature.clone(), 0, r.signature.len()),
    )
        .into_response()
}
