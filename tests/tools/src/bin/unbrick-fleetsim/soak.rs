//! Soak: the server under a steady load for a long time, sampled every interval.
//!
//! `unbrick-fleetsim IFACE TOKEN FINGERPRINT HOSTS soak SECS SERVER_PID DATA_DIR [SAMPLE_SECS]`
//!
//! HOSTS machines (imported, not approved: the server runs with `--require-approval`, so they
//! stay in the waiting room) loop through a network boot for SECS seconds: PXE DHCP, TFTP of the
//! boot loader, iPXE DHCP, then the waiting room's script every 5 s for a minute, then again
//! from the start (a machine rebooting). Beside them four console users load the dashboard and a
//! host page every second, and ten live clients keep the event stream (`/api/v1/events`) open.
//! Every SAMPLE_SECS (default 60) one row: the server's RSS and open file descriptors, the
//! size of its data directory, the boots, polls and pages done, the p99 latencies of the
//! waiting-room script, of a DHCP exchange and of a console page in that interval, errors, and
//! the events the live clients received.
//!
//! At the end it compares the second sample with the last (the first includes start-up): RSS
//! may grow by no more than the data directory did plus 32 MiB, descriptors by at most 32;
//! errors must stay under 1% of requests. It exits non-zero otherwise.
use super::*;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What happened in one sampling interval (latencies in milliseconds).
#[derive(Default)]
struct Interval {
    script_ms: Vec<u64>,
    dhcp_ms: Vec<u64>,
    page_ms: Vec<u64>,
    boots: u64,
    polls: u64,
    pages: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Interval {
    fn fail(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

fn p99(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * 0.99).round() as usize)
        .copied()
        .unwrap_or(0)
}

/// The server's resident set (MiB) and open descriptors.
fn rss_and_fds(pid: &str) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// Bytes under `dir`.
fn size_of(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_of(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// One machine, rebooting every minute until `end`.
async fn machine(
    i: usize,
    dhcp: Dhcp,
    iface: Arc<String>,
    lock: Arc<tokio::sync::Mutex<()>>,
    stats: Arc<Mutex<Interval>>,
    end: Instant,
) {
    let mac = mac_of(i);
    let m = mac_str(&mac);
    let mut configured = None;
    tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 5000)).await;
    let mut boot = 0u32;
    while Instant::now() < end {
        boot += 1;
        let xid = 0x2000_0000 + ((boot & 0x7f) << 20) + i as u32;
        let r: Result<(), String> = async {
            let t = Instant::now();
            let (ip, _) = dora(&dhcp, &mac, xid, "pxe").await?;
            stats
                .lock()
                .unwrap()
                .dhcp_ms
                .push(t.elapsed().as_millis() as u64);
            configure(i, &m, ip, &iface, &lock, &mut configured).await?;
            let dev = dev_of(i);
            tftp_get(ip, &dev, "undionly.kpxe").await?;
            let (_, url) = dora(&dhcp, &mac, xid ^ 0x0800_0000, "ipxe").await?;
            let path = url
                .split_once("8080")
                .map(|(_, p)| p.to_string())
                .ok_or_else(|| format!("iPXE boot file {url:?}"))?;
            stats.lock().unwrap().boots += 1;
            for _ in 0..12 {
                if Instant::now() >= end {
                    break;
                }
                let t = Instant::now();
                let (st, body) = http(ip, &dev, 8080, &path).await?;
                let ms = t.elapsed().as_millis() as u64;
                let text = String::from_utf8_lossy(&body);
                if st != 200 || !text.contains("sleep") || text.contains("unbrick.token=") {
                    return Err(format!("waiting room script: {st} {text}"));
                }
                {
                    let mut s = stats.lock().unwrap();
                    s.script_ms.push(ms);
                    s.polls += 1;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            stats.lock().unwrap().fail(format!("{m}: {e}"));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// A console user: logs in, then loads the dashboard and a host page in turn, once a second.
fn console_user(token: String, n: usize, stats: Arc<Mutex<Interval>>, end: Instant) {
    let pin = PIN.get().map(String::as_str);
    let login = unbrick_http::request_with(
        "POST",
        &format!("https://{SERVER}:8443/login"),
        Some(format!("token={token}").as_bytes()),
        Duration::from_secs(30),
        &unbrick_http::Options {
            content_type: Some("application/x-www-form-urlencoded"),
            pin,
            ..Default::default()
        },
    );
    let cookie = login
        .ok()
        .and_then(|r| r.header("set-cookie").map(str::to_string))
        .and_then(|c| c.split(';').next().map(str::to_string));
    let Some(cookie) = cookie else {
        stats
            .lock()
            .unwrap()
            .fail("console login: no session cookie".into());
        return;
    };
    let opts = unbrick_http::Options {
        headers: vec![("Cookie", cookie)],
        pin,
        ..Default::default()
    };
    let mut k = 0usize;
    while Instant::now() < end {
        k += 1;
        let path = if k.is_multiple_of(2) {
            "/".to_string()
        } else {
            format!("/hosts/{}", mac_str(&mac_of(k % n)))
        };
        let t = Instant::now();
        let r = unbrick_http::request_with(
            "GET",
            &format!("https://{SERVER}:8443{path}"),
            None,
            Duration::from_secs(30),
            &opts,
        );
        let ms = t.elapsed().as_millis() as u64;
        let mut s = stats.lock().unwrap();
        match r {
            Ok(r) if r.status == 200 => {
                s.page_ms.push(ms);
                s.pages += 1;
            }
            Ok(r) => s.fail(format!("console {path}: {}", r.status)),
            Err(e) => s.fail(format!("console {path}: {e}")),
        }
        drop(s);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A live client: holds the event stream open and counts what arrives.
async fn live_client(
    token: String,
    tls: tokio_rustls::TlsConnector,
    received: Arc<AtomicU64>,
    stats: Arc<Mutex<Interval>>,
    end: Instant,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while Instant::now() < end {
        let r: Result<(), String> = async {
            let tcp = tokio::net::TcpStream::connect((SERVER, 8443))
                .await
                .map_err(|e| e.to_string())?;
            let mut s = tls
                .connect(
                    rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(SERVER).into()),
                    tcp,
                )
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            s.write_all(
                format!(
                    "GET /api/v1/events HTTP/1.1\r\nHost: {SERVER}:8443\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 16384];
            loop {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                match tokio::time::timeout(left, s.read(&mut buf)).await {
                    Err(_) => return Ok(()),
                    Ok(Ok(0)) => return Err("event stream closed".into()),
                    Ok(Ok(k)) => {
                        let n = buf[..k].windows(7).filter(|w| w == b"event: ").count();
                        received.fetch_add(n as u64, Relaxed);
                    }
                    Ok(Err(e)) => return Err(e.to_string()),
                }
            }
        }
        .await;
        if let Err(e) = r {
            stats.lock().unwrap().fail(format!("live client: {e}"));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The soak run; exits the process.
pub(crate) fn run(a: &[String]) {
    if a.len() < 9 {
        eprintln!("usage: unbrick-fleetsim IFACE TOKEN FINGERPRINT HOSTS soak SECS SERVER_PID DATA_DIR [SAMPLE_SECS]");
        std::process::exit(2);
    }
    let (iface, token, pin) = (a[1].clone(), a[2].clone(), a[3].clone());
    let n: usize = a[4].parse().unwrap();
    let secs: u64 = a[6].parse().unwrap();
    let pid = a[7].clone();
    let data = std::path::PathBuf::from(&a[8]);
    let every = Duration::from_secs(a.get(9).and_then(|s| s.parse().ok()).unwrap_or(60));
    prepare(&token, &pin, n);
    println!(
        "soak: {n} machines rebooting every minute (waiting-room poll every 5 s), 4 console users (a page a second each), 10 live event streams, for {secs} s; a sample every {} s",
        every.as_secs()
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let stats = Arc::new(Mutex::new(Interval::default()));
    let received = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut users = Vec::new();
    for _ in 0..4 {
        let (t, s) = (token.clone(), stats.clone());
        users.push(std::thread::spawn(move || console_user(t, n, s, end)));
    }
    let rows = rt.block_on(async {
        let dhcp = Dhcp::new(&iface);
        let tls = tokio_rustls::TlsConnector::from(unbrick_http::pinned_config(&pin).unwrap());
        let iface = Arc::new(iface.clone());
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            set.spawn(machine(i, dhcp.clone(), iface.clone(), lock.clone(), stats.clone(), end));
        }
        for _ in 0..10 {
            set.spawn(live_client(
                token.clone(),
                tls.clone(),
                received.clone(),
                stats.clone(),
                end,
            ));
        }
        println!(
            "{:>6} {:>8} {:>5} {:>9} {:>6} {:>6} {:>6} {:>10} {:>9} {:>9} {:>6} {:>7}",
            "t (s)", "RSS MiB", "fds", "data MiB", "boots", "polls", "pages", "script p99", "DHCP p99", "page p99", "errors", "events"
        );
        let mut rows = Vec::new();
        let mut last_events = 0;
        loop {
            tokio::time::sleep(every.min(end.saturating_duration_since(Instant::now()))).await;
            let iv = std::mem::take(&mut *stats.lock().unwrap());
            let mut iv = iv;
            let (rss, fds) = rss_and_fds(&pid);
            let bytes = size_of(&data);
            let ev = received.load(Relaxed);
            println!(
                "{:>6} {:>8} {:>5} {:>9.1} {:>6} {:>6} {:>6} {:>8} ms {:>6} ms {:>6} ms {:>6} {:>7}",
                start.elapsed().as_secs(),
                rss,
                fds,
                bytes as f64 / 1048576.0,
                iv.boots,
                iv.polls,
                iv.pages,
                p99(&mut iv.script_ms),
                p99(&mut iv.dhcp_ms),
                p99(&mut iv.page_ms),
                iv.errors,
                ev - last_events
            );
            if let Some(e) = &iv.first_error {
                println!("        first error of the interval: {e}");
            }
            last_events = ev;
            rows.push((rss, fds, bytes, iv.errors, iv.polls + iv.pages + iv.boots));
            if Instant::now() >= end {
                break;
            }
        }
        while set.join_next().await.is_some() {}
        rows
    });
    for u in users {
        let _ = u.join();
    }
    let (errors, requests): (u64, u64) = rows.iter().fold((0, 0), |(e, r), x| (e + x.3, r + x.4));
    let (base, last) = (rows[1.min(rows.len() - 1)], rows[rows.len() - 1]);
    let data_growth = last.2.saturating_sub(base.2) / 1048576;
    let rss_growth = last.0.saturating_sub(base.0);
    println!(
        "from the second sample to the last: RSS {} -> {} MiB (+{rss_growth}), descriptors {} -> {}, data directory +{data_growth} MiB; errors {errors} of {requests} requests",
        base.0, last.0, base.1, last.1
    );
    let mut bad = false;
    if rss_growth > data_growth + 32 {
        println!(
            "GROWTH: RSS grew {rss_growth} MiB, more than the data ({data_growth} MiB) + 32 MiB"
        );
        bad = true;
    }
    if last.1 > base.1 + 32 {
        println!("GROWTH: open descriptors {} -> {}", base.1, last.1);
        bad = true;
    }
    if errors * 100 > requests.max(1) {
        println!("ERRORS: {errors} of {requests} requests failed");
        bad = true;
    }
    if bad {
        std::process::exit(1);
    }
    println!("OK: no growth beyond the data itself");
    std::process::exit(0);
}
