//! Pure fleet queries: filtering and paging the host table, counts by state, host import (CSV and
//! JSON) and the fleet report (CSV and JSON). No I/O: hosts come in as arguments.
use fleet::agent::FileRecord;
pub use fleet::inventory::{
    parse_csv, parse_json, HostImport, ImportRow, RowError, MAX_IMPORT_ROWS,
};
use fleet::HostRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every state name, in the order of the design's state machine (the console shows them so).
pub const STATES: [&str; 14] = [
    "unknown",
    "seen",
    "waiting",
    "booting",
    "agent-up",
    "scanning",
    "unlocked",
    "remediated",
    "clean",
    "needs-attention",
    "failed",
    "rebooted",
    "recovered",
    "unverified",
];

/// Host table filter. Empty fields match everything.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// One state name, or several separated by commas.
    #[serde(default)]
    pub state: Option<String>,
    /// A site.
    #[serde(default)]
    pub site: Option<String>,
    /// A tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Free text: part of the MAC, hostname, IP, serial, UUID or failure reason.
    #[serde(default)]
    pub q: Option<String>,
    /// `key-needed`: waits for a BitLocker recovery key to be pasted; `rotate-key`: a recovery
    /// key was released and should be rotated in Windows.
    #[serde(default)]
    pub flag: Option<String>,
    /// Page number, from 1.
    #[serde(default, deserialize_with = "crate::extract::empty_as_none")]
    pub page: Option<usize>,
    /// Hosts per page.
    #[serde(default, deserialize_with = "crate::extract::empty_as_none")]
    pub per_page: Option<usize>,
}

/// Most hosts on one page.
pub const MAX_PER_PAGE: usize = 500;
/// The values of [`Filter::flag`].
pub const FLAGS: [&str; 2] = ["key-needed", "rotate-key"];
/// Hosts on a page when the filter names none.
pub const DEFAULT_PER_PAGE: usize = 50;

impl Filter {
    /// Checks the values; the message is for the API caller.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.state.as_deref().filter(|s| !s.is_empty()) {
            for one in s.split(',') {
                if !STATES.contains(&one.trim()) {
                    return Err(format!(
                        "unknown state {one:?}; one of: {}",
                        STATES.join(", ")
                    ));
                }
            }
        }
        if let Some(f) = self.flag.as_deref().filter(|s| !s.is_empty()) {
            if !FLAGS.contains(&f) {
                return Err(format!("unknown flag {f:?}; one of: {}", FLAGS.join(", ")));
            }
        }
        if self.page == Some(0) {
            return Err("page starts at 1".into());
        }
        match self.per_page {
            Some(0) => Err("per_page must be at least 1".into()),
            Some(n) if n > MAX_PER_PAGE => Err(format!("per_page is at most {MAX_PER_PAGE}")),
            _ => Ok(()),
        }
    }

    /// The non-empty selection fields (not the page) as query-string pairs, for links and
    /// API calls that carry the filter on.
    pub fn query_pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("q", &self.q),
            ("state", &self.state),
            ("site", &self.site),
            ("tag", &self.tag),
            ("flag", &self.flag),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_deref().filter(|v| !v.is_empty())?)))
        .collect()
    }

    /// Whether `h` passes the filter.
    pub fn matches(&self, h: &HostRecord) -> bool {
        let nonempty = |o: &Option<String>| {
            o.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        if let Some(s) = nonempty(&self.state) {
            if !s.split(',').any(|one| one.trim() == h.state.name()) {
                return false;
            }
        }
        if let Some(site) = nonempty(&self.site) {
            if !h
                .site
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case(&site))
            {
                return false;
            }
        }
        if let Some(tag) = nonempty(&self.tag) {
            if !h.tags.iter().any(|t| t.eq_ignore_ascii_case(&tag)) {
                return false;
            }
        }
        match nonempty(&self.flag).as_deref() {
            Some("key-needed") if h.bitlocker_waiting.is_empty() => return false,
            Some("rotate-key") if !h.rotate_bitlocker_key => return false,
            _ => {}
        }
        if let Some(q) = nonempty(&self.q) {
            let q = q.to_ascii_lowercase();
            let hay = [
                Some(h.mac.to_string()),
                h.hostname.clone(),
                h.name_on_disk.clone(),
                h.ip.map(|i| i.to_string()),
                h.serial.clone(),
                h.uuid.clone(),
                h.state.reason().map(str::to_string),
                h.site.clone(),
            ];
            let mac_plain = h.mac.to_string().replace(':', "");
            if !hay
                .iter()
                .flatten()
                .any(|s| s.to_ascii_lowercase().contains(&q))
                && !mac_plain.contains(&q.replace([':', '-'], ""))
            {
                return false;
            }
        }
        true
    }
}

