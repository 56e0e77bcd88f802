//! The console's pages: login, fleet dashboard (counts, progress, host table, bulk actions,
//! import), host page (timeline). Forms work without JavaScript; the script only adds live
//! updates (SSE), select-all and reading a CSV file into the import box.
use crate::api::{self, Action};
use crate::auth::{self, Session};
use crate::query::{self, Filter};
use crate::Console;
use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

fn page<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(html) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("console template: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "console template error\n",
            )
                .into_response()
        }
    }
}

fn to_login() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response()
}

/// What every page says while the store cannot write: "the store cannot write: disk full" with
/// the free space.
fn store_alert(c: &Console) -> Alerts {
    Alerts {
        store: c
            .fleet
            .store()
            .space()
            .filter(|s| s.full || s.free < s.reserve)
            .map(|s| s.describe()),
        checks: c.health.read().unwrap().problems.clone(),
    }
}

/// What every page says above its content: the store cannot write (disk full), and what the
/// server's own checks found (rules about to expire, an expired certificate, ...).
#[derive(Debug, Default)]
struct Alerts {
    store: Option<String>,
    checks: Vec<String>,
}

/// The console session of a page request, or a redirect to the login page.
#[allow(clippy::result_large_err)]
fn session(c: &Console, headers: &HeaderMap) -> Result<Session, Response> {
    auth::session_id(headers)
        .and_then(|id| c.sessions.get(&id, fleet_service::now_ms()))
        .ok_or_else(to_login)
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

/// `GET /login`.
pub async fn login_page() -> Response {
    page(StatusCode::OK, &LoginPage { error: None })
}

/// `POST /login`: a token makes a session (cookie) and a CSRF token. Failed logins are
/// rate-limited per address and in all ([`crate::transport::LoginLimiter`]).
pub async fn login(State(c): State<Arc<Console>>, req: axum::extract::Request) -> Response {
    let now = fleet_service::now_ms();
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|ci| ci.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    if let Some(wait) = c.logins.wait_secs(peer, now) {
        tracing::warn!(%peer, "console login refused: too many failed logins");
        let mut r = page(
            StatusCode::TOO_MANY_REQUESTS,
            &LoginPage {
                error: Some(format!(
                    "Too many failed logins; try again in {wait} seconds."
                )),
            },
        );
        if let Ok(v) = header::HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "login form too large\n").into_response();
    };
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let Some(t) = c.tokens.check(&token) else {
        c.logins.failed(peer, now);
        tracing::warn!(%peer, "console login refused (unknown token)");
        return page(
            StatusCode::UNAUTHORIZED,
            &LoginPage {
                error: Some("That token is unknown or revoked.".into()),
            },
        );
    };
    let (id, _) = c
        .sessions
        .open(&t.name, t.read_only, fleet_service::now_ms());
    tracing::info!("console login: {}", t.name);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (
                header::SET_COOKIE,
                format!(
                    "{}={id}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                    auth::COOKIE,
                    auth::SESSION_MS / 1000
                ),
            ),
        ],
    )
        .into_response()
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// The session of a form post that changes something: CSRF token checked, read-only refused.
#[allow(clippy::result_large_err)]
fn writing_session(
    c: &Console,
    headers: &HeaderMap,
    f: &[(String, String)],
) -> Result<Session, Response> {
    let (_, s) = form_session(c, headers, f)?;
    if s.read_only {
        return Err((StatusCode::FORBIDDEN, "read-only session\n").into_response());
    }
    Ok(s)
}

/// The session of a form post, with its CSRF token checked.
#[allow(clippy::result_large_err)]
fn form_session(
    c: &Console,
    headers: &HeaderMap,
    f: &[(String, String)],
) -> Result<(String, Session), Response> {
    let id = auth::session_id(headers).ok_or_else(to_login)?;
    let s = c
        .sessions
        .get(&id, fleet_service::now_ms())
        .ok_or_else(to_login)?;
    let sent = field(f, "csrf").unwrap_or("");
    if !auth::ct_eq(sent.as_bytes(), s.csrf.as_bytes()) {
        return Err((
            StatusCode::FORBIDDEN,
            "This form is stale or did not come from this console (CSRF check failed). Reload the page and try again.\n",
        )
            .into_response());
    }
    Ok((id, s))
}

