//! Escrowed BitLocker keys on the server: import (sealed with the vault), listing without the
//! passwords, an admin's audited reveal, an admin's paste for a waiting host, and the release to
//! an agent under [`fleet::escrow::decide`]. Every release, refusal, reveal and paste goes to
//! the audit log; no password is ever logged.
use crate::{Error, FleetIo, Result};
use fleet::escrow::{
    decide, vault::Vault, EscrowRecord, EscrowSummary, Parsed, RecoveryPassword, Release,
    ReleaseDecision, Source,
};
use fleet::lifecycle::Input;
use fleet::{EventSource, Mac};

/// What an import did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportResult {
    /// Which kind of export it was.
    pub format: String,
    /// Keys that were new.
    pub imported: usize,
    /// Keys that replaced an earlier one.
    pub updated: usize,
    /// The refused rows.
    pub errors: Vec<ImportError>,
}

/// A refused row of an export.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportError {
    /// Its line in the file.
    pub line: usize,
    /// Why it was refused.
    pub error: String,
}

impl ImportResult {
    /// Keys stored, new or replacing an earlier one.
    pub fn stored(&self) -> usize {
        self.imported + self.updated
    }

    /// One line for the admin (CLI and console).
    pub fn summary(&self) -> String {
        format!(
            "{} keys imported ({} new, {} replaced) from a {} export; {} rows refused",
            self.stored(),
            self.imported,
            self.updated,
            self.format,
            self.errors.len()
        )
    }
}

/// The answer to an agent's key request.
pub enum KeyAnswer {
    /// Release the key.
    Release {
        /// The protector whose key it is.
        protector_id: String,
        /// The recovery password.
        password: RecoveryPassword,
    },
    /// Poll again: nothing is escrowed yet (the reason says what the admin is asked).
    Wait(String),
    /// `conflict`: refused because the key was released to this host before (HTTP 409).
    Refuse {
        /// Why.
        reason: String,
        /// Refused because the key was released to this host before (HTTP 409).
        conflict: bool,
    },
}

impl KeyAnswer {
    fn refuse(reason: String) -> Self {
        Self::Refuse {
            reason,
            conflict: false,
        }
    }
}

impl FleetIo {
    fn vault(&self) -> Result<&Vault> {
        self.vault.as_deref().ok_or_else(|| {
            Error::NotConfigured(
                "no BitLocker escrow key is configured on this server (run `unbrick init`)".into(),
            )
        })
    }

    /// An audit entry whose failure is logged (the release or refusal already happened).
    /// Seals and stores every good row of an export (a row for a known protector ID replaces
    /// it, keeping its release history). One audit entry names the count, never a password.
    pub fn escrow_import(&self, parsed: &Parsed, actor: &str, now_ms: u64) -> Result<ImportResult> {
        let vault = self.vault()?;
        let _g = self.escrow_lock.lock().unwrap();
        let (mut imported, mut updated) = (0, 0);
        for row in &parsed.rows {
            let old = self.store().escrow(&row.protector_id)?;
            let rec = EscrowRecord {
                protector_id: row.protector_id.clone(),
                hostname: row.hostname.clone(),
                source: parsed.source,
                imported_ms: now_ms,
                sealed: vault.seal(&row.protector_id, &row.password)?,
                releases: old.as_ref().map(|o| o.releases.clone()).unwrap_or_default(),
                manual_grant: None,
                reveals: old.as_ref().map(|o| o.reveals).unwrap_or(0),
            };
            self.store().put_escrow(&rec)?;
            if old.is_some() {
                updated += 1;
            } else {
                imported += 1;
            }
        }
        self.audit_logged(
            actor,
            "bitlocker-import",
            format!(
                "{} BitLocker recovery keys imported ({} new, {} replaced) from a {} export; {} bad rows",
                imported + updated,
                imported,
                updated,
                parsed.source,
                parsed.errors.len()
            ),
            now_ms,
        );
        Ok(ImportResult {
            format: parsed.source.to_string(),
            imported,
            updated,
            errors: parsed
                .errors
                .iter()
                .map(|(line, error)| ImportError {
                    line: *line,
                    error: error.clone(),
                })
                .collect(),
        })
    }

