//! The admin API handlers (`/api/v1`). Bodies and queries are parsed by hand from the raw request
//! so that every malformed input gets a 4xx with a reason (never axum's plain-text rejection or
//! a 500).
// axum's Response is the natural error of these handler helpers (a 4xx with its reason).
#![allow(clippy::result_large_err)]
use crate::auth::AuthErrors;
use crate::auth::{error, Caller};
use crate::extract::StrictQuery;
use crate::progress::StageView;
use crate::query::{self, Filter, HostImport, RowError};
use crate::Console;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet::agent::{FileRecord, VolumeReport};
use fleet::{EventSource, HostRecord, Mac};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

type Res = Result<Response, Response>;

fn done(r: Res) -> Response {
    r.unwrap_or_else(|e| e)
}

fn now() -> u64 {
    fleet_service::now_ms()
}

/// The host-table filter from a query string: typed by [`StrictQuery`] (unknown, repeated or
/// malformed parameters are a 400), then checked (state and flag names, page bounds).
#[allow(clippy::result_large_err)]
pub fn parse_filter(q: Option<&str>) -> Result<Filter, Response> {
    let f: Filter = crate::extract::parse(q.unwrap_or(""))?;
    checked(f)
}

#[allow(clippy::result_large_err)]
fn checked(f: Filter) -> Result<Filter, Response> {
    f.validate()
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    Ok(f)
}

/// `GET /api/v1/export`'s query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `csv` (the default) or `json`.
    #[serde(default)]
    pub format: Option<String>,
}

/// The view of a host the API returns.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostView {
    /// MAC address.
    pub mac: String,
    /// Host name, from the inventory.
    pub hostname: Option<String>,
    /// The Windows computer name the agent read from the disk (SYSTEM hive): shown and
    /// searchable, never used to decide anything.
    pub name_on_disk: Option<String>,
    /// Site, from the inventory.
    pub site: Option<String>,
    /// Tags, from the inventory.
    pub tags: Vec<String>,
    /// State name (`remediated`, `needs-attention`, ...).
    pub state: String,
    /// Why, for needs-attention and failed.
    pub reason: Option<String>,
    /// Since when it is in that state (ISO 8601, UTC).
    pub state_since: String,
    /// When it was first seen or imported.
    pub first_seen: String,
    /// When it was last seen on the network.
    pub last_seen: String,
    /// Last IPv4 address.
    pub ip: Option<String>,
    /// SMBIOS UUID.
    pub uuid: Option<String>,
    /// SMBIOS serial number.
    pub serial: Option<String>,
    /// What it last booted as (`PXE UefiX64`, `Windows`).
    pub client: Option<String>,
    /// How often the payload was handed out.
    pub payload_boots: u32,
    /// Approved for the payload (when approval is required).
    pub approved: bool,
    /// Skipped: never gets the payload.
    pub skipped: bool,
    /// An admin's notes.
    pub notes: String,
    /// Recovery-password protector IDs of its volumes, from the admin's import (the only
    /// protector inventory a key release is checked against).
    pub protector_ids: Vec<String>,
    /// Recovery-password protector IDs the agent reported on the disk (informational).
    pub reported_protectors: Vec<String>,
    /// The machine the outstanding per-boot token went to, and what bound it (`IP a (MAC m)`,
    /// `layer 2`).
    pub boot_peer: Option<String>,
    /// Two machines claimed this host's MAC: which. No key leaves automatically until an admin
    /// retries the host.
    pub claim_conflict: Option<String>,
    /// Its management controller, as an admin may see it (never the secret).
    pub controller: Option<String>,
    /// The campaign scope in which an admin approved this host's key release.
    pub key_release_approved: Option<String>,
    /// Recovery-password protectors the agent waits for a key for (paste one to go on).
    pub bitlocker_waiting: Vec<String>,
    /// A recovery key left escrow for this host: rotate it in Windows.
    pub rotate_bitlocker_key: bool,
    /// The agent's last report.
    pub last_report: Option<ReportView>,
}