/// `POST /logout`.
pub async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    match form_session(&c, &headers, &f) {
        Ok((id, _)) => {
            c.sessions.close(&id);
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/login".to_string()),
                    (
                        header::SET_COOKIE,
                        format!(
                            "{}=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
                            auth::COOKIE
                        ),
                    ),
                ],
            )
                .into_response()
        }
        Err(r) => r,
    }
}

struct Row {
    mac: String,
    hostname: String,
    /// The name on disk, shown when no host name was imported.
    name_on_disk: String,
    site: String,
    tags: String,
    state: String,
    reason: String,
    since: String,
    ip: String,
    last_seen: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    user: String,
    read_only: bool,
    /// The store cannot write (disk full): said on every page.
    store_alert: Alerts,
    csrf: String,
    summary: query::Summary,
    counts: Vec<(String, usize)>,
    rows: Vec<Row>,
    total: usize,
    page: usize,
    pages: usize,
    prev: Option<String>,
    next: Option<String>,
    f_q: String,
    f_state: String,
    f_site: String,
    f_tag: String,
    f_flag: String,
    flash: Option<String>,
    /// The first steps not yet taken (no image, no host, no campaign), in order.
    first_run: Vec<FirstStep>,
    /// The chart of hosts per group of states over time (SVG; empty before two samples).
    chart: String,
    /// The recovery rate and the estimated finish, in words.
    headline: Option<String>,
    /// The campaigns under way (running, paused, halted): name, id, a bar per wave.
    campaign_bars: Vec<(String, String, Vec<crate::progress::WaveBar>)>,
}

/// A step of the first-run panel: what to do next, and how.
struct FirstStep {
    id: &'static str,
    title: &'static str,
    how: Vec<String>,
}

/// What is left of the first run: build the image, make machines network-boot, start a
/// campaign. Empty once all three are done.
fn first_steps(c: &Console, hosts: usize) -> Vec<FirstStep> {
    let mut v = Vec::new();
    if c.health.read().unwrap().image_ready == Some(false) {
        v.push(FirstStep {
            id: "step-image",
            title: "Build the recovery image",
            how: vec![
                "On this server: unbrick image build --data-dir /var/lib/unbrick (it finds the kernel, adds the agent and signs), then restart unbrick serve: the image is verified and loaded at start.".into(),
                "Until then machines that boot here wait in the waiting room.".into(),
            ],
        });
    }
    if hosts == 0 {
        v.push(FirstStep {
            id: "step-netboot",
            title: "Make the machines network-boot",
            how: vec![
                "Beside the office DHCP server, serve with --dhcp proxy: unbrick answers only machines that network-boot, the office server keeps giving the addresses. On a recovery VLAN of its own, --dhcp full --pool FIRST-LAST gives the addresses too. unbrick doctor tells which fits the segment.".into(),
                "One machine at a time: the one-time boot menu at power-on, F12 on Dell, Lenovo, Acer, Fujitsu and Toshiba, F9 on HP, F8 on ASUS; pick the network (PXE or IPv4) entry.".into(),
                "Many at once without walking: set options 66 (this server's address) and 67 (undionly.kpxe for BIOS, shimx64.efi for UEFI) on the office DHCP server, or import their management controllers (below) and use \"network boot once\" (AMT, Redfish, IPMI) or Wake-on-LAN.".into(),
                "Import the host list (below) for names, sites and canary tags; a machine that network-boots appears here by itself.".into(),
            ],
        });
    }
    if c.campaigns.snapshot().is_empty() {
        v.push(FirstStep {
            id: "step-campaign",
            title: "Start a campaign, canaries first",
            how: vec![
                "On the campaigns page: choose the hosts, the wave sizes and the gate; the first wave is the hosts tagged canary. The next wave opens only when the gate holds.".into(),
            ],
        });
    }
    v
}

fn short_time(ms: u64) -> String {
    // 2024-07-19T05:27:00Z -> 07-19 05:27:00
    let s = query::iso(ms);
    format!("{} {}", &s[5..10], &s[11..19])
}

fn page_link(f: &Filter, page: usize) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in f.query_pairs() {
        s.append_pair(k, v);
    }
    if let Some(n) = f.per_page {
        s.append_pair("per_page", &n.to_string());
    }
    s.append_pair("page", &page.to_string());
    s.finish()
}

