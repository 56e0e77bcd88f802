//! The fleet's progress over time: a bounded series of samples of how many hosts are in each
//! group of states, the recovery rate over a recent window and the estimated finish. Pure: the
//! caller takes the samples (the server every few seconds) and passes the time.

use serde::{Deserialize, Serialize};

use crate::HostState;

/// The groups the chart draws, in drawing order (bottom to top).
pub const GROUPS: [&str; 4] = ["done", "in-progress", "waiting", "attention"];

/// Which group a state belongs to.
pub fn group(state: &HostState) -> usize {
    if state.is_done() {
        0
    } else if state.reason().is_some() {
        3
    } else {
        match state {
            HostState::Unknown | HostState::Seen | HostState::Waiting => 2,
            _ => 1,
        }
    }
}

/// One sample: the time and the count of hosts per group ([`GROUPS`] order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// Hosts per group, in [`GROUPS`] order.
    pub counts: [u32; 4],
}

impl Sample {
    /// Counts `states` at `t_ms`.
    pub fn of<'a>(t_ms: u64, states: impl Iterator<Item = &'a HostState>) -> Self {
        let mut counts = [0u32; 4];
        for s in states {
            counts[group(s)] += 1;
        }
        Self { t_ms, counts }
    }

    /// Every host counted.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// Hosts done.
    pub fn done(&self) -> u32 {
        self.counts[0]
    }
}

/// A bounded series of samples, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Series {
    samples: Vec<Sample>,
}

/// At most this many samples are kept; past it the older half is thinned to every other
/// sample, so the series always spans from its first sample to now.
pub const MAX_SAMPLES: usize = 720;

/// With no change, a sample is still kept this often (a flat line has points).
pub const HEARTBEAT_MS: u64 = 60_000;

impl Default for Series {
    fn default() -> Self {
        Self::new()
    }
}

impl Series {
    /// An empty series.
    pub fn new() -> Self {
        Self {
            samples: Vec::new(),
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Keeps `s` if the counts changed since the last sample or a heartbeat has passed; a
    /// sample older than the last one is dropped (a clock step backwards). Returns whether it
    /// was kept.
    pub fn record(&mut self, s: Sample) -> bool {
        if let Some(last) = self.samples.last() {
            if s.t_ms < last.t_ms {
                return false;
            }
            if s.counts == last.counts && s.t_ms - last.t_ms < HEARTBEAT_MS {
                return false;
            }
        } else if s.total() == 0 {
            // Nothing to draw before the first host.
            return false;
        }
        self.samples.push(s);
        if self.samples.len() > MAX_SAMPLES {
            self.thin();
        }
        true
    }

    /// Halves the older half: keeps its first sample and every other one after it.
    fn thin(&mut self) {
        let half = self.samples.len() / 2;
        let mut kept: Vec<Sample> = self.samples[..half]
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| *s)
            .collect();
        kept.extend_from_slice(&self.samples[half..]);
        self.samples = kept;
    }

    /// The recovery rate and the estimated finish at `now_ms`, from the hosts done over the
    /// last `window_ms` (or since the first sample, when the series is shorter). `None` with
    /// fewer than two samples or when nothing was done in the window.
    pub fn estimate(&self, now_ms: u64, window_ms: u64) -> Option<Estimate> {
        let last = *self.samples.last()?;
        let from_t = now_ms.saturating_sub(window_ms);
        // The newest sample at or before the window's start, else the first.
        let first = self
            .samples
            .iter()
            .rev()
            .find(|s| s.t_ms <= from_t)
            .or_else(|| self.samples.first())
            .copied()?;
        let span = now_ms.max(last.t_ms).saturating_sub(first.t_ms);
        let remaining = last.total() - last.done();
        if span == 0 {
            return None;
        }
        let done = last.done().saturating_sub(first.done());
        let per_min = done as f64 * 60_000.0 / span as f64;
        let finish_ms = if remaining == 0 {
            Some(last.t_ms)
        } else if done == 0 {
            None
        } else {
            Some(now_ms + (remaining as f64 / per_min * 60_000.0) as u64)
        };
        Some(Estimate {
            per_min,
            remaining,
            window_ms: span,
            finish_ms,
        })
    }
}

/// The recovery rate and the estimated finish.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// Hosts done per minute over the window.
    pub per_min: f64,
    /// Hosts not done yet.
    pub remaining: u32,
    /// The window the rate was measured over, in milliseconds.
    pub window_ms: u64,
    /// When all hosts would be done at that rate (`None` when nothing was done in the window:
    /// no estimate, rather than "never").
    pub finish_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(t: u64, done: u32, prog: u32, wait: u32, att: u32) -> Sample {
        Sample {
            t_ms: t,
            counts: [done, prog, wait, att],
        }
    }

