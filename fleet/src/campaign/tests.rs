//! The campaign state machine on a virtual clock: waves, gates, halts, concurrency, timeouts,
//! verification, rollback, one campaign per host.
use super::*;
use crate::{Arch, BootPolicy, BootQuery, ClientKind};

const MIN: u64 = 60_000;

fn mac(i: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0x0c, 0, i])
}

struct Fleet {
    hosts: HashMap<Mac, HostRecord>,
}

impl Fleet {
    fn new(n: u8) -> Self {
        let hosts = (1..=n)
            .map(|i| {
                let mut h = HostRecord::new(mac(i), 0);
                h.state = HostState::Seen;
                h.site = Some(if i % 2 == 0 { "berlin" } else { "austin" }.into());
                h.tags = if i <= 2 {
                    vec!["canary".into()]
                } else {
                    vec![]
                };
                (mac(i), h)
            })
            .collect();
        Self { hosts }
    }
    fn all(&self) -> Vec<HostRecord> {
        self.hosts.values().cloned().collect()
    }
    fn set(&mut self, c: &mut Campaign, i: u8, s: HostState, now: u64) {
        let h = self.hosts.get_mut(&mac(i)).unwrap();
        h.state = s;
        h.state_since_ms = now;
        c.observe(h);
    }
    /// The host network-boots and fetches its script; returns the decision.
    fn boot(&mut self, c: &mut Campaign, i: u8, now: u64) -> BootDecision {
        let h = self.hosts.get(&mac(i)).unwrap().clone();
        let d = c.decide(&h, now, true).unwrap();
        if d == BootDecision::Payload {
            self.set(c, i, HostState::Booting, now);
        }
        d
    }
    fn apply(&mut self, changes: Vec<HostChange>) {
        for ch in changes {
            self.hosts.get_mut(&ch.mac).unwrap().state = ch.to;
        }
    }
}

fn spec(waves: &[&str], gate: Gate, concurrency: u32) -> CampaignSpec {
    CampaignSpec {
        key_release: Default::default(),
        name: "cs-fix".into(),
        targets: Targets::All,
        waves: waves.iter().map(|w| w.parse().unwrap()).collect(),
        gate,
        concurrency,
        host_timeout_ms: 30 * MIN,
        verify_window_ms: None,
        trigger: Trigger::None,
        trigger_wait_ms: 5 * MIN,
        power_cycles: 0,
    }
}

fn strict() -> Gate {
    Gate {
        min_success: 1,
        max_failure_rate: 0.0,
        min_soak_ms: 0,
    }
}

fn waiting(d: &BootDecision) -> &str {
    match d {
        BootDecision::WaitingRoom { reason } => reason,
        other => panic!("expected the waiting room, got {other:?}"),
    }
}

#[test]
fn wave_sizes_parse_and_split() {
    let m: Vec<Mac> = (1..=20).map(mac).collect();
    let w = |s: &[&str]| {
        split_waves(
            &m,
            &s.iter().map(|x| x.parse().unwrap()).collect::<Vec<_>>(),
        )
        .iter()
        .map(Vec::len)
        .collect::<Vec<_>>()
    };
    // Percentages are cumulative: 10% of 20 is already covered by the 5 canaries.
    assert_eq!(w(&["5", "10%", "50%", "100%"]), [5, 5, 10]);
    assert_eq!(w(&["1", "3"]), [1, 19], "the last wave takes the rest");
    assert_eq!(w(&["25%", "25%", "100%"]), [5, 15]);
    assert_eq!(w(&["50", "100%"]), [20]);
    assert!("0".parse::<WaveSize>().is_err());
    assert!("101%".parse::<WaveSize>().is_err());
    assert!("x".parse::<WaveSize>().is_err());
    let mut bad = spec(&["50%", "10%"], strict(), 1);
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("must not decrease"));
    bad = spec(&["1"], strict(), 0);
    assert!(bad.validate().is_err());
    bad = spec(
        &["1"],
        Gate {
            max_failure_rate: 1.5,
            ..strict()
        },
        1,
    );
    assert!(bad.validate().is_err());
}

