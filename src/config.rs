//! The data directory layout and the `unbrick.toml` configuration file.
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub(crate) const CONFIG_FILE: &str = "unbrick.toml";

/// Where everything lives inside a data directory.
#[derive(Clone)]
pub(crate) struct DataDir(pub PathBuf);

impl DataDir {
    pub(crate) fn config(&self) -> PathBuf {
        self.0.join(CONFIG_FILE)
    }
    pub(crate) fn keys(&self) -> PathBuf {
        self.0.join("keys")
    }
    pub(crate) fn public_key(&self) -> PathBuf {
        self.keys().join("signing.pub")
    }
    pub(crate) fn private_key(&self) -> PathBuf {
        self.keys().join("signing.key")
    }
    pub(crate) fn image(&self) -> PathBuf {
        self.0.join("image")
    }
    pub(crate) fn rules(&self) -> PathBuf {
        self.0.join("rules")
    }
    pub(crate) fn store(&self) -> PathBuf {
        self.0.join("store")
    }
    pub(crate) fn tls_cert(&self) -> PathBuf {
        self.0.join("tls").join("cert.pem")
    }
    pub(crate) fn tls_key(&self) -> PathBuf {
        self.0.join("tls").join("key.pem")
    }
    /// The key that seals escrowed BitLocker recovery passwords (32 bytes, 0600), kept apart
    /// from the store so a copy of the store alone reveals no key.
    pub(crate) fn escrow_key(&self) -> PathBuf {
        self.0.join("keys").join("bitlocker-escrow.key")
    }
    /// The key that seals management-controller secrets (32 bytes, 0600), apart from the
    /// BitLocker escrow's.
    pub(crate) fn bmc_key(&self) -> PathBuf {
        self.0.join("keys").join("bmc-secrets.key")
    }
    /// Admin API tokens (hashes only), re-read by the running server when they change.
    pub(crate) fn tokens(&self) -> PathBuf {
        self.0.join("tokens.json")
    }

