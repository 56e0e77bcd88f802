//! Boot-chain diagnosis: from what the server saw of a host's latest boot attempts (its
//! timeline), why the machine does not reach the recovery agent, with the advice an admin
//! needs. Pure: the caller passes the events and the time.
//!
//! The attempts looked at are the events after the host's last word from the agent: a machine
//! whose agent spoke has no boot-chain problem in that run. Each check names the furthest link
//! of the chain the server saw (offer, boot file, boot loader, kernel and initrd, agent) and
//! what did not follow it.

use serde::Serialize;

use crate::{Event, EventSource};

/// What stopped the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    /// An offer with a boot file was sent; the file was never fetched.
    BootFileNotFetched,
    /// The same TFTP transfer stopped at the same block again and again.
    TftpStalls,
    /// shimx64.efi was fetched whole; grubx64.efi never was: the firmware refused shim.
    ShimRefused,
    /// The boot loader (or its script) was fetched; the kernel never was.
    KernelNotFetched,
    /// Kernel and initrd were fetched; the agent never said hello.
    AgentSilent,
}

impl Problem {
    /// Every problem, in chain order.
    pub const ALL: [Self; 5] = [
        Self::BootFileNotFetched,
        Self::TftpStalls,
        Self::ShimRefused,
        Self::KernelNotFetched,
        Self::AgentSilent,
    ];

    /// The machine-readable name (`shim-refused`).
    pub fn code(self) -> &'static str {
        match self {
            Self::BootFileNotFetched => "boot-file-not-fetched",
            Self::TftpStalls => "tftp-stalls",
            Self::ShimRefused => "shim-refused",
            Self::KernelNotFetched => "kernel-not-fetched",
            Self::AgentSilent => "agent-silent",
        }
    }

    /// In words, for the console and the CLI.
    pub fn title(self) -> &'static str {
        match self {
            Self::BootFileNotFetched => "offer sent, boot file never fetched",
            Self::TftpStalls => "TFTP stops at the same block",
            Self::ShimRefused => "firmware refused shim",
            Self::KernelNotFetched => "boot loader ran, kernel never fetched",
            Self::AgentSilent => "payload fetched, agent never said hello",
        }
    }

    /// What an admin does about it (the finding's detail names the host's own facts).
    pub fn advice(self) -> &'static str {
        match self {
            Self::BootFileNotFetched => {
                "Firmware that ignores proxyDHCP offers (many do) behaves like this. Set options 66 \
                 (next server: this unbrick server) and 67 (the boot file named here) on the office \
                 DHCP server for these machines, or run unbrick in full mode (--dhcp full) on a \
                 recovery VLAN. In full mode: check that UDP 69 reaches this server from the \
                 client's segment (a relay or a firewall between them)."
            }
            Self::TftpStalls => {
                "A path that drops large packets (an MTU below the block size: a VPN, a tunnel or a \
                 filtering switch) does this. unbrick offers this host blksize 512 on its next try; \
                 if it still stalls, check the switch port and any firewall between the segments."
            }
            Self::ShimRefused => {
                "The firmware's Secure Boot database trusts only Microsoft's Windows Production CA, \
                 not the Microsoft UEFI CA 2011/2023 that signs shim (the default on Secured-core \
                 PCs). In the firmware setup enable the third-party CA (\"Allow Microsoft 3rd \
                 Party UEFI CA\"; the name varies by vendor), or turn Secure Boot off for the \
                 recovery and on again after it."
            }
            Self::KernelNotFetched => {
                "The boot loader could not load the recovery kernel: check that HTTP (port 8080) \
                 and TFTP reach this server from the client's segment, and read the loader's error \
                 on the machine's screen."
            }
            Self::AgentSilent => {
                "Most often the payload has no driver for the machine's network card, so the agent \
                 cannot reach the server (and cannot report which card it is). Look at the \
                 machine's screen: the agent prints the network controllers it found with their \
                 PCI IDs. Build the payload with that driver, or boot these machines with a \
                 supported USB network adapter."
            }
        }
    }
}

/// A TFTP transfer that keeps stopping at one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stall {
    /// The file.
    pub file: String,
    /// Bytes acknowledged when it stopped.
    pub bytes: u64,
    /// The block size it used.
    pub blksize: u16,
    /// The block that was never acknowledged (1-based).
    pub block: u64,
    /// How many transfers stopped there.
    pub times: u32,
}

/// What is wrong with one host's boot chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Finding {
    /// The problem.
    pub problem: Problem,
    /// This host's facts, in words.
    pub detail: String,
    /// When the chain stopped (the last link the server saw, ms since the epoch).
    pub since_ms: u64,
    /// Network boots (DHCP offers with a boot file) in the attempts looked at.
    pub attempts: u32,
    /// For `tftp-stalls`: where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall: Option<Stall>,
}

