//! Counters the protocol drivers keep (packets received, answered, dropped; transfers done) and
//! the console's `/metrics` renders. The drivers implement [`Counters`]; the composition root
//! hands them to the console, which knows nothing of DHCP or TFTP.

/// One monotonically increasing counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Prometheus metric name (`unbrick_dhcp_received_total`).
    pub name: &'static str,
    /// One line of help text.
    pub help: &'static str,
    /// The value now.
    pub value: u64,
}

/// A source of counters.
pub trait Counters: Send + Sync {
    /// The counters' current values.
    fn counters(&self) -> Vec<Counter>;
}

/// Renders counters in the Prometheus text format (version 0.0.4).
pub fn render(sources: &[std::sync::Arc<dyn Counters>], out: &mut String) {
    for s in sources {
        for c in s.counters() {
            out.push_str(&format!(
                "# HELP {n} {h}\n# TYPE {n} counter\n{n} {v}\n",
                n = c.name,
                h = c.help,
                v = c.value
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Two;
    impl Counters for Two {
        fn counters(&self) -> Vec<Counter> {
            vec![
                Counter {
                    name: "unbrick_a_total",
                    help: "A.",
                    value: 3,
                },
                Counter {
                    name: "unbrick_b_total",
                    help: "B.",
                    value: 0,
                },
            ]
        }
    }

    #[test]
    fn renders_prometheus_text() {
        let mut out = String::new();
        render(&[Arc::new(Two) as Arc<dyn Counters>], &mut out);
        assert_eq!(
            out,
            "# HELP unbrick_a_total A.\n# TYPE unbrick_a_total counter\nunbrick_a_total 3\n\
             # HELP unbrick_b_total B.\n# TYPE unbrick_b_total counter\nunbrick_b_total 0\n"
        );
    }
}
