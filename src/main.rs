//! `unbrick`: command-line interface and wiring. Protocol and domain logic live in the workspace
//! crates; this file only parses flags, merges configuration and calls them.
#![forbid(unsafe_code)]

mod client;
mod config;
mod demo;
mod init;
mod serve;

use clap::{Args, Parser, Subcommand, ValueEnum};
use config::{ConfigFile, DataDir};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "unbrick",
    version,
    about = "Network-boot recovery of boot-looping Windows fleets",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a data directory: configuration, signing key, boot loaders, signed rules, store.
    Init {
        #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
        data_dir: PathBuf,
        /// Use this existing signing key instead of making one.
        #[arg(long)]
        signing_key: Option<PathBuf>,
    },
    /// Serve DHCP (proxy or full), TFTP and HTTP boot on one interface.
    Serve(ServeArgs),
    /// Signing keys and escrowed BitLocker recovery keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Recovery images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Signed remediation rules.
    #[command(subcommand)]
    Rules(RulesCmd),
    /// The fleet's hosts: from the running server's API (--server, --token) or the data directory.
    #[command(subcommand)]
    Hosts(HostsCmd),
    /// Admin API tokens (for scripts and for logging in to the console).
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// The demo lab: a namespace with QEMU machines in a boot loop, the server, the console.
    Demo(demo::DemoArgs),
    /// Staged recovery campaigns (through the running server's API).
    #[command(subcommand)]
    Campaign(CampaignCmd),
}

