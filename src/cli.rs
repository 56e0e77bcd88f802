//! The command line (clap): every command and flag of `unbrick`. Its names are a contract
//! (checks and admins' scripts rely on them): extend, do not rename.
use crate::settings::range;
use clap::{Args, Parser, Subcommand};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// The exit codes, as `--help` and the README give them.
pub(crate) const EXIT_CODES: &str = "Exit codes:
  0  done (a check: everything it checked is good)
  1  a check ran and found a problem: image verify, rules verify, bmc test, doctor, diagnose
  2  error: bad arguments or configuration, unreadable input, the store or server unreachable
Read commands take --json for a script.";

#[derive(Parser)]
#[command(
    name = "unbrick",
    version,
    about = "Network-boot recovery of boot-looping Windows fleets",
    propagate_version = true,
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
    /// Check what serving needs, one line per check with its fix: the interface, other DHCP
    /// servers on the segment (one DISCOVER), ports, the ARP table, image and rules signatures
    /// and expiry, the TLS certificate, the shim's Microsoft CA, the clock, the store and its
    /// free space. Takes serve's flags; exits 1 when a check fails.
    Doctor(ServeArgs),
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
    Demo(DemoArgs),
    /// Staged recovery campaigns (through the running server's API).
    #[command(subcommand)]
    Campaign(CampaignCmd),
    /// Hosts' management controllers (AMT, Redfish, IPMI, Wake-on-LAN).
    #[command(subcommand)]
    Bmc(BmcCmd),
    /// Why machines do not reach the recovery agent: every host that network-booted and is not
    /// done, from what the server saw of its boot chain, grouped by problem with the advice for
    /// each (the console's Diagnosis page). Exits 1 when a host has a problem.
    Diagnose {
        #[command(flatten)]
        target: Target,
        /// The whole diagnosis as JSON (every host).
        #[arg(long)]
        json: bool,
        /// Draft a rules document that quarantines the scanned file with this SHA-256 (its
        /// path, first bytes and last-write window), and print the canary-first campaign
        /// over the hosts that have it. Changes nothing: sign the document offline.
        #[arg(long, value_name = "SHA256")]
        draft_rule: Option<String>,
        /// With --draft-rule: the file's path, when that content sits at more than one.
        #[arg(long, requires = "draft_rule")]
        path: Option<String>,
        /// With --draft-rule: write the document to this file (else to standard output; the
        /// steps go to standard error).
        #[arg(long, requires = "draft_rule")]
        out: Option<PathBuf>,
        /// With --draft-rule: write the MACs of the hosts that have the file to this file, one
        /// per line (for `campaign create --hosts-file`).
        #[arg(long, requires = "draft_rule", value_name = "FILE")]
        hosts_out: Option<PathBuf>,
    },
    /// Write the man pages (OUT/man/*.1) and shell completions (OUT/completions: bash, zsh,
    /// fish) generated from this CLI; the Debian package ships them.
    #[command(hide = true)]
    DistFiles {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum BmcCmd {
    /// Import controllers from CSV: mac,kind,address,port,tls,fingerprint,ca_file,user,secret
    /// (kind amt|redfish|ipmi|wol); secrets are sealed at rest and never shown again; bad rows
    /// are reported by line, the rest imported.
    Import {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Every host's controller (never a secret).
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// A read-only call to each controller (these hosts, or every host with one): reachable,
    /// authenticated, power state, can it force a network boot. Through the running server;
    /// exits non-zero when one fails.
    Test {
        macs: Vec<String>,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
// `create` carries every campaign option; the value is parsed once per process, so its size
// costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum CampaignCmd {
    /// Create a campaign (a draft: nothing happens until `campaign start`).
    Create {
        #[arg(long)]
        name: String,
        /// Every known host.
        #[arg(long, conflicts_with_all = ["site", "tag", "hosts", "hosts_file"])]
        all: bool,
        #[arg(long, conflicts_with_all = ["tag", "hosts", "hosts_file"])]
        site: Option<String>,
        #[arg(long, conflicts_with_all = ["hosts", "hosts_file"])]
        tag: Option<String>,
        /// Explicit MAC addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// MAC addresses from this file ("-": standard input): one or more per line, separated
        /// by commas or spaces; blank lines and lines starting with # are skipped. Adds to
        /// --hosts. For lists too long for one argument (`diagnose --draft-rule --hosts-out`).
        #[arg(long, value_name = "FILE")]
        hosts_file: Option<PathBuf>,
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
        /// BitLocker keys: `auto` releases a key when the host's imported name matches the
        /// escrowed key's; `confirm` waits until an admin approves each host
        /// (`unbrick hosts approve-key`, the console's wave view, the API).
        #[arg(long, default_value = "auto", value_parser = ["auto", "confirm"])]
        key_release: String,
        /// How the open wave's machines are made to network-boot: `none` (by hand, or their own
        /// boot order) or `oob` (the server does it through each host's management controller,
        /// no more at once than --concurrency).
        #[arg(long, default_value = "none", value_parser = ["none", "oob"])]
        trigger: String,
        /// The reboot race (with --trigger oob): power-cycle each host up to this many times
        /// first; only those that do not come back as Windows are network-booted.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=5))]
        power_cycles: u32,
        /// Minutes a triggered machine has to ask for an address before it is tried once more,
        /// then needs attention.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
        trigger_wait_minutes: u64,
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
    /// Approve the BitLocker key release for every host of the campaign's open wave.
    ApproveKeys {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokensCmd {
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
        #[arg(long)]
        json: bool,
    },
    /// Remove a token; a running server stops accepting it at once.
    Revoke {
        name: String,
        #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
    pub(crate) data_dir: PathBuf,
    /// The recovery LAN interface (nothing is served on any other).
    #[arg(long, env = "UNBRICK_INTERFACE")]
    pub(crate) interface: Option<String>,
    /// Address clients reach us on (default: the interface's IPv4 address).
    #[arg(long, env = "UNBRICK_SERVER_IP")]
    pub(crate) server_ip: Option<Ipv4Addr>,
    /// proxy: beside the office DHCP server; full: hand out addresses; off: no DHCP.
    #[arg(long, env = "UNBRICK_DHCP", value_enum)]
    pub(crate) dhcp: Option<crate::settings::DhcpMode>,
    /// Full mode: FIRST-LAST addresses to hand out.
    #[arg(long, env = "UNBRICK_POOL")]
    pub(crate) pool: Option<String>,
    #[arg(long, env = "UNBRICK_ROUTER")]
    pub(crate) router: Option<Ipv4Addr>,
    #[arg(long, env = "UNBRICK_DNS", value_delimiter = ',')]
    pub(crate) dns: Vec<Ipv4Addr>,
    #[arg(long, env = "UNBRICK_LEASE_SECS", value_parser = clap::value_parser!(u32).range(range::i(range::LEASE_SECS)))]
    pub(crate) lease_secs: Option<u32>,
    #[arg(long, env = "UNBRICK_HTTP_PORT", value_parser = clap::value_parser!(u16).range(range::i(range::PORT)))]
    pub(crate) http_port: Option<u16>,
    /// HTTPS port: agent API (certificate pinned by the agent), console and admin API.
    #[arg(long, env = "UNBRICK_HTTPS_PORT", value_parser = clap::value_parser!(u16).range(range::i(range::PORT)))]
    pub(crate) https_port: Option<u16>,
    /// Hand out the payload only to hosts an admin approved.
    #[arg(long, env = "UNBRICK_REQUIRE_APPROVAL")]
    pub(crate) require_approval: bool,
    #[arg(long, env = "UNBRICK_TFTP_PORT", value_parser = clap::value_parser!(u16).range(range::i(range::PORT)))]
    pub(crate) tftp_port: Option<u16>,
    /// Close an HTTP/HTTPS connection after this many seconds without traffic (default 60).
    #[arg(long, env = "UNBRICK_IDLE_TIMEOUT_SECS", value_parser = clap::value_parser!(u64).range(range::u(range::IDLE_TIMEOUT_SECS)))]
    pub(crate) idle_timeout_secs: Option<u64>,
    /// A machine on the waiting-room screen (its wave not open yet, held, no image yet) asks
    /// again after this many seconds (default 30): shorter starts a wave sooner, longer means
    /// fewer requests from a large waiting fleet.
    #[arg(long, env = "UNBRICK_WAITING_ROOM_POLL_SECS", value_parser = clap::value_parser!(u32).range(range::i(range::WAITING_ROOM_POLL_SECS)))]
    pub(crate) waiting_room_poll_secs: Option<u32>,
    /// A per-boot token is valid this many minutes (default 120), and ends with the run's
    /// final report.
    #[arg(long, env = "UNBRICK_TOKEN_LIFETIME_MINS", value_parser = clap::value_parser!(u64).range(range::u(range::TOKEN_LIFETIME_MINS)))]
    pub(crate) token_lifetime_mins: Option<u64>,
    /// A management controller must answer each request within this many seconds (default 10).
    #[arg(long, env = "UNBRICK_BMC_TIMEOUT_SECS", value_parser = clap::value_parser!(u64).range(range::u(range::BMC_TIMEOUT_SECS)))]
    pub(crate) bmc_timeout_secs: Option<u64>,
    /// Attempts of a controller operation that failed in a way that may pass (unreachable, no
    /// answer, 5xx), with backoff 2 s, 4 s, ... (default 3).
    #[arg(long, env = "UNBRICK_BMC_ATTEMPTS", value_parser = clap::value_parser!(u32).range(range::i(range::BMC_ATTEMPTS)))]
    pub(crate) bmc_attempts: Option<u32>,
    /// At most this many host records (default 100000): an unknown network-booting MAC beyond
    /// it gets no record; a warning comes near it.
    #[arg(long, env = "UNBRICK_MAX_HOSTS", value_parser = clap::value_parser!(u64).range(range::u(range::MAX_HOSTS)))]
    pub(crate) max_hosts: Option<u64>,
    /// Unknown network-booting MACs made host records per second at most (default 200, bursts
    /// of ten times as many): a flood of spoofed MACs does not fill the store.
    #[arg(long, env = "UNBRICK_NEW_HOSTS_PER_SEC", value_parser = clap::value_parser!(u32).range(range::i(range::NEW_HOSTS_PER_SEC)))]
    pub(crate) new_hosts_per_sec: Option<u32>,
    /// MiB kept free on the data directory's file system (default 64): below it the store
    /// refuses writes (agents get 503, full-mode DHCP no ACK, the console says "disk full")
    /// and goes on by itself once space is freed.
    #[arg(long, env = "UNBRICK_STORE_RESERVE_MB", value_parser = clap::value_parser!(u64).range(range::u(range::STORE_RESERVE_MB)))]
    pub(crate) store_reserve_mb: Option<u64>,
    /// MiB of memory the store may keep as a page cache (default 64). More makes console
    /// pages of a large fleet faster; the server's memory stays bounded either way.
    #[arg(long, env = "UNBRICK_STORE_CACHE_MB", value_parser = clap::value_parser!(u64).range(range::u(range::STORE_CACHE_MB)))]
    pub(crate) store_cache_mb: Option<u64>,
    /// Events kept per host timeline (default 2000): older ones go, summarised in one event;
    /// the audit log keeps every admin action and key release whatever this says.
    #[arg(long, env = "UNBRICK_EVENTS_PER_HOST", value_parser = clap::value_parser!(u64).range(range::u(range::EVENTS_PER_HOST)))]
    pub(crate) events_per_host: Option<u64>,
    /// UEFI clients get snponly.efi instead of shim (only where Secure Boot is off everywhere).
    #[arg(long, env = "UNBRICK_SECURE_BOOT_OFF")]
    pub(crate) secure_boot_off: bool,
    /// Extra words for the recovery kernel command line.
    #[arg(long, env = "UNBRICK_KERNEL_CMDLINE")]
    pub(crate) kernel_cmdline: Option<String>,
    /// Testing only: DHCP server and PXE ports instead of 67 and 4011, as "67,4011".
    #[arg(long, env = "UNBRICK_DHCP_PORTS", hide = true)]
    pub(crate) dhcp_ports: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum KeysCmd {
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
        #[arg(long)]
        json: bool,
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
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum ImageCmd {
    /// Build the recovery image (kernel + initramfs with the agent) into DATA/image and sign it.
    Build {
        #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
        data_dir: PathBuf,
        /// A Debian linux-image .deb (6.12 or later: signed, has ntfs3). Default: the newest
        /// such kernel installed here, in DATA/kernel-cache or /var/cache/apt/archives, else
        /// fetched from bookworm-backports with apt-get download (private APT configuration
        /// under DATA/apt) and cached in DATA/kernel-cache.
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
    /// Find the kernel `image build` would use (the newest Debian-signed 6.12 or later:
    /// installed, cached, or fetched from bookworm-backports), check it and cache it, without
    /// building: run it ahead of an incident so the build needs no network.
    Kernel {
        #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
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
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum RulesCmd {
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
        #[arg(long)]
        json: bool,
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
pub(crate) struct Target {
    /// The running server's URL (http://IP:8080 or https://IP:8443); without it the data
    /// directory's store is read directly (the server must be stopped).
    #[arg(long, env = "UNBRICK_SERVER")]
    pub(crate) server: Option<String>,
    /// Admin API token (unbrick tokens create).
    #[arg(long, env = "UNBRICK_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// For https: the server certificate's fingerprint (default: the data directory's).
    #[arg(long, env = "UNBRICK_FINGERPRINT")]
    pub(crate) fingerprint: Option<String>,
    #[arg(long, env = "UNBRICK_DATA_DIR", default_value = "/var/lib/unbrick")]
    pub(crate) data_dir: PathBuf,
}

#[derive(Subcommand)]
pub(crate) enum HostsCmd {
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
    /// Let these hosts' BitLocker keys leave escrow in their running campaign (campaigns with
    /// --key-release confirm, keys not bound to the host's imported name, disputed claims);
    /// `unbrick campaign approve-keys ID` approves a whole wave.
    ApproveKey {
        #[arg(required = true)]
        macs: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Wake these machines with a Wake-on-LAN magic packet on the served interface (through
    /// the running server). They boot their normal order unless the firmware wakes to network
    /// boot.
    Wake {
        #[arg(required = true)]
        macs: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Make these machines network-boot once through their management controllers (AMT,
    /// Redfish, IPMI: a one-time PXE override, then a reset, or power-on when off); Wake-on-LAN
    /// hosts are woken. Through the running server.
    Netboot {
        #[arg(required = true)]
        macs: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Clear any boot override and restart these machines from their disks (through their
    /// controllers).
    BootDisk {
        #[arg(required = true)]
        macs: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Restart these machines (power on when off), boot order unchanged, through their
    /// controllers; Wake-on-LAN hosts are woken.
    PowerCycle {
        #[arg(required = true)]
        macs: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Ask these machines' controllers for the power state (read-only).
    PowerStatus {
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

/// `unbrick demo`'s flags.
#[derive(Args)]
pub(crate) struct DemoArgs {
    /// How many boot-looping machines (odd: SeaBIOS + iPXE, even: OVMF with Secure Boot).
    #[arg(long, default_value_t = 4)]
    pub(crate) guests: u32,
    /// Where the demo keeps its data directory (kept between runs).
    #[arg(long, default_value = "/var/tmp/unbrick-demo")]
    pub(crate) data_dir: PathBuf,
    /// The unpacked Debian kernel for the recovery image (scripts/install-deps.sh puts one in
    /// target/kernel/root).
    #[arg(long)]
    pub(crate) kernel_dir: Option<PathBuf>,
    /// The static agent (default: the musl build next to this binary).
    #[arg(long)]
    pub(crate) agent: Option<PathBuf>,
    /// Where the console is reachable on this machine.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) console: SocketAddr,
    /// QEMU accelerator (tcg works everywhere; kvm where /dev/kvm exists).
    #[arg(long, default_value = "tcg")]
    pub(crate) accel: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
