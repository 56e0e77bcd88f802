//! Escrowed BitLocker recovery passwords: validation, the CSV exports admins have (Active
//! Directory, Entra ID / Intune, plain), the escrow record, and the release decision.
//!
//! Pure: no I/O and no clock. The sealed form (encryption at rest) is [`vault`]'s business; a
//! record here only carries the sealed bytes. A recovery password never appears in an error
//! message or a `Debug` output of this module.
use crate::{Error, HostRecord, Mac};
use serde::{Deserialize, Serialize};
use std::fmt;

#[cfg(feature = "sled-store")]
pub mod vault;

/// A validated BitLocker recovery password, kept in its canonical form (8 groups of 6 digits
/// joined by `-`). `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryPassword(String);

impl Drop for RecoveryPassword {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for RecoveryPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryPassword(<hidden>)")
    }
}

impl RecoveryPassword {
    /// Parses a recovery password as admins paste it: 48 digits in 8 groups of 6, separated by
    /// `-` or spaces (or not at all). Each group is a 16-bit value times 11, so it must be a
    /// multiple of 11 below 720,896: this catches almost every typing error. The error never
    /// repeats the digits.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let digits: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
            s.trim()
                .chars()
                .filter(|c| *c != '-' && !c.is_whitespace())
                .collect(),
        );
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(Error::Invalid(
                "a recovery password has only digits and dashes".into(),
            ));
        }
        if digits.len() != 48 {
            return Err(Error::Invalid(format!(
                "a recovery password has 48 digits (8 groups of 6), this one has {}",
                digits.len()
            )));
        }
        let groups: Vec<&str> = (0..8).map(|i| &digits[i * 6..i * 6 + 6]).collect();
        for (i, g) in groups.iter().enumerate() {
            let v: u32 = g.parse().expect("six ASCII digits");
            if !v.is_multiple_of(11) {
                return Err(Error::Invalid(format!(
                    "recovery password group {} is not a multiple of 11 (a typing error?)",
                    i + 1
                )));
            }
            if v / 11 > 0xffff {
                return Err(Error::Invalid(format!(
                    "recovery password group {} is out of range (above 720895)",
                    i + 1
                )));
            }
        }
        Ok(Self(groups.join("-")))
    }

    /// The password itself (for cryptsetup's stdin or an admin's reveal; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Canonical key protector ID: a GUID in lower case without braces. Accepts `{...}`, upper
/// case and surrounding spaces.
pub fn protector_id(s: &str) -> Result<String, Error> {
    let t = s.trim().trim_start_matches('{').trim_end_matches('}');
    let parts: Vec<&str> = t.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if parts.len() != 5
        || parts
            .iter()
            .zip(lens)
            .any(|(p, n)| p.len() != n || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        let shown: String = s.chars().take(60).collect();
        return Err(Error::Invalid(format!(
            "{shown:?} is not a key protector ID (a GUID like 64311DEA-4587-4029-924A-BA299647998E)"
        )));
    }
    Ok(t.to_ascii_lowercase())
}

/// Host names compare by their first label, case-insensitively (`PC042` = `pc042.corp.example`).
pub fn same_host(a: &str, b: &str) -> bool {
    let short = |s: &str| {
        s.trim()
            .split('.')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    !short(a).is_empty() && short(a) == short(b)
}

/// The export an import was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// An Active Directory export (msFVE-RecoveryGuid, msFVE-RecoveryPassword).
    ActiveDirectory,
    /// An Entra ID / Intune export (Device name, Key ID, Recovery key).
    Entra,
    /// A plain CSV (protector_id, recovery_password, hostname).
    Plain,
    /// Pasted by an admin in the console or through the API.
    Console,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ActiveDirectory => "active-directory",
            Self::Entra => "entra",
            Self::Plain => "plain",
            Self::Console => "console",
        })
    }
}

/// One good row of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Its line in the file.
    pub line: usize,
    /// The key protector ID (a GUID).
    pub protector_id: String,
    /// The recovery password.
    pub password: RecoveryPassword,
    /// The computer's name, when the export has one.
    pub hostname: Option<String>,
}

/// What an import file held: its format, the good rows, the bad ones by line (with a reason
/// that never contains the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Which kind of export.
    pub source: Source,
    /// The good rows.
    pub rows: Vec<KeyRow>,
    /// The refused rows: line and reason.
    pub errors: Vec<(usize, String)>,
}

fn norm_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

