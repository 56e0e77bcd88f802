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

/// The range of each numeric setting, whichever layer sets it: the flags' parsers use these
/// (clap refuses a flag out of range) and [`Settings::check`] holds the configuration file to
/// them (a `0` there would otherwise pass: no TFTP transfers, a waiting fleet asking without
/// pause, connections closed at once).
pub(crate) mod range {
    use std::ops::RangeInclusive;

    /// A range as clap's parser of unsigned 64-bit flags takes it.
    pub(crate) const fn u(r: (u64, u64)) -> RangeInclusive<u64> {
        r.0..=r.1
    }

    /// A range as clap's parser of narrower flags takes it (all ends fit).
    pub(crate) const fn i(r: (u64, u64)) -> RangeInclusive<i64> {
        (r.0 as i64)..=(r.1 as i64)
    }

    pub(crate) const PORT: (u64, u64) = (1, 65_535);
    pub(crate) const LEASE_SECS: (u64, u64) = (60, 31_536_000);
    pub(crate) const MAX_TFTP_TRANSFERS: (u64, u64) = (1, 4096);
    pub(crate) const IDLE_TIMEOUT_SECS: (u64, u64) = (1, 86_400);
    pub(crate) const WAITING_ROOM_POLL_SECS: (u64, u64) = (5, 600);
    pub(crate) const TOKEN_LIFETIME_MINS: (u64, u64) = (5, 720);
    pub(crate) const BMC_TIMEOUT_SECS: (u64, u64) = (1, 120);
    pub(crate) const BMC_ATTEMPTS: (u64, u64) = (1, 10);
    pub(crate) const MAX_HOSTS: (u64, u64) = (10, 10_000_000);
    pub(crate) const NEW_HOSTS_PER_SEC: (u64, u64) = (1, 100_000);
    pub(crate) const STORE_RESERVE_MB: (u64, u64) = (1, 1_000_000);
    pub(crate) const STORE_CACHE_MB: (u64, u64) = (4, 65_536);
    pub(crate) const EVENTS_PER_HOST: (u64, u64) = (10, 1_000_000);
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

    /// Every numeric field that is set lies in its [`range`]; the first that does not is named
    /// with its key, its value and the range (`idle_timeout_secs = 0: must be 1 to 86400
    /// seconds`).
    pub(crate) fn check(&self) -> Result<(), String> {
        fn wide<T: TryInto<u64>>(v: T) -> u64 {
            v.try_into().unwrap_or(u64::MAX)
        }
        macro_rules! ranged {
            ($($f:ident => $r:expr),* $(,)?) => {$(
                if let Some(v) = self.$f {
                    let r = range::u($r);
                    if !r.contains(&wide(v)) {
                        let key = stringify!($f);
                        let unit = match key.rsplit('_').next() {
                            Some("secs") => " seconds",
                            Some("mins") => " minutes",
                            Some("mb") => " MiB",
                            _ => "",
                        };
                        return Err(format!(
                            "{key} = {v}: must be {} to {}{unit}",
                            r.start(),
                            r.end()
                        ));
                    }
                }
            )*};
        }
        ranged!(
            http_port => range::PORT,
            https_port => range::PORT,
            tftp_port => range::PORT,
            lease_secs => range::LEASE_SECS,
            max_tftp_transfers => range::MAX_TFTP_TRANSFERS,
            idle_timeout_secs => range::IDLE_TIMEOUT_SECS,
            waiting_room_poll_secs => range::WAITING_ROOM_POLL_SECS,
            token_lifetime_mins => range::TOKEN_LIFETIME_MINS,
            bmc_timeout_secs => range::BMC_TIMEOUT_SECS,
            bmc_attempts => range::BMC_ATTEMPTS,
            max_hosts => range::MAX_HOSTS,
            new_hosts_per_sec => range::NEW_HOSTS_PER_SEC,
            store_reserve_mb => range::STORE_RESERVE_MB,
            store_cache_mb => range::STORE_CACHE_MB,
            events_per_host => range::EVENTS_PER_HOST,
        );
        Ok(())
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

    #[test]
    fn every_ranged_key_is_held_to_its_range() {
        for (toml, want) in [
            (
                "idle_timeout_secs = 0",
                "idle_timeout_secs = 0: must be 1 to 86400 seconds",
            ),
            (
                "waiting_room_poll_secs = 4",
                "waiting_room_poll_secs = 4: must be 5 to 600 seconds",
            ),
            (
                "token_lifetime_mins = 721",
                "token_lifetime_mins = 721: must be 5 to 720 minutes",
            ),
            (
                "max_tftp_transfers = 0",
                "max_tftp_transfers = 0: must be 1 to 4096",
            ),
            (
                "store_cache_mb = 1",
                "store_cache_mb = 1: must be 4 to 65536 MiB",
            ),
            ("http_port = 0", "http_port = 0: must be 1 to 65535"),
            (
                "lease_secs = 10",
                "lease_secs = 10: must be 60 to 31536000 seconds",
            ),
            (
                "max_hosts = 9223372036854775807",
                "max_hosts = 9223372036854775807: must be 10 to 10000000",
            ),
            ("bmc_attempts = 11", "bmc_attempts = 11: must be 1 to 10"),
        ] {
            let s: Settings = toml::from_str(toml).unwrap();
            assert_eq!(s.check(), Err(want.to_string()), "{toml}");
        }
        // The ends of a range are in it; the defaults and an empty layer pass.
        for toml in [
            "idle_timeout_secs = 1\nwaiting_room_poll_secs = 600",
            "tftp_port = 65535",
            "",
        ] {
            let s: Settings = toml::from_str(toml).unwrap();
            assert_eq!(s.check(), Ok(()), "{toml}");
        }
        assert_eq!(Settings::defaults().check(), Ok(()));
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