/// Renders the dashboard for `f` (also used by the benchmark at 10,000 hosts).
pub fn render_dashboard(c: &Console, s: &Session, f: &Filter, flash: Option<String>) -> Response {
    let (summary, p) = c
        .fleet
        .with_hosts(|h| (query::summary(h.values()), query::page(h.values(), f)));
    let summary_total = summary.total;
    let rows = p
        .hosts
        .iter()
        .map(|h| Row {
            mac: h.mac.to_string(),
            hostname: h.hostname.clone().unwrap_or_default(),
            name_on_disk: h.name_on_disk.clone().unwrap_or_default(),
            site: h.site.clone().unwrap_or_default(),
            tags: h.tags.join(", "),
            state: h.state.name().to_string(),
            reason: h.state.reason().unwrap_or_default().to_string(),
            since: short_time(h.state_since_ms),
            ip: h.ip.map(|i| i.to_string()).unwrap_or_default(),
            last_seen: short_time(h.last_seen_ms),
        })
        .collect();
    let counts = query::STATES
        .iter()
        .map(|s| {
            (
                s.to_string(),
                summary.by_state.get(*s).copied().unwrap_or(0),
            )
        })
        .collect();
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    let now = fleet_service::now_ms();
    let series = c.fleet.progress();
    let campaign_bars = crate::campaigns::views(c, None)
        .into_iter()
        .filter(|v| matches!(v.state.as_str(), "running" | "paused" | "halted"))
        .map(|v| (v.name.clone(), v.id.clone(), crate::progress::wave_bars(&v)))
        .collect();
    page(
        StatusCode::OK,
        &Dashboard {
            user: s.name.clone(),
            read_only: s.read_only,
            store_alert: store_alert(c),
            csrf: s.csrf.clone(),
            summary,
            counts,
            rows,
            total: p.total,
            page: p.page,
            pages: p.pages,
            prev: (p.page > 1).then(|| page_link(f, p.page - 1)),
            next: (p.page < p.pages).then(|| page_link(f, p.page + 1)),
            f_q: o(&f.q),
            f_state: o(&f.state),
            f_site: o(&f.site),
            f_tag: o(&f.tag),
            f_flag: o(&f.flag),
            flash,
            first_run: first_steps(c, summary_total),
            chart: crate::progress::chart_svg(&series, now),
            headline: crate::progress::headline(&series, now),
            campaign_bars,
        },
    )
}

