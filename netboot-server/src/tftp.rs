//! The TFTP driver: one tokio socket on port 69 for requests; each transfer on a thread of its
//! own with a blocking ephemeral socket (a new transfer ID), timers from the state machine's
//! deadlines. Lock-step TFTP (what firmware, iPXE's UNDI driver and grub use) waits for the
//! client's ACK after every block: a thread blocked in `recvfrom` is woken by the datagram
//! itself, where an async task pays the reactor's round trip (epoll, wake-up, scheduling) per
//! block. While few transfers run (no more than half the CPUs), a transfer first polls its
//! socket for up to [`SPIN`] before it sleeps: even a thread's own wake-up (an interrupt to an
//! idle CPU and a context switch, dearer still on a virtual machine) is most of a lock-step
//! block's time. Transfers are bounded by the slots (`max_transfers`), so the threads are too;
//! a thread is kept a minute for the next transfer.
use crate::Error;
use netboot_proto::tftp::transfer::{Limits, Outcome, Transfer};
use netboot_proto::tftp::{check_request, packet, to_netascii, ErrorCode};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, Semaphore};

/// Where TFTP files come from. Implementations serve from memory.
pub trait FileSource: Send + Sync + 'static {
    /// The file at the normalized `path` for the client at `peer`, or `None` (file not found).
    fn open(&self, path: &str, peer: SocketAddr) -> Option<bytes::Bytes>;
}

/// Where and how the TFTP driver serves.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// The request socket's address.
    pub bind: SocketAddrV4,
    /// The interface to bind to (SO_BINDTODEVICE).
    pub device: Option<String>,
    /// Per-transfer limits.
    pub limits: Limits,
    /// Most transfers at once.
    pub max_transfers: usize,
    /// Most transfers at once from one IP address (a machine fetches one file at a time;
    /// firmware retrying after a timeout may briefly have two).
    pub max_per_peer: usize,
}

/// The default of [`TftpConfig::max_per_peer`].
pub const MAX_PER_PEER: usize = 4;

/// One finished transfer, for the record.
#[derive(Debug, Clone)]
pub struct TransferRecord {
    /// The client.
    pub peer: SocketAddr,
    /// The file.
    pub path: String,
    /// Bytes the client acknowledged (all of them for a complete transfer; where it stopped
    /// otherwise).
    pub bytes: u64,
    /// The file's size.
    pub size: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// Negotiated block size.
    pub blksize: usize,
    /// Negotiated window size.
    pub windowsize: u16,
    /// How it ended.
    pub outcome: Outcome,
    /// This transfer stopped where the peer's last one did: the peer is offered this blksize
    /// from now on ([`Stalls`]).
    pub blksize_capped: Option<usize>,
}

/// Counters for /metrics and the logs.
#[derive(Debug, Default)]
pub struct TftpStats {
    /// Read requests received.
    pub requests: AtomicU64,
    /// Requests refused.
    pub refused: AtomicU64,
    /// Datagrams that did not parse.
    pub malformed: AtomicU64,
    /// Requests refused for want of a slot.
    pub busy: AtomicU64,
    /// Transfers completed.
    pub completed: AtomicU64,
    /// Transfers that failed.
    pub failed: AtomicU64,
}

impl fleet_service::metrics::Counters for TftpStats {
    fn counters(&self) -> Vec<fleet_service::metrics::Counter> {
        use fleet_service::metrics::Counter;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            Counter {
                name: "unbrick_tftp_requests_total",
                help: "TFTP read requests received.",
                value: v(&self.requests),
            },
            Counter {
                name: "unbrick_tftp_refused_total",
                help: "TFTP requests refused (unknown file, write, bad path).",
                value: v(&self.refused),
            },
            Counter {
                name: "unbrick_tftp_malformed_total",
                help: "TFTP datagrams that did not parse.",
                value: v(&self.malformed),
            },
            Counter {
                name: "unbrick_tftp_busy_total",
                help: "TFTP requests refused because every transfer slot was taken.",
                value: v(&self.busy),
            },
            Counter {
                name: "unbrick_tftp_completed_total",
                help: "TFTP transfers completed.",
                value: v(&self.completed),
            },
            Counter {
                name: "unbrick_tftp_failed_total",
                help: "TFTP transfers that failed or timed out.",
                value: v(&self.failed),
            },
        ]
    }
}

