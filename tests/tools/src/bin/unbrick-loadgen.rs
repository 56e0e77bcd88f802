//! Load generator for the agent API and the console (scripts/bench.sh runs it).
//!
//! `agents`: N simulated agents at once. Each gets a per-boot token the way a machine does (its
//! iPXE script over HTTP), then, like the real agent, opens one TLS connection (certificate
//! pinned) and sends hello, 5 steps and the report on it (`NEW_CONN=1`: a new connection per
//! request instead). Prints throughput and latency
//! percentiles, and the list of acknowledged requests for `verify`.
//!
//! `verify`: after the server stopped, opens the store and checks that every acknowledged event
//! is there (zero lost).
//!
//! `console`: imports H hosts through the API, logs in, and times the console's host table
//! (first page, a search, a state filter) and the JSON host list.
// missing_docs is for library crates: a binary exports nothing.
#![allow(missing_docs)]
use std::time::{Duration, Instant};
use unbrick_testtools::exchange;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn usage() -> ! {
    eprintln!(
        "usage:\n  unbrick-loadgen agents HTTP_BASE HTTPS_BASE FINGERPRINT N ACKS_FILE\n  unbrick-loadgen verify DATA_DIR ACKS_FILE\n  unbrick-loadgen console HTTP_BASE TOKEN HOSTS"
    );
    std::process::exit(2)
}

async fn request(
    tls: Option<(&tokio_rustls::TlsConnector, std::net::IpAddr)>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    );
    exchange::exchange(tcp, tls, &head, body).await
}

/// A request on the agent's kept connection (`conn`), opening one when there is none or the
/// kept one fails, as the agent's client does.
async fn kept_request(
    conn: &mut Option<exchange::Io>,
    tls: Option<(&tokio_rustls::TlsConnector, std::net::IpAddr)>,
    addr: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    );
    let open = || async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).ok();
        exchange::Io::new(tcp, tls).await
    };
    exchange::on_kept(conn, open, &head, body).await
}