#[derive(Clone, Copy, PartialEq)]
enum Col {
    Id,
    Password,
    Host,
    /// An AD object's distinguished name: `CN=<date>{GUID},CN=<computer>,OU=...`.
    Dn,
}

fn role(h: &str) -> Option<Col> {
    Some(match h {
        "msfverecoveryguid" | "keyid" | "bitlockerkeyid" | "recoverykeyid" | "protectorid"
        | "keyprotectorid" | "id" | "recoveryguid" | "passwordid" => Col::Id,
        "msfverecoverypassword"
        | "recoverykey"
        | "recoverypassword"
        | "bitlockerrecoverykey"
        | "key"
        | "bitlockerrecoverypassword" => Col::Password,
        "computername" | "computer" | "devicename" | "device" | "hostname" | "host"
        | "machinename" => Col::Host,
        "distinguishedname" | "dn" => Col::Dn,
        _ => return None,
    })
}

/// The GUID between braces in `CN=2024-07-19T08:15:00-00:00{GUID},...` and the computer name
/// (the parent CN).
fn from_dn(dn: &str) -> (Option<String>, Option<String>) {
    let id = dn
        .split_once('{')
        .and_then(|(_, r)| r.split_once('}'))
        .and_then(|(g, _)| protector_id(g).ok());
    let host = dn
        .split(',')
        .nth(1)
        .and_then(|p| p.trim().strip_prefix("CN="))
        .map(str::to_string);
    (id, host)
}

/// Reads a key export. The format is recognised by its header: Active Directory
/// (`msFVE-RecoveryGuid`, `msFVE-RecoveryPassword`, and `ComputerName` or the object's
/// `DistinguishedName`), Entra ID / Intune (`Device name`, `Key ID`, `Recovery key`), or the plain
/// `protector_id,recovery_password[,hostname]` with or without a header. Bad rows are reported by
/// line (1 = the first line of the file) and the rest kept; a protector ID given twice keeps the
/// last row. Comma- or semicolon-separated (a European Excel writes `;`).
pub fn parse_export(data: &[u8]) -> Result<Parsed, Error> {
    let text = std::str::from_utf8(data).map_err(|e| {
        Error::Invalid(format!(
            "the file is not UTF-8 text (byte {})",
            e.valid_up_to()
        ))
    })?;
    let text = text.trim_start_matches('\u{feff}');
    let first = text.lines().next().unwrap_or("");
    let delim = if first.matches(';').count() > first.matches(',').count() {
        b';'
    } else {
        b','
    };
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delim)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = rd.records();
    let Some(head) = records.next() else {
        return Err(Error::Invalid("the file is empty".into()));
    };
    let head = head.map_err(|e| Error::Invalid(format!("line 1: {e}")))?;
    let roles: Vec<Option<Col>> = head.iter().map(|h| role(&norm_header(h))).collect();
    let names: Vec<String> = head.iter().map(norm_header).collect();
    // Without a header the first field of the first line is already a protector ID.
    let headed = head.get(0).is_none_or(|f| protector_id(f).is_err());
    let (source, cols, mut pending) = if headed {
        let source = if names.iter().any(|n| n.starts_with("msfve")) {
            Source::ActiveDirectory
        } else if names
            .iter()
            .any(|n| n == "devicename" || n == "keyid" || n == "recoverykey")
        {
            Source::Entra
        } else {
            Source::Plain
        };
        let has = |c: Col| roles.contains(&Some(c));
        if !has(Col::Password) {
            return Err(Error::Invalid(format!("line 1: no recovery password column (expected msFVE-RecoveryPassword, Recovery key or recovery_password; found {})", head.iter().collect::<Vec<_>>().join(", "))));
        }
        if !has(Col::Id) && !has(Col::Dn) {
            return Err(Error::Invalid("line 1: no key protector ID column (expected msFVE-RecoveryGuid, Key ID or protector_id)".into()));
        }
        (source, roles, None)
    } else {
        // No header: protector_id,recovery_password[,hostname].
        let cols = vec![Some(Col::Id), Some(Col::Password), Some(Col::Host)];
        (Source::Plain, cols, Some(head))
    };
    let mut rows: Vec<KeyRow> = Vec::new();
    let mut errors = Vec::new();
    let mut line = if pending.is_some() { 0 } else { 1 };
    loop {
        let rec = match pending.take() {
            Some(r) => r,
            None => match records.next() {
                None => break,
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    line += 1;
                    errors.push((line, format!("unreadable CSV: {e}")));
                    continue;
                }
            },
        };
        // The line the record starts on, counted from its byte offset (exact with quoted
        // multi-line fields; with CRLF the offset points at the `\n` before the record).
        line = rec
            .position()
            .map(|p| {
                let b = text.as_bytes();
                let mut at = (p.byte() as usize).min(b.len());
                while at < b.len() && (b[at] == b'\r' || b[at] == b'\n') {
                    at += 1;
                }
                b[..at].iter().filter(|c| **c == b'\n').count() + 1
            })
            .unwrap_or(line + 1);
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        let mut id = None;
        let mut pw = None;
        let mut host = None;
        let mut dn = None;
        for (i, f) in rec.iter().enumerate() {
            match cols.get(i).copied().flatten() {
                Some(Col::Id) if !f.is_empty() => id = Some(f),
                Some(Col::Password) => pw = Some(f),
                Some(Col::Host) if !f.is_empty() => host = Some(f.to_string()),
                Some(Col::Dn) => dn = Some(f),
                _ => {}
            }
        }
        let (dn_id, dn_host) = dn.map(from_dn).unwrap_or((None, None));
        let id = match (id, dn_id) {
            (Some(i), _) => protector_id(i),
            (None, Some(i)) => Ok(i),
            (None, None) => Err(Error::Invalid("no key protector ID".into())),
        };
        let id = match id {
            Ok(i) => i,
            Err(e) => {
                errors.push((line, e.to_string()));
                continue;
            }
        };
        let pw = match pw.map(RecoveryPassword::parse) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                errors.push((line, format!("{e} (protector {id})")));
                continue;
            }
            None => {
                errors.push((line, format!("no recovery password (protector {id})")));
                continue;
            }
        };
        let hostname = host.or(dn_host).filter(|h| !h.is_empty());
        if let Some(h) = &hostname {
            if h.len() > 253 || h.chars().any(|c| c.is_control()) {
                errors.push((line, format!("bad host name (protector {id})")));
                continue;
            }
        }
        rows.retain(|r| r.protector_id != id);
        rows.push(KeyRow {
            line,
            protector_id: id,
            password: pw,
            hostname,
        });
    }
    Ok(Parsed {
        source,
        rows,
        errors,
    })
}

