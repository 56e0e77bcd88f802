//! Persistent fleet state behind the [`Store`] trait; [`SledStore`] is the sled implementation.
//!
//! Layout (schema version 2; version 1 lacked the admin flags of host records, see
//! [`SledStore::open`] for the migration): tree `hosts` (MAC bytes -> JSON [`HostRecord`]), tree `events`
//! (MAC bytes ++ big-endian sequence -> JSON [`Event`]), tree `leases` (IPv4 bytes -> JSON
//! [`Lease`]), tree `audit` (sequence -> JSON), tree `campaigns` (id -> JSON [`crate::Campaign`]),
//! tree `escrow` (protector ID -> JSON [`crate::escrow::EscrowRecord`], the password sealed),
//! tree `meta` (`schema_version`).
//! Writes are durable once [`Store::flush`] returns; callers flush before acknowledging.
pub use crate::lease::Lease;
use crate::{Event, HostRecord, Mac};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::Path;

/// The store layout this build writes; older ones are migrated at open.
pub const SCHEMA_VERSION: u32 = 2;

/// Why the store could not read or write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be opened (locked by another server, damaged).
    #[error("store at {path}: {source}")]
    Open {
        /// The store's folder.
        path: String,
        /// Why.
        source: sled::Error,
    },
    /// sled failed.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// A record does not decode.
    #[error("store record is corrupt ({what}): {source}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The store was written by a newer unbrick.
    #[error("store schema version {found} is newer than this unbrick understands ({SCHEMA_VERSION}); upgrade unbrick")]
    TooNew {
        /// The version found on disk.
        found: u32,
    },
    /// The caller's update refused the change.
    #[error("{0}")]
    Rejected(String),
    /// A stranger was not made a host record (the host cap or the new-MAC rate).
    #[error("{0}")]
    Capped(String),
    /// The data directory's file system is (nearly) full: the write was refused before it
    /// reached sled, so nothing is half-written; writes go on by themselves once space is free.
    #[error("the store cannot write: disk full ({} free on {path}; unbrick keeps {} in reserve): free space there and it goes on by itself", mib(*free), mib(*reserve))]
    Full {
        /// The store's folder.
        path: String,
        /// Bytes free for unprivileged writers.
        free: u64,
        /// The reserve below which writes are refused.
        reserve: u64,
    },
}

/// Bytes as MiB with one decimal.
fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Free space where the store lives, as the console and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// The store's folder.
    pub path: String,
    /// Bytes free for unprivileged writers (statvfs `f_bavail`).
    pub free: u64,
    /// Writes are refused below this.
    pub reserve: u64,
    /// The last write was refused for lack of space.
    pub full: bool,
}

impl Space {
    /// The console's line for it.
    pub fn describe(&self) -> String {
        if self.full || self.free < self.reserve {
            format!(
                "the store cannot write: disk full ({} free on {}; {} reserve)",
                mib(self.free),
                self.path,
                mib(self.reserve)
            )
        } else {
            format!("{} free on {}", mib(self.free), self.path)
        }
    }
}

/// An entry of the audit log (admin actions, key releases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// Who (`token:NAME`, `console:NAME`, `cli:USER`, `agent MAC`).
    pub actor: String,
    /// What (`import`, `retry`, `bitlocker-release`, ...).
    pub action: String,
    /// The details, never a secret.
    pub detail: String,
}