/// The TFTP driver.
pub struct TftpServer {
    socket: UdpSocket,
    cfg: TftpConfig,
    source: Arc<dyn FileSource>,
    records: mpsc::UnboundedSender<TransferRecord>,
    /// Its counters.
    pub stats: Arc<TftpStats>,
    slots: Arc<Semaphore>,
    per_peer: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    pool: Arc<Pool>,
    stalls: Arc<std::sync::Mutex<Stalls>>,
    newest: Arc<Newest>,
    /// Most transfers that may spin for their client's answer at once ([`SPIN`]).
    spinners: usize,
}

/// Whether a transfer may spin: only while no more transfers run than half the CPUs, so
/// spinning never takes a CPU that another transfer, the clients' packets or the rest of the
/// server needs; past that every transfer sleeps in `recvfrom` at once.
struct SpinBudget {
    sem: Arc<Semaphore>,
    max: usize,
    spinners: usize,
}

impl SpinBudget {
    /// Running transfers (the slots taken) are within the budget.
    fn allows(&self) -> bool {
        self.max.saturating_sub(self.sem.available_permits()) <= self.spinners
    }
}

/// The latest request per peer address and file, among transfers running: a transfer whose
/// client asked for its file again is given up at its next retransmission
/// ([`Transfer::abandon`]) instead of holding its slot through the whole back-off (firmware
/// and iPXE retry a boot after a few seconds; without this, a busy server's slots fill with
/// transfers nobody listens to). A request refused for want of a slot counts too: it is the
/// one that most needs the old transfer's slot. One entry per running (peer, file) at most.
#[derive(Default)]
struct Newest {
    seq: AtomicU64,
    /// (peer, file) -> (latest request's ticket, transfers running).
    map: std::sync::Mutex<std::collections::HashMap<(std::net::IpAddr, String), (u64, usize)>>,
}

impl Newest {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<(std::net::IpAddr, String), (u64, usize)>,
    > {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a new transfer; its ticket.
    fn register(&self, ip: std::net::IpAddr, path: &str) -> u64 {
        let n = self.next();
        let mut m = self.lock();
        let e = m.entry((ip, path.to_string())).or_insert((0, 0));
        *e = (n, e.1 + 1);
        n
    }

    /// A request that gets no transfer (refused): running transfers of the same file to the
    /// same address are superseded all the same. Adds no entry.
    fn asked_again(&self, ip: std::net::IpAddr, path: &str) {
        let n = self.next();
        if let Some(e) = self.lock().get_mut(&(ip, path.to_string())) {
            e.0 = n;
        }
    }

    /// Whether a later request for the same file came from the same address.
    fn superseded(&self, ip: std::net::IpAddr, path: &str, ticket: u64) -> bool {
        self.lock()
            .get(&(ip, path.to_string()))
            .is_some_and(|&(n, _)| n > ticket)
    }

    /// A transfer ended: the entry goes with the last one running.
    fn done(&self, ip: std::net::IpAddr, path: &str) {
        let mut m = self.lock();
        let key = (ip, path.to_string());
        if let Some(e) = m.get_mut(&key) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                m.remove(&key);
            }
        }
    }
}

/// Most requests handled at once on tasks of their own; beyond it the request loop handles
/// them one by one (backpressure on a flood).
const MAX_HANDLERS: usize = 1024;

/// The block size offered to a machine whose transfers stop at the same block twice.
pub use fleet::bootdiag::STALL_BLKSIZE;

/// Transfers that stopped, per peer: when one stops at the same block of the same file as the
/// one before it (a path that drops large packets), that peer is offered [`STALL_BLKSIZE`]
/// from then on (RFC 2348 lets the server answer a smaller blksize than asked). Bounded:
/// spoofed peers cannot grow it.
#[derive(Debug, Default)]
pub struct Stalls {
    last: std::collections::HashMap<std::net::IpAddr, (String, u64, usize)>,
    capped: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// Most peers [`Stalls`] remembers.
const STALLS_MAX: usize = 4096;

impl Stalls {
    /// The largest blksize to offer `ip`.
    pub fn cap(&self, ip: std::net::IpAddr) -> Option<usize> {
        self.capped.get(&ip).copied()
    }

