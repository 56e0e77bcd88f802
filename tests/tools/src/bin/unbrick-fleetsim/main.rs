//! Fleet simulator: N machines without VMs, each speaking the real protocols to a running
//! server over the wire (run it in a network namespace on a veth to the server's bridge):
//! PXE DHCP (DORA, broadcast), TFTP of the boot loader from its leased address, iPXE DHCP, the
//! per-host HTTP script (polling the waiting room), the kernel and initrd over HTTP, the agent
//! API over HTTPS with the certificate pinned (hello, steps, report), then Windows' DHCP
//! (`MSFT 5.0`, a whole DORA). It imports the hosts, creates and starts a campaign through the
//! admin API, prints the timeline of hosts per state, and checks that no host got the payload
//! before its wave opened, that at most `concurrency` were in the payload at once, that none was
//! lost, that every report the server acknowledged is the host's last report in the store, and
//! that no host was remediated twice (two acknowledged reports, or two recorded). It survives a
//! server that restarts under it (the kill test): machines retry as firmware, iPXE's waiting room
//! and the agent do, and the admin API calls wait for the server to come back.
//!
//! With `FLEETSIM_OOB=path/to/redfish_standin.py` every machine also has a Redfish controller
//! (the Python stand-in, one system per address 10.99.200.1 and up on the simulator's
//! interface): the campaign runs with `trigger = oob`, and a machine boots only when the server
//! reset it through its controller. The simulator then prints the wave-open-to-trigger and
//! trigger-to-DHCP-offer latencies.
//!
//! unbrick-fleetsim IFACE TOKEN FINGERPRINT HOSTS WAVES CONCURRENCY POLL_SECS [SERVER_PID]
// missing_docs is for library crates: a binary exports nothing.
#![allow(missing_docs)]
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use unbrick_testtools::exchange;

mod soak;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn mac_of(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x0f, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Routes DHCP replies (all broadcast to :68) to the host waiting for that xid.
#[derive(Clone)]
struct Dhcp {
    sock: Arc<UdpSocket>,
    waiting: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>>,
}

impl Dhcp {
    fn new(iface: &str) -> Self {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_broadcast(true).unwrap();
        s.bind_device(Some(iface.as_bytes())).unwrap();
        s.set_recv_buffer_size(8 << 20).ok();
        s.set_nonblocking(true).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
            .unwrap();
        let sock = Arc::new(UdpSocket::from_std(s.into()).unwrap());
        let waiting: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>> = Default::default();
        let (s2, w2) = (sock.clone(), waiting.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, _)) = s2.recv_from(&mut buf).await else {
                    continue;
                };
                if let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) {
                    if m.opcode() == Opcode::BootReply {
                        if let Some(tx) = w2.lock().unwrap().get(&m.xid()) {
                            let _ = tx.send(m);
                        }
                    }
                }
            }
        });
        Self { sock, waiting }
    }

    /// Sends `m` (broadcast) and waits for a reply of type `want`, retrying.
    async fn exchange(&self, m: &Message, want: MessageType) -> Option<Message> {
        self.exchange_via(None, m, want).await
    }

    /// [`Self::exchange`], sent out of the machine's own interface `dev` (its frame carries the
    /// machine's MAC, as Windows' would); replies still arrive on the shared socket.
    async fn exchange_via(
        &self,
        dev: Option<&str>,
        m: &Message,
        want: MessageType,
    ) -> Option<Message> {
        let own = match dev {
            None => None,
            Some(d) => {
                let s =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
                s.set_reuse_address(true).ok()?;
                s.set_broadcast(true).ok()?;
                s.bind_device(Some(d.as_bytes())).ok()?;
                s.set_nonblocking(true).ok()?;
                s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
                    .ok()?;
                Some(UdpSocket::from_std(s.into()).ok()?)
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.waiting.lock().unwrap().insert(m.xid(), tx);
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out)).unwrap();
        let mut got = None;
        for attempt in 0..6 {
            let _ = own
                .as_ref()
                .unwrap_or(&self.sock)
                .send_to(&out, SocketAddr::from((Ipv4Addr::BROADCAST, 67)))
                .await;
            let deadline = tokio::time::sleep(Duration::from_millis(1000 << attempt.min(2)));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    r = rx.recv() => match r {
                        Some(r) if r.opts().msg_type() == Some(want) => { got = Some(r); break; }
                        Some(_) => continue,
                        None => break,
                    }
                }
            }
            if got.is_some() {
                break;
            }
        }
        self.waiting.lock().unwrap().remove(&m.xid());
        got
    }
}

fn dhcp_msg(mac: &[u8; 6], xid: u32, t: MessageType, kind: &str) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(mac);
    m.opts_mut().insert(DhcpOption::MessageType(t));
    match kind {
        "pxe" => {
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
            ));
            m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(
                dhcproto::v4::Architecture::Intelx86PC,
            ));
        }
        "ipxe" => {
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
            ));
            m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(
                dhcproto::v4::Architecture::Intelx86PC,
            ));
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        _ => {
            m.opts_mut()
                .insert(DhcpOption::ClassIdentifier(b"MSFT 5.0".to_vec()));
        }
    }
    m
}

