//! The console's view of progress: the chart of hosts per group of states over time (an SVG
//! drawn on the server, so it needs no script), the recovery rate and the estimated finish,
//! a progress bar per campaign wave, and a host's stage strip.

use std::fmt::Write as _;

use fleet::progress::{Series, GROUPS};
use serde::Serialize;

use crate::query;

/// The rate is measured over this window.
pub const RATE_WINDOW_MS: u64 = 10 * 60_000;

/// One sample, as the API sends it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SampleView {
    /// When (ISO 8601, UTC).
    pub time: String,
    /// When (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// Hosts per group, in the order of `groups`.
    pub counts: Vec<u32>,
}

/// The fleet's progress over time.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProgressView {
    /// The groups counted: done (remediated, clean, rebooted, recovered, unverified),
    /// in-progress (booting to unlocked), waiting (unknown, seen, waiting), attention
    /// (needs-attention, failed).
    pub groups: Vec<String>,
    /// Samples, oldest first (every few seconds while something changes, every minute
    /// otherwise; older ones thinned).
    pub samples: Vec<SampleView>,
    /// Hosts done per minute over the last 10 minutes (or since the first sample).
    pub rate_per_min: Option<f64>,
    /// Hosts not done yet.
    pub remaining: Option<u32>,
    /// When every host would be done at that rate (ISO 8601, UTC); absent when nothing was
    /// done in the window.
    pub finish: Option<String>,
    /// The same in milliseconds since the Unix epoch.
    pub finish_ms: Option<u64>,
}

/// The series as the API sends it, with the estimate at `now_ms`.
pub fn view(series: &Series, now_ms: u64) -> ProgressView {
    let e = series.estimate(now_ms, RATE_WINDOW_MS);
    ProgressView {
        groups: GROUPS.iter().map(|g| g.to_string()).collect(),
        samples: series
            .samples()
            .iter()
            .map(|s| SampleView {
                time: query::iso(s.t_ms),
                time_ms: s.t_ms,
                counts: s.counts.to_vec(),
            })
            .collect(),
        rate_per_min: e.map(|e| (e.per_min * 10.0).round() / 10.0),
        remaining: e.map(|e| e.remaining),
        finish: e.and_then(|e| e.finish_ms).map(query::iso),
        finish_ms: e.and_then(|e| e.finish_ms),
    }
}

/// One line under the chart: the rate and the finish, in words.
pub fn headline(series: &Series, now_ms: u64) -> Option<String> {
    let e = series.estimate(now_ms, RATE_WINDOW_MS)?;
    let window_min = (e.window_ms / 60_000).max(1);
    let rate = format!(
        "{:.1} hosts a minute over the last {window_min} min",
        e.per_min
    );
    Some(match e.finish_ms {
        _ if e.remaining == 0 => format!("all done; {rate}"),
        Some(f) => {
            let left = f.saturating_sub(now_ms) / 1000;
            let when = query::iso(f);
            format!(
                "{rate}; {} left, estimated finish {} UTC (in {})",
                e.remaining,
                &when[11..16],
                duration(left)
            )
        }
        None => format!("{rate}; {} left, no estimate yet", e.remaining),
    })
}

