//! `unbrick doctor`: one line per check of what a server needs, each with its fix. The same
//! checks (but the network probe and the ports, which `serve` meets itself) are logged at
//! `serve` start. Each check reads only this machine and its data directory; the one packet it
//! sends is a DHCP DISCOVER on the served interface, to see who else answers there.
use crate::config::DataDir;
use crate::settings::{DhcpMode, Settings};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check: what was found and, unless it is fine, how to fix it.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) level: Level,
    pub(crate) name: &'static str,
    pub(crate) found: String,
    pub(crate) fix: Option<String>,
    /// When what it checked expires (rules, certificate): unix seconds.
    pub(crate) expires: Option<u64>,
}

impl Check {
    fn ok(name: &'static str, found: String) -> Self {
        Self {
            level: Level::Ok,
            name,
            found,
            fix: None,
            expires: None,
        }
    }
    fn warn(name: &'static str, found: String, fix: String) -> Self {
        Self {
            level: Level::Warn,
            name,
            found,
            fix: Some(fix),
            expires: None,
        }
    }
    fn fail(name: &'static str, found: String, fix: String) -> Self {
        Self {
            level: Level::Fail,
            name,
            found,
            fix: Some(fix),
            expires: None,
        }
    }

    /// Its line: `ok   name: found` or `WARN name: found; fix: ...`.
    pub(crate) fn line(&self) -> String {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        match &self.fix {
            Some(f) => format!("{tag} {}: {}; fix: {f}", self.name, self.found),
            None => format!("{tag} {}: {}", self.name, self.found),
        }
    }
}

/// Days before an expiry that a warning starts.
pub(crate) const EXPIRY_WARN_DAYS: u64 = 14;

/// What to look at.
pub(crate) struct Scope<'a> {
    pub(crate) d: &'a DataDir,
    pub(crate) s: &'a Settings,
    /// Send the DHCP probe and try the ports (doctor; `serve` does neither).
    pub(crate) network: bool,
    pub(crate) now: u64,
    /// Called by the server that holds the store, with its host count.
    pub(crate) serving: Option<u64>,
}

/// Every check, in the order an admin fixes things.
pub(crate) fn run(sc: &Scope<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    let iface = interface(sc, &mut out);
    let running = sc.serving.is_some() || server_running(sc.d);
    if sc.network {
        if let Some(i) = &iface {
            out.push(dhcp_probe(i, sc.s.dhcp.unwrap_or_default()));
            out.extend(ports(i, sc.s, running));
        }
    }
    out.push(arp_table(sc));
    out.push(kernel_cmdline(sc));
    let trusted = signing::PublicKey::load(&sc.d.public_key()).ok();
    out.push(image(sc, trusted.as_ref()));
    out.push(rules(sc, trusted.as_ref()));
    out.push(tls(sc));
    out.push(shim_ca(sc));
    out.push(clock(sc));
    out.push(store(sc, running));
    out
}

fn interface(sc: &Scope<'_>, out: &mut Vec<Check>) -> Option<netboot_server::net::Interface> {
    let Some(name) = &sc.s.interface else {
        out.push(Check::fail(
            "interface",
            "none named".into(),
            "pass --interface IF (or [serve] interface in unbrick.toml)".into(),
        ));
        return None;
    };
    match netboot_server::net::find_interface(name) {
        Ok(i) => {
            out.push(Check::ok(
                "interface",
                format!("{name} {}/{}", i.addr, i.prefix_len),
            ));
            Some(i)
        }
        Err(e) => {
            out.push(Check::fail(
                "interface",
                e.to_string(),
                "name the interface on the machines' segment".into(),
            ));
            None
        }
    }
}

/// Whether a server holds the data directory's store (sled's lock).
fn server_running(d: &DataDir) -> bool {
    match fleet::SledStore::open_with_cache(&d.store(), 4 << 20) {
        Ok(_) => false,
        Err(e) => e.to_string().contains("lock"),
    }
}

/// An answer to the probe.
struct Offer {
    server: Ipv4Addr,
    yiaddr: Ipv4Addr,
    boot_file: Option<String>,
}

