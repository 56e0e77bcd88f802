//! The agent API: `hello`, `step` and `report` from the recovery agent. Each request is
//! authenticated by the per-boot token the boot script put on that host's kernel command line
//! (bound to its MAC, expiring), moves the host's state machine, is recorded as events, and is
//! flushed to disk before the 200. A retried report (same `report_id`) is acknowledged again
//! without being counted twice.
// axum's Response is the natural error of these handler helpers; they run once per agent request.
#![allow(clippy::result_large_err)]

use crate::escrow::KeyAnswer;
use crate::http::text;
use crate::Shared;
use axum::extract::{rejection::JsonRejection, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet::agent::{Hello, HelloReply, KeyReply, KeyRequest, Report, RunResult, Step};
use fleet::{EventSource, HostRecord, HostState, Mac};
use std::sync::Arc;

/// How long a per-boot token stays valid.
pub const TOKEN_LIFETIME_MS: u64 = 6 * 3600 * 1000;

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the token against the host record; returns the host.
fn authenticate(
    s: &Shared,
    mac: &str,
    token: &str,
    now: u64,
) -> Result<(Mac, HostRecord), Response> {
    let mac: Mac = mac
        .parse()
        .map_err(|e: String| text(StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    let Some(host) = s.fleet.host(mac) else {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            format!("no boot token was issued to {mac}\n"),
        ));
    };
    match &host.boot_token {
        Some(t) if ct_eq(t.as_bytes(), token.as_bytes()) => {}
        _ => {
            s.fleet.event(
                mac,
                EventSource::Agent,
                "agent-refused",
                "request with a wrong or old boot token refused".into(),
                now,
            );
            return Err(text(
                StatusCode::UNAUTHORIZED,
                "boot token does not match the one issued to this MAC\n",
            ));
        }
    }
    if now.saturating_sub(host.boot_token_issued_ms) > TOKEN_LIFETIME_MS {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            "boot token expired; reboot the machine into recovery again\n",
        ));
    }
    Ok((mac, host))
}

fn body<T>(r: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    r.map(|Json(v)| v)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("{}\n", e.body_text())))
}

async fn flush(s: &Shared) -> Result<(), Response> {
    s.fleet
        .durable()
        .await
        .map_err(|e| text(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")))
}

fn transition(
    s: &Shared,
    mac: Mac,
    to: HostState,
    now: u64,
    f: impl Fn(&mut HostRecord),
) -> Result<(), Response> {
    let mut note = String::new();
    let r = s.fleet.update(mac, now, &mut |h| {
        f(h);
        let from = h.state.name();
        note = match h.transition(to.clone(), now) {
            Ok(true) => format!("{from} -> {}", to.name()),
            Ok(false) => String::new(),
            // Late or repeated steps must not fail the agent; the refusal is recorded.
            Err(e) => format!("kept {from}: {e}"),
        };
        Ok(())
    });
    if let Err(e) = r {
        return Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {e}\n"),
        ));
    }
    if !note.is_empty() {
        s.fleet.event(mac, EventSource::Agent, "state", note, now);
    }
    Ok(())
}

pub async fn hello(
    State(s): State<Arc<Shared>>,
    req: Result<Json<Hello>, JsonRejection>,
) -> Response {
    let now = crate::now_ms();
    let h = match body(req) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let (mac, _) = match authenticate(&s, &h.mac, &h.token, now) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let uuid = h.uuid.clone();
    let serial = h.serial.clone();
    if let Err(r) = transition(&s, mac, HostState::AgentUp, now, |rec| {
        if uuid.is_some() {
            rec.uuid = uuid.clone();
        }
        if serial.is_some() {
            rec.serial = serial.clone();
        }
    }) {
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
    Json(HelloReply {
        server_time: now / 1000,
    })
    .into_response()
}

pub async fn step(
    State(s): State<Arc<Shared>>,
    req: Result<Json<Step>, JsonRejection>,
) -> Response {
    let now = crate::now_ms();
    let st = match body(req) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let (mac, _) = match authenticate(&s, &st.mac, &st.token, now) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let to = match st.step.as_str() {
        "scanning" => Some(HostState::Scanning),
        // A BitLocker volume was unlocked with a released key.
        "unlocked" => Some(HostState::Unlocked),
        _ => None,
    };
    if let Some(to) = to {
        if let Err(r) = transition(&s, mac, to, now, |_| {}) {
            return r;
        }
    }
    let kind: String = st
        .step
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
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

pub async fn report(
    State(s): State<Arc<Shared>>,
    req: Result<Json<Report>, JsonRejection>,
) -> Response {
    let now = crate::now_ms();
    let mut rep = match body(req) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let (mac, host) = match authenticate(&s, &rep.mac, &rep.token, now) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if host
        .last_report
        .as_ref()
        .is_some_and(|r| r.report_id == rep.report_id)
    {
        return (StatusCode::OK, "ok (already recorded)\n").into_response();
    }
    rep.token.clear();
    let reason = rep.reason.clone().unwrap_or_default();
    let to = match rep.result {
        RunResult::Remediated => HostState::Remediated,
        // Rolled back: the machine is as it was before the campaign, so a person must look.
        RunResult::Restored => HostState::NeedsAttention(format!(
            "rolled back: {}",
            if reason.is_empty() {
                "quarantined files restored"
            } else {
                &reason
            }
        )),
        RunResult::Clean | RunResult::NothingFound => HostState::Clean,
        RunResult::NeedsAttention => HostState::NeedsAttention(reason.clone()),
        RunResult::Failed => HostState::Failed(reason.clone()),
    };
    for f in &rep.files {
        s.fleet.event(
            mac,
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
            now,
        );
    }
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
    let stored = rep.clone();
    // The recovery-password protectors the disk carries: what an admin looks the key up by.
    let recovery_ids: Vec<String> = rep
        .volumes
        .iter()
        .flat_map(|v| v.protectors.iter())
        .filter(|p| p.ends_with(" recovery password"))
        .filter_map(|p| p.split_whitespace().next().map(str::to_string))
        .collect();
    if let Err(r) = transition(&s, mac, to, now, move |h| {
        h.last_report = Some(stored.clone());
        h.reports += 1;
        // The run is over: the agent no longer waits for a key.
        h.bitlocker_waiting.clear();
        for id in &recovery_ids {
            if !h.protector_ids.contains(id) {
                h.protector_ids.push(id.clone());
            }
        }
    }) {
        return r;
    }
    s.fleet
        .event(mac, EventSource::Agent, "agent-report", summary, now);
    if let Err(r) = flush(&s).await {
        return r;
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// `POST /agent/v1/bitlocker-key` (HTTPS only, like the whole agent API): the release policy is
/// [`fleet::escrow::decide`]; every answer is recorded and flushed before it is sent.
pub async fn bitlocker_key(
    State(s): State<Arc<Shared>>,
    req: Result<Json<KeyRequest>, JsonRejection>,
) -> Response {
    let now = crate::now_ms();
    let k = match body(req) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let (mac, _) = match authenticate(&s, &k.mac, &k.token, now) {
        Ok(x) => x,
        Err(r) => return r,
    };
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
        tokio::task::spawn_blocking(move || fleet.release_key(mac, &ids, &volume, now)).await;
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
        } => Json(KeyReply {
            protector_id: Some(protector_id),
            recovery_password: Some(password.expose().to_string()),
            ..none
        })
        .into_response(),
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