/// `GET /`: the dashboard (summary, host table, filters, bulk actions).
pub async fn dashboard(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let s = match session(&c, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match api::parse_filter(q.as_deref()) {
        Ok(f) => render_dashboard(&c, &s, &f, None),
        Err(_) => render_dashboard(
            &c,
            &s,
            &Filter::default(),
            Some("That filter was not understood; showing every host.".into()),
        ),
    }
}

#[derive(Template)]
#[template(path = "host.html")]
struct HostPage {
    user: String,
    read_only: bool,
    /// The store cannot write (disk full): said on every page.
    store_alert: Alerts,
    csrf: String,
    h: api::HostView,
    events: Vec<api::EventView>,
    /// There are older events than these (in the API and `unbrick hosts show`).
    older: bool,
    /// The latest attempt, stage by stage.
    stages: Vec<crate::progress::StageView>,
}

impl HostPage {
    /// When a crash dump was written (its header's time, else the file's), ISO 8601 UTC.
    fn dump_time(&self, d: &fleet::agent::CrashDump) -> String {
        query::iso_secs(d.dump_time_unix.unwrap_or(d.written_unix))
    }

    fn at(&self, unix: &i64) -> String {
        query::iso_secs(*unix)
    }
}

/// `GET /hosts/{mac}`: one host, its timeline and its actions.
pub async fn host_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    let s = match session(&c, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(mac) = mac.parse::<fleet::Mac>() else {
        return (StatusCode::BAD_REQUEST, "not a MAC address\n").into_response();
    };
    let Some(h) = c.fleet.host(mac) else {
        return (StatusCode::NOT_FOUND, format!("no host {mac}\n")).into_response();
    };
    // The page shows the newest events; the whole timeline (up to the retention bound) is in
    // the API and `unbrick hosts show`.
    let mut events = match api::recent_events(&c, mac, HOST_PAGE_EVENTS + 1).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let older = events.len() > HOST_PAGE_EVENTS;
    if older {
        events.remove(0);
    }
    page(
        StatusCode::OK,
        &HostPage {
            user: s.name,
            read_only: s.read_only,
            store_alert: store_alert(&c),
            csrf: s.csrf,
            h: api::view(&h),
            stages: crate::progress::stages(&events),
            events: events.iter().map(api::event_view).collect(),
            older,
        },
    )
}

/// How many of a host's newest events its page shows.
pub const HOST_PAGE_EVENTS: usize = 300;

#[derive(Template)]
#[template(path = "result.html")]
struct ResultPage {
    user: String,
    read_only: bool,
    /// The store cannot write (disk full): said on every page.
    store_alert: Alerts,
    csrf: String,
    title: String,
    summary: String,
    lines: Vec<(String, String, bool)>,
    back: String,
}

/// `POST /ui/actions`: a bulk action from the dashboard's form.
pub async fn ui_actions(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match writing_session(&c, &headers, &f) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let action: Action = match field(&f, "action")
        .and_then(|a| serde_json::from_value(serde_json::Value::from(a)).ok())
    {
        Some(a) => a,
        None => return (StatusCode::BAD_REQUEST, "unknown action\n").into_response(),
    };
    let macs: Vec<String> = f
        .iter()
        .filter(|(k, _)| k == "mac")
        .map(|(_, v)| v.clone())
        .collect();
    let back = field(&f, "back")
        .filter(|b| b.starts_with("/hosts/") && !b.contains("//"))
        .unwrap_or("/")
        .to_string();
    let back = if action == Action::Forget {
        "/".into()
    } else {
        back
    };
    let actor = format!("console:{}", s.name);
    let (status, summary, lines) = match api::apply_action(&c, &actor, action, &macs).await {
        Ok(r) => (
            StatusCode::OK,
            format!(
                "{}: {} done, {} refused",
                field(&f, "action").unwrap_or(""),
                r.ok,
                r.failed
            ),
            r.results
                .into_iter()
                .map(|o| (o.mac, o.message, o.ok))
                .collect(),
        ),
        Err(_) if macs.is_empty() => (
            StatusCode::BAD_REQUEST,
            "Select at least one host first.".to_string(),
            vec![],
        ),
        Err(r) => return r,
    };
    result_page(&c, s, status, "Bulk action", summary, lines, back)
}

/// `POST /ui/import`: an inventory import from the dashboard's form.
pub async fn ui_import(State(c): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let s = match writing_session(&c, &headers, &f) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let text = field(&f, "csv").unwrap_or("");
    let actor = format!("console:{}", s.name);
    let (status, summary, lines) = match query::parse_csv(text) {
        Err(e) => (StatusCode::BAD_REQUEST, e, vec![]),
        Ok((rows, errors)) => match api::apply_import(&c, &actor, rows, errors).await {
            Ok(r) => (
                StatusCode::OK,
                format!(
                    "{} hosts created, {} updated, {} rows refused",
                    r.created,
                    r.updated,
                    r.errors.len()
                ),
                r.errors
                    .into_iter()
                    .map(|e| (format!("line {}", e.line), e.error, false))
                    .collect(),
            ),
            Err(r) => return r,
        },
    };
    result_page(&c, s, status, "Import", summary, lines, "/".into())
}

/// `POST /ui/bmc/import`: the dashboard's controller import form.
pub async fn ui_bmc_import(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match writing_session(&c, &headers, &f) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let text = field(&f, "csv").unwrap_or("");
    let actor = format!("console:{}", s.name);
    let (status, summary, lines) =
        match crate::controllers::import_csv(&c, &actor, text.as_bytes(), None).await {
            Err((st, e)) => (st, e, vec![]),
            Ok((st, r)) => (
                st,
                format!(
                    "{} controllers on new hosts, {} on known hosts, {} rows refused",
                    r.created,
                    r.updated,
                    r.errors.len()
                ),
                r.errors
                    .into_iter()
                    .map(|e| (format!("line {}", e.line), e.error, false))
                    .collect(),
            ),
        };
    result_page(
        &c,
        s,
        status,
        "Controller import",
        summary,
        lines,
        "/".into(),
    )
}

/// `GET /assets/console.js`.
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../assets/console.js"),
    )
        .into_response()
}