/// The agent's last report, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReportView {
    /// The agent's ID for this report (its retries carry the same one).
    pub report_id: String,
    /// `remediated`, `clean`, `nothing-found`, `needs-attention`, `failed` or `restored`.
    pub result: String,
    /// Why.
    pub reason: Option<String>,
    /// Every volume looked at.
    pub volumes: Vec<VolumeReport>,
    /// Every file quarantined or restored.
    pub files: Vec<FileRecord>,
    /// The rules the run used.
    pub rules_id: Option<String>,
    /// Their version.
    pub rules_version: Option<u64>,
    /// How long the agent took, milliseconds.
    pub agent_ms: u64,
}

/// One page of hosts, as `GET /api/v1/hosts` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostPage {
    /// Hosts that pass the filter.
    pub total: usize,
    /// This page's number, from 1.
    pub page: usize,
    /// Hosts per page.
    pub per_page: usize,
    /// How many pages.
    pub pages: usize,
    /// This page's hosts, sorted by MAC.
    pub hosts: Vec<HostView>,
}

/// The API's view of a host record.
pub fn view(h: &HostRecord) -> HostView {
    HostView {
        mac: h.mac.to_string(),
        hostname: h.hostname.clone(),
        name_on_disk: h.name_on_disk.clone(),
        site: h.site.clone(),
        tags: h.tags.clone(),
        state: h.state.name().to_string(),
        reason: h.state.reason().map(str::to_string),
        state_since: query::iso(h.state_since_ms),
        first_seen: query::iso(h.first_seen_ms),
        last_seen: query::iso(h.last_seen_ms),
        ip: h.ip.map(|i| i.to_string()),
        uuid: h.uuid.clone(),
        serial: h.serial.clone(),
        client: h.last_kind.map(fleet::ClientKind::label),
        payload_boots: h.payload_boots,
        approved: h.approved,
        skipped: h.skipped,
        notes: h.notes.clone(),
        protector_ids: h.protector_ids.clone(),
        reported_protectors: h.reported_protectors.clone(),
        boot_peer: h
            .boot_peer
            .as_ref()
            .map(|p| format!("{p}, bound by {}", p.evidence)),
        claim_conflict: h.claim_conflict.clone(),
        controller: h.controller.as_ref().map(|c| c.to_string()),
        key_release_approved: h.key_release_approved.clone(),
        bitlocker_waiting: h.bitlocker_waiting.clone(),
        rotate_bitlocker_key: h.rotate_bitlocker_key,
        last_report: h.last_report.as_ref().map(|r| ReportView {
            report_id: r.report_id.clone(),
            result: query::result_name(r.result),
            reason: r.reason.clone(),
            volumes: r.volumes.clone(),
            files: r.files.clone(),
            rules_id: r.rules_id.clone(),
            rules_version: r.rules_version,
            agent_ms: r.agent_ms,
        }),
    }
}

/// One event of a host's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// When (ISO 8601, UTC).
    pub time: String,
    /// When (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// Who caused it.
    pub source: EventSource,
    /// What kind of event (`dhcp-discover`, `state`, `agent-report`, ...).
    pub kind: String,
    /// What happened, in words.
    pub message: String,
}

/// The API's view of an event.
pub fn event_view(e: &fleet::Event) -> EventView {
    EventView {
        time: query::iso(e.time_ms),
        time_ms: e.time_ms,
        source: e.source,
        kind: e.kind.clone(),
        message: e.message.clone(),
    }
}

/// Host counts by state and the recovery's progress
#[utoipa::path(get, path = "/api/v1/summary", operation_id = "summary",
    responses((status = 200, description = "Counts", body = Summary), AuthErrors))]
pub async fn summary(State(c): State<Arc<Console>>, _who: Caller) -> Response {
    Json(c.fleet.with_hosts(|h| query::summary(h.values()))).into_response()
}

