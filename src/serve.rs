//! The composition root: `unbrick serve` builds the whole server here, in one place. The store
//! and its single writer (`fleet_service::FleetIo`), the boot policy (campaigns), the verified
//! image and rules, the DHCP, TFTP, HTTP and HTTPS drivers (`netboot-server`), the console and
//! admin API (`web-console`) and the campaign ticker; and the orderly shutdown.
use fleet::{BootPolicy, EventSource, Store};
use fleet_service::{now_ms, FleetIo};
use netboot_server::image::{Image, SignedRules};
use netboot_server::proto::dhcp as dhcp_core;
use netboot_server::proto::tftp as tftp_core;
use netboot_server::{dhcp, http, idle, net, tftp, tls, Booter, Error, TftpFiles};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DhcpMode {
    Proxy,
    Full,
    Off,
}

/// Everything `unbrick serve` decided, validated.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub interface: String,
    pub server_ip: Option<Ipv4Addr>,
    pub dhcp: DhcpMode,
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    pub http_port: u16,
    /// HTTPS (agent API, console, admin API) with the certificate `tls_cert`/`tls_key`.
    pub https_port: u16,
    pub tls_cert: std::path::PathBuf,
    pub tls_key: std::path::PathBuf,
    /// The key file sealing escrowed BitLocker keys (made when absent).
    pub escrow_key: std::path::PathBuf,
    pub tftp_port: u16,
    /// Non-standard DHCP ports, for tests only.
    pub dhcp_ports: Option<(u16, u16)>,
    pub secure_boot_off: bool,
    pub extra_cmdline: String,
    pub image_dir: std::path::PathBuf,
    pub rules_dir: std::path::PathBuf,
    pub trusted_key: signing::PublicKey,
    pub max_tftp_transfers: usize,
    /// HTTP and HTTPS connections without traffic for this long are closed.
    pub idle_timeout: Duration,
}

/// What the console needs besides the fleet.
pub(crate) struct ConsoleConfig {
    /// `tokens.json` of the data directory.
    pub tokens_file: std::path::PathBuf,
    /// The signed rules new campaigns run with ("id vN").
    pub rules_label: String,
}

/// A running server; dropping it does not stop it, call [`RunningServer::shutdown`].
pub(crate) struct RunningServer {
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub store: Arc<dyn Store>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight transfers finish (up to `grace`), flushes the store.
    pub(crate) async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(grace + Duration::from_secs(3), t).await;
        }
        if let Err(e) = self.store.flush() {
            tracing::error!("store flush at shutdown: {e}");
        }
    }
}