#[test]
fn gate_holds_and_the_next_wave_opens() {
    let mut f = Fleet::new(4);
    let mut c = Campaign::new(
        "c1".into(),
        spec(&["1", "100%"], strict(), 10),
        "r v1".into(),
        0,
    )
    .unwrap();
    assert!(
        c.decide(&f.hosts[&mac(1)], 0, false).is_none(),
        "a draft touches nothing"
    );
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    assert_eq!(c.waves.len(), 2);
    assert_eq!(f.boot(&mut c, 1, 1), BootDecision::Payload);
    for i in 2..=4 {
        assert!(waiting(&f.boot(&mut c, i, 1)).contains("waiting for wave 2 of 2"));
    }
    assert!(f.apply_tick(&mut c, 2).is_empty());
    assert_eq!(c.current, 0, "wave 1 is still running");
    f.set(&mut c, 1, HostState::AgentUp, 3);
    f.set(&mut c, 1, HostState::Remediated, 4);
    assert!(c.in_payload.is_empty() && c.finished.contains(&mac(1)));
    f.apply_tick(&mut c, 5);
    assert_eq!(c.current, 1, "gate held: wave 2 open");
    assert!(c.waves[0].gate_note.contains("gate holds"));
    assert_eq!(
        f.boot(&mut c, 1, 6),
        BootDecision::LocalBoot,
        "a remediated host boots locally"
    );
    for i in 2..=4 {
        assert_eq!(f.boot(&mut c, i, 6), BootDecision::Payload);
    }
    for i in 2..=4 {
        f.set(&mut c, i, HostState::Clean, 7);
    }
    f.apply_tick(&mut c, 8);
    assert_eq!(c.state, CampaignState::Completed);
    assert_eq!(f.boot(&mut c, 3, 9), BootDecision::LocalBoot);
}

impl Fleet {
    fn apply_tick(&mut self, c: &mut Campaign, now: u64) -> Vec<HostChange> {
        let ch = c.tick(&self.hosts, now);
        self.apply(ch.clone());
        ch
    }
}

#[test]
fn a_failed_canary_halts_the_campaign_until_an_admin_acts() {
    let mut f = Fleet::new(4);
    let mut c = Campaign::new(
        "c1".into(),
        spec(&["1", "100%"], strict(), 10),
        String::new(),
        0,
    )
    .unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    f.boot(&mut c, 1, 1);
    f.set(
        &mut c,
        1,
        HostState::Failed("no Windows volume could be mounted".into()),
        2,
    );
    f.apply_tick(&mut c, 3);
    let CampaignState::Halted(why) = &c.state else {
        panic!("{:?}", c.state)
    };
    assert!(why.contains("wave 1: 0 of 1 hosts succeeded"), "{why}");
    for i in 2..=4 {
        let d = f.boot(&mut c, i, 4);
        assert!(waiting(&d).contains("halted"), "{d:?}");
    }
    assert!(
        c.tick(&f.hosts, 100 * MIN).is_empty() && matches!(c.state, CampaignState::Halted(_)),
        "stays halted"
    );
    // The admin looked and resumes: the next wave opens.
    c.resume(5).unwrap();
    assert_eq!((c.state.clone(), c.current), (CampaignState::Running, 1));
    assert_eq!(f.boot(&mut c, 2, 6), BootDecision::Payload);
}

#[test]
fn failure_rate_and_soak_time() {
    let mut f = Fleet::new(10);
    let gate = Gate {
        min_success: 3,
        max_failure_rate: 0.25,
        min_soak_ms: 10 * MIN,
    };
    let mut c =
        Campaign::new("c".into(), spec(&["4", "100%"], gate, 10), String::new(), 0).unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    for i in 1..=4 {
        f.boot(&mut c, i, 1);
    }
    for i in 1..=3 {
        f.set(&mut c, i, HostState::Remediated, 2);
    }
    f.set(&mut c, 4, HostState::Failed("x".into()), 2);
    f.apply_tick(&mut c, 3 * MIN);
    assert_eq!(
        (c.current, c.state.clone()),
        (0, CampaignState::Running),
        "soaking: 1 of 4 failed is within 25%"
    );
    f.apply_tick(&mut c, 11 * MIN);
    assert_eq!(c.current, 1, "soak time over: wave 2 open");
    // Wave 2: 2 of 6 failed = 33% > 25%.
    for i in 5..=10 {
        f.boot(&mut c, i, 12 * MIN);
        f.set(
            &mut c,
            i,
            if i <= 6 {
                HostState::Failed("x".into())
            } else {
                HostState::Clean
            },
            13 * MIN,
        );
    }
    f.apply_tick(&mut c, 30 * MIN);
    let CampaignState::Halted(why) = &c.state else {
        panic!()
    };
    assert!(
        why.contains("2 of 6 hosts failed (33%), the gate allows 25%"),
        "{why}"
    );
}