/// Fleet persistence. Object-safe so servers can hold `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// One host's record.
    fn host(&self, mac: Mac) -> Result<Option<HostRecord>, StoreError>;
    /// Writes a host's record.
    fn put_host(&self, host: &HostRecord) -> Result<(), StoreError>;
    /// Atomic read-modify-write of one host (created with `HostRecord::new` if absent). The
    /// closure may run more than once under contention and may refuse with `Err`.
    fn update_host(
        &self,
        mac: Mac,
        now_ms: u64,
        f: &mut dyn FnMut(&mut HostRecord) -> Result<(), String>,
    ) -> Result<HostRecord, StoreError>;
    /// Every host's record.
    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError>;
    /// Forgets a host: its record and its whole history. Returns whether it existed.
    fn remove_host(&self, mac: Mac) -> Result<bool, StoreError>;
    /// Appends to a host's history.
    fn append_event(&self, mac: Mac, event: &Event) -> Result<(), StoreError>;
    /// Writes a host's record and appends `events` to its history in one atomic step: after a
    /// crash the store has all of them or none (an agent's report and its timeline entries).
    fn put_host_with_events(&self, host: &HostRecord, events: &[Event]) -> Result<(), StoreError>;
    /// A host's history, oldest first.
    fn events(&self, mac: Mac) -> Result<Vec<Event>, StoreError>;
    /// A host's newest `n` events, oldest first (a page that shows a timeline reads only these).
    fn recent_events(&self, mac: Mac, n: usize) -> Result<Vec<Event>, StoreError>;
    /// Removes a host's oldest events beyond the newest `keep`; returns how many went.
    fn trim_events(&self, mac: Mac, keep: usize) -> Result<usize, StoreError>;
    /// The lease of an address.
    fn lease(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError>;
    /// Writes a lease.
    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Forgets a lease.
    fn remove_lease(&self, ip: Ipv4Addr) -> Result<(), StoreError>;
    /// Every lease.
    fn leases(&self) -> Result<Vec<Lease>, StoreError>;
    /// Appends to the audit log.
    fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The audit log, oldest first.
    fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError>;
    /// Writes a campaign.
    fn put_campaign(&self, c: &crate::Campaign) -> Result<(), StoreError>;
    /// Every campaign.
    fn campaigns(&self) -> Result<Vec<crate::Campaign>, StoreError>;
    /// Escrowed BitLocker keys (sealed), by protector ID.
    fn put_escrow(&self, r: &crate::escrow::EscrowRecord) -> Result<(), StoreError>;
    /// The escrow record of a protector ID.
    fn escrow(&self, protector_id: &str)
        -> Result<Option<crate::escrow::EscrowRecord>, StoreError>;
    /// Every escrow record.
    fn escrows(&self) -> Result<Vec<crate::escrow::EscrowRecord>, StoreError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Saves the fleet's progress series (the console's chart), replacing the last one.
    fn put_progress(&self, series: &crate::progress::Series) -> Result<(), StoreError>;
    /// The progress series saved last, if any.
    fn progress(&self) -> Result<Option<crate::progress::Series>, StoreError>;
    /// Free space where the store lives, when the store knows it.
    fn space(&self) -> Option<Space> {
        None
    }
}

/// The free-space guard: writes are refused while less than `reserve` bytes are free, checked
/// with statvfs at most every 200 ms. The reserve leaves sled room to flush what it already
/// took (sled turns a write error into a permanent one until it is reopened).
#[cfg(feature = "sled-store")]
struct Guard {
    dir: std::path::PathBuf,
    reserve: std::sync::atomic::AtomicU64,
    /// (when checked, bytes free then).
    last: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
    full: std::sync::atomic::AtomicBool,
}

#[cfg(feature = "sled-store")]
impl Guard {
    fn free(&self) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, free)) = *last {
            if at.elapsed() < std::time::Duration::from_millis(200) {
                return free;
            }
        }
        // A statvfs failure is not a full disk: the write goes ahead.
        let free = nix::sys::statvfs::statvfs(&self.dir)
            .map(|v| v.blocks_available().saturating_mul(v.fragment_size()))
            .unwrap_or(u64::MAX);
        *last = Some((std::time::Instant::now(), free));
        free
    }

    fn check(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let (free, reserve) = (self.free(), self.reserve.load(Relaxed));
        let full = free < reserve;
        self.full.store(full, Relaxed);
        if full {
            return Err(StoreError::Full {
                path: self.dir.display().to_string(),
                free,
                reserve,
            });
        }
        Ok(())
    }
}

/// The sled implementation of [`Store`].
pub struct SledStore {
    guard: Guard,
    db: sled::Db,
    hosts: sled::Tree,
    events: sled::Tree,
    leases: sled::Tree,
    audit: sled::Tree,
    campaigns: sled::Tree,
    escrow: sled::Tree,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        what: what.to_string(),
        source,
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialize")
}

/// Writes are refused while less than this is free where the store lives (64 MiB).
pub const DEFAULT_RESERVE: u64 = 64 << 20;
/// The default bound of sled's page cache (`serve --store-cache-mb`). sled's own default is
/// 1 GiB, and it fills the cache with every page it touches until then: a server that runs for
/// days would grow to that size for a store a tenth as big.
pub const DEFAULT_CACHE: u64 = 64 << 20;

