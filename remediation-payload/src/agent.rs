//! The agent's Linux runtime: PID 1 of the recovery initramfs. Mounts the pseudo file systems,
//! loads modules, brings up the network with its own DHCP client, says hello with the per-boot
//! token, fetches and verifies the signed rules, remediates every NTFS volume, reports, and
//! reboots (or powers off with `unbrick.poweroff`). Whatever fails, it reports and reboots: PID 1
//! never exits into a kernel panic.
use crate::cmdline::{Cmdline, DirtyPolicy};
use crate::remediate;
use fleet::agent::{FileRecord, Hello, HelloReply, Report, RunResult, Step, VolumeReport};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use unbrick_http as http;

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn say(msg: &str) {
    // The console is the admin's only window into a machine whose report did not arrive.
    let t = START.get_or_init(Instant::now).elapsed();
    println!(
        "unbrick-agent [{:>3}.{:03}s]: {msg}",
        t.as_secs(),
        t.subsec_millis()
    );
}

struct Ctx {
    cmd: Cmdline,
    mac: String,
    start: Instant,
    /// `https://ip:port` of the agent API and the certificate fingerprint pinned for it.
    api: String,
    pin: String,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cmd.server)
    }

    fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    fn opts(&self) -> http::Options<'_> {
        http::Options {
            pin: Some(&self.pin),
            ..Default::default()
        }
    }

    fn step(&self, step: &str, message: &str) {
        say(&format!("{step}: {message}"));
        let body = serde_json::to_vec(&Step {
            token: self.cmd.token.clone(),
            mac: self.mac.clone(),
            step: step.into(),
            message: message.into(),
        })
        .unwrap_or_default();
        // Steps are best effort: the final report carries everything that matters.
        let _ = http::request_with(
            "POST",
            &self.api_url("/agent/v1/step"),
            Some(&body),
            Duration::from_secs(5),
            &self.opts(),
        );
    }
}

/// Entry point of the `unbrick-agent` binary.
pub fn main() -> ! {
    let start = *START.get_or_init(Instant::now);
    setup_console();
    say(&format!("starting (version {})", crate::AGENT_VERSION));
    let mut poweroff = false;
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(start, &mut poweroff)));
    match outcome {
        Ok(Ok(())) => say("done"),
        Ok(Err(e)) => say(&format!("FAILED: {e}")),
        Err(_) => say("FAILED: internal error (panic); the details are above"),
    }
    finish(poweroff)
}

fn setup_console() {
    let _ = std::fs::create_dir_all("/dev");
    let _ = mount(
        Some("devtmpfs"),
        "/dev",
        Some("devtmpfs"),
        MsFlags::MS_NOSUID,
        None::<&str>,
    );
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            let _ = nix::unistd::dup2(f.as_raw_fd(), fd);
        }
    }
}

