//! The admin API for escrowed BitLocker recovery keys: import an export (AD, Entra ID, plain
//! CSV), list them (never the passwords), reveal one (audited, write tokens only), and paste a
//! key for a host whose agent waits.
use crate::api::parse_mac;
use crate::auth::{caller, error};
use crate::Console;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet::escrow::{parse_export, protector_id, RecoveryPassword};
use serde::Deserialize;
use std::sync::Arc;

type Res = Result<Response, Response>;

fn done(r: Res) -> Response {
    r.unwrap_or_else(|e| e)
}

/// Runs a blocking escrow operation (store, vault) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e))
}

async fn durable(c: &Console) -> Result<(), Response> {
    c.fleet
        .durable()
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")))
}

/// `POST /api/v1/bitlocker/keys`: a CSV export in the body.
pub async fn import(State(c): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let who = caller(&c, &Method::POST, &headers)?;
        import_bytes(&c, &who.actor, body.to_vec()).await
    };
    done(r.await)
}

/// Parses and stores an export; 422 when the file is not an export or no row was good.
pub async fn import_bytes(c: &Arc<Console>, actor: &str, body: Vec<u8>) -> Res {
    let parsed = parse_export(&body).map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let status = if parsed.rows.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let (fleet, actor) = (c.fleet.clone(), actor.to_string());
    let res =
        blocking(move || fleet.escrow_import(&parsed, &actor, netboot_server::now_ms())).await?;
    durable(c).await?;
    Ok((status, Json(res)).into_response())
}

/// `GET /api/v1/bitlocker/keys`: every escrowed key without its password.
pub async fn list(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let r = async {
        caller(&c, &Method::GET, &headers)?;
        let fleet = c.fleet.clone();
        let keys = blocking(move || fleet.escrow_list()).await?;
        Ok(Json(serde_json::json!({ "keys": keys })).into_response())
    };
    done(r.await)
}

/// `POST /api/v1/bitlocker/keys/{id}/reveal`: one password, to an admin who asks (audited).
pub async fn reveal(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let who = caller(&c, &Method::POST, &headers)?;
        let id = protector_id(&id).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let (fleet, actor, pid) = (c.fleet.clone(), who.actor.clone(), id.clone());
        let pw = blocking(move || fleet.escrow_reveal(&pid, &actor, netboot_server::now_ms()))
            .await?
            .ok_or_else(|| {
                error(
                    StatusCode::NOT_FOUND,
                    format!("no key is escrowed for protector {id}"),
                )
            })?;
        durable(&c).await?;
        Ok(Json(serde_json::json!({
            "protector_id": id,
            "recovery_password": pw.expose(),
        }))
        .into_response())
    };
    done(r.await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paste {
    pub recovery_password: String,
    #[serde(default)]
    pub protector_id: Option<String>,
}

/// `POST /api/v1/hosts/{mac}/bitlocker-key`: an admin pastes the key a waiting agent needs.
pub async fn paste(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Bytes,
) -> Response {
    let r = async {
        let who = caller(&c, &Method::POST, &headers)?;
        let mac = parse_mac(&mac)?;
        let p: Paste = serde_json::from_slice(&body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("body: {e} (expected {{\"recovery_password\": \"...\", \"protector_id\": optional}})"),
            )
        })?;
        paste_key(&c, &who.actor, mac, &p).await
    };
    done(r.await)
}

pub async fn paste_key(c: &Arc<Console>, actor: &str, mac: fleet::Mac, p: &Paste) -> Res {
    let pw = RecoveryPassword::parse(&p.recovery_password)
        .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    if c.fleet.host(mac).is_none() {
        return Err(error(StatusCode::NOT_FOUND, format!("no host {mac}")));
    }
    let (fleet, actor, pid) = (c.fleet.clone(), actor.to_string(), p.protector_id.clone());
    let id = blocking(move || {
        fleet.escrow_paste(mac, pid.as_deref(), &pw, &actor, netboot_server::now_ms())
    })
    .await?;
    durable(c).await?;
    Ok(Json(serde_json::json!({ "mac": mac.to_string(), "protector_id": id })).into_response())
}