/// One page of hosts, sorted by MAC.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    /// Hosts that pass the filter.
    pub total: usize,
    /// This page's number.
    pub page: usize,
    /// Hosts per page.
    pub per_page: usize,
    /// How many pages.
    pub pages: usize,
    /// This page's hosts.
    pub hosts: Vec<T>,
}

/// Filters and pages `hosts` (any order in, sorted by MAC out); copies only the page.
pub fn page<'a>(hosts: impl Iterator<Item = &'a HostRecord>, f: &Filter) -> Page<HostRecord> {
    let mut hits: Vec<&HostRecord> = hosts.filter(|h| f.matches(h)).collect();
    hits.sort_unstable_by_key(|h| h.mac);
    let total = hits.len();
    let per_page = f
        .per_page
        .unwrap_or(DEFAULT_PER_PAGE)
        .clamp(1, MAX_PER_PAGE);
    let pages = total.div_ceil(per_page).max(1);
    let page = f.page.unwrap_or(1).clamp(1, pages);
    let hosts = hits
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    Page {
        total,
        page,
        per_page,
        pages,
        hosts,
    }
}

/// Counts by state and the progress of the recovery.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Summary {
    /// Every host.
    pub total: usize,
    /// Every state name, zero counts included.
    pub by_state: BTreeMap<String, usize>,
    /// Hosts whose run is finished well (remediated, clean, rebooted, recovered).
    pub done: usize,
    /// Hosts that need a person (needs-attention, failed).
    pub attention: usize,
    /// done / total, in percent (0 with no hosts).
    pub progress_percent: u32,
}

/// Counts `hosts` by state.
pub fn summary<'a>(hosts: impl Iterator<Item = &'a HostRecord>) -> Summary {
    let mut by_state: BTreeMap<String, usize> = STATES.iter().map(|s| (s.to_string(), 0)).collect();
    let (mut total, mut done, mut attention) = (0, 0, 0);
    for h in hosts {
        total += 1;
        *by_state.entry(h.state.name().to_string()).or_default() += 1;
        if h.state.is_done() {
            done += 1;
        }
        if h.state.reason().is_some() {
            attention += 1;
        }
    }
    Summary {
        total,
        by_state,
        done,
        attention,
        progress_percent: (done * 100).checked_div(total).unwrap_or(0) as u32,
    }
}

/// The fleet report for one host (JSON export; the CSV has the same columns, files flattened).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReportRow {
    /// MAC address.
    pub mac: String,
    /// Host name.
    pub hostname: Option<String>,
    /// The computer name read from the disk.
    pub name_on_disk: Option<String>,
    /// Site.
    pub site: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// State name.
    pub state: String,
    /// Why, for needs-attention and failed.
    pub reason: Option<String>,
    /// Last IPv4 address.
    pub ip: Option<String>,
    /// SMBIOS serial number.
    pub serial: Option<String>,
    /// SMBIOS UUID.
    pub uuid: Option<String>,
    /// First seen (ISO 8601).
    pub first_seen: String,
    /// Last seen (ISO 8601).
    pub last_seen: String,
    /// In its state since (ISO 8601).
    pub state_since: String,
    /// How often the payload was handed out.
    pub payload_boots: u32,
    /// The last report's result.
    pub result: Option<String>,
    /// Files quarantined or restored, with hashes.
    pub files: Vec<FileRecord>,
    /// A BitLocker recovery key left escrow for this host: rotate it in Windows.
    pub rotate_bitlocker_key: bool,
}

/// `v` as a query-string value: every byte but RFC 3986's unreserved ones percent-encoded.
pub fn urlenc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Unix seconds (as the agent reports file and dump times; before 1970 reads as 1970) as
/// [`iso`].
pub fn iso_secs(unix: i64) -> String {
    iso(u64::try_from(unix).unwrap_or(0).saturating_mul(1000))
}