fn finish(poweroff: bool) -> ! {
    http::close_idle();
    nix::unistd::sync();
    let mode = if poweroff {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    } else {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    };
    say(if poweroff {
        "powering off"
    } else {
        "rebooting in 5 seconds"
    });
    if !poweroff {
        std::thread::sleep(Duration::from_secs(5));
    }
    let e = nix::sys::reboot::reboot(mode);
    say(&format!(
        "could not reboot ({e:?}); switch this machine off and on"
    ));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn mount_pseudo() {
    for (src, dir, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ] {
        let _ = std::fs::create_dir_all(dir);
        if let Err(e) = mount(
            Some(src),
            dir,
            Some(fs),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        ) {
            say(&format!("mount {dir}: {e}"));
        }
    }
    let _ = mount(
        Some("securityfs"),
        "/sys/kernel/security",
        Some("securityfs"),
        MsFlags::empty(),
        None::<&str>,
    );
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Every device's modalias under /sys/bus (what udev would match drivers against).
fn modaliases() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = std::fs::read_dir("/sys/bus") else {
        return out;
    };
    for bus in buses.flatten() {
        let Ok(devs) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for d in devs.flatten() {
            if let Ok(m) = std::fs::read_to_string(d.path().join("modalias")) {
                out.push(m.trim().to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Loads the drivers for the devices present, in rounds: a newly loaded bus driver (AHCI, xHCI)
/// makes new devices appear, whose drivers the next round loads.
fn load_modules(cfg: &crate::AgentConfig, notes: &mut Vec<String>) {
    let base = PathBuf::from("/lib/modules").join(&cfg.kernel_version);
    let order: Vec<String> = cfg.modules.iter().map(|(n, _)| n.clone()).collect();
    let paths: std::collections::BTreeMap<&str, &str> = cfg
        .modules
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_str()))
        .collect();
    let mut done = std::collections::BTreeSet::new();
    let mut loaded = Vec::new();
    for round in 0..3 {
        let want =
            crate::modules::select(&modaliases(), &cfg.aliases, &cfg.always, &cfg.deps, &order);
        let todo: Vec<&String> = want.iter().filter(|m| !done.contains(*m)).collect();
        if todo.is_empty() {
            break;
        }
        for m in todo {
            done.insert(m.clone());
            let Some(rel) = paths.get(m.as_str()) else {
                continue;
            };
            let Ok(f) = std::fs::File::open(base.join(rel)) else {
                notes.push(format!("{m}: missing from the image"));
                continue;
            };
            // MODULE_INIT_COMPRESSED_FILE (4): the kernel decompresses .ko.xz itself, and the
            // module's signature stays valid under Secure Boot lockdown.
            let flags = if rel.ends_with(".xz") || rel.ends_with(".zst") || rel.ends_with(".gz") {
                nix::kmod::ModuleInitFlags::from_bits_retain(4)
            } else {
                nix::kmod::ModuleInitFlags::empty()
            };
            match nix::kmod::finit_module(&f, c"", flags) {
                Ok(()) => loaded.push(m.clone()),
                Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => notes.push(format!("{m}: {e}")),
            }
        }
        if round < 2 {
            // Let buses that just got a driver enumerate their devices: USB needs longer.
            let usb = loaded
                .iter()
                .any(|m| m.starts_with("xhci") || m.starts_with("ehci") || m == "usbcore");
            std::thread::sleep(Duration::from_millis(if usb { 1500 } else { 100 }));
        }
    }
    notes.insert(
        0,
        format!(
            "{} of {} modules in the image loaded for this hardware: {}",
            loaded.len(),
            cfg.modules.len(),
            loaded.join(" ")
        ),
    );
}

fn find_nic(mac: Option<&str>, wait: Duration) -> Option<(String, String)> {
    let t = Instant::now();
    loop {
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name == "lo" {
                    continue;
                }
                let addr = read_trim(&format!("/sys/class/net/{name}/address")).unwrap_or_default();
                found.push((name, addr));
            }
        }
        found.sort();
        if let Some(m) = mac {
            if let Some(f) = found.iter().find(|(_, a)| a == m) {
                return Some(f.clone());
            }
        } else if let Some(f) = found.into_iter().next() {
            return Some(f);
        }
        if t.elapsed() > wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Lease {
    ip: Ipv4Addr,
    mask: Ipv4Addr,
    router: Option<Ipv4Addr>,
}

/// A small DHCP client (dhcproto): DISCOVER, OFFER, REQUEST, ACK, broadcast replies requested so
/// nothing needs an address before it has one. Identifies itself with the agent's vendor class.
fn dhcp(ifname: &str, mac: [u8; 6]) -> Result<Lease, String> {
    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| e.to_string())?;
    s.set_reuse_address(true).ok();
    s.set_broadcast(true).map_err(|e| e.to_string())?;
    s.bind_device(Some(ifname.as_bytes()))
        .map_err(|e| format!("bind to {ifname}: {e}"))?;
    s.bind(&std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
        .map_err(|e| format!("bind :68: {e}"))?;
    let s: std::net::UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let vendor = format!("{}/{}", "unbrick-agent", crate::AGENT_VERSION).into_bytes();
    let build = |t: MessageType, xid: u32, extra: Vec<DhcpOption>| -> Vec<u8> {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::MessageType(t));
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(vendor.clone()));
        m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
        ]));
        for o in extra {
            m.opts_mut().insert(o);
        }
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf))
            .expect("DHCP request encodes");
        buf
    };
    let dest = std::net::SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    let mut buf = [0u8; 1500];
    for attempt in 0..20u32 {
        let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
            ^ attempt.wrapping_mul(0x9e37_79b9)
            ^ std::process::id();
        s.send_to(&build(MessageType::Discover, xid, vec![]), dest)
            .map_err(|e| format!("send DISCOVER: {e}"))?;
        let wait_for = |want: MessageType, deadline: Instant, buf: &mut [u8]| -> Option<Message> {
            while Instant::now() < deadline {
                let Ok((n, _)) = s.recv_from(buf) else {
                    continue;
                };
                let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                    continue;
                };
                if m.xid() == xid
                    && m.chaddr() == mac
                    && (m.opts().msg_type() == Some(want)
                        || m.opts().msg_type() == Some(MessageType::Nak))
                {
                    return Some(m);
                }
            }
            None
        };
        let wait = Duration::from_millis(400 + 400 * u64::from(attempt.min(8)));
        let Some(offer) = wait_for(MessageType::Offer, Instant::now() + wait, &mut buf) else {
            continue;
        };
        if offer.yiaddr().is_unspecified() {
            continue;
        }
        let Some(DhcpOption::ServerIdentifier(server)) =
            offer.opts().get(OptionCode::ServerIdentifier).cloned()
        else {
            continue;
        };
        say(&format!(
            "DHCP offer of {} from {server} (attempt {})",
            offer.yiaddr(),
            attempt + 1
        ));
        s.send_to(
            &build(
                MessageType::Request,
                xid,
                vec![
                    DhcpOption::RequestedIpAddress(offer.yiaddr()),
                    DhcpOption::ServerIdentifier(server),
                ],
            ),
            dest,
        )
        .map_err(|e| format!("send REQUEST: {e}"))?;
        let Some(ack) = wait_for(MessageType::Ack, Instant::now() + wait, &mut buf) else {
            continue;
        };
        if ack.opts().msg_type() != Some(MessageType::Ack) {
            continue;
        }
        let mask = match ack.opts().get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(m)) => *m,
            _ => Ipv4Addr::new(255, 255, 255, 0),
        };
        let router = match ack.opts().get(OptionCode::Router) {
            Some(DhcpOption::Router(r)) => r.first().copied(),
            _ => None,
        };
        return Ok(Lease {
            ip: ack.yiaddr(),
            mask,
            router,
        });
    }
    Err(format!("no DHCP lease on {ifname} after 20 attempts"))
}