/// One release of a key to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Release {
    /// The host it was released to.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub mac: Mac,
    /// The campaign (and phase) it was released in: `<campaign id>` or `<id>:rollback`.
    pub scope: String,
    /// When.
    pub time_ms: u64,
    /// Released on an admin's paste for this host (not counted against the once-per-campaign
    /// rule).
    #[serde(default)]
    pub manual: bool,
}

/// An escrowed recovery password, sealed. Stored by protector ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowRecord {
    /// The key protector ID (a GUID).
    pub protector_id: String,
    /// The computer's name, when the export had one.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Where the key came from.
    pub source: Source,
    /// When it was imported.
    pub imported_ms: u64,
    /// Nonce and ciphertext (AES-256-GCM, the protector ID as associated data), hex.
    pub sealed: String,
    /// Every release, per campaign.
    #[serde(default)]
    pub releases: Vec<Release>,
    /// An admin pasted this key for this host: released to it once more, whatever was released
    /// before.
    #[serde(default)]
    pub manual_grant: Option<Mac>,
    /// How many times an admin looked at the password (each is in the audit log).
    #[serde(default)]
    pub reveals: u32,
}

/// The list view of a record: never the password.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EscrowSummary {
    /// The key protector ID.
    pub protector_id: String,
    /// The computer's name, when known.
    pub hostname: Option<String>,
    /// Where the key came from.
    pub source: Source,
    /// When it was imported.
    pub imported_ms: u64,
    /// Every release.
    pub releases: Vec<Release>,
    /// How often an admin revealed it.
    pub reveals: u32,
}

impl From<&EscrowRecord> for EscrowSummary {
    fn from(r: &EscrowRecord) -> Self {
        Self {
            protector_id: r.protector_id.clone(),
            hostname: r.hostname.clone(),
            source: r.source,
            imported_ms: r.imported_ms,
            releases: r.releases.clone(),
            reveals: r.reveals,
        }
    }
}