/// Milliseconds since the Unix epoch as ISO 8601 UTC (`2024-07-19T04:09:00Z`).
pub fn iso(ms: u64) -> String {
    let s = ms / 1000;
    let (days, rem) = (s / 86400, s % 86400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A run result's name as the agent API spells it (`nothing-found`, `needs-attention`, ...).
pub fn result_name(r: fleet::agent::RunResult) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The report row of a host.
pub fn report_row(h: &HostRecord) -> ReportRow {
    ReportRow {
        mac: h.mac.to_string(),
        hostname: h.hostname.clone(),
        name_on_disk: h.name_on_disk.clone(),
        site: h.site.clone(),
        tags: h.tags.clone(),
        state: h.state.name().to_string(),
        reason: h.state.reason().map(str::to_string),
        ip: h.ip.map(|i| i.to_string()),
        serial: h.serial.clone(),
        uuid: h.uuid.clone(),
        first_seen: iso(h.first_seen_ms),
        last_seen: iso(h.last_seen_ms),
        state_since: iso(h.state_since_ms),
        payload_boots: h.payload_boots,
        result: h.last_report.as_ref().map(|r| result_name(r.result)),
        files: h
            .last_report
            .as_ref()
            .map(|r| r.files.clone())
            .unwrap_or_default(),
        rotate_bitlocker_key: h.rotate_bitlocker_key,
    }
}

/// The CSV export's columns.
pub const CSV_COLUMNS: [&str; 17] = [
    "mac",
    "hostname",
    "site",
    "tags",
    "state",
    "reason",
    "ip",
    "serial",
    "first_seen",
    "last_seen",
    "state_since",
    "payload_boots",
    "result",
    "files",
    "file_sha256",
    "rotate_bitlocker_key",
    "name_on_disk",
];

/// A CSV cell a spreadsheet would not run: a cell starting with `=`, `+`, `-`, `@` (or a tab or
/// carriage return, which some spreadsheets skip before looking) gets a leading `'`, as OWASP
/// advises for CSV injection. Agents and imports supply most of these strings.
pub fn neutralise(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// The fleet report as CSV, one row per host, sorted by MAC. `files` lists each matched file as
/// `action path -> quarantined_to`, `file_sha256` the hashes in the same order (`;`-separated).
pub fn export_csv(rows: &[ReportRow]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_COLUMNS).expect("in-memory CSV");
    for r in rows {
        let files = r
            .files
            .iter()
            .map(|f| {
                format!(
                    "{} {}{}",
                    f.action,
                    f.path,
                    f.quarantined_to
                        .as_ref()
                        .map(|q| format!(" -> {q}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let hashes = r
            .files
            .iter()
            .map(|f| f.sha256.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        w.write_record(
            [
                r.mac.clone(),
                o(&r.hostname),
                o(&r.site),
                r.tags.join(";"),
                r.state.clone(),
                o(&r.reason),
                o(&r.ip),
                o(&r.serial),
                r.first_seen.clone(),
                r.last_seen.clone(),
                r.state_since.clone(),
                r.payload_boots.to_string(),
                o(&r.result),
                files,
                hashes,
                if r.rotate_bitlocker_key { "yes" } else { "" }.to_string(),
                o(&r.name_on_disk),
            ]
            .map(neutralise),
        )
        .expect("in-memory CSV");
    }
    String::from_utf8(w.into_inner().expect("in-memory CSV")).expect("CSV of strings is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet::HostState;

    fn host(i: u8, state: HostState) -> HostRecord {
        let mut h = HostRecord::new(fleet::Mac([0x52, 0x54, 0, 0, 1, i]), 1_721_366_820_000);
        h.state = state;
        h.hostname = Some(format!("pc-{i:03}"));
        h.site = Some(
            if i.is_multiple_of(2) {
                "Berlin"
            } else {
                "Austin"
            }
            .into(),
        );
        h.tags = vec![if i < 5 { "canary" } else { "wave2" }.into()];
        h
    }

    #[test]
    fn filter_and_page() {
        let hosts: Vec<_> = (0..30)
            .map(|i| {
                host(
                    i,
                    if i % 3 == 0 {
                        HostState::Remediated
                    } else {
                        HostState::Failed("disk".into())
                    },
                )
            })
            .collect();
        let f = |s: &str| serde_json::from_str::<Filter>(s).unwrap();
        let p = page(hosts.iter().rev(), &f(r#"{"per_page":7,"page":2}"#));
        assert_eq!((p.total, p.pages, p.hosts.len()), (30, 5, 7));
        assert_eq!(
            p.hosts[0].hostname.as_deref(),
            Some("pc-007"),
            "sorted by MAC"
        );
        let p = page(
            hosts.iter(),
            &f(r#"{"state":"remediated","site":"berlin"}"#),
        );
        assert_eq!(p.total, 5);
        let p = page(
            hosts.iter(),
            &f(r#"{"state":"remediated,failed","tag":"CANARY"}"#),
        );
        assert_eq!(p.total, 5);
        let p = page(hosts.iter(), &f(r#"{"q":"PC-01"}"#));
        assert_eq!(p.total, 10);
        let p = page(hosts.iter(), &f(r#"{"q":"5254000001 0a"}"#));
        assert_eq!(p.total, 0);
        let p = page(hosts.iter(), &f(r#"{"q":"52-54-00-00-01-0a"}"#));
        assert_eq!(p.total, 1);
        let p = page(hosts.iter(), &f(r#"{"q":"disk"}"#));
        assert_eq!(p.total, 20, "search covers failure reasons");
        let p = page(hosts.iter(), &f(r#"{"page":99}"#));
        assert_eq!(p.page, 1, "past the end clamps to the last page");
        assert!(f(r#"{"state":"nope"}"#)
            .validate()
            .unwrap_err()
            .contains("unknown state"));
        assert!(f(r#"{"page":0}"#).validate().is_err());
        assert!(f(r#"{"per_page":501}"#).validate().is_err());
        assert!(serde_json::from_str::<Filter>(r#"{"color":"red"}"#).is_err());
        let s = summary(hosts.iter());
        assert_eq!(
            (s.total, s.done, s.attention, s.progress_percent),
            (30, 10, 20, 33)
        );
        assert_eq!(s.by_state["remediated"], 10);
        assert_eq!(s.by_state["recovered"], 0);
    }

    #[test]
    fn export_csv_round_trips_through_a_csv_reader() {
        let mut h = host(1, HostState::Remediated);
        h.hostname = Some("pc, \"quoted\"".into());
        h.last_report = Some(fleet::agent::Report {
            token: String::new(),
            mac: h.mac.to_string(),
            report_id: "r".into(),
            result: fleet::agent::RunResult::Remediated,
            reason: None,
            volumes: vec![],
            files: vec![FileRecord {
                volume: "sda2".into(),
                path: "Windows/System32/drivers/CrowdStrike/C-00000291-0.sys".into(),
                size: 42,
                sha256: "ab".repeat(32),
                mtime: 0,
                rule_id: "cs".into(),
                action: "quarantine".into(),
                quarantined_to: Some("unbrick-quarantine/x".into()),
            }],
            rules_id: None,
            rules_version: None,
            agent_ms: 1,
        });
        let text = export_csv(&[report_row(&h)]);
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            rd.headers().unwrap().iter().collect::<Vec<_>>(),
            CSV_COLUMNS
        );
        let rec = rd.records().next().unwrap().unwrap();
        assert_eq!(&rec[1], "pc, \"quoted\"");
        assert_eq!(&rec[4], "remediated");
        assert_eq!(&rec[8], "2024-07-19T05:27:00Z");
        assert!(rec[13].contains("C-00000291-0.sys -> unbrick-quarantine/x"));
        assert_eq!(&rec[14], "ab".repeat(32));
    }

    #[test]
    fn export_neutralises_formula_cells() {
        let mut h = host(2, HostState::Failed("=HYPERLINK(\"http://x\")".into()));
        h.hostname = Some("@SUM(A1)".into());
        h.serial = Some("+1-555".into());
        h.site = Some("-2+3".into());
        h.tags = vec!["ok".into()];
        let text = export_csv(&[report_row(&h)]);
        let rec = csv::Reader::from_reader(text.as_bytes())
            .records()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(&rec[1], "'@SUM(A1)");
        assert_eq!(&rec[2], "'-2+3");
        assert_eq!(&rec[3], "ok");
        assert_eq!(&rec[5], "'=HYPERLINK(\"http://x\")");
        assert_eq!(&rec[7], "'+1-555");
        assert_eq!(neutralise("\t=1".into()), "'\t=1");
        assert_eq!(neutralise("plain".into()), "plain");
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1_721_366_820_000), "2024-07-19T05:27:00Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