/// The fleet's progress over time: hosts per group of states, the recovery rate, the
/// estimated finish
#[utoipa::path(get, path = "/api/v1/progress", operation_id = "progress",
    responses((status = 200, description = "Samples and the estimate", body = ProgressView), AuthErrors))]
pub async fn progress(State(c): State<Arc<Console>>, _who: Caller) -> Response {
    let now = fleet_service::now_ms();
    Json(crate::progress::view(&c.fleet.progress(), now)).into_response()
}

/// Hosts, filtered and paginated (sorted by MAC)
#[utoipa::path(get, path = "/api/v1/hosts", operation_id = "listHosts",
    params(
        ("state" = Option<String>, Query, description = "One state or several separated by commas: unknown, seen, waiting, booting, agent-up, scanning, unlocked, remediated, clean, needs-attention, failed, rebooted, recovered"),
        ("site" = Option<String>, Query, description = "Site, as imported"),
        ("tag" = Option<String>, Query, description = "One tag, as imported"),
        ("q" = Option<String>, Query, description = "Text in MAC, hostname, name on disk, IP, serial, UUID, site or failure reason"),
        ("flag" = Option<HostFlag>, Query, description = "key-needed: waiting for a pasted BitLocker recovery key; rotate-key: a recovery key was released and should be rotated"),
        ("page" = Option<u32>, Query, minimum = 1, description = "Page number, from 1"),
        ("per_page" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Hosts per page (default 50)"),
    ),
    responses((status = 200, description = "One page", body = HostPage), (status = 400, description = "Bad filter", body = ErrorBody), AuthErrors))]
pub async fn list_hosts(
    State(c): State<Arc<Console>>,
    _who: Caller,
    StrictQuery(f): StrictQuery<Filter>,
) -> Response {
    done((|| {
        let f = checked(f)?;
        let p = c.fleet.with_hosts(|h| query::page(h.values(), &f));
        let out = HostPage {
            total: p.total,
            page: p.page,
            per_page: p.per_page,
            pages: p.pages,
            hosts: p.hosts.iter().map(view).collect::<Vec<_>>(),
        };
        Ok(Json(out).into_response())
    })())
}

/// A MAC from a path; a 400 naming the mistake.
#[allow(clippy::result_large_err)]
pub fn parse_mac(s: &str) -> Result<Mac, Response> {
    s.parse()
        .map_err(|e: String| error(StatusCode::BAD_REQUEST, e))
}

/// A host and its history.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Detail {
    /// The host.
    host: HostView,
    /// The latest attempt, stage by stage (DHCP to back in Windows), from the events.
    stages: Vec<StageView>,
    events: Vec<EventView>,
}

/// One host with its whole history
#[utoipa::path(get, path = "/api/v1/hosts/{mac}", operation_id = "hostDetail",
    params(("mac" = String, Path, description = "MAC address, e.g. 52:54:00:12:34:56")),
    responses((status = 200, description = "The host and its events", body = Detail), (status = 400, description = "Not a MAC address", body = ErrorBody), (status = 404, description = "Unknown host", body = ErrorBody), AuthErrors))]
pub async fn host_detail(
    State(c): State<Arc<Console>>,
    _who: Caller,
    Path(mac): Path<String>,
) -> Response {
    let r = async {
        let mac = parse_mac(&mac)?;
        let host = c
            .fleet
            .host(mac)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no host {mac}")))?;
        let events = store_events(&c, mac).await?;
        Ok(Json(Detail {
            host: view(&host),
            stages: crate::progress::stages(&events),
            events: events.iter().map(event_view).collect(),
        })
        .into_response())
    };
    done(r.await)
}

/// A store failure, as the API answers it: 503 with the reason (never the client's fault).
fn unavailable(e: impl std::fmt::Display) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
}

/// The one mapping of a fleet error to an API answer: its status from
/// [`fleet_service::Error::http_status`], the reason in the body; a server fault is logged.
pub fn fleet_error(e: impl Into<fleet_service::Error>) -> Response {
    let (status, reason) = crate::auth::failure(e.into());
    error(status, reason)
}

