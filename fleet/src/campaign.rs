//! Staged recovery campaigns, pure: which hosts, in which waves, gated on what, and what a host
//! of a campaign gets when it network-boots. No clock and no I/O: the time comes in as an
//! argument, the caller persists what changed.
//!
//! A campaign freezes its members into waves when it starts (canaries first, then shares of the
//! fleet). One wave is open at a time. A wave closes when each of its hosts has a final result;
//! the next opens only if the gate holds (enough successes, failure rate at most the limit, the
//! wave open at least the soak time); otherwise the campaign halts and touches no further host
//! until an admin resumes or rolls it back. At most `concurrency` hosts of a campaign are in the
//! payload at once.
use crate::{BootDecision, Error, HostRecord, HostState, Mac};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Which hosts a campaign is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum Targets {
    /// Every host.
    All,
    /// Hosts of one site.
    Site(String),
    /// Hosts with one tag.
    Tag(String),
    /// These hosts.
    List(Vec<Mac>),
}

impl Targets {
    /// Whether `h` is a target.
    pub fn matches(&self, h: &HostRecord) -> bool {
        match self {
            Self::All => true,
            Self::Site(s) => h.site.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(s)),
            Self::Tag(t) => h.tags.iter().any(|x| x.eq_ignore_ascii_case(t)),
            Self::List(l) => l.contains(&h.mac),
        }
    }
}

/// One wave's size: a number of hosts, or a cumulative share of the campaign's hosts
/// (`"5"`, `"10%"`, `"50%"`, `"100%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum WaveSize {
    /// So many hosts.
    Hosts(u32),
    /// So many percent of the members, cumulative.
    Percent(u32),
}

impl std::str::FromStr for WaveSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| {
                Error::Invalid(format!(
                    "wave {s:?}: expected a number of hosts or a percentage"
                ))
            })?;
            if p == 0 || p > 100 {
                return Err(Error::Invalid(format!(
                    "wave {s:?}: a percentage is 1% to 100%"
                )));
            }
            Ok(Self::Percent(p))
        } else {
            let n: u32 = s.parse().map_err(|_| {
                Error::Invalid(format!(
                    "wave {s:?}: expected a number of hosts or a percentage"
                ))
            })?;
            if n == 0 {
                return Err(Error::Invalid(format!(
                    "wave {s:?}: a wave has at least one host"
                )));
            }
            Ok(Self::Hosts(n))
        }
    }
}

/// What must hold before the next wave opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// At least this many hosts of the wave succeeded.
    #[serde(default)]
    pub min_success: u32,
    /// At most this share (0.0 to 1.0) of the wave failed.
    #[serde(default)]
    pub max_failure_rate: f64,
    /// The wave was open at least this long (milliseconds).
    #[serde(default)]
    pub min_soak_ms: u64,
}

/// What an admin asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// The admin's name for it.
    pub name: String,
    /// Which hosts it covers.
    pub targets: Targets,
    /// The waves' sizes, in order.
    pub waves: Vec<WaveSize>,
    /// When a wave counts as good.
    pub gate: Gate,
    /// At most this many hosts of the campaign in the payload at once.
    pub concurrency: u32,
    /// A host that got the payload and gave no final result within this time failed
    /// (milliseconds; default 30 minutes).
    #[serde(default = "default_host_timeout")]
    pub host_timeout_ms: u64,
    /// If set: a remediated host must be seen back in Windows within this time, or it is
    /// `unverified` (milliseconds).
    #[serde(default)]
    pub verify_window_ms: Option<u64>,
    /// Whether BitLocker keys leave escrow by themselves (when the host's imported name matches
    /// the escrowed key's) or only when an admin approves each host.
    #[serde(default)]
    pub key_release: KeyRelease,
    /// How the open wave's machines are made to network-boot: `none` (a person, or the
    /// firmware's own order), `oob` (through their management controllers).
    #[serde(default)]
    pub trigger: Trigger,
    /// After a trigger, how long the machine has to ask for an address before it is tried
    /// again, then needs attention (milliseconds; default 5 minutes).
    #[serde(default = "default_trigger_wait")]
    pub trigger_wait_ms: u64,
    /// The reboot race: power-cycle each host up to this many times first and network-boot only
    /// those that do not come back as Windows (0: network-boot at once).
    #[serde(default)]
    pub power_cycles: u32,
}

fn default_trigger_wait() -> u64 {
    5 * 60 * 1000
}

/// How a campaign makes its hosts network-boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// It does not: someone presses F12, or the machines already boot the network first.
    #[default]
    None,
    /// Through each host's management controller (AMT, Redfish, IPMI; Wake-on-LAN), no more
    /// at a time than the campaign's concurrency.
    Oob,
}

impl Trigger {
    /// `none` or `oob`.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Oob => "oob",
        }
    }
}