    /// The server's TLS certificate fingerprint, making the certificate first if there is none.
    pub(crate) fn ensure_tls(&self) -> Result<(String, bool), String> {
        if self.tls_cert().exists() {
            return netboot_server::tls::cert_fingerprint(&self.tls_cert())
                .map(|f| (f, false))
                .map_err(|e| e.to_string());
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            })
            .unwrap_or_else(|| "unbrick".into());
        netboot_server::tls::generate_self_signed(
            &self.tls_cert(),
            &self.tls_key(),
            &[host, "unbrick".into()],
        )
        .map(|f| (f, true))
        .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BootLoadersFile {
    pub undionly_kpxe: Option<PathBuf>,
    pub snponly_efi: Option<PathBuf>,
    pub ipxe_efi: Option<PathBuf>,
    pub shimx64_efi: Option<PathBuf>,
    pub grubx64_efi: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    /// `[serve]`: a settings layer (flags and UNBRICK_* variables win, defaults fill in).
    pub serve: crate::settings::Settings,
    #[serde(default)]
    pub boot_loaders: BootLoadersFile,
    /// Path of the signing key when it is kept outside the data directory.
    pub signing_key: Option<PathBuf>,
}

impl ConfigFile {
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(s) => {
                let c: Self = toml::from_str(&s).map_err(|e| format!("{}: {e}", path.display()))?;
                c.serve
                    .check()
                    .map_err(|e| format!("{}: [serve] {e}", path.display()))?;
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

pub(crate) const DEFAULT_CONFIG: &str = r#"# unbrick configuration.
# Precedence: command-line flags, then UNBRICK_* environment variables
# (e.g. UNBRICK_INTERFACE, UNBRICK_DHCP, UNBRICK_POOL), then this file, then built-in defaults.

[serve]
# The interface on the recovery LAN. DHCP, TFTP and HTTP answer on this interface only.
# interface = "eth1"

# The address clients reach us on; defaults to the interface's first IPv4 address.
# server_ip = "10.99.0.1"

# proxy: answer only network-booting machines, beside the office DHCP server (no addresses).
# full:  hand out addresses from `pool` too (an isolated recovery VLAN, or behind a relay).
# off:   no DHCP at all (boot via another DHCP server's next-server/filename).
# dhcp = "proxy"

# Full mode only: first and last address to hand out, inside the interface's subnet.
# pool = "10.99.0.100-10.99.0.200"
# router = "10.99.0.254"
# dns = ["10.99.0.53"]
# lease_secs = 3600

# Plain HTTP: boot scripts and files (firmware speaks nothing else), the console, the admin API.
# http_port = 8080
# HTTPS with tls/cert.pem (made by `unbrick init`): the agent API (the agent pins this
# certificate), the console and the admin API.
# https_port = 8443
# tftp_port = 69

# true: a machine gets the recovery payload only after an admin approved it (import a host
# list, then bulk "approve" in the console or API); the others wait on a screen that says so.
# require_approval = false

# UEFI machines get Microsoft-signed shim -> grub by default (works with Secure Boot on or off).
# Set true only if every machine at this site has Secure Boot off: they then get iPXE's
# snponly.efi, which is faster but refused by Secure Boot.
# secure_boot_off = false

# Extra words for the recovery kernel's command line.
# kernel_cmdline = ""

# max_tftp_transfers = 128

# An HTTP or HTTPS connection without traffic for this long is closed (agents reconnect).
# idle_timeout_secs = 60

# A machine on the waiting-room screen (its wave not open yet) asks again after this many
# seconds (5-600).
# waiting_room_poll_secs = 30

# A per-boot token is valid this long, and ends with the run's final report.
# token_lifetime_mins = 120

# Management controllers (AMT, Redfish, IPMI): seconds a controller has to answer each
# request, and attempts of an operation that failed in a way that may pass (backoff 2 s, 4 s).
# bmc_timeout_secs = 10
# bmc_attempts = 3

# Strangers: at most this many host records, and unknown network-booting MACs admitted per
# second (bursts of ten times as many). Size max_hosts for the fleet, with room.
# max_hosts = 100000
# new_hosts_per_sec = 200

# MiB kept free on the data directory's file system: below it the store refuses writes
# (agents are told to retry, full-mode DHCP sends no ACK) until space is freed.
# store_reserve_mb = 64

# MiB of memory the store keeps as a page cache; the server's memory stays bounded by it.
# store_cache_mb = 64

# Events kept per host timeline; older ones are summarised in one event. The audit log keeps
# every admin action and key release whatever this says.
# events_per_host = 2000

# Boot loaders are copied from Debian packages by `unbrick init`; point elsewhere here.
[boot_loaders]
# undionly_kpxe = "/usr/lib/ipxe/undionly.kpxe"
# snponly_efi = "/usr/lib/ipxe/snponly.efi"
# ipxe_efi = "/usr/lib/ipxe/ipxe.efi"
# shimx64_efi = "/usr/lib/shim/shimx64.efi.signed"
# grubx64_efi = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"
"#;

/// The data directory a command names (`--data-dir DIR`, `--data-dir=DIR`, else
/// `UNBRICK_DATA_DIR`, else the default), read from the raw arguments so every command shares it.
pub(crate) fn data_dir_of(args: &[String]) -> PathBuf {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--data-dir" {
            if let Some(v) = it.next() {
                return PathBuf::from(v);
            }
        } else if let Some(v) = a.strip_prefix("--data-dir=") {
            return PathBuf::from(v);
        }
    }
    std::env::var_os("UNBRICK_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/unbrick"))
}

/// After a command run as root on a data directory the service owns (its own user, see
/// `dist/unbrick.service`): every file or directory it made (owned by root) is handed to the
/// directory's owner, so the server can read the new token, key or image. Links are not
/// followed.
pub(crate) fn hand_back(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return;
    };
    let (uid, gid) = (top.uid(), top.gid());
    if uid == 0 || !top.is_dir() {
        return;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.uid() != uid {
                if let Err(err) = std::os::unix::fs::lchown(&p, Some(uid), Some(gid)) {
                    eprintln!(
                        "unbrick: cannot hand {} to the service user: {err}",
                        p.display()
                    );
                }
            }
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
}

/// The settings `serve` (and `doctor`) run with: flags, environment, file, defaults.
pub(crate) fn resolved(
    a: &crate::cli::ServeArgs,
    d: &DataDir,
) -> Result<crate::settings::Settings, crate::Fail> {
    Ok(a.layer()?
        .or(ConfigFile::load(&d.config())?.serve)
        .or(crate::settings::Settings::defaults()))
}
