//! The admin API's OpenAPI 3.0 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the types they answer with (`utoipa::ToSchema`), so code and contract move
//! together. A test checks that every `/api/v1` route is in it and that it validates.
use crate::auth::ErrorBody;
use crate::{api, bitlocker, campaigns, controllers, query};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use fleet::escrow::EscrowSummary;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The host list's `flag` filter (an empty value means no filter).
#[derive(Debug, Serialize, ToSchema)]
pub enum HostFlag {
    /// No filter.
    #[serde(rename = "")]
    None,
    /// Waiting for a pasted BitLocker recovery key.
    #[serde(rename = "key-needed")]
    KeyNeeded,
    /// A released recovery key should be rotated.
    #[serde(rename = "rotate-key")]
    RotateKey,
}

/// The export's `format`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// RFC 4180 CSV, files flattened.
    Csv,
    /// A JSON array of report rows (the default).
    Json,
}

/// What `POST /api/v1/campaigns/{id}/{action}` does.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CampaignAction {
    /// Start a draft: the first wave opens.
    Start,
    /// Stop handing out the payload; hosts in it finish.
    Pause,
    /// Go on after a pause or a halt.
    Resume,
    /// End it; nobody else gets the payload.
    Abort,
    /// Put the quarantined files back on the hosts it remediated.
    Rollback,
    /// Approve the BitLocker key release for every host of the open wave (campaigns with
    /// `key_release = confirm`, keys not bound to a host's name, disputed claims).
    #[serde(rename = "approve-keys")]
    ApproveKeys,
}

/// `GET /api/v1/bitlocker/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Every escrowed key, without its password.
    pub keys: Vec<EscrowSummary>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "unbrick admin API",
        version = "1",
        description = "Fleet state, bulk actions, import and export for a network-boot recovery. Authenticate with `Authorization: Bearer <token>` (make a token with `unbrick tokens create --name NAME [--read-only]`). Errors are JSON `{\"error\": \"...\"}` with a 4xx status for bad input and a 5xx when the server cannot do it (the store cannot write)."
    ),
    servers((url = "/")),
    security(("bearer" = [])),
    modifiers(&Bearer),
    paths(
        api::summary,
        api::progress,
        api::list_hosts,
        api::host_detail,
        api::import_hosts,
        api::bulk_action,
        api::export,
        api::events,
        api::audit,
        crate::diagnosis::api,
        crate::diagnosis::draft_api,
        campaigns::list,
        campaigns::create_api,
        campaigns::detail,
        campaigns::action_api,
        bitlocker::list,
        bitlocker::import,
        bitlocker::reveal,
        bitlocker::paste,
        controllers::import,
        controllers::list,
    ),
    components(schemas(
        ErrorBody,
        HostFlag,
        ExportFormat,
        CampaignAction,
        KeyList,
        controllers::ControllerImportResult,
        controllers::ControllerView,
        controllers::ControllerList,
        query::Summary,
        crate::progress::ProgressView,
        crate::progress::SampleView,
        crate::progress::StageView,
        api::HostPage,
        query::ReportRow,
        api::HostView,
        api::ReportView,
        api::EventView,
        api::Detail,
        api::ImportResult,
        api::ActionRequest,
        api::AuditView,
        crate::diagnosis::DiagnosisView,
        crate::diagnosis::HostFinding,
        crate::diagnosis::DraftRule,
        fleet::filegroups::FileGroup,
        fleet::filegroups::FileScan,
        fleet::agent::FileVersion,
        fleet::agent::InspectedFile,
        fleet::agent::WindowsVersion,
        fleet::bootdiag::Finding,
        fleet::bootdiag::Problem,
        fleet::bootdiag::Stall,
        fleet::bootdiag::Group,
        fleet::bootdiag::GroupHost,
        fleet::crashes::CrashGroup,
        fleet::crashes::EventGroup,
        fleet::agent::EventLogScan,
        fleet::agent::LogEvent,
        fleet::agent::CrashDump,
        fleet::inventory::ImportRow,
        fleet::inventory::RowError,
        fleet::agent::VolumeReport,
        fleet::agent::FileRecord,
        fleet::agent::RunResult,
        fleet::EventSource,
        fleet::KeyRelease,
        fleet::Trigger,
        EscrowSummary,
        fleet::escrow::Release,
        fleet::escrow::Source,
        fleet_service::Action,
        fleet_service::ActionOutcome,
        fleet_service::ActionResult,
        fleet_service::escrow::ImportResult,
        fleet_service::escrow::ImportError,
        campaigns::CampaignInput,
        campaigns::TargetsInput,
        campaigns::GateInput,
        campaigns::CampaignView,
        campaigns::WaveView,
        bitlocker::Paste,
    ))
)]
pub struct ApiDoc;

/// The document as JSON, made once.
pub fn document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// `GET /api/v1/openapi.json`: the generated OpenAPI document (no token needed).
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}
