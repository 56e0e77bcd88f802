//! The tokio DHCP driver: sockets on :67 and :4011 bound to one interface, IP_PKTINFO on every
//! datagram so replies leave on the interface the request came in on, lease changes made durable
//! before a reply is sent.
use crate::Error;
use dhcproto::{Encodable, Encoder};
use fleet::lifecycle::Layer2;
use fleet_service::{now_ms, FleetIo};
use netboot_proto::dhcp::decide::{decide, parse, Dest, DhcpConfig, LeaseChange, Via, PXE_PORT};
use netboot_proto::dhcp::pool::LeasePool;
use nix::libc;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
};
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// What the DHCP driver did, counted (shown in /metrics).
#[derive(Debug, Default)]
pub struct DhcpStats {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Dropped as malformed.
    pub dropped_malformed: AtomicU64,
    /// Dropped because MAX_IN_FLIGHT requests were already being handled.
    pub dropped_overload: AtomicU64,
    /// Replies sent.
    pub answered: AtomicU64,
    /// Requests decided with no reply.
    pub silent: AtomicU64,
}

impl fleet_service::metrics::Counters for DhcpStats {
    fn counters(&self) -> Vec<fleet_service::metrics::Counter> {
        use fleet_service::metrics::Counter;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            Counter {
                name: "unbrick_dhcp_received_total",
                help: "DHCP datagrams received.",
                value: v(&self.received),
            },
            Counter {
                name: "unbrick_dhcp_answered_total",
                help: "DHCP replies sent.",
                value: v(&self.answered),
            },
            Counter {
                name: "unbrick_dhcp_silent_total",
                help: "DHCP requests decided with no reply (not ours to answer).",
                value: v(&self.silent),
            },
            Counter {
                name: "unbrick_dhcp_dropped_malformed_total",
                help: "DHCP datagrams dropped as malformed.",
                value: v(&self.dropped_malformed),
            },
            Counter {
                name: "unbrick_dhcp_dropped_overload_total",
                help: "DHCP datagrams dropped because too many were in flight.",
                value: v(&self.dropped_overload),
            },
        ]
    }
}

