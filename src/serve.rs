//! The composition root: `unbrick serve` builds the whole server here, in one place. The store
//! and its single writer (`fleet_service::FleetIo`), the boot policy (campaigns), the verified
//! image and rules, the DHCP, TFTP, HTTP and HTTPS drivers (`netboot-server`), the console and
//! admin API (`web-console`) and the campaign ticker; and the orderly shutdown.
use crate::cli::ServeArgs;
use crate::config::DataDir;
use crate::{settings, Fail};
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

pub(crate) use crate::settings::DhcpMode;

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
    /// The key file sealing management-controller secrets (made when absent).
    pub bmc_key: std::path::PathBuf,
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
    /// Seconds between a waiting machine's polls of its boot script.
    pub waiting_room_poll_secs: u32,
    /// How long a per-boot token is valid.
    pub token_lifetime: Duration,
    /// Management controllers: timeout per request, attempts.
    pub bmc_limits: unbrick_oob::drive::Limits,
    /// Host records at most, and strangers admitted per second.
    pub max_hosts: usize,
    pub new_hosts_per_sec: u32,
    /// Events kept per host timeline.
    pub events_per_host: usize,
}

/// A running server; dropping it does not stop it, call [`RunningServer::shutdown`].
pub(crate) struct RunningServer {
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    /// The console's state (its health banner is refreshed from outside).
    pub console: Arc<web_console::Console>,
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
    tokens_file: &std::path::Path,
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
    // What new campaigns record they run with.
    let rules_label = format!("{} v{}", rules.rules.id, rules.rules.version);

    let tls = tls::server_config(&cfg.tls_cert, &cfg.tls_key)?;
    let http_addr = SocketAddrV4::new(server_ip, cfg.http_port);
    let https_addr = SocketAddrV4::new(server_ip, cfg.https_port);
    let http_base = format!("http://{server_ip}:{}", cfg.http_port);
    let vault = fleet::escrow::vault::Vault::open(&cfg.escrow_key, true)
        .map_err(|e| Error::Config(e.to_string()))?;
    let bmc_vault = fleet::escrow::vault::Vault::open(&cfg.bmc_key, true)
        .map_err(|e| Error::Config(e.to_string()))?;
    let fleet = Arc::new(
        FleetIo::new(store.clone(), boot_policy)?
            .with_vault(vault)
            .with_bmc_vault(bmc_vault)
            .with_admission(cfg.max_hosts, cfg.new_hosts_per_sec)
            .with_event_retention(cfg.events_per_host)
            .with_oob(Arc::new(netboot_server::oob::Controllers::new(
                iface.name.clone(),
                cfg.bmc_limits,
            ))),
    );
    // The campaigns were persisted up to a second before a crash, the host records before
    // each answer: the slots follow the records.
    for note in fleet.with_hosts(|h| policy.reconcile(h, now_ms())) {
        tracing::info!("{note}");
    }
    // Full mode: the lease pool, shared by the DHCP server (which hands out leases) and the
    // boot edge (which binds a per-boot token to the leased address).
    let pool = match (cfg.dhcp, cfg.pool) {
        (DhcpMode::Full, Some((a, b))) => Some(Arc::new(std::sync::Mutex::new(
            dhcp_core::pool::LeasePool::new(a, b, server_ip, store.leases()?),
        ))),
        _ => None,
    };
    let shared = Arc::new(Booter {
        fleet: fleet.clone(),
        image: Arc::new(image),
        rules,
        http_base: http_base.clone(),
        https_base: format!("https://{server_ip}:{}", cfg.https_port),
        server_ip,
        extra_cmdline: cfg.extra_cmdline.clone(),
        poll_secs: cfg.waiting_room_poll_secs,
        neighbours: net::Neighbours::new(&iface.name, Some(iface.clone())),
        leases: pool.clone(),
        token_lifetime_ms: cfg.token_lifetime.as_millis() as u64,
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
            max_per_peer: tftp::MAX_PER_PEER,
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

    let console_state = web_console::Console::new(fleet.clone(), tokens_file, policy, rules_label);
    console_state.add_counters(tftp.stats.clone());
    if let Some(d) = &dhcp {
        console_state.add_counters(d.stats.clone());
    }
    let console = web_console::router(console_state.clone());
    let idle_timeout = cfg.idle_timeout;
    // Plain HTTP: boot scripts and artefacts (firmware speaks nothing else); the console and the
    // admin API only to this machine itself (browsers elsewhere are redirected to HTTPS, bearer
    // tokens refused). HTTPS: boot scripts and artefacts, the console, the admin API and the
    // agent API, which is served nowhere else.
    let plain = web_console::transport::PlainHttp {
        https_base: format!("https://{server_ip}:{}", cfg.https_port),
        local: vec![
            std::net::IpAddr::V4(server_ip),
            std::net::IpAddr::V4(iface.addr),
        ],
    };
    let app = http::router(shared.clone())
        .merge(web_console::plain_http_router(console_state.clone(), plain))
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
    // Each listener's connections capped in all and per address (slowloris, connection floods).
    let max_conn = idle::MAX_CONNECTIONS.min(nofile_limit() / 3);
    let http_caps = idle::Caps::new(max_conn, idle::MAX_PER_ADDRESS);
    let https_caps = idle::Caps::new(max_conn, idle::MAX_PER_ADDRESS);
    let srx = rx.clone();
    tasks.push(tokio::spawn(async move {
        use axum::serve::ListenerExt;
        // Artefact bodies (slices of the sealed image) go out with sendfile.
        let listener = netboot_server::sealed::ZeroCopyListener(listener);
        let listener = idle::IdleListener::new(listener, idle_timeout, http_caps).tap_io(|_| {});
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
        let listener =
            idle::IdleListener::new(tls_listener, idle_timeout, https_caps).tap_io(|_| {});
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
                Some(mac) => {
                    fleet2.event(mac, EventSource::Tftp, "tftp", msg, now_ms());
                    if let Some(c) = r.blksize_capped {
                        let why = format!(
                            "{} stopped at byte {} with blksize {} twice: this host is offered blksize {c} from its next try",
                            r.path, r.bytes, r.blksize
                        );
                        fleet2.event(mac, EventSource::Tftp, "tftp-blksize", why, now_ms());
                    }
                }
                None => tracing::info!("TFTP from unknown host: {msg}"),
            }
        }
    }));
    if let Some(d) = dhcp {
        tasks.push(tokio::spawn(d.run(rx.clone())));
    }
    web_console::campaigns::spawn_ticker(console_state.clone());
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
        console: console_state,
    })
}