/// How a campaign releases BitLocker keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum KeyRelease {
    /// Released when the escrowed key's host name matches the host's imported name.
    #[default]
    Auto,
    /// Released only after an admin approved the release for that host.
    Confirm,
}

impl KeyRelease {
    /// `auto` or `confirm`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Confirm => "confirm",
        }
    }
}

fn default_host_timeout() -> u64 {
    30 * 60 * 1000
}

impl CampaignSpec {
    /// Checks the spec: names, wave sizes, gate, concurrency, timeouts.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.trim().is_empty() || self.name.len() > 80 {
            return Err(Error::Invalid("name: 1 to 80 characters".into()));
        }
        if self.waves.is_empty() || self.waves.len() > 20 {
            return Err(Error::Invalid(
                "waves: 1 to 20 waves, e.g. [\"5\", \"10%\", \"50%\", \"100%\"]".into(),
            ));
        }
        let mut last = 0;
        for w in &self.waves {
            if let WaveSize::Percent(p) = w {
                if *p < last {
                    return Err(Error::Invalid(
                        "percent waves are cumulative shares and must not decrease".into(),
                    ));
                }
                last = *p;
            }
        }
        if !(0.0..=1.0).contains(&self.gate.max_failure_rate) || self.gate.max_failure_rate.is_nan()
        {
            return Err(Error::Invalid(
                "gate.max_failure_rate is a share from 0.0 to 1.0".into(),
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::Invalid("concurrency: at least 1".into()));
        }
        if let Targets::List(l) = &self.targets {
            if l.is_empty() {
                return Err(Error::Invalid("targets: the list is empty".into()));
            }
        }
        if self.trigger_wait_ms < 10_000 {
            return Err(Error::Invalid(
                "trigger_wait_ms: at least 10000 (ten seconds)".into(),
            ));
        }
        if self.power_cycles > 5 {
            return Err(Error::Invalid("power_cycles: 0 to 5".into()));
        }
        if self.host_timeout_ms < 60_000 {
            return Err(Error::Invalid(
                "host_timeout_ms: at least 60000 (one minute)".into(),
            ));
        }
        Ok(())
    }
}

/// Where a campaign is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum CampaignState {
    /// Created, not started: touches nothing.
    Draft,
    /// Waves open one after another.
    Running,
    /// Paused by an admin: hosts in the payload finish, no new host starts.
    Paused,
    /// A gate failed: no further host is touched until an admin resumes or rolls back.
    Halted(String),
    /// Every wave closed.
    Completed,
    /// Stopped by an admin; nobody else gets the payload.
    Aborted,
    /// Hosts remediated by this campaign get the payload in restore mode on their next boot.
    RollingBack,
}

impl CampaignState {
    /// The state's name (`draft`, `running`, `halted`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted(_) => "halted",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::RollingBack => "rolling-back",
        }
    }

    /// Whether the campaign still claims its hosts (one active campaign per host).
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            Self::Running | Self::Paused | Self::Halted(_) | Self::RollingBack
        )
    }
}

/// One wave: its hosts and when it opened and closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    /// Its members, in wave order.
    pub hosts: Vec<Mac>,
    /// When it opened.
    pub opened_ms: Option<u64>,
    /// When it closed (the gate was judged).
    pub closed_ms: Option<u64>,
    /// Why the gate held or failed, when the wave closed.
    #[serde(default)]
    pub gate_note: String,
}

/// A campaign: the spec, its state and its waves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    /// Its id.
    pub id: String,
    /// What the admin asked for.
    pub spec: CampaignSpec,
    /// The signed rules the campaign runs with (id and version, from the server's active rules).
    pub rules: String,
    /// Where it is.
    pub state: CampaignState,
    /// When it was made.
    pub created_ms: u64,
    /// Its waves (filled at start).
    pub waves: Vec<Wave>,
    /// Index of the open (or last opened) wave.
    pub current: usize,
    /// Hosts in the payload now, with the time they got it.
    #[serde(default)]
    pub in_payload: BTreeMap<Mac, u64>,
    /// Hosts whose payload run ended (for rollback and for counting).
    #[serde(default)]
    pub finished: BTreeSet<Mac>,
    /// Hosts whose quarantine was restored by a rollback.
    #[serde(default)]
    pub restored: BTreeSet<Mac>,
    /// Human-readable history (time, what).
    #[serde(default)]
    pub log: Vec<(u64, String)>,
    /// Out-of-band triggers per host (campaigns with `trigger = oob`).
    #[serde(default)]
    pub triggers: BTreeMap<Mac, Triggered>,
}

/// How a host's state counts for its wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still running.
    Pending,
    /// Remediated, clean, rebooted or recovered.
    Success,
    /// Failed, needs attention or timed out.
    Failure,
    /// Final but neither (unverified, skipped by an admin).
    Neutral,
}