    /// Notes how a transfer ended; returns the new cap when this one sets it.
    pub fn note(&mut self, rec: &TransferRecord) -> Option<usize> {
        let ip = rec.peer.ip();
        if rec.outcome == Outcome::Complete {
            self.last.remove(&ip);
            return None;
        }
        // A transfer given up for a new request stopped where its client stopped listening.
        let stopped = match rec.outcome {
            Outcome::TimedOut | Outcome::Abandoned => true,
            Outcome::Unconfirmed => fleet::bootdiag::unconfirmed_stopped(rec.size, rec.bytes),
            _ => false,
        };
        if !stopped || rec.blksize <= STALL_BLKSIZE {
            return None;
        }
        let here = (rec.path.clone(), rec.bytes, rec.blksize);
        if self.last.get(&ip) == Some(&here) && self.cap(ip).is_none() {
            self.last.remove(&ip);
            if self.capped.len() >= STALLS_MAX {
                self.capped.clear();
            }
            self.capped.insert(ip, STALL_BLKSIZE);
            return Some(STALL_BLKSIZE);
        }
        if self.last.len() >= STALLS_MAX {
            self.last.clear();
        }
        self.last.insert(ip, here);
        None
    }
}

/// One transfer counted against its peer's address; uncounted when dropped.
struct PeerSlot {
    ip: std::net::IpAddr,
    map: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl TftpServer {
    /// Binds the request socket.
    pub fn bind(
        cfg: TftpConfig,
        source: Arc<dyn FileSource>,
        records: mpsc::UnboundedSender<TransferRecord>,
    ) -> Result<Self, Error> {
        let std = crate::net::udp_socket(cfg.bind, cfg.device.as_deref(), false)
            .map_err(|e| crate::net::bind_error_of("TFTP", cfg.bind, &e))?;
        let socket = UdpSocket::from_std(std).map_err(|e| Error::Bind(format!("TFTP: {e}")))?;
        Ok(Self {
            socket,
            slots: Arc::new(Semaphore::new(cfg.max_transfers)),
            per_peer: Arc::default(),
            pool: Arc::default(),
            stalls: Arc::default(),
            newest: Arc::default(),
            spinners: std::thread::available_parallelism().map_or(1, |n| n.get() / 2),
            cfg,
            source,
            records,
            stats: Arc::default(),
        })
    }

    /// The request socket's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serves until `shutdown` turns true, then lets transfers in flight finish for up to
    /// `grace`, and cuts the rest (each gets an ERROR so the client does not hang).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let me = Arc::new(self);
        let mut buf = vec![0u8; 2048];
        let cut = Arc::new(AtomicBool::new(false));
        let handlers = Arc::new(Semaphore::new(MAX_HANDLERS));
        loop {
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { break },
                r = me.socket.recv_from(&mut buf) => {
                    let Ok((n, peer)) = r else { continue };
                    // Each request on a task of its own: a burst of requests (a wave starting)
                    // is not answered one after the other, late enough for clients to give up.
                    match handlers.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (me, cut, d) = (me.clone(), cut.clone(), buf[..n].to_vec());
                            tokio::spawn(async move {
                                me.on_request(&d, peer, cut).await;
                                drop(permit);
                            });
                        }
                        Err(_) => me.on_request(&buf[..n], peer, cut.clone()).await,
                    }
                }
            }
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            handlers.acquire_many(MAX_HANDLERS as u32),
        )
        .await;
        let all = me.cfg.max_transfers as u32;
        if tokio::time::timeout(grace, me.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("TFTP: cutting transfers still running after {grace:?}");
            cut.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(2), me.slots.acquire_many(all)).await;
        }
    }

    async fn on_request(&self, datagram: &[u8], peer: SocketAddr, cut: Arc<AtomicBool>) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let req = match check_request(datagram) {
            Ok(r) => r,
            Err(refusal) => {
                if refusal.code == ErrorCode::IllegalOperation {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(%peer, reason = %refusal.message, "TFTP request refused");
                let _ = self.socket.send_to(&refusal.packet(), peer).await;
                return;
            }
        };
        // One address may not hold every slot (a stalled or hostile client).
        let counted = {
            let mut m = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(peer.ip()).or_insert(0);
            (*n < self.cfg.max_per_peer).then(|| {
                *n += 1;
                PeerSlot {
                    ip: peer.ip(),
                    map: self.per_peer.clone(),
                }
            })
        };
        let Some(peer_slot) = counted else {
            self.newest.asked_again(peer.ip(), &req.path);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "TFTP: {} transfers already running for this address; refusing", self.cfg.max_per_peer);
            let _ = self
                .socket
                .send_to(
                    &packet::error_packet(0, "too many transfers from your address, try again"),
                    peer,
                )
                .await;
            return;
        };
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.newest.asked_again(peer.ip(), &req.path);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "TFTP: {} transfers already running; refusing", self.cfg.max_transfers);
            let _ = self
                .socket
                .send_to(&packet::error_packet(0, "server busy, try again"), peer)
                .await;
            return;
        };
        // A free slot first: a per-host configuration is rendered (and a token minted) only for
        // a transfer that can run. Opening runs on a blocking thread: a per-host configuration
        // may resolve the requester's neighbour entry.
        let source = self.source.clone();
        let path = req.path.clone();
        let opened = tokio::task::spawn_blocking(move || source.open(&path, peer))
            .await
            .ok()
            .flatten();
        let Some(file) = opened else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, path = %req.path, "TFTP file not found");
            let _ = self
                .socket
                .send_to(
                    &packet::error_packet(ErrorCode::FileNotFound as u16, "file not found"),
                    peer,
                )
                .await;
            return;
        };
        let file = if req.netascii {
            bytes::Bytes::from(to_netascii(&file))
        } else {
            file
        };
        let bind = SocketAddrV4::new(*self.cfg.bind.ip(), 0);
        let sock = match crate::net::udp_socket(bind, self.cfg.device.as_deref(), false)
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("TFTP: cannot open a transfer socket: {e}");
                return;
            }
        };
        let mut limits = self.cfg.limits.clone();
        let cap = self
            .stalls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cap(peer.ip());
        if let Some(c) = cap {
            limits.max_blksize = limits.max_blksize.min(c);
        }
        let records = self.records.clone();
        let stats = self.stats.clone();
        let stalls = self.stalls.clone();
        let newest = self.newest.clone();
        let ticket = newest.register(peer.ip(), &req.path);
        let key_path = req.path.clone();
        let slots = SpinBudget {
            sem: self.slots.clone(),
            max: self.cfg.max_transfers,
            spinners: self.spinners,
        };
        let spawned = self.pool.run(Box::new(move || {
                let given_up = || newest.superseded(peer.ip(), &req.path, ticket);
                let mut rec = transfer(sock, peer, req.path.clone(), file, req.options, limits, &cut, &given_up, &|| slots.allows());
                newest.done(peer.ip(), &req.path);
                rec.blksize_capped = stalls.lock().unwrap_or_else(|e| e.into_inner()).note(&rec);
                if let Some(c) = rec.blksize_capped {
                    tracing::warn!(peer = %rec.peer, path = %rec.path, "TFTP stopped at byte {} twice with blksize {}: offering this peer blksize {c} from now on", rec.bytes, rec.blksize);
                }
                if rec.outcome == Outcome::Complete {
                    stats.completed.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(peer = %rec.peer, path = %rec.path, bytes = rec.bytes, ms = rec.duration_ms, outcome = rec.outcome.name(), "TFTP transfer");
                let _ = records.send(rec);
                drop(permit);
                drop(peer_slot);
            }));
        if let Err(e) = spawned {
            // The slot and the peer's count went back with the closure.
            self.newest.done(peer.ip(), &key_path);
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%peer, "TFTP: cannot start a transfer thread: {e}");
            let _ = self
                .socket
                .send_to(&packet::error_packet(0, "server busy, try again"), peer)
                .await;
        }
    }
}

