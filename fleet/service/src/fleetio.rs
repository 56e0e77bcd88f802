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
    /// The last waiting-room answer recorded per host (message, when, polls since), to collapse
    /// the polls of one boot into one event per [`POLL_REPEAT_WINDOW_MS`].
    recent_polls: Mutex<HashMap<Mac, (String, u64, u32)>>,
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
    /// Which strangers may become host records (the host cap, the new-MAC rate).
    admission: Mutex<fleet::admission::Admission>,
    /// A host's timeline keeps its newest this many events.
    events_kept: usize,
    /// Events appended per host since its timeline was last trimmed.
    appended: Mutex<HashMap<Mac, u32>>,
    /// Hosts per group of states over time (the console's chart), saved in the store.
    progress: Mutex<fleet::progress::Series>,
}

/// A host's timeline keeps its newest this many events by default (`serve --events-per-host`;
/// older ones are summarised in one event; the audit log keeps every admin action and release).
pub const MAX_EVENTS_PER_HOST: usize = 2_000;
/// The default host cap (`serve --max-hosts`).
pub const MAX_HOSTS: usize = 100_000;
/// The default new-MAC rate (`serve --new-hosts-per-sec`); bursts of ten times as many.
pub const NEW_HOSTS_PER_SEC: u32 = 200;

/// Controller operations run at once at most (a wave's triggers, a bulk action).
pub const OOB_PARALLEL: usize = 256;