/// What the server answers an agent that asks for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseDecision {
    /// Release this record's password.
    Release {
        /// The protector whose key is released.
        protector_id: String,
        /// On an admin's paste for this host.
        manual: bool,
    },
    /// No key is escrowed for any of the IDs: the agent waits, the console asks for a paste.
    Wait {
        /// The protector IDs nothing is escrowed for.
        missing: Vec<String>,
        /// What the admin is told.
        reason: String,
    },
    /// A key is escrowed but may leave only on an admin's approval for this host: the agent
    /// waits, the console and the CLI offer the approval.
    Approval {
        /// The protector whose key waits.
        protector_id: String,
        /// What the admin is told.
        reason: String,
    },
    /// Refused for good (for this boot): the reason goes to the agent, the host and the audit log.
    /// `already_released`: one of the reasons is an earlier release (a conflict, not a denial).
    Refuse {
        /// Why.
        reason: String,
        /// The key was released to this host in this campaign already (409).
        already_released: bool,
    },
}

/// The release policy. `ids`: the recovery-password protector IDs the agent read from the disk
/// (canonical); `records`: the escrow record of each (same order, `None` when not escrowed);
/// `scope`: the active campaign (and phase) the host is in, `None` when none is; `confirm`: the
/// campaign releases keys only on an admin's approval (`key_release = confirm`).
///
/// A key is released only inside an active campaign, only for a protector the agent found on
/// the disk, never when the escrow's host name differs from the host's imported name or the
/// host's imported protector inventory (when it has one) lacks it, and at most once per host
/// per campaign unless an admin pasted it for this host. It is released *automatically* only
/// when the escrow's host name and the host's imported name match and the host's claim is not
/// disputed; otherwise, and always with `confirm`, it waits for an admin's approval for this
/// host in this scope. Refusal texts name no host names and no inventory (the agent reads
/// them).
pub fn decide(
    ids: &[String],
    records: &[Option<EscrowRecord>],
    host: &HostRecord,
    scope: Option<&str>,
    confirm: bool,
) -> ReleaseDecision {
    let Some(scope) = scope else {
        return ReleaseDecision::Refuse {
            reason: "this host is not in an active campaign: keys are released only to hosts of a running campaign".into(),
            already_released: false,
        };
    };
    if ids.is_empty() {
        return ReleaseDecision::Refuse {
            reason: "the volume has no recovery-password protector".into(),
            already_released: false,
        };
    }
    let mut refusals = Vec::new();
    let mut already_released = false;
    let mut missing = Vec::new();
    let approved = host.key_release_approved.as_deref() == Some(scope);
    for (id, rec) in ids.iter().zip(records) {
        let Some(rec) = rec else {
            missing.push(id.clone());
            continue;
        };
        let names_match = match (&rec.hostname, &host.hostname) {
            (Some(want), Some(have)) if !same_host(want, have) => {
                refusals.push(format!(
                    "the key for protector {id} is escrowed for another host"
                ));
                continue;
            }
            (Some(_), Some(_)) => true,
            _ => false,
        };
        if !host.protector_ids.is_empty() && !host.protector_ids.contains(id) {
            refusals.push(format!(
                "protector {id} is not in this host's imported inventory"
            ));
            continue;
        }
        if rec.manual_grant == Some(host.mac) {
            return ReleaseDecision::Release {
                protector_id: id.clone(),
                manual: true,
            };
        }
        if let Some(r) = rec
            .releases
            .iter()
            .find(|r| r.mac == host.mac && r.scope == scope)
        {
            already_released = true;
            refusals.push(format!(
                "the key for protector {id} was already released to this host in campaign {scope} (at {} ms); an admin can paste it in the console to allow another unlock",
                r.time_ms
            ));
            continue;
        }
        if !approved {
            let why = if host.claim_conflict.is_some() {
                Some("two machines claimed this host's MAC")
            } else if confirm {
                Some("the campaign releases keys only on an admin's approval")
            } else if !names_match {
                Some("the escrowed key is not bound to this host's imported host name")
            } else {
                None
            };
            if let Some(why) = why {
                return ReleaseDecision::Approval {
                    protector_id: id.clone(),
                    reason: format!(
                        "BitLocker: the key for protector {id} waits for an admin's approval ({why}): approve the key release for this host"
                    ),
                };
            }
        }
        return ReleaseDecision::Release {
            protector_id: id.clone(),
            manual: false,
        };
    }
    if !refusals.is_empty() {
        return ReleaseDecision::Refuse {
            reason: refusals.join("; "),
            already_released,
        };
    }
    ReleaseDecision::Wait {
        reason: format!(
            "BitLocker: no escrowed recovery key for protector {}; paste it in the console",
            missing.join(", ")
        ),
        missing,
    }
}

#[cfg(test)]
mod tests;