impl ServeArgs {
    /// The flags (and UNBRICK_* variables) as the top settings layer.
    pub(crate) fn layer(&self) -> Result<settings::Settings, Fail> {
        Ok(settings::Settings {
            interface: self.interface.clone(),
            server_ip: self.server_ip,
            dhcp: self.dhcp,
            pool: self
                .pool
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e: String| Fail(format!("--{e}")))?,
            router: self.router,
            dns: (!self.dns.is_empty()).then(|| self.dns.clone()),
            lease_secs: self.lease_secs,
            http_port: self.http_port,
            https_port: self.https_port,
            tftp_port: self.tftp_port,
            require_approval: self.require_approval.then_some(true),
            secure_boot_off: self.secure_boot_off.then_some(true),
            kernel_cmdline: self.kernel_cmdline.clone(),
            max_tftp_transfers: None,
            idle_timeout_secs: self.idle_timeout_secs,
            waiting_room_poll_secs: self.waiting_room_poll_secs,
            token_lifetime_mins: self.token_lifetime_mins,
            bmc_timeout_secs: self.bmc_timeout_secs,
            bmc_attempts: self.bmc_attempts,
            max_hosts: self.max_hosts,
            new_hosts_per_sec: self.new_hosts_per_sec,
            store_reserve_mb: self.store_reserve_mb,
            store_cache_mb: self.store_cache_mb,
            events_per_host: self.events_per_host,
        })
    }
}