/// The DHCP driver: sockets on :67 and :4011 of one interface.
pub struct DhcpServer {
    sockets: Vec<(u16, Arc<UdpSocket>)>,
    cfg: DhcpConfig,
    ifindex: u32,
    fleet: Arc<FleetIo>,
    pool: Option<Arc<Mutex<LeasePool>>>,
    /// The Ethernet sources of requests (None without CAP_NET_RAW: no layer-2 view).
    witness: Option<crate::l2::Witness>,
    /// Its counters.
    pub stats: Arc<DhcpStats>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Requests handled at once; beyond this, packets are dropped (and counted).
pub const MAX_IN_FLIGHT: usize = 512;

#[derive(Clone, Copy)]
struct Received {
    len: usize,
    src: SocketAddrV4,
    ifindex: Option<u32>,
}

impl DhcpServer {
    /// Binds :67 and :4011 on `device`. `pool` is `Some` in full mode.
    pub fn bind(
        cfg: DhcpConfig,
        device: &str,
        ifindex: u32,
        port_base: Option<(u16, u16)>,
        fleet: Arc<FleetIo>,
        pool: Option<Arc<Mutex<LeasePool>>>,
    ) -> Result<Self, Error> {
        let (p67, p4011) = port_base.unwrap_or((67, PXE_PORT));
        let mut sockets = Vec::new();
        for port in [p67, p4011] {
            let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            let std = crate::net::udp_socket(addr, Some(device), true)
                .map_err(|e| crate::net::bind_error_of("DHCP", addr, &e))?;
            setsockopt(&std, sockopt::Ipv4PacketInfo, &true)
                .map_err(|e| Error::Bind(format!("DHCP: IP_PKTINFO: {e}")))?;
            let s = UdpSocket::from_std(std).map_err(|e| Error::Bind(format!("DHCP: {e}")))?;
            // Decisions are made as for the standard ports whatever port numbers tests use.
            sockets.push((if port == p67 { 67 } else { PXE_PORT }, Arc::new(s)));
        }
        Ok(Self {
            sockets,
            cfg,
            ifindex,
            fleet,
            pool,
            witness: match crate::l2::Witness::start(ifindex) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("no layer-2 view of DHCP on {device} ({e}): a Windows DHCP request is taken as the host's return without checking its frame's source");
                    None
                }
            },
            stats: Arc::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// Serves until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let me = Arc::new(self);
        let mut tasks = Vec::new();
        for (port, sock) in me.sockets.clone() {
            let me = me.clone();
            let mut shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 1500];
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => if *shutdown.borrow() { break },
                        r = recv(&sock, &mut buf) => match r {
                            Ok(rx) => {
                                // Bounded concurrency: both cores decide and record while the
                                // socket keeps draining; past the bound a packet is dropped and
                                // counted (clients retransmit), never queued without limit.
                                let Ok(permit) = me.in_flight.clone().try_acquire_owned() else {
                                    me.stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                };
                                let data = buf[..rx.len].to_vec();
                                let (me, sock) = (me.clone(), sock.clone());
                                tokio::spawn(async move {
                                    me.handle(port, &sock, &data, rx).await;
                                    drop(permit);
                                });
                            }
                            Err(e) => tracing::warn!("DHCP receive: {e}"),
                        }
                    }
                }
            }));
        }
        if me.pool.is_some() {
            let me2 = me.clone();
            let mut shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => if *shutdown.borrow() { break },
                        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => me2.expire_leases(),
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    fn expire_leases(&self) {
        let Some(pool) = &self.pool else { return };
        let gone = pool.lock().unwrap().expire(now_ms());
        for l in gone {
            let _ = self.fleet.store().remove_lease(l.ip);
        }
    }

    async fn handle(&self, port: u16, sock: &UdpSocket, datagram: &[u8], rx: Received) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if rx.ifindex.is_some_and(|i| i != self.ifindex) {
            return;
        }
        let inb = match parse(datagram) {
            Ok(i) => i,
            Err(d) => {
                self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(src = %rx.src, "DHCP dropped: {}", d.reason());
                return;
            }
        };
        let now = now_ms();
        let host = self.fleet.host(inb.mac);
        let outcome = {
            let mut guard = self.pool.as_ref().map(|p| p.lock().unwrap());
            decide(
                &inb,
                Via { port, src: rx.src },
                host.as_ref(),
                self.fleet.policy(),
                &self.cfg,
                guard.as_deref_mut(),
                now,
            )
        };
        // Durable before acknowledged: a lease is on disk before the client hears of it.
        if !outcome.lease_changes.is_empty() {
            let store = self.fleet.store();
            for c in &outcome.lease_changes {
                let r = match c {
                    LeaseChange::Put(l) => store.put_lease(l),
                    LeaseChange::Remove(ip) => store.remove_lease(*ip),
                };
                if let Err(e) = r {
                    tracing::error!("DHCP: cannot record lease: {e}; not answering");
                    return;
                }
            }
            if outcome
                .reply
                .as_ref()
                .is_some_and(|r| r.msg.opts().msg_type() == Some(dhcproto::v4::MessageType::Ack))
            {
                let s = self.fleet.store_arc();
                if let Err(e) = tokio::task::spawn_blocking(move || s.flush())
                    .await
                    .unwrap_or_else(|e| Err(fleet::StoreError::Rejected(e.to_string())))
                {
                    tracing::error!(
                        "DHCP: cannot flush the store: {e}; not acknowledging the lease"
                    );
                    return;
                }
            }
        }
        let ip_hint = match (&outcome.reply, port) {
            (Some(r), _) if !r.msg.yiaddr().is_unspecified() => Some(r.msg.yiaddr()),
            _ if !inb.msg.ciaddr().is_unspecified() => Some(inb.msg.ciaddr()),
            (_, PXE_PORT) => Some(*rx.src.ip()),
            _ => None,
        };
        // Windows back counts as a recovery: only if the frame came from that MAC, where the
        // server sees layer 2 (not for a relayed request: its frame is the relay's).
        let l2 = match (&self.witness, inb.kind) {
            (Some(w), fleet::ClientKind::Windows) if inb.msg.giaddr().is_unspecified() => {
                match w
                    .source_within(inb.msg.xid(), inb.mac, std::time::Duration::from_millis(50))
                    .await
                {
                    Some(src) if src == inb.mac => Layer2::Match,
                    Some(src) => Layer2::Mismatch(src),
                    None => Layer2::Unseen,
                }
            }
            _ => Layer2::Unseen,
        };
        let mut what = inb.describe(port, &outcome);
        if let Layer2::Mismatch(src) = l2 {
            // Not a retransmission of the host's own packet: recorded on its own.
            what.push_str(&format!(" (frame from Ethernet source {src})"));
        }
        self.fleet
            .dhcp_seen(inb.mac, inb.seen(ip_hint, l2), &inb.type_name(), what, now);
        let Some(reply) = outcome.reply else {
            self.stats.silent.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut buf = Vec::with_capacity(400);
        if let Err(e) = reply.msg.encode(&mut Encoder::new(&mut buf)) {
            tracing::error!("DHCP: cannot encode reply: {e}");
            return;
        }
        let dest = match reply.dest {
            Dest::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
            Dest::Unicast(a) | Dest::Relay(a) => a,
        };
        // Test set-ups may run clients on other ports; replies to :68 follow the client's port.
        let dest =
            if matches!(reply.dest, Dest::Broadcast) && rx.src.port() != 68 && rx.src.port() != 0 {
                SocketAddrV4::new(Ipv4Addr::BROADCAST, rx.src.port())
            } else {
                dest
            };
        match send(sock, &buf, dest, self.ifindex, self.cfg.server_ip).await {
            Ok(_) => {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(%dest, "DHCP send: {e}"),
        }
    }
}

async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Received> {
    sock.async_io(Interest::READABLE, || {
        let mut iov = [IoSliceMut::new(buf)];
        let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
        let msg = recvmsg::<SockaddrIn>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
        let mut ifindex = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                    ifindex = Some(info.ipi_ifindex as u32);
                }
            }
        }
        let src = msg
            .address
            .map(|a| SocketAddrV4::new(a.ip(), a.port()))
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        Ok(Received {
            len: msg.bytes,
            src,
            ifindex,
        })
    })
    .await
}

async fn send(
    sock: &UdpSocket,
    data: &[u8],
    dest: SocketAddrV4,
    ifindex: u32,
    source: Ipv4Addr,
) -> std::io::Result<usize> {
    let info = libc::in_pktinfo {
        ipi_ifindex: ifindex as libc::c_int,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(source).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let to = SockaddrIn::from(dest);
    sock.async_io(Interest::WRITABLE, || {
        let iov = [IoSlice::new(data)];
        sendmsg(
            sock.as_raw_fd(),
            &iov,
            &[ControlMessage::Ipv4PacketInfo(&info)],
            MsgFlags::empty(),
            Some(&to),
        )
        .map_err(std::io::Error::from)
    })
    .await
}