#[test]
fn concurrency_limit_and_host_timeout() {
    let mut f = Fleet::new(5);
    let mut c = Campaign::new("c".into(), spec(&["100%"], strict(), 2), String::new(), 0).unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    assert_eq!(f.boot(&mut c, 1, 1), BootDecision::Payload);
    assert_eq!(f.boot(&mut c, 2, 1), BootDecision::Payload);
    assert!(waiting(&f.boot(&mut c, 3, 1)).contains("all 2 recovery slots are busy"));
    // A DHCP look (not issued) never takes a slot.
    let h3 = f.hosts[&mac(3)].clone();
    assert!(matches!(
        c.decide(&h3, 1, false),
        Some(BootDecision::WaitingRoom { .. })
    ));
    // Host 1 reboots mid-run: it keeps its slot and goes on.
    assert_eq!(f.boot(&mut c, 1, 2), BootDecision::Payload);
    f.set(&mut c, 1, HostState::Remediated, 3);
    assert_eq!(
        f.boot(&mut c, 3, 4 * MIN),
        BootDecision::Payload,
        "a slot was freed"
    );
    // Host 2 hangs: after the host timeout it fails and frees its slot.
    let ch = f.apply_tick(&mut c, 31 * MIN);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].mac, mac(2));
    assert!(matches!(&ch[0].to, HostState::Failed(r) if r.contains("no result 30 minutes")));
    assert_eq!(f.boot(&mut c, 4, 32 * MIN), BootDecision::Payload);
}

#[test]
fn verification_window_marks_unverified_and_counts_only_windows_as_success() {
    let mut f = Fleet::new(2);
    let mut s = spec(&["1", "100%"], strict(), 5);
    s.verify_window_ms = Some(15 * MIN);
    let mut c = Campaign::new("c".into(), s, String::new(), 0).unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    f.boot(&mut c, 1, 0);
    f.set(&mut c, 1, HostState::Remediated, MIN);
    f.apply_tick(&mut c, 2 * MIN);
    assert_eq!(
        c.current, 0,
        "remediated is not yet a success with verification on"
    );
    f.set(&mut c, 1, HostState::Recovered, 5 * MIN);
    f.apply_tick(&mut c, 6 * MIN);
    assert_eq!(c.current, 1);
    f.boot(&mut c, 2, 7 * MIN);
    f.set(&mut c, 2, HostState::Remediated, 8 * MIN);
    let ch = f.apply_tick(&mut c, 24 * MIN);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].to, HostState::Unverified);
    assert!(
        matches!(c.state, CampaignState::Halted(_)),
        "an unverified wave has no success: {:?}",
        c.state
    );
}

#[test]
fn rollback_restores_only_what_the_campaign_remediated() {
    let mut f = Fleet::new(3);
    let mut c = Campaign::new("c".into(), spec(&["100%"], strict(), 5), String::new(), 0).unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    f.boot(&mut c, 1, 1);
    f.set(&mut c, 1, HostState::Remediated, 2);
    f.boot(&mut c, 2, 1);
    c.rollback(3).unwrap();
    assert_eq!(c.state, CampaignState::RollingBack);
    assert_eq!(f.boot(&mut c, 1, 4), BootDecision::Restore);
    assert_eq!(
        f.boot(&mut c, 3, 4),
        BootDecision::LocalBoot,
        "never remediated: nothing to restore"
    );
    c.restored_host(mac(1));
    assert_eq!(
        f.boot(&mut c, 1, 5),
        BootDecision::LocalBoot,
        "restored once"
    );
    assert!(c.rollback(6).is_err());
    assert!(c.tick(&f.hosts, 7).is_empty());
}

