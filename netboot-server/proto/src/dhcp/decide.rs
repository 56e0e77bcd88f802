//! The DHCP decision: `(request, receive metadata, host view, policy, pool, now) -> reply`.
//! Pure: no sockets, no clock, no store. The driver persists lease changes before sending.
use super::classify::{classify, machine_uuid};
use super::pool::{LeasePool, Nak};
use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};
use fleet::{Arch, BootDecision, BootPolicy, BootQuery, ClientKind, HostRecord, Lease, Mac};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The PXE boot server port (PXE 2.1 spec): the second half of proxyDHCP.
pub const PXE_PORT: u16 = 4011;

/// Which DHCP the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer only PXE clients, without addresses, beside the office DHCP server.
    Proxy,
    /// Own the segment: hand out addresses from a pool, and boot information to PXE clients.
    Full,
}

/// The DHCP settings the decision needs.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Proxy or full.
    pub mode: Mode,
    /// Our address (next-server, server identifier).
    pub server_ip: Ipv4Addr,
    /// The subnet mask handed out in full mode.
    pub subnet_mask: Ipv4Addr,
    /// The router handed out in full mode.
    pub router: Option<Ipv4Addr>,
    /// DNS servers handed out in full mode.
    pub dns: Vec<Ipv4Addr>,
    /// Lease time in full mode.
    pub lease_secs: u32,
    /// `http://ip:port` of our HTTP server.
    pub http_base: String,
    /// Hand UEFI firmware `snponly.efi` instead of shim (sites known to have Secure Boot off).
    pub secure_boot_off: bool,
}

/// A request that passed the basic checks.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The sanitised message.
    pub msg: Message,
    /// Its DHCP message type.
    pub msg_type: MessageType,
    /// The client's MAC.
    pub mac: Mac,
    /// What kind of client it is.
    pub kind: ClientKind,
    /// SMBIOS UUID from option 97.
    pub uuid: Option<String>,
}

/// Why a datagram was dropped without an answer (the DHCP side's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    /// The datagram does not decode (the reason says where).
    #[error("malformed DHCP packet: {0}")]
    Malformed(String),
    /// A BOOTREPLY or other non-request.
    #[error("not a BOOTREQUEST")]
    NotARequest,
    /// Not Ethernet (htype 1, hlen 6).
    #[error("hardware type is not Ethernet")]
    NotEthernet,
    /// No option 53.
    #[error("no DHCP message type (plain BOOTP is not served)")]
    NoMessageType,
}

impl Drop {
    /// The reason in words (its `Display`).
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// The options a request may keep: everything the decision reads, nothing else.
const KEPT_OPTIONS: &[u8] = &[12, 50, 53, 54, 55, 57, 60, 61, 77, 93, 94, 97, 175];

/// Kept options with one valid length whose dhcproto decoder assumes it: option 94, the client
/// network interface identifier, is 3 bytes (RFC 4578 2.2); dhcproto `debug_assert!`s it. Each
/// may appear once: dhcproto joins repeated options into one (RFC 3396), so two 3-byte copies
/// would reach its decoder as 6 bytes (found by the `dhcp` fuzz target).
const FIXED_LENGTHS: &[(u8, usize)] = &[(94, 3)];

/// Rebuilds a request with only [`KEPT_OPTIONS`], after checking the fixed header and the
/// option TLVs by hand. dhcproto 0.13 panics on some hostile input (`Message::chaddr()` when hlen
/// exceeds 16; `debug_assert!`s and an `unwrap()` in rarely used option decoders such as 121), so
/// only these well-understood options ever reach it; the kept options whose decoders assume a
/// length are checked for it here (see [`FIXED_LENGTHS`]).
fn sanitize(datagram: &[u8]) -> Result<Vec<u8>, Drop> {
    const COOKIE: [u8; 4] = [99, 130, 83, 99];
    if datagram.len() < 240 {
        return Err(Drop::Malformed(format!(
            "{} bytes is shorter than a DHCP header",
            datagram.len()
        )));
    }
    if datagram[1] != 1 || datagram[2] != 6 {
        return Err(Drop::NotEthernet);
    }
    if datagram[236..240] != COOKIE {
        return Err(Drop::NoMessageType);
    }
    let mut out = datagram[..240].to_vec();
    let mut fixed_seen: Vec<u8> = Vec::new();
    let mut i = 240;
    while i < datagram.len() {
        let code = datagram[i];
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = *datagram
                    .get(i + 1)
                    .ok_or_else(|| Drop::Malformed(format!("option {code} has no length")))?
                    as usize;
                let end = i + 2 + len;
                if end > datagram.len() {
                    return Err(Drop::Malformed(format!(
                        "option {code} runs past the end of the packet"
                    )));
                }
                if let Some((_, want)) = FIXED_LENGTHS.iter().find(|(c, _)| *c == code) {
                    if len != *want {
                        return Err(Drop::Malformed(format!(
                            "option {code} is {len} bytes long; it must be {want}"
                        )));
                    }
                    if fixed_seen.contains(&code) {
                        return Err(Drop::Malformed(format!(
                            "option {code} appears more than once"
                        )));
                    }
                    fixed_seen.push(code);
                }
                if KEPT_OPTIONS.contains(&code) {
                    out.extend_from_slice(&datagram[i..end]);
                }
                i = end;
            }
        }
    }
    out.push(255);
    Ok(out)
}

