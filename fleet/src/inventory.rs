//! Inventory imports: the admin's host list (MAC, host name, site, tags) from CSV or JSON, each
//! row validated, bad rows reported by line and the rest kept.
use crate::{HostRecord, Mac};
use serde::{Deserialize, Serialize};

/// One host of an import.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ImportRow {
    /// MAC address (required).
    pub mac: String,
    /// Host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Site.
    #[serde(default)]
    pub site: Option<String>,
    /// Tags (`;`-separated in CSV).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The BitLocker recovery-password protector IDs of the host's volumes (`;`-separated in
    /// CSV): when given, a key is released to the host only for these.
    #[serde(default)]
    pub protectors: Vec<String>,
}

/// A validated import row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImport {
    /// The row's line in the file.
    pub line: usize,
    /// The host.
    pub mac: Mac,
    /// Host name, if given.
    pub hostname: Option<String>,
    /// Site, if given.
    pub site: Option<String>,
    /// Tags, if given.
    pub tags: Vec<String>,
    /// Recovery-password protector IDs (canonical), if given.
    pub protectors: Vec<String>,
}

impl HostImport {
    /// Writes the row's inventory fields into `h`; fields the row leaves empty are kept, and the
    /// host's state is never touched.
    pub fn apply(&self, h: &mut HostRecord) {
        if self.hostname.is_some() {
            h.hostname = self.hostname.clone();
        }
        if self.site.is_some() {
            h.site = self.site.clone();
        }
        if !self.tags.is_empty() {
            h.tags = self.tags.clone();
        }
        if !self.protectors.is_empty() {
            h.protector_ids = self.protectors.clone();
        }
    }
}

/// A row that was refused, by line (1 = the CSV header; JSON: 1-based array index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RowError {
    /// The line in the file.
    pub line: usize,
    /// What is wrong with it.
    pub error: String,
}

