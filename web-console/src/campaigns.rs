//! Campaigns over the API and in the console, and the ticker that moves them on: host timeouts,
//! verification windows, wave closure and gates (`fleet::campaign` decides; this module applies
//! and persists).
#![allow(clippy::result_large_err)]
use crate::auth::error;
use crate::auth::AuthErrors;
use crate::auth::Caller;
use crate::Console;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet::campaign::{outcome, Campaign, CampaignSpec, Gate, Outcome, Targets, WaveSize};
use fleet::{KeyRelease, Mac, Trigger};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The API's way to write a campaign (friendlier than the stored form).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignInput {
    /// The campaign's name.
    pub name: String,
    /// Which hosts.
    pub targets: TargetsInput,
    /// e.g. `["5", "10%", "50%", "100%"]`
    pub waves: Vec<String>,
    /// When a wave counts as good.
    #[serde(default)]
    pub gate: GateInput,
    /// Most hosts in the payload at once.
    pub concurrency: u32,
    /// A host that takes longer in the payload fails (default 30).
    #[serde(default)]
    pub host_timeout_minutes: Option<u64>,
    /// How long after a run Windows must be seen for `recovered`.
    #[serde(default)]
    pub verify_window_minutes: Option<u64>,
    /// `auto` (default): a BitLocker key leaves escrow when the host's imported name matches
    /// the escrowed key's; `confirm`: only after an admin approved the release for the host.
    #[serde(default)]
    pub key_release: KeyRelease,
    /// `none` (default): the machines network-boot by hand or by their own boot order; `oob`:
    /// the server network-boots each host of an open wave through its management controller.
    #[serde(default)]
    pub trigger: Trigger,
    /// The reboot race: power-cycle each host up to this many times first (0 to 5).
    #[serde(default)]
    pub power_cycles: u32,
    /// Minutes a triggered machine has to ask for an address (default 5).
    #[serde(default)]
    pub trigger_wait_minutes: Option<u64>,
    /// The same in seconds (at least 10; wins over the minutes when both are given).
    #[serde(default)]
    pub trigger_wait_seconds: Option<u64>,
}

/// Which hosts a campaign covers (exactly one key).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TargetsInput {
    /// `{"all": true}`: every host.
    All(bool),
    /// One site.
    Site(String),
    /// One tag.
    Tag(String),
    /// These MAC addresses.
    Macs(Vec<String>),
}

/// The gate between waves.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateInput {
    /// At least so many hosts of a wave must succeed.
    #[serde(default)]
    pub min_success: u32,
    /// At most this share of a wave may fail (0.0 to 1.0).
    #[serde(default)]
    pub max_failure_rate: f64,
    /// Wait this long after a wave before the next opens.
    #[serde(default)]
    pub min_soak_minutes: u64,
}