/// How long a link may take before its absence is a finding (unless a new attempt began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    /// Offer to the first fetch.
    pub fetch_ms: u64,
    /// shim to grub.
    pub loader_ms: u64,
    /// Boot loader to kernel.
    pub kernel_ms: u64,
    /// Kernel and initrd to the agent's hello.
    pub agent_ms: u64,
}

impl Grace {
    /// 60 s to the first fetch, 30 s from shim to grub, 90 s to the kernel, 5 minutes to the
    /// agent's hello.
    pub const DEFAULT: Self = Self {
        fetch_ms: 60_000,
        loader_ms: 30_000,
        kernel_ms: 90_000,
        agent_ms: 300_000,
    };
}

impl Default for Grace {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A fetch the server saw (TFTP transfer or HTTP download).
#[derive(Debug)]
struct Fetch<'a> {
    time_ms: u64,
    file: &'a str,
    complete: bool,
    bytes: u64,
    blksize: u16,
}

/// The block size a machine whose transfers stop at the same block twice is offered (and the
/// largest last block that, sent and never acknowledged, is taken to have got through).
pub const STALL_BLKSIZE: usize = 512;

/// Whether a TFTP transfer that ended `unconfirmed` (every block sent, all but the last
/// acknowledged; `acked` of `size` bytes) stopped where a path that drops large packets stops
/// transfers: only when that last block is longer than [`STALL_BLKSIZE`]. A short one got
/// through, and its client left with the file; its final ACK was what got lost. The server's
/// stall detector and the boot diagnosis both judge by this.
pub fn unconfirmed_stopped(size: u64, acked: u64) -> bool {
    size.saturating_sub(acked) > STALL_BLKSIZE as u64
}

/// `vmlinuz 1234/5678 bytes to 10.0.0.5:1234 in 12 ms (blksize 1468, windowsize 1): timeout`
/// (TFTP) or `vmlinuz (5678 bytes) to 10.0.0.5` (HTTP).
fn fetch_of(e: &Event) -> Option<Fetch<'_>> {
    let first = e.message.split_whitespace().next()?;
    let file = first.rsplit('/').next().unwrap_or(first);
    match (e.source, e.kind.as_str()) {
        (EventSource::Tftp, "tftp") => {
            let mut words = e.message.split_whitespace();
            words.next();
            let (bytes, size): (u64, u64) = words
                .next()
                .and_then(|w| w.split_once('/'))
                .map(|(b, s)| (b.parse().unwrap_or(0), s.parse().unwrap_or(0)))
                .unwrap_or((0, 0));
            let blksize = e
                .message
                .split("(blksize ")
                .nth(1)
                .and_then(|r| r.split([',', ')']).next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(512);
            Some(Fetch {
                time_ms: e.time_ms,
                file,
                complete: e.message.ends_with(": complete")
                    || (e.message.ends_with(": unconfirmed") && !unconfirmed_stopped(size, bytes)),
                bytes,
                blksize,
            })
        }
        (EventSource::Http, "http-download") => Some(Fetch {
            time_ms: e.time_ms,
            file,
            complete: true,
            bytes: 0,
            blksize: 0,
        }),
        _ => None,
    }
}

fn is_kernel(f: &str) -> bool {
    f == "vmlinuz" || f.starts_with("vmlinuz-")
}

fn is_initrd(f: &str) -> bool {
    f.starts_with("initrd")
}