fn post_json<T: serde::Serialize>(
    ctx: &Ctx,
    path: &str,
    body: &T,
    tries: u32,
) -> Result<Vec<u8>, String> {
    let data = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut delay = Duration::from_millis(500);
    let mut last = String::new();
    for _ in 0..tries {
        match http::request_with(
            "POST",
            &ctx.api_url(path),
            Some(&data),
            Duration::from_secs(10),
            &ctx.opts(),
        ) {
            Ok(r) if r.status == 200 => return Ok(r.body),
            // A refusal (bad token, wrong host) will not change by retrying.
            Ok(r) if (400..500).contains(&r.status) => {
                return Err(format!(
                    "server refused {path}: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body).trim()
                ))
            }
            Ok(r) => last = format!("server answered {path} with {}", r.status),
            Err(e) => last = e,
        }
        say(&format!("{last}; retrying in {} ms", delay.as_millis()));
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(15));
    }
    Err(last)
}

fn get(ctx: &Ctx, path: &str) -> Result<Vec<u8>, String> {
    let mut last = String::new();
    for i in 0..8u32 {
        match http::request("GET", &ctx.url(path), None, Duration::from_secs(10)) {
            Ok(r) if r.status == 200 => return Ok(r.body),
            Ok(r) => last = format!("GET {path}: {}", r.status),
            Err(e) => last = e,
        }
        let delay = Duration::from_millis(500 << i.min(5));
        say(&format!("{last}; retrying in {} ms", delay.as_millis()));
        std::thread::sleep(delay);
    }
    Err(last)
}

