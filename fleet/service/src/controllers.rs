//! Management controllers (AMT, Redfish, IPMI, Wake-on-LAN) on the host records: the import
//! seals each secret under the controllers' own key file before anything is kept, and the list
//! never carries one.
use crate::{Error, FleetIo, ImportCount, Result};
use fleet::bmc::{secret_aad, Controller, ControllerImport};
use fleet::{EventSource, Mac};

impl FleetIo {
    /// With the key that seals controller secrets (`keys/bmc-secrets.key`, 0600).
    pub fn with_bmc_vault(mut self, vault: fleet::escrow::vault::Vault) -> Self {
        self.bmc_vault = Some(std::sync::Arc::new(vault));
        self
    }

    /// Applies checked controller rows: each secret sealed (associated data `bmc:<mac>`), the
    /// host created when new, an event each (the controller without its secret) and one audit
    /// entry naming `origin`; durable before it returns.
    pub async fn import_controllers(
        &self,
        actor: &str,
        rows: Vec<ControllerImport>,
        refused: usize,
        origin: Option<&str>,
        now_ms: u64,
    ) -> Result<ImportCount> {
        let (mut created, mut updated) = (0, 0);
        for r in rows {
            let mut c = r.controller.clone();
            if let Some(secret) = &r.secret {
                let vault = self.bmc_vault.as_ref().ok_or_else(|| {
                    Error::Refused("no key file seals controller secrets here".into())
                })?;
                c.sealed_secret = Some(vault.seal_bytes(&secret_aad(r.mac), secret.as_bytes())?);
            }
            let existed = self.host(r.mac).is_some();
            self.update(r.mac, now_ms, &mut |h| {
                h.controller = Some(c.clone());
                Ok(())
            })?;
            self.event(
                r.mac,
                EventSource::Admin,
                "controller",
                format!("management controller imported by {actor}: {c}"),
                now_ms,
            );
            if existed {
                updated += 1
            } else {
                created += 1
            }
        }
        self.import_done(
            actor,
            "bmc-import",
            ImportCount { created, updated },
            refused,
            origin,
            now_ms,
        )
        .await
    }

    /// Every host's controller, sorted by MAC (secrets stay sealed in the records).
    pub fn controllers(&self) -> Vec<(Mac, Option<String>, Controller)> {
        let mut v: Vec<_> = self.with_hosts(|hs| {
            hs.values()
                .filter_map(|h| Some((h.mac, h.hostname.clone(), h.controller.clone()?)))
                .collect()
        });
        v.sort_by_key(|(m, _, _)| *m);
        v
    }
}
