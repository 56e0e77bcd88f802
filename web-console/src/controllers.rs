//! The admin API for hosts' management controllers (AMT, Redfish, IPMI, Wake-on-LAN): import a
//! CSV (secrets sealed before anything is kept) and list them (never a secret).
use crate::auth::{error, failure, AuthErrors, Caller, Failure, Unauthorized};
use crate::Console;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet::inventory::RowError;
use serde::Serialize;
use std::sync::Arc;

/// What a controller import did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ControllerImportResult {
    /// Hosts that were new.
    pub created: usize,
    /// Hosts that existed and got their controller set.
    pub updated: usize,
    /// The refused rows, by line (never quoting a secret).
    pub errors: Vec<RowError>,
}

/// One host's controller as the API shows it: never the secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ControllerView {
    /// The host.
    pub mac: String,
    /// Its name, from the inventory.
    pub hostname: Option<String>,
    /// `amt`, `redfish`, `ipmi` or `wol`.
    pub kind: String,
    /// The controller's IPv4 address.
    pub address: Option<String>,
    /// Its port.
    pub port: Option<u16>,
    /// Spoken over TLS.
    pub tls: bool,
    /// Its certificate is pinned by fingerprint.
    pub pinned: bool,
    /// The CA file that verifies it.
    pub ca_file: Option<String>,
    /// The user.
    pub user: Option<String>,
    /// A secret is sealed for it.
    pub secret_sealed: bool,
    /// All of it in words.
    pub summary: String,
}

/// `GET /api/v1/bmc`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ControllerList {
    /// Every host that has one, by MAC.
    pub controllers: Vec<ControllerView>,
}

/// Import management controllers from CSV (mac,kind,address,port,tls,fingerprint,ca_file,user,secret); secrets are sealed at rest and never shown again
///
/// `POST /api/v1/bmc/import`: bad rows are reported by line, the rest imported.
#[utoipa::path(post, path = "/api/v1/bmc/import", operation_id = "importControllers",
    request_body(content = String, description = "mac,kind,address,port,tls,fingerprint,ca_file,user,secret", content_type = "text/csv"),
    responses((status = 200, description = "Imported", body = ControllerImportResult), (status = 400, description = "No mac/kind columns, or not UTF-8", body = ErrorBody), (status = 413, description = "Body too large"), (status = 422, description = "No row was good", body = ControllerImportResult), AuthErrors))]
pub async fn import(State(c): State<Arc<Console>>, who: Caller, body: Bytes) -> Response {
    match import_csv(&c, &who.actor, &body, None).await {
        Ok((status, r)) => (status, Json(r)).into_response(),
        Err((s, m)) => error(s, m),
    }
}

/// Parses and applies a controller CSV; 422 when no row was good.
pub async fn import_csv(
    c: &Console,
    actor: &str,
    body: &[u8],
    origin: Option<&str>,
) -> Result<(StatusCode, ControllerImportResult), Failure> {
    let text = std::str::from_utf8(body)
        .map_err(|_| (StatusCode::BAD_REQUEST, "the CSV is not UTF-8".to_string()))?;
    let (rows, errors) = fleet::bmc::parse_csv(text).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    if rows.is_empty() {
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            ControllerImportResult {
                created: 0,
                updated: 0,
                errors,
            },
        ));
    }
    let n = c
        .fleet
        .import_controllers(actor, rows, errors.len(), origin, fleet_service::now_ms())
        .await
        .map_err(failure)?;
    Ok((
        StatusCode::OK,
        ControllerImportResult {
            created: n.created,
            updated: n.updated,
            errors,
        },
    ))
}

/// Every host's management controller (never a secret)
///
/// `GET /api/v1/bmc`.
#[utoipa::path(get, path = "/api/v1/bmc", operation_id = "listControllers",
    responses((status = 200, description = "The controllers", body = ControllerList), Unauthorized))]
pub async fn list(State(c): State<Arc<Console>>, _who: Caller) -> Response {
    let controllers = c
        .fleet
        .controllers()
        .into_iter()
        .map(|(mac, hostname, k)| ControllerView {
            mac: mac.to_string(),
            hostname,
            kind: k.kind.name().to_string(),
            address: k.address.map(|a| a.to_string()),
            port: k.port,
            tls: k.tls,
            pinned: k.fingerprint.is_some(),
            ca_file: k.ca_file.clone(),
            user: k.user.clone(),
            secret_sealed: k.sealed_secret.is_some(),
            summary: k.to_string(),
        })
        .collect();
    Json(ControllerList { controllers }).into_response()
}