fn clean_field(what: &str, v: Option<String>, max: usize) -> Result<Option<String>, String> {
    let Some(v) = v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if v.len() > max {
        return Err(format!("{what} is longer than {max} characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(Some(v))
}

fn validate_row(line: usize, r: ImportRow) -> Result<HostImport, RowError> {
    let err = |error: String| RowError { line, error };
    let mac: Mac = r.mac.trim().parse().map_err(|e: String| err(e))?;
    let hostname = clean_field("hostname", r.hostname, 253).map_err(err)?;
    let site = clean_field("site", r.site, 64).map_err(err)?;
    let mut tags = Vec::new();
    for t in r.tags {
        for t in t.split([';', ' ']).map(str::trim).filter(|t| !t.is_empty()) {
            let t = clean_field("tag", Some(t.to_string()), 64)
                .map_err(err)?
                .unwrap_or_default();
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
    }
    if tags.len() > 32 {
        return Err(err("more than 32 tags".into()));
    }
    let mut protectors = Vec::new();
    for p in r.protectors {
        for p in p.split([';', ' ']).map(str::trim).filter(|p| !p.is_empty()) {
            let id = crate::escrow::protector_id(p).map_err(|e| err(format!("protectors: {e}")))?;
            if !protectors.contains(&id) {
                protectors.push(id);
            }
        }
    }
    if protectors.len() > 16 {
        return Err(err("more than 16 protectors".into()));
    }
    Ok(HostImport {
        line,
        mac,
        hostname,
        site,
        tags,
        protectors,
    })
}

/// Most hosts one import may carry.
pub const MAX_IMPORT_ROWS: usize = 100_000;

/// A CSV import read: its header, the readable non-empty records with their line in the file
/// (csv's own counter skips blank lines), and the unreadable rows by line.
pub(crate) struct CsvRead {
    pub(crate) headers: csv::StringRecord,
    pub(crate) records: Vec<(usize, csv::StringRecord)>,
    pub(crate) unreadable: Vec<RowError>,
}

/// Reads a CSV import (flexible, fields trimmed); more than `max_rows` records is an error.
/// Host and controller imports share it.
pub(crate) fn read_csv(text: &str, max_rows: usize) -> Result<CsvRead, String> {
    let mut rd = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rd
        .headers()
        .map_err(|e| format!("CSV header: {e}"))?
        .clone();
    let (mut records, mut unreadable) = (Vec::new(), Vec::new());
    // Line numbers counted as the reader moves on (records come in file order): counting from
    // the start for each record made a 100,000-row import quadratic.
    let (mut at, mut newlines) = (0usize, 0usize);
    for (i, rec) in rd.records().enumerate() {
        let line = rec
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map(|p| {
                let mut b = (p.byte() as usize).min(text.len());
                // The position may point at blank lines skipped before the record.
                while matches!(text.as_bytes().get(b), Some(b'\n' | b'\r')) {
                    b += 1;
                }
                if b >= at {
                    newlines += text.as_bytes()[at..b]
                        .iter()
                        .filter(|c| **c == b'\n')
                        .count();
                    at = b;
                }
                newlines + 1
            })
            .unwrap_or(i + 2);
        if i >= max_rows {
            return Err(format!("more than {max_rows} rows; split the file"));
        }
        match rec {
            Ok(r) if r.iter().all(str::is_empty) => {}
            Ok(r) => records.push((line, r)),
            Err(e) => unreadable.push(RowError {
                line,
                error: format!("unreadable CSV row: {e}"),
            }),
        }
    }
    Ok(CsvRead {
        headers,
        records,
        unreadable,
    })
}

/// Parses a CSV host list: a header row naming at least `mac` (also `mac address`,
/// `macaddress`), optionally `hostname` (or `name`, `computer name`), `site`, `tags` (separated by
/// `;` or spaces), `protectors` (BitLocker recovery-password protector IDs, `;`-separated). Bad rows are reported by line; the good ones come back.
pub fn parse_csv(text: &str) -> Result<(Vec<HostImport>, Vec<RowError>), String> {
    let CsvRead {
        headers,
        records,
        unreadable: mut bad,
    } = read_csv(text, MAX_IMPORT_ROWS)?;
    let col = |names: &[&str]| {
        headers.iter().position(|h| {
            let h = h
                .trim_start_matches('\u{feff}')
                .to_ascii_lowercase()
                .replace(['_', '-'], " ");
            names.contains(&h.as_str())
        })
    };
    let mac_col = col(&["mac", "mac address", "macaddress"]).ok_or_else(|| {
        format!(
            "the CSV header has no 'mac' column (found: {}); expected mac,hostname,site,tags",
            headers.iter().collect::<Vec<_>>().join(",")
        )
    })?;
    let host_col = col(&["hostname", "name", "computer name", "device name"]);
    let site_col = col(&["site"]);
    let tags_col = col(&["tags", "tag"]);
    let prot_col = col(&["protectors", "protector ids", "protector id"]);
    let mut ok = Vec::new();
    for (line, rec) in records {
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(str::to_string);
        let row = ImportRow {
            mac: get(Some(mac_col)).unwrap_or_default(),
            hostname: get(host_col),
            site: get(site_col),
            tags: get(tags_col).into_iter().collect(),
            protectors: get(prot_col).into_iter().collect(),
        };
        match validate_row(line, row) {
            Ok(h) => ok.push(h),
            Err(e) => bad.push(e),
        }
    }
    // Unreadable rows and refused ones, in file order.
    bad.sort_by_key(|e| e.line);
    Ok((ok, bad))
}

/// Parses a JSON host list: an array of `{mac, hostname?, site?, tags?}`.
pub fn parse_json(text: &str) -> Result<(Vec<HostImport>, Vec<RowError>), String> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("expected a JSON array of hosts: {e}"))?;
    if rows.len() > MAX_IMPORT_ROWS {
        return Err(format!("more than {MAX_IMPORT_ROWS} hosts; split the file"));
    }
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (i, v) in rows.into_iter().enumerate() {
        match serde_json::from_value::<ImportRow>(v) {
            Ok(r) => match validate_row(i + 1, r) {
                Ok(h) => ok.push(h),
                Err(e) => bad.push(e),
            },
            Err(e) => bad.push(RowError {
                line: i + 1,
                error: e.to_string(),
            }),
        }
    }
    Ok((ok, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_import_reports_bad_rows_by_line_and_keeps_the_rest() {
        let text = "\u{feff}MAC Address,Hostname,Site,Tags\n\
                    52:54:00:aa:00:01,pc-1,Berlin,canary;floor2\n\
                    not-a-mac,pc-2,Berlin,\n\
                    \n\
                    52-54-00-AA-00-03,\"pc, three\",Austin,\"a b a\"\n\
                    52:54:00:aa:00:04,bad\u{7}name,,\n";
        let (ok, bad) = parse_csv(text).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].tags, ["canary", "floor2"]);
        assert_eq!(ok[1].hostname.as_deref(), Some("pc, three"));
        assert_eq!(ok[1].tags, ["a", "b"]);
        assert_eq!(ok[1].line, 5);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].line, 3);
        assert!(bad[1].error.contains("control"), "{bad:?}");
        assert!(parse_csv("hostname,site\npc,x\n")
            .unwrap_err()
            .contains("no 'mac' column"));
        let (ok, bad) = parse_csv("mac\n52:54:00:aa:00:09\n").unwrap();
        assert_eq!((ok.len(), bad.len()), (1, 0));
    }

    #[test]
    fn json_import() {
        let (ok, bad) = parse_json(
            r#"[{"mac":"52:54:00:aa:00:01","hostname":"a","tags":["x"]},{"mac":"zz"},{"mac":"52:54:00:aa:00:02","colour":"red"},7]"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(parse_json("{}").is_err());
    }
}