fn secure_boot_state() -> Option<bool> {
    let dir = Path::new("/sys/firmware/efi/efivars");
    let _ = mount(
        Some("efivarfs"),
        dir,
        Some("efivarfs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    );
    let v = std::fs::read(dir.join("SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c")).ok()?;
    // 4 bytes of attributes, then the value.
    v.get(4).map(|b| *b == 1)
}

fn lockdown() -> Option<String> {
    let s = read_trim("/sys/kernel/security/lockdown")?;
    s.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(['[', ']']).to_string())
}

/// Block devices and partitions worth reading: (device name, is whole disk).
fn block_devices() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    let mut disks: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    disks.sort();
    for d in disks {
        if ["loop", "ram", "sr", "fd", "zram", "dm-", "md"]
            .iter()
            .any(|p| d.starts_with(p))
        {
            continue;
        }
        let mut parts: Vec<String> = std::fs::read_dir(format!("/sys/block/{d}"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("partition").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        parts.sort();
        if parts.is_empty() {
            out.push(d);
        } else {
            out.extend(parts);
        }
    }
    out
}

fn signature(dev: &str) -> Option<&'static str> {
    let mut b = [0u8; 512];
    std::fs::File::open(format!("/dev/{dev}"))
        .ok()?
        .read_exact(&mut b)
        .ok()?;
    match &b[3..11] {
        b"NTFS    " => Some("ntfs"),
        b"-FVE-FS-" => Some("bitlocker"),
        _ => None,
    }
}

/// What became of a BitLocker volume before remediation.
enum Bitlk {
    /// Unlocked: `mapper` is the plain view (remediate it like NTFS), closed afterwards.
    Open {
        name: String,
        mapper: String,
        detail: String,
        protectors: Vec<String>,
    },
    /// Left locked, with the reason (the host needs attention).
    Locked(VolumeReport),
}

fn locked(dev: &str, status: &str, detail: String, protectors: Vec<String>) -> Bitlk {
    Bitlk::Locked(VolumeReport {
        device: dev.into(),
        kind: "bitlocker".into(),
        status: status.into(),
        detail,
        protectors,
    })
}

/// A BitLocker volume: its key protectors from its own metadata (our parser of the FVE
/// header), the recovery password of a recovery-password protector from the server (the
/// release policy decides; an admin may paste one while the agent waits), then cryptsetup's
/// BITLK with the password on stdin. Partially encrypted, suspended (clear key), Vista and
/// recovery-password-less volumes are reported, never guessed at.
fn bitlocker_unlock(ctx: &Ctx, dev: &str) -> Bitlk {
    let mut f = match std::fs::File::open(format!("/dev/{dev}")) {
        Ok(f) => f,
        Err(e) => {
            return locked(
                dev,
                "bitlocker-unreadable",
                format!("BitLocker volume; cannot read it: {e}"),
                vec![],
            )
        }
    };
    let info = crate::bitlk::read(&mut |off, len| {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(off))?;
        let mut b = vec![0u8; len];
        let n = f.read(&mut b)?;
        b.truncate(n);
        Ok(b)
    });
    let i = match info {
        Ok(i) => i,
        Err(e) => {
            return locked(
                dev,
                "bitlocker-unsupported",
                format!("BitLocker volume: {e}"),
                vec![],
            )
        }
    };
    let protectors: Vec<String> = i
        .protectors
        .iter()
        .map(|p| format!("{} {}", p.guid, p.kind))
        .collect();
    let what = format!(
        "BitLocker volume {} ({}{})",
        i.volume_guid,
        i.method_name(),
        i.description
            .as_deref()
            .map(|d| format!(", \"{d}\""))
            .unwrap_or_default()
    );
    if i.partially_encrypted {
        return locked(dev, "bitlocker-partial", format!("{what} is only partially encrypted (conversion not finished); unbrick does not unlock it. Let Windows finish the conversion, or repair it by hand"), protectors);
    }
    if i.protectors
        .iter()
        .any(|p| p.kind == crate::bitlk::ProtectorKind::ClearKey)
    {
        return locked(dev, "bitlocker-suspended", format!("{what}: BitLocker protection is suspended (a clear key is stored on the disk); unbrick does not unlock suspended volumes. Repair it by hand or resume protection"), protectors);
    }
    if !cryptsetup_path().exists() {
        // Checked before asking: a key must not leave escrow for an image that cannot use it.
        return locked(dev, "bitlocker-locked", format!("{what}: this recovery image was built without BitLocker unlocking (image build --no-bitlocker); recovery key ID {}", i.recovery_ids().join(", ")), protectors);
    }
    let ids: Vec<String> = i.recovery_ids().iter().map(|s| s.to_string()).collect();
    if ids.is_empty() {
        let kinds: Vec<String> = i.protectors.iter().map(|p| p.kind.to_string()).collect();
        return locked(dev, "bitlocker-no-recovery-password", format!("{what} is protected only by {} and has no recovery-password protector, so no key can be escrowed for it; unlock it by hand", kinds.join(", ")), protectors);
    }
    ctx.step(
        "volume",
        &format!(
            "{dev}: {what}; asking the server for the recovery key of protector {}",
            ids.join(", ")
        ),
    );
    let (id, password) = match request_key(ctx, dev, &ids) {
        Ok(k) => k,
        Err((status, why)) => return locked(dev, status, format!("{what}: {why}"), protectors),
    };
    let name = format!("unbrick-{dev}");
    match cryptsetup_open(dev, &name, &password) {
        Ok(ms) => {
            let detail = format!(
                "{what} unlocked with the recovery key of protector {id} in {ms} ms (key derivation included)"
            );
            ctx.step("unlocked", &format!("{dev}: {detail}"));
            Bitlk::Open {
                mapper: format!("/dev/mapper/{name}"),
                name,
                detail,
                protectors,
            }
        }
        Err((status, why)) => locked(dev, status, format!("{what}: {why}"), protectors),
    }
}

