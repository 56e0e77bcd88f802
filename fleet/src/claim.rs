//! Who may take a per-boot token. A request for MAC X's boot configuration (iPXE script, grub
//! configuration) hands out the token that later unlocks X's BitLocker key and X's say in the
//! campaign, so it must come from the machine the server saw as X: the hardware address of the
//! requester's neighbour entry on the served interface (layer 2), and in full DHCP mode the
//! address leased to X. One grant, one token: a second machine claiming X while X's token is
//! outstanding is a conflict, never a silent replacement.
//!
//! Pure: the evidence (the requester's address, the neighbour entry, the lease) comes in as
//! arguments; the boot edge's drivers gather it.
use crate::host::BootPeer;
use crate::{HostRecord, Mac};
use std::net::{IpAddr, Ipv4Addr};

/// The machine asking for a boot configuration, as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant {
    /// The address the request came from.
    pub ip: IpAddr,
    /// The hardware address of the neighbour entry for `ip` on the served interface; `None`
    /// when the server has no layer-2 view of it (behind a relay, or no entry).
    pub l2: Option<Mac>,
}

impl std::fmt::Display for Claimant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.l2 {
            Some(m) => write!(f, "IP {} (MAC {m})", self.ip),
            None => write!(f, "IP {} (MAC not seen)", self.ip),
        }
    }
}

/// How the server hands out addresses, which says what binds an address to a MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Full DHCP mode: the address the server leased to the MAC, if it holds one.
    Lease(Option<Ipv4Addr>),
    /// Proxy mode: another server hands out addresses; only layer 2 binds.
    Proxy,
}

/// What a boot-configuration request may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The requester is the machine: a token may be issued to it.
    Grant(BootPeer),
    /// Another machine asked for this MAC's configuration: no token; the text goes on the
    /// victim's timeline.
    Impersonation(String),
    /// Two machines claim this MAC (a spoofed hardware address): no token, the host needs
    /// attention and gets no key automatically.
    Conflict(String),
}

/// Whether `h` holds a token that is issued, not spent and not expired at `now_ms`.
pub fn outstanding(h: &HostRecord, now_ms: u64, lifetime_ms: u64) -> bool {
    h.boot_token_sha256.is_some()
        && !h.token_spent
        && now_ms.saturating_sub(h.boot_token_issued_ms) <= lifetime_ms
}

