//! Which strangers may become host records. Every parsed DHCP packet, boot-file request or
//! agent request names a MAC; without a limit, a million spoofed MACs would be a million records.
//! A new MAC is admitted while the fleet is under its cap (sized for the fleet) and at no more
//! than a rate (a token bucket: a boot storm of a real fleet fits the burst, a flood does not).
//! Imported hosts are not strangers and are not counted against the rate. Pure: time comes in.

/// The limits and the bucket.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Most host records.
    pub max_hosts: usize,
    /// New MACs per second, sustained.
    pub per_sec: u32,
    /// New MACs at once (the bucket's size).
    pub burst: u32,
    tokens: f64,
    last_ms: u64,
    /// Strangers refused so far.
    pub refused: u64,
    last_warn_ms: u64,
}

/// What [`Admission::admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A record may be made.
    Admit,
    /// Admitted, and the fleet is within 10 % of its cap: warn (at most once a minute).
    AdmitNearCap(String),
    /// Refused; `warn` carries a line to log (at most once every 10 s).
    Refuse {
        /// Why, for the log.
        warn: Option<String>,
    },
}

impl Admission {
    /// At most `max_hosts` records, `per_sec` new ones a second with bursts of `burst`.
    pub fn new(max_hosts: usize, per_sec: u32, burst: u32) -> Self {
        Self {
            max_hosts,
            per_sec,
            burst,
            tokens: f64::from(burst),
            last_ms: 0,
            refused: 0,
            last_warn_ms: 0,
        }
    }

    /// Whether a stranger may become the `known + 1`-th record at `now_ms`.
    pub fn admit(&mut self, known: usize, now_ms: u64) -> Verdict {
        let dt = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + dt * f64::from(self.per_sec)).min(f64::from(self.burst));
        let why = if known >= self.max_hosts {
            Some(format!(
                "the host cap is reached ({} records; raise --max-hosts if the fleet is larger)",
                self.max_hosts
            ))
        } else if self.tokens < 1.0 {
            Some(format!(
                "more than {} new MACs a second (a flood of spoofed addresses, or raise --new-hosts-per-sec)",
                self.per_sec
            ))
        } else {
            None
        };
        if let Some(why) = why {
            self.refused += 1;
            let warn = (self.last_warn_ms == 0
                || now_ms.saturating_sub(self.last_warn_ms) >= 10_000)
                .then(|| {
                    self.last_warn_ms = now_ms.max(1);
                    format!("new host refused: {why}; {} refused so far", self.refused)
                });
            return Verdict::Refuse { warn };
        }
        self.tokens -= 1.0;
        if known + 1 >= self.max_hosts - self.max_hosts / 10
            && (self.last_warn_ms == 0 || now_ms.saturating_sub(self.last_warn_ms) >= 60_000)
        {
            self.last_warn_ms = now_ms.max(1);
            return Verdict::AdmitNearCap(format!(
                "{} host records of at most {}: raise --max-hosts before the fleet reaches it",
                known + 1,
                self.max_hosts
            ));
        }
        Verdict::Admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_refills_and_the_cap_holds() {
        let mut a = Admission::new(100, 10, 20);
        let admitted = (0..50)
            .filter(|i| !matches!(a.admit(*i, 1000), Verdict::Refuse { .. }))
            .count();
        assert_eq!(admitted, 20, "the burst");
        assert_eq!(a.refused, 30);
        // One second later, ten more.
        let more = (0..50)
            .filter(|_| !matches!(a.admit(20, 2000), Verdict::Refuse { .. }))
            .count();
        assert_eq!(more, 10);
        // At the cap nothing, whatever the bucket.
        assert!(matches!(a.admit(100, 100_000), Verdict::Refuse { .. }));
        // Near the cap: admitted with a warning.
        assert!(matches!(a.admit(95, 200_000), Verdict::AdmitNearCap(_)));
        // Refusal lines are rate-limited.
        let mut b = Admission::new(1, 1, 1);
        let warns = (0..100)
            .filter(|i| matches!(b.admit(5, 1000 + i * 10), Verdict::Refuse { warn: Some(_) }))
            .count();
        assert_eq!(warns, 1);
    }
}