/// The outcome of `h` for the gate. With a verification window only a host seen back in Windows
/// counts as a success.
pub fn outcome(h: &HostRecord, verify: bool) -> Outcome {
    if h.skipped {
        return Outcome::Neutral;
    }
    match &h.state {
        // The agent waits for an admin to paste a BitLocker key: not final yet.
        HostState::NeedsAttention(_) if !h.bitlocker_waiting.is_empty() => Outcome::Pending,
        // Scanned read-only before this campaign: its run in this campaign is still to come.
        HostState::NeedsAttention(_) if crate::policy::scanned(h) => Outcome::Pending,
        HostState::Failed(_) | HostState::NeedsAttention(_) => Outcome::Failure,
        HostState::Recovered => Outcome::Success,
        HostState::Unverified => Outcome::Neutral,
        HostState::Remediated | HostState::Clean | HostState::Rebooted if !verify => {
            Outcome::Success
        }
        _ => Outcome::Pending,
    }
}

fn in_payload_state(s: &HostState) -> bool {
    matches!(
        s,
        HostState::Booting | HostState::AgentUp | HostState::Scanning | HostState::Unlocked
    )
}

/// A change the caller must apply to a host (and record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChange {
    /// The host.
    pub mac: Mac,
    /// The state to move it to.
    pub to: HostState,
    /// Why, for the timeline.
    pub why: String,
}

impl Campaign {
    /// A new campaign in draft.
    pub fn new(id: String, spec: CampaignSpec, rules: String, now_ms: u64) -> Result<Self, Error> {
        spec.validate()?;
        Ok(Self {
            id,
            spec,
            rules,
            state: CampaignState::Draft,
            created_ms: now_ms,
            waves: Vec::new(),
            current: 0,
            in_payload: BTreeMap::new(),
            finished: BTreeSet::new(),
            restored: BTreeSet::new(),
            log: vec![(now_ms, "created".into())],
            triggers: BTreeMap::new(),
        })
    }

    /// Every member, in wave order.
    pub fn members(&self) -> impl Iterator<Item = &Mac> {
        self.waves.iter().flat_map(|w| w.hosts.iter())
    }

    /// The wave `mac` is in.
    pub fn wave_of(&self, mac: Mac) -> Option<usize> {
        self.waves.iter().position(|w| w.hosts.contains(&mac))
    }

    fn note(&mut self, now: u64, what: String) {
        self.log.push((now, what));
    }

    /// Freezes the members into waves and opens the first. `hosts` are every known host;
    /// `taken` are hosts already claimed by another active campaign (refused: one campaign per
    /// host).
    pub fn start(
        &mut self,
        hosts: &[HostRecord],
        taken: &BTreeSet<Mac>,
        now: u64,
    ) -> Result<(), Error> {
        if self.state != CampaignState::Draft {
            return Err(Error::State(format!(
                "campaign is {}, not draft",
                self.state.name()
            )));
        }
        let chosen: Vec<&HostRecord> = hosts
            .iter()
            .filter(|h| self.spec.targets.matches(h) && !h.skipped)
            .collect();
        let mut members: Vec<Member> = chosen
            .iter()
            .map(|h| Member {
                mac: h.mac,
                site: h.site.clone().unwrap_or_default(),
                canary: h.tags.iter().any(|t| t.eq_ignore_ascii_case("canary")),
            })
            .collect();
        if let Targets::List(l) = &self.spec.targets {
            // Listed hosts need not have been seen yet.
            for m in l {
                if !chosen.iter().any(|h| h.mac == *m) {
                    members.push(Member {
                        mac: *m,
                        site: String::new(),
                        canary: false,
                    });
                }
            }
        }
        let members = wave_order(members);
        let clash: Vec<String> = members
            .iter()
            .filter(|m| taken.contains(m))
            .take(5)
            .map(|m| m.to_string())
            .collect();
        if !clash.is_empty() {
            return Err(Error::State(format!(
                "hosts already in another active campaign (one campaign per host): {}",
                clash.join(", ")
            )));
        }
        if members.is_empty() {
            return Err(Error::State(
                "no host matches the campaign's targets".into(),
            ));
        }
        self.waves = split_waves(&members, &self.spec.waves)
            .into_iter()
            .map(|hosts| Wave {
                hosts,
                opened_ms: None,
                closed_ms: None,
                gate_note: String::new(),
            })
            .collect();
        self.current = 0;
        self.waves[0].opened_ms = Some(now);
        self.state = CampaignState::Running;
        let sizes: Vec<String> = self
            .waves
            .iter()
            .map(|w| w.hosts.len().to_string())
            .collect();
        self.note(
            now,
            format!(
                "started: {} hosts in waves of {}; wave 1 open",
                members.len(),
                sizes.join(", ")
            ),
        );
        Ok(())
    }