impl SledStore {
    /// Sets the free-space reserve (bytes): writes are refused while less is free.
    pub fn with_reserve(self, bytes: u64) -> Self {
        self.set_reserve(bytes);
        self
    }

    /// [`Self::with_reserve`] on an open store.
    pub fn set_reserve(&self, bytes: u64) {
        self.guard
            .reserve
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Opens (or creates) the store in `dir`, migrating older schemas, with the default page
    /// cache ([`DEFAULT_CACHE`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE)
    }

    /// [`Self::open`] with sled's page cache bounded to `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(cache_bytes);
        let db = open_db(&config).map_err(|source| StoreError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0xff; 4]));
                if found > SCHEMA_VERSION {
                    return Err(StoreError::TooNew { found });
                }
                // One step at a time; each step rewrites what it must and then records its
                // version, flushed, so an interrupted migration restarts from the last step.
                for step in found..SCHEMA_VERSION {
                    migrate(&db, step)?;
                    meta.insert("schema_version", &(step + 1).to_be_bytes())?;
                    db.flush()?;
                }
            }
        }
        Ok(Self {
            guard: Guard {
                dir: dir.to_path_buf(),
                reserve: std::sync::atomic::AtomicU64::new(DEFAULT_RESERVE),
                last: Default::default(),
                full: Default::default(),
            },
            hosts: db.open_tree("hosts")?,
            events: db.open_tree("events")?,
            leases: db.open_tree("leases")?,
            audit: db.open_tree("audit")?,
            campaigns: db.open_tree("campaigns")?,
            escrow: db.open_tree("escrow")?,
            db,
        })
    }
}

