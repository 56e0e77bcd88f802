//! The boot edge's one decision per request: which boot configuration a machine gets (asking
//! the boot policy), the per-boot token minted with the payload, and the files TFTP serves.
use crate::image::{Image, SignedRules};
use crate::net::Neighbours;
use fleet::claim::{self, Binding, Claimant, Verdict};
use fleet::lifecycle::Input;
use fleet::{BootQuery, ClientKind, EventSource, Mac};
use fleet_service::FleetIo;
use netboot_proto::boot;
use netboot_proto::dhcp::pool::LeasePool;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// A fresh per-boot token: 128 random bits, hex.
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random source");
    hex::encode(b)
}

/// SHA-256 (hex) of a per-boot token: what the store keeps (the token itself is never stored).
pub fn token_digest(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

pub use netboot_proto::boot::check_extra_cmdline;
/// The default seconds between a waiting machine's polls.
pub use netboot_proto::boot::POLL_SECONDS as WAITING_ROOM_POLL_SECS;

/// "What does this machine boot, and with which token": the per-host boot configuration
/// (iPXE script, grub config) from the boot policy, and the verified files served by TFTP and
/// HTTP. Shared by the HTTP and TFTP handlers and the agent API.
pub struct Booter {
    /// The store's writer.
    pub fleet: Arc<FleetIo>,
    /// The verified image, held in memory.
    pub image: Arc<Image>,
    /// The signed remediation rules the agent fetches.
    pub rules: SignedRules,
    /// `http://ip:port` of the boot scripts and artefacts.
    pub http_base: String,
    /// `https://ip:port` of the agent API (put on the kernel command line).
    pub https_base: String,
    /// Our address on the recovery LAN.
    pub server_ip: Ipv4Addr,
    /// Extra words for the recovery kernel's command line.
    pub extra_cmdline: String,
    /// Seconds between a waiting machine's polls (`--waiting-room-poll-secs`).
    pub poll_secs: u32,
    /// The layer-2 view of the served interface.
    pub neighbours: Neighbours,
    /// Full DHCP mode: the lease pool (what binds an address to a MAC); `None` in proxy mode.
    pub leases: Option<Arc<Mutex<LeasePool>>>,
    /// How long a per-boot token stays valid.
    pub token_lifetime_ms: u64,
}

/// Which boot loader a per-host configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootConfigKind {
    /// An iPXE script (`/boot/<mac>.ipxe`).
    Ipxe,
    /// A grub configuration (`grub/host-<mac>.cfg` over TFTP).
    Grub,
}

impl BootConfigKind {
    fn via(self) -> &'static str {
        match self {
            Self::Ipxe => "iPXE script",
            Self::Grub => "grub config",
        }
    }

    fn source(self) -> EventSource {
        match self {
            Self::Ipxe => EventSource::Http,
            Self::Grub => EventSource::Tftp,
        }
    }
}

impl Booter {
    /// Who is asking, as the server sees it: the address and the hardware address of its
    /// neighbour entry (`l2`, gathered by the caller: a lookup after a TCP handshake, a
    /// resolution for a UDP request).
    pub fn claimant(&self, peer: SocketAddr, l2: Option<Mac>) -> Claimant {
        Claimant {
            ip: peer.ip().to_canonical(),
            l2,
        }
    }

    /// What binds an address to `mac`: its lease in full mode.
    fn binding(&self, mac: Mac, now_ms: u64) -> Binding {
        match &self.leases {
            None => Binding::Proxy,
            Some(pool) => Binding::Lease(
                pool.lock()
                    .unwrap()
                    .lease_of(mac)
                    .filter(|l| !l.offered_only && l.expires_ms > now_ms)
                    .map(|l| l.ip),
            ),
        }
    }