    /// Every escrowed key, without its password.
    pub fn escrow_list(&self) -> Result<Vec<EscrowSummary>> {
        Ok(self
            .store()
            .escrows()?
            .iter()
            .map(EscrowSummary::from)
            .collect())
    }

    /// An admin asked to see one key: audited, counted.
    pub fn escrow_reveal(
        &self,
        protector_id: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<Option<RecoveryPassword>> {
        let vault = self.vault()?;
        let _g = self.escrow_lock.lock().unwrap();
        let Some(mut rec) = self.store().escrow(protector_id)? else {
            return Ok(None);
        };
        let pw = vault.open_sealed(&rec.protector_id, &rec.sealed)?;
        rec.reveals += 1;
        self.store().put_escrow(&rec)?;
        self.audit_logged(
            actor,
            "bitlocker-reveal",
            format!(
                "recovery key for protector {protector_id}{} shown to {actor}",
                rec.hostname
                    .as_ref()
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default()
            ),
            now_ms,
        );
        Ok(Some(pw))
    }

    /// An admin pasted a key for a host (the manual path for a key that was never escrowed or
    /// was released already). `protector_id` defaults to the one the host waits for. The key is
    /// escrowed and granted to this host once.
    pub fn escrow_paste(
        &self,
        mac: Mac,
        protector_id: Option<&str>,
        password: &RecoveryPassword,
        actor: &str,
        now_ms: u64,
    ) -> Result<String> {
        let vault = self.vault()?;
        let Some(host) = self.host(mac) else {
            return Err(Error::NotFound(format!("no host {mac}")));
        };
        let id = match protector_id {
            Some(p) => fleet::escrow::protector_id(p)?,
            None => match host.bitlocker_waiting.as_slice() {
                [one] => one.clone(),
                [] => return Err(Error::Refused(format!("{mac} is not waiting for a BitLocker key; name the protector ID (protector_id)"))),
                many => return Err(Error::Refused(format!("{mac} waits for {} protectors ({}); name one (protector_id)", many.len(), many.join(", ")))),
            },
        };
        let _g = self.escrow_lock.lock().unwrap();
        let old = self.store().escrow(&id)?;
        let rec = EscrowRecord {
            protector_id: id.clone(),
            hostname: host.hostname.clone(),
            source: Source::Console,
            imported_ms: now_ms,
            sealed: vault.seal(&id, password)?,
            releases: old.as_ref().map(|o| o.releases.clone()).unwrap_or_default(),
            manual_grant: Some(mac),
            reveals: old.as_ref().map(|o| o.reveals).unwrap_or(0),
        };
        self.store().put_escrow(&rec)?;
        drop(_g);
        self.audit_logged(
            actor,
            "bitlocker-paste",
            format!("recovery key for protector {id} pasted for {mac} by {actor}"),
            now_ms,
        );
        self.event(
            mac,
            EventSource::Admin,
            "bitlocker-key-pasted",
            format!("{actor} pasted the recovery key for protector {id}; the agent picks it up on its next poll"),
            now_ms,
        );
        Ok(id)
    }

    /// An agent asks for the key of one of `ids` (the recovery-password protectors on `volume`).
    /// The caller authenticated the agent's per-boot token; `peer` names the requester (its IP
    /// and the MAC the server's neighbour table gives for it), which the audit log keeps.
    pub fn release_key(
        &self,
        mac: Mac,
        ids: &[String],
        volume: &str,
        peer: &str,
        now_ms: u64,
    ) -> KeyAnswer {
        let actor = format!("agent {mac} from {peer}");
        let Some(host) = self.host(mac) else {
            return KeyAnswer::refuse(format!("no host {mac}"));
        };
        let vault = match self.vault() {
            Ok(v) => v,
            Err(e) => return KeyAnswer::refuse(e.to_string()),
        };
        let scope = self.policy().key_scope(mac);
        let confirm = self.policy().key_release_confirm(mac);
        let _g = self.escrow_lock.lock().unwrap();
        let mut records = Vec::new();
        for id in ids {
            match self.store().escrow(id) {
                Ok(r) => records.push(r),
                Err(e) => return KeyAnswer::refuse(format!("store: {e}")),
            }
        }
        match decide(ids, &records, &host, scope.as_deref(), confirm) {
            ReleaseDecision::Release {
                protector_id,
                manual,
            } => {
                let i = ids
                    .iter()
                    .position(|i| *i == protector_id)
                    .expect("one of ids");
                let mut rec = records[i].clone().expect("decided on a record");
                let password = match vault.open_sealed(&rec.protector_id, &rec.sealed) {
                    Ok(p) => p,
                    Err(e) => {
                        drop(_g);
                        let e = e.to_string();
                        self.refused(mac, &actor, volume, &e, now_ms);
                        return KeyAnswer::refuse(e);
                    }
                };
                let scope = scope.expect("released only in a campaign");
                rec.releases.push(Release {
                    mac,
                    scope: scope.clone(),
                    time_ms: now_ms,
                    manual,
                });
                if manual {
                    rec.manual_grant = None;
                }
                if let Err(e) = self.store().put_escrow(&rec) {
                    return KeyAnswer::refuse(format!("store: {e}"));
                }
                drop(_g);
                self.observe_logged(mac, &Input::KeyReleased, now_ms);
                let what = format!(
                    "recovery key for protector {protector_id} on {volume} released{} in campaign {scope}",
                    if manual { " (pasted by an admin)" } else { "" }
                );
                self.audit_logged(
                    &actor,
                    "bitlocker-release",
                    format!("{what} to {mac}"),
                    now_ms,
                );
                self.event(
                    mac,
                    EventSource::Agent,
                    "bitlocker-key-released",
                    what,
                    now_ms,
                );
                KeyAnswer::Release {
                    protector_id,
                    password,
                }
            }
            ReleaseDecision::Wait { missing, reason } => {
                drop(_g);
                let first = host.bitlocker_waiting != missing;
                if first {
                    self.observe_logged(
                        mac,
                        &Input::KeyWaiting {
                            missing: &missing,
                            reason: &reason,
                        },
                        now_ms,
                    );
                    self.audit_logged(
                        &actor,
                        "bitlocker-wait",
                        format!(
                            "{mac} asked for protector {} on {volume}: none escrowed",
                            missing.join(", ")
                        ),
                        now_ms,
                    );
                }
                KeyAnswer::Wait(reason)
            }
            ReleaseDecision::Approval {
                protector_id,
                reason,
            } => {
                drop(_g);
                let waiting = std::slice::from_ref(&protector_id);
                if host.bitlocker_waiting != waiting {
                    self.observe_logged(
                        mac,
                        &Input::KeyWaiting {
                            missing: waiting,
                            reason: &reason,
                        },
                        now_ms,
                    );
                    self.audit_logged(
                        &actor,
                        "bitlocker-approval-wait",
                        format!("{mac} asked for protector {protector_id} on {volume}: {reason}"),
                        now_ms,
                    );
                }
                KeyAnswer::Wait(reason)
            }
            ReleaseDecision::Refuse {
                reason,
                already_released,
            } => {
                drop(_g);
                self.refused(mac, &actor, volume, &reason, now_ms);
                KeyAnswer::Refuse {
                    reason,
                    conflict: already_released,
                }
            }
        }
    }

    fn refused(&self, mac: Mac, actor: &str, volume: &str, reason: &str, now_ms: u64) {
        self.audit_logged(
            actor,
            "bitlocker-refuse",
            format!("key request from {mac} for {volume} refused: {reason}"),
            now_ms,
        );
        self.event(
            mac,
            EventSource::Agent,
            "bitlocker-key-refused",
            format!("key request for {volume} refused: {reason}"),
            now_ms,
        );
    }
}