fn host_port(base: &str) -> String {
    base.split("://")
        .nth(1)
        .unwrap_or(base)
        .trim_end_matches('/')
        .to_string()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn agents(http: &str, https: &str, pin: &str, n: usize, acks: &str) {
    let cfg = unbrick_http::pinned_config(pin).unwrap_or_else(|e| panic!("{e}"));
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let http_addr = host_port(http);
    let https_addr = host_port(https);
    let ip: std::net::IpAddr = https_addr.rsplit_once(':').unwrap().0.parse().unwrap();
    // Tokens, the way machines get them.
    let t0 = Instant::now();
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let mac = format!(
            "52:54:01:{:02x}:{:02x}:{:02x}",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        );
        let (st, body) = request(
            None,
            &http_addr,
            "GET",
            &format!("/boot/{mac}.ipxe"),
            "",
            b"",
        )
        .await
        .unwrap_or_else(|e| panic!("boot script for {mac}: {e}"));
        let text = String::from_utf8_lossy(&body);
        let token = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("unbrick.token="))
            .unwrap_or_else(|| panic!("no token in the boot script of {mac} ({st}): {text}"))
            .to_string();
        tokens.push((mac, token));
    }
    eprintln!(
        "{n} boot scripts (tokens) in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // RAMP_MS spreads the agents' starts over that many milliseconds (0: all at once).
    let ramp: u64 = std::env::var("RAMP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // NEW_CONN=1: a new TLS connection per request (the agent before it kept its connection).
    let new_conn = std::env::var("NEW_CONN").is_ok_and(|v| v == "1");
    // PACE_MS: the agent's pause between its requests, on average (uniform between half and one
    // and a half times it, fixed per agent and request), as the real agent spends time scanning
    // and repairing between its steps. 0: back to back.
    let pace: u64 = std::env::var("PACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (mac, token)) in tokens.into_iter().enumerate() {
        let c = connector.clone();
        let a = https_addr.clone();
        let delay = Duration::from_millis(ramp * i as u64 / n.max(1) as u64);
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            let began = start.elapsed();
            let mut lat = Vec::new();
            let mut acked = Vec::new();
            let mut errors = 0usize;
            let mut conn = None;
            let hdr = "Content-Type: application/json\r\n";
            let mut calls: Vec<(String, serde_json::Value)> = vec![(
                "/agent/v1/hello".into(),
                serde_json::json!({"token": token, "mac": mac, "uuid": null, "serial": "LOAD", "firmware": "uefi",
                    "secure_boot": true, "lockdown": "integrity", "agent_version": "loadgen", "kernel": "6.12"}),
            )];
            for s in 0..5 {
                calls.push((
                    "/agent/v1/step".into(),
                    serde_json::json!({"token": token, "mac": mac, "step": format!("load{s}"), "message": format!("step {s} of {mac}")}),
                ));
            }
            calls.push((
                "/agent/v1/report".into(),
                serde_json::json!({"token": token, "mac": mac, "report_id": format!("r-{mac}"), "result": "clean",
                    "reason": null, "volumes": [], "files": [], "rules_id": null, "rules_version": null, "agent_ms": 1}),
            ));
            for (k, (path, body)) in calls.into_iter().enumerate() {
                if k > 0 && pace > 0 {
                    // A fixed pseudo-random pause (splitmix64 of agent and request).
                    let mut z = (i as u64) << 8 | k as u64;
                    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^= z >> 31;
                    tokio::time::sleep(Duration::from_millis(pace / 2 + z % (pace + 1))).await;
                }
                let t = Instant::now();
                let data = serde_json::to_vec(&body).unwrap();
                let mut ok = false;
                for _ in 0..5 {
                    let r = if new_conn {
                        request(Some((&c, ip)), &a, "POST", &path, hdr, &data).await
                    } else {
                        kept_request(&mut conn, Some((&c, ip)), &a, &path, hdr, &data).await
                    };
                    match r {
                        Ok((200, _)) => {
                            ok = true;
                            break;
                        }
                        Ok((st, b)) => {
                            eprintln!("{mac} {path}: {st} {}", String::from_utf8_lossy(&b).trim());
                            break;
                        }
                        Err(e) => {
                            eprintln!("{mac} {path}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                lat.push((path.ends_with("/hello"), t.elapsed().as_secs_f64() * 1000.0));
                if ok {
                    acked.push(format!("{mac} {path} {}", body.get("step").and_then(|s| s.as_str()).unwrap_or("")));
                } else {
                    errors += 1;
                }
            }
            (lat, acked, errors, (began, start.elapsed()))
        });
    }
    let (mut lat, mut acked, mut errors, mut spans) = (Vec::new(), Vec::new(), 0, Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (l, a, e, span) = r.unwrap();
        lat.extend(l);
        acked.extend(a);
        errors += e;
        spans.push(span);
    }
    // How many agents were between their first request and their last at the same time.
    let mut edges: Vec<(Duration, i32)> =
        spans.iter().flat_map(|&(b, e)| [(b, 1), (e, -1)]).collect();
    edges.sort();
    let (mut active, mut peak) = (0, 0);
    for (_, d) in edges {
        active += d;
        peak = peak.max(active);
    }
    let secs = start.elapsed().as_secs_f64();
    let mut all: Vec<f64> = lat.iter().map(|l| l.1).collect();
    std::fs::write(acks, acked.join("\n") + "\n").unwrap();
    println!(
        "agents {n} (started over {ramp} ms, {pace} ms between requests, {}, at most {peak} at once): {} requests acknowledged, {errors} failed, in {secs:.2} s = {:.0} req/s; latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
        if new_conn { "a connection per request" } else { "one kept connection each" },
        acked.len(),
        acked.len() as f64 / secs,
        pct(&mut all, 0.5),
        pct(&mut all, 0.9),
        pct(&mut all, 0.99),
        pct(&mut all, 1.0)
    );
    // The first request of each agent carries its TCP and TLS handshakes.
    let (mut first, mut later): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for (hello, ms) in lat {
        if hello {
            first.push(ms)
        } else {
            later.push(ms)
        }
    }
    println!(
        "first request (connect + TLS + hello) p50 {:.1} p99 {:.1} ms; later requests p50 {:.1} p99 {:.1} ms",
        pct(&mut first, 0.5),
        pct(&mut first, 0.99),
        pct(&mut later, 0.5),
        pct(&mut later, 0.99)
    );
    if errors > 0 {
        std::process::exit(1);
    }
}

fn verify(data: &str, acks: &str) {
    use fleet::Store as _;
    let store = fleet::SledStore::open(&std::path::Path::new(data).join("store"))
        .unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(acks).unwrap();
    let (mut lost, mut n) = (0, 0);
    let mut by_mac: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = Default::default();
    for l in text.lines().filter(|l| !l.is_empty()) {
        let mut w = l.split(' ');
        let (mac, path, step) = (w.next().unwrap(), w.next().unwrap(), w.next().unwrap_or(""));
        by_mac.entry(mac).or_default().push((path, step));
    }
    for (mac, calls) in by_mac {
        let m: fleet::Mac = mac.parse().unwrap();
        let events = store.events(m).unwrap();
        let host = store.host(m).unwrap();
        for (path, step) in calls {
            n += 1;
            let found = match path {
                "/agent/v1/hello" => events.iter().any(|e| e.kind == "agent-hello"),
                "/agent/v1/step" => events.iter().any(|e| e.kind == format!("agent-{step}")),
                _ => {
                    events.iter().any(|e| e.kind == "agent-report")
                        && host
                            .as_ref()
                            .is_some_and(|h| h.state.name() == "clean" && h.reports == 1)
                }
            };
            if !found {
                lost += 1;
                eprintln!("LOST: {mac} {path} {step}");
            }
        }
    }
    println!("verify: {n} acknowledged requests, {lost} lost");
    if lost > 0 || n == 0 {
        std::process::exit(1);
    }
}

async fn console(http: &str, token: &str, hosts: usize) {
    let addr = host_port(http);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let mut csv = String::from("mac,hostname,site,tags\n");
    for i in 0..hosts {
        csv.push_str(&format!(
            "52:54:02:{:02x}:{:02x}:{:02x},pc-{i:05},site-{},wave{}\n",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff,
            i % 7,
            i % 4
        ));
    }
    let t = Instant::now();
    let (st, b) = request(
        None,
        &addr,
        "POST",
        "/api/v1/hosts/import",
        &format!("{auth}Content-Type: text/csv\r\n"),
        csv.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    println!(
        "console: imported {hosts} hosts in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    // Log in like a browser.
    let raw = {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let body = format!("token={token}");
        s.write_all(format!("POST /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8_lossy(&raw).to_string()
    };
    let cookie = raw
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_string();
    for (what, path, hdr) in [
        (
            "console page 1 (50 of all hosts)",
            "/".to_string(),
            format!("Cookie: {cookie}\r\n"),
        ),
        (
            "console search \"pc-0999\"",
            "/?q=pc-0999".into(),
            format!("Cookie: {cookie}\r\n"),
        ),
        (
            "console site filter, page 20",
            "/?site=site-3&page=20".into(),
            format!("Cookie: {cookie}\r\n"),
        ),
        (
            "API host list, 500 per page",
            "/api/v1/hosts?per_page=500&page=3".into(),
            auth.clone(),
        ),
        ("API summary", "/api/v1/summary".into(), auth.clone()),
    ] {
        let mut lat = Vec::new();
        let mut size = 0;
        for _ in 0..40 {
            let t = Instant::now();
            let (st, body) = request(None, &addr, "GET", &path, &hdr, b"").await.unwrap();
            assert_eq!(st, 200, "{path}");
            size = body.len();
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "{what:<36} at {hosts} hosts: p50 {:.1} ms, p99 {:.1} ms ({size} bytes)",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match a.get(1).map(String::as_str) {
        Some("agents") if a.len() == 7 => rt.block_on(agents(
            &a[2],
            &a[3],
            &a[4],
            a[5].parse().unwrap_or_else(|_| usage()),
            &a[6],
        )),
        Some("verify") if a.len() == 4 => verify(&a[2], &a[3]),
        Some("console") if a.len() == 5 => rt.block_on(console(
            &a[2],
            &a[3],
            a[4].parse().unwrap_or_else(|_| usage()),
        )),
        _ => usage(),
    }
}