    /// The per-host iPXE script or grub configuration for the request from `who`: judges
    /// whether `who` is the machine ([`fleet::claim::judge`]), asks the policy, mints a
    /// per-boot token when the payload is handed out, and records what was decided. A request
    /// from another machine gets no token and is recorded on the victim's timeline.
    /// `default_kind` stands in for a host whose DHCP was never seen (e.g. behind another DHCP
    /// server).
    pub fn boot_config(
        &self,
        mac: Mac,
        who: Claimant,
        default_kind: ClientKind,
        kind: BootConfigKind,
    ) -> Issued {
        let now = fleet_service::now_ms();
        let host = self.fleet.host(mac);
        let (via, source) = (kind.via(), kind.source());
        let peer = match claim::judge(
            mac,
            host.as_ref(),
            &who,
            self.binding(mac, now),
            now,
            self.token_lifetime_ms,
        ) {
            Verdict::Grant(peer) => peer,
            Verdict::Impersonation(why) => {
                tracing::warn!("{mac}: {via}: {why}");
                if host.is_some() {
                    self.fleet
                        .event(mac, source, "impersonation", format!("{via}: {why}"), now);
                    self.fleet.audit_logged(
                        &format!("{who}"),
                        "impersonation",
                        format!("{mac}: {why}"),
                        now,
                    );
                }
                return Issued::no(refusal(kind, mac));
            }
            Verdict::Conflict(why) => {
                tracing::warn!("{mac}: {via}: {why}");
                self.fleet
                    .observe_logged(mac, &Input::ClaimConflict { why: &why }, now);
                self.fleet.audit_logged(
                    &format!("{who}"),
                    "claim-conflict",
                    format!("{mac}: {why}"),
                    now,
                );
                return Issued::no(refusal(kind, mac));
            }
        };
        self.fleet.touch(mac, now);
        // The requester is the machine: later requests from its address (artefacts) are its.
        self.fleet.remember_peer(peer.ip, mac);
        let host = self.fleet.host(mac);
        let client = host
            .as_ref()
            .and_then(|h| h.last_kind)
            .unwrap_or(default_kind);
        let decision = self.fleet.policy().decide(
            &BootQuery {
                mac,
                kind: client,
                now_ms: now,
                issue: true,
            },
            host.as_ref(),
        );
        let token = new_token();
        let ready = self.image.payload_ready();
        let params = boot::BootParams {
            http_base: &self.http_base,
            https_base: &self.https_base,
            server_ip: self.server_ip,
            mac,
            token: &token,
            image_ready: ready,
            extra_cmdline: &self.extra_cmdline,
            poll_secs: self.poll_secs,
        };
        let text = match kind {
            BootConfigKind::Ipxe => boot::ipxe_script(&decision, &params),
            BootConfigKind::Grub => boot::grub_config(&decision, &params),
        };
        let token_issued = matches!(
            decision,
            fleet::BootDecision::Payload | fleet::BootDecision::Restore
        ) && ready;
        if token_issued {
            let restore = decision == fleet::BootDecision::Restore;
            if let Err(e) =
                self.fleet
                    .payload_issued(mac, via, &token_digest(&token), restore, &peer, now)
            {
                // Not recorded, not sent: a slot the decision took goes back (a host already
                // in the payload keeps the one it had).
                tracing::error!("{mac}: {via}: payload not issued: {e}");
                let running = host.as_ref().is_some_and(|h| {
                    matches!(
                        h.state,
                        fleet::HostState::Booting
                            | fleet::HostState::AgentUp
                            | fleet::HostState::Scanning
                            | fleet::HostState::Unlocked
                    )
                });
                if !running {
                    self.fleet.policy().not_issued(mac);
                }
                return Issued {
                    text: String::new(),
                    token_issued: false,
                    failed: Some(e.to_string()),
                };
            }
        } else {
            if matches!(decision, fleet::BootDecision::WaitingRoom { .. }) {
                self.fleet.waiting(mac, now);
            }
            let note = if ready {
                ""
            } else {
                " (no recovery image yet)"
            };
            match &decision {
                // The waiting room is polled every few seconds: one event per boot and per
                // ten minutes, with the count.
                fleet::BootDecision::WaitingRoom { reason } => self.fleet.poll_event(
                    mac,
                    source,
                    "script",
                    format!("{via}: waiting-room ({reason}){note}"),
                    now,
                ),
                d => self.fleet.event(
                    mac,
                    source,
                    "script",
                    format!("{via}: {}{note}", d.name()),
                    now,
                ),
            }
        }
        Issued {
            text,
            token_issued,
            failed: None,
        }
    }
}

/// A rendered boot script or configuration.
pub struct Issued {
    /// The text to send.
    pub text: String,
    /// It carries a per-boot token (the payload or restore): the host's record, which holds
    /// the token's digest and the campaign slot it took, must be durable before it is sent.
    pub token_issued: bool,
    /// The token could not be recorded (the store cannot write): nothing may be sent but a
    /// "try again".
    pub failed: Option<String>,
}

impl Issued {
    fn no(text: String) -> Self {
        Self {
            text,
            token_issued: false,
            failed: None,
        }
    }
}

/// What a refused requester gets: no token, and its firmware goes on to the next boot device.
fn refusal(kind: BootConfigKind, mac: Mac) -> String {
    match kind {
        BootConfigKind::Ipxe => boot::ipxe_refused(mac),
        BootConfigKind::Grub => boot::grub_refused(mac),
    }
}

/// TFTP files: the verified image, plus grub's configuration rendered per host.
pub struct TftpFiles(pub Arc<Booter>);

impl crate::tftp::FileSource for TftpFiles {
    fn open(&self, path: &str, peer: SocketAddr) -> Option<bytes::Bytes> {
        let s = &self.0;
        if path == "grub/grub.cfg" {
            return Some(bytes::Bytes::from(boot::grub_stub()));
        }
        if let Some(mac) = path
            .strip_prefix("grub/host-")
            .and_then(|r| r.strip_suffix(".cfg"))
        {
            let mac: Mac = mac.parse().ok()?;
            // Called off the runtime (the TFTP driver opens files on a blocking thread), so
            // the neighbour entry of a UDP requester may be resolved here.
            let who = s.claimant(peer, s.neighbours.resolve(peer.ip()));
            let cfg = s.boot_config(
                mac,
                who,
                ClientKind::Pxe(fleet::Arch::UefiX64),
                BootConfigKind::Grub,
            );
            // On a blocking thread already: flush in place. Not durable, not sent (grub gets
            // "file not found" and the firmware tries again).
            if let Some(e) = &cfg.failed {
                tracing::error!("{mac}: grub configuration not sent: {e}");
                return None;
            }
            if cfg.token_issued {
                if let Err(e) = s.fleet.store().flush() {
                    tracing::error!(
                        "{mac}: grub configuration not sent, the store cannot write: {e}"
                    );
                    return None;
                }
            }
            return Some(bytes::Bytes::from(cfg.text));
        }
        s.image.get(path)
    }
}