/// The longest a transfer thread blocks before it looks at the shutdown flag.
const CUT_POLL_MS: u64 = 250;

/// How long a transfer thread with nothing to do waits for the next transfer before it ends.
const THREAD_IDLE: Duration = Duration::from_secs(60);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Transfer threads, kept for the next transfer: a boot-looping fleet starts transfers all the
/// time, and a thread made and ended for each costs the allocator (glibc gives new threads
/// arenas of their own, which keep their memory). A transfer never waits for a thread: it
/// takes an idle one or a new one is made (at most one per transfer slot).
#[derive(Default)]
struct Pool {
    state: std::sync::Mutex<PoolState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct PoolState {
    /// Threads waiting for a job (each job pushed is taken by one of them).
    idle: usize,
    jobs: std::collections::VecDeque<Job>,
}

impl Pool {
    fn run(self: &Arc<Self>, job: Job) -> std::io::Result<()> {
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.idle > 0 {
                st.idle -= 1;
                st.jobs.push_back(job);
                self.wake.notify_one();
                return Ok(());
            }
        }
        let pool = self.clone();
        std::thread::Builder::new()
            .name("tftp-transfer".into())
            .stack_size(256 << 10)
            .spawn(move || pool.work(job))
            .map(drop)
    }

    fn work(&self, first: Job) {
        first();
        loop {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.idle += 1;
            let job = loop {
                if let Some(j) = st.jobs.pop_front() {
                    break j;
                }
                let (g, waited) = self
                    .wake
                    .wait_timeout(st, THREAD_IDLE)
                    .unwrap_or_else(|e| e.into_inner());
                st = g;
                if waited.timed_out() && st.jobs.is_empty() {
                    st.idle -= 1;
                    return;
                }
            };
            drop(st);
            job();
        }
    }
}

