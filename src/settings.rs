//! `unbrick serve`'s settings in layers: command-line flags (clap also reads the UNBRICK_*
//! variables into them), then `[serve]` of unbrick.toml, then [`Settings::defaults`], the one
//! place a default is written. Each layer is the same typed struct with every field optional;
//! [`Settings::or`] fills the gaps of one layer from the next.
use serde::{Deserialize, Deserializer};
use std::net::Ipv4Addr;
use std::str::FromStr;

/// How `unbrick serve` answers DHCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DhcpMode {
    /// Beside the office DHCP server: answer network-booting machines only, no addresses (the
    /// default).
    #[default]
    Proxy,
    /// Hand out addresses from the pool too (an isolated recovery VLAN).
    Full,
    /// No DHCP (another server points machines here).
    Off,
}

/// A full-mode address pool, `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pool(pub(crate) Ipv4Addr, pub(crate) Ipv4Addr);

impl FromStr for Pool {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| {
            format!("pool {s:?}: expected FIRST-LAST, e.g. 10.99.0.100-10.99.0.200")
        })?;
        let ip = |x: &str| {
            x.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("pool {s:?}: {x:?} is not an IPv4 address"))
        };
        Ok(Self(ip(a)?, ip(b)?))
    }
}

impl<'de> Deserialize<'de> for Pool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One layer of settings (`[serve]` in unbrick.toml has exactly these keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    pub(crate) interface: Option<String>,
    pub(crate) server_ip: Option<Ipv4Addr>,
    pub(crate) dhcp: Option<DhcpMode>,
    pub(crate) pool: Option<Pool>,
    pub(crate) router: Option<Ipv4Addr>,
    pub(crate) dns: Option<Vec<Ipv4Addr>>,
    pub(crate) lease_secs: Option<u32>,
    pub(crate) http_port: Option<u16>,
    pub(crate) https_port: Option<u16>,
    pub(crate) tftp_port: Option<u16>,
    pub(crate) require_approval: Option<bool>,
    pub(crate) secure_boot_off: Option<bool>,
    pub(crate) kernel_cmdline: Option<String>,
    pub(crate) max_tftp_transfers: Option<usize>,
    pub(crate) idle_timeout_secs: Option<u64>,
    pub(crate) waiting_room_poll_secs: Option<u32>,
    pub(crate) token_lifetime_mins: Option<u64>,
    pub(crate) bmc_timeout_secs: Option<u64>,
    pub(crate) bmc_attempts: Option<u32>,
    pub(crate) max_hosts: Option<u64>,
    pub(crate) new_hosts_per_sec: Option<u32>,
    pub(crate) store_reserve_mb: Option<u64>,
    pub(crate) store_cache_mb: Option<u64>,
    pub(crate) events_per_host: Option<u64>,
}

/// `a.or(b)` for every field: the first layer that sets a field wins.
macro_rules! layered {
    ($a:ident, $b:ident: $($f:ident),*) => {
        Settings { $($f: $a.$f.or($b.$f)),* }
    };
}

impl Settings {
    /// The built-in defaults: every field that has one. `interface`, `server_ip`, `pool`,
    /// `router` and `dns` have none (the interface must be named; the rest are optional).
    pub(crate) fn defaults() -> Self {
        Self {
            dhcp: Some(DhcpMode::default()),
            lease_secs: Some(3600),
            http_port: Some(8080),
            https_port: Some(8443),
            tftp_port: Some(69),
            require_approval: Some(false),
            secure_boot_off: Some(false),
            kernel_cmdline: Some(String::new()),
            max_tftp_transfers: Some(128),
            idle_timeout_secs: Some(netboot_server::idle::IDLE_TIMEOUT.as_secs()),
            waiting_room_poll_secs: Some(netboot_server::booter::WAITING_ROOM_POLL_SECS),
            token_lifetime_mins: Some(netboot_server::agent_api::TOKEN_LIFETIME_MS / 60_000),
            bmc_timeout_secs: Some(10),
            bmc_attempts: Some(3),
            max_hosts: Some(fleet_service::fleetio::MAX_HOSTS as u64),
            new_hosts_per_sec: Some(fleet_service::fleetio::NEW_HOSTS_PER_SEC),
            store_reserve_mb: Some(fleet::store::DEFAULT_RESERVE >> 20),
            store_cache_mb: Some(fleet::store::DEFAULT_CACHE >> 20),
            events_per_host: Some(fleet_service::fleetio::MAX_EVENTS_PER_HOST as u64),
            ..Self::default()
        }
    }

    /// This layer with every unset field taken from `lower`.
    pub(crate) fn or(self, lower: Self) -> Self {
        let (a, b) = (self, lower);
        layered!(a, b: interface, server_ip, dhcp, pool, router, dns, lease_secs, http_port,
            https_port, tftp_port, require_approval, secure_boot_off, kernel_cmdline,
            max_tftp_transfers, idle_timeout_secs, waiting_room_poll_secs, token_lifetime_mins, bmc_timeout_secs,
            bmc_attempts, max_hosts, new_hosts_per_sec, store_reserve_mb, store_cache_mb,
            events_per_host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let flags = Settings {
            http_port: Some(9000),
            ..Settings::default()
        };
        let file: Settings = toml::from_str(
            "http_port = 1\nhttps_port = 2\ndhcp = \"full\"\npool = \"10.0.0.5-10.0.0.9\"\n",
        )
        .unwrap();
        let s = flags.or(file).or(Settings::defaults());
        assert_eq!(s.http_port, Some(9000));
        assert_eq!(s.https_port, Some(2));
        assert_eq!(s.dhcp, Some(DhcpMode::Full));
        assert_eq!(
            s.pool,
            Some(Pool(Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 9)))
        );
        assert_eq!(s.tftp_port, Some(69));
        assert_eq!(s.interface, None);
    }

    #[test]
    fn bad_file_values_are_named() {
        for (toml, want) in [
            ("dhcp = \"half\"", "unknown variant `half`"),
            ("server_ip = \"10.0.0\"", "invalid IPv4 address"),
            ("pool = \"10.0.0.5\"", "expected FIRST-LAST"),
            ("pool = \"10.0.0.5-x\"", "\"x\" is not an IPv4 address"),
            ("nope = 1", "unknown field `nope`"),
        ] {
            let e = toml::from_str::<Settings>(toml).unwrap_err().to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
    }

    /// The commented template `unbrick init` writes shows the same defaults as the code.
    #[test]
    fn the_template_shows_the_built_in_defaults() {
        let serve = crate::config::DEFAULT_CONFIG
            .split("[serve]")
            .nth(1)
            .and_then(|s| s.split("\n[").next())
            .unwrap();
        let d = Settings::defaults();
        let mut shown = 0;
        for line in serve.lines().filter_map(|l| l.strip_prefix("# ")) {
            let Ok(one) = toml::from_str::<Settings>(line) else {
                continue;
            };
            // The line's field has a default when the defaults, laid over it, hide it.
            let has_default = d.clone().or(one.clone()) == d;
            if has_default {
                assert_eq!(
                    one.or(d.clone()),
                    d,
                    "the template shows {line:?}, the built-in default differs"
                );
                shown += 1;
            }
        }
        assert!(
            shown >= 8,
            "only {shown} defaults are shown in the template"
        );
    }
}
