//! The agent's Linux runtime: PID 1 of the recovery initramfs. Mounts the pseudo file systems,
//! loads modules, brings up the network with its own DHCP client, says hello with the per-boot
//! token, fetches and verifies the signed rules, remediates every NTFS volume, reports, and
//! reboots (or powers off with `unbrick.poweroff`). Whatever fails, it reports and reboots: PID 1
//! never exits into a kernel panic.
//!
//! The run, in order: [`system`] (mounts, modules, NIC), [`net`] (address, hello), the signed
//! rules, [`volumes`] and [`bitlocker`] (each Windows volume), [`report`] (the outcome).

mod bitlocker;
mod net;
mod report;
mod system;
mod volumes;

use crate::cmdline::Cmdline;
use bitlocker::*;
use fleet::agent::{Hello, HelloReply, Report, RunResult, Step};
use net::*;
use report::{outcome, report_id, run_id, trusted_now, Tally};
use std::path::Path;
use std::time::{Duration, Instant};
use system::*;
use unbrick_http as http;
use volumes::*;

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub(super) fn say(msg: &str) {
    // The console is the admin's only window into a machine whose report did not arrive.
    let t = START.get_or_init(Instant::now).elapsed();
    println!(
        "unbrick-agent [{:>3}.{:03}s]: {msg}",
        t.as_secs(),
        t.subsec_millis()
    );
}

pub(super) struct Ctx {
    pub(super) cmd: Cmdline,
    pub(super) mac: String,
    pub(super) start: Instant,
    /// `https://ip:port` of the agent API and the certificate fingerprint pinned for it.
    pub(super) api: String,
    pub(super) pin: String,
    /// Restore mode (from the hello reply): exactly the files to put back.
    pub(super) restore: Option<Vec<fleet::agent::FileRecord>>,
}

impl Ctx {
    pub(super) fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub(super) fn opts(&self) -> http::Options<'_> {
        http::Options {
            pin: Some(&self.pin),
            // Nothing the agent asks for is larger (rules, replies); a hostile answer is cut.
            max_response: Some(4 << 20),
            ..Default::default()
        }
    }

    pub(super) fn step(&self, step: &str, message: &str) {
        say(&format!("{step}: {message}"));
        let body = serde_json::to_vec(&Step {
            token: self.cmd.token.clone(),
            mac: self.mac.clone(),
            step: step.into(),
            message: message.into(),
        })
        .unwrap_or_default();
        // Steps are best effort: the final report carries everything that matters.
        let _ = http::request_with(
            "POST",
            &self.api_url("/agent/v1/step"),
            Some(&body),
            Duration::from_secs(5),
            &self.opts(),
        );
    }
}

/// Entry point of the `unbrick-agent` binary.
pub fn main() -> ! {
    let start = *START.get_or_init(Instant::now);
    setup_console();
    say(&format!("starting (version {})", crate::AGENT_VERSION));
    let mut poweroff = false;
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(start, &mut poweroff)));
    match outcome {
        Ok(Ok(())) => say("done"),
        Ok(Err(e)) => say(&format!("FAILED: {e}")),
        Err(_) => say("FAILED: internal error (panic); the details are above"),
    }
    finish(poweroff)
}

