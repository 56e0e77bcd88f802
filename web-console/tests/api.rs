//! Every admin API endpoint and console route, through the real router: auth failures, bad
//! input (always a 4xx with a reason, never a 500), CSRF, read-only tokens, SSE, import/export.
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use fleet::{Event, EventSource, HostState, Mac, SledStore, Store};
use fleet_service::FleetIo;
use http_body_util::BodyExt;
use std::sync::Arc;
use tower::ServiceExt;
use web_console::{router, Console};

struct T {
    app: axum::Router,
    console: Arc<Console>,
    fleet: Arc<FleetIo>,
    policy: Arc<fleet::CampaignPolicy>,
    admin: String,
    viewer: String,
    dir: std::path::PathBuf,
}

impl Drop for T {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(name: &str) -> T {
    let dir = std::env::temp_dir().join(format!("unbrick-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("store")).unwrap());
    for i in 0..30u8 {
        let mac = Mac([0x52, 0x54, 0, 0xab, 0, i]);
        store
            .update_host(mac, 1_721_366_820_000, &mut |h| {
                h.state = match i % 3 {
                    0 => HostState::Remediated,
                    1 => HostState::Failed("no Windows volume could be mounted".into()),
                    _ => HostState::Seen,
                };
                h.hostname = Some(format!("pc-{i:03}"));
                h.site = Some(if i < 10 { "berlin" } else { "austin" }.into());
                h.tags = vec![if i < 5 { "canary" } else { "main" }.into()];
                Ok(())
            })
            .unwrap();
        store
            .append_event(
                mac,
                &Event {
                    time_ms: 1,
                    source: EventSource::Dhcp,
                    kind: "dhcp-discover".into(),
                    message: "Discover".into(),
                },
            )
            .unwrap();
    }
    let policy = Arc::new(fleet::CampaignPolicy::new(
        fleet::DefaultPolicy::default(),
        false,
        vec![],
    ));
    let vault = fleet::escrow::vault::Vault::open(&dir.join("escrow.key"), true).unwrap();
    let bmc = fleet::escrow::vault::Vault::open(&dir.join("bmc.key"), true).unwrap();
    let fleet = Arc::new(
        FleetIo::new(store, policy.clone())
            .unwrap()
            .with_vault(vault)
            .with_bmc_vault(bmc),
    );
    let policy_handle = policy.clone();
    let console = Console::new(
        fleet.clone(),
        &dir.join("tokens.json"),
        policy,
        "rules v1".into(),
    );
    let admin = console.tokens.create("ops", false, 1).unwrap();
    let viewer = console.tokens.create("viewer", true, 1).unwrap();
    T {
        app: router(console.clone()),
        console,
        fleet,
        policy: policy_handle,
        admin,
        viewer,
        dir,
    }
}

async fn send(t: &T, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let r = t.app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).to_string())
}

fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

fn post(path: &str, token: Option<&str>, ct: &str, body: &str) -> Request<Body> {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, ct);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_string())).unwrap()
}

/// A campaign over `macs` in one wave whose gate always holds.
fn one_wave_spec(name: &str, macs: Vec<Mac>) -> fleet::CampaignSpec {
    fleet::CampaignSpec {
        name: name.into(),
        targets: fleet::campaign::Targets::List(macs),
        waves: vec!["100%".parse().unwrap()],
        gate: fleet::campaign::Gate {
            min_success: 1,
            max_failure_rate: 1.0,
            min_soak_ms: 0,
        },
        concurrency: 10,
        host_timeout_ms: 3_600_000,
        verify_window_ms: None,
        key_release: Default::default(),
        trigger: Default::default(),
        trigger_wait_ms: 300_000,
        power_cycles: 0,
    }
}

