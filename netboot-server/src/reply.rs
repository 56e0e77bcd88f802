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

/// A fleet error as a text answer (`fleet_service::Error::answer_status`: a server fault is
/// logged with its reason).
pub fn fleet_error(e: &fleet_service::Error) -> Response {
    let status =
        StatusCode::from_u16(e.answer_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, format!("{e}\n"))
}