/// Asks for the key until it comes, is refused, or the wait for an admin's paste runs out.
fn request_key(
    ctx: &Ctx,
    dev: &str,
    ids: &[String],
) -> Result<(String, String), (&'static str, String)> {
    let req = fleet::agent::KeyRequest {
        token: ctx.cmd.token.clone(),
        mac: ctx.mac.clone(),
        volume: dev.into(),
        protectors: ids.to_vec(),
    };
    let data = serde_json::to_vec(&req).expect("serializes");
    let t = Instant::now();
    let mut told = None::<Instant>;
    let mut errors = 0;
    loop {
        let r = http::request_with(
            "POST",
            &ctx.api_url("/agent/v1/bitlocker-key"),
            Some(&data),
            Duration::from_secs(15),
            &ctx.opts(),
        );
        let waiting = match r {
            Ok(r) => {
                errors = 0;
                let reply: Option<fleet::agent::KeyReply> = serde_json::from_slice(&r.body).ok();
                match (r.status, reply) {
                    (200, Some(k)) => match (k.protector_id, k.recovery_password) {
                        (Some(id), Some(pw)) => return Ok((id, pw)),
                        _ => {
                            return Err((
                                "bitlocker-locked",
                                "the server's key answer was incomplete".into(),
                            ))
                        }
                    },
                    (202, Some(k)) => k.waiting.unwrap_or_default(),
                    (_, Some(k)) if k.refused.is_some() => {
                        return Err((
                            "bitlocker-key-refused",
                            format!(
                                "the server refused the key: {}",
                                k.refused.unwrap_or_default()
                            ),
                        ))
                    }
                    (s, _) if (400..500).contains(&s) => {
                        return Err((
                            "bitlocker-key-refused",
                            format!(
                                "the server refused the key request: {s} {}",
                                String::from_utf8_lossy(&r.body).trim()
                            ),
                        ))
                    }
                    (s, _) => format!("the server answered {s}"),
                }
            }
            Err(e) => {
                errors += 1;
                if errors > 20 {
                    return Err(("bitlocker-locked", format!("the key request failed: {e}")));
                }
                e
            }
        };
        if t.elapsed() > Duration::from_secs(ctx.cmd.key_wait_secs) {
            return Err((
                "bitlocker-no-key",
                format!(
                    "no recovery key for protector {} after waiting {} s: {waiting}",
                    ids.join(", "),
                    ctx.cmd.key_wait_secs
                ),
            ));
        }
        if told.is_none_or(|w| w.elapsed() > Duration::from_secs(300)) {
            ctx.step(
                "bitlocker-wait",
                &format!("{dev}: waiting for a recovery key ({waiting}); polling every 5 s"),
            );
            say(&format!(
                "{dev}: {waiting}; waiting for an admin to paste the key in the console"
            ));
            told = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// `cryptsetup open --type bitlk` with the recovery password on stdin (never in argv or the
/// environment). Returns the milliseconds it took (the key derivation is most of it).
fn cryptsetup_open(dev: &str, name: &str, password: &str) -> Result<u128, (&'static str, String)> {
    use std::io::Write;
    use std::process::Stdio;
    let _ = std::fs::create_dir_all("/run/cryptsetup");
    let t = Instant::now();
    let child = cryptsetup()
        // --debug: cryptsetup 2.6 says why BITLK failed only there ("No more VMKs to try": the
        // key opened no protector); exit 1 also covers other errors. Keys are not in it.
        .args([
            "open",
            "--type",
            "bitlk",
            "--key-file=-",
            "--disable-keyring",
            "--debug",
        ])
        .arg(format!("/dev/{dev}"))
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Err(("bitlocker-locked", format!("cryptsetup: {e}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(password.as_bytes());
    }
    let o = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return Err(("bitlocker-locked", format!("cryptsetup: {e}"))),
    };
    let ms = t.elapsed().as_millis();
    if o.status.success() {
        return Ok(ms);
    }
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // What a person would read: cryptsetup's own messages, not its debug lines.
    let err = all
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // Exit code 2 (no key slot opened, cryptsetup(8)), or BITLK's "no VMK opened" (exit 1).
    if o.status.code() == Some(2)
        || all.contains("No more VMKs to try")
        || all.contains("No key available")
    {
        Err(("bitlocker-key-rejected", format!("the recovery key released for this volume does not unlock it (wrong key escrowed?): cryptsetup: {err}")))
    } else {
        Err((
            "bitlocker-locked",
            format!("cryptsetup could not unlock it ({}): {err}", o.status),
        ))
    }
}

/// cryptsetup as the image ships it.
fn cryptsetup_path() -> PathBuf {
    Path::new("/").join(crate::IMAGE_CRYPTSETUP)
}

/// A cryptsetup command for this image: no udev here (libdevmapper makes the /dev/mapper node
/// itself), C locale.
fn cryptsetup() -> std::process::Command {
    let mut c = std::process::Command::new(cryptsetup_path());
    c.env("DM_DISABLE_UDEV", "1").env("LC_ALL", "C");
    c
}

/// Closes an unlocked mapping (retried: a just-unmounted file system may still hold it).
fn cryptsetup_close(name: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..10 {
        match cryptsetup().args(["close", name]).output() {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!("cryptsetup close {name}: {last}"))
}

fn find_ci(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(name))
        .map(|e| e.path())
}

fn is_hibernated(root: &Path) -> bool {
    let Some(h) = find_ci(root, "hiberfil.sys") else {
        return false;
    };
    let mut b = [0u8; 4];
    std::fs::File::open(h)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
        && b.eq_ignore_ascii_case(b"hibr")
}

/// What the volumes of one run came to.
#[derive(Default)]
struct Tally {
    volumes: Vec<VolumeReport>,
    files: Vec<FileRecord>,
    failures: Vec<String>,
    attention: Vec<String>,
    windows: usize,
}

impl Tally {
    fn add(&mut self, dev: &str, v: VolumeRun) {
        if v.windows {
            self.windows += 1;
        }
        if let Some(f) = v.failed {
            self.failures.push(f);
        }
        if ["hibernated", "dirty-skipped", "mount-failed"].contains(&v.report.status.as_str()) {
            self.attention.push(format!("{dev}: {}", v.report.detail));
        }
        self.files.extend(v.files);
        self.volumes.push(v.report);
    }
}

struct VolumeRun {
    report: VolumeReport,
    files: Vec<FileRecord>,
    failed: Option<String>,
    windows: bool,
}

/// Mounts `src` (the volume `dev` itself, or its unlocked BitLocker mapping) and remediates
/// (or restores) it.
fn do_volume(
    ctx: &Ctx,
    dev: &str,
    src: &str,
    rules: &signing::RuleSet,
    run_id: &str,
    now: u64,
) -> VolumeRun {
    let dir = PathBuf::from(format!("/mnt/{dev}"));
    let _ = std::fs::create_dir_all(&dir);
    let mut vr = VolumeRun {
        report: VolumeReport {
            device: dev.into(),
            kind: "ntfs".into(),
            status: String::new(),
            detail: String::new(),
            protectors: vec![],
        },
        files: Vec::new(),
        failed: None,
        windows: false,
    };
    // A read-only look first: a hibernated Windows must never be written to.
    if mount(
        Some(src),
        &dir,
        Some("ntfs3"),
        MsFlags::MS_RDONLY,
        Some("iocharset=utf8"),
    )
    .is_ok()
    {
        let hib = is_hibernated(&dir);
        vr.windows = find_ci(&dir, "Windows").is_some();
        let _ = umount2(&dir, MntFlags::empty());
        if hib {
            vr.report.status = "hibernated".into();
            vr.report.detail = "Windows is hibernated on this volume (hiberfil.sys); it was not touched. Resume or shut Windows down fully, then retry".into();
            ctx.step("volume", &format!("{dev}: {}", vr.report.detail));
            return vr;
        }
    }
    let mut forced = false;
    if let Err(e) = mount(
        Some(src),
        &dir,
        Some("ntfs3"),
        MsFlags::empty(),
        Some("iocharset=utf8"),
    ) {
        match ctx.cmd.dirty {
            DirtyPolicy::Force => {
                if let Err(e2) = mount(
                    Some(src),
                    &dir,
                    Some("ntfs3"),
                    MsFlags::empty(),
                    Some("iocharset=utf8,force"),
                ) {
                    vr.report.status = "mount-failed".into();
                    vr.report.detail = format!("ntfs3 refused the volume ({e}; with force: {e2})");
                    ctx.step("volume", &format!("{dev}: {}", vr.report.detail));
                    return vr;
                }
                forced = true;
            }
            DirtyPolicy::Skip => {
                vr.report.status = "dirty-skipped".into();
                vr.report.detail =
                    format!("volume is marked dirty ({e}); not mounted because unbrick.dirty=skip");
                ctx.step("volume", &format!("{dev}: {}", vr.report.detail));
                return vr;
            }
        }
    }
    ctx.step(
        "volume",
        &format!(
            "{dev}: NTFS mounted read-write{}{}",
            if forced {
                " with force (the volume was marked dirty; it stays marked for chkdsk)"
            } else {
                ""
            },
            if vr.windows { ", Windows found" } else { "" }
        ),
    );
    let result = if ctx.cmd.restore {
        remediate::restore(&dir, dev, run_id, now)
    } else {
        remediate::remediate(&dir, dev, rules, run_id, now)
    };
    let (outcome, err) = match result {
        Ok(o) => (o, None),
        Err((o, e)) => (o, Some(e)),
    };
    for f in &outcome.files {
        ctx.step(
            "file",
            &format!("{dev}: {} {} (sha256 {})", f.action, f.path, f.sha256),
        );
    }
    nix::unistd::sync();
    let mut unmounted = false;
    for _ in 0..10 {
        if umount2(&dir, MntFlags::empty()).is_ok() {
            unmounted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    if !unmounted {
        vr.failed
            .get_or_insert(format!("{dev}: could not unmount cleanly"));
    }
    vr.files = outcome.files;
    if let Some(e) = err {
        vr.failed = Some(format!("{dev}: {e}"));
        vr.report.status = "failed".into();
        vr.report.detail = e;
    } else {
        vr.report.status = if !vr.files.is_empty() && ctx.cmd.restore {
            "restored"
        } else if !vr.files.is_empty() {
            "remediated"
        } else if vr.windows {
            "clean"
        } else {
            "not-windows"
        }
        .into();
        vr.report.detail = format!(
            "{} file(s) matched the rules{}",
            vr.files.len(),
            if forced {
                "; dirty volume mounted with force"
            } else {
                ""
            }
        );
        if forced {
            vr.report.status = format!("{}-dirty-forced", vr.report.status);
        }
    }
    vr
}

fn run(start: Instant, poweroff: &mut bool) -> Result<(), String> {
    mount_pseudo();
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let cmd = Cmdline::parse(&cmdline)?;
    *poweroff = cmd.poweroff;
    let cfg: crate::AgentConfig = serde_json::from_slice(
        &std::fs::read(Path::new("/").join(crate::AGENT_CONFIG_PATH))
            .map_err(|e| format!("agent configuration: {e}"))?,
    )
    .map_err(|e| format!("agent configuration: {e}"))?;
    let trusted = signing::PublicKey::parse(cfg.signing_public_key.as_bytes())
        .map_err(|e| format!("embedded signing key: {e}"))?;
    let mut notes = Vec::new();
    say("loading modules");
    load_modules(&cfg, &mut notes);
    say(&notes.join("; "));
    let (nic, mac) = find_nic(cmd.mac.as_deref(), Duration::from_secs(15))
        .ok_or("no network interface appeared (is its driver in the image?)")?;
    let mac_bytes: fleet::Mac = mac.parse()?;
    crate::sys::link_up(&nic).map_err(|e| e.to_string())?;
    // A DISCOVER sent before the link has carrier is lost and costs a retry.
    let t = Instant::now();
    while read_trim(&format!("/sys/class/net/{nic}/carrier")).as_deref() != Some("1")
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    say(&format!("{nic} has carrier; asking for an address"));
    let lease = dhcp(&nic, mac_bytes.0)?;
    crate::sys::set_ipv4(&nic, lease.ip, lease.mask).map_err(|e| e.to_string())?;
    if let Some(r) = lease.router {
        let _ = crate::sys::default_route(r);
    }
    let pin = cfg.server_cert_sha256.clone().ok_or(
        "this image has no server certificate fingerprint; rebuild it with `unbrick image build`",
    )?;
    let api = cmd
        .api
        .clone()
        .ok_or("the kernel command line has no unbrick.api= (the HTTPS agent API)")?;
    let ctx = Ctx {
        cmd,
        mac: mac.clone(),
        start,
        api,
        pin,
    };
    say(&format!("{nic} ({mac}) has {}/{}", lease.ip, lease.mask));
    let hello = Hello {
        token: ctx.cmd.token.clone(),
        mac: mac.clone(),
        uuid: read_trim("/sys/class/dmi/id/product_uuid"),
        serial: read_trim("/sys/class/dmi/id/product_serial"),
        firmware: if Path::new("/sys/firmware/efi").exists() {
            "uefi"
        } else {
            "bios"
        }
        .into(),
        secure_boot: secure_boot_state(),
        lockdown: lockdown(),
        agent_version: crate::AGENT_VERSION.into(),
        kernel: cfg.kernel_version.clone(),
    };
    let reply: HelloReply =
        serde_json::from_slice(&post_json(&ctx, "/agent/v1/hello", &hello, 12)?)
            .map_err(|e| format!("hello reply: {e}"))?;
    ctx.step("modules", &notes.join("; "));
    let local_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A machine whose clock is before the outage cannot judge expiry: use the server's.
    let now = if local_now < 1_721_347_200 {
        reply.server_time
    } else {
        local_now
    };

    let doc = get(&ctx, "/agent/rules.json")?;
    let sig = get(&ctx, "/agent/rules.json.sig")?;
    let report_base =
        |result, reason: Option<String>, volumes, files, rules: Option<&signing::RuleSet>| Report {
            token: ctx.cmd.token.clone(),
            mac: mac.clone(),
            report_id: format!("{}-{}", &ctx.cmd.token[..ctx.cmd.token.len().min(8)], now),
            result,
            reason,
            volumes,
            files,
            rules_id: rules.map(|r| r.id.clone()),
            rules_version: rules.map(|r| r.version),
            agent_ms: ctx.start.elapsed().as_millis() as u64,
        };
    let rules = match signing::RuleSet::verify_signed(&trusted, &doc, &sig, now) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("refusing the remediation rules: {e}");
            ctx.step("rules", &why);
            post_json(
                &ctx,
                "/agent/v1/report",
                &report_base(RunResult::Failed, Some(why.clone()), vec![], vec![], None),
                20,
            )?;
            return Err(why);
        }
    };
    ctx.step(
        "rules",
        &format!(
            "{} v{} verified, expires {}",
            rules.id, rules.version, rules.expires
        ),
    );
    ctx.step("scanning", "looking for Windows volumes");
    // Storage drivers probe asynchronously: give disks a moment to appear.
    let t = Instant::now();
    let mut devs = block_devices();
    while devs.is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(250));
        devs = block_devices();
    }
    std::thread::sleep(Duration::from_millis(300));
    devs = block_devices();
    let run_id = format!(
        "{}-{}",
        signing::time::format_utc(now).replace([':', '-'], ""),
        &ctx.cmd.token[..ctx.cmd.token.len().min(8)]
    );
    let mut t = Tally::default();
    for dev in &devs {
        match signature(dev) {
            Some("ntfs") => {
                let v = do_volume(&ctx, dev, &format!("/dev/{dev}"), &rules, &run_id, now);
                t.add(dev, v);
            }
            Some("bitlocker") => match bitlocker_unlock(&ctx, dev) {
                Bitlk::Locked(v) => {
                    ctx.step("volume", &format!("{dev}: {}", v.detail));
                    t.attention.push(format!("{dev}: {}", v.detail));
                    t.volumes.push(v);
                }
                Bitlk::Open {
                    name,
                    mapper,
                    detail,
                    protectors,
                } => {
                    let mut v = do_volume(&ctx, dev, &mapper, &rules, &run_id, now);
                    if let Err(e) = cryptsetup_close(&name) {
                        ctx.step("volume", &format!("{dev}: {e}"));
                        v.failed.get_or_insert(format!("{dev}: {e}"));
                    }
                    v.report.kind = "bitlocker".into();
                    v.report.detail = format!("{detail}; {}", v.report.detail);
                    v.report.protectors = protectors;
                    t.add(dev, v);
                }
            },
            _ => {}
        }
    }
    let Tally {
        volumes,
        files,
        failures,
        attention,
        windows,
    } = t;
    let (result, reason) = if !failures.is_empty() {
        (RunResult::Failed, Some(failures.join("; ")))
    } else if !attention.is_empty() {
        (RunResult::NeedsAttention, Some(attention.join("; ")))
    } else if ctx.cmd.restore {
        (
            RunResult::Restored,
            Some(format!(
                "rollback: {} quarantined file(s) put back",
                files.len()
            )),
        )
    } else if !files.is_empty() {
        (RunResult::Remediated, None)
    } else if windows > 0 {
        (RunResult::Clean, None)
    } else {
        (
            RunResult::NothingFound,
            Some(format!(
                "no Windows volume on this machine ({} block device(s) looked at)",
                devs.len()
            )),
        )
    };
    say(&format!(
        "result: {result:?}{}",
        reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    ));
    post_json(
        &ctx,
        "/agent/v1/report",
        &report_base(result, reason, volumes, files, Some(&rules)),
        20,
    )?;
    say(&format!(
        "report acknowledged after {} ms",
        start.elapsed().as_millis()
    ));
    Ok(())
}