/// An agent report of one NTFS volume with these crash dumps and inspected files.
fn report(
    mac: Mac,
    id: &str,
    result: fleet::agent::RunResult,
    status: &str,
    crash_dumps: Vec<fleet::agent::CrashDump>,
    inspected: Vec<fleet::agent::InspectedFile>,
) -> fleet::agent::Report {
    fleet::agent::Report {
        token: String::new(),
        mac: mac.to_string(),
        report_id: id.into(),
        result,
        reason: None,
        volumes: vec![fleet::agent::VolumeReport {
            device: "vda2".into(),
            kind: "ntfs".into(),
            status: status.into(),
            detail: String::new(),
            protectors: vec![],
            computer_name: None,
            crash_dumps,
            windows_version: None,
            inspected,
            event_log: None,
        }],
        files: vec![],
        rules_id: None,
        rules_version: None,
        agent_ms: 1,
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Logs in to the console with the admin token; returns the session cookie.
async fn console_login(t: &T) -> String {
    login_set_cookie(t)
        .await
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The console's Set-Cookie answer to a login with the admin token.
async fn login_set_cookie(t: &T) -> String {
    let (s, h, _) = send(
        t,
        post(
            "/login",
            None,
            "application/x-www-form-urlencoded",
            &format!("token={}", t.admin),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    h[header::SET_COOKIE].to_str().unwrap().to_string()
}

fn page_req(cookie: &str, path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

fn form_req(cookie: &str, path: &str, body: String) -> Request<Body> {
    Request::post(path)
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

/// The CSRF token a console page carries in its forms.
fn csrf_of(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no CSRF token in {html}"))
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn every_endpoint_refuses_missing_and_bad_credentials() {
    let t = setup("auth");
    let gets = [
        "/api/v1/summary",
        "/api/v1/hosts",
        "/api/v1/hosts/52:54:00:ab:00:01",
        "/api/v1/export",
        "/api/v1/events",
        "/api/v1/audit",
        "/api/v1/diagnosis",
        "/metrics",
    ];
    for p in gets {
        for tok in [
            None,
            Some("ubk_00000000000000000000000000000000"),
            Some("nonsense"),
        ] {
            let (s, h, b) = send(&t, get(p, tok)).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{p} with {tok:?}: {b}");
            assert!(
                json(&b)["error"].as_str().unwrap().len() > 10,
                "{p}: a reason"
            );
            assert!(h.contains_key(header::WWW_AUTHENTICATE));
        }
        // (Status only: the event stream never ends.)
        let r = t
            .app
            .clone()
            .oneshot(get(p, Some(&t.viewer)))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{p}: a read-only token may read"
        );
    }
    let req = Request::get("/api/v1/summary")
        .header(header::AUTHORIZATION, "Basic b3BzOm9wcw==")
        .body(Body::empty())
        .unwrap();
    let (s, _, b) = send(&t, req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(b.contains("Bearer"));
    // Writes: no token, and a read-only token.
    for (p, ct, body) in [
        (
            "/api/v1/hosts/import",
            "text/csv",
            "mac\n52:54:00:ab:01:01\n",
        ),
        (
            "/api/v1/hosts/actions",
            "application/json",
            r#"{"action":"retry","macs":["52:54:00:ab:00:01"]}"#,
        ),
    ] {
        let (s, _, _) = send(&t, post(p, None, ct, body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{p}");
        let (s, _, b) = send(&t, post(p, Some(&t.viewer), ct, body)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{p}: {b}");
        assert!(b.contains("read-only"));
    }
    // The OpenAPI document is public (it holds no data).
    let (s, _, b) = send(&t, get("/api/v1/openapi.json", None)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b)["openapi"], "3.0.3");
    assert_eq!(
        t.fleet
            .host(Mac([0x52, 0x54, 0, 0xab, 0, 1]))
            .unwrap()
            .state
            .name(),
        "failed",
        "nothing changed"
    );
}

/// The chart's series: sampled from the fleet, served by /api/v1/progress with the rate and the
/// estimate, drawn on the dashboard, kept in the store across a restart; a host's detail has its
/// stage strip.
#[tokio::test]
async fn progress_series_estimate_chart_and_stages() {
    let t = setup("progress");
    let a = Some(t.admin.as_str());
    // Two minutes ago and one minute ago: the rate is over the last 10 minutes of the clock.
    let t0 = fleet_service::now_ms() - 120_000;
    // 30 hosts: 10 done, 10 failed, 10 seen. Then 5 more done a minute later.
    assert!(t.fleet.sample_progress(t0));
    assert!(!t.fleet.sample_progress(t0 + 3_000), "no change: no sample");
    for i in [2u8, 5, 8, 11, 14] {
        let mut h = t.fleet.host(Mac([0x52, 0x54, 0, 0xab, 0, i])).unwrap();
        h.state = HostState::Remediated;
        t.fleet.put_fixture(h).unwrap();
    }
    assert!(t.fleet.sample_progress(t0 + 60_000));
    let (s, _, b) = send(&t, get("/api/v1/progress", a)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json(&b);
    assert_eq!(v["groups"][0], "done");
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{b}");
    assert_eq!(samples[0]["counts"], serde_json::json!([10, 0, 10, 10]));
    assert_eq!(samples[1]["counts"], serde_json::json!([15, 0, 5, 10]));
    assert_eq!(v["remaining"], 15);
    assert!(v["rate_per_min"].as_f64().unwrap() > 0.0, "{b}");
    assert!(v["finish"].as_str().unwrap().ends_with('Z'), "{b}");
    // Without a token: refused like every other endpoint.
    let (s, _, _) = send(&t, get("/api/v1/progress", None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The dashboard draws it.
    let cookie = console_login(&t).await;
    let (s, _, html) = send(&t, page_req(&cookie, "/")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        html.contains("id=\"progress-chart\"") && html.contains("data-points=\"2\""),
        "{html}"
    );
    assert!(html.contains("hosts a minute"), "the rate is said");
    // A restart keeps the series.
    let store = t.fleet.store_arc();
    let again = FleetIo::new(store, t.policy.clone()).unwrap();
    assert_eq!(again.progress().samples().len(), 2);
    // A host's detail: the strip of its latest attempt (one DHCP event in the fixture).
    let (_, _, b) = send(&t, get("/api/v1/hosts/52:54:00:ab:00:01", a)).await;
    let v = json(&b);
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 8);
    assert_eq!(stages[0]["name"], "DHCP");
    assert!(
        stages[0]["started"].is_string() && stages[1]["started"].is_null(),
        "{b}"
    );
}

#[tokio::test]
async fn list_filter_paginate_and_detail() {
    let t = setup("list");
    let a = Some(t.admin.as_str());
    let (s, _, b) = send(&t, get("/api/v1/summary", a)).await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&b);
    assert_eq!(
        (v["total"].as_u64(), v["done"].as_u64()),
        (Some(30), Some(10))
    );
    assert_eq!(v["by_state"]["failed"], 10);
    let (_, _, b) = send(&t, get("/api/v1/hosts?per_page=7&page=3", a)).await;
    let v = json(&b);
    assert_eq!(
        (v["total"].as_u64(), v["pages"].as_u64()),
        (Some(30), Some(5))
    );
    assert_eq!(v["hosts"][0]["mac"], "52:54:00:ab:00:0e");
    let (_, _, b) = send(&t, get("/api/v1/hosts?state=failed&site=berlin", a)).await;
    assert_eq!(json(&b)["total"], 3);
    let (_, _, b) = send(&t, get("/api/v1/hosts?tag=canary&state=remediated,seen", a)).await;
    assert_eq!(json(&b)["total"], 3);
    let (_, _, b) = send(&t, get("/api/v1/hosts?q=mounted", a)).await;
    assert_eq!(json(&b)["total"], 10);
    let (_, _, b) = send(&t, get("/api/v1/hosts?q=pc-02", a)).await;
    assert_eq!(json(&b)["total"], 10);
    // The name the agent read from the disk: searchable, shown in the Host column (marked as
    // the disk's word) when no name was imported, exported, never the imported name.
    let disk = Mac([0x52, 0x54, 0, 0xab, 0, 7]);
    t.fleet
        .update(disk, 2, &mut |h| {
            h.hostname = None;
            h.name_on_disk = Some("WKS-DISK-7".into());
            Ok(())
        })
        .unwrap();
    let (_, _, b) = send(&t, get("/api/v1/hosts?q=wks-disk", a)).await;
    let v = json(&b);
    assert_eq!(v["total"], 1, "{b}");
    assert_eq!(v["hosts"][0]["name_on_disk"], "WKS-DISK-7");
    assert!(v["hosts"][0]["hostname"].is_null());
    let cookie = console_login(&t).await;
    let (_, _, html) = send(&t, page_req(&cookie, "/?q=wks-disk")).await;
    assert!(
        html.contains("WKS-DISK-7 <small>(on disk)</small>"),
        "{html}"
    );
    let (_, _, html) = send(&t, page_req(&cookie, &format!("/hosts/{disk}"))).await;
    assert!(
        html.contains("id=\"name-on-disk\">WKS-DISK-7 <small>"),
        "{html}"
    );
    let (_, _, csv) = send(&t, get("/api/v1/export?format=csv", a)).await;
    assert!(
        csv.lines()
            .any(|l| l.contains("52:54:00:ab:00:07") && l.ends_with(",WKS-DISK-7")),
        "{csv}"
    );
    for bad in [
        "state=bogus",
        "page=0",
        "page=x",
        "per_page=100000",
        "per_page=-1",
        "colour=red",
        "q=a&q=b",
        "page=99999999999999999999999",
    ] {
        let (s, _, b) = send(&t, get(&format!("/api/v1/hosts?{bad}"), a)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert!(!json(&b)["error"].as_str().unwrap().is_empty());
    }
    let (s, _, b) = send(&t, get("/api/v1/hosts/52-54-00-AB-00-04", a)).await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&b);
    assert_eq!(v["host"]["hostname"], "pc-004");
    assert_eq!(v["events"][0]["kind"], "dhcp-discover");
    let (s, _, _) = send(&t, get("/api/v1/hosts/52:54:00:ff:ff:ff", a)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, b) = send(&t, get("/api/v1/hosts/not-a-mac", a)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, _, b) = send(&t, get("/api/v1/audit", a)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(json(&b).is_array());
    let (s, h, b) = send(&t, get("/metrics", a)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(b.contains("unbrick_hosts{state=\"failed\"} 10"), "{b}");
}

#[tokio::test]
async fn import_csv_and_json_with_bad_rows() {
    let t = setup("import");
    let a = Some(t.admin.as_str());
    let csv = "mac,hostname,site,tags\n52:54:00:ab:00:01,renamed,paris,x;y\n52:54:00:cd:00:01,new-1,paris,\nzz:zz,bad,,\n";
    let (s, _, b) = send(&t, post("/api/v1/hosts/import", a, "text/csv", csv)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json(&b);
    assert_eq!(
        (v["created"].as_u64(), v["updated"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["errors"][0]["line"], 4);
    let h = t.fleet.host(Mac([0x52, 0x54, 0, 0xab, 0, 1])).unwrap();
    assert_eq!(h.hostname.as_deref(), Some("renamed"));
    assert_eq!(h.tags, ["x", "y"]);
    assert_eq!(h.state.name(), "failed", "import does not touch the state");
    let (s, _, b) = send(
        &t,
        post(
            "/api/v1/hosts/import",
            a,
            "application/json",
            r#"[{"mac":"52:54:00:cd:00:02","site":"rome"}]"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        t.fleet
            .host(Mac([0x52, 0x54, 0, 0xcd, 0, 2]))
            .unwrap()
            .site
            .as_deref(),
        Some("rome")
    );
    for (ct, body, want) in [
        ("text/csv", "hostname\npc\n", StatusCode::BAD_REQUEST),
        ("text/csv", "mac\nnope\n", StatusCode::UNPROCESSABLE_ENTITY),
        ("application/json", "{", StatusCode::BAD_REQUEST),
        ("application/json", "{}", StatusCode::BAD_REQUEST),
        (
            "application/xml",
            "<hosts/>",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        let (s, _, b) = send(&t, post("/api/v1/hosts/import", a, ct, body)).await;
        assert_eq!(s, want, "{ct} {body:?}: {b}");
    }
    let req = Request::post("/api/v1/hosts/import")
        .header(header::AUTHORIZATION, format!("Bearer {}", t.admin))
        .header(header::CONTENT_TYPE, "text/csv")
        .body(Body::from(vec![0xff, 0xfe, 0x00]))
        .unwrap();
    let (s, _, _) = send(&t, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, _, b) = send(&t, get("/api/v1/audit", a)).await;
    assert!(
        b.contains("token:ops") && b.contains("1 created, 1 updated, 1 rows refused"),
        "{b}"
    );
}

#[tokio::test]
async fn bulk_actions() {
    let t = setup("actions");
    let a = Some(t.admin.as_str());
    let m1 = "52:54:00:ab:00:01"; // failed
    let m0 = "52:54:00:ab:00:00"; // remediated
    let body = format!(r#"{{"action":"retry","macs":["{m1}","{m0}","52:54:00:ff:00:00","junk"]}}"#);
    let (s, _, b) = send(
        &t,
        post("/api/v1/hosts/actions", a, "application/json", &body),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json(&b);
    assert_eq!((v["ok"].as_u64(), v["failed"].as_u64()), (Some(2), Some(2)));
    assert_eq!(
        t.fleet.host(m1.parse().unwrap()).unwrap().state,
        HostState::Seen
    );
    assert_eq!(
        t.fleet.host(m0.parse().unwrap()).unwrap().state,
        HostState::Seen
    );
    for (action, check) in [
        ("approve", "approved"),
        ("skip", "skipped"),
        ("mark-done", "recovered"),
    ] {
        let body = format!(r#"{{"action":"{action}","macs":["{m1}"]}}"#);
        let (s, _, b) = send(
            &t,
            post("/api/v1/hosts/actions", a, "application/json", &body),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let h = t.fleet.host(m1.parse().unwrap()).unwrap();
        match check {
            "approved" => assert!(h.approved),
            "skipped" => assert!(h.skipped),
            _ => assert_eq!(h.state, HostState::Recovered),
        }
    }
    let body = format!(r#"{{"action":"forget","macs":["{m1}"]}}"#);
    let (s, _, _) = send(
        &t,
        post("/api/v1/hosts/actions", a, "application/json", &body),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(t.fleet.host(m1.parse().unwrap()).is_none());
    assert!(t
        .fleet
        .store()
        .events(m1.parse().unwrap())
        .unwrap()
        .is_empty());
    let (s, _, _) = send(&t, get(&format!("/api/v1/hosts/{m1}"), a)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    for bad in [
        r#"{"action":"reboot","macs":["52:54:00:ab:00:02"]}"#,
        r#"{"action":"retry","macs":[]}"#,
        r#"{"action":"retry"}"#,
        r#"{"action":"retry","macs":["52:54:00:ab:00:02"],"extra":1}"#,
        r#"[1,2]"#,
        "",
    ] {
        let (s, _, b) = send(
            &t,
            post("/api/v1/hosts/actions", a, "application/json", bad),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert!(!json(&b)["error"].as_str().unwrap().is_empty());
    }
    let (_, _, b) = send(&t, get("/api/v1/audit", a)).await;
    let log = json(&b);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["forget", "mark-done", "skip", "approve", "retry"],
        "newest first"
    );
    // Controller actions: without a controller (or without the running server's clients)
    // each host is refused with the reason, and nothing leaves.
    let m2 = "52:54:00:ab:00:02";
    for action in ["netboot", "boot-disk", "power-cycle", "power-status"] {
        let body = format!(r#"{{"action":"{action}","macs":["{m2}","52:54:00:ff:00:09","junk"]}}"#);
        let (s, _, b) = send(
            &t,
            post("/api/v1/hosts/actions", a, "application/json", &body),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let v = json(&b);
        assert_eq!(v["failed"].as_u64(), Some(3), "{b}");
        let msgs: Vec<&str> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["message"].as_str().unwrap())
            .collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("running server") || m.contains("no management controller")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("unknown host")), "{msgs:?}");
    }
}

#[tokio::test]
async fn export_csv_and_json() {
    let t = setup("export");
    let a = Some(t.admin.as_str());
    let (s, h, b) = send(&t, get("/api/v1/export?format=csv", a)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .contains(".csv"));
    let lines: Vec<&str> = b.lines().collect();
    assert_eq!(lines.len(), 31);
    assert!(lines[0].starts_with("mac,hostname,site,tags,state,reason"));
    let (s, _, b) = send(&t, get("/api/v1/export", a)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b).as_array().unwrap().len(), 30);
    let (s, _, _) = send(&t, get("/api/v1/export?format=xlsx", a)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sse_streams_changes() {
    let t = setup("sse");
    let r = t
        .app
        .clone()
        .oneshot(get("/api/v1/events", Some(&t.viewer)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = r.into_body();
    let mut seen = String::new();
    let mac: Mac = "52:54:00:ab:00:02".parse().unwrap();
    t.fleet
        .event(mac, EventSource::Agent, "agent-hello", "agent up".into(), 5);
    while !seen.contains("agent up") {
        let f = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        if let Ok(d) = f.into_data() {
            seen.push_str(&String::from_utf8_lossy(&d));
        }
    }
    assert!(seen.contains("event: hello"));
    assert!(seen.contains("event: change"));
    assert!(
        seen.contains("\"mac\":\"52:54:00:ab:00:02\"") && seen.contains("\"state\":\"seen\""),
        "{seen}"
    );
}

#[tokio::test]
async fn console_login_csrf_and_forms() {
    let t = setup("console");
    // Pages need a session.
    let (s, h, _) = send(&t, get("/", None)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/login");
    let (s, _, b) = send(&t, get("/login", None)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains("<form method=\"post\" action=\"/login\">"));
    let (s, _, b) = send(
        &t,
        post(
            "/login",
            None,
            "application/x-www-form-urlencoded",
            "token=ubk_bad",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(b.contains("unknown or revoked"));
    let cookie = login_set_cookie(&t).await;
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let cookie = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |path: &str| page_req(&cookie, path);
    let (s, _, page) = send(&t, with_cookie("/?state=failed&per_page=5")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("data-mac=\"52:54:00:ab:00:01\""));
    assert!(page.contains("page 1 of 2"), "10 failed hosts, 5 per page");
    assert!(!page.contains("data-mac=\"52:54:00:ab:00:00\""), "filtered");
    let csrf = page
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let (s, _, page) = send(&t, with_cookie("/hosts/52:54:00:ab:00:01")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("no Windows volume could be mounted") && page.contains("dhcp-discover"));
    // The session reads the API with its cookie, but may not write without the CSRF header.
    let (s, _, _) = send(&t, with_cookie("/api/v1/summary")).await;
    assert_eq!(s, StatusCode::OK);
    let req = Request::post("/api/v1/hosts/actions")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"action":"skip","macs":["52:54:00:ab:00:01"]}"#,
        ))
        .unwrap();
    let (s, _, b) = send(&t, req).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(b.contains("CSRF"));
    // A form without the right CSRF token changes nothing.
    let form = |csrf: &str| {
        Request::post("/ui/actions")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "csrf={csrf}&action=skip&mac=52%3A54%3A00%3Aab%3A00%3A01&mac=52%3A54%3A00%3Aab%3A00%3A04"
            )))
            .unwrap()
    };
    let (s, _, _) = send(&t, form("wrong")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        !t.fleet
            .host("52:54:00:ab:00:01".parse().unwrap())
            .unwrap()
            .skipped
    );
    let (s, _, b) = send(&t, form(&csrf)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.contains("skip: 2 done, 0 refused"), "{b}");
    assert!(
        t.fleet
            .host("52:54:00:ab:00:04".parse().unwrap())
            .unwrap()
            .skipped
    );
    let req = Request::post("/ui/import")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!(
            "csrf={csrf}&csv=mac%2Chostname%0A52%3A54%3A00%3Aee%3A00%3A01%2Cfrom-form%0Abad%2Cx%0A"
        )))
        .unwrap();
    let (s, _, b) = send(&t, req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        b.contains("1 hosts created, 0 updated, 1 rows refused") && b.contains("line 3"),
        "{b}"
    );
    // The controller import form: sealed, summarised, bad rows by line.
    let req = Request::post("/ui/bmc/import")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!(
            "csrf={csrf}&csv=mac%2Ckind%2Caddress%2Cuser%2Csecret%0A52%3A54%3A00%3Aab%3A00%3A01%2Cipmi%2C10.99.7.5%2CADMIN%2CForm-Pw1%0Abad%2Cipmi%2C%2C%2C%0A"
        )))
        .unwrap();
    let (s, _, b) = send(&t, req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        b.contains("0 controllers on new hosts, 1 on known hosts, 1 rows refused")
            && b.contains("line 3")
            && !b.contains("Form-Pw1"),
        "{b}"
    );
    // Hostile values are escaped in pages.
    t.fleet
        .update("52:54:00:ab:00:05".parse().unwrap(), 1, &mut |h| {
            h.hostname = Some("<script>alert(1)</script>".into());
            Ok(())
        })
        .unwrap();
    let (_, _, page) = send(&t, with_cookie("/?q=ab:00:05")).await;
    assert!(
        !page.contains("<script>alert(1)"),
        "hostile hostname escaped"
    );
    assert!(page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"));
    // Log out: the cookie stops working.
    let req = Request::post("/logout")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={csrf}")))
        .unwrap();
    let (s, _, _) = send(&t, req).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, _, _) = send(&t, with_cookie("/api/v1/summary")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = send(&t, get("/assets/console.js", None)).await;
    assert_eq!(s, StatusCode::OK);
}

#[test]
fn openapi_names_every_api_route() {
    let doc: serde_json::Value = serde_json::from_str(web_console::openapi_document()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let src = include_str!("../src/lib.rs");
    for line in src.lines().filter(|l| l.contains(".route(\"/api/v1/")) {
        let p = line.split('"').nth(1).unwrap();
        if p == "/api/v1/openapi.json" {
            continue;
        }
        assert!(paths.contains_key(p), "{p} is not in the OpenAPI document");
    }
}

/// The generated document is whole: every `$ref` names a schema it defines, every operation
/// has an id and a 401, and no path is documented that the router does not serve.
#[test]
fn openapi_document_is_whole() {
    let doc: serde_json::Value = serde_json::from_str(web_console::openapi_document()).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x.as_str()) {
                        ("$ref", Some(r)) => out.push(r.to_string()),
                        _ => refs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r}"));
        assert!(schemas.contains_key(name), "{r} is not defined");
    }
    // A path parameter is one the path names ({mac}); anything else is a query parameter
    // (a query struct documented as path parameters sends fuzzers and clients astray).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let named = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    p["in"] == "path",
                    named,
                    "{method} {path}: parameter {name} is `in: {}`",
                    p["in"]
                );
            }
        }
    }
    let src = include_str!("../src/lib.rs");
    // Every "/api/v1/..." literal of the router, however rustfmt wrapped the .route( call.
    let routes: Vec<&str> = src
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|l| l.starts_with("/api/v1/") && *l != "/api/v1/openapi.json")
        .collect();
    for r in &routes {
        assert!(
            doc["paths"][r].is_object(),
            "{r} is routed but not documented"
        );
    }
    let mut ids = std::collections::BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        assert!(
            routes.contains(&path.as_str()),
            "{path} is documented but not routed"
        );
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id} twice");
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path}: no 401"
            );
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path}: no summary"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn campaigns_api() {
    let t = setup("campaigns");
    let a = Some(t.admin.as_str());
    let good = r#"{"name":"canary run","targets":{"tag":"canary"},"waves":["1","100%"],"gate":{"min_success":1,"max_failure_rate":0.0},"concurrency":2,"verify_window_minutes":15}"#;
    let (s, _, b) = send(&t, post("/api/v1/campaigns", a, "application/json", good)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let id = json(&b)["id"].as_str().unwrap().to_string();
    let (s, _, b) = send(&t, get(&format!("/api/v1/campaigns/{id}"), a)).await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&b);
    assert_eq!(
        (v["state"].as_str(), v["rules"].as_str()),
        (Some("draft"), Some("rules v1"))
    );
    for bad in [
        r#"{"name":"x","targets":{"tag":"canary"},"waves":[],"concurrency":1}"#,
        r#"{"name":"x","targets":{"tag":"canary"},"waves":["0"],"concurrency":1}"#,
        r#"{"name":"x","targets":{"tag":"canary"},"waves":["1"],"concurrency":0}"#,
        r#"{"name":"x","targets":{"all":false},"waves":["1"],"concurrency":1}"#,
        r#"{"name":"x","targets":{"macs":["zz"]},"waves":["1"],"concurrency":1}"#,
        r#"{"name":"x","targets":{"tag":"a","site":"b"},"waves":["1"],"concurrency":1}"#,
        r#"{"name":"","targets":{"all":true},"waves":["1"],"concurrency":1}"#,
        r#"{"name":"x","targets":{"all":true},"waves":["1"],"concurrency":1,"gate":{"max_failure_rate":2}}"#,
        r#"{"name":"x","targets":{"all":true},"waves":["1"],"concurrency":1,"colour":1}"#,
        "[]",
    ] {
        let (s, _, b) = send(&t, post("/api/v1/campaigns", a, "application/json", bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert!(!json(&b)["error"].as_str().unwrap().is_empty());
    }
    let (s, _, _) = send(
        &t,
        post(
            "/api/v1/campaigns",
            Some(&t.viewer),
            "application/json",
            good,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let act = |what: &str| {
        post(
            &format!("/api/v1/campaigns/{id}/{what}"),
            a,
            "application/json",
            "",
        )
    };
    let (s, _, b) = send(&t, act("pause")).await;
    assert_eq!(s, StatusCode::CONFLICT, "a draft cannot pause: {b}");
    let (s, _, b) = send(&t, act("start")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, _, b) = send(&t, get(&format!("/api/v1/campaigns/{id}"), a)).await;
    let v = json(&b);
    assert_eq!(v["state"], "running");
    assert_eq!(v["members"], 5, "the five canary hosts");
    assert_eq!(v["waves"][0]["hosts"], 1);
    let (s, _, _) = send(&t, act("start")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _, _) = send(&t, act("explode")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = send(
        &t,
        post("/api/v1/campaigns/c-nope/start", a, "application/json", ""),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A second campaign over the same hosts cannot start while the first is active.
    let all = r#"{"name":"everyone","targets":{"all":true},"waves":["100%"],"concurrency":5}"#;
    let (_, _, b) = send(&t, post("/api/v1/campaigns", a, "application/json", all)).await;
    let id2 = json(&b)["id"].as_str().unwrap().to_string();
    let (s, _, b) = send(
        &t,
        post(
            &format!("/api/v1/campaigns/{id2}/start"),
            a,
            "application/json",
            "",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(b.contains("one campaign per host"), "{b}");
    for w in ["pause", "resume", "abort"] {
        let (s, _, b) = send(&t, act(w)).await;
        assert_eq!(s, StatusCode::OK, "{w}: {b}");
    }
    let (s, _, b) = send(&t, get("/api/v1/campaigns", Some(&t.viewer))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b).as_array().unwrap().len(), 2);
    let (_, _, b) = send(&t, get("/api/v1/audit", a)).await;
    assert!(
        b.contains("campaign-start") && b.contains("campaign-abort"),
        "{b}"
    );
    // Persisted before the answer.
    let stored = t.fleet.store().campaigns().unwrap();
    assert!(stored
        .iter()
        .any(|c| c.id == id && c.state == fleet::CampaignState::Aborted));
}

#[tokio::test]
async fn campaign_pages_create_start_and_show_waves() {
    let t = setup("campaign-pages");
    let cookie = console_login(&t).await;
    let page = |path: &str| page_req(&cookie, path);
    let (s, _, b) = send(&t, page("/campaigns")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains("New campaign") && b.contains("No campaign yet"));
    let csrf = csrf_of(&b);
    let form = |path: &str, body: String| form_req(&cookie, path, body);
    let (s, _, b) = send(&t, form("/ui/campaigns", format!("csrf={csrf}&name=berlin&target_kind=site&target=berlin&waves=1%2C100%25&concurrency=3&min_success=1&max_failure_percent=10&soak_minutes=0&verify_minutes="))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.contains("Created as a draft"), "{b}");
    let id = b
        .split("<small class=\"mono\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    let (_, _, b) = send(
        &t,
        form(
            &format!("/ui/campaigns/{id}"),
            format!("csrf={csrf}&action=start"),
        ),
    )
    .await;
    assert!(b.contains("berlin is running"), "{b}");
    assert!(
        b.contains("<td>1</td><td>1</td>") || b.contains("<td>1</td>"),
        "waves table: {b}"
    );
    // Wave 1 is a host tagged canary (pc-000..pc-004 are), listed with a link to its page.
    let wave1 = b.split("<tr class=\"current\">").nth(1).unwrap_or_default();
    let wave1 = wave1.split("</tr>").next().unwrap_or_default();
    assert!(
        wave1.contains("<a href=\"/hosts/52:54:00:ab:00:00\">"),
        "wave 1 members: {wave1}"
    );
    let (s, _, _) = send(
        &t,
        form(
            &format!("/ui/campaigns/{id}"),
            "csrf=wrong&action=abort".into(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, _, b) = send(
        &t,
        form(
            "/ui/campaigns",
            format!("csrf={csrf}&name=&target_kind=all&waves=1&concurrency=1"),
        ),
    )
    .await;
    assert!(b.contains("Not created: name"), "{b}");
    let (_, _, b) = send(&t, page("/campaigns")).await;
    assert!(b.contains("running") && b.contains(&id));
}

const RP1: &str = "235818-357951-253979-013365-241120-245575-342914-591910";
const ID1: &str = "64311dea-4587-4029-924a-ba299647998e";
const ID2: &str = "3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0c";
const RP2: &str = "042647-302313-590458-071500-554323-116567-412181-516978";

#[tokio::test]
async fn bitlocker_keys_import_list_reveal_paste_and_release() {
    use fleet_service::escrow::KeyAnswer;
    let t = setup("bitlk");
    let m1 = Mac([0x52, 0x54, 0, 0xab, 0, 1]);
    let m2 = Mac([0x52, 0x54, 0, 0xab, 0, 2]);
    // An Active Directory export: pc-001's key, a key escrowed for another computer, a typo.
    let ad = format!(
        "\u{feff}\"ComputerName\",\"msFVE-RecoveryGuid\",\"msFVE-RecoveryPassword\"\r\n\
         \"PC-001\",\"{{{}}}\",\"{RP1}\"\r\n\
         \"PC-777\",\"{ID2}\",\"{RP2}\"\r\n\
         \"PC-003\",\"{ID2}\",\"{}\"\r\n",
        ID1.to_uppercase(),
        RP2.replace("516978", "516979")
    );
    let (s, _, b) = send(
        &t,
        post("/api/v1/bitlocker/keys", Some(&t.viewer), "text/csv", &ad),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, _, b) = send(&t, post("/api/v1/bitlocker/keys", None, "text/csv", &ad)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, _, b) = send(
        &t,
        post("/api/v1/bitlocker/keys", Some(&t.admin), "text/csv", &ad),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json(&b);
    assert_eq!(
        (v["format"].as_str(), v["imported"].as_u64()),
        (Some("active-directory"), Some(2)),
        "{b}"
    );
    assert_eq!(v["errors"][0]["line"], 4, "{b}");
    assert!(
        !b.contains("516979") && !b.contains("235818"),
        "no password in the answer: {b}"
    );
    for bad in ["", "name,site\nx,y\n", "\u{0}\u{1}"] {
        let (s, _, b) = send(
            &t,
            post("/api/v1/bitlocker/keys", Some(&t.admin), "text/csv", bad),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {b}");
    }
    // The list never carries a password; readers may list.
    let (s, _, b) = send(&t, get("/api/v1/bitlocker/keys", Some(&t.viewer))).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        b.contains(ID1) && b.contains("PC-001") && !b.contains("235818"),
        "{b}"
    );
    // Reveal: writers only, audited.
    let reveal = format!("/api/v1/bitlocker/keys/{ID1}/reveal");
    let (s, _, _) = send(&t, post(&reveal, Some(&t.viewer), "application/json", "")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, b) = send(&t, post(&reveal, Some(&t.admin), "application/json", "")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(json(&b)["recovery_password"], RP1);
    for (path, want) in [
        (
            "/api/v1/bitlocker/keys/not-a-guid/reveal",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/bitlocker/keys/00000000-0000-0000-0000-000000000000/reveal",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (s, _, b) = send(&t, post(path, Some(&t.admin), "application/json", "")).await;
        assert_eq!(s, want, "{path}: {b}");
    }

    // Release: only inside an active campaign.
    let now = 1_721_366_900_000;
    assert!(
        matches!(t.fleet.release_key(m1, &[ID1.into()], "vda3", "IP 10.0.0.9 (MAC 52:54:00:ab:00:09)", now), KeyAnswer::Refuse { reason: r, conflict: false } if r.contains("not in an active campaign"))
    );
    let spec = one_wave_spec("bitlk", vec![m1, m2]);
    spec.validate().unwrap();
    let hosts = t.fleet.hosts();
    t.policy.with(|cs| {
        let mut c =
            fleet::Campaign::new("c-bitlk".into(), spec.clone(), String::new(), now).unwrap();
        c.start(&hosts, &Default::default(), now).unwrap();
        cs.push(c);
    });
    // Both hosts' agents are up and scanning.
    for m in [m1, m2] {
        let mut h = t.fleet.host(m).unwrap();
        h.state = HostState::Scanning;
        t.fleet.put_fixture(h).unwrap();
    }
    let KeyAnswer::Release {
        protector_id,
        password,
    } = t.fleet.release_key(
        m1,
        &[ID1.into()],
        "vda3",
        "IP 10.0.0.9 (MAC 52:54:00:ab:00:09)",
        now,
    )
    else {
        panic!("pc-001's own key is released");
    };
    assert_eq!((protector_id.as_str(), password.expose()), (ID1, RP1));
    assert!(t.fleet.host(m1).unwrap().rotate_bitlocker_key);
    // Once per host per campaign.
    assert!(
        matches!(t.fleet.release_key(m1, &[ID1.into()], "vda3", "IP 10.0.0.9 (MAC 52:54:00:ab:00:09)", now + 1), KeyAnswer::Refuse { reason: r, conflict: true } if r.contains("already released"))
    );
    // pc-002 asking for a key escrowed for PC-777: refused.
    assert!(
        matches!(t.fleet.release_key(m2, &[ID2.into()], "vda3", "IP 10.0.0.9 (MAC 52:54:00:ab:00:09)", now), KeyAnswer::Refuse { reason: r, conflict: false } if r.contains("escrowed for another host") && !r.contains("PC-777"))
    );
    // pc-002's disk carries a protector nobody escrowed: it waits in needs-attention.
    let id3 = "b9859a34-8139-4d5e-a628-412bef9ba206";
    assert!(matches!(
        t.fleet.release_key(
            m2,
            &[id3.into()],
            "vda3",
            "IP 10.0.0.9 (MAC 52:54:00:ab:00:09)",
            now
        ),
        KeyAnswer::Wait(_)
    ));
    let h = t.fleet.host(m2).unwrap();
    assert_eq!(h.state.name(), "needs-attention");
    assert_eq!(h.bitlocker_waiting, vec![id3.to_string()]);
    let (_, _, b) = send(&t, get("/api/v1/hosts/52:54:00:ab:00:02", Some(&t.admin))).await;
    assert_eq!(json(&b)["host"]["bitlocker_waiting"][0], id3);
    // Filters find the hosts an admin must act on.
    let macs = |b: &str| -> Vec<String> {
        json(b)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["mac"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, _, b) = send(&t, get("/api/v1/hosts?flag=key-needed", Some(&t.admin))).await;
    assert_eq!(
        (s, macs(&b)),
        (StatusCode::OK, vec!["52:54:00:ab:00:02".to_string()])
    );
    let (_, _, b) = send(&t, get("/api/v1/hosts?flag=rotate-key", Some(&t.admin))).await;
    assert_eq!(macs(&b), vec!["52:54:00:ab:00:01".to_string()]);
    let (s, _, b) = send(&t, get("/api/v1/hosts?flag=keys", Some(&t.admin))).await;
    assert!(
        s == StatusCode::BAD_REQUEST && b.contains("key-needed"),
        "{b}"
    );
    let cookie = console_login(&t).await;
    let (_, _, b) = send(&t, page_req(&cookie, "/?flag=key-needed")).await;
    assert!(
        b.contains("data-mac=\"52:54:00:ab:00:02\"")
            && !b.contains("data-mac=\"52:54:00:ab:00:01\""),
        "{b}"
    );
    assert!(b.contains("<option value=\"key-needed\" selected>"), "{b}");
    // The paste: bad bodies and passwords refused with a reason, then the key.
    let paste = "/api/v1/hosts/52:54:00:ab:00:02/bitlocker-key";
    for (body, want) in [
        ("{}".to_string(), StatusCode::BAD_REQUEST),
        ("not json".to_string(), StatusCode::BAD_REQUEST),
        (
            r#"{"recovery_password": "123", "extra": 1}"#.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"recovery_password": "123"}"#.to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!(
                r#"{{"recovery_password": "{}"}}"#,
                RP2.replace("516978", "516979")
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!(r#"{{"recovery_password": "{RP2}", "protector_id": "x"}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (s, _, b) = send(&t, post(paste, Some(&t.admin), "application/json", &body)).await;
        assert_eq!(s, want, "{body}: {b}");
    }
    let (s, _, _) = send(
        &t,
        post(
            paste,
            Some(&t.viewer),
            "application/json",
            &format!(r#"{{"recovery_password": "{RP2}"}}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, b) = send(
        &t,
        post(
            "/api/v1/hosts/52:54:00:ab:00:77/bitlocker-key",
            Some(&t.admin),
            "application/json",
            &format!(r#"{{"recovery_password": "{RP2}"}}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, _, b) = send(
        &t,
        post(
            paste,
            Some(&t.admin),
            "application/json",
            &format!(r#"{{"recovery_password": "{RP2}"}}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(json(&b)["protector_id"], id3);
    let KeyAnswer::Release { password, .. } = t.fleet.release_key(
        m2,
        &[id3.into()],
        "vda3",
        "IP 10.0.0.9 (MAC 52:54:00:ab:00:09)",
        now + 2,
    ) else {
        panic!("the pasted key is released to the waiting host");
    };
    assert_eq!(password.expose(), RP2);
    assert!(t.fleet.host(m2).unwrap().bitlocker_waiting.is_empty());
    assert!(
        matches!(t.fleet.release_key(m2, &[id3.into()], "vda3", "IP 10.0.0.9 (MAC 52:54:00:ab:00:09)", now + 3), KeyAnswer::Refuse { reason: r, conflict: true } if r.contains("already released"))
    );
    // The export flags both hosts for a key rotation.
    let (_, _, b) = send(&t, get("/api/v1/export?format=csv", Some(&t.admin))).await;
    let rot: Vec<&str> = b
        .lines()
        .filter(|l| {
            l.rsplit_once(',')
                .is_some_and(|(rest, _name_on_disk)| rest.ends_with(",yes"))
        })
        .collect();
    assert_eq!(rot.len(), 2, "{b}");
    // The audit log has every import, reveal, release, refusal and paste, and no password.
    let (_, _, b) = send(&t, get("/api/v1/audit", Some(&t.admin))).await;
    for what in [
        "bitlocker-import",
        "bitlocker-reveal",
        "bitlocker-release",
        "bitlocker-refuse",
        "bitlocker-paste",
        "bitlocker-wait",
    ] {
        assert!(b.contains(what), "{what} missing: {b}");
    }
    for pw in [RP1, RP2, "235818", "042647"] {
        assert!(!b.contains(pw), "a password in the audit log: {b}");
        for m in [m1, m2] {
            let ev = t.fleet.store().events(m).unwrap();
            assert!(ev.iter().all(|e| !e.message.contains(pw)), "{ev:?}");
        }
    }
}

#[tokio::test]
async fn bitlocker_console_pages_import_reveal_and_paste() {
    let t = setup("bitlk-pages");
    let cookie = console_login(&t).await;
    let page = |path: &str| page_req(&cookie, path);
    let form = |path: &str, body: String| form_req(&cookie, path, body);
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let (s, _, b) = send(&t, page("/bitlocker")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains("0 key(s) escrowed"), "{b}");
    let csrf = csrf_of(&b);
    // Import a plain CSV through the form (one bad row), without and with the CSRF token.
    let csv =
        format!("protector_id,recovery_password,hostname\n{ID1},{RP1},pc-001\n{ID2},123,pc-002\n");
    let (s, _, _) = send(
        &t,
        form(
            "/ui/bitlocker/import",
            format!("csrf=wrong&csv={}", enc(&csv)),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, b) = send(
        &t,
        form(
            "/ui/bitlocker/import",
            format!("csrf={csrf}&csv={}", enc(&csv)),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.contains("1 keys imported") && b.contains("line 3"), "{b}");
    let (_, _, b) = send(&t, page("/bitlocker")).await;
    assert!(
        b.contains(ID1) && b.contains("pc-001") && !b.contains(RP1),
        "{b}"
    );
    // Reveal: shown on the result page, counted, audited.
    let (s, _, b) = send(
        &t,
        form(
            "/ui/bitlocker/reveal",
            format!("csrf={csrf}&protector_id={ID1}"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains(RP1), "{b}");
    let (_, _, b) = send(&t, get("/api/v1/audit", Some(&t.admin))).await;
    assert!(
        b.contains("bitlocker-reveal") && b.contains("console:ops"),
        "{b}"
    );
    // A host waiting for a key shows the paste form; a bad key is refused with its reason, the
    // right one goes back to the host page.
    let m = Mac([0x52, 0x54, 0, 0xab, 0, 5]);
    t.fleet
        .update(m, 1, &mut |h| {
            h.bitlocker_waiting = vec![ID2.into()];
            h.rotate_bitlocker_key = true;
            Ok(())
        })
        .unwrap();
    let (_, _, b) = send(&t, page("/hosts/52:54:00:ab:00:05")).await;
    assert!(
        b.contains("Waiting for a BitLocker recovery key") && b.contains(ID2),
        "{b}"
    );
    assert!(b.contains("rotate BitLocker recovery key"), "{b}");
    let (s, _, b) = send(
        &t,
        form(
            "/ui/hosts/52:54:00:ab:00:05/bitlocker-key",
            format!("csrf={csrf}&protector_id={ID2}&recovery_password=123"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(b.contains("48 digits"), "{b}");
    let (s, h, _) = send(
        &t,
        form(
            "/ui/hosts/52:54:00:ab:00:05/bitlocker-key",
            format!(
                "csrf={csrf}&protector_id={ID2}&recovery_password={}",
                enc(RP2)
            ),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/hosts/52:54:00:ab:00:05");
    let (_, _, b) = send(&t, get("/api/v1/bitlocker/keys", Some(&t.admin))).await;
    assert!(b.contains(ID2) && b.contains("\"console\""), "{b}");
}

fn from(mut req: Request<Body>, ip: &str) -> Request<Body> {
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(
            ip.parse().unwrap(),
            40_000,
        )));
    req
}

#[tokio::test]
async fn plain_http_serves_the_console_only_to_this_machine() {
    let t = setup("plain");
    let app = web_console::plain_http_router(
        t.console.clone(),
        web_console::transport::PlainHttp {
            https_base: "https://10.99.0.1:8443".into(),
            local: vec!["10.99.0.1".parse().unwrap()],
        },
    );
    let send = |req: Request<Body>| {
        let app = app.clone();
        async move {
            let r = app.oneshot(req).await.unwrap();
            let (s, h) = (r.status(), r.headers().clone());
            let b = r.into_body().collect().await.unwrap().to_bytes();
            (s, h, String::from_utf8_lossy(&b).to_string())
        }
    };
    // A browser on the LAN is sent to HTTPS, path and query kept.
    let (s, h, _) = send(from(get("/hosts/52:54:00:ab:00:01?x=1", None), "10.99.0.7")).await;
    assert_eq!(s, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        h[header::LOCATION],
        "https://10.99.0.1:8443/hosts/52:54:00:ab:00:01?x=1"
    );
    // A bearer token in clear from the LAN is refused, with what to do.
    let (s, _, b) = send(from(get("/api/v1/summary", Some(&t.admin)), "10.99.0.7")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(b.contains("HTTPS only") && b.contains("revoke"), "{b}");
    // A login form posted in clear is refused.
    let login = post(
        "/login",
        None,
        "application/x-www-form-urlencoded",
        &format!("token={}", t.admin),
    );
    let (s, h, b) = send(from(login, "10.99.0.7")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(!h.contains_key(header::SET_COOKIE));
    // The machine itself (loopback, or its own address) may use plain HTTP.
    for ip in ["127.0.0.1", "10.99.0.1", "::1"] {
        let (s, _, b) = send(from(get("/api/v1/summary", Some(&t.admin)), ip)).await;
        assert_eq!(s, StatusCode::OK, "{ip}: {b}");
    }
}

#[tokio::test]
async fn console_answers_forbid_framing_and_the_cookie_is_host_only_and_secure() {
    let t = setup("headers");
    let (_, h, _) = send(&t, get("/login", None)).await;
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let (_, h, _) = send(&t, get("/api/v1/summary", Some(&t.admin))).await;
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "the API too");
    let c = login_set_cookie(&t).await;
    assert!(c.starts_with("__Host-unbrick_session="), "{c}");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(c.split("; ").any(|a| a == attr), "{attr} in {c}");
    }
    assert!(!c.contains("Domain="), "{c}");
}

#[tokio::test]
async fn logins_are_rate_limited_per_address() {
    let t = setup("ratelimit");
    let login = |token: &str, ip: &str| {
        from(
            post(
                "/login",
                None,
                "application/x-www-form-urlencoded",
                &format!("token={token}"),
            ),
            ip,
        )
    };
    let wrong = "ubk_wrongwrongwrongwrongwrongwrong12";
    for _ in 0..web_console::transport::LOGIN_FAILURES_PER_IP {
        let (s, _, _) = send(&t, login(wrong, "10.99.0.9")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Locked out for the window, even with the right token.
    let (s, h, b) = send(&t, login(&t.admin, "10.99.0.9")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert!(b.contains("Too many failed logins"), "{b}");
    let wait: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another address is not.
    let (s, _, _) = send(&t, login(&t.admin, "10.99.0.10")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_is_revoked() {
    let t = setup("sserevoke");
    let tok = t.console.tokens.create("watcher", true, 1).unwrap();
    let r = t
        .app
        .clone()
        .oneshot(get("/api/v1/events", Some(&tok)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("hello"));
    assert!(t.console.tokens.revoke("watcher").unwrap());
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(f) = body.frame().await {
            f.unwrap();
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended after the revocation");
}

/// A campaign with `key_release: confirm`: the agent waits until an admin approves the open
/// wave (one API call for the wave), then the key leaves.
#[tokio::test]
async fn confirm_campaigns_release_keys_after_a_wave_approval() {
    use fleet_service::escrow::KeyAnswer;
    let t = setup("confirm");
    let m1 = Mac([0x52, 0x54, 0, 0xab, 0, 1]);
    let csv = format!("protector_id,recovery_password,hostname\n{ID1},{RP1},pc-001\n");
    let (s, _, b) = send(
        &t,
        post("/api/v1/bitlocker/keys", Some(&t.admin), "text/csv", &csv),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let body = r#"{"name":"confirm","targets":{"macs":["52:54:00:ab:00:01","52:54:00:ab:00:02"]},"waves":["100%"],"concurrency":5,"gate":{"min_success":0,"max_failure_rate":1.0},"key_release":"confirm"}"#;
    let (s, _, b) = send(
        &t,
        post(
            "/api/v1/campaigns",
            Some(&t.admin),
            "application/json",
            body,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let id = json(&b)["id"].as_str().unwrap().to_string();
    let (s, _, b) = send(
        &t,
        post(
            &format!("/api/v1/campaigns/{id}/start"),
            Some(&t.admin),
            "application/json",
            "",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, _, b) = send(&t, get(&format!("/api/v1/campaigns/{id}"), Some(&t.admin))).await;
    assert_eq!(json(&b)["key_release"], "confirm", "{b}");
    let mut h = t.fleet.host(m1).unwrap();
    h.state = HostState::Scanning;
    t.fleet.put_fixture(h).unwrap();
    let peer = "IP 10.0.0.9 (MAC 52:54:00:ab:00:01)";
    let now = fleet_service::now_ms();
    match t.fleet.release_key(m1, &[ID1.into()], "vda3", peer, now) {
        KeyAnswer::Wait(w) => assert!(w.contains("only on an admin's approval"), "{w}"),
        _ => panic!("waits for the approval"),
    }
    // A read-only token cannot approve; an admin approves the open wave in one call.
    let approve = format!("/api/v1/campaigns/{id}/approve-keys");
    let (s, _, _) = send(&t, post(&approve, Some(&t.viewer), "application/json", "")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, b) = send(&t, post(&approve, Some(&t.admin), "application/json", "")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.contains("approved for 2 hosts of wave 1"), "{b}");
    let KeyAnswer::Release { password, .. } =
        t.fleet
            .release_key(m1, &[ID1.into()], "vda3", peer, now + 1)
    else {
        panic!("released after the approval");
    };
    assert_eq!(password.expose(), RP1);
    let (_, _, b) = send(&t, get("/api/v1/audit", Some(&t.admin))).await;
    assert!(b.contains("approve-key") && b.contains(peer), "{b}");
}

#[tokio::test]
async fn controllers_import_seals_secrets_and_the_list_never_shows_one() {
    let t = setup("bmc");
    let fp = "sha256:".to_string() + &"ab".repeat(32);
    let csv = format!(
        "mac,kind,address,port,tls,fingerprint,user,secret\n\
         52:54:00:ab:00:01,amt,10.99.7.1,,yes,{fp},admin,Amt-Pa55!\n\
         52:54:00:ab:00:02,redfish,10.99.7.2,,,{fp},root,calvin-77\n\
         52:54:00:ab:00:03,wol,,,,,,\n\
         52:54:00:ab:00:04,ipmi,not-an-ip,,,,ADMIN,Ipmi-S3cret\n"
    );
    let (s, _, _) = send(
        &t,
        post("/api/v1/bmc/import", Some(&t.viewer), "text/csv", &csv),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "read-only tokens cannot import");
    let (s, _, b) = send(
        &t,
        post("/api/v1/bmc/import", Some(&t.admin), "text/csv", &csv),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json(&b);
    assert_eq!(
        (v["created"].as_u64(), v["updated"].as_u64()),
        (Some(0), Some(3)),
        "{b}"
    );
    assert_eq!(v["errors"][0]["line"], 5, "{b}");
    assert!(
        !b.contains("Ipmi-S3cret"),
        "an error never quotes a secret: {b}"
    );
    let (s, _, b) = send(&t, get("/api/v1/bmc", Some(&t.viewer))).await;
    assert_eq!(s, StatusCode::OK);
    let l = json(&b);
    assert_eq!(l["controllers"].as_array().unwrap().len(), 3, "{b}");
    assert_eq!(
        l["controllers"][0]["summary"],
        "amt at 10.99.7.1:16993 (TLS, pinned), user admin, secret sealed"
    );
    assert_eq!(l["controllers"][1]["port"], 443);
    assert_eq!(l["controllers"][2]["kind"], "wol");
    // Nowhere in the answers, the timeline, the audit log or the store in clear.
    let (_, _, detail) = send(&t, get("/api/v1/hosts/52:54:00:ab:00:01", Some(&t.admin))).await;
    let (_, _, audit) = send(&t, get("/api/v1/audit", Some(&t.admin))).await;
    assert!(audit.contains("bmc-import"), "{audit}");
    let h = t.fleet.host(Mac([0x52, 0x54, 0, 0xab, 0, 1])).unwrap();
    let stored = serde_json::to_string(&h).unwrap();
    for text in [&b, &detail, &audit, &stored] {
        assert!(
            !text.contains("Amt-Pa55!") && !text.contains("calvin-77"),
            "{text}"
        );
    }
    // The sealed secret opens with the controllers' key, for that host only.
    let bmc = fleet::escrow::vault::Vault::open(&t.dir.join("bmc.key"), false).unwrap();
    let sealed = h.controller.unwrap().sealed_secret.unwrap();
    let open = bmc
        .open_bytes(&fleet::bmc::secret_aad(h.mac), &sealed)
        .unwrap();
    assert_eq!(&open[..], b"Amt-Pa55!");
    assert!(bmc
        .open_bytes(
            &fleet::bmc::secret_aad(Mac([0x52, 0x54, 0, 0xab, 0, 2])),
            &sealed
        )
        .is_err());
    // Nothing good: 422 with the reasons; no mac/kind header: 400.
    let (s, _, b) = send(
        &t,
        post(
            "/api/v1/bmc/import",
            Some(&t.admin),
            "text/csv",
            "mac,kind\nzz,amt\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, _, _) = send(
        &t,
        post(
            "/api/v1/bmc/import",
            Some(&t.admin),
            "text/csv",
            "name\nx\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_hundred_thousand_row_import_fits_and_a_huge_body_is_refused_with_the_reason() {
    let t = setup("bodies");
    let a = Some(t.admin.as_str());
    let mut csv = String::from("mac,hostname,site,tags\n");
    for i in 0..100_000u32 {
        csv.push_str(&format!(
            "52:54:{:02x}:{:02x}:{:02x}:{:02x},pc-{i:06}-berlin-floor-3,berlin,finance\n",
            0x10 + (i >> 24) as u8,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8
        ));
    }
    assert!(csv.len() > 5_000_000, "{} bytes", csv.len());
    let mut req = post("/api/v1/hosts/import", a, "text/csv", &csv);
    req.headers_mut().insert(
        header::CONTENT_LENGTH,
        csv.len().to_string().parse().unwrap(),
    );
    let (s, _, b) = send(&t, req).await;
    assert_eq!(s, StatusCode::OK, "{}", &b[..b.len().min(300)]);
    assert_eq!(json(&b)["created"].as_u64(), Some(100_000), "{b}");
    // 200 MB: refused from its Content-Length, with the reason, before it is read.
    let huge = vec![b'a'; 200_000_000];
    let req = Request::post("/api/v1/hosts/import")
        .header(header::CONTENT_TYPE, "text/csv")
        .header(header::CONTENT_LENGTH, huge.len())
        .header(header::AUTHORIZATION, format!("Bearer {}", t.admin))
        .body(Body::from(huge))
        .unwrap();
    let (s, _, b) = send(&t, req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert!(
        json(&b)["error"]
            .as_str()
            .unwrap()
            .contains("at most 16 MiB"),
        "{b}"
    );
    // A body without a length is cut at the same size.
    let chunks = futures_stream(20 << 20);
    let req = Request::post("/api/v1/hosts/import")
        .header(header::CONTENT_TYPE, "text/csv")
        .header(header::AUTHORIZATION, format!("Bearer {}", t.admin))
        .body(chunks)
        .unwrap();
    let (s, _, _) = send(&t, req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A streamed body of `n` bytes with no length known in advance.
fn futures_stream(n: usize) -> Body {
    let chunk = axum::body::Bytes::from(vec![b'x'; 1 << 20]);
    let parts: Vec<Result<axum::body::Bytes, std::io::Error>> =
        (0..n >> 20).map(|_| Ok(chunk.clone())).collect();
    Body::from_stream(tokio_stream::iter(parts))
}

/// A host page shows the newest events only and says where the rest are; the API keeps the
/// whole timeline.
#[tokio::test]
async fn a_long_timeline_shows_its_newest_events_and_points_to_the_rest() {
    let t = setup("long-timeline");
    let mac = Mac([0x52, 0x54, 0, 0xab, 0, 2]);
    let short = Mac([0x52, 0x54, 0, 0xab, 0, 3]);
    for i in 0..(web_console::html::HOST_PAGE_EVENTS as u64 + 40) {
        t.fleet
            .store()
            .append_event(
                mac,
                &Event {
                    time_ms: 1_721_366_820_000 + i * 1000,
                    source: EventSource::Tftp,
                    kind: "tftp-done".into(),
                    message: format!("transfer number {i}"),
                },
            )
            .unwrap();
    }
    let cookie = console_login(&t).await;
    let (s, _, page) = send(&t, page_req(&cookie, &format!("/hosts/{mac}"))).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("id=\"timeline-older\""), "{page}");
    assert_eq!(
        page.matches("<li class=\"src-").count(),
        web_console::html::HOST_PAGE_EVENTS
    );
    let last = web_console::html::HOST_PAGE_EVENTS + 39;
    assert!(page.contains(&format!("transfer number {last}<")));
    assert!(!page.contains("transfer number 39<") && page.contains("transfer number 40<"));
    let (_, _, b) = send(&t, get(&format!("/api/v1/hosts/{mac}"), Some(&t.admin))).await;
    let v = json(&b);
    // The API: the setup's one event and every one of these.
    assert_eq!(
        v["events"].as_array().unwrap().len(),
        web_console::html::HOST_PAGE_EVENTS + 41
    );
    let (_, _, page) = send(&t, page_req(&cookie, &format!("/hosts/{short}"))).await;
    assert!(!page.contains("timeline-older"));
}

/// The dashboard's first-run panel lists only the steps not yet taken.
#[tokio::test]
async fn the_first_run_panel_names_only_what_is_left() {
    let t = setup("first-run");
    let cookie = console_login(&t).await;
    // Hosts exist, the image is not known, no campaign: only the campaign step.
    let (_, _, page) = send(&t, page_req(&cookie, "/")).await;
    assert!(page.contains("id=\"first-run\"") && page.contains("id=\"step-campaign\""));
    assert!(!page.contains("id=\"step-image\"") && !page.contains("id=\"step-netboot\""));
    // No image: its step comes first, with the command.
    t.console.health.write().unwrap().image_ready = Some(false);
    let (_, _, page) = send(&t, page_req(&cookie, "/")).await;
    let (image, campaign) = (
        page.find("id=\"step-image\"").expect("image step"),
        page.find("id=\"step-campaign\"").unwrap(),
    );
    assert!(image < campaign && page.contains("unbrick image build"));
    // Everything done: no panel.
    t.console.health.write().unwrap().image_ready = Some(true);
    let spec = one_wave_spec("first", vec![Mac([0x52, 0x54, 0, 0xab, 0, 1])]);
    let camp = fleet::Campaign::new("c1".into(), spec, "rules v1".into(), 1).unwrap();
    t.policy.with(|cs| cs.push(camp));
    let (_, _, page) = send(&t, page_req(&cookie, "/")).await;
    assert!(!page.contains("id=\"first-run\""), "{page}");
}

/// The Diagnosis page and API group hosts by what stops their boot chain, with the advice; a
/// host whose agent spoke, or one still within its grace, is not listed.
#[tokio::test]
async fn diagnosis_groups_boot_chain_problems_with_advice() {
    let t = setup("diagnosis");
    let now = fleet_service::now_ms();
    let offer = |t0: u64| Event {
        time_ms: t0,
        source: EventSource::Dhcp,
        kind: "dhcp-discover".into(),
        message: "Discover on :67 from x (PXE UefiX64), decision payload, boot file shimx64.efi"
            .into(),
    };
    let tftp = |t0: u64, file: &str, bytes: u64, outcome: &str| {
        Event {
        time_ms: t0,
        source: EventSource::Tftp,
        kind: "tftp".into(),
        message: format!(
            "{file} {bytes}/950000 bytes to 10.99.0.101:1024 in 9 ms (blksize 1468, windowsize 1): {outcome}"
        ),
    }
    };
    let hosts: [(Mac, Vec<Event>); 4] = [
        // Shim fetched two minutes ago, grub never.
        (
            Mac([0x52, 0x54, 0, 0xdd, 0, 1]),
            vec![
                offer(now - 120_000),
                tftp(now - 119_000, "shimx64.efi", 950_000, "complete"),
            ],
        ),
        (
            Mac([0x52, 0x54, 0, 0xdd, 0, 2]),
            vec![
                offer(now - 121_000),
                tftp(now - 118_000, "shimx64.efi", 950_000, "complete"),
            ],
        ),
        // Two transfers stopped at block 1.
        (
            Mac([0x52, 0x54, 0, 0xdd, 0, 3]),
            vec![
                offer(now - 90_000),
                tftp(now - 89_000, "shimx64.efi", 0, "timed-out"),
                offer(now - 60_000),
                tftp(now - 59_000, "shimx64.efi", 0, "timed-out"),
            ],
        ),
        // Shim a second ago: within its grace.
        (
            Mac([0x52, 0x54, 0, 0xdd, 0, 4]),
            vec![
                offer(now - 2_000),
                tftp(now - 1_000, "shimx64.efi", 950_000, "complete"),
            ],
        ),
    ];
    for (mac, events) in &hosts {
        t.fleet
            .update(*mac, now - 200_000, &mut |h| {
                h.netboot_ms = now - 200_000;
                Ok(())
            })
            .unwrap();
        for e in events {
            t.fleet.store().append_event(*mac, e).unwrap();
        }
    }
    // A host whose agent reported a crash dump (what is crashing the fleet).
    let crashed = Mac([0x52, 0x54, 0, 0xdd, 0, 9]);
    t.fleet
        .update(crashed, now, &mut |h| {
            h.last_report = Some(report(
                crashed,
                "r1",
                fleet::agent::RunResult::Remediated,
                "remediated",
                vec![fleet::agent::CrashDump {
                    path: "Windows\\Minidump\\071924-8765-01.dmp".into(),
                    size: 65536,
                    written_unix: 1_721_362_200,
                    bugcheck: "0x00000050".into(),
                    bugcheck_name: Some("PAGE_FAULT_IN_NONPAGED_AREA".into()),
                    parameters: vec![
                        "0xFFFF840E12340000".into(),
                        "0x0".into(),
                        "0xFFFFF8076A2B1C3D".into(),
                        "0x2".into(),
                    ],
                    dump_time_unix: Some(1_721_362_200),
                    build: 19045,
                    kind: "small (minidump)".into(),
                    driver: Some("csagent.sys".into()),
                    error: None,
                }],
                vec![],
            ));
            let v = &mut h.last_report.as_mut().unwrap().volumes[0];
            v.event_log = Some(fleet::agent::EventLogScan {
                path: r"Windows\System32\winevt\Logs\System.evtx".into(),
                records: 1200,
                unreadable: 0,
                events: vec![fleet::agent::LogEvent {
                    kind: "bugcheck".into(),
                    provider: "Microsoft-Windows-WER-SystemErrorReporting".into(),
                    event_id: 1001,
                    time_unix: 1_721_362_260,
                    bugcheck: Some("0x00000050".into()),
                    parameters: vec!["0xFFFF840E12340000".into()],
                    detail: "dump saved in C:\\Windows\\MEMORY.DMP".into(),
                }],
                error: None,
            });
            Ok(())
        })
        .unwrap();
    let (s, _, b) = send(&t, get("/api/v1/diagnosis", Some(&t.viewer))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json(&b);
    assert_eq!(v["crashes"][0]["bugcheck"], "0x00000050", "{v}");
    assert_eq!(v["crashes"][0]["hosts"], 1);
    assert_eq!(v["crashes"][0]["driver"], "csagent.sys", "{v}");
    assert_eq!(v["events"][0]["kind"], "bugcheck", "{v}");
    assert_eq!(v["events"][0]["bugcheck"], "0x00000050");
    assert_eq!(v["events"][0]["hosts"], 1);
    assert_eq!(v["crashes"][0]["examples"][0]["mac"], "52:54:00:dd:00:09");
    assert_eq!(v["looked_at"], 4, "{v}");
    let groups = v["boot"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");
    assert_eq!(groups[0]["problem"], "tftp-stalls");
    assert_eq!(groups[0]["hosts"], 1);
    assert_eq!(groups[1]["problem"], "shim-refused");
    assert_eq!(groups[1]["hosts"], 2);
    assert!(groups[1]["advice"]
        .as_str()
        .unwrap()
        .contains("third-party CA"));
    let listed: Vec<&str> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["mac"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "52:54:00:dd:00:01",
            "52:54:00:dd:00:02",
            "52:54:00:dd:00:03"
        ]
    );
    assert_eq!(v["hosts"][2]["finding"]["stall"]["block"], 1);
    // The console page says the same.
    let cookie = console_login(&t).await;
    let (s, _, page) = send(&t, page_req(&cookie, "/diagnosis")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("data-problem=\"shim-refused\""), "{page}");
    assert!(page.contains("2 host(s): firmware refused shim"), "{page}");
    assert!(page.contains("data-mac=\"52:54:00:dd:00:03\""));
    assert!(!page.contains("52:54:00:dd:00:04"));
    assert!(page.contains("href=\"/diagnosis\""), "nav link");
    assert!(
        page.contains("1 host(s): bugcheck 0x00000050 PAGE_FAULT_IN_NONPAGED_AREA"),
        "{page}"
    );
    assert!(
        page.contains("PAGE_FAULT_IN_NONPAGED_AREA in <span class=\"mono\">csagent.sys</span>"),
        "{page}"
    );
    assert!(page.contains("2024-07-19T04:10:00Z"), "{page}");
    assert!(
        page.contains("rebooted from a bugcheck (WER 1001)"),
        "{page}"
    );
    let (s, _, host) = send(&t, page_req(&cookie, "/hosts/52:54:00:dd:00:09")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(host.contains("System event log on vda2"), "{host}");
    assert!(host.contains("1200 record(s) read"), "{host}");
    assert!(host.contains("in csagent.sys"), "{host}");
    // The host page lists the dump under its volume.
    let (_, _, hp) = send(&t, page_req(&cookie, &format!("/hosts/{crashed}"))).await;
    assert!(
        hp.contains("Crash dumps on vda2") && hp.contains("0xFFFFF8076A2B1C3D"),
        "{hp}"
    );
}

/// A read-only scan across hosts: the file on every crashing host and on none of the others
/// is named the suspect (API, page, text), and its drafted rule, once signed, quarantines
/// exactly that file: the bad content at its write time, not the vendor's fixed file at the
/// same path, not another file.
#[tokio::test]
async fn diagnosis_names_the_suspect_file_and_its_drafted_rule_quarantines_only_it() {
    use fleet::agent::{CrashDump, InspectedFile, RunResult};
    let t = setup("draft");
    let now = fleet_service::now_ms();
    let bad = r"Windows\System32\drivers\CrowdStrike\C-00000291-00000000-00000032.sys";
    let bad_sha = "2c".repeat(32);
    let fixed_sha = "f1".repeat(32);
    let head = "aaaaaaaa010023010909090909090909";
    let file = |sha: &str, t: i64| InspectedFile {
        path: bad.into(),
        size: 40_000,
        written_unix: t,
        sha256: sha.into(),
        head: head.into(),
        rule_id: "drivers-sub".into(),
        version: None,
        error: None,
    };
    for i in 0..5u8 {
        let mac = Mac([0x52, 0x54, 0, 0xee, 0, i]);
        let crashing = i < 3;
        let f = if crashing {
            file(&bad_sha, 1_721_362_140 + i64::from(i))
        } else {
            file(&fixed_sha, 1_721_367_000)
        };
        t.fleet
            .update(mac, now, &mut |h| {
                h.last_report = Some(report(
                    mac,
                    &format!("r{i}"),
                    RunResult::Clean,
                    "inspected",
                    crashing
                        .then(|| CrashDump {
                            path: "Windows\\Minidump\\071924-1-01.dmp".into(),
                            size: 65536,
                            written_unix: 1_721_362_300,
                            bugcheck: "0x00000050".into(),
                            bugcheck_name: Some("PAGE_FAULT_IN_NONPAGED_AREA".into()),
                            parameters: vec![],
                            dump_time_unix: Some(1_721_362_300),
                            build: 19045,
                            kind: "small (minidump)".into(),
                            driver: None,
                            error: None,
                        })
                        .into_iter()
                        .collect(),
                    vec![f.clone()],
                ));
                Ok(())
            })
            .unwrap();
    }
    let (s, _, b) = send(&t, get("/api/v1/diagnosis", Some(&t.viewer))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json(&b);
    assert_eq!(v["files"]["scanned_hosts"], 5, "{v}");
    assert_eq!(v["files"]["crashing_hosts"], 3);
    let g = &v["files"]["files"][0];
    assert_eq!(
        (g["sha256"].as_str(), g["suspect"].as_bool()),
        (Some(bad_sha.as_str()), Some(true)),
        "{v}"
    );
    assert_eq!(
        (
            g["crashing_hosts"].as_u64(),
            g["hosts_without_crashes"].as_u64()
        ),
        (Some(3), Some(0))
    );
    assert_eq!(v["files"]["files"][1]["suspect"], false);
    // The draft: unknown content is a 404, a bad query a 400, the viewer may read it.
    let (s, _, b) = send(
        &t,
        get(
            &format!("/api/v1/diagnosis/draft-rule?sha256={}", "00".repeat(32)),
            Some(&t.viewer),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, _, _) = send(
        &t,
        get("/api/v1/diagnosis/draft-rule?sha=1", Some(&t.viewer)),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, b) = send(
        &t,
        get(
            &format!("/api/v1/diagnosis/draft-rule?sha256={bad_sha}"),
            Some(&t.viewer),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let d = json(&b);
    assert_eq!(d["hosts"].as_array().unwrap().len(), 3, "{d}");
    let steps = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(steps.contains("unbrick rules sign active.json"), "{steps}");
    assert!(
        steps.contains("--waves 3,25%,100%") && steps.contains("52:54:00:ee:00:02"),
        "{steps}"
    );
    assert!(
        !steps.contains("52:54:00:ee:00:03"),
        "a host without the file is not in the campaign"
    );
    // Signed with an offline key, the document is what the agent accepts and judges by.
    let key = signing::KeyPair::generate().unwrap();
    let doc = d["document"].as_str().unwrap().as_bytes().to_vec();
    let sig = signing::RuleSet::sign_document(&key, &doc)
        .unwrap()
        .to_text();
    let rules =
        signing::RuleSet::verify_signed(&key.public_key(), &doc, sig.as_bytes(), now / 1000)
            .unwrap();
    let comps: Vec<&str> = bad.split('\\').collect();
    let head_bytes = hex::decode(head).unwrap();
    for (what, h, t, want) in [
        (
            "the bad file, first time seen",
            &head_bytes[..],
            1_721_362_140,
            true,
        ),
        (
            "the bad file, last time seen",
            &head_bytes[..],
            1_721_362_142,
            true,
        ),
        (
            "the vendor's fixed file (written later)",
            &head_bytes[..],
            1_721_367_000,
            false,
        ),
        ("other first bytes", &[0u8; 16][..], 1_721_362_140, false),
    ] {
        let verdict = rules.judge(&signing::FileFacts {
            components: &comps,
            header: h,
            last_write_unix: t,
            now_unix: (now / 1000) as i64,
        });
        assert_eq!(verdict.is_some(), want, "{what}");
        if let Some(v) = verdict {
            assert_eq!(v.action, signing::Action::Quarantine);
        }
    }
    // The page lists the suspect with its draft link, and the draft page shows the document.
    let cookie = console_login(&t).await;
    let (_, _, page) = send(&t, page_req(&cookie, "/diagnosis")).await;
    assert!(
        page.contains(&format!("data-sha256=\"{bad_sha}\" class=\"suspect\"")),
        "{page}"
    );
    let (s, _, dp) = send(
        &t,
        page_req(&cookie, &format!("/diagnosis/draft-rule?sha256={bad_sha}")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{dp}");
    assert!(
        dp.contains("id=\"draft-document\"") && dp.contains("quarantine-2c2c2c2c2c2c"),
        "{dp}"
    );
}

/// Past `INLINE_HOSTS` hosts the drafted campaign takes its hosts from a file (thousands of MACs
/// do not fit one shell argument): the steps write it with `--hosts-out` and read it with
/// `--hosts-file`; the file's path, named with `path=`, is quoted for the shell.
#[tokio::test]
async fn a_draft_for_many_hosts_passes_them_in_a_file() {
    use fleet::agent::{InspectedFile, RunResult};
    let t = setup("draftmany");
    let now = fleet_service::now_ms();
    let path = r"Windows\System32\drivers\Vendor's\C-00000291-00000000-00000032.sys";
    let sha = "3d".repeat(32);
    let n = web_console::diagnosis::INLINE_HOSTS + 5;
    for i in 0..n {
        let mac = Mac([0x52, 0x54, 0, 0xef, 0, i as u8]);
        let f = InspectedFile {
            path: path.into(),
            size: 40_000,
            written_unix: 1_721_362_140,
            sha256: sha.clone(),
            head: "aaaaaaaa010023010909090909090909".into(),
            rule_id: "drivers-sub".into(),
            version: None,
            error: None,
        };
        t.fleet
            .update(mac, now, &mut |h| {
                h.last_report = Some(report(
                    mac,
                    &format!("m{i}"),
                    RunResult::Clean,
                    "inspected",
                    vec![],
                    vec![f.clone()],
                ));
                Ok(())
            })
            .unwrap();
    }
    let q = web_console::query::urlenc(path);
    let (s, _, b) = send(
        &t,
        get(
            &format!("/api/v1/diagnosis/draft-rule?sha256={sha}&path={q}"),
            Some(&t.viewer),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let d = json(&b);
    assert_eq!(d["hosts"].as_array().unwrap().len(), n, "{d}");
    let steps: Vec<&str> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let out = steps
        .iter()
        .find(|l| l.contains("--hosts-out"))
        .unwrap_or_else(|| panic!("{steps:?}"));
    assert_eq!(
        *out,
        format!(
            r"unbrick diagnose --draft-rule {sha} --path 'Windows\System32\drivers\Vendor'\''s\C-00000291-00000000-00000032.sys' --hosts-out hosts.txt"
        )
    );
    let create = steps
        .iter()
        .find(|l| l.starts_with("unbrick campaign create"))
        .unwrap();
    assert!(
        create.contains("--hosts-file hosts.txt") && create.contains("--waves 5,25%,100%"),
        "{create}"
    );
    assert!(
        !steps.iter().any(|l| l.contains("52:54:00:ef")),
        "{steps:?}"
    );
}
