//! The server's way to machines out of band: Wake-on-LAN on the served interface, and the
//! management controllers through `unbrick-oob` (Redfish, AMT, IPMI), at most
//! [`PER_CONTROLLER`] operations at a time on one controller (a BMC serves few sessions, and
//! two resets racing each other help nobody).
use crate::wol::Waker;
use fleet::Mac;
use fleet_service::oob::{ControlAnswer, ControlRequest, OutOfBand};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Condvar, Mutex};
use unbrick_oob::drive::{Limits, Target};
use unbrick_oob::{Credentials, Machine, Trace};

/// Operations at once on one controller (address and port).
pub const PER_CONTROLLER: usize = 1;

/// One controller's operations in flight, and who waits for one to end.
type Slots = Arc<(Mutex<usize>, Condvar)>;

/// Wake-on-LAN plus the controller clients.
pub struct Controllers {
    waker: Waker,
    limits: Limits,
    busy: Mutex<HashMap<(Ipv4Addr, u16), Slots>>,
}

impl Controllers {
    /// For the served interface `device`, with these timeouts and retries.
    pub fn new(device: String, limits: Limits) -> Self {
        Self {
            waker: Waker { device },
            limits,
            busy: Mutex::new(HashMap::new()),
        }
    }

    /// Holds one of the controller's slots until the guard is dropped.
    fn slot(&self, key: (Ipv4Addr, u16)) -> SlotGuard {
        let cell = self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        {
            let (n, cv) = &*cell;
            let mut n = n.lock().unwrap_or_else(|e| e.into_inner());
            while *n >= PER_CONTROLLER {
                n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
            }
            *n += 1;
        }
        SlotGuard(cell)
    }
}

struct SlotGuard(Slots);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let (n, cv) = &*self.0;
        *n.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cv.notify_one();
    }
}

impl OutOfBand for Controllers {
    fn wake(&self, mac: Mac) -> Result<String, String> {
        self.waker.send(mac)
    }

    fn control(&self, req: &ControlRequest) -> ControlAnswer {
        let c = &req.controller;
        let fail = |summary: String| ControlAnswer {
            ok: false,
            summary,
            steps: vec![],
            power: None,
        };
        let (Some(address), Some(port)) = (c.address, c.port) else {
            return fail(format!("{}: no address to reach it at", c.kind.name()));
        };
        let (Some(user), Some(secret)) = (c.user.clone(), req.secret.clone()) else {
            return fail(format!(
                "{} at {address}: no user and secret imported",
                c.kind.name()
            ));
        };
        let target = Target {
            kind: c.kind,
            address,
            port,
            tls: c.tls,
            fingerprint: c.fingerprint.clone(),
            ca_file: c.ca_file.clone(),
        };
        let cred = Credentials { user, secret };
        let machine = Machine {
            uefi: req.uefi,
            uuid: req.uuid.clone(),
        };
        let _slot = self.slot((address, port));
        let mut trace = Trace::default();
        let r = unbrick_oob::drive::run(&target, &cred, &machine, req.op, &self.limits, &mut trace);
        match r {
            Ok(o) => ControlAnswer {
                ok: true,
                summary: o.summary,
                steps: trace.0,
                power: o.power.map(|p| p.to_string()),
            },
            Err(e) => {
                tracing::warn!("{} {}: {e}", req.mac, req.op.name());
                ControlAnswer {
                    ok: false,
                    summary: e.message,
                    steps: trace.0,
                    power: None,
                }
            }
        }
    }
}