#[test]
fn pause_abort_and_one_campaign_per_host() {
    let mut f = Fleet::new(4);
    let mut canary = spec(&["100%"], strict(), 5);
    canary.targets = Targets::Tag("canary".into());
    let mut a = Campaign::new("a".into(), canary, String::new(), 0).unwrap();
    a.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    assert_eq!(a.members().count(), 2);
    let mut b = Campaign::new("b".into(), spec(&["100%"], strict(), 5), String::new(), 0).unwrap();
    let taken: BTreeSet<Mac> = a.members().copied().collect();
    assert!(b
        .start(&f.all(), &taken, 1)
        .unwrap_err()
        .to_string()
        .contains("already in another active campaign"));
    let mut site = spec(&["100%"], strict(), 5);
    site.targets = Targets::Site("berlin".into());
    let mut s = Campaign::new("s".into(), site, String::new(), 0).unwrap();
    assert!(s.start(&f.all(), &BTreeSet::new(), 1).is_ok());
    assert_eq!(s.members().copied().collect::<Vec<_>>(), [mac(2), mac(4)]);
    a.pause(2).unwrap();
    assert!(waiting(&f.boot(&mut a, 1, 3)).contains("paused"));
    assert!(a.pause(3).is_err());
    a.resume(4).unwrap();
    assert_eq!(f.boot(&mut a, 1, 5), BootDecision::Payload);
    a.abort(6).unwrap();
    assert!(
        a.decide(&f.hosts[&mac(2)], 7, true).is_none(),
        "an aborted campaign claims nothing"
    );
    assert!(a.abort(8).is_err());
    let mut empty = spec(&["100%"], strict(), 1);
    empty.targets = Targets::Tag("nobody".into());
    assert!(Campaign::new("e".into(), empty, String::new(), 0)
        .unwrap()
        .start(&f.all(), &BTreeSet::new(), 0)
        .unwrap_err()
        .to_string()
        .contains("no host matches"));
}

#[test]
fn policy_routes_hosts_and_ignores_outsiders_once_campaigns_run() {
    let f = Fleet::new(4);
    let mut s = spec(&["100%"], strict(), 1);
    s.targets = Targets::List(vec![mac(1), mac(9)]);
    let c = Campaign::new("c".into(), s, String::new(), 0).unwrap();
    let p = CampaignPolicy::new(crate::DefaultPolicy::default(), true, vec![c]);
    let q = |m: Mac, issue| BootQuery {
        mac: m,
        kind: ClientKind::Pxe(Arch::Bios),
        now_ms: 1,
        issue,
    };
    assert_eq!(
        p.decide(&q(mac(3), true), f.hosts.get(&mac(3))),
        BootDecision::Payload,
        "only drafts: the base policy answers"
    );
    p.with(|cs| cs[0].start(&f.all(), &BTreeSet::new(), 1))
        .unwrap();
    assert!(p.take_dirty());
    assert_eq!(
        p.decide(&q(mac(3), true), f.hosts.get(&mac(3))),
        BootDecision::Ignore,
        "outside every campaign, proxy mode"
    );
    assert_eq!(
        p.decide(&q(mac(9), false), None),
        BootDecision::Payload,
        "a listed host not yet seen"
    );
    assert_eq!(p.decide(&q(mac(9), true), None), BootDecision::Payload);
    assert!(p.take_dirty(), "a slot was taken");
    assert!(
        matches!(
            p.decide(&q(mac(1), true), f.hosts.get(&mac(1))),
            BootDecision::WaitingRoom { .. }
        ),
        "concurrency 1"
    );
    let mut h9 = HostRecord::new(mac(9), 2);
    h9.state = HostState::Clean;
    p.observe(&h9);
    assert_eq!(
        p.decide(&q(mac(1), true), f.hosts.get(&mac(1))),
        BootDecision::Payload
    );
    // A quiet second changes nothing, so nothing needs writing; a closing wave does.
    p.take_dirty();
    let (ch, notes) = p.tick(&f.hosts, 3);
    assert!(ch.is_empty() && notes.is_empty() && !p.take_dirty());
    let mut done = f.hosts.clone();
    for m in [mac(1), mac(9)] {
        let mut h = HostRecord::new(m, 4);
        h.state = HostState::Clean;
        done.insert(m, h);
    }
    let (_, notes) = p.tick(&done, 5);
    assert!(notes.iter().any(|n| n.contains("completed")), "{notes:?}");
    assert!(p.take_dirty());
    assert_eq!(
        p.decide(
            &BootQuery {
                kind: ClientKind::Windows,
                ..q(mac(1), true)
            },
            None
        ),
        BootDecision::Ignore
    );
}