impl CampaignInput {
    /// The campaign spec this input asks for, checked.
    pub fn into_spec(self) -> Result<CampaignSpec, fleet::Error> {
        let targets = match self.targets {
            TargetsInput::All(true) => Targets::All,
            TargetsInput::All(false) => return Err(fleet::Error::Invalid(
                "targets: {\"all\": true}, {\"site\": ...}, {\"tag\": ...} or {\"macs\": [...]}"
                    .into(),
            )),
            TargetsInput::Site(s) if !s.trim().is_empty() => Targets::Site(s.trim().to_string()),
            TargetsInput::Tag(t) if !t.trim().is_empty() => Targets::Tag(t.trim().to_string()),
            TargetsInput::Macs(l) => Targets::List(
                l.iter()
                    .map(|m| m.parse::<Mac>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(fleet::Error::Invalid)?,
            ),
            _ => {
                return Err(fleet::Error::Invalid(
                    "targets: the site or tag is empty".into(),
                ))
            }
        };
        let waves = self
            .waves
            .iter()
            .map(|w| w.parse::<WaveSize>())
            .collect::<Result<Vec<_>, _>>()?;
        let spec = CampaignSpec {
            name: self.name.trim().to_string(),
            targets,
            waves,
            gate: Gate {
                min_success: self.gate.min_success,
                max_failure_rate: self.gate.max_failure_rate,
                min_soak_ms: self.gate.min_soak_minutes.saturating_mul(60_000),
            },
            concurrency: self.concurrency,
            host_timeout_ms: self
                .host_timeout_minutes
                .unwrap_or(30)
                .saturating_mul(60_000),
            verify_window_ms: self.verify_window_minutes.map(|m| m.saturating_mul(60_000)),
            key_release: self.key_release,
            trigger: self.trigger,
            trigger_wait_ms: match self.trigger_wait_seconds {
                Some(s) => s.saturating_mul(1000),
                None => self
                    .trigger_wait_minutes
                    .unwrap_or(5)
                    .saturating_mul(60_000),
            },
            power_cycles: self.power_cycles,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// One wave as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WaveView {
    /// Its number, from 1.
    pub number: usize,
    /// How many hosts.
    pub hosts: usize,
    /// The members (MACs) in wave order: tagged canaries first, then spread over sites and
    /// vendors (`fleet::campaign::wave_order`).
    pub members: Vec<String>,
    /// When it opened (milliseconds since the Unix epoch).
    pub opened_ms: Option<u64>,
    /// When it opened (ISO 8601).
    pub opened: Option<String>,
    /// When it closed (ISO 8601).
    pub closed: Option<String>,
    /// What the gate said.
    pub gate_note: String,
    /// Members that succeeded.
    pub succeeded: usize,
    /// Members that failed.
    pub failed: usize,
    /// Members still running.
    pub pending: usize,
}

/// A campaign as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its state (`draft`, `running`, `halted`, ...).
    pub state: String,
    /// Why it halted.
    pub reason: Option<String>,
    /// The signed rules it runs with.
    pub rules: String,
    /// When it was made (ISO 8601).
    pub created: String,
    /// `{"kind": "all"}`, `{"kind": "site"|"tag", "value": ...}` or `{"kind": "list", "value": [MACs]}`.
    #[schema(value_type = Object)]
    pub targets: Targets,
    /// Most hosts in the payload at once.
    pub concurrency: u32,
    /// Hosts in the payload now.
    pub in_payload: usize,
    /// How many members.
    pub members: usize,
    /// The wave open now (from 1; 0 before start).
    pub current_wave: usize,
    /// `{"min_success", "max_failure_rate", "min_soak_ms"}`.
    #[schema(value_type = Object)]
    pub gate: Gate,
    /// The verification window, minutes.
    pub verify_window_minutes: Option<u64>,
    /// `auto` or `confirm`.
    pub key_release: String,
    /// `none` or `oob`.
    pub trigger: String,
    /// Power cycles before a network boot (the reboot race).
    pub power_cycles: u32,
    /// Minutes a triggered machine has to ask for an address.
    pub trigger_wait_minutes: u64,
    /// Its waves.
    pub waves: Vec<WaveView>,
    /// (time, note) pairs, oldest first.
    #[schema(value_type = Vec<Vec<String>>)]
    pub log: Vec<(String, String)>,
}

/// The API's view of a campaign.
pub fn view(c: &Campaign, hosts: &HashMap<Mac, fleet::HostRecord>) -> CampaignView {
    let verify = c.spec.verify_window_ms.is_some();
    CampaignView {
        id: c.id.clone(),
        name: c.spec.name.clone(),
        state: c.state.name().to_string(),
        reason: match &c.state {
            fleet::CampaignState::Halted(r) => Some(r.clone()),
            _ => None,
        },
        rules: c.rules.clone(),
        created: crate::query::iso(c.created_ms),
        targets: c.spec.targets.clone(),
        concurrency: c.spec.concurrency,
        in_payload: c.in_payload.len(),
        members: c.members().count(),
        current_wave: c.current + 1,
        gate: c.spec.gate.clone(),
        verify_window_minutes: c.spec.verify_window_ms.map(|m| m / 60_000),
        key_release: c.spec.key_release.name().to_string(),
        trigger: c.spec.trigger.name().to_string(),
        power_cycles: c.spec.power_cycles,
        trigger_wait_minutes: c.spec.trigger_wait_ms / 60_000,
        waves: c
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut o = (0, 0, 0);
                for m in &w.hosts {
                    match hosts.get(m).map(|h| outcome(h, verify)) {
                        Some(Outcome::Success) => o.0 += 1,
                        Some(Outcome::Failure) => o.1 += 1,
                        Some(Outcome::Neutral) => {}
                        _ => o.2 += 1,
                    }
                }
                WaveView {
                    number: i + 1,
                    hosts: w.hosts.len(),
                    members: w.hosts.iter().map(|m| m.to_string()).collect(),
                    opened_ms: w.opened_ms,
                    opened: w.opened_ms.map(crate::query::iso),
                    closed: w.closed_ms.map(crate::query::iso),
                    gate_note: w.gate_note.clone(),
                    succeeded: o.0,
                    failed: o.1,
                    pending: o.2,
                }
            })
            .collect(),
        log: c
            .log
            .iter()
            .map(|(t, w)| (crate::query::iso(*t), w.clone()))
            .collect(),
    }
}

/// Views of the campaigns (all, or the one with `id`), counted against the fleet in place.
pub fn views(c: &Console, id: Option<&str>) -> Vec<CampaignView> {
    let camps = c.campaigns.snapshot();
    c.fleet.with_hosts(|h| {
        camps
            .iter()
            .filter(|x| id.is_none_or(|i| x.id == i))
            .map(|x| view(x, h))
            .collect()
    })
}