    /// Stops handing out the payload (hosts in it finish).
    pub fn pause(&mut self, now: u64) -> Result<(), Error> {
        match self.state {
            CampaignState::Running => {
                self.state = CampaignState::Paused;
                self.note(now, "paused".into());
                Ok(())
            }
            ref s => Err(Error::State(format!(
                "campaign is {}; only a running campaign pauses",
                s.name()
            ))),
        }
    }

    /// Resumes a paused or halted campaign. A halted one reopens with the next wave if the
    /// halted wave is closed (the admin accepted its result).
    pub fn resume(&mut self, now: u64) -> Result<(), Error> {
        match &self.state {
            CampaignState::Paused => {}
            CampaignState::Halted(_) => {
                if self.waves[self.current].closed_ms.is_some() {
                    self.open_next(now);
                    if self.state == CampaignState::Completed {
                        return Ok(());
                    }
                }
            }
            s => {
                return Err(Error::State(format!(
                    "campaign is {}; only a paused or halted campaign resumes",
                    s.name()
                )))
            }
        }
        self.state = CampaignState::Running;
        self.note(
            now,
            format!("resumed by an admin; wave {} open", self.current + 1),
        );
        Ok(())
    }

    /// Ends the campaign: nobody else gets the payload.
    pub fn abort(&mut self, now: u64) -> Result<(), Error> {
        if matches!(
            self.state,
            CampaignState::Completed | CampaignState::Aborted
        ) {
            return Err(Error::State(format!(
                "campaign is already {}",
                self.state.name()
            )));
        }
        self.state = CampaignState::Aborted;
        self.note(now, "aborted by an admin".into());
        Ok(())
    }

    /// Rolls back: every host this campaign remediated gets the payload in restore mode.
    pub fn rollback(&mut self, now: u64) -> Result<(), Error> {
        if matches!(
            self.state,
            CampaignState::Draft | CampaignState::Aborted | CampaignState::RollingBack
        ) {
            return Err(Error::State(format!(
                "campaign is {}; nothing to roll back",
                self.state.name()
            )));
        }
        self.state = CampaignState::RollingBack;
        self.note(
            now,
            format!(
                "rollback requested: {} hosts to restore",
                self.finished.len()
            ),
        );
        Ok(())
    }

    fn open_next(&mut self, now: u64) {
        if self.current + 1 >= self.waves.len() {
            self.state = CampaignState::Completed;
            self.note(now, "completed: every wave closed".into());
        } else {
            self.current += 1;
            self.waves[self.current].opened_ms = Some(now);
            self.note(now, format!("wave {} open", self.current + 1));
        }
    }

    /// What a member host gets when it network-boots now. `None`: the host is not in this
    /// campaign (or the campaign does not claim it any more). `issue` is true when the answer
    /// is handed out (the boot script): a payload answer then takes a concurrency slot.
    pub fn decide(&mut self, h: &HostRecord, now: u64, issue: bool) -> Option<BootDecision> {
        if !self.state.is_active() && self.state != CampaignState::Completed {
            return None;
        }
        let w = self.wave_of(h.mac)?;
        if self.state == CampaignState::Completed {
            return Some(BootDecision::LocalBoot);
        }
        if h.skipped {
            return Some(BootDecision::LocalBoot);
        }
        if self.state == CampaignState::RollingBack {
            return Some(
                if self.finished.contains(&h.mac) && !self.restored.contains(&h.mac) {
                    BootDecision::Restore
                } else {
                    BootDecision::LocalBoot
                },
            );
        }
        if self.in_payload.contains_key(&h.mac) {
            // A host in the payload that network-boots again (agent crash, power cut) goes on.
            return Some(BootDecision::Payload);
        }
        if self.finished.contains(&h.mac) || h.state.is_done() {
            return Some(BootDecision::LocalBoot);
        }
        let wait = |reason: String| Some(BootDecision::WaitingRoom { reason });
        match &self.state {
            CampaignState::Paused => return wait(format!("campaign {} is paused", self.spec.name)),
            CampaignState::Halted(r) => {
                return wait(format!("campaign {} is halted ({r})", self.spec.name))
            }
            _ => {}
        }
        if w > self.current {
            return wait(format!(
                "waiting for wave {} of {} (wave {} is running)",
                w + 1,
                self.waves.len(),
                self.current + 1
            ));
        }
        if self.in_payload.len() as u32 >= self.spec.concurrency {
            return wait(format!(
                "all {} recovery slots are busy; next free slot",
                self.spec.concurrency
            ));
        }
        if issue {
            self.in_payload.insert(h.mac, now);
        }
        Some(BootDecision::Payload)
    }

    /// Follows a member host's state: frees its slot when its run ended, records the end.
    pub fn observe(&mut self, h: &HostRecord) {
        if !self.in_payload.contains_key(&h.mac) {
            return;
        }
        if !in_payload_state(&h.state) && outcome(h, false) != Outcome::Pending {
            self.in_payload.remove(&h.mac);
            self.finished.insert(h.mac);
        } else if matches!(h.state, HostState::Seen | HostState::Waiting) && h.skipped {
            self.in_payload.remove(&h.mac);
        }
    }