#[test]
fn a_host_waiting_for_a_bitlocker_key_keeps_its_wave_open_and_key_scope_follows_the_campaign() {
    let mut f = Fleet::new(2);
    let mut s = spec(&["100%"], strict(), 10);
    s.host_timeout_ms = 10 * MIN;
    let c = Campaign::new("c1".into(), s, String::new(), 0).unwrap();
    let p = CampaignPolicy::new(crate::DefaultPolicy::default(), false, vec![c]);
    assert_eq!(p.key_scope(mac(1)), None, "a draft releases no key");
    p.with(|cs| cs[0].start(&f.all(), &BTreeSet::new(), 0))
        .unwrap();
    assert_eq!(p.key_scope(mac(1)).as_deref(), Some("c1"));
    assert_eq!(p.key_scope(mac(9)), None, "not a member");
    p.with(|cs| {
        let c = &mut cs[0];
        assert_eq!(f.boot(c, 1, 1), BootDecision::Payload);
        assert_eq!(f.boot(c, 2, 1), BootDecision::Payload);
        f.set(c, 2, HostState::Clean, 2);
        // Host 1's agent waits for a pasted key: needs attention, but not final.
        let h = f.hosts.get_mut(&mac(1)).unwrap();
        h.bitlocker_waiting = vec!["64311dea-4587-4029-924a-ba299647998e".into()];
        f.set(c, 1, HostState::NeedsAttention("no key".into()), 3);
        assert_eq!(outcome(&f.hosts[&mac(1)], false), Outcome::Pending);
        // Past the host timeout: still waiting, the wave stays open, nothing halts.
        assert!(f.apply_tick(c, 30 * MIN).is_empty());
        assert_eq!(c.state, CampaignState::Running);
        assert!(c.waves[0].closed_ms.is_none());
        // The key was pasted and the run finished.
        f.hosts.get_mut(&mac(1)).unwrap().bitlocker_waiting.clear();
        f.set(c, 1, HostState::Remediated, 31 * MIN);
        f.apply_tick(c, 32 * MIN);
        assert_eq!(c.state, CampaignState::Completed);
    });
    assert_eq!(p.key_scope(mac(1)), None, "completed: no more keys");
    let mut s = spec(&["100%"], strict(), 10);
    s.host_timeout_ms = MIN;
    let c = Campaign::new("c2".into(), s, String::new(), 0).unwrap();
    let p = CampaignPolicy::new(crate::DefaultPolicy::default(), false, vec![c]);
    let mut f = Fleet::new(1);
    p.with(|cs| cs[0].start(&f.all(), &BTreeSet::new(), 0))
        .unwrap();
    p.with(|cs| {
        f.boot(&mut cs[0], 1, 1);
        f.set(&mut cs[0], 1, HostState::Remediated, 2);
        f.apply_tick(&mut cs[0], 3);
        cs[0].rollback(4).unwrap();
    });
    assert_eq!(p.key_scope(mac(1)).as_deref(), Some("c2:rollback"));
}

fn member(oui: u8, i: u16, site: &str, canary: bool) -> Member {
    Member {
        mac: Mac([0x52, 0x54, oui, 0, (i >> 8) as u8, i as u8]),
        site: site.into(),
        canary,
    }
}

/// Canaries an admin tagged come first; the rest spread over sites and card vendors in
/// proportion, so a small first wave is not one vendor's lowest MACs at one site.
#[test]
fn waves_sample_every_site_and_vendor() {
    // 60 machines of vendor 0x01 and 40 of vendor 0x02 at one site: the lowest MACs are all 0x01.
    let mut m: Vec<Member> = (0..60).map(|i| member(1, i, "hq", false)).collect();
    m.extend((0..40).map(|i| member(2, i, "hq", false)));
    let order = wave_order(m.clone());
    let first5: Vec<u8> = order[..5].iter().map(|m| m.0[2]).collect();
    assert_eq!(first5.iter().filter(|&&o| o == 2).count(), 2, "{first5:?}");
    let tenth: Vec<u8> = order[..10].iter().map(|m| m.0[2]).collect();
    assert_eq!(tenth.iter().filter(|&&o| o == 1).count(), 6, "{tenth:?}");
    // Two sites, 90 and 10 machines: a 10 % wave has 9 and 1.
    let mut m: Vec<Member> = (0..90).map(|i| member(1, i, "berlin", false)).collect();
    m.extend((100..110).map(|i| member(1, i, "austin", false)));
    let order = wave_order(m);
    let waves = split_waves(&order, &[WaveSize::Percent(10), WaveSize::Percent(100)]);
    let austin = waves[0].iter().filter(|m| m.0[5] >= 100).count();
    assert_eq!((waves[0].len(), austin), (10, 1));
    // Tagged canaries first, whatever their MACs; then the spread.
    let mut m: Vec<Member> = (0..20).map(|i| member(1, i, "hq", false)).collect();
    m.push(member(9, 7, "hq", true));
    m.push(member(9, 3, "branch", true));
    let order = wave_order(m);
    assert_eq!(
        order[..2],
        [member(9, 3, "", true).mac, member(9, 7, "", true).mac]
    );
    assert_eq!(order.len(), 22);
}