/// Validates the configuration, loads and verifies the image and rules, binds every socket, and
/// starts serving. `console` adds routes (the web console and admin API) to both HTTP and HTTPS;
/// it gets the fleet the server writes through. Errors are one line each, for the admin.
pub(crate) async fn start(
    cfg: ServerConfig,
    store: Arc<dyn Store>,
    policy: Arc<fleet::CampaignPolicy>,
    console: ConsoleConfig,
) -> Result<RunningServer, Error> {
    let boot_policy: Arc<dyn BootPolicy> = policy.clone();
    let iface = net::find_interface(&cfg.interface)?;
    let server_ip = cfg.server_ip.unwrap_or(iface.addr);
    if let Some((a, b)) = cfg.pool {
        if !iface.contains(a) || !iface.contains(b) || u32::from(a) > u32::from(b) {
            return Err(Error::Config(format!(
                "pool {a}-{b} is not inside {}'s subnet {}/{}; pass --pool FIRST-LAST within it",
                iface.name, iface.addr, iface.prefix_len
            )));
        }
    }
    if cfg.dhcp == DhcpMode::Full && cfg.pool.is_none() {
        return Err(Error::Config(
            "--dhcp full needs --pool FIRST-LAST (addresses to hand out)".into(),
        ));
    }
    let image = Image::load(&cfg.image_dir, &cfg.trusted_key).map_err(Error::Image)?;
    tracing::info!(
        "recovery image {} verified: {} artefacts ({})",
        image.manifest.image_version,
        image.manifest.artefacts.len(),
        image.names().collect::<Vec<_>>().join(", ")
    );
    if !image.payload_ready() {
        tracing::warn!("the image in {} has no kernel and initrd yet: hosts get a waiting screen until `unbrick image build` runs", cfg.image_dir.display());
    }
    let rules = SignedRules::load(&cfg.rules_dir, &cfg.trusted_key, now_ms() / 1000)?;
    let left = rules.rules.expires_unix().saturating_sub(now_ms() / 1000);
    if left < 7 * 86400 {
        tracing::warn!(
            "remediation rules {} expire in {} hours; sign a renewed set soon",
            rules.rules.id,
            left / 3600
        );
    }
    tracing::info!(
        "remediation rules {} v{} verified (expire {})",
        rules.rules.id,
        rules.rules.version,
        rules.rules.expires
    );

    let tls = tls::server_config(&cfg.tls_cert, &cfg.tls_key)?;
    let http_addr = SocketAddrV4::new(server_ip, cfg.http_port);
    let https_addr = SocketAddrV4::new(server_ip, cfg.https_port);
    let http_base = format!("http://{server_ip}:{}", cfg.http_port);
    let vault = fleet::escrow::vault::Vault::open(&cfg.escrow_key, true)
        .map_err(|e| Error::Config(e.to_string()))?;
    let fleet = Arc::new(FleetIo::new(store.clone(), boot_policy)?.with_vault(vault));
    let shared = Arc::new(Booter {
        fleet: fleet.clone(),
        image: Arc::new(image),
        rules,
        http_base: http_base.clone(),
        https_base: format!("https://{server_ip}:{}", cfg.https_port),
        server_ip,
        extra_cmdline: cfg.extra_cmdline.clone(),
    });
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Bind everything first so that a port in use fails before anything starts.
    let listener =
        net::tcp_listener(http_addr).map_err(|e| net::bind_error_of("HTTP", http_addr, &e))?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| Error::Bind(format!("HTTP: {e}")))?;
    let tls_listener =
        net::tcp_listener(https_addr).map_err(|e| net::bind_error_of("HTTPS", https_addr, &e))?;
    let https_addr = tls_listener
        .local_addr()
        .map_err(|e| Error::Bind(format!("HTTPS: {e}")))?;
    let tls_listener =
        tls::TlsListener::new(tls_listener, tls).map_err(|e| Error::Bind(format!("HTTPS: {e}")))?;
    let (rec_tx, mut rec_rx) = mpsc::unbounded_channel();
    let tftp_bind = SocketAddrV4::new(server_ip, cfg.tftp_port);
    let tftp = tftp::TftpServer::bind(
        tftp::TftpConfig {
            bind: tftp_bind,
            device: Some(cfg.interface.clone()),
            limits: tftp_core::Limits::default(),
            max_transfers: cfg.max_tftp_transfers,
        },
        Arc::new(TftpFiles(shared.clone())),
        rec_tx,
    )?;
    let tftp_addr = tftp
        .local_addr()
        .map_err(|e| Error::Bind(format!("TFTP: {e}")))?;
    let dhcp = match cfg.dhcp {
        DhcpMode::Off => None,
        mode => {
            let dcfg = dhcp_core::DhcpConfig {
                mode: if mode == DhcpMode::Full {
                    dhcp_core::Mode::Full
                } else {
                    dhcp_core::Mode::Proxy
                },
                server_ip,
                subnet_mask: iface.netmask(),
                router: cfg.router,
                dns: cfg.dns.clone(),
                lease_secs: cfg.lease_secs,
                http_base: http_base.clone(),
                secure_boot_off: cfg.secure_boot_off,
            };
            let pool = match (mode, cfg.pool) {
                (DhcpMode::Full, Some((a, b))) => Some(dhcp_core::pool::LeasePool::new(
                    a,
                    b,
                    server_ip,
                    store.leases()?,
                )),
                _ => None,
            };
            Some(dhcp::DhcpServer::bind(
                dcfg,
                &iface.name,
                iface.index,
                cfg.dhcp_ports,
                fleet.clone(),
                pool,
            )?)
        }
    };

    let console_state = web_console::Console::new(
        fleet.clone(),
        &console.tokens_file,
        policy,
        console.rules_label,
    );
    console_state.add_counters(tftp.stats.clone());
    if let Some(d) = &dhcp {
        console_state.add_counters(d.stats.clone());
    }
    let console = web_console::router(console_state.clone());
    let idle_timeout = cfg.idle_timeout;
    // Plain HTTP: boot scripts and artefacts (firmware speaks nothing else), the console and the
    // admin API. HTTPS: the same plus the agent API, which is served nowhere else.
    let app = http::router(shared.clone())
        .merge(console.clone())
        .into_make_service_with_connect_info::<SocketAddr>();
    let tls_app = http::router(shared.clone())
        .merge(netboot_server::agent_api::router(shared.clone()))
        .merge(console)
        .into_make_service_with_connect_info::<SocketAddr>();
    let stop = |mut srx: watch::Receiver<bool>| async move {
        while srx.changed().await.is_ok() {
            if *srx.borrow() {
                break;
            }
        }
    };
    let srx = rx.clone();
    tasks.push(tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = idle::IdleListener(listener, idle_timeout).tap_io(|_| {});
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop(srx))
            .await
        {
            tracing::error!("HTTP server: {e}");
        }
    }));
    let srx = rx.clone();
    tasks.push(tokio::spawn(async move {
        // tap_io: axum provides the peer address (ConnectInfo) for tapped custom listeners.
        use axum::serve::ListenerExt;
        let listener = idle::IdleListener(tls_listener, idle_timeout).tap_io(|_| {});
        if let Err(e) = axum::serve(listener, tls_app)
            .with_graceful_shutdown(stop(srx))
            .await
        {
            tracing::error!("HTTPS server: {e}");
        }
    }));
    tasks.push(tokio::spawn(tftp.run(rx.clone(), Duration::from_secs(10))));
    let fleet2 = fleet.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(r) = rec_rx.recv().await {
            let mac = fleet2.peer_mac(r.peer.ip());
            let msg = format!(
                "{} {}/{} bytes to {} in {} ms (blksize {}, windowsize {}): {}",
                r.path,
                r.bytes,
                r.size,
                r.peer,
                r.duration_ms,
                r.blksize,
                r.windowsize,
                match &r.outcome {
                    tftp_core::Outcome::ClientError { code, message } =>
                        format!("client ended it with error {code} ({message})"),
                    o => o.name().to_string(),
                }
            );
            match mac {
                Some(mac) => fleet2.event(mac, EventSource::Tftp, "tftp", msg, now_ms()),
                None => tracing::info!("TFTP from unknown host: {msg}"),
            }
        }
    }));
    if let Some(d) = dhcp {
        tasks.push(tokio::spawn(d.run(rx.clone())));
    }
    web_console::campaigns::spawn_ticker(console_state);
    // Periodic flush (events are durable within 250 ms; leases and agent reports flush at once)
    // and a watch on the image directory.
    let store2 = store.clone();
    let shared2 = shared.clone();
    let mut prx = rx.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut n = 0u64;
        let mut warned = Vec::new();
        loop {
            tokio::select! {
                _ = prx.changed() => if *prx.borrow() { break },
                _ = tick.tick() => {
                    let s = store2.clone();
                    let _ = tokio::task::spawn_blocking(move || s.flush()).await;
                    n += 1;
                    if n.is_multiple_of(240) {
                        let img = shared2.image.clone();
                        let diff = tokio::task::spawn_blocking(move || img.changed_on_disk()).await.unwrap_or_default();
                        if !diff.is_empty() && diff != warned {
                            tracing::warn!("image files changed on disk after start; still serving the verified copy loaded at start (re-sign and restart to change it): {}", diff.join("; "));
                        }
                        warned = diff;
                    }
                }
            }
        }
    }));
    // Every machine answered needs an ARP entry; Linux keeps at most gc_thresh3 (1024 by
    // default, for all namespaces together) and drops packets beyond it.
    if let Some(t) = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if t < 4096 {
            tracing::warn!("the kernel's ARP table holds at most {t} entries (net.ipv4.neigh.default.gc_thresh3): with more machines than that on this segment replies are dropped (\"neighbor table overflow\"). For large fleets: sysctl -w net.ipv4.neigh.default.gc_thresh3=16384 (dist/99-unbrick.conf)");
        }
    }
    tracing::info!(
        "serving on {} ({}): DHCP {:?}, TFTP {}, HTTP {}, HTTPS {}",
        iface.name,
        server_ip,
        cfg.dhcp,
        tftp_addr,
        http_addr,
        https_addr
    );
    Ok(RunningServer {
        shutdown: tx,
        tasks,
        http_addr,
        https_addr,
        store,
    })
}
