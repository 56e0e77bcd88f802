//! The full-mode address pool: pure lease bookkeeping, persisted by the driver.
use fleet::{Lease, Mac};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

/// How long an offered address is held for the client that was offered it.
pub const OFFER_HOLD_MS: u64 = 60_000;
/// How long an address declined by a client (found in use) stays out of the pool.
pub const DECLINE_HOLD_MS: u64 = 10 * 60_000;
/// The owner recorded for a declined address.
pub const DECLINED: Mac = Mac([0; 6]);

/// Why a REQUEST is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nak {
    /// The address is not in the pool.
    NotInPool,
    /// The address is leased to another client.
    LeasedToOther,
    /// Nothing was offered to this client.
    NoOffer,
}

impl Nak {
    /// The reason in words (for the NAK's message).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotInPool => "requested address is not in this server's pool",
            Self::LeasedToOther => "requested address is leased to another client",
            Self::NoOffer => "requested address was not offered to this client",
        }
    }
}

/// The full-mode address pool: leases and offers, pure.
#[derive(Debug, Clone)]
pub struct LeasePool {
    first: u32,
    last: u32,
    exclude: Ipv4Addr,
    leases: BTreeMap<u32, Lease>,
    by_mac: HashMap<Mac, u32>,
}

impl LeasePool {
    /// A pool from `first` to `last` inclusive, never handing out `exclude` (the server itself).
    pub fn new(first: Ipv4Addr, last: Ipv4Addr, exclude: Ipv4Addr, existing: Vec<Lease>) -> Self {
        let mut p = Self {
            first: first.into(),
            last: last.into(),
            exclude,
            leases: BTreeMap::new(),
            by_mac: HashMap::new(),
        };
        for l in existing {
            if p.contains(l.ip) {
                p.insert(l);
            }
        }
        p
    }