proptest::proptest! {
    /// Every member exactly once, canaries first, and the input order does not matter.
    #[test]
    fn wave_order_is_a_deterministic_permutation(
        spec in proptest::collection::vec((0u8..3, 0u16..40, 0usize..3, proptest::bool::weighted(0.1)), 0..120),
        seed in proptest::prelude::any::<u64>(),
    ) {
        let sites = ["a", "b", ""];
        let members: Vec<Member> = spec
            .iter()
            .map(|&(oui, i, s, c)| member(oui, i, sites[s], c))
            .collect();
        // One record per MAC, as the store has.
        let mut uniq: Vec<Member> = Vec::new();
        for m in members {
            if !uniq.iter().any(|u| u.mac == m.mac) {
                uniq.push(m);
            }
        }
        let order = wave_order(uniq.clone());
        let mut shuffled = uniq.clone();
        let mut z = seed;
        for i in (1..shuffled.len()).rev() {
            z = z.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (z >> 33) as usize % (i + 1));
        }
        proptest::prop_assert_eq!(&wave_order(shuffled), &order);
        let mut sorted = order.clone();
        sorted.sort();
        let mut want: Vec<Mac> = uniq.iter().map(|m| m.mac).collect();
        want.sort();
        proptest::prop_assert_eq!(sorted, want);
        let n = uniq.iter().filter(|m| m.canary).count();
        for mac in &order[..n] {
            proptest::prop_assert!(uniq.iter().any(|m| m.mac == *mac && m.canary));
        }
    }
}

fn with_controllers(f: &mut Fleet, n: u8) {
    for i in 1..=n {
        let h = f.hosts.get_mut(&mac(i)).unwrap();
        h.controller = Some(crate::bmc::Controller {
            kind: crate::bmc::ControllerKind::Amt,
            address: Some(std::net::Ipv4Addr::new(10, 1, 2, i)),
            port: Some(16992),
            tls: false,
            fingerprint: None,
            ca_file: None,
            user: Some("admin".into()),
            sealed_secret: Some("00".into()),
        });
    }
}

fn oob(concurrency: u32, cycles: u32) -> CampaignSpec {
    let mut s = spec(&["100%"], strict(), concurrency);
    s.trigger = Trigger::Oob;
    s.power_cycles = cycles;
    s
}

#[test]
fn oob_triggers_respect_concurrency_retry_once_then_need_attention() {
    let mut f = Fleet::new(5);
    with_controllers(&mut f, 4); // host 5 has no controller: never triggered
    let mut c = Campaign::new("c1".into(), oob(2, 0), "r".into(), 0).unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    let (o, ch) = c.triggers_due(&f.hosts, 1000);
    assert!(ch.is_empty());
    assert_eq!(o.len(), 2, "two slots: {o:?}");
    assert!(o
        .iter()
        .all(|o| o.op == crate::bmc::Op::NetbootOnce && o.attempt == 1));
    // Nothing more while those two are out.
    assert!(c.triggers_due(&f.hosts, 2000).0.is_empty());
    let (a, b) = (o[0].mac, o[1].mac);
    assert_eq!(
        c.trigger_done(a, true, "AMT: one-time PXE boot set", 3000),
        None
    );
    assert_eq!(c.trigger_done(b, true, "ok", 3000), None);
    // a asks for an address: it keeps its slot before the payload takes it.
    let ia = a.0[5];
    f.hosts.get_mut(&a).unwrap().last_seen_ms = 10_000;
    assert!(
        c.triggers_due(&f.hosts, 10_500).0.is_empty(),
        "a answered: its slot is still taken"
    );
    // It network-boots: the policy puts it in the payload; the slot stays taken.
    assert_eq!(f.boot(&mut c, ia, 10_000), BootDecision::Payload);
    assert!(
        c.triggers_due(&f.hosts, 11_000).0.is_empty(),
        "both slots still in flight"
    );
    // a finishes: its slot frees, the next host is triggered.
    f.set(&mut c, ia, HostState::Remediated, 20_000);
    let (o2, _) = c.triggers_due(&f.hosts, 21_000);
    assert_eq!(o2.len(), 1);
    let next = o2[0].mac;
    assert!(next != a && next != b && next != mac(5));
    // b never asks for an address: tried once more after the wait, then needs attention.
    let (o3, _) = c.triggers_due(&f.hosts, 3000 + 5 * MIN);
    let again: Vec<_> = o3.iter().filter(|o| o.mac == b).collect();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    c.trigger_done(b, true, "ok", 3000 + 5 * MIN);
    let (_, ch) = c.triggers_due(&f.hosts, 3000 + 10 * MIN + 1);
    let gave_up: Vec<_> = ch.iter().filter(|c| c.mac == b).collect();
    assert_eq!(gave_up.len(), 1, "{ch:?}");
    match &gave_up[0].to {
        HostState::NeedsAttention(w) => assert!(
            w.contains("network boot triggered through AMT at 10.1.2.")
                && w.contains("UTC; the machine never asked for an address"),
            "{w}"
        ),
        s => panic!("{s:?}"),
    }
    assert!(c.finished.contains(&b));
}