/// One transfer, on its own thread: the blocking socket waits for the client's next packet or
/// the state machine's deadline, whichever comes first. `asked_again` says whether the client
/// has since asked for the file again (looked at when a retransmission is due).
#[allow(clippy::too_many_arguments)]
fn transfer(
    sock: std::net::UdpSocket,
    peer: SocketAddr,
    path: String,
    file: bytes::Bytes,
    options: Vec<(String, String)>,
    limits: Limits,
    cut: &AtomicBool,
    asked_again: &dyn Fn() -> bool,
    may_spin: &dyn Fn() -> bool,
) -> TransferRecord {
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let size = file.len() as u64;
    let (mut t, first) = Transfer::start(file, &options, &limits, 0);
    for p in &first {
        let _ = sock.send_to(p, peer);
    }
    let mut buf = vec![0u8; 2048];
    // The receive timeout last set (a syscall: set again only when it changes).
    let mut timeout = 0;
    let mut spin = SpinHistory::default();
    while !t.is_finished() {
        if cut.load(Ordering::Relaxed) {
            let _ = sock.send_to(&packet::error_packet(0, "server shutting down"), peer);
            return record(
                peer,
                path,
                &t,
                size,
                start,
                Outcome::Protocol("cut at shutdown".into()),
            );
        }
        let due = t.deadline_ms().unwrap_or(0);
        let wait = due.saturating_sub(now()).clamp(1, CUT_POLL_MS);
        if wait != timeout {
            let _ = sock.set_read_timeout(Some(Duration::from_millis(wait)));
            timeout = wait;
        }
        let spins = spin.next(may_spin());
        let spun = spins.then(|| spin_recv(&sock, &mut buf)).flatten();
        if spins {
            spin.note(matches!(spun, Some((_, from)) if from == peer));
        }
        let got = match spun {
            Some(got) => Ok(got),
            None => sock.recv_from(&mut buf),
        };
        let out = match got {
            Ok((n, from)) if from == peer => t.on_packet(&buf[..n], now()),
            Ok((_, from)) => {
                // RFC 1350: a packet from another transfer ID gets ERROR 5, and ours goes on.
                let _ = sock.send_to(
                    &packet::error_packet(ErrorCode::UnknownTid as u16, "unknown transfer ID"),
                    from,
                );
                Vec::new()
            }
            Err(e) => {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    // Another error (an interrupted call): no spinning on it.
                    std::thread::sleep(Duration::from_millis(1));
                }
                if now() >= due {
                    match asked_again().then(|| t.abandon()).flatten() {
                        Some(err) => vec![err],
                        None => t.on_timeout(now()),
                    }
                } else {
                    Vec::new()
                }
            }
        };
        for p in &out {
            let _ = sock.send_to(p, peer);
        }
    }
    let outcome = t.outcome().cloned().unwrap_or(Outcome::TimedOut);
    record(peer, path, &t, size, start, outcome)
}