    /// Notes that a rollback restored `mac` (its restore report arrived).
    pub fn restored_host(&mut self, mac: Mac) {
        if self.finished.contains(&mac) {
            self.restored.insert(mac);
        }
    }

    /// Advances time: host timeouts and verification windows (returned as host changes), wave
    /// closure and gates.
    pub fn tick(&mut self, hosts: &HashMap<Mac, HostRecord>, now: u64) -> Vec<HostChange> {
        let mut changes = Vec::new();
        if !matches!(
            self.state,
            CampaignState::Running | CampaignState::Paused | CampaignState::Halted(_)
        ) {
            return changes;
        }
        // Hosts stuck in the payload.
        let stuck: Vec<Mac> = self
            .in_payload
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) > self.spec.host_timeout_ms)
            // A host whose agent waits for a pasted BitLocker key is waiting for a person (the
            // agent gives up by itself after its own wait and reports).
            .filter(|(m, _)| hosts.get(m).is_none_or(|h| h.bitlocker_waiting.is_empty()))
            .map(|(m, _)| *m)
            .collect();
        for m in stuck {
            self.in_payload.remove(&m);
            self.finished.insert(m);
            changes.push(HostChange {
                mac: m,
                to: HostState::Failed(format!(
                    "no result {} minutes after the payload was handed out",
                    self.spec.host_timeout_ms / 60_000
                )),
                why: format!("campaign {}: host timeout", self.spec.name),
            });
        }
        // Verification window.
        if let Some(win) = self.spec.verify_window_ms {
            for m in self.members() {
                if let Some(h) = hosts.get(m) {
                    if matches!(
                        h.state,
                        HostState::Remediated | HostState::Clean | HostState::Rebooted
                    ) && now.saturating_sub(h.state_since_ms) > win
                        && !changes.iter().any(|c| c.mac == *m)
                    {
                        changes.push(HostChange {
                            mac: *m,
                            to: HostState::Unverified,
                            why: format!(
                                "campaign {}: not seen back in Windows within {} minutes",
                                self.spec.name,
                                win / 60_000
                            ),
                        });
                    }
                }
            }
        }
        if self.state != CampaignState::Running {
            return changes;
        }
        // The open wave: closed when every host has a final result (with the changes above).
        let verify = self.spec.verify_window_ms.is_some();
        let wave = &self.waves[self.current];
        let (mut ok, mut bad, mut pending) = (0u32, 0u32, 0u32);
        for m in &wave.hosts {
            let o = match changes.iter().find(|c| c.mac == *m) {
                Some(c) if matches!(c.to, HostState::Failed(_)) => Outcome::Failure,
                Some(_) => Outcome::Neutral,
                None => hosts
                    .get(m)
                    .map(|h| outcome(h, verify))
                    .unwrap_or(Outcome::Pending),
            };
            match o {
                Outcome::Success => ok += 1,
                Outcome::Failure => bad += 1,
                Outcome::Pending => pending += 1,
                Outcome::Neutral => {}
            }
        }
        if pending > 0 {
            return changes;
        }
        let n = wave.hosts.len() as u32;
        let rate = f64::from(bad) / f64::from(n.max(1));
        let opened = wave.opened_ms.unwrap_or(now);
        let g = &self.spec.gate;
        let verdict = if ok < g.min_success {
            Err(format!(
                "wave {}: {ok} of {n} hosts succeeded, the gate needs {}",
                self.current + 1,
                g.min_success
            ))
        } else if rate > g.max_failure_rate + 1e-9 {
            Err(format!(
                "wave {}: {bad} of {n} hosts failed ({:.0}%), the gate allows {:.0}%",
                self.current + 1,
                rate * 100.0,
                g.max_failure_rate * 100.0
            ))
        } else if now.saturating_sub(opened) < g.min_soak_ms {
            // Gate holds so far; wait for the soak time before opening the next wave.
            return changes;
        } else {
            Ok(format!(
                "wave {}: {ok} of {n} succeeded, {bad} failed: gate holds",
                self.current + 1
            ))
        };
        let cur = self.current;
        self.waves[cur].closed_ms = Some(now);
        match verdict {
            Ok(note) => {
                self.waves[cur].gate_note = note.clone();
                self.note(now, note);
                self.open_next(now);
            }
            Err(why) => {
                self.waves[cur].gate_note = why.clone();
                self.note(now, format!("halted: {why}"));
                self.state = CampaignState::Halted(why);
            }
        }
        changes
    }
}

/// A campaign member as [`wave_order`] sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// The host.
    pub mac: Mac,
    /// Its site (empty when none).
    pub site: String,
    /// Tagged `canary` by an admin.
    pub canary: bool,
}