/// A DISCOVER from this interface; every answer within 3 s. Who answers decides the advice:
/// full mode beside another address-giving server would fight it, proxy mode without one
/// leaves the machines without an address.
fn dhcp_probe(i: &netboot_server::net::Interface, mode: DhcpMode) -> Check {
    let offers = match probe(i) {
        Ok(o) => o,
        Err(e) => {
            return Check::warn(
                "dhcp",
                format!("could not probe the segment: {e}"),
                "stop the DHCP client on this interface for the probe, or check by hand that no other DHCP server answers in full mode".into(),
            )
        }
    };
    let servers: Vec<String> = offers
        .iter()
        .map(|o| {
            let mut s = format!("{} offers {}", o.server, o.yiaddr);
            if let Some(f) = &o.boot_file {
                s.push_str(&format!(" with boot file {f:?}"));
            }
            s
        })
        .collect();
    let giving: Vec<&Offer> = offers
        .iter()
        .filter(|o| !o.yiaddr.is_unspecified())
        .collect();
    let pxe: Vec<&Offer> = offers.iter().filter(|o| o.boot_file.is_some()).collect();
    match mode {
        DhcpMode::Full if !giving.is_empty() => Check::fail(
            "dhcp",
            format!("another DHCP server gives addresses here ({})", servers.join("; ")),
            "beside it use --dhcp proxy, or serve full mode on a recovery VLAN of its own".into(),
        ),
        DhcpMode::Proxy if giving.is_empty() => Check::warn(
            "dhcp",
            "no DHCP server answered a DISCOVER: proxy mode gives no addresses, so machines would get none".into(),
            "use --dhcp full --pool A-B on this segment, or make sure the office DHCP server reaches it (relay)".into(),
        ),
        _ if !pxe.is_empty() => Check::warn(
            "dhcp",
            format!("another server offers a network boot here ({})", servers.join("; ")),
            "machines may boot its file instead: turn its PXE options off for the fleet's segment".into(),
        ),
        DhcpMode::Off => Check::ok(
            "dhcp",
            if servers.is_empty() {
                "--dhcp off; nobody else answered either: machines need options 66/67 pointing here".into()
            } else {
                format!("--dhcp off; answering here: {}", servers.join("; "))
            },
        ),
        _ if servers.is_empty() => Check::ok(
            "dhcp",
            "no other DHCP server answers here: full mode fits".into(),
        ),
        _ => Check::ok(
            "dhcp",
            format!("{}: proxy mode fits", servers.join("; ")),
        ),
    }
}

fn probe(i: &netboot_server::net::Interface) -> Result<Vec<Offer>, String> {
    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    let mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", i.name))
        .map_err(|e| format!("{}: {e}", i.name))?;
    let chaddr: Vec<u8> = mac
        .trim()
        .split(':')
        .filter_map(|x| u8::from_str_radix(x, 16).ok())
        .collect();
    if chaddr.len() != 6 {
        return Err(format!("{} has no Ethernet address", i.name));
    }
    let sock = netboot_server::net::udp_socket(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        Some(&i.name),
        true,
    )
    .map_err(|e| format!("UDP port 68: {e}"))?;
    sock.set_nonblocking(false).map_err(|e| e.to_string())?;
    let xid: u32 = u32::from_be_bytes(
        ring::rand::generate::<[u8; 4]>(&ring::rand::SystemRandom::new())
            .map_err(|_| "no randomness".to_string())?
            .expose(),
    );
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(&chaddr);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::ServerIdentifier,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
    ]));
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf))
        .map_err(|e| e.to_string())?;
    sock.send_to(&buf, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
        .map_err(|e| format!("sending the probe: {e}"))?;
    let until = Instant::now() + Duration::from_secs(3);
    let mut offers: Vec<Offer> = Vec::new();
    let mut rx = [0u8; 1500];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        let Ok((n, from)) = sock.recv_from(&mut rx) else {
            break;
        };
        let Ok(r) = Message::decode(&mut Decoder::new(&rx[..n])) else {
            continue;
        };
        if r.xid() != xid || r.opcode() != Opcode::BootReply {
            continue;
        }
        // The machine that answered (its server identifier may name another of its
        // addresses).
        let server = match from.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => match r.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(ip)) => *ip,
                _ => continue,
            },
        };
        let boot_file = match r.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(f)) => Some(String::from_utf8_lossy(f).into_owned()),
            _ => {
                let f = r.fname().unwrap_or_default();
                let f = String::from_utf8_lossy(f)
                    .trim_end_matches('\0')
                    .to_string();
                (!f.is_empty()).then_some(f)
            }
        };
        if !offers.iter().any(|o| o.server == server) {
            offers.push(Offer {
                server,
                yiaddr: r.yiaddr(),
                boot_file,
            });
        }
    }
    Ok(offers)
}