/// How long a transfer polls its socket for the client's answer before it sleeps in
/// `recvfrom`. A lock-step client on a LAN answers a block within tens of microseconds; a
/// thread put to sleep pays the scheduler's wake-up (an inter-processor interrupt and a
/// context switch) on every block, which at 512-byte blocks is most of the time a block takes.
const SPIN: Duration = Duration::from_micros(50);
/// Spins in a row that found nothing after which a transfer mostly sleeps at once (a client
/// slower than [`SPIN`]: firmware behind a real NIC's interrupt moderation, an emulated guest).
const SPIN_MISSES: u32 = 8;
/// How often such a transfer tries spinning again (its client may have sped up).
const SPIN_RETRY: u32 = 64;

/// Whether a transfer spins for its next packet. Spinning pays only for a client that answers
/// within [`SPIN`]: after [`SPIN_MISSES`] spins in a row that did not bring the client's own
/// packet (nothing, or a stranger's datagram: another sender cannot keep a transfer spinning),
/// it is tried again only every [`SPIN_RETRY`]-th wait.
#[derive(Debug, Default)]
struct SpinHistory {
    /// Waits so far.
    waits: u32,
    /// Spins in a row that missed.
    misses: u32,
}

impl SpinHistory {
    /// Whether the next wait spins, when the budget `allowed` it.
    fn next(&mut self, allowed: bool) -> bool {
        self.waits = self.waits.wrapping_add(1);
        allowed && (self.misses < SPIN_MISSES || self.waits.is_multiple_of(SPIN_RETRY))
    }

    /// What a spin brought: the client's own packet, or not.
    fn note(&mut self, hit: bool) {
        self.misses = if hit {
            0
        } else {
            self.misses.saturating_add(1)
        };
    }
}

/// The client's next datagram if one arrives within [`SPIN`] (non-blocking reads in a loop),
/// else `None`: the caller then sleeps in a blocking read. An error other than "nothing yet"
/// also ends the spin (the blocking read reports it).
fn spin_recv(sock: &std::net::UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    use nix::sys::socket::{recvmsg, MsgFlags, SockaddrIn};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    let start = Instant::now();
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<SockaddrIn>(sock.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
            Ok(m) => {
                let from = m.address?;
                return Some((
                    m.bytes,
                    SocketAddr::V4(SocketAddrV4::new(from.ip(), from.port())),
                ));
            }
            Err(nix::errno::Errno::EAGAIN) if start.elapsed() < SPIN => std::hint::spin_loop(),
            Err(_) => return None,
        }
    }
}