/// Judges a request for `mac`'s boot configuration from `c`.
pub fn judge(
    mac: Mac,
    host: Option<&HostRecord>,
    c: &Claimant,
    binding: Binding,
    now_ms: u64,
    lifetime_ms: u64,
) -> Verdict {
    if let Some(l2) = c.l2 {
        if l2 != mac {
            return Verdict::Impersonation(format!(
                "suspected impersonation: {c} asked for {mac}'s boot configuration; no token issued"
            ));
        }
    }
    let evidence = match (binding, c.l2) {
        (Binding::Lease(Some(lease)), l2) if IpAddr::V4(lease) != c.ip => {
            return if l2.is_some() {
                Verdict::Conflict(format!(
                    "two machines claimed MAC {mac}: IP {lease} (its DHCP lease), {c}"
                ))
            } else {
                Verdict::Impersonation(format!(
                    "suspected impersonation: {c} asked for {mac}'s boot configuration, but {mac} holds the lease for {lease}; no token issued"
                ))
            };
        }
        (Binding::Lease(Some(_)), Some(_)) => "layer 2 and DHCP lease",
        (Binding::Lease(Some(_)), None) => "DHCP lease (no layer-2 view)",
        (Binding::Lease(None), None) => {
            return Verdict::Impersonation(format!(
                "refused: {c} asked for {mac}'s boot configuration, but {mac} holds no lease and the server has no layer-2 view of the requester; no token issued"
            ));
        }
        (_, Some(_)) => "layer 2",
        (Binding::Proxy, None) => "first claim (no layer-2 view)",
    };
    if let Some(h) = host {
        if let Some(first) = h.boot_peer.as_ref() {
            if outstanding(h, now_ms, lifetime_ms) && first.ip != c.ip {
                return Verdict::Conflict(format!("two machines claimed MAC {mac}: {first}, {c}"));
            }
        }
    }
    Verdict::Grant(BootPeer {
        ip: c.ip,
        l2: c.l2,
        evidence: evidence.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: u64 = 3_600_000;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn granted(to: IpAddr, l2: Option<Mac>) -> HostRecord {
        let mut h = HostRecord::new(mac(1), 0);
        h.boot_token_sha256 = Some("ab".into());
        h.boot_token_issued_ms = 1000;
        h.boot_peer = Some(BootPeer {
            ip: to,
            l2,
            evidence: "layer 2".into(),
        });
        h
    }

    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::Grant(_) => "grant",
            Verdict::Impersonation(_) => "impersonation",
            Verdict::Conflict(_) => "conflict",
        }
    }

    #[test]
    fn table() {
        let x = mac(1);
        let other = mac(9);
        let fresh = HostRecord::new(x, 0);
        let held = granted(ip(5), Some(x));
        let mut spent = granted(ip(5), Some(x));
        spent.token_spent = true;
        let lease5 = Binding::Lease(Some(Ipv4Addr::new(10, 0, 0, 5)));
        #[rustfmt::skip]
        type Case<'a> = (&'a str, Option<&'a HostRecord>, Claimant, Binding, u64, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (
                "the machine itself, proxy",
                Some(&fresh),
                Claimant {
                    ip: ip(5),
                    l2: Some(x),
                },
                Binding::Proxy,
                2000,
                "grant",
            ),
            (
                "another MAC at layer 2",
                Some(&fresh),
                Claimant {
                    ip: ip(7),
                    l2: Some(other),
                },
                Binding::Proxy,
                2000,
                "impersonation",
            ),
            (
                "another MAC, no record yet",
                None,
                Claimant {
                    ip: ip(7),
                    l2: Some(other),
                },
                Binding::Proxy,
                2000,
                "impersonation",
            ),
            (
                "another MAC on the leased address",
                Some(&fresh),
                Claimant {
                    ip: ip(5),
                    l2: Some(other),
                },
                lease5,
                2000,
                "impersonation",
            ),
            (
                "full mode, lease and layer 2 agree",
                Some(&fresh),
                Claimant {
                    ip: ip(5),
                    l2: Some(x),
                },
                lease5,
                2000,
                "grant",
            ),
            (
                "full mode, spoofed MAC on another address",
                Some(&fresh),
                Claimant {
                    ip: ip(7),
                    l2: Some(x),
                },
                lease5,
                2000,
                "conflict",
            ),
            (
                "full mode behind a relay, leased address",
                Some(&fresh),
                Claimant {
                    ip: ip(5),
                    l2: None,
                },
                lease5,
                2000,
                "grant",
            ),
            (
                "full mode behind a relay, other address",
                Some(&fresh),
                Claimant {
                    ip: ip(7),
                    l2: None,
                },
                lease5,
                2000,
                "impersonation",
            ),
            (
                "full mode, no lease, no layer 2",
                Some(&fresh),
                Claimant {
                    ip: ip(7),
                    l2: None,
                },
                Binding::Lease(None),
                2000,
                "impersonation",
            ),
            (
                "full mode, no lease, layer 2 agrees",
                Some(&fresh),
                Claimant {
                    ip: ip(7),
                    l2: Some(x),
                },
                Binding::Lease(None),
                2000,
                "grant",
            ),
            (
                "proxy behind a relay: first claim",
                Some(&fresh),
                Claimant {
                    ip: ip(7),
                    l2: None,
                },
                Binding::Proxy,
                2000,
                "grant",
            ),
            (
                "second claimant while the first holds a token",
                Some(&held),
                Claimant {
                    ip: ip(6),
                    l2: Some(x),
                },
                Binding::Proxy,
                2000,
                "conflict",
            ),
            (
                "second claimant behind a relay",
                Some(&held),
                Claimant {
                    ip: ip(6),
                    l2: None,
                },
                Binding::Proxy,
                2000,
                "conflict",
            ),
            (
                "the same machine again (it rebooted)",
                Some(&held),
                Claimant {
                    ip: ip(5),
                    l2: Some(x),
                },
                Binding::Proxy,
                2000,
                "grant",
            ),
            (
                "after the first token was spent",
                Some(&spent),
                Claimant {
                    ip: ip(6),
                    l2: Some(x),
                },
                Binding::Proxy,
                2000,
                "grant",
            ),
            (
                "after the first token expired",
                Some(&held),
                Claimant {
                    ip: ip(6),
                    l2: Some(x),
                },
                Binding::Proxy,
                1000 + LIFE + 1,
                "grant",
            ),
        ];
        for (what, h, c, b, now, want) in cases {
            let v = judge(x, h, &c, b, now, LIFE);
            assert_eq!(kind(&v), want, "{what}: {v:?}");
        }
    }

    #[test]
    fn texts_name_both_claimants() {
        let x = mac(1);
        let held = granted(ip(5), Some(x));
        let v = judge(
            x,
            Some(&held),
            &Claimant {
                ip: ip(6),
                l2: Some(x),
            },
            Binding::Proxy,
            2000,
            LIFE,
        );
        assert_eq!(
            v,
            Verdict::Conflict(
                "two machines claimed MAC 52:54:00:00:00:01: IP 10.0.0.5 (MAC 52:54:00:00:00:01), IP 10.0.0.6 (MAC 52:54:00:00:00:01)".into()
            )
        );
        let v = judge(
            x,
            None,
            &Claimant {
                ip: ip(7),
                l2: Some(mac(9)),
            },
            Binding::Proxy,
            2000,
            LIFE,
        );
        let Verdict::Impersonation(t) = v else {
            panic!("{v:?}")
        };
        assert!(t.contains("IP 10.0.0.7 (MAC 52:54:00:00:00:09)"), "{t}");
    }
}
