//! Plain-text answers of the boot edge (firmware, iPXE and the agent read text), and the one
//! mapping from a fleet error to its HTTP status.
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// A `text/plain` answer.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

/// The HTTP status of a fleet error (`fleet_service::Error::http_status`), as axum's type.
pub fn status_of(e: &fleet_service::Error) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A fleet error as a text answer; a server fault is logged with its reason.
pub fn fleet_error(e: &fleet_service::Error) -> Response {
    if e.is_server_fault() {
        tracing::error!("{e}");
    }
    text(status_of(e), format!("{e}\n"))
}
