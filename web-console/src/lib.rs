//! The web console and the admin HTTP API over the fleet the network-boot server writes.
//!
//! - `/api/v1/...`: JSON API (OpenAPI document at `/api/v1/openapi.json`), bearer tokens made by
//!   `unbrick tokens create` (or the console's session cookie plus an `X-CSRF-Token` header).
//! - `/`, `/hosts/{mac}`, `/login`: server-rendered HTML (askama), a small script for live updates
//!   over SSE (`/api/v1/events`); forms carry a per-session CSRF token.
//!
//! Every write goes through [`fleet_service::FleetIo`] (the store's single writer) and is
//! on disk before the answer. Input errors are 4xx with a reason, never a 500.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bitlocker;
pub mod campaigns;
pub mod controllers;
pub mod diagnosis;
pub mod extract;
pub mod html;
pub mod openapi;
pub mod progress;
pub mod query;
pub mod tokens;
pub mod transport;

use axum::routing::{get, post};
use axum::Router;
use fleet_service::FleetIo;
use std::sync::Arc;

/// Everything the console's handlers share.
pub struct Console {
    /// The store's writer.
    pub fleet: Arc<FleetIo>,
    /// Admin tokens (tokens.json).
    pub tokens: tokens::TokenBook,
    /// Console sessions.
    pub sessions: auth::Sessions,
    /// The boot policy's campaigns (the same object the network-boot server asks).
    pub campaigns: Arc<fleet::CampaignPolicy>,
    /// The signed rules new campaigns run with (id and version).
    pub rules_label: String,
    /// The protocol drivers' counters, rendered by `/metrics`.
    pub counters: std::sync::Mutex<Vec<Arc<dyn fleet_service::metrics::Counters>>>,
    /// Failed console logins, per address.
    pub logins: transport::LoginLimiter,
    /// What the server's own checks (`unbrick doctor`'s) last found: every page shows the
    /// problems, `/metrics` the expiries.
    pub health: std::sync::RwLock<Health>,
}

/// The server's own checks, as the console and `/metrics` show them.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// One line per warning or failure, with its fix.
    pub problems: Vec<String>,
    /// What expires when (unix seconds): `rules`, `tls`.
    pub expiries: Vec<(String, u64)>,
    /// Checks that warned.
    pub warned: usize,
    /// Checks that failed.
    pub failed: usize,
    /// Whether a recovery image is being served (None: not checked).
    pub image_ready: Option<bool>,
}

impl Console {
    /// The console over `fleet`, with tokens from `tokens_file`.
    pub fn new(
        fleet: Arc<FleetIo>,
        tokens_file: &std::path::Path,
        campaigns: Arc<fleet::CampaignPolicy>,
        rules_label: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            fleet,
            tokens: tokens::TokenBook::new(tokens_file),
            sessions: auth::Sessions::default(),
            campaigns,
            rules_label,
            counters: std::sync::Mutex::new(Vec::new()),
            logins: transport::LoginLimiter::default(),
            health: std::sync::RwLock::new(Health::default()),
        })
    }
}

impl Console {
    /// Adds a source of counters to `/metrics` (the DHCP and TFTP drivers').
    pub fn add_counters(&self, c: Arc<dyn fleet_service::metrics::Counters>) {
        self.counters.lock().unwrap().push(c);
    }
}

/// The OpenAPI 3.0 document of the admin API (generated, see [`openapi`]).
pub fn openapi_document() -> &'static str {
    openapi::document()
}

/// The console's and API's routes.
pub fn router(c: Arc<Console>) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi::openapi))
        .route("/api/v1/summary", get(api::summary))
        .route("/api/v1/progress", get(api::progress))
        .route("/api/v1/hosts", get(api::list_hosts))
        .route("/api/v1/hosts/import", post(api::import_hosts))
        .route("/api/v1/hosts/actions", post(api::bulk_action))
        .route("/api/v1/hosts/{mac}", get(api::host_detail))
        .route("/api/v1/hosts/{mac}/bitlocker-key", post(bitlocker::paste))
        .route(
            "/api/v1/bitlocker/keys",
            get(bitlocker::list).post(bitlocker::import),
        )
        .route(
            "/api/v1/bitlocker/keys/{id}/reveal",
            post(bitlocker::reveal),
        )
        .route("/api/v1/bmc", get(controllers::list))
        .route("/api/v1/bmc/import", post(controllers::import))
        .route("/api/v1/export", get(api::export))
        .route("/api/v1/events", get(api::events))
        .route("/api/v1/audit", get(api::audit))
        .route("/api/v1/diagnosis", get(diagnosis::api))
        .route("/api/v1/diagnosis/draft-rule", get(diagnosis::draft_api))
        .route(
            "/api/v1/campaigns",
            get(campaigns::list).post(campaigns::create_api),
        )
        .route("/api/v1/campaigns/{id}", get(campaigns::detail))
        .route(
            "/api/v1/campaigns/{id}/{action}",
            post(campaigns::action_api),
        )
        .route("/metrics", get(api::metrics))
        .route("/", get(html::dashboard))
        .route("/hosts/{mac}", get(html::host_page))
        .route("/login", get(html::login_page).post(html::login))
        .route("/logout", post(html::logout))
        .route("/ui/actions", post(html::ui_actions))
        .route("/ui/import", post(html::ui_import))
        .route("/ui/bmc/import", post(html::ui_bmc_import))
        .route("/bitlocker", get(html::keys_page))
        .route("/ui/bitlocker/import", post(html::ui_keys_import))
        .route("/ui/bitlocker/reveal", post(html::ui_keys_reveal))
        .route("/ui/hosts/{mac}/bitlocker-key", post(html::ui_key_paste))
        .route("/diagnosis", get(html::diagnosis_page))
        .route("/diagnosis/draft-rule", get(html::draft_rule_page))
        .route("/campaigns", get(html::campaigns_list))
        .route("/campaigns/{id}", get(html::campaign_detail))
        .route("/ui/campaigns", post(html::ui_campaign_create))
        .route("/ui/campaigns/{id}", post(html::ui_campaign_action))
        .route("/assets/console.js", get(html::script))
        .route("/assets/console.css", get(html::style))
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY))
        .layer(axum::middleware::from_fn(transport::body_limit))
        .layer(axum::middleware::from_fn(transport::security_headers))
        .with_state(c)
}

/// [`router`] for the plain-HTTP listener: served as is to the server's own machine; elsewhere
/// browsers are redirected to `plain.https_base` and everything else is refused
/// ([`transport::plain_http`]).
pub fn plain_http_router(c: Arc<Console>, plain: transport::PlainHttp) -> Router {
    router(c).layer(axum::middleware::from_fn_with_state(
        Arc::new(plain),
        transport::plain_http,
    ))
}