/// `3 h 05 min`, `12 min`, `40 s`.
pub fn duration(secs: u64) -> String {
    if secs >= 3600 {
        format!("{} h {:02} min", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// The chart: a stacked area per group over time, as an SVG (only numbers and fixed words
/// go into it, so it is safe to put in the page as it is). Empty with fewer than two samples.
pub fn chart_svg(series: &Series, now_ms: u64) -> String {
    let s = series.samples();
    if s.len() < 2 {
        return String::new();
    }
    let (w, h, left, bottom) = (720.0f64, 180.0f64, 44.0f64, 20.0f64);
    let t0 = s[0].t_ms;
    let t1 = now_ms.max(s[s.len() - 1].t_ms).max(t0 + 1);
    let top = s.iter().map(|x| x.total()).max().unwrap_or(1).max(1) as f64;
    let x = |t: u64| left + (t - t0) as f64 / (t1 - t0) as f64 * (w - left - 4.0);
    let y = |v: f64| (h - bottom) - v / top * (h - bottom - 6.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg id="progress-chart" class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="hosts per state over time" data-points="{}">"#,
        s.len()
    );
    // Stacked: each group's band lies on the ones before it. The last sample is held until now.
    let mut below = vec![0f64; s.len() + 1];
    for (g, name) in GROUPS.iter().enumerate() {
        let mut pts_top = Vec::with_capacity(s.len() + 1);
        let mut above = below.clone();
        for (i, sample) in s.iter().enumerate() {
            above[i] = below[i] + sample.counts[g] as f64;
            pts_top.push((x(sample.t_ms), y(above[i])));
        }
        let last = s.len();
        above[last] = above[last - 1];
        pts_top.push((x(t1), y(above[last])));
        let mut d = String::new();
        for (i, (px, py)) in pts_top.iter().enumerate() {
            let _ = write!(d, "{}{px:.1},{py:.1} ", if i == 0 { "M" } else { "L" });
        }
        let times: Vec<u64> = s.iter().map(|q| q.t_ms).chain([t1]).collect();
        for i in (0..times.len()).rev() {
            let _ = write!(d, "L{:.1},{:.1} ", x(times[i]), y(below[i]));
        }
        let _ = write!(
            out,
            r#"<path class="band g-{name}" d="{}Z"><title>{name}</title></path>"#,
            d.trim_end()
        );
        below = above;
    }
    // Axes: the host count and the start and end times.
    let _ = write!(
        out,
        r#"<line class="axis" x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">0</text><text class="tick" x="{left}" y="{h}">{}</text><text class="tick" x="{:.1}" y="{h}" text-anchor="end">{}</text>"#,
        y(0.0),
        w - 4.0,
        y(0.0),
        left - 4.0,
        y(top) + 4.0,
        top as u64,
        left - 4.0,
        y(0.0),
        &query::iso(t0)[11..16],
        w - 4.0,
        &query::iso(t1)[11..16],
    );
    out.push_str("</svg>");
    out
}

/// A wave's progress bar: the share of its hosts succeeded, failed and pending, in percent.
#[derive(Debug, Clone)]
pub struct WaveBar {
    /// The wave's number (1 is the canaries).
    pub number: usize,
    /// Hosts in the wave.
    pub hosts: usize,
    /// Succeeded, in percent of the wave.
    pub ok_pct: u32,
    /// Failed, in percent.
    pub failed_pct: u32,
    /// The words beside the bar.
    pub label: String,
    /// The campaign's current wave.
    pub current: bool,
}

/// The bars of `c`'s waves.
pub fn wave_bars(c: &crate::campaigns::CampaignView) -> Vec<WaveBar> {
    c.waves
        .iter()
        .map(|w| {
            let n = w.hosts.max(1);
            let pct = |k: usize| (k * 100 / n) as u32;
            WaveBar {
                number: w.number,
                hosts: w.hosts,
                ok_pct: pct(w.succeeded),
                failed_pct: pct(w.failed),
                label: format!(
                    "wave {}: {} of {} succeeded, {} failed, {} pending{}",
                    w.number,
                    w.succeeded,
                    w.hosts,
                    w.failed,
                    w.pending,
                    if w.closed.is_some() {
                        ", closed"
                    } else if w.opened.is_some() {
                        ", open"
                    } else {
                        ""
                    }
                ),
                current: w.number == c.current_wave,
            }
        })
        .collect()
}

/// A stage of the host's strip, as the API and the page show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StageView {
    /// DHCP, boot loader, kernel, agent, scan, fix, report, back in Windows.
    pub name: String,
    /// When it started (ISO 8601, UTC); absent when not reached.
    pub started: Option<String>,
    /// How long it took, in milliseconds, until the next stage reached; absent for the
    /// stage the host is in.
    pub took_ms: Option<u64>,
}

impl StageView {
    /// `reached`, `current` or `not-reached`, for the page's colours.
    pub fn class(&self) -> &'static str {
        match (&self.started, self.took_ms) {
            (None, _) => "not-reached",
            (Some(_), Some(_)) => "reached",
            (Some(_), None) => "current",
        }
    }

    /// How long, in words (`1.2 s`, `3 min`), or the start time for the current stage.
    pub fn took(&self) -> String {
        match (&self.started, self.took_ms) {
            (_, Some(ms)) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
            (_, Some(ms)) => duration(ms / 1000),
            (Some(t), None) => format!("at {}", &t[11..19]),
            (None, None) => "-".into(),
        }
    }
}

/// The strip of the host's latest attempt, from its events.
pub fn stages(events: &[fleet::Event]) -> Vec<StageView> {
    fleet::stages::strip(events)
        .into_iter()
        .map(|s| StageView {
            name: s.name.to_string(),
            started: s.started_ms.map(query::iso),
            took_ms: s.took_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet::progress::Sample;

    #[test]
    fn chart_has_a_band_per_group_and_its_points() {
        let mut v = Series::new();
        assert_eq!(chart_svg(&v, 0), "");
        v.record(Sample {
            t_ms: 0,
            counts: [0, 2, 8, 0],
        });
        v.record(Sample {
            t_ms: 60_000,
            counts: [5, 2, 2, 1],
        });
        let svg = chart_svg(&v, 120_000);
        assert!(svg.starts_with("<svg id=\"progress-chart\""));
        assert!(svg.contains("data-points=\"2\""));
        for g in GROUPS {
            assert!(svg.contains(&format!("g-{g}")), "{g}");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let line = headline(&v, 120_000).unwrap();
        assert!(
            line.contains("hosts a minute") && line.contains("5 left"),
            "{line}"
        );
        let api = view(&v, 120_000);
        assert_eq!(api.samples.len(), 2);
        assert_eq!(api.remaining, Some(5));
        assert!(api.finish_ms.unwrap() > 120_000);
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(duration(40), "40 s");
        assert_eq!(duration(12 * 60 + 5), "12 min");
        assert_eq!(duration(3 * 3600 + 5 * 60), "3 h 05 min");
    }
}