/// Migrates the store from schema `from` to `from + 1`.
fn migrate(db: &sled::Db, from: u32) -> Result<(), StoreError> {
    match from {
        // 1 -> 2: host records gained `approved`, `skipped` and `reports`. Rewrite every record
        // in the new form (decoding fills the defaults), so a corrupt one is found now, at start,
        // and not in the middle of an incident.
        1 => {
            let hosts = db.open_tree("hosts")?;
            for kv in hosts.iter() {
                let (k, v) = kv?;
                let rec: HostRecord = decode("host (migrating to schema 2)", &v)?;
                hosts.insert(k, encode(&rec))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Store for SledStore {
    fn host(&self, mac: Mac) -> Result<Option<HostRecord>, StoreError> {
        self.hosts
            .get(mac.0)?
            .map(|v| decode(&format!("host {mac}"), &v))
            .transpose()
    }

    fn put_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.guard.check()?;
        self.hosts.insert(host.mac.0, encode(host))?;
        Ok(())
    }

    fn update_host(
        &self,
        mac: Mac,
        now_ms: u64,
        f: &mut dyn FnMut(&mut HostRecord) -> Result<(), String>,
    ) -> Result<HostRecord, StoreError> {
        self.guard.check()?;
        loop {
            let old = self.hosts.get(mac.0)?;
            let mut rec = match &old {
                Some(v) => decode(&format!("host {mac}"), v)?,
                None => HostRecord::new(mac, now_ms),
            };
            f(&mut rec).map_err(StoreError::Rejected)?;
            let new = encode(&rec);
            match self.hosts.compare_and_swap(mac.0, old, Some(new))? {
                Ok(()) => return Ok(rec),
                Err(_) => continue,
            }
        }
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.hosts
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                decode("host", &v)
            })
            .collect()
    }

    fn remove_host(&self, mac: Mac) -> Result<bool, StoreError> {
        let existed = self.hosts.remove(mac.0)?.is_some();
        let keys: Vec<_> = self
            .events
            .scan_prefix(mac.0)
            .keys()
            .collect::<Result<_, _>>()?;
        for k in keys {
            self.events.remove(k)?;
        }
        Ok(existed)
    }

    fn append_event(&self, mac: Mac, event: &Event) -> Result<(), StoreError> {
        self.guard.check()?;
        let mut key = mac.0.to_vec();
        key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        self.events.insert(key, encode(event))?;
        Ok(())
    }

    fn put_host_with_events(&self, host: &HostRecord, events: &[Event]) -> Result<(), StoreError> {
        use sled::Transactional;
        self.guard.check()?;
        let mut keyed = Vec::with_capacity(events.len());
        for e in events {
            let mut key = host.mac.0.to_vec();
            key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
            keyed.push((key, encode(e)));
        }
        let rec = encode(host);
        (&self.hosts, &self.events)
            .transaction(|(h, ev)| {
                h.insert(&host.mac.0[..], rec.as_slice())?;
                for (k, v) in &keyed {
                    ev.insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Rejected("the transaction was aborted".into())
                }
            })
    }

    fn events(&self, mac: Mac) -> Result<Vec<Event>, StoreError> {
        self.events
            .scan_prefix(mac.0)
            .map(|kv| {
                let (_, v) = kv?;
                decode(&format!("event of {mac}"), &v)
            })
            .collect()
    }

    fn recent_events(&self, mac: Mac, n: usize) -> Result<Vec<Event>, StoreError> {
        let mut v = self
            .events
            .scan_prefix(mac.0)
            .rev()
            .take(n)
            .map(|kv| {
                let (_, v) = kv?;
                decode(&format!("event of {mac}"), &v)
            })
            .collect::<Result<Vec<Event>, StoreError>>()?;
        v.reverse();
        Ok(v)
    }

    fn trim_events(&self, mac: Mac, keep: usize) -> Result<usize, StoreError> {
        let keys: Vec<sled::IVec> = self
            .events
            .scan_prefix(mac.0)
            .keys()
            .collect::<Result<_, _>>()?;
        let n = keys.len().saturating_sub(keep);
        for k in &keys[..n] {
            self.events.remove(k)?;
        }
        Ok(n)
    }

    fn lease(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        self.leases
            .get(ip.octets())?
            .map(|v| decode(&format!("lease {ip}"), &v))
            .transpose()
    }

    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.guard.check()?;
        self.leases.insert(lease.ip.octets(), encode(lease))?;
        Ok(())
    }

    fn remove_lease(&self, ip: Ipv4Addr) -> Result<(), StoreError> {
        self.leases.remove(ip.octets())?;
        Ok(())
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.leases
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                decode("lease", &v)
            })
            .collect()
    }

    fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.guard.check()?;
        self.audit
            .insert(self.db.generate_id()?.to_be_bytes(), encode(entry))?;
        Ok(())
    }

    fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                decode("audit entry", &v)
            })
            .collect()
    }

    fn put_progress(&self, series: &crate::progress::Series) -> Result<(), StoreError> {
        self.guard.check()?;
        self.db
            .open_tree("meta")?
            .insert("progress", encode(series))?;
        Ok(())
    }

    fn progress(&self) -> Result<Option<crate::progress::Series>, StoreError> {
        match self.db.open_tree("meta")?.get("progress")? {
            Some(v) => decode("progress series", &v).map(Some),
            None => Ok(None),
        }
    }

    fn put_campaign(&self, c: &crate::Campaign) -> Result<(), StoreError> {
        self.guard.check()?;
        self.campaigns.insert(c.id.as_bytes(), encode(c))?;
        Ok(())
    }

    fn campaigns(&self) -> Result<Vec<crate::Campaign>, StoreError> {
        self.campaigns
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                decode("campaign", &v)
            })
            .collect()
    }

    fn put_escrow(&self, r: &crate::escrow::EscrowRecord) -> Result<(), StoreError> {
        self.guard.check()?;
        self.escrow.insert(r.protector_id.as_bytes(), encode(r))?;
        Ok(())
    }

    fn escrow(
        &self,
        protector_id: &str,
    ) -> Result<Option<crate::escrow::EscrowRecord>, StoreError> {
        self.escrow
            .get(protector_id.as_bytes())?
            .map(|v| decode("escrow record", &v))
            .transpose()
    }

    fn escrows(&self) -> Result<Vec<crate::escrow::EscrowRecord>, StoreError> {
        self.escrow
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                decode("escrow record", &v)
            })
            .collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn space(&self) -> Option<Space> {
        use std::sync::atomic::Ordering::Relaxed;
        let free = self.guard.free();
        Some(Space {
            path: self.guard.dir.display().to_string(),
            free,
            reserve: self.guard.reserve.load(Relaxed),
            full: self.guard.full.load(Relaxed) && free < self.guard.reserve.load(Relaxed),
        })
    }
}