/// `unbrick serve`: the settings layers resolved, the server composed and run until SIGINT or
/// SIGTERM, then shut down in order.
pub(crate) fn run(a: ServeArgs) -> Result<(), Fail> {
    let d = DataDir(a.data_dir.clone());
    if !d.config().exists() && !d.store().exists() {
        return Err(Fail(format!(
            "{} is not an unbrick data directory; run `unbrick init --data-dir {}` first",
            a.data_dir.display(),
            a.data_dir.display()
        )));
    }
    let s = crate::config::resolved(&a, &d)?;
    let interface = s.interface.clone().ok_or_else(|| Fail("no interface: pass --interface IF (or set UNBRICK_INTERFACE, or [serve] interface in unbrick.toml)".into()))?;
    let dhcp_ports = match &a.dhcp_ports {
        Some(p) => {
            let (x, y) = p
                .split_once(',')
                .ok_or_else(|| Fail("--dhcp-ports: expected \"67,4011\"".into()))?;
            Some((
                x.parse()
                    .map_err(|_| Fail("--dhcp-ports: bad port".into()))?,
                y.parse()
                    .map_err(|_| Fail("--dhcp-ports: bad port".into()))?,
            ))
        }
        None => None,
    };
    let trusted = signing::PublicKey::load(&d.public_key()).map_err(|e| {
        Fail(format!(
            "{e} (the trusted signing key; `unbrick init` writes it)"
        ))
    })?;
    let extra_cmdline = s.kernel_cmdline.clone().unwrap_or_default();
    netboot_server::booter::check_extra_cmdline(&extra_cmdline)
        .map_err(|e| Fail(format!("kernel command line: {e}")))?;
    // Ranges: the flags' through clap, the configuration file's in ConfigFile::load.
    let poll_secs = s
        .waiting_room_poll_secs
        .unwrap_or(netboot_server::booter::WAITING_ROOM_POLL_SECS);
    // Every field below has a built-in default (settings::Settings::defaults).
    let cfg = ServerConfig {
        interface,
        server_ip: s.server_ip,
        dhcp: s.dhcp.unwrap_or_default(),
        pool: s.pool.map(|p| (p.0, p.1)),
        router: s.router,
        dns: s.dns.clone().unwrap_or_default(),
        lease_secs: s.lease_secs.unwrap_or_default(),
        http_port: s.http_port.unwrap_or_default(),
        https_port: s.https_port.unwrap_or_default(),
        tls_cert: d.tls_cert(),
        tls_key: d.tls_key(),
        escrow_key: d.escrow_key(),
        bmc_key: d.bmc_key(),
        tftp_port: s.tftp_port.unwrap_or_default(),
        dhcp_ports,
        secure_boot_off: s.secure_boot_off.unwrap_or_default(),
        extra_cmdline,
        image_dir: d.image(),
        rules_dir: d.rules(),
        trusted_key: trusted,
        max_tftp_transfers: s.max_tftp_transfers.unwrap_or_default(),
        idle_timeout: Duration::from_secs(s.idle_timeout_secs.unwrap_or_default()),
        waiting_room_poll_secs: poll_secs,
        token_lifetime: Duration::from_secs(s.token_lifetime_mins.unwrap_or_default() * 60),
        max_hosts: s
            .max_hosts
            .unwrap_or(fleet_service::fleetio::MAX_HOSTS as u64) as usize,
        new_hosts_per_sec: s
            .new_hosts_per_sec
            .unwrap_or(fleet_service::fleetio::NEW_HOSTS_PER_SEC),
        events_per_host: s
            .events_per_host
            .unwrap_or(fleet_service::fleetio::MAX_EVENTS_PER_HOST as u64)
            as usize,
        bmc_limits: unbrick_oob::drive::Limits {
            timeout: Duration::from_secs(s.bmc_timeout_secs.unwrap_or(10)),
            attempts: s.bmc_attempts.unwrap_or(3),
            backoff: Duration::from_secs(2),
        },
    };
    let (fp, made) = d.ensure_tls().map_err(Fail)?;
    if made {
        eprintln!("unbrick: made a TLS certificate {} ({fp}); rebuild the image (unbrick image build) so the agent pins it", d.tls_cert().display());
    }
    let policy = fleet::DefaultPolicy {
        require_approval: s.require_approval.unwrap_or_default(),
    };
    let proxy = cfg.dhcp == DhcpMode::Proxy;
    let tokens_file = d.tokens();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cache = s.store_cache_mb.unwrap_or(fleet::store::DEFAULT_CACHE >> 20) << 20;
        let store = fleet::SledStore::open_with_cache(&d.store(), cache).map_err(|e| Fail(format!("{e} (is another `unbrick serve` running on this data directory?)")))?
            .with_reserve(s.store_reserve_mb.unwrap_or(fleet::store::DEFAULT_RESERVE >> 20) << 20);
        let store: Arc<dyn Store> = Arc::new(store);
        // What `unbrick doctor` would say (expiry ahead, the shim's CA, the clock, space),
        // logged before serving, then on the console and in /metrics, checked again hourly.
        let health = crate::doctor::at_serve_start(&d, &s, store.hosts().map(|h| h.len() as u64).unwrap_or(0));
        let campaigns = store.campaigns().map_err(|e| Fail(e.to_string()))?;
        let policy = Arc::new(fleet::CampaignPolicy::new(policy, proxy, campaigns));
        let server = start(cfg, store, policy, &tokens_file).await?;
        *server.console.health.write().unwrap() = health;
        {
            let (console, d, s) = (server.console.clone(), d.clone(), s.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(3600));
                every.tick().await;
                loop {
                    every.tick().await;
                    let (d, s, hosts) = (d.clone(), s.clone(), console.fleet.hosts().len() as u64);
                    if let Ok(h) = tokio::task::spawn_blocking(move || crate::doctor::health(&d, &s, hosts, false)).await {
                        *console.health.write().unwrap() = h;
                    }
                }
            });
        }
        if web_console::tokens::TokenBook::new(&tokens_file).list().map(|t| t.is_empty()).unwrap_or(true) {
            tracing::warn!("no admin tokens yet: make one with `unbrick tokens create --name NAME --data-dir {}` to use the console and API", d.0.display());
        }
        tracing::info!("console: http://{} and https://{} (certificate {fp})", server.http_addr, server.https_addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down: letting transfers in flight finish (up to 10 s), then flushing the store");
        server.shutdown(Duration::from_secs(10)).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Raises the soft open-files limit to the hard one (systemd's LimitNOFILE sets the hard one;
/// a shell's soft default of 1,024 would stop accepts and TFTP sockets long before the caps)
/// and returns it.
fn nofile_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                return hard as usize;
            }
            soft as usize
        }
        Err(_) => 1024,
    }
}
