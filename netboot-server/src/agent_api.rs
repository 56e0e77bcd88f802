//! The agent API: `hello`, `step` and `report` from the recovery agent. Each request is
//! authenticated by the per-boot token the boot script put on that host's kernel command line
//! (bound to its MAC, expiring), moves the host's state machine, is recorded as events, and is
//! flushed to disk before the 200. A retried report (same `report_id`) is acknowledged again
//! without being counted twice.
// axum's Response is the natural error of these handler helpers; they run once per agent request.
#![allow(clippy::result_large_err)]

use crate::reply::{fleet_error, text};
use crate::Booter;
use axum::extract::{rejection::JsonRejection, ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use axum::Router;
use fleet::agent::{Hello, HelloReply, KeyReply, KeyRequest, Report, Step};
use fleet::lifecycle::Input;
use fleet::{EventSource, HostRecord, Mac};
use fleet_service::escrow::KeyAnswer;
use fleet_service::now_ms;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The agent API, mounted on the HTTPS listener only (the agent pins its certificate).
pub fn router(booter: Arc<Booter>) -> Router {
    Router::new()
        .route("/agent/v1/hello", post(hello))
        .route("/agent/v1/step", post(step))
        .route("/agent/v1/report", post(report))
        .route("/agent/v1/bitlocker-key", post(bitlocker_key))
        .layer(axum::middleware::map_response(retry_after))
        .with_state(booter)
}

/// Every 503 of the agent API (the store cannot write, a full disk) says when to ask again:
/// nothing was recorded, and the agent retries with the same request.
async fn retry_after(mut r: Response) -> Response {
    if r.status() == StatusCode::SERVICE_UNAVAILABLE
        && !r.headers().contains_key(axum::http::header::RETRY_AFTER)
    {
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("10"),
        );
    }
    r
}

/// How long a per-boot token stays valid by default: a run takes minutes; an agent waiting for
/// an admin's key approval polls within this time.
pub const TOKEN_LIFETIME_MS: u64 = 2 * 3600 * 1000;

/// Who sent an agent request: its address and the MAC of its neighbour entry.
fn requester(s: &Booter, peer: SocketAddr) -> fleet::claim::Claimant {
    s.claimant(peer, s.neighbours.lookup(peer.ip()))
}

/// An authenticated agent request: the host it speaks for and who sent it.
struct Agent {
    mac: Mac,
    host: HostRecord,
    from: fleet::claim::Claimant,
}

impl Agent {
    /// The audit log's actor: the host and the requester's IP and MAC.
    fn actor(&self) -> String {
        format!("agent {} from {}", self.mac, self.from)
    }
}

/// Checks the token against the host record (its SHA-256, in constant time), its age, whether
/// the final report spent it, and that the requester's hardware address (where the server sees
/// layer 2) is the host's. `report_id`: a report's ID, whose retry is accepted with a spent
/// token (it is answered "already recorded").
fn authenticate(
    s: &Booter,
    mac: &str,
    token: &str,
    peer: SocketAddr,
    report_id: Option<&str>,
    now: u64,
) -> Result<Agent, Response> {
    let mac: Mac = mac
        .parse()
        .map_err(|e: String| text(StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    let from = requester(s, peer);
    let Some(host) = s.fleet.host(mac) else {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            format!("no boot token was issued to {mac}\n"),
        ));
    };
    let refuse = |why: &str, answer: &str| {
        s.fleet.event(
            mac,
            EventSource::Agent,
            "agent-refused",
            format!("agent request from {from} refused: {why}"),
            now,
        );
        s.fleet.audit_logged(
            &format!("agent {mac} from {from}"),
            "agent-refused",
            why.to_string(),
            now,
        );
        Err(text(StatusCode::UNAUTHORIZED, format!("{answer}\n")))
    };
    let digest = crate::booter::token_digest(token);
    match &host.boot_token_sha256 {
        Some(t) if bool::from(t.as_bytes().ct_eq(digest.as_bytes())) => {}
        _ => {
            return refuse(
                "a wrong or old boot token",
                "boot token does not match the one issued to this MAC",
            )
        }
    }
    if now.saturating_sub(host.boot_token_issued_ms) > s.token_lifetime_ms {
        return refuse(
            "an expired boot token",
            "boot token expired; reboot the machine into recovery again",
        );
    }
    let retried_report =
        report_id.is_some_and(|id| host.last_report.as_ref().is_some_and(|r| r.report_id == id));
    if host.token_spent && !retried_report {
        return refuse(
            "a boot token spent by the run's final report",
            "this boot's final report was received; the token is spent",
        );
    }
    if let Some(l2) = from.l2 {
        if l2 != mac {
            s.fleet.event(
                mac,
                EventSource::Agent,
                "impersonation",
                format!("suspected impersonation: {from} used {mac}'s boot token; refused"),
                now,
            );
            return refuse(
                &format!("the token came from another machine ({from})"),
                "this request did not come from the machine the token was issued to",
            );
        }
    }
    Ok(Agent { mac, host, from })
}