/// Reads from the store off the async threads.
async fn read_store<T: Send + 'static>(
    c: &Console,
    f: impl FnOnce(&dyn fleet::Store) -> Result<T, fleet::StoreError> + Send + 'static,
) -> Result<T, Response> {
    let store = c.fleet.store_arc();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(unavailable)?
        .map_err(fleet_error)
}

/// A host's history from the store.
pub async fn store_events(c: &Console, mac: Mac) -> Result<Vec<fleet::Event>, Response> {
    read_store(c, move |s| s.events(mac)).await
}

/// A host's newest `n` events from the store.
pub async fn recent_events(c: &Console, mac: Mac, n: usize) -> Result<Vec<fleet::Event>, Response> {
    read_store(c, move |s| s.recent_events(mac, n)).await
}

/// What an import did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = HostImportResult)]
pub struct ImportResult {
    /// Hosts that were new.
    pub created: usize,
    /// Hosts that existed and were updated.
    pub updated: usize,
    /// The refused rows, by line.
    pub errors: Vec<RowError>,
}

/// Applies validated import rows: creates or updates the hosts (inventory fields only; their
/// state is untouched), records an event each and one audit entry, and waits for the disk.
pub async fn apply_import(
    c: &Console,
    actor: &str,
    rows: Vec<HostImport>,
    errors: Vec<RowError>,
) -> Result<ImportResult, Response> {
    let n = c
        .fleet
        .import_inventory(actor, &rows, errors.len(), None, now())
        .await
        .map_err(fleet_error)?;
    Ok(ImportResult {
        created: n.created,
        updated: n.updated,
        errors,
    })
}

/// Largest request body the API reads (a 100,000-host CSV is ~5 MB).
pub const MAX_BODY: usize = 16 << 20;

/// Parses an import body by its Content-Type (CSV or JSON); 400/415 with the reason.
#[allow(clippy::result_large_err)]
pub fn parse_import(
    content_type: &str,
    body: &[u8],
) -> Result<(Vec<HostImport>, Vec<RowError>), Response> {
    let text = std::str::from_utf8(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"))?;
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let parsed = match ct.as_str() {
        "text/csv" | "application/csv" | "text/plain" => query::parse_csv(text),
        "application/json" => query::parse_json(text),
        other => {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {other:?}: send text/csv or application/json"),
            ))
        }
    };
    parsed.map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

/// Create or update hosts from CSV (header mac,hostname,site,tags) or JSON; bad rows are reported by line, the rest imported
#[utoipa::path(post, path = "/api/v1/hosts/import", operation_id = "importHosts",
    request_body(content = Vec<ImportRow>, description = "CSV (text/csv, header mac,hostname,site,tags; tags separated by ;) or a JSON array", content_type = "application/json"),
    responses((status = 200, description = "Imported", body = HostImportResult), (status = 400, description = "Not CSV or JSON, or no mac column", body = ErrorBody), (status = 413, description = "Body over 16 MiB"), (status = 415, description = "Neither text/csv nor application/json", body = ErrorBody), (status = 422, description = "No row was good", body = HostImportResult), AuthErrors))]
pub async fn import_hosts(
    State(c): State<Arc<Console>>,
    who: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (rows, errors) = parse_import(ct, &body)?;
        if rows.is_empty() && !errors.is_empty() {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(ImportResult {
                    created: 0,
                    updated: 0,
                    errors,
                }),
            )
                .into_response());
        }
        let res = apply_import(&c, &who.actor, rows, errors).await?;
        Ok(Json(res).into_response())
    };
    done(r.await)
}

pub use fleet_service::actions::{Action, ActionOutcome, ActionResult, MAX_BULK};

/// `POST /api/v1/hosts/actions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// What to do.
    pub action: Action,
    /// To which hosts (MAC addresses).
    pub macs: Vec<String>,
}