#[test]
fn a_failing_controller_is_retried_soon_then_needs_attention_with_its_reason() {
    let mut f = Fleet::new(1);
    with_controllers(&mut f, 1);
    let mut c = Campaign::new("c2".into(), oob(5, 0), "r".into(), 0).unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    let (o, _) = c.triggers_due(&f.hosts, 0);
    assert_eq!(o.len(), 1);
    assert_eq!(
        c.trigger_done(mac(1), false, "AMT at 10.1.2.1: digest auth refused", 1000),
        None
    );
    assert!(
        c.triggers_due(&f.hosts, 20_000).0.is_empty(),
        "not before the retry delay"
    );
    let (o, _) = c.triggers_due(&f.hosts, 31_000);
    assert_eq!(o.len(), 1);
    let ch = c
        .trigger_done(
            mac(1),
            false,
            "AMT at 10.1.2.1: digest auth refused",
            32_000,
        )
        .unwrap();
    assert_eq!(
        ch.to,
        HostState::NeedsAttention(
            "could not network-boot it out of band: AMT at 10.1.2.1: digest auth refused".into()
        )
    );
}

#[test]
fn the_reboot_race_power_cycles_first_and_healed_hosts_are_not_network_booted() {
    let mut f = Fleet::new(2);
    with_controllers(&mut f, 2);
    let mut c = Campaign::new("c3".into(), oob(5, 2), "r".into(), 0).unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    let (o, _) = c.triggers_due(&f.hosts, 0);
    assert_eq!(o.len(), 2);
    assert!(o.iter().all(|o| o.op == crate::bmc::Op::PowerCycle));
    for o in &o {
        c.trigger_done(o.mac, true, "ok", 1000);
    }
    // Host 1 comes back as Windows: healed. Host 2 stays silent.
    let h = f.hosts.get_mut(&mac(1)).unwrap();
    h.last_seen_ms = 60_000;
    h.last_kind = Some(ClientKind::Windows);
    let (o, ch) = c.triggers_due(&f.hosts, 1000 + 5 * MIN);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].mac, mac(1));
    assert_eq!(ch[0].to, HostState::Recovered);
    assert!(ch[0].why.contains("healed by the reboot"), "{}", ch[0].why);
    assert_eq!(o.len(), 1);
    assert_eq!(
        (o[0].mac, o[0].op, o[0].attempt),
        (mac(2), crate::bmc::Op::PowerCycle, 2)
    );
    c.trigger_done(mac(2), true, "ok", 1000 + 5 * MIN);
    // Two cycles did not help: now a network boot.
    let (o, _) = c.triggers_due(&f.hosts, 1000 + 10 * MIN);
    assert_eq!((o[0].mac, o[0].op), (mac(2), crate::bmc::Op::NetbootOnce));
}

#[test]
fn trigger_none_orders_nothing() {
    let mut f = Fleet::new(2);
    with_controllers(&mut f, 2);
    let mut c = Campaign::new("c4".into(), spec(&["100%"], strict(), 5), "r".into(), 0).unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    assert!(c.triggers_due(&f.hosts, 0).0.is_empty());
}