/// Sanitises and decodes a datagram (hostile input never reaches dhcproto unchecked).
pub fn parse(datagram: &[u8]) -> Result<Inbound, Drop> {
    let clean = sanitize(datagram)?;
    let msg =
        Message::decode(&mut Decoder::new(&clean)).map_err(|e| Drop::Malformed(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(Drop::NotARequest);
    }
    if msg.htype() != HType::Eth || msg.chaddr().len() != 6 {
        return Err(Drop::NotEthernet);
    }
    let msg_type = msg.opts().msg_type().ok_or(Drop::NoMessageType)?;
    let mac = Mac(msg.chaddr().try_into().map_err(|_| Drop::NotEthernet)?);
    Ok(Inbound {
        kind: classify(&msg),
        uuid: machine_uuid(&msg),
        msg,
        msg_type,
        mac,
    })
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// 255.255.255.255:68 on the receiving interface.
    Broadcast,
    /// A client that has an address (ciaddr), or the source of a :4011 request.
    Unicast(SocketAddrV4),
    /// Back to the relay agent (giaddr:67), RFC 2131 4.1.
    Relay(SocketAddrV4),
}

/// A lease change the driver must make durable before sending the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    /// Store this lease (before the ACK goes out).
    Put(Lease),
    /// Forget the lease of this address.
    Remove(Ipv4Addr),
}

/// A reply to send.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The message.
    pub msg: Message,
    /// Where it goes.
    pub dest: Dest,
}

/// Everything the driver needs to act on and record.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The reply, if any.
    pub reply: Option<Reply>,
    /// The boot decision, when the client network-boots.
    pub decision: Option<BootDecision>,
    /// The boot file named in the reply.
    pub boot_file: Option<String>,
    /// Lease changes to make durable before sending.
    pub lease_changes: Vec<LeaseChange>,
    /// One line for the host's history.
    pub note: String,
}

impl Inbound {
    /// What the host's timeline records of a packet: the same for a client and the store's
    /// writer, which uses it to drop retransmissions (fleet::lifecycle never sees those).
    /// `l2`: what the frame's Ethernet source says (the driver's layer-2 witness).
    pub fn seen(
        &self,
        ip: Option<Ipv4Addr>,
        l2: fleet::lifecycle::Layer2,
    ) -> fleet::lifecycle::DhcpSeen<'_> {
        fleet::lifecycle::DhcpSeen {
            kind: self.kind,
            discover: self.msg_type == MessageType::Discover,
            uuid: self.uuid.as_deref(),
            ip,
            l2,
        }
    }

    /// The message type in lower case (`discover`, `request`), for event kinds.
    pub fn type_name(&self) -> String {
        format!("{:?}", self.msg_type).to_lowercase()
    }

    /// One line for the host's history: the packet, the decision and the boot file.
    pub fn describe(&self, port: u16, out: &Outcome) -> String {
        format!(
            "{:?} on :{port} from {} ({}){}{}{}",
            self.msg_type,
            self.mac,
            self.kind.label(),
            out.decision
                .as_ref()
                .map(|d| format!(", decision {}", d.name()))
                .unwrap_or_default(),
            if out.note.is_empty() {
                String::new()
            } else {
                format!(": {}", out.note)
            },
            out.boot_file
                .as_ref()
                .map(|f| format!(", boot file {f}"))
                .unwrap_or_default()
        )
    }
}

