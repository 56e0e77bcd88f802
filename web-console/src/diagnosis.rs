//! The fleet's diagnosis (`GET /api/v1/diagnosis`, the console's Diagnosis page, `unbrick
//! diagnose`): which machines do not reach the recovery agent and why, from what the server saw
//! of their boot chains ([`fleet::bootdiag`]), grouped by problem with the advice for each.
// axum's Response is the natural error of these handler helpers (a 4xx with its reason).
#![allow(clippy::result_large_err)]
use crate::auth::{error, AuthErrors, Caller};
use crate::{query, Console};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet::bootdiag::{self, Finding, Group};
use fleet::crashes::{CrashGroup, EventGroup};
use fleet::filegroups::{FileGroup, FileScan};
use fleet::Mac;
use serde::Serialize;
use std::sync::Arc;

/// One host whose boot chain stops.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostFinding {
    /// Its MAC address.
    pub mac: String,
    /// Its name (inventory, else the name on its disk).
    pub name: Option<String>,
    /// Its state.
    pub state: String,
    /// What stops it.
    pub finding: Finding,
}

/// The fleet's boot-chain diagnosis.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DiagnosisView {
    /// When it was made (ISO 8601, UTC).
    pub generated: String,
    /// Hosts looked at: those that network-booted and are not done.
    pub looked_at: usize,
    /// Hosts by problem, in chain order.
    pub boot: Vec<Group>,
    /// What is crashing the fleet: every host's reported kernel crash dumps by bugcheck, most
    /// hosts first.
    pub crashes: Vec<CrashGroup>,
    /// The same from the System event logs of the read-only scans: bugcheck, Kernel-Power 41
    /// and unexpected-shutdown events by kind and code, most hosts first.
    pub events: Vec<EventGroup>,
    /// Which file it is: the files of the read-only scans (`inspect` rules) by path and
    /// content, counted on crashing and on other hosts, suspects first.
    pub files: FileScan,
    /// Every host with a finding (at most [`MAX_HOSTS`]).
    pub hosts: Vec<HostFinding>,
}

/// Most hosts the view lists one by one (the groups count them all).
pub const MAX_HOSTS: usize = 5_000;

/// Works out the diagnosis at `now_ms` from the host table and each candidate's timeline
/// (reads the store: call it off the async runtime).
pub fn of_fleet(
    fleet: &fleet_service::FleetIo,
    now_ms: u64,
) -> Result<DiagnosisView, fleet::StoreError> {
    let candidates: Vec<(Mac, Option<String>, String)> = fleet.with_hosts(|h| {
        let mut v: Vec<_> = h
            .values()
            .filter(|r| r.netboot_ms > 0 && !r.state.is_done() && !r.skipped)
            .map(|r| {
                (
                    r.mac,
                    r.hostname.clone().or_else(|| r.name_on_disk.clone()),
                    r.state.name().to_string(),
                )
            })
            .collect();
        v.sort_by_key(|(m, _, _)| *m);
        v
    });
    let looked_at = candidates.len();
    let (crashes, events, files) = fleet.with_hosts(|h| {
        let mut v: Vec<_> = h.values().collect();
        v.sort_by_key(|r| r.mac);
        (
            fleet::crashes::group(v.iter().copied()),
            fleet::crashes::group_events(v.iter().copied()),
            fleet::filegroups::group(v),
        )
    });
    let grace = bootdiag::Grace::default();
    let mut hosts: Vec<HostFinding> = Vec::new();
    for (mac, name, state) in candidates {
        let ev = fleet.store().events(mac)?;
        if let Some(finding) = bootdiag::diagnose(&ev, now_ms, grace) {
            hosts.push(HostFinding {
                mac: mac.to_string(),
                name,
                state,
                finding,
            });
        }
    }
    let boot = bootdiag::group(hosts.iter().map(|h| (h.mac.clone(), &h.finding)));
    hosts.truncate(MAX_HOSTS);
    Ok(DiagnosisView {
        generated: query::iso(now_ms),
        looked_at,
        boot,
        crashes,
        events,
        files,
        hosts,
    })
}

