//! The admin's actions on hosts (approve, retry, skip, mark done, forget) and inventory imports:
//! the API, the console and the CLI (online through the API, offline on the stopped store) all
//! run these, so they write the same events and audit entries.
use crate::{Error, FleetIo, Result};
use fleet::inventory::HostImport;
use fleet::lifecycle::{AdminAction, Input};
use fleet::{EventSource, Mac};
use serde::{Deserialize, Serialize};

/// The bulk actions, as the API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Allow the payload (when the site requires approval).
    Approve,
    /// Run the payload again on the next network boot, whatever happened before.
    Retry,
    /// Leave the machine alone: it boots locally and never gets the payload.
    Skip,
    /// An admin fixed it by other means: recovered.
    MarkDone,
    /// Remove the host and its history.
    Forget,
    /// Let the host's BitLocker key leave escrow in its running campaign (campaigns with
    /// `key_release = confirm`, keys not bound to the host's name, disputed claims).
    ApproveKey,
    /// Send a Wake-on-LAN magic packet on the served interface (the running server only).
    Wake,
    /// Ask the host's management controller for the power state and whether it can force a
    /// network boot (read-only; the running server only).
    PowerStatus,
    /// Make the machine network-boot once through its controller: a one-time PXE override,
    /// then a reset (power-on when off). Wake-on-LAN hosts are woken.
    Netboot,
    /// Clear any boot override and restart the machine from its disk.
    BootDisk,
    /// Restart (or power on) the machine, its boot order as it is. Wake-on-LAN hosts are woken.
    PowerCycle,
}

impl Action {
    /// The name the API and the audit log use (`mark-done`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Retry => "retry",
            Self::Skip => "skip",
            Self::MarkDone => "mark-done",
            Self::Forget => "forget",
            Self::ApproveKey => "approve-key",
            Self::Wake => "wake",
            Self::PowerStatus => "power-status",
            Self::Netboot => "netboot",
            Self::BootDisk => "boot-disk",
            Self::PowerCycle => "power-cycle",
        }
    }

    /// The controller operation this action runs, if it is one.
    pub fn controller_op(self) -> Option<fleet::bmc::Op> {
        use fleet::bmc::Op;
        match self {
            Self::PowerStatus => Some(Op::Status),
            Self::Netboot => Some(Op::NetbootOnce),
            Self::BootDisk => Some(Op::BootDisk),
            Self::PowerCycle => Some(Op::PowerCycle),
            _ => None,
        }
    }

    fn state_action(self) -> Option<AdminAction> {
        match self {
            Self::Approve => Some(AdminAction::Approve),
            Self::Retry => Some(AdminAction::Retry),
            Self::Skip => Some(AdminAction::Skip),
            Self::MarkDone => Some(AdminAction::MarkDone),
            _ => None,
        }
    }
}

/// What an action did to one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionOutcome {
    /// The host, as the caller named it.
    pub mac: String,
    /// Whether the action was applied.
    pub ok: bool,
    /// What happened, or why not.
    pub message: String,
}

/// What an action did to every host it named.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionResult {
    /// The action.
    pub action: Action,
    /// Hosts it was applied to.
    pub ok: usize,
    /// Hosts it was refused for.
    pub failed: usize,
    /// One outcome per host, in the order given.
    pub results: Vec<ActionOutcome>,
}

/// Most hosts one action names.
pub const MAX_BULK: usize = 20_000;

/// What an inventory import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCount {
    /// Hosts that were new.
    pub created: usize,
    /// Hosts that existed and were updated.
    pub updated: usize,
}

impl FleetIo {
    /// Runs one action on many hosts: each host's result is reported, one audit entry in all,
    /// and everything is on disk before it returns.
    pub async fn admin_action(
        self: &std::sync::Arc<Self>,
        actor: &str,
        action: Action,
        macs: &[String],
        now_ms: u64,
    ) -> Result<ActionResult> {
        if macs.is_empty() {
            return Err(Error::Invalid("no hosts given (macs is empty)".into()));
        }
        if macs.len() > MAX_BULK {
            return Err(Error::Invalid(format!(
                "at most {MAX_BULK} hosts per request"
            )));
        }
        let mut results = Vec::with_capacity(macs.len());
        if let Some(op) = action.controller_op() {
            // Many controllers at once: parse all, run together, report in the order given.
            let mut parsed = Vec::new();
            for m in macs {
                match m.parse::<Mac>() {
                    Ok(mac) => parsed.push(mac),
                    Err(e) => results.push(ActionOutcome {
                        mac: m.clone(),
                        ok: false,
                        message: e,
                    }),
                }
            }
            for (mac, a) in self
                .control(actor, EventSource::Admin, op, &parsed, now_ms)
                .await
            {
                results.push(ActionOutcome {
                    mac: mac.to_string(),
                    ok: a.ok,
                    message: a.summary,
                });
            }
        }
        for m in macs.iter().filter(|_| action.controller_op().is_none()) {
            let out = match m.parse::<Mac>() {
                Err(e) => ActionOutcome {
                    mac: m.clone(),
                    ok: false,
                    message: e,
                },
                Ok(mac) => self.one_action(actor, action, mac, now_ms),
            };
            results.push(out);
        }
        let ok = results.iter().filter(|r| r.ok).count();
        let failed = results.len() - ok;
        let sample: Vec<&str> = results
            .iter()
            .filter(|r| r.ok)
            .take(20)
            .map(|r| r.mac.as_str())
            .collect();
        self.audit(
            actor,
            action.name(),
            format!(
                "{ok} hosts ({}{}), {failed} refused",
                sample.join(" "),
                if ok > 20 { " ..." } else { "" }
            ),
            now_ms,
        )?;
        self.durable().await?;
        Ok(ActionResult {
            action,
            ok,
            failed,
            results,
        })
    }

