//! The store's single writer: records what every client did, answers "what is this host's
//! record", and remembers which IP address belongs to which MAC (TFTP and HTTP only see
//! addresses). Every state change goes through [`fleet::lifecycle::apply`].
use fleet::lifecycle::{self, DhcpSeen, Input, Note};
use fleet::{BootPolicy, Event, EventSource, HostRecord, Mac, Store};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One change to the fleet, as the console's live stream sends it: the host's state after the
/// change and the event that was recorded (absent when the host was forgotten).
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The host.
    pub mac: Mac,
    /// State name after the change (`forgotten` when an admin removed the host).
    pub state: String,
    /// The reason of `needs-attention` or `failed`.
    pub reason: Option<String>,
    /// The event recorded.
    pub event: Option<Event>,
}

/// Group commit: many requests that each need "my write is on disk" share one `flush`.
/// A waiter takes a ticket after its write; a flush started after the ticket covers it.
struct Committer {
    tickets: AtomicU64,
    flushed: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

/// The server is the store's only writer, so host records are cached here and written through:
/// the DHCP hot path reads and updates a host without decoding it from sled each time.
pub struct FleetIo {
    store: Arc<dyn Store>,
    policy: Arc<dyn BootPolicy>,
    peers: Mutex<HashMap<IpAddr, Mac>>,
    hosts: Mutex<HashMap<Mac, HostRecord>>,
    /// The last DHCP event recorded per host, to collapse identical retransmissions.
    recent_dhcp: Mutex<HashMap<Mac, (String, u64)>>,
    changes: broadcast::Sender<Change>,
    committer: Committer,
    /// Seals escrowed BitLocker keys (absent: no key can be imported or released).
    pub(crate) vault: Option<Arc<fleet::escrow::vault::Vault>>,
    /// Serialises escrow reads-and-writes (a release is checked and recorded atomically).
    pub(crate) escrow_lock: Mutex<()>,
    /// Reaches machines out of band (Wake-on-LAN); absent offline.
    pub(crate) oob: Option<Arc<dyn crate::oob::OutOfBand>>,
    /// Seals management-controller secrets (their own key file).
    pub(crate) bmc_vault: Option<Arc<fleet::escrow::vault::Vault>>,
    /// Controller operations in flight at once (the server's per-controller limit is inside).
    pub(crate) oob_slots: Arc<tokio::sync::Semaphore>,
}

/// Controller operations run at once at most (a wave's triggers, a bulk action).
pub const OOB_PARALLEL: usize = 256;

/// Identical DHCP packets from one host within this window are one event: a boot-looping fleet
/// retransmits constantly, and a DHCP storm must not become a store storm.
pub const DHCP_REPEAT_WINDOW_MS: u64 = 30_000;

impl FleetIo {
    /// Loads every host record into the cache and tells the policy of each.
    pub fn new(
        store: Arc<dyn Store>,
        policy: Arc<dyn BootPolicy>,
    ) -> Result<Self, fleet::StoreError> {
        let hosts: HashMap<Mac, HostRecord> =
            store.hosts()?.into_iter().map(|h| (h.mac, h)).collect();
        for h in hosts.values() {
            policy.observe(h);
        }
        Ok(Self {
            store,
            policy,
            peers: Mutex::new(HashMap::new()),
            hosts: Mutex::new(hosts),
            recent_dhcp: Mutex::new(HashMap::new()),
            changes: broadcast::channel(4096).0,
            committer: Committer {
                tickets: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                lock: tokio::sync::Mutex::new(()),
            },
            vault: None,
            escrow_lock: Mutex::new(()),
            oob: None,
            bmc_vault: None,
            oob_slots: Arc::new(tokio::sync::Semaphore::new(OOB_PARALLEL)),
        })
    }

    /// Uses `vault` for escrowed BitLocker keys.
    pub fn with_vault(mut self, vault: fleet::escrow::vault::Vault) -> Self {
        self.vault = Some(Arc::new(vault));
        self
    }

    /// With a way to reach machines out of band (the running server's).
    pub fn with_oob(mut self, oob: Arc<dyn crate::oob::OutOfBand>) -> Self {
        self.oob = Some(oob);
        self
    }