/// The boot chain's problem for the host whose timeline is `events`, if it has one at `now_ms`.
pub fn diagnose(events: &[Event], now_ms: u64, grace: Grace) -> Option<Finding> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.time_ms);
    // The attempts since the agent last spoke (or Windows was back).
    let start = sorted
        .iter()
        .rposition(|e| {
            e.source == EventSource::Agent
                || (e.kind == "state" && e.message.ends_with("-> recovered"))
        })
        .map_or(0, |i| i + 1);
    let tail = &sorted[start..];
    let offers: Vec<&Event> = tail
        .iter()
        .copied()
        .filter(|e| e.source == EventSource::Dhcp && e.message.contains(", boot file "))
        .collect();
    let first_offer = offers.first()?;
    let last_offer = offers.last()?;
    let attempts = offers
        .iter()
        .filter(|e| e.kind == "dhcp-discover" || e.message.contains("proxy"))
        .count()
        .max(1) as u32;
    // Held in the waiting room by policy: not a fault of the chain.
    let scripts: Vec<&Event> = tail
        .iter()
        .copied()
        .filter(|e| e.kind == "script")
        .collect();
    if scripts
        .last()
        .is_some_and(|e| e.message.contains("waiting-room"))
    {
        return None;
    }
    let fetches: Vec<Fetch<'_>> = tail.iter().filter_map(|e| fetch_of(e)).collect();
    let finding = |problem, detail: String, since_ms| Finding {
        problem,
        detail,
        since_ms,
        attempts,
        stall: None,
    };
    // A new network boot after `t` ends the wait for what should have followed it.
    let retried_after = |t: u64| offers.iter().any(|e| e.time_ms > t + 2_000);
    let overdue = |t: u64, g: u64| retried_after(t) || now_ms.saturating_sub(t) >= g;

    let last_complete = |pred: &dyn Fn(&str) -> bool| {
        fetches
            .iter()
            .filter(|f| f.complete && pred(f.file))
            .map(|f| f.time_ms)
            .max()
    };
    // Furthest link first: the payload.
    if let (Some(k), Some(i)) = (last_complete(&is_kernel), last_complete(&is_initrd)) {
        let t = k.max(i);
        return (now_ms.saturating_sub(t) >= grace.agent_ms || retried_after(t)).then(|| {
            finding(
                Problem::AgentSilent,
                format!(
                    "kernel and initrd fetched {} s before the last look; no hello from the agent",
                    now_ms.saturating_sub(t) / 1000
                ),
                t,
            )
        });
    }
    // TFTP transfers that stop at the same place (and that file never arrived since).
    let mut stalls: Vec<Stall> = Vec::new();
    for f in fetches.iter().filter(|f| !f.complete) {
        let arrived_later = fetches
            .iter()
            .any(|g| g.complete && g.file == f.file && g.time_ms >= f.time_ms);
        if arrived_later {
            continue;
        }
        match stalls
            .iter_mut()
            .find(|s| s.file == f.file && s.bytes == f.bytes && s.blksize == f.blksize)
        {
            Some(s) => s.times += 1,
            None => stalls.push(Stall {
                file: f.file.to_string(),
                bytes: f.bytes,
                blksize: f.blksize,
                block: f.bytes / u64::from(f.blksize.max(1)) + 1,
                times: 1,
            }),
        }
    }
    if let Some(s) = stalls
        .into_iter()
        .filter(|s| s.times >= 2)
        .max_by_key(|s| s.times)
    {
        let since = fetches
            .iter()
            .filter(|f| f.file == s.file && !f.complete)
            .map(|f| f.time_ms)
            .max()
            .unwrap_or(last_offer.time_ms);
        let mut f = finding(
            Problem::TftpStalls,
            format!(
                "TFTP of {} stopped at block {} (byte {}, blksize {}) {} times",
                s.file, s.block, s.bytes, s.blksize, s.times
            ),
            since,
        );
        f.stall = Some(s);
        return Some(f);
    }
    // The boot loader ran: grub, or an iPXE script with the payload.
    let loader = fetches
        .iter()
        .filter(|f| f.complete && (f.file == "grubx64.efi" || f.file == "grub.cfg"))
        .map(|f| f.time_ms)
        .chain(
            scripts
                .iter()
                .filter(|e| e.message.contains("payload"))
                .map(|e| e.time_ms),
        )
        .max();
    if let Some(t) = loader {
        return overdue(t, grace.kernel_ms).then(|| {
            finding(
                Problem::KernelNotFetched,
                "the boot loader was fetched and asked for the payload; vmlinuz was never fetched"
                    .to_string(),
                t,
            )
        });
    }
    if let Some(shim) = fetches
        .iter()
        .filter(|f| f.complete && f.file == "shimx64.efi")
        .max_by_key(|f| f.time_ms)
    {
        let t = shim.time_ms;
        let times = fetches
            .iter()
            .filter(|f| f.complete && f.file == "shimx64.efi")
            .count();
        return overdue(t, grace.loader_ms).then(|| {
            finding(
                Problem::ShimRefused,
                format!(
                    "shimx64.efi was fetched whole {times} time(s); grubx64.efi was never asked for"
                ),
                t,
            )
        });
    }
    if fetches.is_empty() && scripts.is_empty() {
        let file = last_offer
            .message
            .split(", boot file ")
            .nth(1)
            .unwrap_or("")
            .trim();
        let how = if last_offer.message.contains("proxy") {
            "proxyDHCP offer"
        } else {
            "offer"
        };
        return overdue(first_offer.time_ms, grace.fetch_ms).then(|| {
            finding(
                Problem::BootFileNotFetched,
                format!(
                    "{attempts} {how}(s) named {file}; the file was never fetched by TFTP or HTTP"
                ),
                last_offer.time_ms,
            )
        });
    }
    None
}