/// Writes every campaign and waits for the disk.
pub async fn persist(c: &Console) -> fleet_service::Result<()> {
    let (all, seq) = c.campaigns.snapshot_to_persist();
    let r = async {
        for camp in &all {
            c.fleet.store().put_campaign(camp)?;
        }
        c.fleet.durable().await
    }
    .await;
    match r {
        Ok(()) => {
            c.campaigns.persisted(seq);
            Ok(())
        }
        Err(e) => {
            // Not saved: the ticker tries again next second (admissions held meanwhile).
            c.campaigns.mark_dirty();
            Err(e.into())
        }
    }
}

/// Creates a campaign (draft). Returns its id.
pub async fn create(
    c: &Console,
    actor: &str,
    input: CampaignInput,
) -> Result<String, (StatusCode, String)> {
    let spec = input
        .into_spec()
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let now = fleet_service::now_ms();
    let id = format!("c-{}", &crate::tokens::random_id()[..8]);
    let camp = Campaign::new(id.clone(), spec, c.rules_label.clone(), now)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let name = camp.spec.name.clone();
    c.campaigns.with(|cs| cs.push(camp));
    audit(c, actor, "campaign-create", format!("{id} {name:?}"));
    persist(c).await.map_err(crate::auth::failure)?;
    Ok(id)
}

fn audit(c: &Console, actor: &str, action: &str, detail: String) {
    let _ = c
        .fleet
        .audit(actor, action, detail, fleet_service::now_ms());
}

/// start | pause | resume | abort | rollback.
pub async fn act(
    c: &Console,
    actor: &str,
    id: &str,
    action: &str,
) -> Result<String, (StatusCode, String)> {
    let now = fleet_service::now_ms();
    if action == "approve-keys" {
        return approve_keys(c, actor, id, now).await;
    }
    let hosts: Vec<fleet::HostRecord> = c.fleet.hosts();
    let taken = c.campaigns.taken(id);
    // Hosts are let in by the result only once it is durable (persist below).
    let r = c.campaigns.with_held(|cs| {
        let Some(camp) = cs.iter_mut().find(|x| x.id == id) else {
            return Err((StatusCode::NOT_FOUND, format!("no campaign {id}")));
        };
        let r = match action {
            "start" => camp.start(&hosts, &taken, now),
            "pause" => camp.pause(now),
            "resume" => camp.resume(now),
            "abort" => camp.abort(now),
            "rollback" => camp.rollback(now),
            other => {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!("unknown action {other:?}: start, pause, resume, abort or rollback"),
                ))
            }
        };
        r.map(|_| format!("{} is {}", camp.spec.name, camp.state.name()))
            .map_err(|e| crate::auth::failure(e.into()))
    })?;
    audit(
        c,
        actor,
        &format!("campaign-{action}"),
        format!("{id}: {r}"),
    );
    tracing::info!("campaign {id} {action} by {actor}: {r}");
    persist(c).await.map_err(crate::auth::failure)?;
    Ok(r)
}

/// Approves the BitLocker key release for every host of the campaign's open wave (bulk, one
/// audit entry; each host's timeline records it).
async fn approve_keys(
    c: &Console,
    actor: &str,
    id: &str,
    now: u64,
) -> Result<String, (StatusCode, String)> {
    let Some(camp) = c.campaigns.snapshot().into_iter().find(|x| x.id == id) else {
        return Err((StatusCode::NOT_FOUND, format!("no campaign {id}")));
    };
    if !matches!(
        camp.state,
        fleet::CampaignState::Running
            | fleet::CampaignState::Paused
            | fleet::CampaignState::RollingBack
    ) {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "{} is {}: keys are released only in a running campaign",
                camp.spec.name,
                camp.state.name()
            ),
        ));
    }
    let macs: Vec<String> = camp
        .waves
        .get(camp.current)
        .map(|w| w.hosts.iter().map(|m| m.to_string()).collect())
        .unwrap_or_default();
    if macs.is_empty() {
        return Err((StatusCode::CONFLICT, "the open wave has no hosts".into()));
    }
    let r = c
        .fleet
        .admin_action(
            actor,
            fleet_service::actions::Action::ApproveKey,
            &macs,
            now,
        )
        .await
        .map_err(crate::auth::failure)?;
    Ok(format!(
        "key release approved for {} hosts of wave {} ({} refused)",
        r.ok,
        camp.current + 1,
        r.failed
    ))
}