    /// Live changes (for the console's event stream). A slow subscriber misses changes and is
    /// told so by `RecvError::Lagged`; it should then reload.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Returns once every write made before the call is on disk. Concurrent callers share one
    /// flush (group commit), so a thousand agents reporting at once cost a few fsyncs, not a
    /// thousand.
    pub async fn durable(&self) -> Result<(), fleet::StoreError> {
        let c = &self.committer;
        let ticket = c.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let _g = c.lock.lock().await;
        if c.flushed.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Everyone who took a ticket up to now wrote before taking it: this flush covers them.
        let upto = c.tickets.load(Ordering::SeqCst);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| fleet::StoreError::Rejected(format!("flush task: {e}")))??;
        c.flushed.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    /// Every host, from the cache (no store read).
    pub fn hosts(&self) -> Vec<HostRecord> {
        self.hosts.lock().unwrap().values().cloned().collect()
    }

    /// Calls `f` on every cached host without copying them.
    pub fn with_hosts<R>(&self, f: impl FnOnce(&HashMap<Mac, HostRecord>) -> R) -> R {
        f(&self.hosts.lock().unwrap())
    }

    /// Forgets a host (record and history). Returns whether it existed.
    pub fn forget(&self, mac: Mac) -> Result<bool, fleet::StoreError> {
        let mut hosts = self.hosts.lock().unwrap();
        let existed = self.store.remove_host(mac)?;
        let cached = hosts.remove(&mac).is_some();
        self.recent_dhcp.lock().unwrap().remove(&mac);
        drop(hosts);
        let _ = self.changes.send(Change {
            mac,
            state: "forgotten".into(),
            reason: None,
            event: None,
        });
        Ok(existed || cached)
    }

    /// Read-modify-write of one host's inventory fields (host name, site, tags, notes), in the
    /// cache and the store together. The closure may refuse with `Err`, which changes nothing.
    /// A state change is refused here: those go through [`FleetIo::observe`].
    pub fn update(
        &self,
        mac: Mac,
        now_ms: u64,
        f: &mut dyn FnMut(&mut HostRecord) -> Result<(), String>,
    ) -> Result<HostRecord, fleet::StoreError> {
        self.write(mac, now_ms, &mut |h| {
            let before = h.state.clone();
            f(h)?;
            if h.state != before {
                return Err(format!(
                    "{mac}: state changes go through fleet::lifecycle, not an inventory update"
                ));
            }
            Ok(())
        })
    }

    /// Writes a whole record as given, bypassing the lifecycle: for test fixtures that need a
    /// host in a given state (feature `test-fixtures`, never in the server).
    #[cfg(feature = "test-fixtures")]
    pub fn put_fixture(&self, rec: HostRecord) -> Result<(), fleet::StoreError> {
        let mac = rec.mac;
        self.write(mac, rec.state_since_ms, &mut |h| {
            *h = rec.clone();
            Ok(())
        })
        .map(drop)
    }

    fn write(
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
        // A known host that did not change (an informational agent step, a repeated decision)
        // costs no store write.
        if hosts.get(&mac) == Some(&rec) {
            return Ok(rec);
        }
        self.store.put_host(&rec)?;
        hosts.insert(mac, rec.clone());
        self.policy.observe(&rec);
        Ok(rec)
    }

    /// Applies `input` to the host (created when new) through [`lifecycle::apply`], writes it
    /// and records the note on its timeline (returned too). The one way a host's state changes.
    pub fn observe(
        &self,
        mac: Mac,
        input: &Input<'_>,
        now_ms: u64,
    ) -> Result<Option<Note>, fleet::StoreError> {
        let note = self.apply(mac, input, now_ms)?;
        if let Some(n) = &note {
            self.event(mac, n.source, n.kind, n.text(), now_ms);
        }
        Ok(note)
    }

    /// [`lifecycle::apply`] inside the read-modify-write; the caller records the note.
    fn apply(
        &self,
        mac: Mac,
        input: &Input<'_>,
        now_ms: u64,
    ) -> Result<Option<Note>, fleet::StoreError> {
        let mut note = None;
        self.write(mac, now_ms, &mut |h| {
            note = lifecycle::apply(h, input, now_ms);
            Ok(())
        })?;
        Ok(note)
    }

    /// [`FleetIo::observe`] where the caller has no one to tell of a store failure (a packet,
    /// a policy tick): the failure is logged.
    pub fn observe_logged(&self, mac: Mac, input: &Input<'_>, now_ms: u64) {
        if let Err(e) = self.observe(mac, input, now_ms) {
            tracing::error!("store: cannot record {mac}: {e}");
        }
    }

    /// The host was sent to the waiting room: `waiting` (from seen).
    pub fn waiting(&self, mac: Mac, now_ms: u64) {
        self.observe_logged(mac, &Input::WaitingRoom, now_ms);
    }

    /// Applies a state change decided elsewhere (a campaign's timeout or verification window).
    pub fn set_state(&self, mac: Mac, to: fleet::HostState, why: &str, now_ms: u64) {
        self.observe_logged(mac, &Input::Decided { to, why }, now_ms);
    }