/// DISCOVER/OFFER/REQUEST/ACK; returns (address, boot file).
async fn dora(d: &Dhcp, mac: &[u8; 6], xid: u32, kind: &str) -> Result<(Ipv4Addr, String), String> {
    let offer = d
        .exchange(
            &dhcp_msg(mac, xid, MessageType::Discover, kind),
            MessageType::Offer,
        )
        .await
        .ok_or("no DHCP offer")?;
    let mut req = dhcp_msg(mac, xid, MessageType::Request, kind);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let ack = d
        .exchange(&req, MessageType::Ack)
        .await
        .ok_or("no DHCP ack")?;
    let file = String::from_utf8_lossy(ack.fname().unwrap_or(&[]))
        .trim_end_matches('\0')
        .to_string();
    let file = if file.is_empty() {
        match ack.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(b)) => String::from_utf8_lossy(b).to_string(),
            _ => String::new(),
        }
    } else {
        file
    };
    Ok((ack.yiaddr(), file))
}

/// A TFTP read (RFC 1350 + blksize/tsize), from `from`; returns the size.
/// The machine's own network interface: a macvlan with its MAC on the simulator's link, so
/// the server's neighbour table sees each machine's hardware address, as on a real LAN.
fn dev_of(i: usize) -> String {
    format!("m{i}")
}