/// Opens the database `config` names. sled's background flusher may hold a just-dropped
/// database's lock for a moment (seen when one process reopens a store, as the tests and a CLI
/// command after the server's own use do): a lock conflict is retried for up to 2 s.
fn open_db(config: &sled::Config) -> sled::Result<sled::Db> {
    let mut tries = 0;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if tries < 20 && e.to_string().contains("could not acquire lock") =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventSource, HostState};

    /// The database itself, as an older unbrick left it (the lock retried as the store does:
    /// a store dropped just before may still hold it).
    fn raw(dir: &Path) -> sled::Db {
        open_db(&sled::Config::new().path(dir)).unwrap()
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("unbrick-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn below_the_reserve_every_write_is_refused_whole_and_resumes_by_itself() {
        let dir = tmp("full");
        let s = SledStore::open(&dir).unwrap();
        let (a, b) = (Mac([2, 0, 0, 0, 0, 1]), Mac([2, 0, 0, 0, 0, 2]));
        s.put_host(&HostRecord::new(a, 1)).unwrap();
        assert!(!s.space().unwrap().full);
        // No file system has this much free: as if the disk filled.
        s.set_reserve(u64::MAX);
        let full = |r: Result<(), StoreError>| match r {
            Err(e @ StoreError::Full { .. }) => e.to_string(),
            other => panic!("expected a full-disk refusal, got {other:?}"),
        };
        let msg = full(s.put_host(&HostRecord::new(b, 2)));
        assert!(
            msg.starts_with("the store cannot write: disk full (") && msg.contains(" free on "),
            "{msg}"
        );
        let ev = Event {
            time_ms: 3,
            source: EventSource::Admin,
            kind: "note".into(),
            message: "x".into(),
        };
        full(s.append_event(a, &ev));
        full(
            s.update_host(a, 3, &mut |h| {
                h.notes = "changed".into();
                Ok(())
            })
            .map(drop),
        );
        full(s.put_lease(&Lease {
            ip: Ipv4Addr::new(10, 0, 0, 9),
            mac: a,
            expires_ms: 9,
            offered_only: false,
        }));
        full(s.audit(&AuditEntry {
            time_ms: 3,
            actor: "t".into(),
            action: "a".into(),
            detail: String::new(),
        }));
        let space = s.space().unwrap();
        assert!(
            space.full && space.describe().contains("disk full"),
            "{space:?}"
        );
        // What was refused is not there, what was there is untouched; reads and flushes work.
        s.flush().unwrap();
        assert!(s.host(b).unwrap().is_none());
        assert_eq!(s.host(a).unwrap().unwrap().notes, "");
        assert!(s.events(a).unwrap().is_empty());
        // Space again: writes go on without reopening.
        s.set_reserve(0);
        s.put_host(&HostRecord::new(b, 4)).unwrap();
        s.append_event(a, &ev).unwrap();
        s.flush().unwrap();
        assert!(!s.space().unwrap().full);
        drop(s);
        let s = SledStore::open(&dir).unwrap();
        assert!(s.host(b).unwrap().is_some() && s.events(a).unwrap().len() == 1);
        drop(s);
        // Best effort: sled's flusher may still be closing its files.
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recent_events_are_the_newest_in_order_and_only_that_host() {
        let dir = tmp("recent");
        let s = SledStore::open_with_cache(&dir, 4 << 20).unwrap();
        let (a, b): (Mac, Mac) = (
            "52:54:00:00:00:0a".parse().unwrap(),
            "52:54:00:00:00:0b".parse().unwrap(),
        );
        for i in 0..50u64 {
            for m in [a, b] {
                s.append_event(
                    m,
                    &Event {
                        time_ms: i,
                        source: EventSource::Dhcp,
                        kind: "dhcp-discover".into(),
                        message: format!("{m} #{i}"),
                    },
                )
                .unwrap();
            }
        }
        let r = s.recent_events(a, 5).unwrap();
        let got: Vec<u64> = r.iter().map(|e| e.time_ms).collect();
        assert_eq!(got, vec![45, 46, 47, 48, 49]);
        assert!(r.iter().all(|e| e.message.starts_with(&a.to_string())));
        assert_eq!(s.recent_events(a, 500).unwrap(), s.events(a).unwrap());
        let none: Mac = "52:54:00:00:00:0c".parse().unwrap();
        assert!(s.recent_events(none, 5).unwrap().is_empty());
        drop(s);
        // Best effort: sled's flusher may still be closing its files.
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hosts_events_leases_survive_reopen() {
        let dir = tmp("reopen");
        let mac: Mac = "52:54:00:00:00:07".parse().unwrap();
        {
            let s = SledStore::open(&dir).unwrap();
            s.update_host(mac, 5, &mut |h| {
                h.transition(HostState::Seen, 5)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .unwrap();
            for i in 0..3 {
                s.append_event(
                    mac,
                    &Event {
                        time_ms: i,
                        source: EventSource::Dhcp,
                        kind: "dhcp-discover".into(),
                        message: format!("#{i}"),
                    },
                )
                .unwrap();
            }
            s.put_lease(&Lease {
                ip: Ipv4Addr::new(10, 0, 0, 5),
                mac,
                expires_ms: 99,
                offered_only: false,
            })
            .unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(&dir).unwrap();
        assert_eq!(s.host(mac).unwrap().unwrap().state, HostState::Seen);
        let ev = s.events(mac).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["#0", "#1", "#2"]
        );
        assert_eq!(s.leases().unwrap().len(), 1);
        let refused = s.update_host(mac, 6, &mut |h| {
            h.transition(HostState::Recovered, 6)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        assert!(matches!(refused, Err(StoreError::Rejected(_))));
        assert_eq!(
            s.host(mac).unwrap().unwrap().state,
            HostState::Seen,
            "refused update changes nothing"
        );
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn schema_1_is_migrated() {
        let dir = tmp("migrate");
        {
            let db = raw(&dir);
            db.open_tree("meta")
                .unwrap()
                .insert("schema_version", &1u32.to_be_bytes())
                .unwrap();
            // A host record as schema 1 wrote it: no approved/skipped/reports.
            let v1 = r#"{"mac":"52:54:00:00:00:09","state":{"state":"remediated"},"state_since_ms":5,"first_seen_ms":1,"last_seen_ms":5,"payload_boots":1}"#;
            db.open_tree("hosts")
                .unwrap()
                .insert([0x52, 0x54, 0, 0, 0, 9], v1.as_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let s = SledStore::open(&dir).unwrap();
        let h = s
            .host("52:54:00:00:00:09".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(h.state, HostState::Remediated);
        assert!(!h.skipped && !h.approved && h.reports == 0);
        drop(s);
        let db = raw(&dir);
        let v = db
            .open_tree("meta")
            .unwrap()
            .get("schema_version")
            .unwrap()
            .unwrap();
        assert_eq!(v.as_ref(), &SCHEMA_VERSION.to_be_bytes());
        let raw = db
            .open_tree("hosts")
            .unwrap()
            .get([0x52, 0x54, 0, 0, 0, 9])
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&raw).contains("\"skipped\":false"),
            "record rewritten"
        );
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn forget_removes_the_host_and_its_history_only() {
        let dir = tmp("forget");
        let s = SledStore::open(&dir).unwrap();
        let a: Mac = "52:54:00:00:00:01".parse().unwrap();
        let b: Mac = "52:54:00:00:00:02".parse().unwrap();
        for m in [a, b] {
            s.put_host(&HostRecord::new(m, 1)).unwrap();
            s.append_event(
                m,
                &Event {
                    time_ms: 1,
                    source: EventSource::Admin,
                    kind: "x".into(),
                    message: String::new(),
                },
            )
            .unwrap();
        }
        assert!(s.remove_host(a).unwrap());
        assert!(!s.remove_host(a).unwrap());
        assert!(s.host(a).unwrap().is_none() && s.events(a).unwrap().is_empty());
        assert!(s.host(b).unwrap().is_some() && s.events(b).unwrap().len() == 1);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tmp("schema");
        {
            let db = raw(&dir);
            db.open_tree("meta")
                .unwrap()
                .insert("schema_version", &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            SledStore::open(&dir),
            Err(StoreError::TooNew { found: 99 })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