/// Hosts with one problem, for the fleet view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    /// The problem.
    pub problem: Problem,
    /// Its title.
    pub title: String,
    /// What to do.
    pub advice: String,
    /// How many hosts.
    pub hosts: usize,
    /// The hosts, at most [`GROUP_LIST`].
    pub examples: Vec<GroupHost>,
}

/// One host of a [`Group`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupHost {
    /// Its MAC address.
    pub mac: String,
    /// Its finding's detail.
    pub detail: String,
}

impl Group {
    /// The problem's machine-readable name.
    pub fn problem_code(&self) -> &'static str {
        self.problem.code()
    }
}

/// How many hosts a group lists.
pub const GROUP_LIST: usize = 50;

/// Groups per-host findings by problem, in chain order.
pub fn group<'a>(findings: impl IntoIterator<Item = (String, &'a Finding)>) -> Vec<Group> {
    let mut groups: Vec<Group> = Problem::ALL
        .iter()
        .map(|&p| Group {
            problem: p,
            title: p.title().to_string(),
            advice: p.advice().to_string(),
            hosts: 0,
            examples: Vec::new(),
        })
        .collect();
    for (mac, f) in findings {
        let g = groups
            .iter_mut()
            .find(|g| g.problem == f.problem)
            .expect("every problem has a group");
        g.hosts += 1;
        if g.examples.len() < GROUP_LIST {
            g.examples.push(GroupHost {
                mac,
                detail: f.detail.clone(),
            });
        }
    }
    groups.retain(|g| g.hosts > 0);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tables below are written against the defaults (60 s, 30 s, 90 s, 5 minutes).
    const G: Grace = Grace::DEFAULT;

    fn ev(t: u64, source: EventSource, kind: &str, message: &str) -> Event {
        Event {
            time_ms: t,
            source,
            kind: kind.into(),
            message: message.into(),
        }
    }

    fn offer(t: u64, file: &str) -> Event {
        ev(
            t,
            EventSource::Dhcp,
            "dhcp-discover",
            &format!("Discover on :67 from 52:54:00:00:00:01 (PXE UefiX64), decision payload, boot file {file}"),
        )
    }

    fn tftp(t: u64, file: &str, bytes: u64, blk: u16, outcome: &str) -> Event {
        ev(
            t,
            EventSource::Tftp,
            "tftp",
            &format!("{file} {bytes}/9999999 bytes to 10.99.0.101:1234 in 5 ms (blksize {blk}, windowsize 1): {outcome}"),
        )
    }

    fn problem(events: &[Event], now: u64) -> Option<Problem> {
        diagnose(events, now, G).map(|f| f.problem)
    }

    #[test]
    fn offer_without_fetch_after_the_grace_or_a_retry() {
        let e = [offer(1_000, "shimx64.efi")];
        assert_eq!(problem(&e, 30_000), None, "still within the grace");
        assert_eq!(problem(&e, 61_000), Some(Problem::BootFileNotFetched));
        let e = [offer(1_000, "shimx64.efi"), offer(9_000, "shimx64.efi")];
        let f = diagnose(&e, 10_000, G).unwrap();
        assert_eq!(f.problem, Problem::BootFileNotFetched);
        assert_eq!(f.attempts, 2);
        assert!(f.detail.contains("shimx64.efi"), "{}", f.detail);
        // No offer with a boot file (an ordinary client): nothing to say.
        let plain = [ev(
            1,
            EventSource::Dhcp,
            "dhcp-discover",
            "Discover on :67 (other)",
        )];
        assert_eq!(problem(&plain, 1_000_000), None);
    }

    #[test]
    fn shim_fetched_but_never_grub_is_a_refusal() {
        let e = [
            offer(0, "shimx64.efi"),
            tftp(2_000, "shimx64.efi", 950_000, 1468, "complete"),
        ];
        assert_eq!(problem(&e, 10_000), None);
        assert_eq!(problem(&e, 40_000), Some(Problem::ShimRefused));
        // Firmware that tries again: the next offer ends the wait.
        let mut e2 = e.to_vec();
        e2.push(offer(8_000, "shimx64.efi"));
        assert_eq!(problem(&e2, 9_000), Some(Problem::ShimRefused));
        // grub followed: no refusal; the chain goes on.
        let mut ok = e.to_vec();
        ok.push(tftp(3_000, "grubx64.efi", 2_000_000, 1468, "complete"));
        assert_eq!(problem(&ok, 10_000), None);
        assert_eq!(problem(&ok, 200_000), Some(Problem::KernelNotFetched));
        ok.push(tftp(5_000, "vmlinuz", 9_000_000, 1024, "complete"));
        ok.push(tftp(9_000, "initrd.img", 9_000_000, 1024, "complete"));
        assert_eq!(problem(&ok, 100_000), None, "the agent has time");
        assert_eq!(problem(&ok, 400_000), Some(Problem::AgentSilent));
        ok.push(ev(60_000, EventSource::Agent, "agent-hello", "hello"));
        assert_eq!(problem(&ok, 400_000), None, "the agent spoke");
    }

    #[test]
    fn repeated_stall_at_one_block_names_the_block() {
        let e = [
            offer(0, "shimx64.efi"),
            tftp(1_000, "shimx64.efi", 0, 1468, "timed-out"),
            offer(30_000, "shimx64.efi"),
            tftp(31_000, "shimx64.efi", 0, 1468, "timed-out"),
        ];
        let f = diagnose(&e, 40_000, G).unwrap();
        assert_eq!(f.problem, Problem::TftpStalls);
        let s = f.stall.unwrap();
        assert_eq!((s.block, s.times, s.blksize), (1, 2, 1468));
        assert!(f.detail.contains("block 1"), "{}", f.detail);
        // One stall is not a pattern; a later complete transfer cures it.
        assert_eq!(problem(&e[..2], 5_000), None);
        let mut cured = e.to_vec();
        cured.push(tftp(50_000, "shimx64.efi", 950_000, 512, "complete"));
        assert_ne!(problem(&cured, 51_000), Some(Problem::TftpStalls));
        // The last block alone unacknowledged, twice: a stall only when that block is long.
        let twice = |bytes: u64, size: u64| {
            let mut out = Vec::new();
            for t in [0, 30_000] {
                out.push(offer(t, "shimx64.efi"));
                let mut e = tftp(t + 1_000, "initrd.img", bytes, 1468, "unconfirmed");
                e.message = e.message.replace("/9999999 ", &format!("/{size} "));
                out.push(e);
            }
            out
        };
        assert_ne!(problem(&twice(0, 50), 40_000), Some(Problem::TftpStalls));
        let f = diagnose(&twice(2936, 4404), 40_000, G).unwrap();
        assert_eq!(f.problem, Problem::TftpStalls);
        assert_eq!(f.stall.unwrap().block, 3);
    }

    #[test]
    fn ipxe_script_without_kernel_and_the_waiting_room() {
        let e = [
            offer(0, "http://10.99.0.1:8080/boot/52:54:00:00:00:01.ipxe"),
            ev(1_000, EventSource::Http, "script", "ipxe: payload"),
        ];
        assert_eq!(problem(&e, 200_000), Some(Problem::KernelNotFetched));
        let mut w = e.to_vec();
        w.push(ev(
            2_000,
            EventSource::Http,
            "script",
            "ipxe: waiting-room (wave 2 not open)",
        ));
        assert_eq!(problem(&w, 900_000), None, "held by policy, not broken");
        let mut k = e.to_vec();
        k.push(ev(
            2_000,
            EventSource::Http,
            "http-download",
            "vmlinuz (1 bytes) to x",
        ));
        k.push(ev(
            3_000,
            EventSource::Http,
            "http-download",
            "initrd.img (1 bytes) to x",
        ));
        assert_eq!(problem(&k, 900_000), Some(Problem::AgentSilent));
    }

    #[test]
    fn only_attempts_after_the_agent_spoke_count() {
        let e = [
            offer(0, "shimx64.efi"),
            tftp(1_000, "shimx64.efi", 0, 1468, "timed-out"),
            tftp(2_000, "shimx64.efi", 0, 1468, "timed-out"),
            ev(3_000, EventSource::Agent, "agent-report", "report"),
        ];
        assert_eq!(problem(&e, 900_000), None);
    }

    #[test]
    fn groups_in_chain_order_with_counts() {
        let a = diagnose(
            &[
                offer(0, "shimx64.efi"),
                tftp(1_000, "shimx64.efi", 1, 1468, "complete"),
            ],
            100_000,
            G,
        )
        .unwrap();
        let b = diagnose(&[offer(0, "shimx64.efi")], 100_000, G).unwrap();
        let g = group([
            ("m1".to_string(), &a),
            ("m2".to_string(), &b),
            ("m3".to_string(), &a),
        ]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].problem, Problem::BootFileNotFetched);
        assert_eq!((g[1].problem, g[1].hosts), (Problem::ShimRefused, 2));
        assert_eq!(g[1].examples[1].mac, "m3");
    }
}