/// The ports `serve` binds, tried here (unless a server on this data directory holds them).
fn ports(i: &netboot_server::net::Interface, s: &Settings, running: bool) -> Vec<Check> {
    if running {
        return vec![Check::ok(
            "ports",
            "unbrick serve is running on this data directory: the ports are its".into(),
        )];
    }
    let ip = s.server_ip.unwrap_or(i.addr);
    let mut udp = vec![("TFTP", s.tftp_port.unwrap_or(69))];
    match s.dhcp.unwrap_or_default() {
        DhcpMode::Full => udp.push(("DHCP", 67)),
        DhcpMode::Proxy => {
            udp.push(("DHCP", 67));
            udp.push(("proxyDHCP", 4011));
        }
        DhcpMode::Off => {}
    }
    let tcp = [
        ("HTTP", s.http_port.unwrap_or(8080)),
        ("HTTPS", s.https_port.unwrap_or(8443)),
    ];
    let mut busy = Vec::new();
    for (what, port) in udp {
        // DHCP listens on the wildcard address (broadcasts), the rest on the server's.
        let at = if what == "DHCP" {
            Ipv4Addr::UNSPECIFIED
        } else {
            ip
        };
        let a = SocketAddrV4::new(at, port);
        // DHCP is bound as serve binds it (address reuse, on the interface: an office DHCP
        // server on this machine shares the port); the others must be free.
        let r = if what == "DHCP" || what == "proxyDHCP" {
            netboot_server::net::udp_socket(a, Some(&i.name), true).map(drop)
        } else {
            plain_udp(a, None)
        };
        if let Err(e) = r {
            busy.push(netboot_server::net::bind_error(what, a, &e));
        }
    }
    for (what, port) in tcp {
        let a = SocketAddrV4::new(ip, port);
        if let Err(e) = std::net::TcpListener::bind(a) {
            busy.push(netboot_server::net::bind_error(what, a, &e));
        }
    }
    if busy.is_empty() {
        vec![Check::ok("ports", "every port serve needs is free".into())]
    } else {
        busy.into_iter()
            .map(|b| {
                Check::fail(
                    "ports",
                    b,
                    "stop what holds it (ss -lunpt shows it), or move unbrick to other ports"
                        .into(),
                )
            })
            .collect()
    }
}

/// A UDP bind without address reuse (reuse would hide a server that holds the port).
fn plain_udp(a: SocketAddrV4, dev: Option<&str>) -> std::io::Result<()> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Some(d) = dev {
        s.bind_device(Some(d.as_bytes()))?;
    }
    s.bind(&std::net::SocketAddr::V4(a).into())
}

/// The kernel's neighbour table must hold a wave: past gc_thresh3 entries it drops neighbours
/// and replies to machines go unanswered.
fn arp_table(sc: &Scope<'_>) -> Check {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let Some(max) = read("/proc/sys/net/ipv4/neigh/default/gc_thresh3") else {
        return Check::warn(
            "arp table",
            // Linux shows the table's limits only in the initial network namespace: in a
            // container or another namespace the host's limits apply, unseen from here.
            "cannot read net.ipv4.neigh.default.gc_thresh3 (not visible outside the host's initial network namespace)".into(),
            "on the host, check that sysctl net.ipv4.neigh.default.gc_thresh3 holds the fleet (/usr/lib/sysctl.d/99-unbrick.conf)".into(),
        );
    };
    let hosts = sc.serving.unwrap_or_else(|| fleet_size(sc.d));
    let want = hosts + 256;
    if max < want {
        Check::warn(
            "arp table",
            format!("the kernel keeps at most {max} neighbours; the fleet is {hosts} hosts"),
            format!(
                "sysctl -w net.ipv4.neigh.default.gc_thresh3={} (the package's /usr/lib/sysctl.d/99-unbrick.conf sets 65536)",
                want.next_power_of_two().max(65536)
            ),
        )
    } else {
        Check::ok(
            "arp table",
            format!("up to {max} neighbours for {hosts} hosts"),
        )
    }
}

/// Hosts in the store, or 0 when a server holds it (its count is on the console).
fn fleet_size(d: &DataDir) -> u64 {
    use fleet::Store as _;
    fleet::SledStore::open_with_cache(&d.store(), 4 << 20)
        .ok()
        .and_then(|s| s.hosts().ok())
        .map(|h| h.len() as u64)
        .unwrap_or(0)
}