fn run(start: Instant, poweroff: &mut bool) -> Result<(), String> {
    mount_pseudo();
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let cmd = Cmdline::parse(&cmdline).map_err(|e| e.to_string())?;
    *poweroff = cmd.poweroff;
    let cfg: crate::AgentConfig = serde_json::from_slice(
        &std::fs::read(Path::new("/").join(crate::AGENT_CONFIG_PATH))
            .map_err(|e| format!("agent configuration: {e}"))?,
    )
    .map_err(|e| format!("agent configuration: {e}"))?;
    let trusted = signing::PublicKey::parse(cfg.signing_public_key.as_bytes())
        .map_err(|e| format!("embedded signing key: {e}"))?;
    // The NIC comes up as soon as its driver has bound, and asks for an address while the other
    // drivers load and the disks appear (the link takes a moment to get carrier); the hello and
    // the rules follow while the drivers are still loading.
    let want_mac = cmd.mac.clone();
    let net = std::thread::spawn(move || network(want_mac.as_deref()));
    let drivers = {
        let cfg = cfg.clone();
        std::thread::spawn(move || {
            let mut notes = Vec::new();
            say("loading modules");
            // Storage drivers probe asynchronously: the disks and their partitions are taken
            // once some have appeared and the list has not changed for 150 ms, watched while
            // the drivers load (at most 10 s after them).
            let mut disks = Settle::new(block_devices(), Instant::now());
            load_modules(&cfg, &cmdline, &mut notes, &mut || {
                disks.observe(block_devices(), Instant::now())
            });
            say(&notes.join("; "));
            let t = Instant::now();
            loop {
                disks.observe(block_devices(), Instant::now());
                if disks.settled(Instant::now()) || t.elapsed() >= Duration::from_secs(10) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            notes
        })
    };
    let mac = net
        .join()
        .map_err(|_| "internal error (panic) while bringing the network up".to_string())??;
    let pin = cfg.server_cert_sha256.clone().ok_or(
        "this image has no server certificate fingerprint; rebuild it with `unbrick image build`",
    )?;
    let api = cmd
        .api
        .clone()
        .ok_or("the kernel command line has no unbrick.api= (the HTTPS agent API)")?;
    let mut ctx = Ctx {
        cmd,
        mac: mac.clone(),
        start,
        api,
        pin,
        restore: None,
    };
    let hello = Hello {
        token: ctx.cmd.token.clone(),
        mac: mac.clone(),
        uuid: read_trim("/sys/class/dmi/id/product_uuid"),
        serial: read_trim("/sys/class/dmi/id/product_serial"),
        firmware: if Path::new("/sys/firmware/efi").exists() {
            "uefi"
        } else {
            "bios"
        }
        .into(),
        secure_boot: secure_boot_state(),
        lockdown: lockdown(),
        agent_version: crate::AGENT_VERSION.into(),
        kernel: cfg.kernel_version.clone(),
    };
    let reply: HelloReply =
        serde_json::from_slice(&post_json(&ctx, "/agent/v1/hello", &hello, 12)?)
            .map_err(|e| format!("hello reply: {e}"))?;
    if reply.mode == fleet::agent::Mode::Restore {
        say(&format!(
            "restore mode (the server's word): {} recorded file(s) to put back",
            reply.restore.len()
        ));
        ctx.restore = Some(reply.restore.clone());
    }
    let ctx = ctx;
    let local_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A machine whose clock is before the outage cannot judge expiry: use the server's.
    let now = trusted_now(local_now, reply.server_time);

    let doc = get(&ctx, "/agent/rules.json")?;
    let sig = get(&ctx, "/agent/rules.json.sig")?;
    let report_base =
        |result, reason: Option<String>, volumes, files, rules: Option<&signing::RuleSet>| Report {
            token: ctx.cmd.token.clone(),
            mac: mac.clone(),
            report_id: report_id(&ctx.cmd.token, now),
            result,
            reason,
            volumes,
            files,
            rules_id: rules.map(|r| r.id.clone()),
            rules_version: rules.map(|r| r.version),
            agent_ms: ctx.start.elapsed().as_millis() as u64,
        };
    let rules = match signing::RuleSet::verify_signed(&trusted, &doc, &sig, now)
        .map_err(|e| e.to_string())
        .and_then(|r| report::check_rules(&doc, &r, &reply, cfg.min_rules_version).map(|()| r))
    {
        Ok(r) => r,
        Err(e) => {
            let why = format!("refusing the remediation rules: {e}");
            ctx.step("rules", &why);
            post_json(
                &ctx,
                "/agent/v1/report",
                &report_base(RunResult::Failed, Some(why.clone()), vec![], vec![], None),
                20,
            )?;
            return Err(why);
        }
    };
    ctx.step(
        "rules",
        &format!(
            "{} v{} verified, expires {}",
            rules.id, rules.version, rules.expires
        ),
    );
    let notes = drivers
        .join()
        .map_err(|_| "internal error (panic) while loading drivers".to_string())?;
    ctx.step("modules", &notes.join("; "));
    ctx.step(fleet::agent::STEP_SCANNING, "looking for Windows volumes");
    let devs = block_devices();
    let run_id = run_id(&ctx.cmd.token, now);
    let mut t = Tally::default();
    for dev in &devs {
        match signature(dev) {
            Some("ntfs") => {
                let v = do_volume(&ctx, dev, &format!("/dev/{dev}"), &rules, &run_id, now);
                t.add(dev, v);
            }
            Some("bitlocker") => match bitlocker_unlock(&ctx, dev) {
                Bitlk::Locked(v) => {
                    ctx.step("volume", &format!("{dev}: {}", v.detail));
                    t.attention.push(format!("{dev}: {}", v.detail));
                    t.volumes.push(*v);
                }
                Bitlk::Open {
                    name,
                    mapper,
                    detail,
                    protectors,
                } => {
                    let mut v = do_volume(&ctx, dev, &mapper, &rules, &run_id, now);
                    if let Err(e) = cryptsetup_close(&name) {
                        ctx.step("volume", &format!("{dev}: {e}"));
                        v.failed.get_or_insert(format!("{dev}: {e}"));
                    }
                    v.report.kind = "bitlocker".into();
                    v.report.detail = format!("{detail}; {}", v.report.detail);
                    v.report.protectors = protectors;
                    t.add(dev, v);
                }
            },
            _ => {}
        }
    }
    let (mut result, mut reason) = outcome(&t, ctx.restore.is_some(), devs.len());
    if result == RunResult::Clean && !rules.writes() {
        result = RunResult::Inspected;
        reason = Some("read-only scan: nothing was changed".into());
    }
    let Tally { volumes, files, .. } = t;
    say(&format!(
        "result: {result:?}{}",
        reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    ));
    post_json(
        &ctx,
        "/agent/v1/report",
        &report_base(result, reason, volumes, files, Some(&rules)),
        20,
    )?;
    say(&format!(
        "report acknowledged after {} ms",
        start.elapsed().as_millis()
    ));
    Ok(())
}

/// Finds the NIC (by the MAC the boot loader used, as its driver binds), brings its link up,
/// waits for carrier and leases an address; returns the machine's MAC.
fn network(want_mac: Option<&str>) -> Result<String, String> {
    let Some((nic, mac)) = find_nic(want_mac, Duration::from_secs(20)) else {
        let found = network_controllers(Path::new("/sys/bus/pci/devices"));
        return Err(format!(
            "no network interface appeared: no driver in the payload for this machine's network controller(s): {} (PCI vendor:device; build the payload with its driver)",
            if found.is_empty() {
                "none found on PCI".to_string()
            } else {
                found.join(", ")
            }
        ));
    };
    let mac_bytes: fleet::Mac = mac.parse()?;
    crate::sys::link_up(&nic, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    say(&format!("{nic} ({mac}) is up"));
    // A DISCOVER sent before the link has carrier is lost and costs a retry.
    let t = Instant::now();
    while read_trim(&format!("/sys/class/net/{nic}/carrier")).as_deref() != Some("1")
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    say(&format!("{nic} has carrier; asking for an address"));
    let lease = dhcp(&nic, mac_bytes.0)?;
    crate::sys::set_ipv4(&nic, lease.ip, lease.mask).map_err(|e| e.to_string())?;
    if let Some(r) = lease.router {
        let _ = crate::sys::default_route(r);
    }
    say(&format!("{nic} ({mac}) has {}/{}", lease.ip, lease.mask));
    Ok(mac)
}