/// [`of_fleet`] on a blocking thread.
pub async fn compute(c: &Console, now_ms: u64) -> Result<DiagnosisView, Response> {
    let fleet = c.fleet.clone();
    tokio::task::spawn_blocking(move || of_fleet(&fleet, now_ms))
        .await
        .map_err(|e| crate::api::fleet_error(fleet::StoreError::Rejected(e.to_string())))?
        .map_err(crate::api::fleet_error)
}

/// Why machines do not reach the recovery agent
///
/// The boot chain of every host that network-booted and is not done, from what the server saw
/// (offers, TFTP and HTTP fetches, the agent's hello), grouped by problem with the advice for
/// each: an offer whose boot file was never fetched, TFTP that stops at the same block, shim
/// refused by the firmware's Secure Boot database, a boot loader that never fetched the kernel,
/// a payload whose agent never said hello.
#[utoipa::path(get, path = "/api/v1/diagnosis", operation_id = "diagnosis",
    responses((status = 200, description = "The diagnosis", body = DiagnosisView), AuthErrors))]
pub async fn api(State(c): State<Arc<Console>>, _who: Caller) -> Response {
    match compute(&c, fleet_service::now_ms()).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// A drafted rules document for one file group, for the admin to check, sign offline and
/// install, and the canary-first campaign that would apply it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DraftRule {
    /// The file group it is drafted from.
    pub file: FileGroup,
    /// The rules document (JSON, exactly as `unbrick rules sign` wants it).
    pub document: String,
    /// The hosts that have the file (every one, not only the listed examples).
    pub hosts: Vec<String>,
    /// The steps: sign offline, install, then the campaign (shell commands).
    pub steps: Vec<String>,
}

/// Which file group to draft a rule for.
#[derive(Debug, Clone, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DraftQuery {
    /// The file's SHA-256 (hex).
    pub sha256: String,
    /// Its path, when the same content sits at more than one path.
    pub path: Option<String>,
}

/// Days a drafted rules document is valid (it expires; a new draft replaces it).
pub const DRAFT_DAYS: u64 = 14;

/// The rules document that quarantines exactly the file of `g`: its path, its first bytes as
/// the magic, its last-write window (one second either side of the times seen), quarantine.
pub fn draft_rules(g: &FileGroup, now_unix: u64) -> Result<signing::RuleSet, String> {
    let short: String = g.sha256.chars().take(12).collect();
    let at = |t: i64| signing::time::format_utc(t.max(0) as u64);
    let rules = signing::RuleSet {
        format: 1,
        id: format!("draft-{short}"),
        version: now_unix,
        expires: signing::time::format_utc(now_unix + DRAFT_DAYS * 86_400),
        description: format!(
            "Drafted by unbrick from the fleet's scan: {} (sha256 {}) on {} crashing host(s) and {} host(s) that do not crash",
            g.path, g.sha256, g.crashing_hosts, g.hosts_without_crashes
        ),
        rules: vec![signing::Rule {
            id: format!("quarantine-{short}"),
            description: format!(
                "{} with these first bytes, last written between {} and {}",
                g.path,
                at(g.first_written_unix),
                at(g.last_written_unix)
            ),
            path: g.path.clone(),
            magic: (!g.head.is_empty()).then(|| g.head.to_uppercase()),
            last_write_after: Some(at(g.first_written_unix - 1)),
            last_write_before: Some(at(g.last_written_unix + 1)),
            changed_within_days: None,
            action: signing::Action::Quarantine,
        }],
    };
    rules.validate().map_err(|e| e.to_string())?;
    Ok(rules)
}

/// Up to this many hosts, the drafted campaign names them on its command line; more go
/// through `--hosts-file`.
pub const INLINE_HOSTS: usize = 20;