/// The order in which members fill the waves. Hosts an admin tagged `canary` come first (in MAC
/// order). The others are spread over groups of (site, network card vendor, i.e. the MAC's first
/// three bytes, a rough stand-in for the hardware model) in proportion to the groups' sizes: the
/// k-th of a group of n sits at (k + 1/2) / n of the way through, so any early wave, the canaries
/// included, samples every large site and kind of machine instead of the lowest MACs, which are
/// one vendor's range. Within a group, MAC order. Deterministic: the same fleet gives the same
/// waves.
pub fn wave_order(members: Vec<Member>) -> Vec<Mac> {
    let (mut canaries, rest): (Vec<Member>, Vec<Member>) =
        members.into_iter().partition(|m| m.canary);
    canaries.sort_by_key(|m| m.mac);
    let mut groups: BTreeMap<(String, [u8; 3]), Vec<Mac>> = BTreeMap::new();
    for m in rest {
        let oui = [m.mac.0[0], m.mac.0[1], m.mac.0[2]];
        groups.entry((m.site, oui)).or_default().push(m.mac);
    }
    // (position numerator 2k+1, denominator 2n, group index, mac)
    let mut spread: Vec<(u64, u64, usize, Mac)> = Vec::new();
    for (g, macs) in groups.values_mut().enumerate() {
        macs.sort();
        macs.dedup();
        let n = macs.len() as u64;
        for (k, mac) in macs.iter().enumerate() {
            spread.push((2 * k as u64 + 1, 2 * n, g, *mac));
        }
    }
    spread.sort_by(|a, b| {
        // a.0/a.1 against b.0/b.1 without rounding.
        (u128::from(a.0) * u128::from(b.1))
            .cmp(&(u128::from(b.0) * u128::from(a.1)))
            .then(a.2.cmp(&b.2))
    });
    let mut seen = BTreeSet::new();
    canaries
        .into_iter()
        .map(|m| m.mac)
        .chain(spread.into_iter().map(|s| s.3))
        .filter(|m| seen.insert(*m))
        .collect()
}

/// Splits ordered members into waves: `Hosts(n)` takes the next n, `Percent(p)` takes up to p% of
/// all members cumulatively; the last wave takes whatever is left. Empty waves are dropped.
pub fn split_waves(members: &[Mac], sizes: &[WaveSize]) -> Vec<Vec<Mac>> {
    let total = members.len();
    let mut out = Vec::new();
    let mut at = 0usize;
    for (i, s) in sizes.iter().enumerate() {
        let end = if i + 1 == sizes.len() {
            total
        } else {
            match s {
                WaveSize::Hosts(n) => (at + *n as usize).min(total),
                WaveSize::Percent(p) => ((total * *p as usize).div_ceil(100)).max(at).min(total),
            }
        };
        if end > at {
            out.push(members[at..end].to_vec());
        }
        at = end;
    }
    out
}

/// The boot policy with campaigns: a member of a campaign gets what its campaign says; once any
/// campaign has been started, a host in none gets local boot (ignored in proxy mode), so that
/// no machine is touched outside a wave. Before that, the base policy answers (every machine gets
/// the payload, or only approved ones).
pub struct CampaignPolicy {
    /// What hosts outside every campaign get.
    pub base: crate::DefaultPolicy,
    /// Proxy DHCP: hosts outside every campaign are not answered at all.
    pub proxy: bool,
    campaigns: std::sync::Mutex<Vec<Campaign>>,
    dirty: std::sync::atomic::AtomicBool,
    /// Counts the changes that must be durable before a host acts on them (a wave opened, a
    /// campaign started or resumed); bumped under the lock.
    seq: std::sync::atomic::AtomicU64,
    /// The last such change: until a persisted snapshot covers it, no host is newly admitted
    /// to the payload (else a crash could leave hosts booted in a wave the store never saw
    /// open).
    hold_until: std::sync::atomic::AtomicU64,
    /// The `seq` the last persisted snapshot was taken at.
    durable: std::sync::atomic::AtomicU64,
}