/// Out-of-band triggers due now: each order runs on its controller in its own task (the tick
/// does not wait), its answer goes back to the campaign and onto the host's timeline.
fn trigger(c: &Arc<Console>, now: u64) {
    let (orders, changes) = c.fleet.with_hosts(|h| c.campaigns.triggers_due(h, now));
    for ch in changes {
        c.fleet.set_state(ch.mac, ch.to, &ch.why, now);
    }
    for (id, name, o) in orders {
        let c = c.clone();
        tokio::spawn(async move {
            let actor = format!("campaign {name}");
            let done = c
                .fleet
                .control(&actor, fleet::EventSource::Policy, o.op, &[o.mac], now)
                .await;
            let (ok, summary) = done
                .first()
                .map(|(_, a)| (a.ok, a.summary.clone()))
                .unwrap_or((false, "no answer".into()));
            let at = fleet_service::now_ms();
            c.fleet.audit_logged(
                &actor,
                o.op.name(),
                format!(
                    "{} (attempt {}): {}",
                    o.mac,
                    o.attempt,
                    if ok { "done" } else { "failed" }
                ),
                at,
            );
            if let Some(ch) = c.campaigns.trigger_done(&id, o.mac, ok, &summary, at) {
                c.fleet.set_state(ch.mac, ch.to, &ch.why, at);
            }
        });
    }
}

/// How often the fleet's progress is sampled for the chart, in seconds.
pub const PROGRESS_SAMPLE_SECS: u64 = 3;

/// Every second: campaigns advance (timeouts, verification windows, gates); host changes are
/// applied through the fleet's single writer; changed campaigns are persisted. Every
/// [`PROGRESS_SAMPLE_SECS`] the fleet's progress is sampled.
pub fn spawn_ticker(c: Arc<Console>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            let now = fleet_service::now_ms();
            // The dashboard's chart: hosts per group of states, sampled every few seconds.
            if n.is_multiple_of(PROGRESS_SAMPLE_SECS) {
                c.fleet.sample_progress(now);
            }
            n += 1;
            if c.campaigns.any_active() {
                let (changes, logs) = c.fleet.with_hosts(|h| c.campaigns.tick(h, now));
                for l in logs {
                    tracing::info!("{l}");
                }
                for ch in changes {
                    c.fleet.set_state(ch.mac, ch.to, &ch.why, now);
                }
                trigger(&c, now);
            }
            if c.campaigns.take_dirty() {
                if let Err(e) = persist(&c).await {
                    tracing::error!("campaigns: {e}");
                }
            }
        }
    });
}

// ---- API handlers ----

/// Every campaign with its state, waves and gate results
#[utoipa::path(get, path = "/api/v1/campaigns", operation_id = "listCampaigns",
    responses((status = 200, description = "Campaigns", body = Vec<CampaignView>), AuthErrors))]
pub async fn list(State(c): State<Arc<Console>>, _who: Caller) -> Response {
    Json(views(&c, None)).into_response()
}

/// One campaign
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", operation_id = "campaignDetail",
    params(("id" = String, Path, description = "Campaign id")),
    responses((status = 200, description = "The campaign", body = CampaignView), (status = 404, description = "No such campaign", body = ErrorBody), AuthErrors))]
pub async fn detail(
    State(c): State<Arc<Console>>,
    _who: Caller,
    Path(id): Path<String>,
) -> Response {
    match views(&c, Some(&id)).pop() {
        Some(v) => Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no campaign {id}")),
    }
}

/// Create a campaign (a draft; start it with /start)
#[utoipa::path(post, path = "/api/v1/campaigns", operation_id = "createCampaign",
    request_body(content = CampaignInput, content_type = "application/json"),
    responses((status = 201, description = "Created: {\"id\": ...}", body = Object), (status = 400, description = "Bad campaign", body = ErrorBody), (status = 413, description = "Body too large"), AuthErrors))]
pub async fn create_api(State(c): State<Arc<Console>>, who: Caller, body: Bytes) -> Response {
    let input: CampaignInput = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("campaign: {e} (expected {{\"name\", \"targets\": {{\"all\": true}}|{{\"site\"|\"tag\": ...}}|{{\"macs\": [...]}}, \"waves\": [\"1\", \"100%\"], \"gate\": {{...}}, \"concurrency\"}})"),
            )
        }
    };
    match create(&c, &who.actor, input).await {
        Ok(id) => (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response(),
        Err((s, e)) => error(s, e),
    }
}

/// start, pause, resume, abort or rollback a campaign
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/{action}", operation_id = "campaignAction",
    params(("id" = String, Path, description = "Campaign id"), ("action" = CampaignAction, Path, description = "What to do")),
    responses((status = 200, description = "Done: {\"id\", \"result\"}", body = Object), (status = 404, description = "No such campaign or action", body = ErrorBody), (status = 409, description = "Not allowed in the campaign's state", body = ErrorBody), AuthErrors))]
pub async fn action_api(
    State(c): State<Arc<Console>>,
    who: Caller,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    match act(&c, &who.actor, &id, &action).await {
        Ok(msg) => Json(serde_json::json!({ "id": id, "result": msg })).into_response(),
        Err((s, e)) => error(s, e),
    }
}
