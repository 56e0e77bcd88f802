//! The boot edge's one decision per request: which boot configuration a machine gets (asking
//! the boot policy), the per-boot token minted with the payload, and the files TFTP serves.
use crate::image::{Image, SignedRules};
use fleet::{BootQuery, ClientKind, EventSource, Mac};
use fleet_service::FleetIo;
use netboot_proto::boot;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// A fresh per-boot token: 128 random bits, hex.
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random source");
    hex::encode(b)
}

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
}

/// Which boot loader a per-host configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootConfigKind {
    /// An iPXE script (`/boot/<mac>.ipxe`).
    Ipxe,
    /// A grub configuration (`grub/host-<mac>.cfg` over TFTP).
    Grub,
}

impl Booter {
    /// The per-host iPXE script or grub configuration: asks the policy, mints a per-boot token
    /// when the payload is handed out, and records what was decided. `default_kind` stands in
    /// for a host whose DHCP was never seen (e.g. behind another DHCP server).
    pub fn boot_config(
        &self,
        mac: Mac,
        peer: SocketAddr,
        default_kind: ClientKind,
        kind: BootConfigKind,
    ) -> String {
        let now = fleet_service::now_ms();
        self.fleet.touch(mac, peer.ip(), now);
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
        };
        let (text, via, source) = match kind {
            BootConfigKind::Ipxe => (
                boot::ipxe_script(&decision, &params),
                "iPXE script",
                EventSource::Http,
            ),
            BootConfigKind::Grub => (
                boot::grub_config(&decision, &params),
                "grub config",
                EventSource::Tftp,
            ),
        };
        if matches!(
            decision,
            fleet::BootDecision::Payload | fleet::BootDecision::Restore
        ) && ready
        {
            let restore = decision == fleet::BootDecision::Restore;
            self.fleet.payload_issued(mac, via, &token, restore, now);
        } else {
            if matches!(decision, fleet::BootDecision::WaitingRoom { .. }) {
                self.fleet.waiting(mac, now);
            }
            let note = if ready {
                ""
            } else {
                " (no recovery image yet)"
            };
            self.fleet.event(
                mac,
                source,
                "script",
                match &decision {
                    fleet::BootDecision::WaitingRoom { reason } => {
                        format!("{via}: waiting-room ({reason}){note}")
                    }
                    d => format!("{via}: {}{note}", d.name()),
                },
                now,
            );
        }
        text
    }
}

/// TFTP files: the verified image, plus grub's configuration rendered per host.
pub struct TftpFiles(pub Arc<Booter>);

impl crate::tftp::FileSource for TftpFiles {
    fn open(&self, path: &str, peer: SocketAddr) -> Option<Arc<[u8]>> {
        let s = &self.0;
        if path == "grub/grub.cfg" {
            return Some(Arc::from(boot::grub_stub().into_bytes()));
        }
        if let Some(mac) = path
            .strip_prefix("grub/host-")
            .and_then(|r| r.strip_suffix(".cfg"))
        {
            let mac: Mac = mac.parse().ok()?;
            let cfg = s.boot_config(
                mac,
                peer,
                ClientKind::Pxe(fleet::Arch::UefiX64),
                BootConfigKind::Grub,
            );
            return Some(Arc::from(cfg.into_bytes()));
        }
        s.image.get(path)
    }
}