impl CampaignPolicy {
    /// The policy over `campaigns`; `proxy`: the server runs proxyDHCP.
    pub fn new(base: crate::DefaultPolicy, proxy: bool, campaigns: Vec<Campaign>) -> Self {
        Self {
            base,
            proxy,
            campaigns: std::sync::Mutex::new(campaigns),
            dirty: std::sync::atomic::AtomicBool::new(false),
            seq: std::sync::atomic::AtomicU64::new(0),
            hold_until: std::sync::atomic::AtomicU64::new(0),
            durable: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Holds new admissions until the next persisted snapshot (call under the lock, after the
    /// change).
    fn hold(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let s = self.seq.fetch_add(1, SeqCst) + 1;
        self.hold_until.store(s, SeqCst);
        self.dirty.store(true, SeqCst);
    }

    /// Whether new admissions wait for a persist.
    pub fn admissions_held(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.hold_until.load(SeqCst) > self.durable.load(SeqCst)
    }

    /// [`Self::with`] for an admin's action (start, resume, ...): new admissions wait until
    /// the result is persisted ([`Self::persisted`]).
    pub fn with_held<R>(&self, f: impl FnOnce(&mut Vec<Campaign>) -> R) -> R {
        let mut c = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut c);
        self.hold();
        r
    }

    /// A copy of every campaign to persist, with the change count it covers (pass it to
    /// [`Self::persisted`] once the copy is durable).
    pub fn snapshot_to_persist(&self) -> (Vec<Campaign>, u64) {
        let c = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        (
            c.clone(),
            self.seq.load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    /// The snapshot taken at `seq` is durable: held admissions go on.
    pub fn persisted(&self, seq: u64) {
        self.durable
            .fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
    }

    /// Marks the campaigns changed (a persist failed: the ticker tries again).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// After a restart: brings each running campaign's slots in line with the stored host
    /// records, which are flushed before a host is told anything, while the campaign itself is
    /// persisted up to a second later. A member in the payload by its record (booting, agent
    /// up, scanning, unlocked) holds a slot; a slot whose host has a final result is freed and
    /// the host counted as finished; a slot whose host never got the payload (the crash came
    /// between the admission and the host's record) is freed. Returns what changed.
    pub fn reconcile(&self, hosts: &HashMap<Mac, HostRecord>, now: u64) -> Vec<String> {
        let mut cs = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        let mut notes = Vec::new();
        for c in cs.iter_mut() {
            if !matches!(
                c.state,
                CampaignState::Running | CampaignState::Paused | CampaignState::Halted(_)
            ) {
                continue;
            }
            let (mut taken, mut freed, mut done) = (0, 0, 0);
            let members: Vec<(Mac, usize)> = c
                .waves
                .iter()
                .enumerate()
                .flat_map(|(w, wave)| wave.hosts.iter().map(move |m| (*m, w)))
                .collect();
            for (m, w) in members {
                let Some(h) = hosts.get(&m) else { continue };
                if c.in_payload.contains_key(&m) {
                    if !in_payload_state(&h.state) && outcome(h, false) != Outcome::Pending {
                        c.in_payload.remove(&m);
                        c.finished.insert(m);
                        done += 1;
                    } else if matches!(
                        h.state,
                        HostState::Unknown | HostState::Seen | HostState::Waiting
                    ) {
                        c.in_payload.remove(&m);
                        freed += 1;
                    }
                } else if in_payload_state(&h.state) && w <= c.current && !c.finished.contains(&m) {
                    c.in_payload.insert(m, h.state_since_ms);
                    taken += 1;
                }
            }
            if taken + freed + done > 0 {
                let note = format!(
                    "after a restart: {taken} host(s) in the payload by their records hold a slot again, {done} with a result freed theirs, {freed} that never got the payload freed theirs"
                );
                c.log.push((now, note.clone()));
                notes.push(format!("campaign {}: {note}", c.spec.name));
                self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        notes
    }

    /// Runs `f` on the campaigns (under the lock); marks them changed.
    pub fn with<R>(&self, f: impl FnOnce(&mut Vec<Campaign>) -> R) -> R {
        let mut c = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        f(&mut c)
    }

    /// A copy of every campaign.
    pub fn snapshot(&self) -> Vec<Campaign> {
        self.campaigns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether any campaign still claims hosts (the ticker has work).
    pub fn any_active(&self) -> bool {
        self.campaigns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|c| c.state.is_active())
    }

    /// Advances every campaign to `now` (see [`Campaign::tick`]). Returns the host changes to
    /// apply and what the campaigns noted; marks them changed only when something happened (a
    /// tick always notes a wave or state change and returns host changes for the rest), so a
    /// quiet second costs no store write.
    pub fn tick(
        &self,
        hosts: &HashMap<Mac, HostRecord>,
        now: u64,
    ) -> (Vec<HostChange>, Vec<String>) {
        let mut cs = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        let (mut changes, mut notes) = (Vec::new(), Vec::new());
        let mut opened = false;
        for c in cs.iter_mut() {
            let before = c.log.len();
            let was = (c.current, c.state.clone());
            changes.extend(c.tick(hosts, now));
            opened |= was != (c.current, c.state.clone());
            notes.extend(
                c.log[before..]
                    .iter()
                    .map(|(_, w)| format!("campaign {}: {w}", c.spec.name)),
            );
        }
        if !changes.is_empty() || !notes.is_empty() {
            self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if opened {
            self.hold();
        }
        (changes, notes)
    }

    /// The out-of-band orders due now in every running campaign with `trigger = oob` (with
    /// the campaign's id and name), and the hosts that need attention or healed.
    pub fn triggers_due(
        &self,
        hosts: &HashMap<Mac, HostRecord>,
        now: u64,
    ) -> (Vec<(String, String, TriggerOrder)>, Vec<HostChange>) {
        let mut cs = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        let (mut orders, mut changes) = (Vec::new(), Vec::new());
        for c in cs.iter_mut() {
            let (o, ch) = c.triggers_due(hosts, now);
            if !o.is_empty() || !ch.is_empty() {
                self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            orders.extend(
                o.into_iter()
                    .map(|o| (c.id.clone(), c.spec.name.clone(), o)),
            );
            changes.extend(ch);
        }
        (orders, changes)
    }

    /// A controller carried out (or could not) campaign `id`'s order for `mac`.
    pub fn trigger_done(
        &self,
        id: &str,
        mac: Mac,
        ok: bool,
        summary: &str,
        now: u64,
    ) -> Option<HostChange> {
        let mut cs = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        cs.iter_mut()
            .find(|c| c.id == id)?
            .trigger_done(mac, ok, summary, now)
    }

    /// Whether anything changed since the last call (the caller then persists).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Hosts claimed by active campaigns other than `except`.
    pub fn taken(&self, except: &str) -> BTreeSet<Mac> {
        self.campaigns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| c.id != except && c.state.is_active())
            .flat_map(|c| c.members().copied().collect::<Vec<_>>())
            .collect()
    }
}

impl crate::BootPolicy for CampaignPolicy {
    fn decide(&self, q: &crate::BootQuery, host: Option<&HostRecord>) -> BootDecision {
        use crate::ClientKind;
        if matches!(
            q.kind,
            ClientKind::Windows | ClientKind::Agent | ClientKind::Other
        ) {
            return BootDecision::Ignore;
        }
        let mut cs = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        if !cs.iter().any(|c| c.state != CampaignState::Draft) {
            drop(cs);
            return self.base.decide(q, host);
        }
        let fresh;
        let h = match host {
            Some(h) => h,
            None => {
                fresh = HostRecord::new(q.mac, q.now_ms);
                &fresh
            }
        };
        // The active campaign that claims the host first, then a completed one.
        let mut order: Vec<usize> = (0..cs.len()).collect();
        order.sort_by_key(|i| !cs[*i].state.is_active());
        let held = self.admissions_held();
        for i in order {
            // While a wave's opening is not yet durable, nobody new is let in.
            if held && q.issue && !cs[i].in_payload.contains_key(&h.mac) {
                if let Some(d) = cs[i].decide(h, q.now_ms, false) {
                    return match d {
                        BootDecision::Payload => BootDecision::WaitingRoom {
                            reason: format!(
                                "campaign {}: saving its progress; a slot opens at the next poll",
                                cs[i].spec.name
                            ),
                        },
                        d => d,
                    };
                }
                continue;
            }
            if let Some(d) = cs[i].decide(h, q.now_ms, q.issue) {
                if q.issue && d == BootDecision::Payload {
                    self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                return d;
            }
        }
        if self.proxy {
            BootDecision::Ignore
        } else {
            BootDecision::LocalBoot
        }
    }

    fn not_issued(&self, mac: Mac) {
        let mut cs = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        for c in cs.iter_mut() {
            if c.in_payload.remove(&mac).is_some() {
                self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    fn key_scope(&self, mac: Mac) -> Option<String> {
        let cs = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        cs.iter()
            .filter(|c| c.wave_of(mac).is_some())
            .find_map(|c| match c.state {
                CampaignState::Running | CampaignState::Paused => Some(c.id.clone()),
                CampaignState::RollingBack => Some(format!("{}:rollback", c.id)),
                _ => None,
            })
    }

    fn key_release_confirm(&self, mac: Mac) -> bool {
        let cs = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        cs.iter()
            .filter(|c| c.wave_of(mac).is_some())
            .find(|c| {
                matches!(
                    c.state,
                    CampaignState::Running | CampaignState::Paused | CampaignState::RollingBack
                )
            })
            .is_some_and(|c| c.spec.key_release == KeyRelease::Confirm)
    }

    fn observe(&self, h: &HostRecord) {
        let mut cs = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        let restored = h
            .last_report
            .as_ref()
            .is_some_and(|r| r.result == crate::agent::RunResult::Restored);
        for c in cs.iter_mut() {
            if c.in_payload.contains_key(&h.mac) {
                c.observe(h);
                self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if restored
                && c.state == CampaignState::RollingBack
                && c.finished.contains(&h.mac)
                && !c.restored.contains(&h.mac)
            {
                c.restored_host(h.mac);
                c.log.push((h.last_seen_ms, format!("{} restored", h.mac)));
                self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

pub mod trigger;
pub use trigger::{TriggerOrder, Triggered};

#[cfg(test)]
mod tests;