async fn tftp_get(from: Ipv4Addr, dev: &str, file: &str) -> Result<usize, String> {
    use netboot_proto::tftp::packet::Packet;
    let s = UdpSocket::bind((from, 0))
        .await
        .map_err(|e| format!("tftp bind {from}: {e}"))?;
    s.bind_device(Some(dev.as_bytes()))
        .map_err(|e| format!("tftp bind to {dev}: {e}"))?;
    let rrq = Packet::Rrq {
        filename: file.to_string(),
        mode: "octet".into(),
        options: vec![
            ("blksize".into(), "1456".into()),
            ("tsize".into(), "0".into()),
        ],
    };
    s.send_to(&rrq.encode(), (SERVER, 69))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let mut size = 0;
    let mut blksize = 512;
    let mut expect: u16 = 1;
    loop {
        let (n, peer) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
            .await
            .map_err(|_| format!("tftp {file}: timeout"))?
            .map_err(|e| e.to_string())?;
        match Packet::parse(&buf[..n]).map_err(|e| e.0.to_string())? {
            Packet::Oack(opts) => {
                if let Some((_, v)) = opts.iter().find(|(k, _)| k == "blksize") {
                    blksize = v.parse().unwrap_or(512);
                }
                s.send_to(&Packet::Ack(0).encode(), peer)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Packet::Data { block, data } => {
                s.send_to(&Packet::Ack(block).encode(), peer)
                    .await
                    .map_err(|e| e.to_string())?;
                if block == expect {
                    size += data.len();
                    expect = expect.wrapping_add(1);
                    if data.len() < blksize {
                        return Ok(size);
                    }
                }
            }
            Packet::Error { message, .. } => return Err(format!("tftp {file}: {message}")),
            _ => {}
        }
    }
}

async fn connect(from: Ipv4Addr, dev: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind_device(Some(dev.as_bytes()))
        .map_err(|e| format!("bind to {dev}: {e}"))?;
    sock.bind(SocketAddr::from((from, 0)))
        .map_err(|e| format!("bind {from}: {e}"))?;
    sock.connect(SocketAddr::from((SERVER, port)))
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// One request on a new connection, as firmware sends them.
async fn http(from: Ipv4Addr, dev: &str, port: u16, path: &str) -> Result<(u16, Vec<u8>), String> {
    let tcp = connect(from, dev, port).await?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {SERVER}:{port}\r\nConnection: close\r\n\r\n");
    exchange::exchange(tcp, None, &head, b"").await
}

/// An agent API request on the agent's kept HTTPS connection.
async fn agent_post(
    conn: &mut Option<exchange::Io>,
    tls: &tokio_rustls::TlsConnector,
    from: Ipv4Addr,
    dev: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {SERVER}:8443\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let open = || async {
        let tcp = connect(from, dev, 8443).await?;
        exchange::Io::new(tcp, Some((tls, std::net::IpAddr::V4(SERVER)))).await
    };
    exchange::on_kept(conn, open, &head, body).await
}

#[derive(Default, Clone)]
struct HostLog {
    /// When its controller was told to network-boot it (out-of-band runs).
    trigger_ms: Option<u64>,
    /// Resets its controller saw.
    triggers: u32,
    /// When its first DHCP offer arrived.
    offer_ms: Option<u64>,
    /// When it first got the payload (the wave check uses the earliest).
    payload_ms: Option<u64>,
    report_sent_ms: Option<u64>,
    /// Each boot's time in the payload: from the script with a token to the report's first attempt
    /// or the boot's failure (the concurrency check).
    in_payload: Vec<(u64, u64)>,
    /// Report IDs the server acknowledged with a 200 (result `remediated`).
    acked_reports: Vec<String>,
    polls: u32,
    retries: u32,
    /// Why its boots failed, and how often (the retries' causes).
    causes: std::collections::BTreeMap<String, u32>,
    error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn machine(
    i: usize,
    dhcp: Dhcp,
    tls: tokio_rustls::TlsConnector,
    iface: Arc<String>,
    poll: Duration,
    log: Arc<Mutex<Vec<HostLog>>>,
    addr_lock: Arc<tokio::sync::Mutex<()>>,
    trigger: Option<Arc<tokio::sync::Notify>>,
) {
    let mac = mac_of(i);
    let m = mac_str(&mac);
    match trigger {
        // Out of band: it loops on its disk until its controller resets it into a network boot.
        Some(t) => t.notified().await,
        // Power-on spread over a few seconds, like a room of machines.
        None => tokio::time::sleep(Duration::from_millis((i as u64 * 7) % 5000)).await,
    }
    // Like firmware, a machine whose boot fails (no DHCP answer, TFTP busy, ...) tries again.
    let mut last = String::new();
    // The address its interface was given (a reboot that leases the same one skips `ip`).
    let mut configured = None;
    for attempt in 0..60u32 {
        let xid = 0x1000_0000 + (attempt << 20) + i as u32;
        match boot_once(
            i,
            &mac,
            &m,
            xid,
            &dhcp,
            &tls,
            &iface,
            poll,
            &log,
            &addr_lock,
            &mut configured,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                last = e;
                let now = now_ms();
                {
                    let mut l = log.lock().unwrap();
                    l[i].retries += 1;
                    *l[i].causes.entry(last.clone()).or_default() += 1;
                    if let Some(open) = l[i].in_payload.last_mut().filter(|p| p.1 == 0) {
                        open.1 = now;
                    }
                }
                // Like a machine that fell through to its disk, crashed and rebooted: the
                // first retry after 2 to 5 s, then longer (a boot loop takes its time), at
                // most 20 s; a storm of retries every few seconds is no real LAN's.
                let base = 2000 + (i as u64 * 31) % 3000;
                let wait = (base << attempt.min(3)).min(20_000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
    log.lock().unwrap()[i].error = Some(last);
}

#[allow(clippy::too_many_arguments)]
async fn boot_once(
    i: usize,
    mac: &[u8; 6],
    m: &str,
    xid: u32,
    dhcp: &Dhcp,
    tls: &tokio_rustls::TlsConnector,
    iface: &Arc<String>,
    poll: Duration,
    log: &Arc<Mutex<Vec<HostLog>>>,
    addr_lock: &Arc<tokio::sync::Mutex<()>>,
    configured: &mut Option<Ipv4Addr>,
) -> Result<(), String> {
    {
        let mac = *mac;
        let m = m.to_string();
        let (ip, file) = dora(dhcp, &mac, xid, "pxe").await?;
        {
            let mut l = log.lock().unwrap();
            if l[i].offer_ms.is_none() {
                l[i].offer_ms = Some(now_ms());
            }
        }
        configure(i, &m, ip, iface, addr_lock, configured).await?;
        if file != "undionly.kpxe" {
            return Err(format!("PXE boot file {file:?}"));
        }
        let dev = dev_of(i);
        tftp_get(ip, &dev, &file).await?;
        let (_, script_url) = dora(dhcp, &mac, xid ^ 0x0800_0000, "ipxe").await?;
        let path = script_url
            .split_once("8080")
            .map(|(_, p)| p.to_string())
            .ok_or_else(|| format!("iPXE boot file {script_url:?}"))?;
        // The waiting room's script polls again when the server does not answer (`chain ... ||
        // goto poll`), as a machine does while the server restarts.
        // Only a script already in the waiting room has that loop: the first fetch is the
        // boot file iPXE was given, whose failure ends the boot.
        let (mut polled, mut unanswered) = (false, 0);
        let token = loop {
            let got = http(ip, &dev, 8080, &path).await;
            if polled && unanswered < 60 && got.as_ref().map_or(true, |(st, _)| *st >= 500) {
                unanswered += 1;
                tokio::time::sleep(poll).await;
                continue;
            }
            let (st, body) = got?;
            polled = true;
            let text = String::from_utf8_lossy(&body).to_string();
            if st != 200 {
                return Err(format!("script: {st}"));
            }
            if let Some(t) = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("unbrick.token="))
            {
                let now = now_ms();
                let mut l = log.lock().unwrap();
                l[i].payload_ms.get_or_insert(now);
                l[i].in_payload.push((now, 0));
                break t.to_string();
            }
            if text.contains("exit 0") {
                return Err("told to boot locally before it was repaired".into());
            }
            log.lock().unwrap()[i].polls += 1;
            tokio::time::sleep(poll).await;
        };
        for f in ["vmlinuz", "initrd.img"] {
            let (st, _) = http(ip, &dev, 8080, &format!("/image/{f}?host={m}")).await?;
            if st != 200 {
                return Err(format!("{f}: {st}"));
            }
        }
        // The agent keeps one HTTPS connection for its requests, and closes it before it
        // reboots (dropping it here).
        let mut conn = None;
        // Like the agent (remediation-payload agent/net.rs): a refusal (4xx) is final; no
        // answer or a 5xx is retried with a growing delay, here for about a minute, which
        // outlasts a server that systemd restarts.
        let mut post = async |p: &'static str, body: serde_json::Value| {
            let data = serde_json::to_vec(&body).unwrap();
            let mut delay = Duration::from_millis(300);
            let mut last = String::new();
            // When the first attempt left. The server may have acted on any attempt: one it
            // recorded (and made durable) just before a SIGKILL goes unanswered, and its
            // retry after the restart is answered "already recorded". From then on the
            // server may give the host's slot to another, so the machine's time in the
            // payload ends here for the concurrency check (the server held the slot at
            // least until then).
            let first = now_ms();
            for _ in 0..20 {
                match agent_post(&mut conn, tls, ip, &dev, p, &data).await {
                    Ok((200, _)) => return Ok(first),
                    Ok((st, b)) if (400..500).contains(&st) => {
                        return Err(format!("{p}: {st} {}", String::from_utf8_lossy(&b)))
                    }
                    Ok((st, _)) => last = format!("{st}"),
                    Err(e) => last = e,
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            Err(format!("{p}: no answer ({last})"))
        };
        post("/agent/v1/hello", serde_json::json!({"token": token, "mac": m, "uuid": null, "serial": format!("SIM{i}"),
            "firmware": "bios", "secure_boot": null, "lockdown": null, "agent_version": "fleetsim", "kernel": "6.12"})).await?;
        for step in ["modules", "network", "scanning"] {
            post(
                "/agent/v1/step",
                serde_json::json!({"token": token, "mac": m, "step": step, "message": "simulated"}),
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(500 + (i as u64 * 13) % 1500)).await;
        log.lock().unwrap()[i].report_sent_ms = Some(now_ms());
        // One ID per boot: were a host remediated twice, the server would see two reports.
        let report_id = format!("sim-{i}-{xid:08x}");
        let sent = post("/agent/v1/report", serde_json::json!({"token": token, "mac": m, "report_id": report_id,
            "result": "remediated", "reason": null, "volumes": [],
            "files": [{"volume": "sda3", "path": "Windows\\System32\\drivers\\CrowdStrike\\C-00000291-00000000-00000032.sys",
                       "size": 40000, "sha256": "00".repeat(32), "mtime": 1721362140, "rule_id": "cs", "action": "quarantine",
                       "quarantined_to": "unbrick-quarantine\\sim"}],
            "rules_id": null, "rules_version": null, "agent_ms": 2000})).await?;
        {
            let mut l = log.lock().unwrap();
            l[i].acked_reports.push(report_id);
            if let Some(last) = l[i].in_payload.last_mut() {
                last.1 = sent;
            }
        }
        drop(conn);
        // Reboot into Windows: its DHCP client asks for an address and, like the real one,
        // asks again until a server answers (a broadcast can be dropped under load, a server
        // can be restarting). Windows never network-boots again.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // The whole DORA: the ACK comes only once the lease (and what the server learnt from
        // the DISCOVER, Windows is back) is durable.
        let discover = dhcp_msg(&mac, xid ^ 0x0400_0000, MessageType::Discover, "windows");
        for _ in 0..10 {
            let Some(offer) = dhcp
                .exchange_via(Some(&dev), &discover, MessageType::Offer)
                .await
            else {
                continue;
            };
            let mut req = dhcp_msg(&mac, xid ^ 0x0400_0000, MessageType::Request, "windows");
            req.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
            if dhcp
                .exchange_via(Some(&dev), &req, MessageType::Ack)
                .await
                .is_some()
            {
                return Ok(());
            }
        }
        Err("Windows' DHCP got no lease".into())
    }
}

/// Gives machine `i` its own interface (a macvlan with its MAC) holding `ip`, once per address.
async fn configure(
    i: usize,
    m: &str,
    ip: Ipv4Addr,
    iface: &Arc<String>,
    addr_lock: &Arc<tokio::sync::Mutex<()>>,
    configured: &mut Option<Ipv4Addr>,
) -> Result<(), String> {
    if *configured == Some(ip) {
        return Ok(());
    }
    let _g = addr_lock.lock().await;
    let parent = iface.to_string();
    let server_mac = SERVER_MAC.get().cloned().unwrap_or_default();
    let dev = dev_of(i);
    let m = m.to_string();
    let o = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // A retried boot finds its interface and address already there (-force goes on).
        let mut c = std::process::Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = c.stdin.take().expect("piped");
        // Every broadcast (DHCP replies, the server's ARP requests) is copied to each
        // macvlan from one queue: deep enough for a boot storm of 2,000 machines.
        writeln!(
            stdin,
            "link add {dev} link {parent} address {m} type macvlan mode private bcqueuelen 65535"
        )?;
        writeln!(stdin, "addr add {ip}/32 dev {dev}")?;
        // The server's hardware address is known: the machine never broadcasts an ARP
        // request (2,000 of them, each copied to every macvlan, would flood the link).
        writeln!(
            stdin,
            "neigh replace {SERVER} lladdr {server_mac} dev {dev} nud permanent"
        )?;
        writeln!(stdin, "link set {dev} up")?;
        drop(stdin);
        c.wait_with_output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&o.stderr);
    if err.lines().any(|l| {
        !l.contains("File exists")
            && !l.contains("already assigned")
            && !l.contains("Command failed")
            && !l.trim().is_empty()
    }) {
        return Err(format!("ip (interface {}): {err}", dev_of(i)));
    }
    *configured = Some(ip);
    Ok(())
}

/// The server's hardware address on the link (from the simulator's own ARP entry).
static SERVER_MAC: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The server certificate's pin (`sha256:<hex>`), for the admin API.
static PIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn api(
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let opts = unbrick_http::Options {
        headers: vec![("Authorization", format!("Bearer {token}"))],
        pin: PIN.get().map(String::as_str),
        ..Default::default()
    };
    let data = body.map(|b| serde_json::to_vec(&b).unwrap());
    // The admin API takes bearer tokens over HTTPS only (the certificate pinned). A server
    // being restarted (the kill test) answers nothing or 503 for a while: ask again, for up to
    // two minutes.
    let t = Instant::now();
    let r = loop {
        match unbrick_http::request_with(
            method,
            &format!("https://{SERVER}:8443{path}"),
            data.as_deref(),
            Duration::from_secs(30),
            &opts,
        ) {
            Ok(r) if r.status < 500 => break r,
            Ok(r) if t.elapsed() > Duration::from_secs(120) => break r,
            Err(e) if t.elapsed() > Duration::from_secs(120) => panic!("{path}: {e}"),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert!(
        (200..300).contains(&r.status),
        "{path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    serde_json::from_slice(&r.body).unwrap_or_default()
}

fn rss_mb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // After the command name in parentheses: field 14 and 15 of the whole line.
            let rest = s
                .rsplit_once(") ")?
                .1
                .split_whitespace()
                .collect::<Vec<_>>();
            let t = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
            Some(t / 100.0)
        })
        .unwrap_or(0.0)
}

/// Readies the simulator's namespace (ARP and reverse-path settings for 2,000 macvlans),
/// imports the `n` machines, and learns the server's certificate pin and hardware address.
fn prepare(token: &str, pin: &str, n: usize) {
    // Each machine's macvlan answers ARP only for its own address, and replies arrive on the
    // interface they are for.
    for (k, v) in [
        ("all/arp_ignore", "1"),
        ("all/arp_announce", "2"),
        ("all/rp_filter", "0"),
        ("default/rp_filter", "0"),
        ("default/arp_ignore", "1"),
        ("default/arp_announce", "2"),
    ] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{k}"), v)
            .unwrap_or_else(|e| panic!("sysctl {k}: {e}"));
    }

    let mut csv = String::from("mac,hostname,site,tags\n");
    for i in 0..n {
        csv.push_str(&format!("{},sim-{i:05},lab,sim\n", mac_str(&mac_of(i))));
    }
    let _ = PIN.set(if pin.starts_with("sha256:") {
        pin.to_string()
    } else {
        format!("sha256:{pin}")
    });
    post_csv(token, "/api/v1/hosts/import", &csv);
    // The simulator talked to the server from its own address: its ARP entry names the server.
    let arp = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
    let server_mac = arp
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&SERVER.to_string()))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("an ARP entry for the server")
        .to_string();
    let _ = SERVER_MAC.set(server_mac);
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.get(5).map(String::as_str) == Some("soak") {
        return soak::run(&a);
    }
    if a.len() < 8 {
        eprintln!("usage: unbrick-fleetsim IFACE TOKEN FINGERPRINT HOSTS WAVES CONCURRENCY POLL_SECS [SERVER_PID]");
        std::process::exit(2);
    }
    let (iface, token, pin) = (a[1].clone(), a[2].clone(), a[3].clone());
    let n: usize = a[4].parse().unwrap();
    let waves: Vec<String> = a[5].split(',').map(str::to_string).collect();
    let conc: u32 = a[6].parse().unwrap();
    let poll = Duration::from_secs(a[7].parse().unwrap());
    let pid = a.get(8).cloned().unwrap_or_default();
    prepare(&token, &pin, n);
    let oob = std::env::var("FLEETSIM_OOB").ok();
    let log = Arc::new(Mutex::new(vec![HostLog::default(); n]));
    let notify: Vec<Arc<tokio::sync::Notify>> = (0..n)
        .map(|_| Arc::new(tokio::sync::Notify::new()))
        .collect();
    let mut standin = None;
    if let Some(script) = &oob {
        standin = Some(controllers(&iface, &token, script, n, &notify, &log));
    }
    let c = api(
        &token,
        "POST",
        "/api/v1/campaigns",
        Some(serde_json::json!({
        "name": "fleetsim", "targets": {"tag": "sim"}, "waves": waves, "concurrency": conc,
        "gate": {"min_success": 1, "max_failure_rate": 0.01, "min_soak_minutes": 0},
        "trigger": if oob.is_some() { "oob" } else { "none" }})),
    );
    let id = c["id"].as_str().unwrap().to_string();
    api(
        &token,
        "POST",
        &format!("/api/v1/campaigns/{id}/start"),
        None,
    );
    let t0 = Instant::now();
    println!(
        "campaign {id}: {n} hosts, waves {}, concurrency {conc}, waiting room polled every {} s",
        a[5],
        poll.as_secs()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let done = rt.block_on(async {
        let dhcp = Dhcp::new(&iface);
        let tls = tokio_rustls::TlsConnector::from(unbrick_http::pinned_config(&pin).unwrap());
        let iface = Arc::new(iface.clone());
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let mut set = tokio::task::JoinSet::new();
        for (i, nt) in notify.iter().enumerate() {
            set.spawn(machine(
                i,
                dhcp.clone(),
                tls.clone(),
                iface.clone(),
                poll,
                log.clone(),
                lock.clone(),
                oob.as_ref().map(|_| nt.clone()),
            ));
        }
        // The timeline, from the server's own counts.
        let tok = token.clone();
        let monitor = tokio::spawn(async move {
            let mut last = String::new();
            println!(
                "{:>6}  {:>6} {:>7} {:>7} {:>9} {:>10} {:>9} {:>6}",
                "t (s)",
                "seen",
                "waiting",
                "booting",
                "agent-up",
                "remediated",
                "recovered",
                "failed"
            );
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let t = tok.clone();
                let s =
                    tokio::task::spawn_blocking(move || api(&t, "GET", "/api/v1/summary", None))
                        .await
                        .unwrap();
                let b = &s["by_state"];
                let line = format!(
                    "{:>6} {:>7} {:>9} {:>10} {:>9} {:>6}",
                    b["seen"],
                    b["waiting"],
                    b["booting"],
                    b["agent-up"].as_u64().unwrap_or(0) + b["scanning"].as_u64().unwrap_or(0),
                    b["remediated"].as_u64().unwrap_or(0) + b["rebooted"].as_u64().unwrap_or(0),
                    b["recovered"]
                );
                if line != last {
                    println!("{:>6}  {line} {:>6}", t0.elapsed().as_secs(), b["failed"]);
                    last = line;
                }
            }
        });
        let all = async { while set.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(900), all)
            .await
            .is_err()
        {
            println!("TIMEOUT: the simulation did not finish within 15 minutes");
        }
        monitor.abort();
        t0.elapsed()
    });
    // Let the server see the last Windows DHCP and the ticker close the last wave.
    std::thread::sleep(Duration::from_secs(3));
    let camp = api(&token, "GET", &format!("/api/v1/campaigns/{id}"), None);
    let sum = api(&token, "GET", "/api/v1/summary", None);
    let log = log.lock().unwrap().clone();
    let errors: Vec<String> = log
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            l.error
                .as_ref()
                .map(|e| format!("{}: {e}", mac_str(&mac_of(i))))
        })
        .collect();
    // No host got the payload before its wave opened.
    let mut early = Vec::new();
    for w in camp["waves"].as_array().unwrap() {
        let opened = w["opened_ms"].as_u64();
        for m in w["members"].as_array().unwrap() {
            let i = log
                .iter()
                .enumerate()
                .find(|(i, _)| mac_str(&mac_of(*i)) == m.as_str().unwrap())
                .map(|(i, _)| i)
                .unwrap();
            if let Some(p) = log[i].payload_ms {
                if opened.is_none_or(|o| p < o) {
                    early.push(format!(
                        "{m} got the payload at {p}, wave {} opened {opened:?}",
                        w["number"]
                    ));
                }
            }
        }
    }
    // Concurrency: hosts between getting the payload and first sending the report.
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for l in &log {
        for &(a, b) in &l.in_payload {
            edges.push((a, 1));
            edges.push((if b == 0 { now_ms() } else { b }, -1));
        }
    }
    edges.sort();
    let (mut cur, mut peak) = (0, 0);
    for (_, d) in edges {
        cur += d;
        peak = peak.max(cur);
    }
    let polls: u32 = log.iter().map(|l| l.polls).sum();
    let retries: u32 = log.iter().map(|l| l.retries).sum();
    let recovered = sum["by_state"]["recovered"].as_u64().unwrap_or(0);
    println!();
    println!(
        "campaign state: {} ({} waves: {})",
        camp["state"],
        camp["waves"].as_array().unwrap().len(),
        camp["waves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["hosts"].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "total time: {:.1} s for {n} hosts; waiting-room polls: {polls}; boots retried by machines: {retries}",
        done.as_secs_f64()
    );
    if retries > 0 {
        let mut causes = std::collections::BTreeMap::<&str, u32>::new();
        for l in log.iter() {
            for (c, k) in &l.causes {
                *causes.entry(c.as_str()).or_default() += k;
            }
        }
        let mut causes: Vec<_> = causes.into_iter().collect();
        causes.sort_by_key(|c| std::cmp::Reverse(c.1));
        let top: Vec<String> = causes
            .iter()
            .take(6)
            .map(|(c, k)| format!("{k} x {c}"))
            .collect();
        println!("why boots were retried: {}", top.join("; "));
    }
    println!("hosts recovered (Windows seen): {recovered} of {n}; peak in the payload at once: {peak} (limit {conc})");
    if !pid.is_empty() {
        println!(
            "server peak RSS: {} MB; server CPU {:.1} s{}",
            rss_mb(&pid),
            cpu_secs(&pid),
            standin
                .as_ref()
                .map(|c| format!(
                    ", the Redfish stand-in's CPU {:.1} s (one Python process)",
                    cpu_secs(&c.id().to_string())
                ))
                .unwrap_or_default()
        );
    }
    // What the store holds: each host's last report and its history, read through the API
    // (8 at a time). Every report the server acknowledged must be there; no host may have been
    // remediated twice, by the machines' count (two acknowledged reports) or the server's (two
    // `agent-report: Remediated` events).
    let details: Vec<serde_json::Value> = {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let out = Mutex::new(vec![serde_json::Value::Null; n]);
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let d = api(
                        &token,
                        "GET",
                        &format!("/api/v1/hosts/{}", mac_str(&mac_of(i))),
                        None,
                    );
                    out.lock().unwrap()[i] = d;
                });
            }
        });
        out.into_inner().unwrap()
    };
    let (mut acked, mut lost, mut dup_machines, mut dup_server) =
        (0, Vec::new(), Vec::new(), Vec::new());
    for (i, (l, d)) in log.iter().zip(&details).enumerate() {
        let m = mac_str(&mac_of(i));
        acked += l.acked_reports.len();
        let stored = d["host"]["last_report"]["report_id"].as_str();
        if let Some(last) = l.acked_reports.last() {
            if stored != Some(last.as_str()) {
                lost.push(format!(
                    "{m}: report {last} acknowledged, the store has {stored:?}"
                ));
            }
        }
        if l.acked_reports.len() > 1 {
            dup_machines.push(format!("{m}: {}", l.acked_reports.join(", ")));
        }
        let remediated = d["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter(|e| {
                        e["kind"] == "agent-report"
                            && e["message"]
                                .as_str()
                                .is_some_and(|m| m.starts_with("report: Remediated"))
                    })
                    .count()
            })
            .unwrap_or(0);
        if remediated != 1 {
            dup_server.push(format!("{m}: {remediated} remediated reports recorded"));
        }
    }
    println!(
        "reports acknowledged: {acked}; in the store: {}; lost: {}; remediated twice: {} (machines' count), hosts without exactly one recorded remediation: {} (server's events)",
        acked - lost.len(),
        lost.len(),
        dup_machines.len(),
        dup_server.len()
    );
    let mut twice = Vec::new();
    if oob.is_some() {
        // Wave open -> the controller's reset, and the reset -> the machine's first DHCP offer.
        let mut open_to_trigger = Vec::new();
        let mut trigger_to_offer = Vec::new();
        for w in camp["waves"].as_array().unwrap() {
            let opened = w["opened_ms"].as_u64().unwrap_or(0);
            for m in w["members"].as_array().unwrap() {
                let Some(i) = (0..n).find(|i| mac_str(&mac_of(*i)) == m.as_str().unwrap()) else {
                    continue;
                };
                if let Some(t) = log[i].trigger_ms {
                    open_to_trigger.push(t.saturating_sub(opened));
                    if let Some(o) = log[i].offer_ms {
                        trigger_to_offer.push(o.saturating_sub(t));
                    }
                }
                if log[i].triggers > 1 {
                    twice.push(format!("{m}: {} resets", log[i].triggers));
                }
            }
        }
        let pct = |v: &mut Vec<u64>, p: f64| -> u64 {
            v.sort_unstable();
            v.get(((v.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        println!(
            "out of band: {} of {n} machines reset through their Redfish controllers; wave open -> reset p50 {:.1} s, p99 {:.1} s, max {:.1} s; reset -> first DHCP offer p50 {} ms, p99 {} ms, max {} ms",
            open_to_trigger.len(),
            pct(&mut open_to_trigger, 0.5) as f64 / 1000.0,
            pct(&mut open_to_trigger, 0.99) as f64 / 1000.0,
            pct(&mut open_to_trigger, 1.0) as f64 / 1000.0,
            pct(&mut trigger_to_offer, 0.5),
            pct(&mut trigger_to_offer, 0.99),
            pct(&mut trigger_to_offer, 1.0)
        );
    }
    if let Some(mut c) = standin {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut bad = false;
    // A failed check with its count and the first ten cases.
    let mut failed = |what: &str, cases: &[String]| {
        if !cases.is_empty() {
            println!(
                "{what} ({}): {}",
                cases.len(),
                cases[..cases.len().min(10)].join("; ")
            );
            bad = true;
        }
    };
    failed("ERRORS", &errors);
    failed("BOOTED OUTSIDE ITS WAVE", &early);
    failed("RESET MORE THAN ONCE", &twice);
    failed("ACKNOWLEDGED REPORT LOST", &lost);
    failed("REMEDIATED TWICE", &dup_machines);
    failed("NOT EXACTLY ONE REMEDIATION IN THE STORE", &dup_server);
    if peak > conc as i32 {
        println!("CONCURRENCY EXCEEDED: {peak} > {conc}");
        bad = true;
    }
    if recovered != n as u64 || camp["state"] != "completed" {
        println!(
            "LOST: {} of {n} recovered, campaign {}",
            recovered, camp["state"]
        );
        bad = true;
    }
    if bad {
        std::process::exit(1);
    }
    println!("OK: no host outside its wave, concurrency held, none lost");
}

/// Out-of-band mode: one Redfish controller per machine at 10.99.200.1 and up on `iface` (the
/// Python stand-in serves them all, one system per address), imported into the server; a
/// thread turns each reset the stand-in announces into that machine's power-on.
fn controllers(
    iface: &str,
    token: &str,
    script: &str,
    n: usize,
    notify: &[Arc<tokio::sync::Notify>],
    log: &Arc<Mutex<Vec<HostLog>>>,
) -> std::process::Child {
    use std::io::{BufRead, Write};
    let addr = |i: usize| Ipv4Addr::new(10, 99, 200 + ((i + 1) / 256) as u8, ((i + 1) % 256) as u8);
    let mut c = std::process::Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip");
    {
        let mut stdin = c.stdin.take().unwrap();
        for i in 0..n {
            writeln!(stdin, "addr add {}/32 dev {iface}", addr(i)).unwrap();
        }
    }
    assert!(c.wait().unwrap().success(), "controller addresses");
    let mut child = std::process::Command::new("python3")
        .args([
            script,
            "0.0.0.0",
            "80",
            "root",
            "Sim-Ctl-Pw",
            "--plain",
            "--fleet",
            "--announce",
            "--log",
            "/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the Redfish stand-in");
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    // Wait until it listens.
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("listening"), "stand-in: {first}");
    let by_addr: HashMap<Ipv4Addr, usize> = (0..n).map(|i| (addr(i), i)).collect();
    let (notify, log) = (notify.to_vec(), log.clone());
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let mut w = l.split_whitespace();
            if w.next() != Some("reset") {
                continue;
            }
            let Some(i) = w
                .next()
                .and_then(|a| a.parse().ok())
                .and_then(|a: Ipv4Addr| by_addr.get(&a).copied())
            else {
                continue;
            };
            {
                let mut lg = log.lock().unwrap();
                lg[i].triggers += 1;
                lg[i].trigger_ms.get_or_insert(now_ms());
            }
            if w.next() == Some("pxe") {
                notify[i].notify_one();
            }
        }
    });
    let mut csv = String::from("mac,kind,address,port,tls,user,secret\n");
    for i in 0..n {
        csv.push_str(&format!(
            "{},redfish,{},80,no,root,Sim-Ctl-Pw\n",
            mac_str(&mac_of(i)),
            addr(i)
        ));
    }
    post_csv(token, "/api/v1/bmc/import", &csv);
    child
}

/// Posts a CSV import to the admin API over the pinned HTTPS listener; panics unless 200.
fn post_csv(token: &str, path: &str, csv: &str) {
    let opts = unbrick_http::Options {
        headers: vec![("Authorization", format!("Bearer {token}"))],
        content_type: Some("text/csv"),
        pin: PIN.get().map(String::as_str),
        ..Default::default()
    };
    let r = unbrick_http::request_with(
        "POST",
        &format!("https://{SERVER}:8443{path}"),
        Some(csv.as_bytes()),
        Duration::from_secs(60),
        &opts,
    )
    .unwrap();
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
}
