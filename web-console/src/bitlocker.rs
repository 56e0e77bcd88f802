//! The admin API for escrowed BitLocker recovery keys: import an export (AD, Entra ID, plain
//! CSV), list them (never the passwords), reveal one (audited, write tokens only), and paste a
//! key for a host whose agent waits. The operations answer `(status, message)` on failure, like
//! the campaign operations, so the API and the console pages share them.
use crate::api::parse_mac;
use crate::auth::{error, failure, Caller, Failure};
use crate::auth::{AuthErrors, Unauthorized};
use crate::Console;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet::escrow::{parse_export, protector_id, RecoveryPassword};
use fleet_service::escrow::ImportResult;
use serde::Deserialize;
use std::sync::Arc;

fn respond(r: Result<Response, Failure>) -> Response {
    r.unwrap_or_else(|(s, m)| error(s, m))
}

/// Runs a blocking escrow operation (store, vault) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> fleet_service::Result<T> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(failure)
}

async fn durable(c: &Console) -> Result<(), Failure> {
    c.fleet
        .durable()
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")))
}

/// Import recovery keys from an Active Directory (msFVE-RecoveryGuid, msFVE-RecoveryPassword, computer name), Entra ID / Intune (Device name, Key ID, Recovery key) or plain (protector_id,recovery_password[,hostname]) CSV; bad rows are reported by line, the rest imported; keys are sealed at rest
///
/// `POST /api/v1/bitlocker/keys`: a CSV export in the body.
#[utoipa::path(post, path = "/api/v1/bitlocker/keys", operation_id = "importBitlockerKeys",
    request_body(content = String, description = "The CSV export", content_type = "text/csv"),
    responses((status = 200, description = "Imported", body = ImportResult), (status = 422, description = "Not an export, or no row was good", body = ErrorBody), (status = 413, description = "Body too large"), AuthErrors))]
pub async fn import(State(c): State<Arc<Console>>, who: Caller, body: Bytes) -> Response {
    respond(
        import_export(&c, &who.actor, body.to_vec())
            .await
            .map(|(status, res)| (status, Json(res)).into_response()),
    )
}

/// Parses and stores an export. The status is 422 when no row was good; a file that is not an
/// export at all is a failure.
pub async fn import_export(
    c: &Console,
    actor: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, ImportResult), Failure> {
    let parsed =
        parse_export(&body).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let status = if parsed.rows.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let (fleet, actor) = (c.fleet.clone(), actor.to_string());
    let res =
        blocking(move || fleet.escrow_import(&parsed, &actor, fleet_service::now_ms())).await?;
    durable(c).await?;
    Ok((status, res))
}

/// Escrowed BitLocker recovery keys (never the passwords)
///
/// `GET /api/v1/bitlocker/keys`: every escrowed key without its password.
#[utoipa::path(get, path = "/api/v1/bitlocker/keys", operation_id = "listBitlockerKeys",
    responses((status = 200, description = "{\"keys\": [...]}", body = KeyList), Unauthorized))]
pub async fn list(State(c): State<Arc<Console>>, _who: Caller) -> Response {
    let fleet = c.fleet.clone();
    respond(
        blocking(move || fleet.escrow_list())
            .await
            .map(|keys| Json(serde_json::json!({ "keys": keys })).into_response()),
    )
}

/// An admin asks to see one password (audited); 404 when nothing is escrowed for it.
pub async fn reveal_key(c: &Console, actor: &str, id: &str) -> Result<RecoveryPassword, Failure> {
    let (fleet, actor, pid) = (c.fleet.clone(), actor.to_string(), id.to_string());
    let pw = blocking(move || fleet.escrow_reveal(&pid, &actor, fleet_service::now_ms()))
        .await?
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("no key is escrowed for protector {id}"),
            )
        })?;
    durable(c).await?;
    Ok(pw)
}

/// Show one recovery password (write tokens only; written to the audit log)
///
/// `POST /api/v1/bitlocker/keys/{id}/reveal`: one password, to an admin who asks (audited).
#[utoipa::path(post, path = "/api/v1/bitlocker/keys/{id}/reveal", operation_id = "revealBitlockerKey",
    params(("id" = String, Path, description = "Key protector ID (a GUID, with or without braces)")),
    responses((status = 200, description = "{\"protector_id\", \"recovery_password\"}", body = Object), (status = 400, description = "Not a GUID", body = ErrorBody), (status = 404, description = "Nothing escrowed for it", body = ErrorBody), (status = 422, description = "Refused", body = ErrorBody), AuthErrors))]
pub async fn reveal(
    State(c): State<Arc<Console>>,
    who: Caller,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let id = protector_id(&id).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let pw = reveal_key(&c, &who.actor, &id).await?;
        Ok(Json(serde_json::json!({
            "protector_id": id,
            "recovery_password": pw.expose(),
        }))
        .into_response())
    };
    respond(r.await)
}

/// `POST /api/v1/hosts/{mac}/bitlocker-key`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Paste {
    /// The 48-digit recovery password.
    pub recovery_password: String,
    /// The protector it is for (default: the one the host waits for).
    #[serde(default)]
    pub protector_id: Option<String>,
}

/// Paste a recovery key for a host whose agent waits for one (escrowed and released to this host once; audited)
///
/// `POST /api/v1/hosts/{mac}/bitlocker-key`: an admin pastes the key a waiting agent needs.
#[utoipa::path(post, path = "/api/v1/hosts/{mac}/bitlocker-key", operation_id = "pasteBitlockerKey",
    params(("mac" = String, Path, description = "The host's MAC address")),
    request_body(content = Paste, content_type = "application/json"),
    responses((status = 200, description = "{\"mac\", \"protector_id\"}", body = Object), (status = 400, description = "Bad body or MAC", body = ErrorBody), (status = 404, description = "Unknown host", body = ErrorBody), (status = 422, description = "Bad recovery password or protector ID, or the host waits for no key", body = ErrorBody), (status = 413, description = "Body too large"), AuthErrors))]
pub async fn paste(
    State(c): State<Arc<Console>>,
    who: Caller,
    Path(mac): Path<String>,
    body: Bytes,
) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let p: Paste = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body: {e} (expected {{\"recovery_password\": \"...\", \"protector_id\": optional}})"),
            )
        }
    };
    respond(paste_key(&c, &who.actor, mac, &p).await.map(|id| {
        Json(serde_json::json!({ "mac": mac.to_string(), "protector_id": id })).into_response()
    }))
}

/// Escrows a pasted key for `mac` (validated) and grants it to that host once. Returns the
/// protector ID it was filed under.
pub async fn paste_key(
    c: &Console,
    actor: &str,
    mac: fleet::Mac,
    p: &Paste,
) -> Result<String, Failure> {
    let pw = RecoveryPassword::parse(&p.recovery_password).map_err(|e| failure(e.into()))?;
    if c.fleet.host(mac).is_none() {
        return Err((StatusCode::NOT_FOUND, format!("no host {mac}")));
    }
    let (fleet, actor, pid) = (c.fleet.clone(), actor.to_string(), p.protector_id.clone());
    let id = blocking(move || {
        fleet.escrow_paste(mac, pid.as_deref(), &pw, &actor, fleet_service::now_ms())
    })
    .await?;
    durable(c).await?;
    Ok(id)
}