fn image(sc: &Scope<'_>, trusted: Option<&signing::PublicKey>) -> Check {
    let dir = sc.d.image();
    let Some(pk) = trusted else {
        return Check::fail(
            "image",
            format!("no trusted key at {}", sc.d.public_key().display()),
            format!("unbrick init --data-dir {}", sc.d.0.display()),
        );
    };
    if !dir.join(netboot_server::proto::boot::KERNEL).exists() {
        return Check::warn(
            "image",
            "no recovery kernel yet: machines get only the waiting room".into(),
            format!("unbrick image build --data-dir {}", sc.d.0.display()),
        );
    }
    match netboot_server::image::Image::load(&dir, pk) {
        Ok(img) => Check::ok(
            "image",
            format!(
                "version {} (kernel {}, built {}), {} artefacts signed by {}",
                img.manifest.image_version,
                img.manifest.kernel_version,
                img.manifest.created,
                img.manifest.artefacts.len(),
                pk.fingerprint()
            ),
        ),
        Err(problems) => Check::fail(
            "image",
            problems.join("; "),
            format!(
                "rebuild (unbrick image build --data-dir {}) or sign it again offline (unbrick image sign)",
                sc.d.0.display()
            ),
        ),
    }
}

/// The command that renews the rules, for the fix text.
fn renew_rules(d: &DataDir) -> String {
    format!(
        "unbrick rules default --days 90 > active.json (or edit the old one), unbrick rules sign active.json --key KEY on the signing machine, then copy active.json and active.json.sig to {}",
        d.rules().display()
    )
}

fn rules(sc: &Scope<'_>, trusted: Option<&signing::PublicKey>) -> Check {
    let file = sc.d.rules().join("active.json");
    let sig = sc.d.rules().join("active.json.sig");
    let Some(pk) = trusted else {
        return Check::fail(
            "rules",
            "no trusted key".into(),
            format!("unbrick init --data-dir {}", sc.d.0.display()),
        );
    };
    let (doc, s) = match (std::fs::read(&file), std::fs::read(&sig)) {
        (Ok(d), Ok(s)) => (d, s),
        (Err(e), _) => {
            return Check::fail(
                "rules",
                format!("{}: {e}", file.display()),
                renew_rules(sc.d),
            )
        }
        (_, Err(e)) => {
            return Check::fail(
                "rules",
                format!("{}: {e}", sig.display()),
                renew_rules(sc.d),
            )
        }
    };
    // Verified as of now; the expiry is then read from the verified document.
    match signing::RuleSet::verify_signed(pk, &doc, &s, sc.now) {
        Ok(rs) => {
            let exp = signing::time::parse_utc(&rs.expires).unwrap_or(0);
            let days = exp.saturating_sub(sc.now) / 86_400;
            let found = format!(
                "{} v{} signed by {}, expires {} (in {days} days)",
                rs.id,
                rs.version,
                pk.fingerprint(),
                rs.expires
            );
            let mut c = if days < EXPIRY_WARN_DAYS {
                Check::warn("rules", found, renew_rules(sc.d))
            } else {
                Check::ok("rules", found)
            };
            c.expires = Some(exp);
            c
        }
        Err(e) => Check::fail(
            "rules",
            format!("{}: {e}", file.display()),
            renew_rules(sc.d),
        ),
    }
}

fn tls(sc: &Scope<'_>) -> Check {
    let path = sc.d.tls_cert();
    if !path.exists() {
        return Check::ok(
            "tls",
            "no certificate yet: serve makes a self-signed one at its first start".into(),
        );
    }
    let renew = format!(
        "move {} and {} away and restart serve (a new self-signed certificate; CLI users pin the new fingerprint), or put your own there",
        path.display(),
        sc.d.tls_key().display()
    );
    let certs = match netboot_server::tls::read_certs(&path) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => return Check::fail("tls", format!("{}: no certificate", path.display()), renew),
        Err(e) => return Check::fail("tls", e.to_string(), renew),
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(certs[0].as_ref()) else {
        return Check::fail(
            "tls",
            format!("{}: not an X.509 certificate", path.display()),
            renew,
        );
    };
    let v = cert.validity();
    let (from, to) = (
        v.not_before.timestamp().max(0) as u64,
        v.not_after.timestamp().max(0) as u64,
    );
    let found = format!(
        "{} valid {} to {}",
        path.display(),
        signing::time::format_utc(from),
        signing::time::format_utc(to)
    );
    let mut c = if sc.now < from {
        Check::fail(
            "tls",
            format!("{found}: not valid yet (is the clock right?)"),
            "set the clock (see the clock check), or make a new certificate".into(),
        )
    } else if sc.now >= to {
        Check::fail("tls", format!("{found}: expired"), renew)
    } else if to - sc.now < EXPIRY_WARN_DAYS * 86_400 {
        Check::warn(
            "tls",
            format!("{found}: expires in {} days", (to - sc.now) / 86_400),
            renew,
        )
    } else {
        Check::ok("tls", found)
    };
    c.expires = Some(to);
    c
}