#[test]
fn after_a_crash_the_slots_follow_the_host_records() {
    let mut f = Fleet::new(6);
    let mut c = Campaign::new("c".into(), spec(&["100%"], strict(), 2), String::new(), 0).unwrap();
    c.start(&f.all(), &BTreeSet::new(), 0).unwrap();
    let order = c.waves[0].hosts.clone();
    let i = |m: Mac| m.0[5];
    let (a, b, d) = (i(order[0]), i(order[1]), i(order[2]));
    assert_eq!(f.boot(&mut c, a, 1), BootDecision::Payload);
    // Admitted, but the crash came before its record said so: its record stays `seen`.
    assert_eq!(
        c.decide(&f.hosts[&mac(b)].clone(), 1, true),
        Some(BootDecision::Payload)
    );
    // What the store holds of the campaign: the last persist, a moment before the crash.
    let saved = c.clone();
    // After that persist, `a` finished and `d` was admitted (its record is durable).
    f.set(&mut c, a, HostState::Clean, 2);
    assert_eq!(f.boot(&mut c, d, 2), BootDecision::Payload);
    let p = CampaignPolicy::new(crate::DefaultPolicy::default(), false, vec![saved]);
    let notes = p.reconcile(&f.hosts, 3);
    assert!(
        notes.iter().any(|n| n.contains(
            "1 host(s) in the payload by their records hold a slot again, 1 with a result freed theirs, 1 that never got the payload freed theirs"
        )),
        "{notes:?}"
    );
    let back = &p.snapshot()[0];
    assert_eq!(
        back.in_payload.keys().copied().collect::<Vec<_>>(),
        vec![mac(d)]
    );
    assert!(back.finished.contains(&mac(a)) && !back.finished.contains(&mac(b)));
    // One slot is free again (concurrency 2): `b` gets it when it boots, the next one waits.
    let q = |m: Mac| BootQuery {
        mac: m,
        kind: ClientKind::Pxe(Arch::Bios),
        now_ms: 4,
        issue: true,
    };
    assert_eq!(
        p.decide(&q(mac(b)), f.hosts.get(&mac(b))),
        BootDecision::Payload
    );
    let e = i(order[3]);
    assert!(matches!(
        p.decide(&q(mac(e)), f.hosts.get(&mac(e))),
        BootDecision::WaitingRoom { .. }
    ));
    assert_eq!(
        p.decide(&q(mac(a)), f.hosts.get(&mac(a))),
        BootDecision::LocalBoot
    );
    // A second reconcile finds nothing to do.
    f.hosts.get_mut(&mac(b)).unwrap().state = HostState::Booting;
    assert!(p.reconcile(&f.hosts, 5).is_empty());
}

#[test]
fn nobody_is_let_into_a_wave_before_its_opening_is_persisted() {
    let mut f = Fleet::new(4);
    let c = Campaign::new(
        "c".into(),
        spec(&["1", "100%"], strict(), 10),
        String::new(),
        0,
    )
    .unwrap();
    let p = CampaignPolicy::new(crate::DefaultPolicy::default(), false, vec![c]);
    let hosts = f.all();
    p.with_held(|cs| cs[0].start(&hosts, &BTreeSet::new(), 0))
        .unwrap();
    let first = p.snapshot()[0].waves[0].hosts[0];
    let q = |m: Mac, now| BootQuery {
        mac: m,
        kind: ClientKind::Pxe(Arch::Bios),
        now_ms: now,
        issue: true,
    };
    let held = p.decide(&q(first, 1), f.hosts.get(&first));
    assert!(
        matches!(&held, BootDecision::WaitingRoom { reason } if reason.contains("saving its progress")),
        "{held:?}"
    );
    assert!(p.admissions_held());
    // A persist that began before the start does not count; one after it does.
    p.persisted(0);
    assert!(p.admissions_held());
    let (_, seq) = p.snapshot_to_persist();
    p.persisted(seq);
    assert!(!p.admissions_held());
    assert_eq!(
        p.decide(&q(first, 2), f.hosts.get(&first)),
        BootDecision::Payload
    );
    // Wave 1 closes and wave 2 opens in a tick: held again until persisted, except for a host
    // already in the payload.
    let h = f.hosts.get_mut(&first).unwrap();
    h.state = HostState::Clean;
    h.state_since_ms = 3;
    p.observe(&f.hosts[&first].clone());
    let (_, notes) = p.tick(&f.hosts, 4);
    assert!(notes.iter().any(|n| n.contains("wave 2 open")), "{notes:?}");
    let second = p.snapshot()[0].waves[1].hosts[0];
    assert!(matches!(
        p.decide(&q(second, 5), f.hosts.get(&second)),
        BootDecision::WaitingRoom { .. }
    ));
    let (_, seq) = p.snapshot_to_persist();
    p.persisted(seq);
    assert_eq!(
        p.decide(&q(second, 6), f.hosts.get(&second)),
        BootDecision::Payload
    );
    let third = p.snapshot()[0].waves[1].hosts[1];
    p.with_held(|_| ());
    assert_eq!(
        p.decide(&q(second, 7), f.hosts.get(&second)),
        BootDecision::Payload,
        "a host in the payload goes on while admissions are held"
    );
    assert!(matches!(
        p.decide(&q(third, 7), f.hosts.get(&third)),
        BootDecision::WaitingRoom { .. }
    ));
}
