//! The fleet's diagnosis (`GET /api/v1/diagnosis`, the console's Diagnosis page, `unbrick
//! diagnose`): which machines do not reach the recovery agent and why, from what the server saw
//! of their boot chains ([`fleet::bootdiag`]), grouped by problem with the advice for each.
// axum's Response is the natural error of these handler helpers (a 4xx with its reason).
#![allow(clippy::result_large_err)]
use crate::auth::{AuthErrors, Caller};
use crate::{query, Console};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet::bootdiag::{self, Finding, Group};
use fleet::crashes::CrashGroup;
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
    let crashes = fleet.with_hosts(|h| {
        let mut v: Vec<_> = h.values().collect();
        v.sort_by_key(|r| r.mac);
        fleet::crashes::group(v)
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