/// Runs one action on many hosts; each host's result is reported, one audit entry in all.
pub async fn apply_action(
    c: &Console,
    actor: &str,
    action: Action,
    macs: &[String],
) -> Result<ActionResult, Response> {
    c.fleet
        .admin_action(actor, action, macs, now())
        .await
        .map_err(fleet_error)
}

/// Run one action on many hosts: approve, retry, skip, mark-done, forget
#[utoipa::path(post, path = "/api/v1/hosts/actions", operation_id = "bulkAction",
    request_body(content = ActionRequest, content_type = "application/json"),
    responses((status = 200, description = "Each host's outcome", body = ActionResult), (status = 400, description = "Bad request (no hosts, too many, unknown action)", body = ErrorBody), (status = 413, description = "Body too large"), AuthErrors))]
pub async fn bulk_action(State(c): State<Arc<Console>>, who: Caller, body: Bytes) -> Response {
    let r = async {
        let req: ActionRequest = serde_json::from_slice(&body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"action\": approve|retry|skip|mark-done|forget|approve-key|wake, \"macs\": [...]}}: {e}"),
            )
        })?;
        let res = apply_action(&c, &who.actor, req.action, &req.macs).await?;
        Ok(Json(res).into_response())
    };
    done(r.await)
}

/// The fleet report: per host, state, files quarantined with hashes, times
#[utoipa::path(get, path = "/api/v1/export", operation_id = "export",
    params(("format" = Option<ExportFormat>, Query, description = "json (the default) or csv")),
    responses((status = 200, description = "The report", body = Vec<ReportRow>, content_type = ["application/json", "text/csv"]), (status = 400, description = "Unknown format or parameter", body = ErrorBody), AuthErrors))]
pub async fn export(
    State(c): State<Arc<Console>>,
    _who: Caller,
    StrictQuery(eq): StrictQuery<ExportQuery>,
) -> Response {
    {
        let mut rows: Vec<query::ReportRow> = c
            .fleet
            .with_hosts(|h| h.values().map(query::report_row).collect());
        rows.sort_by(|a, b| a.mac.cmp(&b.mac));
        let stamp = query::iso(now()).replace([':', '-'], "");
        match eq.format.as_deref().unwrap_or("json") {
            "csv" => (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"unbrick-fleet-{stamp}.csv\""),
                    ),
                ],
                query::export_csv(&rows),
            )
                .into_response(),
            "json" => (
                [(
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"unbrick-fleet-{stamp}.json\""),
                )],
                Json(rows),
            )
                .into_response(),
            other => error(
                StatusCode::BAD_REQUEST,
                format!("format {other:?}: use csv or json"),
            ),
        }
    }
}

/// Live fleet changes as server-sent events: `hello` once, then `change` (JSON: mac, state, reason, event) per change, `resync` when the client fell behind
///
/// Server-sent events: one `change` event per fleet change (JSON: mac, state, reason, event); a
/// `resync` event when this client fell behind and should reload.
#[utoipa::path(get, path = "/api/v1/events", operation_id = "events",
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), AuthErrors))]
pub async fn events(State(c): State<Arc<Console>>, who: Caller) -> Response {
    let rx = c.fleet.subscribe();
    // The stream ends when the caller's token is revoked or its session ends: checked at each
    // change and every few seconds between.
    let changes = tokio_stream::wrappers::BroadcastStream::new(rx).map(Some);
    let ticks = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(REVALIDATE).await;
        Some((None, ()))
    });
    let cred = who.credential;
    let c2 = c.clone();
    let stream = futures_util::stream::select(changes, ticks)
        .take_while(move |_| std::future::ready(cred.still_valid(&c2, fleet_service::now_ms())))
        .filter_map(|m| {
            std::future::ready(m.map(|m| {
                Ok::<_, std::convert::Infallible>(match m {
                    Ok(change) => SseEvent::default()
                        .event("change")
                        .json_data(&change)
                        .unwrap_or_else(|_| SseEvent::default().event("resync").data("encode")),
                    Err(_) => SseEvent::default().event("resync").data("lagged"),
                })
            }))
        });
    let hello =
        futures_util::stream::once(async { Ok(SseEvent::default().event("hello").data("live")) });
    Sse::new(hello.chain(stream))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// How often a live event stream checks that its credential still holds.