impl Outcome {
    fn silent(note: impl Into<String>) -> Self {
        Self {
            reply: None,
            decision: None,
            boot_file: None,
            lease_changes: Vec::new(),
            note: note.into(),
        }
    }
}

/// The boot file for a client kind, or `None` when we have nothing for it.
pub fn boot_file(kind: ClientKind, mac: Mac, cfg: &DhcpConfig) -> Option<String> {
    match kind {
        // iPXE fetches its per-host script over HTTP; the script carries the decision.
        ClientKind::Ipxe(Arch::Bios | Arch::UefiX64) => {
            Some(format!("{}/boot/{}.ipxe", cfg.http_base, mac))
        }
        ClientKind::Pxe(Arch::Bios) => Some("undionly.kpxe".into()),
        ClientKind::Pxe(Arch::UefiX64) if cfg.secure_boot_off => Some("snponly.efi".into()),
        // Secure Boot safe default: Microsoft-signed shim loads grubx64.efi from the same folder.
        ClientKind::Pxe(Arch::UefiX64) => Some("shimx64.efi".into()),
        ClientKind::HttpBoot(Arch::UefiHttpX64 | Arch::UefiX64) => {
            Some(format!("{}/image/ipxe.efi", cfg.http_base))
        }
        _ => None,
    }
}

fn reply_base(req: &Message, t: MessageType, cfg: &DhcpConfig) -> Message {
    let mut m = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        req.chaddr(),
    );
    m.set_opcode(Opcode::BootReply);
    m.set_htype(req.htype());
    m.set_flags(req.flags());
    m.opts_mut().insert(DhcpOption::MessageType(t));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(cfg.server_ip));
    m
}

fn add_boot_info(m: &mut Message, req: &Inbound, file: &str, cfg: &DhcpConfig) {
    m.set_siaddr(cfg.server_ip);
    if file.len() < 128 {
        m.set_fname_str(file);
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::TFTPServerName(
        cfg.server_ip.to_string().into_bytes(),
    ));
    o.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    if matches!(req.kind, ClientKind::HttpBoot(_)) {
        // UEFI HTTP boot only accepts offers that say HTTPClient (UEFI spec 24.7.2).
        o.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else {
        o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        // PXE discovery control (sub-option 6) = 8: boot the file named here, no boot-server
        // discovery or menu (PXE 2.1 spec, table 2-1).
        o.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    if let Some(id) = req.msg.opts().get(OptionCode::ClientMachineIdentifier) {
        o.insert(id.clone());
    }
}

fn add_network_config(m: &mut Message, cfg: &DhcpConfig, with_lease: bool) {
    let o = m.opts_mut();
    o.insert(DhcpOption::SubnetMask(cfg.subnet_mask));
    if let Some(r) = cfg.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !cfg.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(cfg.dns.clone()));
    }
    if with_lease {
        o.insert(DhcpOption::AddressLeaseTime(cfg.lease_secs));
        o.insert(DhcpOption::Renewal(cfg.lease_secs / 2));
        o.insert(DhcpOption::Rebinding(cfg.lease_secs / 8 * 7));
    }
}

/// RFC 2131 4.1: relay first, then a client with an address, else broadcast.
fn destination(req: &Message, port: u16, src: SocketAddrV4) -> Dest {
    if port == PXE_PORT {
        return Dest::Unicast(src);
    }
    if !req.giaddr().is_unspecified() {
        return Dest::Relay(SocketAddrV4::new(req.giaddr(), 67));
    }
    if !req.ciaddr().is_unspecified() {
        return Dest::Unicast(SocketAddrV4::new(req.ciaddr(), 68));
    }
    Dest::Broadcast
}