/// Microsoft's CAs that sign third-party UEFI binaries such as shim.
const UEFI_CAS: [&str; 2] = [
    "Microsoft Corporation UEFI CA 2011",
    "Microsoft UEFI CA 2023",
];

/// Which Microsoft UEFI CA issued the certificate that signs the shim being served: read from
/// the certificates in its Authenticode signature (the PE security directory).
fn shim_ca(sc: &Scope<'_>) -> Check {
    let path = sc.d.image().join("shimx64.efi");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => {
            return Check::warn(
                "shim",
                format!("{}: {e}", path.display()),
                "apt-get install shim-signed, then unbrick init again (UEFI Secure Boot machines need it)".into(),
            )
        }
    };
    let issuers = match signature_issuers(&data) {
        Ok(i) => i,
        Err(e) => {
            return Check::fail(
                "shim",
                format!("{}: {e}", path.display()),
                "use Debian's shim-signed (shimx64.efi.signed)".into(),
            )
        }
    };
    let cas: Vec<&str> = UEFI_CAS
        .iter()
        .copied()
        .filter(|ca| issuers.iter().any(|i| i.contains(ca)))
        .collect();
    match cas.as_slice() {
        [] => Check::warn(
            "shim",
            format!(
                "{} is not signed under a Microsoft UEFI CA (its signers' issuers: {})",
                path.display(),
                if issuers.is_empty() { "none".to_string() } else { issuers.join("; ") }
            ),
            "firmware with Secure Boot on will refuse it: use Debian's shim-signed".into(),
        ),
        ["Microsoft Corporation UEFI CA 2011"] => Check::warn(
            "shim",
            "shimx64.efi is signed under Microsoft Corporation UEFI CA 2011 only: machines whose Secure Boot database has only the 2023 CA (or no third-party CA, as on Secured-core PCs) refuse it".into(),
            "enable the third-party UEFI CA in those machines' firmware setup; serve a shim signed under the 2023 CA when Debian ships one".into(),
        ),
        c => Check::ok("shim", format!("shimx64.efi is signed under {}", c.join(" and "))),
    }
}