/// `s` as one POSIX shell word (single quotes; a quote inside closes, escapes and reopens).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The draft for the file with `sha256` (and `path`), from the host table; `None` when no
/// scanned host has it.
pub fn draft(
    fleet: &fleet_service::FleetIo,
    sha256: &str,
    path: Option<&str>,
    now_unix: u64,
) -> Result<Option<DraftRule>, String> {
    let want = |p: &str, sha: &str| {
        sha.eq_ignore_ascii_case(sha256) && path.is_none_or(|w| w.eq_ignore_ascii_case(p))
    };
    let (scan, mut hosts) = fleet.with_hosts(|h| {
        let mut v: Vec<_> = h.values().collect();
        v.sort_by_key(|r| r.mac);
        let hosts: Vec<String> = v
            .iter()
            .filter(|r| {
                r.last_report.as_ref().is_some_and(|rep| {
                    rep.volumes
                        .iter()
                        .flat_map(|vol| &vol.inspected)
                        .any(|f| want(&f.path, &f.sha256))
                })
            })
            .map(|r| r.mac.to_string())
            .collect();
        (fleet::filegroups::group(v), hosts)
    });
    let Some(g) = scan.files.into_iter().find(|g| want(&g.path, &g.sha256)) else {
        return Ok(None);
    };
    let rules = draft_rules(&g, now_unix)?;
    let document = String::from_utf8(rules.to_json()).map_err(|e| e.to_string())?;
    hosts.dedup();
    let canary = hosts.len().clamp(1, 5);
    let mut steps = vec![
        "# 1. Check the document, save it as active.json and sign it on the offline signing machine:".into(),
        "unbrick rules sign active.json --key /media/usb/unbrick-keys/signing.key".into(),
        "# 2. Put active.json and active.json.sig into the server's rules folder and restart it:".into(),
        "install -m 0644 active.json active.json.sig /var/lib/unbrick/rules/ && systemctl restart unbrick".into(),
        format!(
            "# 3. Canary first: {canary} host(s), then a quarter, then all {} that have the file:",
            hosts.len()
        ),
    ];
    let waves = format!("--waves {canary},25%,100% --max-failure-rate 0 --soak-minutes 10");
    if hosts.len() <= INLINE_HOSTS {
        steps.push(format!(
            "unbrick campaign create --name {} --hosts {} {waves}",
            rules.id,
            hosts.join(",")
        ));
    } else {
        // Thousands of MACs do not fit one shell argument: they go through a file.
        steps.push(format!(
            "unbrick diagnose --draft-rule {}{} --hosts-out hosts.txt",
            g.sha256.to_ascii_lowercase(),
            path.map(|p| format!(" --path {}", shell_quote(p)))
                .unwrap_or_default()
        ));
        steps.push(format!(
            "unbrick campaign create --name {} --hosts-file hosts.txt {waves}",
            rules.id
        ));
    }
    steps.push("unbrick campaign start ID   # the ID campaign create printed".into());
    Ok(Some(DraftRule {
        file: g,
        document,
        hosts,
        steps,
    }))
}

/// Draft a rule that quarantines one file of the scan
///
/// For the file with this SHA-256 (and path): a rules document that quarantines exactly it
/// (its path, its first bytes as the magic, its last-write window), to be checked and signed
/// offline (`unbrick rules sign`), and the canary-first campaign over the hosts that have it.
/// Nothing is changed by this call.
#[utoipa::path(get, path = "/api/v1/diagnosis/draft-rule", operation_id = "draft_rule",
    params(DraftQuery),
    responses((status = 200, description = "The draft", body = DraftRule),
        (status = 400, description = "No sha256, or a parameter this endpoint does not take", body = ErrorBody),
        (status = 404, description = "No scanned host has that file", body = ErrorBody),
        (status = 422, description = "The file cannot be named by a rule", body = ErrorBody),
        AuthErrors))]
pub async fn draft_api(
    State(c): State<Arc<Console>>,
    _who: Caller,
    crate::extract::StrictQuery(q): crate::extract::StrictQuery<DraftQuery>,
) -> Response {
    let fleet = c.fleet.clone();
    let now = fleet_service::now_ms() / 1000;
    let r =
        tokio::task::spawn_blocking(move || draft(&fleet, &q.sha256, q.path.as_deref(), now)).await;
    match r {
        Ok(Ok(Some(d))) => Json(d).into_response(),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            "no scanned host has a file with that SHA-256 (and path)",
        ),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