fn requested_ip(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// Where a request arrived: our port (67 or 4011) and the sender.
#[derive(Debug, Clone, Copy)]
pub struct Via {
    /// The port the request came in on (67 or 4011).
    pub port: u16,
    /// Its source address.
    pub src: SocketAddrV4,
}

/// Decides the answer to one request.
pub fn decide(
    req: &Inbound,
    via: Via,
    host: Option<&HostRecord>,
    policy: &dyn BootPolicy,
    cfg: &DhcpConfig,
    pool: Option<&mut LeasePool>,
    now_ms: u64,
) -> Outcome {
    let Via { port, src } = via;
    let is_boot_client = matches!(
        req.kind,
        ClientKind::Pxe(_) | ClientKind::Ipxe(_) | ClientKind::HttpBoot(_)
    );
    let decision = is_boot_client.then(|| {
        policy.decide(
            &BootQuery {
                mac: req.mac,
                kind: req.kind,
                now_ms,
                issue: false,
            },
            host,
        )
    });
    // Firmware PXE told to boot locally gets no boot file: it falls through to the next boot
    // device. iPXE still gets its script, which says `exit`.
    let boot = match (&decision, req.kind) {
        (
            Some(BootDecision::Payload | BootDecision::Restore | BootDecision::WaitingRoom { .. }),
            k,
        ) => boot_file(k, req.mac, cfg),
        (Some(BootDecision::LocalBoot), k @ ClientKind::Ipxe(_)) => boot_file(k, req.mac, cfg),
        _ => None,
    };
    let mut out = if port == PXE_PORT || cfg.mode == Mode::Proxy {
        proxy(req, port, src, boot.as_deref(), cfg)
    } else {
        match pool {
            Some(p) => full(req, src, boot.as_deref(), cfg, p, now_ms),
            None => Outcome::silent("full mode without a pool"),
        }
    };
    if is_boot_client && boot.is_none() {
        let why = match &decision {
            Some(
                BootDecision::Payload | BootDecision::Restore | BootDecision::WaitingRoom { .. },
            ) => format!("no boot loader for {:?}", req.kind),
            Some(d) => format!("no boot answer ({})", d.name()),
            None => "no boot answer".to_string(),
        };
        out.note = if out.note.is_empty() {
            why
        } else {
            format!("{}; {why}", out.note)
        };
    }
    out.decision = decision;
    out.boot_file = boot.filter(|_| out.reply.is_some());
    out
}

/// proxyDHCP (PXE 2.1 section 2.2.4): boot information without an address, on :67 for DISCOVER
/// and on :4011 for the boot-server REQUEST. A REQUEST on :67 is never acknowledged: PXE firmware
/// sends it to the DHCP server that gave it an address, and generic clients (dhclient, udhcpc)
/// that pick a proxy offer by mistake would otherwise bind to 0.0.0.0.
fn proxy(
    req: &Inbound,
    port: u16,
    src: SocketAddrV4,
    boot: Option<&str>,
    cfg: &DhcpConfig,
) -> Outcome {
    let Some(file) = boot else {
        return Outcome::silent("");
    };
    let t = match (req.msg_type, port) {
        (MessageType::Discover, 67) => MessageType::Offer,
        (MessageType::Request | MessageType::Inform, PXE_PORT) => MessageType::Ack,
        (MessageType::Request, 67) => {
            return Outcome::silent(
                "REQUEST on :67 is for the DHCP server that hands out addresses",
            )
        }
        (t, _) => return Outcome::silent(format!("{t:?} not answered in proxy mode")),
    };
    let mut m = reply_base(&req.msg, t, cfg);
    add_boot_info(&mut m, req, file, cfg);
    let dest = destination(&req.msg, port, src);
    Outcome {
        reply: Some(Reply { msg: m, dest }),
        decision: None,
        boot_file: None,
        lease_changes: Vec::new(),
        note: format!("proxy {t:?} with {file}"),
    }
}

/// Full DHCP (RFC 2131) from our pool, with boot information for boot clients.
fn full(
    req: &Inbound,
    src: SocketAddrV4,
    boot: Option<&str>,
    cfg: &DhcpConfig,
    pool: &mut LeasePool,
    now_ms: u64,
) -> Outcome {
    let msg = &req.msg;
    let relayed = !msg.giaddr().is_unspecified();
    if relayed && !pool.contains(msg.giaddr()) && !same_subnet(msg.giaddr(), cfg) {
        return Outcome::silent(format!(
            "relayed from {} but no pool serves that subnet",
            msg.giaddr()
        ));
    }
    let lease_ms = u64::from(cfg.lease_secs) * 1000;
    let mut changes = Vec::new();
    let (t, yiaddr, note) = match req.msg_type {
        MessageType::Discover => match pool.offer(req.mac, requested_ip(msg), now_ms) {
            Some(l) => {
                let ip = l.ip;
                changes.push(LeaseChange::Put(l));
                (MessageType::Offer, ip, format!("offered {ip}"))
            }
            None => return Outcome::silent("pool exhausted: no address to offer"),
        },
        MessageType::Request => {
            let selecting = server_id(msg);
            if selecting.is_some_and(|s| s != cfg.server_ip) {
                // The client took another server's offer: free ours.
                if let Some(l) = pool.release(req.mac, None) {
                    changes.push(LeaseChange::Remove(l.ip));
                }
                return Outcome {
                    lease_changes: changes,
                    ..Outcome::silent("client chose another DHCP server")
                };
            }
            let ip = requested_ip(msg)
                .or_else(|| (!msg.ciaddr().is_unspecified()).then(|| msg.ciaddr()));
            let Some(ip) = ip else {
                return nak(req, src, cfg, "REQUEST without an address");
            };
            match pool.commit(req.mac, ip, lease_ms, now_ms, selecting.is_some()) {
                Ok(l) => {
                    changes.push(LeaseChange::Put(l));
                    (MessageType::Ack, ip, format!("leased {ip}"))
                }
                Err(Nak::NoOffer) if selecting.is_none() => return Outcome::silent(""),
                Err(e) => return nak(req, src, cfg, e.reason()),
            }
        }
        MessageType::Release => {
            if let Some(l) = pool.release(req.mac, Some(msg.ciaddr())) {
                changes.push(LeaseChange::Remove(l.ip));
            }
            return Outcome {
                lease_changes: changes,
                ..Outcome::silent(format!("released {}", msg.ciaddr()))
            };
        }
        MessageType::Decline => {
            if let Some(ip) = requested_ip(msg) {
                if let Some(l) = pool.decline(req.mac, ip, now_ms) {
                    changes.push(LeaseChange::Put(l));
                }
            }
            return Outcome {
                lease_changes: changes,
                ..Outcome::silent("client declined its address (in use on the network)")
            };
        }
        MessageType::Inform => (
            MessageType::Ack,
            Ipv4Addr::UNSPECIFIED,
            "informed".to_string(),
        ),
        t => return Outcome::silent(format!("{t:?} ignored")),
    };
    let mut m = reply_base(msg, t, cfg);
    m.set_yiaddr(yiaddr);
    if t == MessageType::Ack && req.msg_type == MessageType::Inform {
        m.set_ciaddr(msg.ciaddr());
    }
    add_network_config(&mut m, cfg, !yiaddr.is_unspecified());
    if let Some(file) = boot {
        add_boot_info(&mut m, req, file, cfg);
    }
    let dest = destination(msg, 67, src);
    Outcome {
        reply: Some(Reply { msg: m, dest }),
        decision: None,
        boot_file: None,
        lease_changes: changes,
        note,
    }
}

fn same_subnet(ip: Ipv4Addr, cfg: &DhcpConfig) -> bool {
    let m = u32::from(cfg.subnet_mask);
    u32::from(ip) & m == u32::from(cfg.server_ip) & m
}

fn nak(req: &Inbound, src: SocketAddrV4, cfg: &DhcpConfig, why: &str) -> Outcome {
    let mut m = reply_base(&req.msg, MessageType::Nak, cfg);
    m.opts_mut().insert(DhcpOption::Message(why.to_string()));
    // RFC 2131 4.3.2: a NAK to a client without a relay is broadcast.
    let dest = if req.msg.giaddr().is_unspecified() {
        Dest::Broadcast
    } else {
        destination(&req.msg, 67, src)
    };
    Outcome {
        reply: Some(Reply { msg: m, dest }),
        decision: None,
        boot_file: None,
        lease_changes: Vec::new(),
        note: format!("NAK: {why}"),
    }
}