/// Identical DHCP packets from one host within this window are one event: a boot-looping fleet
/// retransmits constantly, and a DHCP storm must not become a store storm.
pub const DHCP_REPEAT_WINDOW_MS: u64 = 30_000;
/// A host's identical waiting-room answers within one boot are one event per this long, which
/// says how many polls it stands for (a machine polls every few seconds for as long as it
/// waits: hours of polls would otherwise push its history out of the timeline).
pub const POLL_REPEAT_WINDOW_MS: u64 = 10 * 60_000;

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
        // The chart's history survives a restart; an unreadable one is started again.
        let progress = store.progress().unwrap_or_else(|e| {
            tracing::warn!("progress series: {e}; starting a new one");
            None
        });
        Ok(Self {
            progress: Mutex::new(progress.unwrap_or_default()),
            store,
            policy,
            peers: Mutex::new(HashMap::new()),
            hosts: Mutex::new(hosts),
            recent_dhcp: Mutex::new(HashMap::new()),
            recent_polls: Mutex::new(HashMap::new()),
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
            admission: Mutex::new(fleet::admission::Admission::new(
                MAX_HOSTS,
                NEW_HOSTS_PER_SEC,
                NEW_HOSTS_PER_SEC * 10,
            )),
            appended: Mutex::new(HashMap::new()),
            events_kept: MAX_EVENTS_PER_HOST,
        })
    }

    /// Samples the hosts per group of states at `now_ms` into the progress series, and saves
    /// the series when the sample was kept (a change, or a minute without one). A store that
    /// cannot write loses only the chart's sample, never a host's data.
    pub fn sample_progress(&self, now_ms: u64) -> bool {
        let sample =
            self.with_hosts(|h| fleet::progress::Sample::of(now_ms, h.values().map(|r| &r.state)));
        let mut p = self.progress.lock().unwrap();
        if !p.record(sample) {
            return false;
        }
        if let Err(e) = self.store.put_progress(&p) {
            tracing::debug!("progress series not saved: {e}");
        }
        true
    }

    /// The progress series (oldest sample first).
    pub fn progress(&self) -> fleet::progress::Series {
        self.progress.lock().unwrap().clone()
    }

    /// Uses `vault` for escrowed BitLocker keys.
    pub fn with_vault(mut self, vault: fleet::escrow::vault::Vault) -> Self {
        self.vault = Some(Arc::new(vault));
        self
    }

    /// Keeps each host's newest `n` events (at least 10) instead of [`MAX_EVENTS_PER_HOST`].
    pub fn with_event_retention(mut self, n: usize) -> Self {
        self.events_kept = n.max(10);
        self
    }

    /// At most `max_hosts` host records, strangers admitted at `per_sec` a second (bursts of
    /// ten times as many).
    pub fn with_admission(self, max_hosts: usize, per_sec: u32) -> Self {
        *self.admission.lock().unwrap() =
            fleet::admission::Admission::new(max_hosts, per_sec, per_sec.saturating_mul(10));
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
        self.recent_polls.lock().unwrap().remove(&mac);
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
        self.write_with_events(mac, now_ms, &mut |h| f(h).map(|()| Vec::new()))
            .map(|(rec, _)| rec)
    }

    /// The read-modify-write of one host in the cache and the store; `f` may also return
    /// events for its timeline, written in the same atomic store write as the record.
    fn write_with_events(
        &self,
        mac: Mac,
        now_ms: u64,
        f: &mut dyn FnMut(&mut HostRecord) -> Result<Vec<Event>, String>,
    ) -> Result<(HostRecord, Vec<Event>), fleet::StoreError> {
        let mut hosts = self.hosts.lock().unwrap();
        let mut rec = hosts
            .get(&mac)
            .cloned()
            .unwrap_or_else(|| HostRecord::new(mac, now_ms));
        let events = f(&mut rec).map_err(fleet::StoreError::Rejected)?;
        // A known host that did not change (an informational agent step, a repeated decision)
        // costs no store write.
        if events.is_empty() && hosts.get(&mac) == Some(&rec) {
            return Ok((rec, events));
        }
        if events.is_empty() {
            self.store.put_host(&rec)?;
        } else {
            self.store.put_host_with_events(&rec, &events)?;
        }
        hosts.insert(mac, rec.clone());
        self.policy.observe(&rec);
        Ok((rec, events))
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
        let known = {
            let hosts = self.hosts.lock().unwrap();
            (!hosts.contains_key(&mac)).then_some(hosts.len())
        };
        // A stranger: what the network says about an unknown MAC.
        if let Some(count) = known.filter(|_| {
            !matches!(
                input,
                Input::Decided { .. } | Input::KeyApproved { .. } | Input::Admin { .. }
            )
        }) {
            if let Input::Dhcp(d) = input {
                if !matches!(
                    d.kind,
                    fleet::ClientKind::Pxe(_)
                        | fleet::ClientKind::Ipxe(_)
                        | fleet::ClientKind::HttpBoot(_)
                ) {
                    // Neither network-booting nor known: no record.
                    return Ok(None);
                }
            }
            use fleet::admission::Verdict;
            match self.admission.lock().unwrap().admit(count, now_ms) {
                Verdict::Admit => {}
                Verdict::AdmitNearCap(w) => tracing::warn!("{w}"),
                Verdict::Refuse { warn } => {
                    if let Some(w) = &warn {
                        tracing::warn!("{w}");
                    }
                    return Err(fleet::StoreError::Capped(format!(
                        "{mac}: not made a host record (host cap or new-MAC rate)"
                    )));
                }
            }
        }
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
        match self.observe(mac, input, now_ms) {
            Ok(_) => {}
            // Counted and warned about (rate-limited) by the admission.
            Err(fleet::StoreError::Capped(e)) => tracing::debug!("{e}"),
            Err(e) => tracing::error!("store: cannot record {mac}: {e}"),
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
        if !self.hosts.lock().unwrap().contains_key(&mac) {
            // Nothing is kept for a MAC that is not a host (a stranger's refused request, an
            // unknown agent): the log and the audit log have what matters.
            tracing::debug!("{mac} {kind}: {message} (no host record; not kept)");
            return;
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
        self.appended(mac, ev, now_ms);
    }

    /// Applies `input` to a known host like [`FleetIo::observe`], and writes the record, the
    /// note and `extra` events (source, kind, message) in one atomic store write: after a crash
    /// the store has the new state with all its timeline entries, or none of it (an agent's
    /// report, whose retry is answered "already recorded" from the record alone).
    pub fn observe_with_events(
        &self,
        mac: Mac,
        input: &Input<'_>,
        extra: &[(EventSource, &str, String)],
        now_ms: u64,
    ) -> Result<Option<Note>, fleet::StoreError> {
        if self.host(mac).is_none() {
            return Err(fleet::StoreError::Rejected(format!(
                "{mac}: no host record"
            )));
        }
        let ev = |source, kind: &str, message: String| Event {
            time_ms: now_ms,
            source,
            kind: kind.to_string(),
            message,
        };
        let mut note = None;
        let (_, events) = self.write_with_events(mac, now_ms, &mut |h| {
            note = lifecycle::apply(h, input, now_ms);
            Ok(note
                .iter()
                .map(|n| ev(n.source, n.kind, n.text()))
                .chain(extra.iter().map(|(s, k, m)| ev(*s, k, m.clone())))
                .collect())
        })?;
        for ev in events {
            if ev.source != EventSource::Dhcp {
                tracing::info!("{mac} {}: {}", ev.kind, ev.message);
            }
            self.appended(mac, ev, now_ms);
        }
        Ok(note)
    }

    /// After an event was stored: the timeline's bound, and the live stream.
    fn appended(&self, mac: Mac, ev: Event, now_ms: u64) {
        self.bound_timeline(mac, now_ms);
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

    /// Keeps a host's timeline at its bound (checked every 64 events, or every eighth of the
    /// bound if that is less): the oldest go, one event says how many.
    fn bound_timeline(&self, mac: Mac, now_ms: u64) {
        let due = {
            let mut a = self.appended.lock().unwrap();
            let n = a.entry(mac).or_insert(0);
            *n += 1;
            if *n as usize >= (self.events_kept / 8).clamp(1, 64) {
                *n = 0;
                true
            } else {
                false
            }
        };
        if !due {
            return;
        }
        match self.store.trim_events(mac, self.events_kept) {
            Ok(0) => {}
            Ok(n) => {
                let ev = Event {
                    time_ms: now_ms,
                    source: EventSource::Policy,
                    kind: "timeline".into(),
                    message: format!(
                        "{n} older events removed: the timeline keeps the newest {} (the audit log keeps every admin action and key release)",
                        self.events_kept
                    ),
                };
                if let Err(e) = self.store.append_event(mac, &ev) {
                    tracing::error!("store: cannot record event for {mac}: {e}");
                }
            }
            Err(e) => tracing::error!("store: cannot trim the timeline of {mac}: {e}"),
        }
    }

    /// Records a repeated poll's answer (the waiting room): the first of a boot is an event,
    /// identical ones after it are counted, and one event per [`POLL_REPEAT_WINDOW_MS`] says
    /// how many there were. A new boot (a DHCP event) or another answer starts afresh.
    pub fn poll_event(
        &self,
        mac: Mac,
        source: EventSource,
        kind: &str,
        message: String,
        now_ms: u64,
    ) {
        if !self.hosts.lock().unwrap().contains_key(&mac) {
            return;
        }
        let message = {
            let mut recent = self.recent_polls.lock().unwrap();
            match recent.get_mut(&mac) {
                Some((m, since, n)) if *m == message => {
                    let elapsed = now_ms.saturating_sub(*since);
                    if elapsed < POLL_REPEAT_WINDOW_MS {
                        *n += 1;
                        if let Some(h) = self.hosts.lock().unwrap().get_mut(&mac) {
                            h.last_seen_ms = now_ms;
                        }
                        return;
                    }
                    let said = format!(
                        "{message} (still; {} more such polls in the last {} min)",
                        *n + 1,
                        elapsed.div_ceil(60_000)
                    );
                    (*since, *n) = (now_ms, 0);
                    said
                }
                _ => {
                    recent.insert(mac, (message.clone(), now_ms, 0));
                    message
                }
            }
        };
        self.event(mac, source, kind, message, now_ms);
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
            if recent.len() >= 65_536 {
                // Spoofed MACs must not grow this without bound.
                recent.retain(|_, (_, t)| now_ms.saturating_sub(*t) < DHCP_REPEAT_WINDOW_MS);
                if recent.len() >= 65_536 {
                    recent.clear();
                }
            }
            recent.insert(mac, (what.clone(), now_ms));
        }
        let note = match self.apply(mac, &Input::Dhcp(seen), now_ms) {
            Ok(n) => n,
            Err(fleet::StoreError::Capped(e)) => {
                tracing::debug!("{e}");
                return;
            }
            Err(e) => {
                tracing::error!("store: cannot record DHCP for {mac}: {e}");
                return;
            }
        };
        // Every packet is in the host's history; the log gets state changes at info level and
        // the rest at debug (a DHCP storm must not become a log storm).
        tracing::debug!("DHCP {what}");
        if self.host(mac).is_none() {
            // An ordinary DHCP client nobody imported: nothing is kept.
            return;
        }
        if let Some(n) = &note {
            tracing::info!("{mac} state {}: {what}", n.text());
        }
        // A new boot: its first waiting-room answer is an event again.
        self.recent_polls.lock().unwrap().remove(&mac);
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
    ) -> Result<(), fleet::StoreError> {
        self.remember_peer(peer.ip, mac);
        self.observe(
            mac,
            &Input::PayloadIssued {
                via,
                token_sha256,
                restore,
                peer,
            },
            now_ms,
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet::lifecycle::Layer2;
    use fleet::{Arch, ClientKind};

    fn io(name: &str) -> FleetIo {
        let dir = std::env::temp_dir().join(format!("fleetio-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(fleet::SledStore::open(&dir).unwrap());
        FleetIo::new(store, Arc::new(fleet::DefaultPolicy::default())).unwrap()
    }

    fn seen(kind: ClientKind) -> DhcpSeen<'static> {
        DhcpSeen {
            kind,
            discover: true,
            ip: None,
            uuid: None,
            l2: Layer2::Unseen,
        }
    }

    #[test]
    fn strangers_that_do_not_network_boot_leave_nothing_and_a_flood_is_capped() {
        let f = io("strangers").with_admission(1000, 10);
        let mac = |i: u32| Mac([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        // Windows and ordinary clients nobody imported: no record, no event.
        f.dhcp_seen(
            mac(1),
            seen(ClientKind::Windows),
            "discover",
            "w".into(),
            1_000,
        );
        f.dhcp_seen(
            mac(2),
            seen(ClientKind::Other),
            "discover",
            "o".into(),
            1_000,
        );
        assert!(f.host(mac(1)).is_none() && f.host(mac(2)).is_none());
        assert!(f.store().events(mac(1)).unwrap().is_empty());
        // An event for a MAC that is no host is not kept.
        f.event(
            mac(3),
            EventSource::Agent,
            "agent-refused",
            "x".into(),
            1_000,
        );
        assert!(f.store().events(mac(3)).unwrap().is_empty());
        // 500 network-booting strangers in one instant: the burst of 100 is admitted.
        for i in 10..510 {
            f.dhcp_seen(
                mac(i),
                seen(ClientKind::Pxe(Arch::Bios)),
                "discover",
                format!("d{i}"),
                2_000,
            );
        }
        assert_eq!(f.hosts().len(), 100);
    }

    #[test]
    fn waiting_room_polls_of_one_boot_are_one_event_per_window_with_the_count() {
        let f = io("polls");
        let m = Mac([2, 0, 0, 0, 0, 9]);
        f.update(m, 0, &mut |_| Ok(())).unwrap();
        let poll = |t: u64, why: &str| {
            f.poll_event(
                m,
                EventSource::Http,
                "script",
                format!("ipxe: waiting-room ({why})"),
                t,
            )
        };
        let script_events = || {
            f.store()
                .events(m)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == "script")
                .map(|e| e.message)
                .collect::<Vec<_>>()
        };
        // A poll every 5 s for 12 minutes: the first, then one after the window with the count.
        for i in 0..=144u64 {
            poll(1_000 + i * 5_000, "wave 2");
        }
        let ev = script_events();
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0], "ipxe: waiting-room (wave 2)");
        assert!(
            ev[1].starts_with(
                "ipxe: waiting-room (wave 2) (still; 120 more such polls in the last 10 min)"
            ),
            "{ev:?}"
        );
        // Another answer is an event at once.
        poll(730_000, "approval");
        assert_eq!(script_events().len(), 3);
        // A new boot (DHCP) makes the same answer an event again.
        f.dhcp_seen(
            m,
            seen(ClientKind::Pxe(Arch::Bios)),
            "discover",
            "d".into(),
            735_000,
        );
        poll(736_000, "approval");
        assert_eq!(script_events().len(), 4);
        // A stranger's poll leaves nothing.
        let stranger = Mac([2, 0, 0, 0, 0, 10]);
        f.poll_event(stranger, EventSource::Http, "script", "x".into(), 1);
        assert!(f.host(stranger).is_none() && f.store().events(stranger).unwrap().is_empty());
    }

    #[test]
    fn a_timeline_keeps_its_newest_events_and_says_how_many_went() {
        let f = io("timeline");
        let m = Mac([2, 0, 0, 0, 0, 1]);
        f.update(m, 0, &mut |_| Ok(())).unwrap();
        for i in 0..(MAX_EVENTS_PER_HOST + 200) {
            f.event(m, EventSource::Admin, "note", format!("n{i}"), i as u64);
        }
        let ev = f.store().events(m).unwrap();
        assert!(ev.len() <= MAX_EVENTS_PER_HOST + 64 + 1, "{}", ev.len());
        assert!(ev
            .iter()
            .any(|e| e.kind == "timeline" && e.message.contains("older events removed")));
        assert_eq!(
            ev.last().unwrap().message,
            format!("n{}", MAX_EVENTS_PER_HOST + 199)
        );
    }
}