    /// [`Self::audit`] where a failure cannot be answered: it is logged.
    pub fn audit_logged(&self, actor: &str, action: &str, detail: String, now_ms: u64) {
        if let Err(e) = self.audit(actor, action, detail, now_ms) {
            tracing::error!("audit log: {e}");
        }
    }

    /// Appends an entry to the audit log (admin actions, key releases).
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        detail: String,
        now_ms: u64,
    ) -> Result<(), fleet::StoreError> {
        self.store.audit(&fleet::store::AuditEntry {
            time_ms: now_ms,
            actor: actor.to_string(),
            action: action.to_string(),
            detail,
        })
    }

    /// The store behind the cache (reads; writes go through this type).
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The store, shared.
    pub fn store_arc(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The boot policy.
    pub fn policy(&self) -> &dyn BootPolicy {
        &*self.policy
    }

    /// A host's record, from the cache.
    pub fn host(&self, mac: Mac) -> Option<HostRecord> {
        self.hosts.lock().unwrap().get(&mac).cloned()
    }

    /// Remembers that `ip` is `mac` (TFTP and HTTP see only addresses).
    pub fn remember_peer(&self, ip: IpAddr, mac: Mac) {
        self.peers.lock().unwrap().insert(ip, mac);
    }

    /// The MAC last seen at `ip`.
    pub fn peer_mac(&self, ip: IpAddr) -> Option<Mac> {
        self.peers.lock().unwrap().get(&ip).copied()
    }

    /// Records that `mac`'s boot configuration was asked for (by whoever asked: the request
    /// proves nothing about who sent it, so no address is taken from it).
    pub fn touch(&self, mac: Mac, now_ms: u64) {
        self.observe_logged(mac, &Input::ConfigFetched, now_ms);
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
            return;
        }
        if self.changes.receiver_count() > 0 {
            let (state, reason) = match self.hosts.lock().unwrap().get(&mac) {
                Some(h) => (
                    h.state.name().to_string(),
                    h.state.reason().map(str::to_string),
                ),
                None => ("unknown".to_string(), None),
            };
            let _ = self.changes.send(Change {
                mac,
                state,
                reason,
                event: Some(ev),
            });
        }
    }

    /// Records a DHCP packet from `mac`: `what` describes the packet and the answer (one line,
    /// identical for a retransmission), `msg_type` names the message (`discover`, `request`).
    /// Identical packets within [`DHCP_REPEAT_WINDOW_MS`] are one event.
    pub fn dhcp_seen(
        &self,
        mac: Mac,
        seen: DhcpSeen<'_>,
        msg_type: &str,
        what: String,
        now_ms: u64,
    ) {
        if let Some(ip) = seen.ip {
            self.remember_peer(IpAddr::V4(ip), mac);
        }
        {
            let mut recent = self.recent_dhcp.lock().unwrap();
            if let Some((w, t)) = recent.get(&mac) {
                if *w == what && now_ms.saturating_sub(*t) < DHCP_REPEAT_WINDOW_MS {
                    if let Some(h) = self.hosts.lock().unwrap().get_mut(&mac) {
                        h.last_seen_ms = now_ms;
                    }
                    return;
                }
            }
            recent.insert(mac, (what.clone(), now_ms));
        }
        let note = match self.apply(mac, &Input::Dhcp(seen), now_ms) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("store: cannot record DHCP for {mac}: {e}");
                return;
            }
        };
        // Every packet is in the host's history; the log gets state changes at info level and
        // the rest at debug (a DHCP storm must not become a log storm).
        tracing::debug!("DHCP {what}");
        if let Some(n) = &note {
            tracing::info!("{mac} state {}: {what}", n.text());
        }
        self.event(
            mac,
            EventSource::Dhcp,
            &format!("dhcp-{msg_type}"),
            what,
            now_ms,
        );
        if let Some(n) = note {
            self.event(mac, n.source, n.kind, n.text(), now_ms);
        }
    }

    /// The payload was handed to `mac` with a fresh boot token.
    /// `restore`: a rollback run, which an admin asked for whatever the host's state.
    /// `peer`: the machine it went to, which is remembered as `mac` for later requests.
    pub fn payload_issued(
        &self,
        mac: Mac,
        via: &str,
        token_sha256: &str,
        restore: bool,
        peer: &fleet::BootPeer,
        now_ms: u64,
    ) {
        self.remember_peer(peer.ip, mac);
        self.observe_logged(
            mac,
            &Input::PayloadIssued {
                via,
                token_sha256,
                restore,
                peer,
            },
            now_ms,
        );
    }
}