#[derive(Subcommand)]
pub enum CampaignCmd {
    /// Create a campaign (a draft: nothing happens until `campaign start`).
    Create {
        #[arg(long)]
        name: String,
        /// Every known host.
        #[arg(long, conflicts_with_all = ["site", "tag", "hosts"])]
        all: bool,
        #[arg(long, conflicts_with_all = ["tag", "hosts"])]
        site: Option<String>,
        #[arg(long, conflicts_with = "hosts")]
        tag: Option<String>,
        /// Explicit MAC addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Wave sizes, comma-separated: hosts or cumulative percentages, e.g. 5,10%,50%,100%.
        #[arg(long, value_delimiter = ',', required = true)]
        waves: Vec<String>,
        /// At most this many hosts in the payload at once.
        #[arg(long, default_value_t = 50)]
        concurrency: u32,
        /// Gate: at least this many hosts of a wave succeeded.
        #[arg(long, default_value_t = 1)]
        min_success: u32,
        /// Gate: at most this share of a wave failed (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0)]
        max_failure_rate: f64,
        /// Gate: a wave stays open at least this long before the next opens.
        #[arg(long, default_value_t = 0)]
        soak_minutes: u64,
        /// A remediated host not seen back in Windows within this time is `unverified`.
        #[arg(long)]
        verify_minutes: Option<u64>,
        /// A host with no result this long after getting the payload failed.
        #[arg(long, default_value_t = 30)]
        host_timeout_minutes: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Every campaign with its state and waves.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// One campaign: waves, gates, history.
    Show {
        id: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Freeze the members into waves and open the first.
    Start {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Let hosts in the payload finish; start no new one.
    Pause {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Go on after a pause or a halt (after a halt: the next wave opens).
    Resume {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stop for good: its hosts boot locally.
    Abort {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Put back what the campaign quarantined (restore mode on each host's next boot).
    Rollback {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Make a token; it is shown once (only its hash is kept).
    Create {
        #[arg(long)]
        name: String,
        /// May read but not change anything.
        #[arg(long)]
        read_only: bool,
        #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
        data_dir: PathBuf,
    },
    /// Token names and scopes (never the tokens).
    List {
        #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
        data_dir: PathBuf,
    },
    /// Remove a token; a running server stops accepting it at once.
    Revoke {
        name: String,
        #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
        data_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum DhcpArg {
    Proxy,
    Full,
    Off,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
    data_dir: PathBuf,
    /// The recovery LAN interface (nothing is served on any other).
    #[arg(long, env = "UNBRICK_INTERFACE")]
    interface: Option<String>,
    /// Address clients reach us on (default: the interface's IPv4 address).
    #[arg(long, env = "UNBRICK_SERVER_IP")]
    server_ip: Option<Ipv4Addr>,
    /// proxy: beside the office DHCP server; full: hand out addresses; off: no DHCP.
    #[arg(long, env = "UNBRICK_DHCP", value_enum)]
    dhcp: Option<DhcpArg>,
    /// Full mode: FIRST-LAST addresses to hand out.
    #[arg(long, env = "UNBRICK_POOL")]
    pool: Option<String>,
    #[arg(long, env = "UNBRICK_ROUTER")]
    router: Option<Ipv4Addr>,
    #[arg(long, env = "UNBRICK_DNS", value_delimiter = ',')]
    dns: Vec<Ipv4Addr>,
    #[arg(long, env = "UNBRICK_LEASE_SECS")]
    lease_secs: Option<u32>,
    #[arg(long, env = "UNBRICK_HTTP_PORT")]
    http_port: Option<u16>,
    /// HTTPS port: agent API (certificate pinned by the agent), console and admin API.
    #[arg(long, env = "UNBRICK_HTTPS_PORT")]
    https_port: Option<u16>,
    /// Hand out the payload only to hosts an admin approved.
    #[arg(long, env = "UNBRICK_REQUIRE_APPROVAL")]
    require_approval: bool,
    #[arg(long, env = "UNBRICK_TFTP_PORT")]
    tftp_port: Option<u16>,
    /// Close an HTTP/HTTPS connection after this many seconds without traffic (default 60).
    #[arg(long, env = "UNBRICK_IDLE_TIMEOUT_SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    idle_timeout_secs: Option<u64>,
    /// UEFI clients get snponly.efi instead of shim (only where Secure Boot is off everywhere).
    #[arg(long, env = "UNBRICK_SECURE_BOOT_OFF")]
    secure_boot_off: bool,
    /// Extra words for the recovery kernel command line.
    #[arg(long, env = "UNBRICK_KERNEL_CMDLINE")]
    kernel_cmdline: Option<String>,
    /// Testing only: DHCP server and PXE ports instead of 67 and 4011, as "67,4011".
    #[arg(long, env = "UNBRICK_DHCP_PORTS", hide = true)]
    dhcp_ports: Option<String>,
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Write a new Ed25519 key pair: DIR/signing.key (PKCS#8, 0600) and DIR/signing.pub.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// Import escrowed BitLocker recovery keys from an AD, Entra ID / Intune or plain CSV export.
    ///
    /// Active Directory: msFVE-RecoveryGuid, msFVE-RecoveryPassword, and ComputerName or the
    /// DistinguishedName. Entra ID / Intune: Device name, Key ID, Recovery key. Plain:
    /// protector_id,recovery_password[,hostname]. Bad rows are reported by line, the rest
    /// imported; keys are sealed at rest.
    ImportBitlocker {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// List escrowed BitLocker keys (protector ID, host, source, releases; never the passwords).
    ListBitlocker {
        #[command(flatten)]
        target: Target,
    },
    /// Show one escrowed recovery password (recorded in the audit log).
    RevealBitlocker {
        protector_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the fingerprint of a public or private key (default: the data directory's).
    Show {
        #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
        data_dir: PathBuf,
        /// A signing.key or signing.pub file.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build the recovery image (kernel + initramfs with the agent) into DATA/image and sign it.
    Build {
        #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
        data_dir: PathBuf,
        /// A Debian linux-image .deb (6.12 from bookworm-backports: signed, has ntfs3).
        #[arg(long, conflicts_with = "kernel_dir")]
        kernel_deb: Option<PathBuf>,
        /// The same package already unpacked (boot/vmlinuz-*, lib/modules/*).
        #[arg(long)]
        kernel_dir: Option<PathBuf>,
        /// The static agent binary (default: next to this unbrick, or /usr/lib/unbrick/unbrick-agent).
        #[arg(long, env = "UNBRICK_AGENT")]
        agent: Option<PathBuf>,
        #[arg(long)]
        image_version: Option<String>,
        /// Leave out BitLocker unlocking (cryptsetup, its libraries, dm-crypt): a smaller image
        /// for fleets without BitLocker; encrypted volumes are then only reported.
        #[arg(long)]
        no_bitlocker: bool,
    },
    /// Write manifest.json and manifest.json.sig over every file in DIR.
    Sign {
        dir: PathBuf,
        /// Private key (default: DIR/../keys/signing.key).
        #[arg(long, env = "UNBRICK_SIGNING_KEY")]
        key: Option<PathBuf>,
        /// Image version (default: the current UTC time, YYYY.MMDD.HHMMSS).
        #[arg(long)]
        image_version: Option<String>,
    },
    /// Check DIR against its signed manifest: every file present, unchanged, nothing extra.
    Verify {
        dir: PathBuf,
        /// Trusted public key (default: DIR/../keys/signing.pub).
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Check a rules document and write FILE.sig next to it.
    Sign {
        file: PathBuf,
        #[arg(long, env = "UNBRICK_SIGNING_KEY")]
        key: PathBuf,
    },
    /// Verify FILE against FILE.sig, the trusted key and the current time.
    Verify {
        file: PathBuf,
        #[arg(long)]
        pubkey: PathBuf,
    },
    /// Print the built-in CrowdStrike C-00000291 rules, to edit and sign.
    Default {
        /// Days until the rules expire.
        #[arg(long, default_value_t = 90)]
        days: u64,
    },
}

/// Where `hosts` commands get the fleet from.
#[derive(Args, Clone)]
pub struct Target {
    /// The running server's URL (http://IP:8080 or https://IP:8443); without it the data
    /// directory's store is read directly (the server must be stopped).
    #[arg(long, env = "UNBRICK_SERVER")]
    pub server: Option<String>,
    /// Admin API token (unbrick tokens create).
    #[arg(long, env = "UNBRICK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For https: the server certificate's fingerprint (default: the data directory's).
    #[arg(long, env = "UNBRICK_FINGERPRINT")]
    pub fingerprint: Option<String>,
    #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
    pub data_dir: PathBuf,
}

#[derive(Subcommand)]
enum HostsCmd {
    /// Hosts with their state, filtered.
    List {
        #[command(flatten)]
        target: Target,
        /// State(s), comma-separated (e.g. failed,needs-attention).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Text in MAC, hostname, IP, serial or reason.
        #[arg(long)]
        search: Option<String>,
        /// key-needed (waiting for a pasted BitLocker key) or rotate-key (a key was released).
        #[arg(long)]
        flag: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One host with its full history.
    Show {
        mac: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Import hosts from CSV (header mac,hostname,site,tags) or JSON (.json); bad rows are
    /// reported by line, the rest imported.
    Import {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Run the payload again on these hosts' next network boot.
    Retry {
        #[arg(required = true)]
        macs: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The fleet report (per host: state, files quarantined with hashes, times).
    Export {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_parser = ["csv", "json"], default_value = "csv")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn now_unix() -> u64 {
    fleet_service::now_ms() / 1000
}

pub fn image_version_now() -> String {
    let t = signing::time::format_utc(now_unix());
    // 2026-11-21T11:23:17Z -> 2026.1121.112317
    let d: String = t.chars().filter(char::is_ascii_digit).collect();
    format!("{}.{}.{}", &d[0..4], &d[4..8], &d[8..14])
}

/// Errors the admin must fix; printed on one line (or a short list), exit code 2.
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNBRICK_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let r = match cli.cmd {
        Cmd::Init {
            data_dir,
            signing_key,
        } => init::run(&data_dir, signing_key.as_deref()).map_err(Fail),
        Cmd::Serve(a) => serve(a),
        Cmd::Keys(k) => keys(k),
        Cmd::Image(i) => image(i),
        Cmd::Rules(r) => rules(r),
        Cmd::Hosts(h) => client::hosts(h),
        Cmd::Tokens(t) => tokens(t),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Campaign(c) => client::campaign(c),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("unbrick: error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn parse_pool(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), Fail> {
    let (a, b) = s.split_once('-').ok_or_else(|| {
        Fail(format!(
            "--pool {s:?}: expected FIRST-LAST, e.g. 10.99.0.100-10.99.0.200"
        ))
    })?;
    let p = |x: &str| {
        x.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| Fail(format!("--pool {s:?}: {x:?} is not an IPv4 address")))
    };
    Ok((p(a)?, p(b)?))
}

fn serve(a: ServeArgs) -> Result<(), Fail> {
    let d = DataDir(a.data_dir.clone());
    if !d.config().exists() && !d.store().exists() {
        return Err(Fail(format!(
            "{} is not an unbrick data directory; run `unbrick init --data-dir {}` first",
            a.data_dir.display(),
            a.data_dir.display()
        )));
    }
    let f = ConfigFile::load(&d.config())?.serve;
    let interface = a.interface.or(f.interface).ok_or_else(|| Fail("no interface: pass --interface IF (or set UNBRICK_INTERFACE, or [serve] interface in unbrick.toml)".into()))?;
    let dhcp = match a.dhcp {
        Some(DhcpArg::Proxy) => serve::DhcpMode::Proxy,
        Some(DhcpArg::Full) => serve::DhcpMode::Full,
        Some(DhcpArg::Off) => serve::DhcpMode::Off,
        None => match f.dhcp.as_deref().unwrap_or("proxy") {
            "proxy" => serve::DhcpMode::Proxy,
            "full" => serve::DhcpMode::Full,
            "off" => serve::DhcpMode::Off,
            o => {
                return Err(Fail(format!(
                    "{}: dhcp = {o:?}; expected proxy, full or off",
                    d.config().display()
                )))
            }
        },
    };
    let ip = |what: &str, s: Option<String>| -> Result<Option<Ipv4Addr>, Fail> {
        s.map(|v| {
            v.parse().map_err(|_| {
                Fail(format!(
                    "{}: {what} = {v:?} is not an IPv4 address",
                    d.config().display()
                ))
            })
        })
        .transpose()
    };
    let pool = match a.pool.or(f.pool) {
        Some(p) => Some(parse_pool(&p)?),
        None => None,
    };
    let dns = if a.dns.is_empty() {
        f.dns
            .unwrap_or_default()
            .into_iter()
            .map(|s| ip("dns", Some(s)).map(Option::unwrap))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        a.dns
    };
    let dhcp_ports = match a.dhcp_ports {
        Some(s) => {
            let (x, y) = s
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
    let cfg = serve::ServerConfig {
        interface,
        server_ip: a.server_ip.or(ip("server_ip", f.server_ip)?),
        dhcp,
        pool,
        router: a.router.or(ip("router", f.router)?),
        dns,
        lease_secs: a.lease_secs.or(f.lease_secs).unwrap_or(3600),
        http_port: a.http_port.or(f.http_port).unwrap_or(8080),
        https_port: a.https_port.or(f.https_port).unwrap_or(8443),
        tls_cert: d.tls_cert(),
        tls_key: d.tls_key(),
        escrow_key: d.escrow_key(),
        tftp_port: a.tftp_port.or(f.tftp_port).unwrap_or(69),
        dhcp_ports,
        secure_boot_off: a.secure_boot_off || f.secure_boot_off.unwrap_or(false),
        extra_cmdline: a.kernel_cmdline.or(f.kernel_cmdline).unwrap_or_default(),
        image_dir: d.image(),
        rules_dir: d.rules(),
        trusted_key: trusted,
        max_tftp_transfers: f.max_tftp_transfers.unwrap_or(128),
        idle_timeout: std::time::Duration::from_secs(
            a.idle_timeout_secs
                .or(f.idle_timeout_secs)
                .unwrap_or(netboot_server::idle::IDLE_TIMEOUT.as_secs()),
        ),
    };
    let (fp, made) = d.ensure_tls().map_err(Fail)?;
    if made {
        eprintln!("unbrick: made a TLS certificate {} ({fp}); rebuild the image (unbrick image build) so the agent pins it", d.tls_cert().display());
    }
    let policy = fleet::DefaultPolicy {
        require_approval: a.require_approval || f.require_approval.unwrap_or(false),
    };
    let proxy = cfg.dhcp == serve::DhcpMode::Proxy;
    let rules_label =
        netboot_server::image::SignedRules::load(&cfg.rules_dir, &cfg.trusted_key, now_unix())
            .map(|r| format!("{} v{}", r.rules.id, r.rules.version))
            .unwrap_or_default();
    let tokens_file = d.tokens();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let store = fleet::SledStore::open(&d.store()).map_err(|e| Fail(format!("{e} (is another `unbrick serve` running on this data directory?)")))?;
        let store: Arc<dyn fleet::Store> = Arc::new(store);
        let campaigns = store.campaigns().map_err(|e| Fail(e.to_string()))?;
        let policy = Arc::new(fleet::CampaignPolicy::new(policy, proxy, campaigns));
        let server = serve::start(
            cfg,
            store,
            policy,
            serve::ConsoleConfig {
                tokens_file: tokens_file.clone(),
                rules_label,
            },
        )
        .await
        ?;
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
        server.shutdown(std::time::Duration::from_secs(10)).await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn keys(k: KeysCmd) -> Result<(), Fail> {
    match k {
        KeysCmd::Generate { out } => {
            let kp = signing::KeyPair::generate()?;
            kp.write_to_dir(&out)?;
            println!(
                "wrote {} (private, mode 0600) and {}",
                out.join("signing.key").display(),
                out.join("signing.pub").display()
            );
            println!("fingerprint {}", kp.public_key().fingerprint());
        }
        k @ (KeysCmd::ImportBitlocker { .. }
        | KeysCmd::ListBitlocker { .. }
        | KeysCmd::RevealBitlocker { .. }) => return client::bitlocker_keys(k),
        KeysCmd::Show { data_dir, key } => {
            let path = key.unwrap_or_else(|| DataDir(data_dir).public_key());
            let data =
                std::fs::read(&path).map_err(|e| Fail(format!("{}: {e}", path.display())))?;
            let pk = match signing::PublicKey::parse(&data) {
                Ok(pk) => pk,
                Err(_) => signing::KeyPair::from_pkcs8(&data)
                    .map_err(|e| {
                        Fail(format!(
                            "{}: neither a public nor a private key: {e}",
                            path.display()
                        ))
                    })?
                    .public_key(),
            };
            println!("{}", pk.fingerprint());
        }
    }
    Ok(())
}

fn sibling_key(dir: &Path, name: &str) -> PathBuf {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    abs.parent()
        .unwrap_or(Path::new("."))
        .join("keys")
        .join(name)
}

fn default_agent() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Only the static musl build: target/debug/unbrick-agent next to a development binary is a
    // dynamically linked host build that cannot run as /init.
    let candidates = [
        dir.join("../x86_64-unknown-linux-musl/agent/unbrick-agent"),
        dir.join("../../x86_64-unknown-linux-musl/agent/unbrick-agent"),
        PathBuf::from("/usr/lib/unbrick/unbrick-agent"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| candidates[candidates.len() - 1].clone())
}

pub(crate) fn image_build(
    data_dir: &Path,
    kernel_deb: Option<PathBuf>,
    kernel_dir: Option<PathBuf>,
    agent: Option<PathBuf>,
    version: Option<String>,
    bitlocker: bool,
) -> Result<(), Fail> {
    let d = DataDir(data_dir.to_path_buf());
    let trusted = signing::PublicKey::load(&d.public_key()).map_err(|e| {
        Fail(format!(
            "{e} (run `unbrick init --data-dir {}` first)",
            data_dir.display()
        ))
    })?;
    // The unpacked .deb, removed after the build.
    let mut unpacked = None;
    let root = match (kernel_deb, kernel_dir) {
        (Some(deb), _) => {
            let tmp = std::env::temp_dir().join(format!("unbrick-kernel-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            println!("unpacking {}", deb.display());
            payload_builder::build::unpack_deb(&deb, &tmp).map_err(Fail)?;
            unpacked = Some(tmp.clone());
            tmp
        }
        (None, Some(dir)) => dir,
        (None, None) => {
            return Err(Fail("no kernel: pass --kernel-deb FILE (apt-get download -t bookworm-backports linux-image-6.12.*-amd64) or --kernel-dir DIR".into()));
        }
    };
    let agent = agent.unwrap_or_else(default_agent);
    let version = version.unwrap_or_else(image_version_now);
    let (fingerprint, _) = d.ensure_tls().map_err(Fail)?;
    println!("the agent will pin the server certificate {fingerprint}");
    let built = payload_builder::build::build(
        &payload_builder::build::BuildInput {
            kernel_root: &root,
            agent: &agent,
            public_key: &trusted,
            image_version: &version,
            server_cert_sha256: Some(fingerprint),
            bitlocker,
            cryptsetup: None,
        },
        &mut |msg| println!("{msg}"),
    )
    .map_err(Fail)?;
    let img = d.image();
    for (name, data) in [("vmlinuz", &built.vmlinuz), ("initrd.img", &built.initrd)] {
        signing::image_dir::write_replacing(&img, name, data).map_err(Fail)?;
    }
    if let Some(tmp) = unpacked {
        let _ = std::fs::remove_dir_all(tmp);
    }
    match signing::KeyPair::load(&d.private_key()) {
        Ok(k) => {
            let m = signing::image_dir::sign_dir(&img, netboot_server::proto::boot::KERNEL, &k, &version, now_unix())?;
            println!("signed {} (version {}, kernel {}, {} artefacts); restart `unbrick serve` to serve it", img.display(), m.image_version, m.kernel_version, m.artefacts.len());
        }
        Err(_) => println!("NOT SIGNED: no private key in {}; sign {} on the offline machine (unbrick image sign) and copy the manifest back", d.keys().display(), img.display()),
    }
    println!(
        "image size: initrd {} bytes compressed ({} uncompressed), kernel {} bytes",
        built.initrd.len(),
        built.uncompressed,
        built.vmlinuz.len()
    );
    Ok(())
}

fn image(i: ImageCmd) -> Result<(), Fail> {
    match i {
        ImageCmd::Build {
            data_dir,
            kernel_deb,
            kernel_dir,
            agent,
            image_version,
            no_bitlocker,
        } => image_build(
            &data_dir,
            kernel_deb,
            kernel_dir,
            agent,
            image_version,
            !no_bitlocker,
        )?,
        ImageCmd::Sign {
            dir,
            key,
            image_version,
        } => {
            let key = key.unwrap_or_else(|| sibling_key(&dir, "signing.key"));
            let kp = signing::KeyPair::load(&key)?;
            let m = signing::image_dir::sign_dir(
                &dir,
                netboot_server::proto::boot::KERNEL,
                &kp,
                &image_version.unwrap_or_else(image_version_now),
                now_unix(),
            )?;
            println!(
                "signed {} artefacts in {} as version {} (kernel {}) with {}",
                m.artefacts.len(),
                dir.display(),
                m.image_version,
                m.kernel_version,
                m.key_fingerprint
            );
            for a in &m.artefacts {
                println!("  {:<16} {:>10}  {}", a.name, a.size, a.sha256);
            }
        }
        ImageCmd::Verify { dir, pubkey } => {
            let pubkey = pubkey.unwrap_or_else(|| sibling_key(&dir, "signing.pub"));
            let pk = signing::PublicKey::load(&pubkey)?;
            match netboot_server::image::Image::load(&dir, &pk) {
                Ok(img) => println!(
                    "OK: {} version {} ({} artefacts) signed by {}",
                    dir.display(),
                    img.manifest.image_version,
                    img.manifest.artefacts.len(),
                    pk.fingerprint()
                ),
                Err(problems) => {
                    return Err(Fail(format!(
                        "{} fails verification:\n  {}",
                        dir.display(),
                        problems.join("\n  ")
                    )))
                }
            }
        }
    }
    Ok(())
}

fn rules(r: RulesCmd) -> Result<(), Fail> {
    match r {
        RulesCmd::Sign { file, key } => {
            let kp = signing::KeyPair::load(&key)?;
            let doc = std::fs::read(&file).map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let sig = signing::RuleSet::sign_document(&kp, &doc)
                .map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let sig_path = PathBuf::from(format!("{}.sig", file.display()));
            std::fs::write(&sig_path, sig.to_text())
                .map_err(|e| Fail(format!("{}: {e}", sig_path.display())))?;
            let rs = signing::RuleSet::parse(&doc)?;
            println!(
                "signed {} ({} v{}, {} rules, expires {}) -> {}",
                file.display(),
                rs.id,
                rs.version,
                rs.rules.len(),
                rs.expires,
                sig_path.display()
            );
        }
        RulesCmd::Verify { file, pubkey } => {
            let pk = signing::PublicKey::load(&pubkey)?;
            let doc = std::fs::read(&file).map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let sig_path = PathBuf::from(format!("{}.sig", file.display()));
            let sig = std::fs::read(&sig_path)
                .map_err(|e| Fail(format!("{}: {e}", sig_path.display())))?;
            let rs = signing::RuleSet::verify_signed(&pk, &doc, &sig, now_unix())
                .map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            println!(
                "OK: {} v{} signed by {}, expires {}",
                rs.id,
                rs.version,
                pk.fingerprint(),
                rs.expires
            );
            for r in &rs.rules {
                println!("  {:<20} {:?} {}", r.id, r.action, r.path);
            }
        }
        RulesCmd::Default { days } => {
            let rs = signing::RuleSet::default_crowdstrike(now_unix() + days * 86400);
            print!("{}", String::from_utf8_lossy(&rs.to_json()));
        }
    }
    Ok(())
}

fn tokens(t: TokensCmd) -> Result<(), Fail> {
    match t {
        TokensCmd::Create {
            name,
            read_only,
            data_dir,
        } => {
            let d = DataDir(data_dir);
            if !d.0.exists() {
                return Err(Fail(format!(
                    "{} does not exist; run `unbrick init --data-dir {}` first",
                    d.0.display(),
                    d.0.display()
                )));
            }
            let book = web_console::tokens::TokenBook::new(&d.tokens());
            let secret = book.create(&name, read_only, now_unix()).map_err(Fail)?;
            eprintln!(
                "token {name:?} ({}) created; it is shown only this once:",
                if read_only {
                    "read-only"
                } else {
                    "full access"
                }
            );
            println!("{secret}");
        }
        TokensCmd::List { data_dir } => {
            let book = web_console::tokens::TokenBook::new(&DataDir(data_dir).tokens());
            let all = book.list().map_err(Fail)?;
            println!("{:<24}  {:<11}  CREATED", "NAME", "SCOPE");
            for t in &all {
                println!(
                    "{:<24}  {:<11}  {}",
                    t.name,
                    if t.read_only { "read-only" } else { "full" },
                    signing::time::format_utc(t.created_unix)
                );
            }
            println!("{} tokens", all.len());
        }
        TokensCmd::Revoke { name, data_dir } => {
            let book = web_console::tokens::TokenBook::new(&DataDir(data_dir).tokens());
            if !book.revoke(&name).map_err(Fail)? {
                return Err(Fail(format!(
                    "no token named {name:?} (see: unbrick tokens list)"
                )));
            }
            println!("revoked {name:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