    fn one_action(&self, actor: &str, action: Action, mac: Mac, now_ms: u64) -> ActionOutcome {
        let outcome = |ok: bool, message: String| ActionOutcome {
            mac: mac.to_string(),
            ok,
            message,
        };
        if action == Action::Wake {
            if self.host(mac).is_none() {
                return outcome(false, "unknown host; import it first".into());
            }
            let Some(oob) = &self.oob else {
                return outcome(
                    false,
                    "Wake-on-LAN is sent by the running server: use --server (the offline CLI sends no packets)".into(),
                );
            };
            return match oob.wake(mac) {
                Ok(what) => {
                    self.event(
                        mac,
                        EventSource::Admin,
                        "wake-on-lan",
                        format!("{what} (by {actor})"),
                        now_ms,
                    );
                    outcome(true, what)
                }
                Err(e) => outcome(false, e),
            };
        }
        if action == Action::ApproveKey {
            if self.host(mac).is_none() {
                return outcome(false, "unknown host; import it first".into());
            }
            let Some(scope) = self.policy().key_scope(mac) else {
                return outcome(
                    false,
                    "not in a running campaign: keys are released only to hosts of a running campaign".into(),
                );
            };
            return match self.observe(
                mac,
                &Input::KeyApproved {
                    scope: &scope,
                    actor,
                },
                now_ms,
            ) {
                Ok(note) => outcome(true, note.map(|n| n.message).unwrap_or_default()),
                Err(e) => outcome(false, format!("store: {e}")),
            };
        }
        let Some(admin) = action.state_action() else {
            return match self.forget(mac) {
                Ok(true) => {
                    tracing::info!("{mac} forgotten by {actor}");
                    outcome(true, "forgotten".into())
                }
                Ok(false) => outcome(false, "unknown host".into()),
                Err(e) => outcome(false, format!("store: {e}")),
            };
        };
        if self.host(mac).is_none() {
            return outcome(false, "unknown host; import it first".into());
        }
        match self.observe(
            mac,
            &Input::Admin {
                action: admin,
                actor,
            },
            now_ms,
        ) {
            Ok(note) => outcome(true, note.map(|n| n.message).unwrap_or_default()),
            Err(e) => outcome(false, format!("store: {e}")),
        }
    }

    /// Applies an inventory import (host name, site, tags) row by row, with an event on each
    /// host's timeline and one audit entry naming `origin` (the file, or nothing for the API),
    /// durable before it returns. `refused` is the number of rows the parser refused.
    pub async fn import_inventory(
        &self,
        actor: &str,
        rows: &[HostImport],
        refused: usize,
        origin: Option<&str>,
        now_ms: u64,
    ) -> Result<ImportCount> {
        let (mut created, mut updated) = (0, 0);
        for r in rows {
            let existed = self.host(r.mac).is_some();
            self.update(r.mac, now_ms, &mut |h| {
                r.apply(h);
                Ok(())
            })?;
            self.event(
                r.mac,
                EventSource::Admin,
                "import",
                format!(
                    "inventory imported by {actor}: hostname {}, site {}, tags {}",
                    r.hostname.as_deref().unwrap_or("-"),
                    r.site.as_deref().unwrap_or("-"),
                    if r.tags.is_empty() {
                        "-".into()
                    } else {
                        r.tags.join(",")
                    }
                ),
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
            "import",
            ImportCount { created, updated },
            refused,
            origin,
            now_ms,
        )
        .await
    }

    /// The end of an import: one audit entry (`action`: what was imported) with the counts and
    /// `origin`, then durable before the answer. Host and controller imports share it.
    pub(crate) async fn import_done(
        &self,
        actor: &str,
        action: &str,
        n: ImportCount,
        refused: usize,
        origin: Option<&str>,
        now_ms: u64,
    ) -> Result<ImportCount> {
        self.audit(
            actor,
            action,
            format!(
                "{} created, {} updated, {refused} rows refused{}",
                n.created,
                n.updated,
                origin.map(|o| format!(" ({o})")).unwrap_or_default()
            ),
            now_ms,
        )?;
        self.durable().await?;
        Ok(n)
    }
}
