//! The bridge between the protocol drivers and the fleet store: records what every client did,
//! answers "what is this host's record", and remembers which IP address belongs to which MAC
//! (TFTP and HTTP only see addresses).
use crate::dhcp::{Inbound, Outcome};
use fleet::{BootPolicy, ClientKind, Event, EventSource, HostRecord, HostState, Mac, Store};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The server is the store's only writer, so host records are cached here and written through:
/// the DHCP hot path reads and updates a host without decoding it from sled each time.
pub struct FleetIo {
    store: Arc<dyn Store>,
    policy: Arc<dyn BootPolicy>,
    peers: Mutex<HashMap<IpAddr, Mac>>,
    hosts: Mutex<HashMap<Mac, HostRecord>>,
    /// The last DHCP event recorded per host, to collapse identical retransmissions.
    recent_dhcp: Mutex<HashMap<Mac, (String, u64)>>,
}

/// Identical DHCP packets from one host within this window are one event: a boot-looping fleet
/// retransmits constantly, and a DHCP storm must not become a store storm.
pub const DHCP_REPEAT_WINDOW_MS: u64 = 30_000;

impl FleetIo {
    pub fn new(
        store: Arc<dyn Store>,
        policy: Arc<dyn BootPolicy>,
    ) -> Result<Self, fleet::StoreError> {
        let hosts = store.hosts()?.into_iter().map(|h| (h.mac, h)).collect();
        Ok(FleetIo {
            store,
            policy,
            peers: Mutex::new(HashMap::new()),
            hosts: Mutex::new(hosts),
            recent_dhcp: Mutex::new(HashMap::new()),
        })
    }