fn body<T>(r: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    r.map(|Json(v)| v)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("{}\n", e.body_text())))
}

async fn flush(s: &Booter) -> Result<(), Response> {
    s.fleet
        .durable()
        .await
        .map_err(|e| text(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")))
}

/// Applies an agent message to the host through the fleet's one transition function.
fn observe(s: &Booter, mac: Mac, input: &Input<'_>, now: u64) -> Result<(), Response> {
    s.fleet
        .observe(mac, input, now)
        .map(drop)
        .map_err(|e| fleet_error(&e.into()))
}

/// `POST /agent/v1/hello`: the agent is up (host -> agent-up); answers the server's time.
pub async fn hello(
    State(s): State<Arc<Booter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Result<Json<Hello>, JsonRejection>,
) -> Response {
    let now = now_ms();
    let mut h = match body(req) {
        Ok(h) => h,
        Err(r) => return r,
    };
    h.bound();
    let agent = match authenticate(&s, &h.mac, &h.token, peer, None, now) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mac = agent.mac;
    s.fleet
        .audit_logged(&agent.actor(), "agent-hello", String::new(), now);
    let hello = Input::AgentHello {
        uuid: h.uuid.as_deref(),
        serial: h.serial.as_deref(),
    };
    if let Err(r) = observe(&s, mac, &hello, now) {
        return r;
    }
    s.fleet.event(
        mac,
        EventSource::Agent,
        "agent-hello",
        format!(
            "agent {} up on kernel {}; firmware {}, Secure Boot {}, lockdown {}",
            h.agent_version,
            h.kernel,
            h.firmware,
            h.secure_boot
                .map(|b| if b { "on" } else { "off" })
                .unwrap_or("unknown"),
            h.lockdown.as_deref().unwrap_or("unknown")
        ),
        now,
    );
    if let Err(r) = flush(&s).await {
        return r;
    }
    let host = s.fleet.host(mac).unwrap_or(agent.host);
    let restore = if host.restore_run {
        // Exactly what the server recorded as quarantined on this host: never what the volume
        // claims.
        host.last_report
            .iter()
            .flat_map(|r| r.files.iter())
            .filter(|f| f.action == "quarantine" && f.quarantined_to.is_some())
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    Json(HelloReply {
        server_time: now / 1000,
        mode: if host.restore_run {
            fleet::agent::Mode::Restore
        } else {
            fleet::agent::Mode::Remediate
        },
        restore,
        rules_sha256: Some(s.rules.sha256.clone()),
        rules_version: Some(s.rules.rules.version),
    })
    .into_response()
}

/// `POST /agent/v1/step`: a step of the run (scanning, unlocked, ...), recorded.
pub async fn step(
    State(s): State<Arc<Booter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Result<Json<Step>, JsonRejection>,
) -> Response {
    let now = now_ms();
    let st = match body(req) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let agent = match authenticate(&s, &st.mac, &st.token, peer, None, now) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mac = agent.mac;
    if let Err(r) = observe(&s, mac, &Input::AgentStep { step: &st.step }, now) {
        return r;
    }
    let kind: String = st
        .step
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    s.fleet
        .audit_logged(&agent.actor(), &format!("agent-{kind}"), String::new(), now);
    s.fleet.event(
        mac,
        EventSource::Agent,
        &format!("agent-{kind}"),
        st.message.chars().take(2000).collect(),
        now,
    );
    if let Err(r) = flush(&s).await {
        return r;
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// `POST /agent/v1/report`: the run's outcome, recorded once per report ID.
pub async fn report(
    State(s): State<Arc<Booter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Result<Json<Report>, JsonRejection>,
) -> Response {
    let now = now_ms();
    let mut rep = match body(req) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let agent = match authenticate(&s, &rep.mac, &rep.token, peer, Some(&rep.report_id), now) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (mac, host) = (agent.mac, &agent.host);
    if host
        .last_report
        .as_ref()
        .is_some_and(|r| r.report_id == rep.report_id)
    {
        // Recorded, but perhaps not yet durable (the first attempt's flush failed): flushed
        // before the retry is acknowledged.
        if let Err(r) = flush(&s).await {
            return r;
        }
        return (StatusCode::OK, "ok (already recorded)\n").into_response();
    }
    rep.token.clear();
    rep.bound();
    s.fleet.audit_logged(
        &agent.actor(),
        "agent-report",
        format!("{:?}", rep.result),
        now,
    );
    let reason = rep.reason.clone().unwrap_or_default();
    // The files, the state change and the summary are one atomic write: a kill between them
    // would leave a report whose retry is "already recorded" but whose timeline lacks it.
    let mut events: Vec<(EventSource, &str, String)> = rep
        .files
        .iter()
        .map(|f| {
            (
                EventSource::Agent,
                "agent-file",
                format!(
                    "{} {} on {} ({} bytes, sha256 {}){}",
                    f.action,
                    f.path,
                    f.volume,
                    f.size,
                    f.sha256,
                    f.quarantined_to
                        .as_ref()
                        .map(|q| format!(" -> {q}"))
                        .unwrap_or_default()
                ),
            )
        })
        .collect();
    let summary = format!(
        "report: {:?}{}; {} volume(s): {}; agent took {} ms",
        rep.result,
        if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason})")
        },
        rep.volumes.len(),
        rep.volumes
            .iter()
            .map(|v| format!("{} {}", v.device, v.status))
            .collect::<Vec<_>>()
            .join(", "),
        rep.agent_ms
    );
    events.push((EventSource::Agent, "agent-report", summary));
    if let Err(e) = s
        .fleet
        .observe_with_events(mac, &Input::AgentReport(&rep), &events, now)
    {
        return fleet_error(&e.into());
    }
    if let Err(r) = flush(&s).await {
        return r;
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// Bytes zeroised on drop (a released recovery password's answer).
struct Wiped(Vec<u8>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// `POST /agent/v1/bitlocker-key` (HTTPS only, like the whole agent API): the release policy is
/// [`fleet::escrow::decide`]; every answer is recorded and flushed before it is sent.
pub async fn bitlocker_key(
    State(s): State<Arc<Booter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Result<Json<KeyRequest>, JsonRejection>,
) -> Response {
    let now = now_ms();
    let k = match body(req) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let agent = match authenticate(&s, &k.mac, &k.token, peer, None, now) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mac = agent.mac;
    let actor = agent.from.to_string();
    let mut ids = Vec::new();
    for p in k.protectors.iter().take(16) {
        match fleet::escrow::protector_id(p) {
            Ok(id) => ids.push(id),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }
    let volume: String = k
        .volume
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(32)
        .collect();
    let fleet = s.fleet.clone();
    let answer =
        tokio::task::spawn_blocking(move || fleet.release_key(mac, &ids, &volume, &actor, now))
            .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    if let Err(r) = flush(&s).await {
        return r;
    }
    let none = KeyReply {
        protector_id: None,
        recovery_password: None,
        waiting: None,
        refused: None,
    };
    match answer {
        KeyAnswer::Release {
            protector_id,
            password,
        } => {
            let mut reply = KeyReply {
                protector_id: Some(protector_id),
                recovery_password: Some(password.expose().to_string()),
                ..none
            };
            let body = serde_json::to_vec(&reply).unwrap_or_default();
            if let Some(p) = reply.recovery_password.as_mut() {
                zeroize::Zeroize::zeroize(p);
            }
            // The answer's bytes are wiped when the connection is done with them.
            let body = axum::body::Bytes::from_owner(Wiped(body));
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        KeyAnswer::Wait(w) => (
            StatusCode::ACCEPTED,
            Json(KeyReply {
                waiting: Some(w),
                ..none
            }),
        )
            .into_response(),
        KeyAnswer::Refuse { reason, conflict } => (
            if conflict {
                StatusCode::CONFLICT
            } else {
                StatusCode::FORBIDDEN
            },
            Json(KeyReply {
                refused: Some(reason),
                ..none
            }),
        )
            .into_response(),
    }
}