pub const REVALIDATE: Duration = Duration::from_secs(5);

/// The audit log from the store, oldest first.
pub async fn audit_log(c: &Console) -> Result<Vec<fleet::store::AuditEntry>, Response> {
    read_store(c, |s| s.audit_log()).await
}

/// One audit log entry as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditView {
    /// When (ISO 8601, UTC).
    pub time: String,
    /// Who (token name, `console:NAME`, `agent MAC`, `cli:USER`).
    pub actor: String,
    /// What (`import`, `retry`, `bitlocker-reveal`, ...).
    pub action: String,
    /// The details, never a secret.
    pub detail: String,
}

/// The audit log, newest first (at most 1000 entries)
///
/// The audit log, newest first (at most 1000 entries).
#[utoipa::path(get, path = "/api/v1/audit", operation_id = "audit",
    responses((status = 200, description = "Entries", body = Vec<AuditView>), AuthErrors))]
pub async fn audit(State(c): State<Arc<Console>>, _who: Caller) -> Response {
    let r = async {
        let mut log = audit_log(&c).await?;
        log.reverse();
        log.truncate(1000);
        Ok(Json(
            log.into_iter()
                .map(|a| AuditView {
                    time: query::iso(a.time_ms),
                    actor: a.actor,
                    action: a.action,
                    detail: a.detail,
                })
                .collect::<Vec<_>>(),
        )
        .into_response())
    };
    done(r.await)
}

/// Prometheus text format: hosts by state (needs a token like the rest of the API).
pub async fn metrics(State(c): State<Arc<Console>>, _who: Caller) -> Response {
    let s = c.fleet.with_hosts(|h| query::summary(h.values()));
    let mut out =
        String::from("# HELP unbrick_hosts Hosts by state.\n# TYPE unbrick_hosts gauge\n");
    for (state, n) in &s.by_state {
        out.push_str(&format!("unbrick_hosts{{state=\"{state}\"}} {n}\n"));
    }
    out.push_str(&format!(
        "# HELP unbrick_progress_ratio Hosts done over all hosts.\n# TYPE unbrick_progress_ratio gauge\nunbrick_progress_ratio {}\n",
        if s.total == 0 { 0.0 } else { s.done as f64 / s.total as f64 }
    ));
    if let Some(sp) = c.fleet.store().space() {
        out.push_str(&format!(
            "# HELP unbrick_store_free_bytes Free bytes on the data directory's file system.\n# TYPE unbrick_store_free_bytes gauge\nunbrick_store_free_bytes {}\n\
             # HELP unbrick_store_writable 1 while the store accepts writes (0: disk full, below the reserve).\n# TYPE unbrick_store_writable gauge\nunbrick_store_writable {}\n",
            sp.free,
            u8::from(!(sp.full || sp.free < sp.reserve))
        ));
    }
    {
        let h = c.health.read().unwrap();
        out.push_str("# HELP unbrick_expiry_timestamp_seconds When the signed rules and the TLS certificate expire.\n# TYPE unbrick_expiry_timestamp_seconds gauge\n");
        for (what, t) in &h.expiries {
            out.push_str(&format!(
                "unbrick_expiry_timestamp_seconds{{what=\"{what}\"}} {t}\n"
            ));
        }
        out.push_str(&format!(
            "# HELP unbrick_checks The server's own checks (unbrick doctor) that warn or fail; the console lists them.\n# TYPE unbrick_checks gauge\nunbrick_checks{{level=\"warn\"}} {}\nunbrick_checks{{level=\"fail\"}} {}\n",
            h.warned, h.failed
        ));
    }
    fleet_service::metrics::render(&c.counters.lock().unwrap(), &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