    #[test]
    fn groups_states_as_the_chart_draws_them() {
        let states = [
            HostState::Recovered,
            HostState::Clean,
            HostState::Booting,
            HostState::Scanning,
            HostState::Waiting,
            HostState::Seen,
            HostState::Failed("disk".into()),
            HostState::NeedsAttention("key".into()),
        ];
        let x = Sample::of(5, states.iter());
        assert_eq!(x.counts, [2, 2, 2, 2]);
        assert_eq!(x.total(), 8);
    }

    #[test]
    fn keeps_changes_and_heartbeats_not_repeats() {
        let mut v = Series::new();
        assert!(!v.record(s(0, 0, 0, 0, 0)), "nothing before the first host");
        assert!(v.record(s(1_000, 0, 0, 5, 0)));
        assert!(!v.record(s(2_000, 0, 0, 5, 0)));
        assert!(v.record(s(3_000, 1, 0, 4, 0)));
        assert!(!v.record(s(2_500, 2, 0, 3, 0)), "older than the last");
        assert!(v.record(s(3_000 + HEARTBEAT_MS, 1, 0, 4, 0)));
        assert_eq!(v.samples().len(), 3);
    }

    #[test]
    fn rate_and_finish_from_the_window() {
        let mut v = Series::new();
        // 100 hosts; 10 done per minute from t=0.
        for m in 0..=5u64 {
            v.record(s(m * 60_000, (m * 10) as u32, 10, 90 - (m * 10) as u32, 0));
        }
        let e = v.estimate(5 * 60_000, 10 * 60_000).unwrap();
        assert!((e.per_min - 10.0).abs() < 1e-9, "{e:?}");
        assert_eq!(e.remaining, 50);
        assert_eq!(e.finish_ms, Some(10 * 60_000));
        // A 2-minute window sees the same rate.
        let e = v.estimate(5 * 60_000, 2 * 60_000).unwrap();
        assert!((e.per_min - 10.0).abs() < 1e-9, "{e:?}");
        // Nothing done in the window: no finish time.
        let mut flat = Series::new();
        flat.record(s(0, 0, 0, 10, 0));
        flat.record(s(HEARTBEAT_MS, 0, 0, 10, 0));
        assert_eq!(
            flat.estimate(HEARTBEAT_MS, 600_000).unwrap().finish_ms,
            None
        );
        // All done: finished at the last sample.
        let mut all = Series::new();
        all.record(s(0, 0, 2, 0, 0));
        all.record(s(30_000, 2, 0, 0, 0));
        assert_eq!(
            all.estimate(90_000, 600_000).unwrap().finish_ms,
            Some(30_000)
        );
        assert_eq!(Series::new().estimate(1, 1), None);
    }

    proptest! {
        /// However many samples arrive, the series stays bounded, ordered, and keeps the first
        /// and the newest sample.
        #[test]
        fn bounded_ordered_and_spanning(steps in proptest::collection::vec((1u64..90_000, 0u32..3), 1..3_000)) {
            let mut v = Series::new();
            let (mut t, mut done) = (0u64, 0u32);
            let mut first = None;
            let mut newest = None;
            for (dt, inc) in steps {
                t += dt;
                done += inc;
                let x = s(t, done, 1, 0, 0);
                if v.record(x) {
                    first.get_or_insert(x);
                    newest = Some(x);
                }
            }
            prop_assert!(v.samples().len() <= MAX_SAMPLES);
            prop_assert!(v.samples().windows(2).all(|w| w[0].t_ms < w[1].t_ms));
            prop_assert_eq!(v.samples().first().copied(), first);
            prop_assert_eq!(v.samples().last().copied(), newest);
        }
    }
}