    /// Read-modify-write of one host, in the cache and the store together. The closure may
    /// refuse with `Err`, which changes nothing.
    pub fn update(
        &self,
        mac: Mac,
        now_ms: u64,
        f: &mut dyn FnMut(&mut HostRecord) -> Result<(), String>,
    ) -> Result<HostRecord, fleet::StoreError> {
        let mut hosts = self.hosts.lock().unwrap();
        let mut rec = hosts
            .get(&mac)
            .cloned()
            .unwrap_or_else(|| HostRecord::new(mac, now_ms));
        f(&mut rec).map_err(fleet::StoreError::Rejected)?;
        self.store.put_host(&rec)?;
        hosts.insert(mac, rec.clone());
        Ok(rec)
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn store_arc(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn policy(&self) -> &dyn BootPolicy {
        &*self.policy
    }

    pub fn host(&self, mac: Mac) -> Option<HostRecord> {
        self.hosts.lock().unwrap().get(&mac).cloned()
    }

    pub fn remember_peer(&self, ip: IpAddr, mac: Mac) {
        self.peers.lock().unwrap().insert(ip, mac);
    }

    pub fn peer_mac(&self, ip: IpAddr) -> Option<Mac> {
        self.peers.lock().unwrap().get(&ip).copied()
    }

    /// Records that `mac` asked for something (a script, a grub config) from `ip`.
    pub fn touch(&self, mac: Mac, ip: IpAddr, now_ms: u64) {
        self.remember_peer(ip, mac);
        let r = self.update(mac, now_ms, &mut |h| {
            h.last_seen_ms = now_ms;
            if let IpAddr::V4(v4) = ip {
                h.ip = Some(v4);
            }
            if h.state == HostState::Unknown {
                h.state = HostState::Seen;
                h.state_since_ms = now_ms;
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::error!("store: {e}");
        }
    }

    /// Appends one event to a host's history (creating the host if needed).
    pub fn event(&self, mac: Mac, source: EventSource, kind: &str, message: String, now_ms: u64) {
        if source != EventSource::Dhcp {
            tracing::info!("{mac} {kind}: {message}");
        }
        let ev = Event {
            time_ms: now_ms,
            source,
            kind: kind.to_string(),
            message,
        };
        if let Err(e) = self.store.append_event(mac, &ev) {
            tracing::error!("store: cannot record event for {mac}: {e}");
        }
    }

    /// Records a DHCP packet from `inb` and what we did about it.
    pub fn dhcp_seen(
        &self,
        inb: &Inbound,
        port: u16,
        out: &Outcome,
        ip: Option<std::net::Ipv4Addr>,
        now_ms: u64,
    ) {
        if let Some(ip) = ip {
            self.remember_peer(IpAddr::V4(ip), inb.mac);
        }
        let what = format!(
            "{:?} on :{port} from {} ({}){}{}{}",
            inb.msg_type,
            inb.mac,
            kind_name(inb.kind),
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
        );
        {
            let mut recent = self.recent_dhcp.lock().unwrap();
            if let Some((w, t)) = recent.get(&inb.mac) {
                if *w == what && now_ms.saturating_sub(*t) < DHCP_REPEAT_WINDOW_MS {
                    if let Some(h) = self.hosts.lock().unwrap().get_mut(&inb.mac) {
                        h.last_seen_ms = now_ms;
                    }
                    return;
                }
            }
            recent.insert(inb.mac, (what.clone(), now_ms));
        }
        let mut changed: Option<String> = None;
        let r = self.update(inb.mac, now_ms, &mut |h| {
            h.last_seen_ms = now_ms;
            h.last_kind = Some(inb.kind);
            if let Some(u) = &inb.uuid {
                h.uuid = Some(u.clone());
            }
            if let Some(ip) = ip {
                h.ip = Some(ip);
            }
            changed = None;
            if h.state == HostState::Unknown {
                h.state = HostState::Seen;
                h.state_since_ms = now_ms;
                changed = Some("unknown -> seen".into());
            }
            // A remediated host that asks for an address as Windows is back: recovered.
            if inb.kind == ClientKind::Windows
                && matches!(
                    h.state,
                    HostState::Remediated | HostState::Clean | HostState::Rebooted
                )
            {
                let from = h.state.name();
                h.state = HostState::Recovered;
                h.state_since_ms = now_ms;
                changed = Some(format!("{from} -> recovered (Windows DHCP seen)"));
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::error!("store: cannot record DHCP for {}: {e}", inb.mac);
            return;
        }
        // Every packet is in the host's history; the log gets state changes at info level and
        // the rest at debug (a DHCP storm must not become a log storm).
        tracing::debug!("DHCP {what}");
        if let Some(c) = &changed {
            tracing::info!("{} state {c}: {what}", inb.mac);
        }
        self.event(
            inb.mac,
            EventSource::Dhcp,
            &format!("dhcp-{}", format!("{:?}", inb.msg_type).to_lowercase()),
            what,
            now_ms,
        );
        if let Some(c) = changed {
            self.event(inb.mac, EventSource::Dhcp, "state", c, now_ms);
        }
    }

    /// The payload was handed to `mac` with a fresh boot token.
    pub fn payload_issued(&self, mac: Mac, via: &str, token: &str, now_ms: u64) {
        let mut note = String::new();
        let r = self.update(mac, now_ms, &mut |h| {
            h.boot_token = Some(token.to_string());
            h.boot_token_issued_ms = now_ms;
            h.payload_boots += 1;
            note = match h.transition(HostState::Booting, now_ms) {
                Ok(true) => "-> booting".into(),
                Ok(false) => String::new(),
                Err(e) => format!("(state kept: {e})"),
            };
            Ok(())
        });
        if let Err(e) = r {
            tracing::error!("store: {e}");
        }
        self.event(
            mac,
            EventSource::Policy,
            "payload",
            format!("recovery payload issued via {via} {note}"),
            now_ms,
        );
    }
}

pub fn kind_name(k: ClientKind) -> String {
    match k {
        ClientKind::Pxe(a) => format!("PXE {a:?}"),
        ClientKind::Ipxe(a) => format!("iPXE {a:?}"),
        ClientKind::HttpBoot(a) => format!("HTTP boot {a:?}"),
        ClientKind::Windows => "Windows".into(),
        ClientKind::Agent => "unbrick agent".into(),
        ClientKind::Other => "other DHCP client".into(),
    }
}