    /// Whether `ip` is in the pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= self.first && n <= self.last && ip != self.exclude
    }

    /// How many addresses it has.
    pub fn size(&self) -> usize {
        let ex = u32::from(self.exclude);
        (self.last - self.first + 1) as usize - usize::from(ex >= self.first && ex <= self.last)
    }

    fn insert(&mut self, l: Lease) {
        let n = u32::from(l.ip);
        if l.mac != DECLINED {
            if let Some(old) = self.by_mac.insert(l.mac, n) {
                if old != n {
                    self.leases.remove(&old);
                }
            }
        }
        self.leases.insert(n, l);
    }

    fn remove(&mut self, ip: Ipv4Addr) -> Option<Lease> {
        let l = self.leases.remove(&u32::from(ip))?;
        if self.by_mac.get(&l.mac) == Some(&u32::from(ip)) {
            self.by_mac.remove(&l.mac);
        }
        Some(l)
    }

    /// The lease this MAC holds (expired or not).
    pub fn lease_of(&self, mac: Mac) -> Option<&Lease> {
        self.by_mac.get(&mac).and_then(|n| self.leases.get(n))
    }

    fn free_for(&self, ip: Ipv4Addr, mac: Mac, now_ms: u64) -> bool {
        self.contains(ip)
            && match self.leases.get(&u32::from(ip)) {
                None => true,
                Some(l) => l.mac == mac || l.expires_ms <= now_ms,
            }
    }

    /// Chooses an address for a DISCOVER (RFC 2131 4.3.1): the client's current lease, else the
    /// address it asks for if free, else the lowest free one. Holds it briefly as an offer.
    pub fn offer(&mut self, mac: Mac, requested: Option<Ipv4Addr>, now_ms: u64) -> Option<Lease> {
        let ip = if let Some(l) = self.lease_of(mac) {
            l.ip
        } else if let Some(r) = requested.filter(|r| self.free_for(*r, mac, now_ms)) {
            r
        } else {
            (self.first..=self.last)
                .map(Ipv4Addr::from)
                .find(|ip| self.free_for(*ip, mac, now_ms))?
        };
        let existing = self
            .lease_of(mac)
            .filter(|l| l.ip == ip && !l.offered_only)
            .cloned();
        let lease = match existing {
            // Keep a committed lease as it is; the REQUEST will extend it.
            Some(l) if l.expires_ms > now_ms => l,
            _ => Lease {
                ip,
                mac,
                expires_ms: now_ms + OFFER_HOLD_MS,
                offered_only: true,
            },
        };
        if let Some(old) = self.leases.get(&u32::from(ip)).cloned() {
            if old.mac != mac {
                self.remove(old.ip);
            }
        }
        self.insert(lease.clone());
        Some(lease)
    }

    /// Commits `ip` to `mac` for a REQUEST. `require_offer` is true in SELECTING state, where the
    /// client must be taking an address we offered it.
    pub fn commit(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        lease_ms: u64,
        now_ms: u64,
        require_offer: bool,
    ) -> Result<Lease, Nak> {
        if !self.contains(ip) {
            return Err(Nak::NotInPool);
        }
        match self.leases.get(&u32::from(ip)) {
            Some(l) if l.mac != mac && l.expires_ms > now_ms => return Err(Nak::LeasedToOther),
            Some(l) if l.mac == mac => {}
            _ if require_offer => return Err(Nak::NoOffer),
            _ => {}
        }
        if let Some(old) = self.leases.get(&u32::from(ip)).cloned() {
            if old.mac != mac {
                self.remove(old.ip);
            }
        }
        let lease = Lease {
            ip,
            mac,
            expires_ms: now_ms + lease_ms,
            offered_only: false,
        };
        self.insert(lease.clone());
        Ok(lease)
    }

    /// The client gave the address back (RELEASE), or chose another server after our offer.
    pub fn release(&mut self, mac: Mac, ip: Option<Ipv4Addr>) -> Option<Lease> {
        let n = *self.by_mac.get(&mac)?;
        if ip.is_some_and(|ip| u32::from(ip) != n) {
            return None;
        }
        self.remove(Ipv4Addr::from(n))
    }

    /// The client found the address in use (DECLINE): keep it out of the pool for a while.
    pub fn decline(&mut self, mac: Mac, ip: Ipv4Addr, now_ms: u64) -> Option<Lease> {
        if self.leases.get(&u32::from(ip)).is_none_or(|l| l.mac != mac) {
            return None;
        }
        self.remove(ip);
        let l = Lease {
            ip,
            mac: DECLINED,
            expires_ms: now_ms + DECLINE_HOLD_MS,
            offered_only: false,
        };
        self.insert(l.clone());
        Some(l)
    }

    /// Drops expired leases; returns them so the driver can delete them from the store.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Lease> {
        let gone: Vec<Ipv4Addr> = self
            .leases
            .values()
            .filter(|l| l.expires_ms <= now_ms)
            .map(|l| l.ip)
            .collect();
        gone.into_iter().filter_map(|ip| self.remove(ip)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }
    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }
    fn pool() -> LeasePool {
        LeasePool::new(ip(1), ip(4), ip(1), vec![])
    }

    #[test]
    fn offer_commit_release() {
        let mut p = pool();
        assert_eq!(p.size(), 3);
        let o = p.offer(mac(1), None, 0).unwrap();
        assert_eq!(o.ip, ip(2), "the server's own address is never offered");
        assert!(o.offered_only);
        assert_eq!(
            p.offer(mac(1), None, 10).unwrap().ip,
            ip(2),
            "same client, same address"
        );
        assert_eq!(
            p.offer(mac(2), Some(ip(2)), 10).unwrap().ip,
            ip(3),
            "held offer is not given away"
        );
        let l = p.commit(mac(1), ip(2), 3_600_000, 20, true).unwrap();
        assert!(!l.offered_only);
        assert_eq!(
            p.commit(mac(3), ip(2), 1000, 30, false),
            Err(Nak::LeasedToOther)
        );
        assert_eq!(
            p.commit(mac(3), ip(9), 1000, 30, false),
            Err(Nak::NotInPool)
        );
        assert_eq!(p.commit(mac(3), ip(4), 1000, 30, true), Err(Nak::NoOffer));
        assert_eq!(p.release(mac(1), Some(ip(2))).unwrap().ip, ip(2));
        assert_eq!(p.offer(mac(3), Some(ip(2)), 40).unwrap().ip, ip(2));
    }

    #[test]
    fn exhaustion_expiry_and_decline() {
        let mut p = pool();
        for m in 1..=3 {
            let o = p.offer(mac(m), None, 0).unwrap();
            p.commit(mac(m), o.ip, 1000, 0, true).unwrap();
        }
        assert_eq!(p.offer(mac(9), None, 500), None, "pool exhausted");
        assert_eq!(
            p.offer(mac(9), None, 1000).unwrap().ip,
            ip(2),
            "expired leases are reused"
        );
        assert_eq!(p.expire(1000).len(), 2);
        let mut p = pool();
        let o = p.offer(mac(1), None, 0).unwrap();
        p.decline(mac(1), o.ip, 0).unwrap();
        assert_eq!(
            p.offer(mac(1), None, 1).unwrap().ip,
            ip(3),
            "declined address is held back"
        );
        assert_eq!(
            p.decline(mac(2), ip(3), 1),
            None,
            "only the holder can decline"
        );
    }

    proptest! {
        /// Whatever the sequence of operations, no address is ever held by two clients at once.
        #[test]
        fn never_double_leased(ops in prop::collection::vec((0u8..6, 1u8..6, 0u8..8, 0u64..5000), 0..200)) {
            let mut p = LeasePool::new(ip(1), ip(6), ip(1), vec![]);
            let mut now = 0;
            for (op, m, a, dt) in ops {
                now += dt;
                match op {
                    0 | 1 => { p.offer(mac(m), Some(ip(a)), now); }
                    2 | 3 => { let _ = p.commit(mac(m), ip(a), 3000, now, op == 2); }
                    4 => { p.release(mac(m), None); }
                    _ => { p.decline(mac(m), ip(a), now); }
                }
                let mut holders: HashMap<u32, Mac> = HashMap::new();
                for l in p.leases.values().filter(|l| l.expires_ms > now && l.mac != DECLINED) {
                    prop_assert!(p.contains(l.ip));
                    prop_assert!(holders.insert(u32::from(l.ip), l.mac).is_none());
                }
                let mut macs = std::collections::HashSet::new();
                for l in p.leases.values().filter(|l| l.mac != DECLINED) {
                    prop_assert!(macs.insert(l.mac), "one lease per client");
                }
            }
        }
    }
}