fn record(
    peer: SocketAddr,
    path: String,
    t: &Transfer,
    size: u64,
    start: Instant,
    outcome: Outcome,
) -> TransferRecord {
    TransferRecord {
        peer,
        path,
        bytes: t.bytes_acked(),
        size,
        duration_ms: start.elapsed().as_millis() as u64,
        blksize: t.blksize(),
        windowsize: t.windowsize(),
        outcome,
        blksize_capped: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn rec(
        ip: [u8; 4],
        path: &str,
        bytes: u64,
        blksize: usize,
        outcome: Outcome,
    ) -> TransferRecord {
        TransferRecord {
            peer: SocketAddr::from((ip, 2000)),
            path: path.into(),
            bytes,
            size: 1_000_000,
            duration_ms: 1,
            blksize,
            windowsize: 1,
            outcome,
            blksize_capped: None,
        }
    }

    #[test]
    fn spinning_stops_after_eight_misses_is_tried_every_64th_wait_and_resumes_on_a_hit() {
        let mut h = SpinHistory::default();
        assert!(!h.next(false), "outside the budget: never");
        for _ in 0..SPIN_MISSES {
            assert!(h.next(true));
            h.note(false);
        }
        // Waits 10 to 64 sleep at once; the 64th tries again, misses, and sleeping goes on.
        let tried: Vec<u32> = (10..=200).filter(|_| h.next(true)).collect();
        assert_eq!(tried.len(), 3, "only every 64th wait spins: {tried:?}");
        // A spin that brings the client's packet ends the sleeping.
        while !h.next(true) {}
        h.note(true);
        assert!(h.next(true) && h.next(true));
    }

    #[test]
    fn a_spin_returns_a_waiting_datagram_with_its_sender_and_gives_up_on_silence() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 64];
        let t0 = Instant::now();
        assert_eq!(
            spin_recv(&a, &mut buf),
            None,
            "nothing sent: nothing received"
        );
        // It gave up (the bound is SPIN; a descheduled test thread may take longer, never
        // forever).
        assert!(t0.elapsed() >= SPIN);
        b.send_to(b"\x00\x04\x00\x01", a.local_addr().unwrap())
            .unwrap();
        let mut got = None;
        for _ in 0..1000 {
            got = spin_recv(&a, &mut buf);
            if got.is_some() {
                break;
            }
        }
        assert_eq!(got, Some((4, b.local_addr().unwrap())));
        assert_eq!(&buf[..4], b"\x00\x04\x00\x01");
    }

    #[test]
    fn a_second_stall_at_the_same_block_caps_that_peer_only() {
        let mut s = Stalls::default();
        let a = [10, 0, 0, 5];
        assert_eq!(
            s.note(&rec(a, "shimx64.efi", 0, 1468, Outcome::TimedOut)),
            None
        );
        // Another place first: not the same stall.
        assert_eq!(
            s.note(&rec(a, "shimx64.efi", 2936, 1468, Outcome::TimedOut)),
            None
        );
        // Given up for the client's next request: stopped there too.
        assert_eq!(
            s.note(&rec(a, "shimx64.efi", 2936, 1468, Outcome::Abandoned)),
            Some(STALL_BLKSIZE)
        );
        assert_eq!(s.cap(IpAddr::from(a)), Some(STALL_BLKSIZE));
        assert_eq!(s.cap(IpAddr::from([10, 0, 0, 6])), None);
        // Already small, or ended by the client: no cap.
        let b = [10, 0, 0, 7];
        for _ in 0..3 {
            assert_eq!(s.note(&rec(b, "x", 0, 512, Outcome::TimedOut)), None);
            let e = Outcome::ClientError {
                code: 0,
                message: "no".into(),
            };
            assert_eq!(s.note(&rec(b, "x", 0, 1468, e)), None);
        }
        // Only the last block unacknowledged: a stall when that block is a large one, not when
        // it is short (a one-block initrd grub took and left with).
        let d = [10, 0, 0, 9];
        let last = |bytes: u64, size: u64| TransferRecord {
            size,
            ..rec(d, "initrd.img", bytes, 1468, Outcome::Unconfirmed)
        };
        for _ in 0..3 {
            assert_eq!(s.note(&last(0, 50)), None);
            assert_eq!(s.note(&last(1468, 1518)), None);
        }
        assert_eq!(s.cap(IpAddr::from(d)), None);
        assert_eq!(s.note(&last(1468, 2936)), None);
        assert_eq!(s.note(&last(1468, 2936)), Some(STALL_BLKSIZE));
        // A complete transfer in between clears the pattern.
        let c = [10, 0, 0, 8];
        s.note(&rec(c, "x", 0, 1468, Outcome::TimedOut));
        s.note(&rec(c, "y", 10, 1468, Outcome::Complete));
        assert_eq!(s.note(&rec(c, "x", 0, 1468, Outcome::TimedOut)), None);
    }
}
