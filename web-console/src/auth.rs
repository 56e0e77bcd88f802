//! Who is asking: a bearer token (scripts) or a console session (people, logged in with a token).
//! Sessions live in memory (a server restart logs people out); each carries its CSRF token.
use crate::Console;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Mutex;

/// The console's session cookie: `__Host-` (the browser keeps it only if it was set over HTTPS,
/// with `Secure`, for this host and path `/`).
pub const COOKIE: &str = "__Host-unbrick_session";
/// Sessions end after this long.
pub const SESSION_MS: u64 = 12 * 3600 * 1000;

/// A logged-in console user.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token's name it logged in with.
    pub name: String,
    /// Whether it may only read.
    pub read_only: bool,
    /// The CSRF token its forms and scripts must send.
    pub csrf: String,
    /// When it ends.
    pub expires_ms: u64,
}

/// The console's sessions, in memory.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    /// Opens a session; returns its id (the cookie value).
    pub fn open(&self, name: &str, read_only: bool, now_ms: u64) -> (String, Session) {
        let id = crate::tokens::random_id();
        let s = Session {
            name: name.to_string(),
            read_only,
            csrf: crate::tokens::random_id(),
            expires_ms: now_ms + SESSION_MS,
        };
        let mut all = self.0.lock().unwrap();
        all.retain(|_, s| s.expires_ms > now_ms);
        all.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The session `id`, unless it ended.
    pub fn get(&self, id: &str, now_ms: u64) -> Option<Session> {
        self.0
            .lock()
            .unwrap()
            .get(id)
            .filter(|s| s.expires_ms > now_ms)
            .cloned()
    }

    /// Ends a session (log out).
    pub fn close(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name (audit log: `token:ops` or `console:ops`).
    pub actor: String,
    /// Whether it may only read.
    pub read_only: bool,
    /// The session's CSRF token and id, when the caller is a console session.
    pub session: Option<(String, Session)>,
    /// What it proved itself with, to check again later (a long-lived event stream ends when
    /// its token is revoked or its session ends).
    pub credential: Credential,
}

/// A caller's credential, kept in memory while its request runs.
#[derive(Clone)]
pub enum Credential {
    /// A bearer token (the secret).
    Token(String),
    /// A console session (its id).
    Session(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Token(_) => "Token(..)",
            Self::Session(_) => "Session(..)",
        })
    }
}

impl Credential {
    /// Whether it still holds at `now_ms` (the token not revoked, the session not ended).
    pub fn still_valid(&self, c: &Console, now_ms: u64) -> bool {
        match self {
            Self::Token(t) => c.tokens.check(t).is_some(),
            Self::Session(id) => c.sessions.get(id, now_ms).is_some(),
        }
    }
}

/// Every error answer: a 4xx says what was wrong with the request, a 5xx what failed here.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words.
    pub error: String,
}

/// The answers every /api/v1 operation may give before it runs: no or bad credentials, or a
/// caller that may not do this.
#[derive(utoipa::IntoResponses)]
pub enum AuthErrors {
    /// No, unknown or revoked credentials
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Read-only token, or a console session without its CSRF token
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

// The 401 alone, for operations every token may call (its doc is the response's description).
/// No, unknown or revoked credentials
#[derive(utoipa::IntoResponses)]
#[response(status = 401)]
pub struct Unauthorized(pub ErrorBody);

/// A failed operation: the status and the reason, for an API error or a console page.
pub type Failure = (StatusCode, String);

/// A fleet error as a failure: the status from its one mapping, the reason; server faults are
/// logged.
pub fn failure(e: fleet_service::Error) -> Failure {
    (
        StatusCode::from_u16(e.answer_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        e.to_string(),
    )
}

/// A JSON error body `{"error": "..."}` with a status.
pub fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let body = ErrorBody { error: msg.into() };
    let mut r = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"unbrick\""),
        );
    }
    r
}

/// The session cookie's value, if the request carries one.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Authenticates a request. Bearer tokens are checked first; a console session is accepted too,
/// and then a state-changing request must carry the session's CSRF token (`X-CSRF-Token`).
/// Read-only callers may only read.
#[allow(clippy::result_large_err)]
pub fn caller(c: &Console, method: &Method, headers: &HeaderMap) -> Result<Caller, Response> {
    let now = fleet_service::now_ms();
    let who = if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or("");
        let Some(secret) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "Authorization must be 'Bearer <token>' (make one with: unbrick tokens create --name NAME)",
            ));
        };
        let Some(t) = c.tokens.check(secret.trim()) else {
            return Err(error(StatusCode::UNAUTHORIZED, "unknown or revoked token"));
        };
        Caller {
            actor: format!("token:{}", t.name),
            read_only: t.read_only,
            session: None,
            credential: Credential::Token(secret.trim().to_string()),
        }
    } else if let Some(id) = session_id(headers) {
        let Some(s) = c.sessions.get(&id, now) else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "the console session expired; log in again",
            ));
        };
        if method != Method::GET && method != Method::HEAD {
            let sent = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct_eq(sent.as_bytes(), s.csrf.as_bytes()) {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "missing or wrong X-CSRF-Token for this console session",
                ));
            }
        }
        Caller {
            actor: format!("console:{}", s.name),
            read_only: s.read_only,
            credential: Credential::Session(id.clone()),
            session: Some((id, s)),
        }
    } else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "no credentials: send 'Authorization: Bearer <token>' (make one with: unbrick tokens create --name NAME)",
        ));
    };
    if who.read_only && method != Method::GET && method != Method::HEAD {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("{} is read-only", who.actor),
        ));
    }
    Ok(who)
}

/// Constant-time comparison of two secrets (subtle).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}