/// `GET /assets/console.css`.
pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../assets/console.css"),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "diagnosis.html")]
struct DiagnosisPage {
    user: String,
    read_only: bool,
    /// The store cannot write (disk full): said on every page.
    store_alert: Alerts,
    csrf: String,
    d: crate::diagnosis::DiagnosisView,
}

impl DiagnosisPage {
    /// Unix seconds as the console shows times (ISO 8601, UTC).
    fn at(&self, unix: &i64) -> String {
        query::iso_secs(*unix)
    }

    /// A hash's first 12 digits.
    fn short(&self, sha: &str) -> String {
        sha.chars().take(12).collect()
    }

    /// A query-string value, percent-encoded.
    fn urlenc(&self, v: &str) -> String {
        query::urlenc(v)
    }
}

#[derive(Template)]
#[template(path = "draft_rule.html")]
struct DraftRulePage {
    user: String,
    read_only: bool,
    /// The store cannot write (disk full): said on every page.
    store_alert: Alerts,
    csrf: String,
    d: crate::diagnosis::DraftRule,
}

/// `GET /diagnosis/draft-rule?sha256=..&path=..`: the drafted rules document for one file
/// group and the campaign that would apply it (changes nothing).
pub async fn draft_rule_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    crate::extract::StrictQuery(q): crate::extract::StrictQuery<crate::diagnosis::DraftQuery>,
) -> Response {
    let s = match session(&c, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let fleet = c.fleet.clone();
    let now = fleet_service::now_ms() / 1000;
    let d = tokio::task::spawn_blocking(move || {
        crate::diagnosis::draft(&fleet, &q.sha256, q.path.as_deref(), now)
    })
    .await;
    let d = match d {
        Ok(Ok(Some(d))) => d,
        Ok(Ok(None)) => {
            return auth::error(
                StatusCode::NOT_FOUND,
                "no scanned host has a file with that SHA-256 (and path)",
            )
        }
        Ok(Err(e)) => return auth::error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => return auth::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    page(
        StatusCode::OK,
        &DraftRulePage {
            user: s.name.clone(),
            read_only: s.read_only,
            store_alert: store_alert(&c),
            csrf: s.csrf.clone(),
            d,
        },
    )
}

/// `GET /diagnosis`: the fleet's boot-chain diagnosis.
pub async fn diagnosis_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let s = match session(&c, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let d = match crate::diagnosis::compute(&c, fleet_service::now_ms()).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    page(
        StatusCode::OK,
        &DiagnosisPage {
            user: s.name.clone(),
            read_only: s.read_only,
            store_alert: store_alert(&c),
            csrf: s.csrf.clone(),
            d,
        },
    )
}

#[derive(Template)]
#[template(path = "campaigns.html")]
struct CampaignsPage {
    user: String,
    read_only: bool,
    /// The store cannot write (disk full): said on every page.
    store_alert: Alerts,
    csrf: String,
    list: Vec<crate::campaigns::CampaignView>,
    flash: Option<String>,
}

#[derive(Template)]
#[template(path = "campaign.html")]
struct CampaignPage {
    user: String,
    read_only: bool,
    /// The store cannot write (disk full): said on every page.
    store_alert: Alerts,
    csrf: String,
    c: crate::campaigns::CampaignView,
    actions: Vec<&'static str>,
    fail_pct: String,
    soak_min: u64,
    flash: Option<String>,
    /// A progress bar per wave.
    bars: Vec<crate::progress::WaveBar>,
}

fn campaigns_page(c: &Console, s: &Session, flash: Option<String>, status: StatusCode) -> Response {
    let mut list = crate::campaigns::views(c, None);
    list.reverse();
    page(
        status,
        &CampaignsPage {
            user: s.name.clone(),
            read_only: s.read_only,
            store_alert: store_alert(c),
            csrf: s.csrf.clone(),
            list,
            flash,
        },
    )
}

/// `GET /campaigns`.
pub async fn campaigns_list(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match session(&c, &headers) {
        Ok(s) => campaigns_page(&c, &s, None, StatusCode::OK),
        Err(r) => r,
    }
}

fn campaign_page(c: &Console, s: &Session, id: &str, flash: Option<String>) -> Response {
    let Some(camp) = c.campaigns.snapshot().into_iter().find(|x| x.id == id) else {
        return (StatusCode::NOT_FOUND, format!("no campaign {id}\n")).into_response();
    };
    let actions = match camp.state {
        fleet::CampaignState::Draft => vec!["start", "abort"],
        fleet::CampaignState::Running => vec!["pause", "abort", "rollback", "approve-keys"],
        fleet::CampaignState::Paused => vec!["resume", "abort", "rollback", "approve-keys"],
        fleet::CampaignState::Halted(_) => vec!["resume", "abort", "rollback"],
        fleet::CampaignState::Completed => vec!["rollback"],
        fleet::CampaignState::RollingBack => vec!["abort"],
        fleet::CampaignState::Aborted => vec![],
    };
    let v = c.fleet.with_hosts(|h| crate::campaigns::view(&camp, h));
    page(
        StatusCode::OK,
        &CampaignPage {
            user: s.name.clone(),
            read_only: s.read_only,
            store_alert: store_alert(c),
            csrf: s.csrf.clone(),
            fail_pct: format!("{:.0}", v.gate.max_failure_rate * 100.0),
            soak_min: v.gate.min_soak_ms / 60_000,
            bars: crate::progress::wave_bars(&v),
            c: v,
            actions,
            flash,
        },
    )
}

/// `GET /campaigns/{id}`.
pub async fn campaign_detail(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match session(&c, &headers) {
        Ok(s) => campaign_page(&c, &s, &id, None),
        Err(r) => r,
    }
}

/// The console's "new campaign" form.
pub async fn ui_campaign_create(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match writing_session(&c, &headers, &f) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let get = |k: &str| field(&f, k).unwrap_or("").trim().to_string();
    let num = |k: &str, d: u64| get(k).parse::<u64>().unwrap_or(d);
    let target = get("target");
    let targets = match get("target_kind").as_str() {
        "site" => crate::campaigns::TargetsInput::Site(target),
        "tag" => crate::campaigns::TargetsInput::Tag(target),
        "macs" => crate::campaigns::TargetsInput::Macs(
            target
                .split([',', ' ', '\n'])
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        _ => crate::campaigns::TargetsInput::All(true),
    };
    let input = crate::campaigns::CampaignInput {
        name: get("name"),
        targets,
        waves: get("waves")
            .split(',')
            .map(|w| w.trim().to_string())
            .collect(),
        gate: crate::campaigns::GateInput {
            min_success: num("min_success", 0) as u32,
            max_failure_rate: num("max_failure_percent", 0) as f64 / 100.0,
            min_soak_minutes: num("soak_minutes", 0),
        },
        concurrency: num("concurrency", 0) as u32,
        host_timeout_minutes: None,
        verify_window_minutes: (!get("verify_minutes").is_empty())
            .then(|| num("verify_minutes", 0)),
        key_release: if get("key_release") == "confirm" {
            fleet::KeyRelease::Confirm
        } else {
            fleet::KeyRelease::Auto
        },
        trigger: if get("trigger") == "oob" {
            fleet::campaign::Trigger::Oob
        } else {
            fleet::campaign::Trigger::None
        },
        power_cycles: num("power_cycles", 0) as u32,
        trigger_wait_minutes: (!get("trigger_wait_minutes").is_empty())
            .then(|| num("trigger_wait_minutes", 5)),
        trigger_wait_seconds: None,
    };
    match crate::campaigns::create(&c, &format!("console:{}", s.name), input).await {
        Ok(id) => campaign_page(
            &c,
            &s,
            &id,
            Some("Created as a draft: check the waves, then start it.".into()),
        ),
        Err((_, e)) => campaigns_page(
            &c,
            &s,
            Some(format!("Not created: {e}")),
            StatusCode::BAD_REQUEST,
        ),
    }
}

/// The campaign page's action buttons.
pub async fn ui_campaign_action(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match writing_session(&c, &headers, &f) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let action = field(&f, "action").unwrap_or("").to_string();
    let msg = match crate::campaigns::act(&c, &format!("console:{}", s.name), &id, &action).await {
        Ok(m) => m,
        Err((_, e)) => format!("Refused: {e}"),
    };
    campaign_page(&c, &s, &id, Some(msg))
}

/// One escrowed key as the keys page shows it (never the password).
struct KeyRow {
    protector_id: String,
    hostname: Option<String>,
    source: String,
    imported: String,
    released: String,
    reveals: u32,
}

#[derive(Template)]
#[template(path = "bitlocker.html")]
struct KeysPage {
    user: String,
    read_only: bool,
    /// The store cannot write (disk full): said on every page.
    store_alert: Alerts,
    csrf: String,
    keys: Vec<KeyRow>,
}

/// `GET /bitlocker`: escrowed keys, import form, audited reveal.
pub async fn keys_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let s = match session(&c, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let fleet = c.fleet.clone();
    let keys = match tokio::task::spawn_blocking(move || fleet.escrow_list()).await {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let keys = keys
        .into_iter()
        .map(|k| KeyRow {
            released: if k.releases.is_empty() {
                "-".into()
            } else {
                k.releases
                    .iter()
                    .map(|r| format!("{} ({}, {})", r.mac, r.scope, query::iso(r.time_ms)))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            protector_id: k.protector_id,
            hostname: k.hostname,
            source: k.source.to_string(),
            imported: query::iso(k.imported_ms),
            reveals: k.reveals,
        })
        .collect();
    page(
        StatusCode::OK,
        &KeysPage {
            user: s.name,
            read_only: s.read_only,
            store_alert: store_alert(&c),
            csrf: s.csrf,
            keys,
        },
    )
}

/// The result page of a form (bulk action, import, key reveal or paste).
fn result_page(
    c: &Console,
    s: Session,
    status: StatusCode,
    title: &str,
    summary: String,
    lines: Vec<(String, String, bool)>,
    back: String,
) -> Response {
    page(
        status,
        &ResultPage {
            user: s.name,
            read_only: s.read_only,
            store_alert: store_alert(c),
            csrf: s.csrf,
            title: title.into(),
            summary,
            lines,
            back,
        },
    )
}

/// `POST /ui/bitlocker/import`.
pub async fn ui_keys_import(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match writing_session(&c, &headers, &f) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let text = field(&f, "csv").unwrap_or("").as_bytes().to_vec();
    let actor = format!("console:{}", s.name);
    let (status, summary, lines) = match crate::bitlocker::import_export(&c, &actor, text).await {
        Ok((status, r)) => (
            status,
            r.summary(),
            r.errors
                .into_iter()
                .map(|e| (format!("line {}", e.line), e.error, false))
                .collect(),
        ),
        Err((status, msg)) => (status, msg, vec![]),
    };
    result_page(
        &c,
        s,
        status,
        "Import BitLocker keys",
        summary,
        lines,
        "/bitlocker".into(),
    )
}

/// `POST /ui/bitlocker/reveal`: shows one password (audited).
pub async fn ui_keys_reveal(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match writing_session(&c, &headers, &f) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(id) = field(&f, "protector_id").and_then(|p| fleet::escrow::protector_id(p).ok())
    else {
        return (StatusCode::BAD_REQUEST, "not a recovery key ID\n").into_response();
    };
    let actor = format!("console:{}", s.name);
    let (status, summary, lines) = match crate::bitlocker::reveal_key(&c, &actor, &id).await {
        Ok(pw) => (
            StatusCode::OK,
            "Recovery key (this reveal is in the audit log):".to_string(),
            vec![(id, pw.expose().to_string(), true)],
        ),
        Err((status, msg)) => (status, msg, vec![]),
    };
    result_page(
        &c,
        s,
        status,
        "BitLocker recovery key",
        summary,
        lines,
        "/bitlocker".into(),
    )
}

/// `POST /ui/hosts/{mac}/bitlocker-key`: an admin pastes a key.
pub async fn ui_key_paste(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match writing_session(&c, &headers, &f) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(mac) = mac.parse::<fleet::Mac>() else {
        return (StatusCode::BAD_REQUEST, "not a MAC address\n").into_response();
    };
    let p = crate::bitlocker::Paste {
        recovery_password: field(&f, "recovery_password").unwrap_or("").to_string(),
        protector_id: field(&f, "protector_id")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
    };
    let actor = format!("console:{}", s.name);
    let back = format!("/hosts/{mac}");
    match crate::bitlocker::paste_key(&c, &actor, mac, &p).await {
        Ok(_) => (StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response(),
        Err((status, msg)) => {
            result_page(&c, s, status, "Paste a BitLocker key", msg, vec![], back)
        }
    }
}