/// The issuer names of the certificates in a PE file's Authenticode signature.
pub(crate) fn signature_issuers(pe: &[u8]) -> Result<Vec<String>, String> {
    let u16_at = |o: usize| {
        pe.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        pe.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if pe.get(0..2) != Some(b"MZ") {
        return Err("not a PE file".into());
    }
    let nt = u32_at(0x3c).ok_or("truncated")?;
    if pe.get(nt..nt + 4) != Some(b"PE\0\0") {
        return Err("not a PE file".into());
    }
    let opt = nt + 24;
    // The security directory is data directory 4: its offset depends on PE32 or PE32+.
    let dirs = match u16_at(opt).ok_or("truncated")? {
        0x20b => opt + 112,
        0x10b => opt + 96,
        m => return Err(format!("unknown optional header magic {m:#x}")),
    };
    let (off, len) = (
        u32_at(dirs + 4 * 8).ok_or("truncated")?,
        u32_at(dirs + 4 * 8 + 4).ok_or("truncated")?,
    );
    if off == 0 || len == 0 {
        return Err("not signed (no security directory)".into());
    }
    let sig = pe
        .get(off..off.saturating_add(len))
        .ok_or("the security directory lies outside the file")?;
    // The WIN_CERTIFICATE holds a PKCS#7 SignedData whose certificates are plain DER X.509:
    // every offset where one parses is one of them.
    let mut issuers = Vec::new();
    let mut i = 0;
    while i + 4 < sig.len() {
        if sig[i] == 0x30 && sig[i + 1] == 0x82 {
            if let Ok((rest, c)) = x509_parser::parse_x509_certificate(&sig[i..]) {
                issuers.push(c.issuer().to_string());
                i = sig.len() - rest.len();
                continue;
            }
        }
        i += 1;
    }
    Ok(issuers)
}

fn clock(sc: &Scope<'_>) -> Check {
    // A clock behind what this machine signed is wrong; so is one before unbrick existed.
    let mut floor = ("this build", crate::build_floor());
    if let Ok(m) = std::fs::read(sc.d.image().join(signing::manifest::MANIFEST_FILE)) {
        if let Some(t) = serde_json::from_slice::<serde_json::Value>(&m)
            .ok()
            .and_then(|v| {
                v["created"]
                    .as_str()
                    .and_then(|c| signing::time::parse_utc(c).ok())
            })
        {
            if t > floor.1 {
                floor = ("the image's signing time", t);
            }
        }
    }
    let now = signing::time::format_utc(sc.now);
    if sc.now + 300 < floor.1 {
        return Check::fail(
            "clock",
            format!(
                "{now} is before {} ({})",
                floor.0,
                signing::time::format_utc(floor.1)
            ),
            "set the clock (timedatectl set-time, or NTP): signatures and certificates are checked against it".into(),
        );
    }
    let synced = Path::new("/run/systemd/timesync/synchronized").exists();
    if synced {
        Check::ok("clock", format!("{now}, synchronised by systemd-timesyncd"))
    } else {
        Check::warn(
            "clock",
            format!("{now}, not known to be synchronised"),
            "timedatectl set-ntp true (rules expiry and TLS dates are checked against it)".into(),
        )
    }
}

/// The extra words for the recovery kernel's command line, held to what `serve` takes.
fn kernel_cmdline(sc: &Scope<'_>) -> Check {
    let extra = sc.s.kernel_cmdline.clone().unwrap_or_default();
    match netboot_server::booter::check_extra_cmdline(&extra) {
        Ok(()) if extra.trim().is_empty() => Check::ok(
            "cmdline",
            "no extra words for the recovery kernel".into(),
        ),
        Ok(()) => Check::ok(
            "cmdline",
            format!("extra words for the recovery kernel: {}", extra.trim()),
        ),
        Err(e) => Check::fail(
            "cmdline",
            e,
            "set --kernel-cmdline (kernel_cmdline in unbrick.toml) to option words only; serve refuses this one".into(),
        ),
    }
}

fn store(sc: &Scope<'_>, running: bool) -> Check {
    let dir = sc.d.store();
    let reserve =
        sc.s.store_reserve_mb
            .unwrap_or(fleet::store::DEFAULT_RESERVE >> 20)
            << 20;
    let free = match nix::sys::statvfs::statvfs(&sc.d.0) {
        Ok(v) => v.blocks_available() * v.fragment_size(),
        Err(e) => {
            return Check::fail(
                "store",
                format!("{}: {e}", sc.d.0.display()),
                format!("unbrick init --data-dir {}", sc.d.0.display()),
            )
        }
    };
    // Writable: a file made and removed beside the store (sled's own files are locked while
    // a server runs).
    let probe = sc.d.0.join(".doctor-write-check");
    let writable = std::fs::write(&probe, b"x").and_then(|_| std::fs::remove_file(&probe));
    let mib = |b: u64| b >> 20;
    let state = if running {
        "held by the running server"
    } else if dir.exists() {
        "not in use"
    } else {
        "missing"
    };
    if let Err(e) = writable {
        return Check::fail(
            "store",
            format!("{} is not writable: {e}", sc.d.0.display()),
            "make the data directory writable by the service user (unbrick)".into(),
        );
    }
    if !dir.exists() {
        return Check::fail(
            "store",
            format!("{} {state}", dir.display()),
            format!("unbrick init --data-dir {}", sc.d.0.display()),
        );
    }
    let found = format!(
        "{} ({state}): {} MiB free, {} MiB reserved",
        dir.display(),
        mib(free),
        mib(reserve)
    );
    if free < reserve {
        Check::fail(
            "store",
            format!("{found}: below the reserve, every write is refused (disk full)"),
            "free space on that file system (old logs, images), or move the data directory".into(),
        )
    } else if free < reserve * 4 {
        Check::warn(
            "store",
            format!("{found}: little room left"),
            "free space on that file system before a campaign".into(),
        )
    } else {
        Check::ok("store", found)
    }
}

/// `unbrick doctor`: every check on one line each; exit 1 when one fails.
pub(crate) fn cli(a: crate::cli::ServeArgs) -> Result<(), crate::Fail> {
    let d = DataDir(a.data_dir.clone());
    if !d.config().exists() && !d.store().exists() {
        return Err(crate::Fail::found(format!(
            "{} is not an unbrick data directory; fix: unbrick init --data-dir {}",
            a.data_dir.display(),
            a.data_dir.display()
        )));
    }
    let s = crate::config::resolved(&a, &d)?;
    let checks = run(&Scope {
        d: &d,
        s: &s,
        network: true,
        now: crate::now_unix(),
        serving: None,
    });
    for c in &checks {
        println!("{}", c.line());
    }
    let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
    let warned = checks.iter().filter(|c| c.level == Level::Warn).count();
    if failed > 0 {
        return Err(crate::Fail::found(format!(
            "{failed} of {} checks failed, {warned} warned",
            checks.len()
        )));
    }
    println!("{} checks: {warned} warnings, no failure", checks.len());
    Ok(())
}

/// The checks `serve` logs at start (no probe, no ports: it binds them itself next), as the
/// console shows them.
pub(crate) fn at_serve_start(d: &DataDir, s: &Settings, hosts: u64) -> web_console::Health {
    health(d, s, hosts, true)
}

/// The checks a running server makes, as the console and `/metrics` show them; each problem is
/// logged as a warning, and the checks that pass too when `log_ok`.
pub(crate) fn health(d: &DataDir, s: &Settings, hosts: u64, log_ok: bool) -> web_console::Health {
    let mut h = web_console::Health::default();
    for c in run(&Scope {
        d,
        s,
        network: false,
        now: crate::now_unix(),
        serving: Some(hosts),
    }) {
        match c.level {
            Level::Ok if log_ok => tracing::info!("doctor: {}", c.line()),
            Level::Ok => {}
            _ => tracing::warn!("doctor: {}", c.line()),
        }
        match c.level {
            Level::Ok => {}
            Level::Warn => h.warned += 1,
            Level::Fail => h.failed += 1,
        }
        if c.level != Level::Ok {
            h.problems.push(c.line());
        }
        if c.name == "image" {
            h.image_ready = Some(c.level == Level::Ok);
        }
        if let Some(t) = c.expires {
            h.expiries.push((c.name.to_string(), t));
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pe_without_a_signature_and_a_non_pe_are_named() {
        assert_eq!(signature_issuers(b"hello").unwrap_err(), "not a PE file");
        // A minimal PE32+ header with an empty security directory.
        let mut pe = vec![0u8; 0x200];
        pe[0..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x80 + 24..0x80 + 26].copy_from_slice(&0x20bu16.to_le_bytes());
        assert!(signature_issuers(&pe).unwrap_err().contains("not signed"));
        // A security directory pointing past the end.
        let dirs = 0x80 + 24 + 112 + 32;
        pe[dirs..dirs + 4].copy_from_slice(&0x1000u32.to_le_bytes());
        pe[dirs + 4..dirs + 8].copy_from_slice(&0x10u32.to_le_bytes());
        assert!(signature_issuers(&pe)
            .unwrap_err()
            .contains("outside the file"));
    }

    #[test]
    fn debian_shim_names_the_microsoft_uefi_ca() {
        // Debian's shim-signed, where the machine has it (the test command installs it).
        let Ok(data) = std::fs::read("/usr/lib/shim/shimx64.efi.signed") else {
            panic!("shim-signed is not installed (scripts/install-deps.sh installs it)");
        };
        let issuers = signature_issuers(&data).unwrap();
        assert!(
            issuers
                .iter()
                .any(|i| i.contains("Microsoft Corporation UEFI CA 2011")
                    || i.contains("Microsoft UEFI CA 2023")),
            "{issuers:?}"
        );
    }

    #[test]
    fn lines_carry_the_fix() {
        let c = Check::warn("rules", "expires in 3 days".into(), "renew".into());
        assert_eq!(c.line(), "WARN rules: expires in 3 days; fix: renew");
        assert_eq!(Check::ok("tls", "fine".into()).line(), "ok   tls: fine");
    }
}
