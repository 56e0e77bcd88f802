//! Out-of-band actions on a host's machine, behind a trait the server implements (this crate
//! does no network I/O): Wake-on-LAN, and the management controllers' power state, one-time
//! network boot, boot from disk and power cycle. The admin's actions and a campaign's triggers
//! run through [`FleetIo::control`], so the API, the console, the CLI and the campaigns record
//! the same events and audit entries.
use crate::FleetIo;
use fleet::bmc::{secret_aad, Controller, ControllerKind, Op};
use fleet::{Arch, ClientKind, EventSource, HostRecord, Mac};
use std::sync::Arc;

/// One controller operation, with the secret opened for it (wiped when dropped).
#[derive(Clone)]
pub struct ControlRequest {
    /// The host.
    pub mac: Mac,
    /// Its controller.
    pub controller: Controller,
    /// The controller's password, opened from its seal for this request only.
    pub secret: Option<zeroize::Zeroizing<String>>,
    /// It boots UEFI (else legacy BIOS): the override's mode.
    pub uefi: bool,
    /// Its SMBIOS UUID, when a PXE request told it (picks the system on a multi-system BMC).
    pub uuid: Option<String>,
    /// What to do.
    pub op: Op,
}

/// What a controller operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlAnswer {
    /// It worked.
    pub ok: bool,
    /// One line: what it found and did, or why it failed (naming the controller).
    pub summary: String,
    /// Every request and answer, in words (never a secret).
    pub steps: Vec<String>,
    /// The power state it read, if any.
    pub power: Option<String>,
}

/// What can reach a machine that is not running unbrick's agent.
pub trait OutOfBand: Send + Sync {
    /// Sends a Wake-on-LAN magic packet for `mac` on the served interface only; says what was
    /// sent, or why not.
    fn wake(&self, mac: Mac) -> Result<String, String>;

    /// Runs one controller operation; blocking (timeouts and retries inside), called on the
    /// blocking pool.
    fn control(&self, req: &ControlRequest) -> ControlAnswer;
}

/// Whether the host boots UEFI, from how it last network-booted (UEFI when never seen: the
/// machines unbrick is for are Windows 10/11 PCs).
pub fn boots_uefi(h: &HostRecord) -> bool {
    !matches!(
        h.last_kind,
        Some(ClientKind::Pxe(Arch::Bios) | ClientKind::Ipxe(Arch::Bios))
    )
}

impl FleetIo {
    /// The request for `op` on `mac`'s controller, its secret opened; or why there is none.
    pub fn control_request(&self, mac: Mac, op: Op) -> Result<ControlRequest, String> {
        let h = self
            .host(mac)
            .ok_or_else(|| "unknown host; import it first".to_string())?;
        let c = h.controller.clone().ok_or_else(|| {
            "no management controller for this host (import one: unbrick bmc import)".to_string()
        })?;
        let secret = match &c.sealed_secret {
            None => None,
            Some(sealed) => {
                let vault = self
                    .bmc_vault
                    .as_ref()
                    .ok_or_else(|| "no key file opens controller secrets here".to_string())?;
                let raw = vault
                    .open_bytes(&secret_aad(mac), sealed)
                    .map_err(|e| e.to_string())?;
                Some(zeroize::Zeroizing::new(
                    String::from_utf8(raw.to_vec())
                        .map_err(|_| "the controller secret is not text".to_string())?,
                ))
            }
        };
        Ok(ControlRequest {
            mac,
            controller: c,
            secret,
            uefi: boots_uefi(&h),
            uuid: h.uuid.clone(),
            op,
        })
    }

    /// Runs `op` on the controller of each host in `macs`, many at once (the server's
    /// per-controller limit applies inside): each result on the host's timeline with every
    /// step, by `actor`. Hosts with Wake-on-LAN only are woken for `netboot` and
    /// `power-cycle` (the machine boots its normal order unless its firmware wakes to
    /// network boot).
    pub async fn control(
        self: &Arc<Self>,
        actor: &str,
        source: EventSource,
        op: Op,
        macs: &[Mac],
        now_ms: u64,
    ) -> Vec<(Mac, ControlAnswer)> {
        let mut set = tokio::task::JoinSet::new();
        for (i, mac) in macs.iter().copied().enumerate() {
            let io = self.clone();
            let slots = self.oob_slots.clone();
            set.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let answer = io.control_one(mac, op).await;
                (i, mac, answer)
            });
        }
        let mut out = Vec::with_capacity(macs.len());
        while let Some(r) = set.join_next().await {
            match r {
                Ok(x) => out.push(x),
                Err(e) => tracing::error!("a controller task failed: {e}"),
            }
        }
        out.sort_by_key(|(i, _, _)| *i);
        for (_, mac, a) in &out {
            if self.host(*mac).is_none() {
                continue;
            }
            let steps = if a.steps.is_empty() {
                String::new()
            } else {
                format!(" [{}]", a.steps.join("; "))
            };
            self.event(
                *mac,
                source,
                if a.ok {
                    "controller"
                } else {
                    "controller-failed"
                },
                format!(
                    "{} {}: {} (by {actor}){steps}",
                    op.name(),
                    if a.ok { "done" } else { "failed" },
                    a.summary
                ),
                now_ms,
            );
        }
        out.into_iter().map(|(_, m, a)| (m, a)).collect()
    }

    async fn control_one(self: &Arc<Self>, mac: Mac, op: Op) -> ControlAnswer {
        let fail = |summary: String| ControlAnswer {
            ok: false,
            summary,
            steps: vec![],
            power: None,
        };
        let req = match self.control_request(mac, op) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let Some(oob) = self.oob.clone() else {
            return fail(
                "controllers are reached by the running server: use --server (the offline CLI sends nothing)".into(),
            );
        };
        if req.controller.kind == ControllerKind::Wol {
            return match op {
                Op::NetbootOnce | Op::PowerCycle => match oob.wake(mac) {
                    Ok(what) => ControlAnswer {
                        ok: true,
                        summary: what,
                        steps: vec![],
                        power: None,
                    },
                    Err(e) => fail(e),
                },
                _ => fail(format!(
                    "Wake-on-LAN only: no controller answers {} for this host",
                    op.name()
                )),
            };
        }
        match tokio::task::spawn_blocking(move || oob.control(&req)).await {
            Ok(a) => a,
            Err(e) => fail(format!("the controller task failed: {e}")),
        }
    }
}
