//! Signed remediation rules: which files on a Windows volume the agent acts on, and how.
//!
//! Matching is pure: the agent gathers [`FileFacts`] for a candidate file (path relative to the
//! volume root, its first bytes, its last-write time) and asks [`RuleSet::judge`].
use crate::sig::{Purpose, SignatureFile};
use crate::{Error, KeyPair, PublicKey};
use serde::{Deserialize, Serialize};

/// What to do with a matching file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Move into the quarantine folder on the same volume, with a JSON record.
    Quarantine,
    /// Remove (still hashed and recorded first).
    Delete,
    /// Record only; the file stays (the run's log is still written to the volume).
    ReportOnly,
    /// Report the file's facts (size, last write, SHA-256, first bytes, PE version) and
    /// change nothing: a rules document of `inspect` rules only is a scan that mounts every
    /// volume read-only and writes nothing to it.
    Inspect,
}

/// One rule: which files on a Windows volume to quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The rule's id (named in reports).
    pub id: String,
    /// What it is for, in words.
    pub description: String,
    /// Relative to the volume root, `\` or `/` separated, case-insensitive; `*` and `?` match
    /// within one path component.
    pub path: String,
    /// Hex bytes the file must start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magic: Option<String>,
    /// Only files last written strictly before this RFC 3339 UTC time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_write_before: Option<String>,
    /// Only files last written strictly after this RFC 3339 UTC time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_write_after: Option<String>,
    /// Only files last written within this many days before the agent's run (1 to 3650).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_within_days: Option<u32>,
    /// What to do with a match.
    pub action: Action,
}

/// A signed set of remediation rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// The rules format (1).
    pub format: u32,
    /// The set's id (`crowdstrike-c00000291-2024-07-19`).
    pub id: String,
    /// Its version; a newer one replaces an older one.
    pub version: u64,
    /// RFC 3339 UTC; the agent refuses the rules after this time.
    pub expires: String,
    /// What it is for, in words.
    pub description: String,
    /// The rules, in order (the first match decides).
    pub rules: Vec<Rule>,
}

/// What the agent knows about one candidate file.
#[derive(Debug, Clone)]
pub struct FileFacts<'a> {
    /// Path components relative to the volume root, as stored on disk.
    pub components: &'a [&'a str],
    /// The first bytes of the file (at least as many as the longest magic).
    pub header: &'a [u8],
    /// Last-write time, seconds since the epoch (may be negative for very old files).
    pub last_write_unix: i64,
    /// The time of the agent's run, seconds since the epoch (for `changed_within_days`).
    pub now_unix: i64,
}

/// The decision for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The rule that matched.
    pub rule_id: String,
    /// What to do.
    pub action: Action,
}

/// A rule with its pattern and conditions parsed once.
#[derive(Debug, Clone)]
struct Compiled {
    components: Vec<Vec<char>>,
    magic: Vec<u8>,
    before: Option<i64>,
    after: Option<i64>,
    within_secs: Option<i64>,
}

/// Splits a Windows or POSIX relative path into components.
pub fn split_path(path: &str) -> Vec<&str> {
    path.split(['\\', '/']).filter(|c| !c.is_empty()).collect()
}

fn fold(c: char) -> char {
    // NTFS compares names through its upcase table; simple per-character lowercase agrees with it
    // for every name a rule will contain.
    c.to_lowercase().next().unwrap_or(c)
}

/// Case-insensitive glob match of one path component (`*`, `?`).
pub fn glob_match(pattern: &[char], name: &str) -> bool {
    let name: Vec<char> = name.chars().map(fold).collect();
    let (mut p, mut n) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

impl Rule {
    fn compile(&self) -> Result<Compiled, String> {
        let parts = split_path(&self.path);
        if parts.is_empty() {
            return Err(format!("rule {}: empty path", self.id));
        }
        if self.path.starts_with(['\\', '/']) || self.path.contains(':') {
            return Err(format!(
                "rule {}: path must be relative to the volume root, without a drive letter",
                self.id
            ));
        }
        if parts.iter().any(|c| *c == "." || *c == "..") {
            return Err(format!("rule {}: path may not contain . or ..", self.id));
        }
        let magic = match &self.magic {
            None => Vec::new(),
            Some(h) => hex::decode(h.replace(' ', ""))
                .map_err(|e| format!("rule {}: magic {h:?} is not hex: {e}", self.id))?,
        };
        let time = |t: &Option<String>| -> Result<Option<i64>, String> {
            t.as_deref()
                .map(|s| crate::time::parse_utc(s).map(|v| v as i64))
                .transpose()
                .map_err(|e| format!("rule {}: {e}", self.id))
        };
        if let Some(d) = self.changed_within_days {
            if !(1..=3650).contains(&d) {
                return Err(format!(
                    "rule {}: changed_within_days is {d}; it must be 1 to 3650",
                    self.id
                ));
            }
        }
        Ok(Compiled {
            within_secs: self.changed_within_days.map(|d| i64::from(d) * 86_400),
            components: parts
                .iter()
                .map(|c| c.chars().map(fold).collect())
                .collect(),
            magic,
            before: time(&self.last_write_before)?,
            after: time(&self.last_write_after)?,
        })
    }

    /// The directory components before the first wildcard, for the agent to walk to.
    pub fn fixed_prefix(&self) -> Vec<&str> {
        let parts = split_path(&self.path);
        let n = parts.len() - 1;
        parts[..n]
            .iter()
            .take_while(|c| !c.contains(['*', '?']))
            .copied()
            .collect()
    }

    /// The number of header bytes this rule needs to see.
    pub fn magic_len(&self) -> usize {
        self.magic
            .as_ref()
            .map_or(0, |h| h.replace(' ', "").len() / 2)
    }
}

impl Compiled {
    fn matches(&self, f: &FileFacts<'_>) -> bool {
        f.components.len() == self.components.len()
            && self
                .components
                .iter()
                .zip(f.components)
                .all(|(p, n)| glob_match(p, n))
            && f.header.starts_with(&self.magic)
            && self.before.is_none_or(|t| f.last_write_unix < t)
            && self.after.is_none_or(|t| f.last_write_unix > t)
            && self
                .within_secs
                .is_none_or(|w| f.last_write_unix >= f.now_unix.saturating_sub(w))
    }
}

impl RuleSet {
    /// The default rules: the vendor's guidance for the 19 July 2024 CrowdStrike outage.
    /// A `C-00000291*.sys` channel file stamped 04:09 UTC is the bad one; one stamped 05:27 UTC
    /// or later is the reverted, good version and stays. So: last write before 05:27:00 UTC.
    pub fn default_crowdstrike(expires_unix: u64) -> Self {
        Self {
            format: 1,
            id: "crowdstrike-c00000291-2024-07-19".into(),
            version: 1,
            expires: crate::time::format_utc(expires_unix),
            description: "CrowdStrike Falcon channel file 291 that crashes Windows (19 July 2024)".into(),
            rules: vec![Rule {
                id: "cs-channel-291-bad".into(),
                description: "Channel file C-00000291*.sys last written before 2024-07-19 05:27 UTC (the 04:09 UTC version); 05:27 UTC or later is the vendor's fix and stays".into(),
                path: r"Windows\System32\drivers\CrowdStrike\C-00000291*.sys".into(),
                magic: Some("AAAAAAAA01002301".into()),
                last_write_before: Some("2024-07-19T05:27:00Z".into()),
                last_write_after: None,
                changed_within_days: None,
                action: Action::Quarantine,
            }],
        }
    }

    /// Parses and validates (without checking a signature or the expiry).
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        let r: Self =
            serde_json::from_slice(data).map_err(|e| Error::MalformedRules(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// Checks every rule (paths, magic, time window, sizes) and the expiry's format.
    pub fn validate(&self) -> Result<(), Error> {
        if self.format != 1 {
            return Err(Error::MalformedRules(format!(
                "unsupported format {}",
                self.format
            )));
        }
        if self.id.trim().is_empty() {
            return Err(Error::MalformedRules("id is empty".into()));
        }
        crate::time::parse_utc(&self.expires)
            .map_err(|e| Error::MalformedRules(format!("expires: {e}")))?;
        if self.rules.is_empty() {
            return Err(Error::MalformedRules("no rules".into()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for r in &self.rules {
            if !ids.insert(r.id.as_str()) {
                return Err(Error::MalformedRules(format!(
                    "rule id {} used twice",
                    r.id
                )));
            }
            r.compile().map_err(Error::MalformedRules)?;
        }
        Ok(())
    }

    /// The expiry as Unix seconds.
    pub fn expires_unix(&self) -> u64 {
        crate::time::parse_utc(&self.expires).unwrap_or(0)
    }

    /// The document as signed (canonical JSON).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("rules serialize");
        v.push(b'\n');
        v
    }

    /// Signs the exact bytes of a rules document after checking that it parses.
    pub fn sign_document(key: &KeyPair, document: &[u8]) -> Result<SignatureFile, Error> {
        Self::parse(document)?;
        Ok(SignatureFile::sign(key, Purpose::Rules, document))
    }

    /// What the agent calls: signature against the embedded key, then structure, then expiry
    /// against `now_unix` (from the server's signed response or the hardware clock).
    pub fn verify_signed(
        trusted: &PublicKey,
        document: &[u8],
        signature: &[u8],
        now_unix: u64,
    ) -> Result<Self, Error> {
        crate::sig::verify_detached(trusted, Purpose::Rules, document, signature)?;
        let r = Self::parse(document)?;
        if now_unix > r.expires_unix() {
            return Err(Error::Expired {
                id: r.id,
                version: r.version,
                expires: r.expires,
            });
        }
        Ok(r)
    }

    /// The first rule that matches the file, if any.
    pub fn judge(&self, file: &FileFacts<'_>) -> Option<Verdict> {
        self.rules.iter().find_map(|r| {
            let c = r.compile().ok()?;
            c.matches(file).then(|| Verdict {
                rule_id: r.id.clone(),
                action: r.action,
            })
        })
    }

    /// The first `inspect` rule that matches the file, if any (the read-only scan).
    pub fn inspects(&self, file: &FileFacts<'_>) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.action == Action::Inspect)
            .find(|r| r.compile().is_ok_and(|c| c.matches(file)))
    }

    /// Whether any rule may change a volume (one that is not `inspect`): a set that does not
    /// is a scan, run on read-only mounts only.
    pub fn writes(&self) -> bool {
        self.rules.iter().any(|r| r.action != Action::Inspect)
    }

    /// The longest magic any rule needs: how many header bytes the agent must read.
    pub fn header_len(&self) -> usize {
        self.rules.iter().map(Rule::magic_len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_utc;

    const MAGIC: [u8; 8] = [0xAA, 0xAA, 0xAA, 0xAA, 0x01, 0x00, 0x23, 0x01];

    fn facts<'a>(c: &'a [&'a str], header: &'a [u8], t: &str) -> FileFacts<'a> {
        FileFacts {
            components: c,
            header,
            last_write_unix: parse_utc(t).unwrap() as i64,
            now_unix: parse_utc("2024-07-20T00:00:00Z").unwrap() as i64,
        }
    }

    #[test]
    fn default_rules_table() {
        let r = RuleSet::default_crowdstrike(2_000_000_000);
        r.validate().unwrap();
        let bad = [
            "Windows",
            "System32",
            "drivers",
            "CrowdStrike",
            "C-00000291-00000000-00000032.sys",
        ];
        let mixed = [
            "windows",
            "system32",
            "Drivers",
            "crowdstrike",
            "c-00000291-00000000-00000032.SYS",
        ];
        let other = [
            "Windows",
            "System32",
            "drivers",
            "CrowdStrike",
            "C-00000290-00000000-00000032.sys",
        ];
        let deeper = [
            "Windows",
            "System32",
            "drivers",
            "CrowdStrike",
            "x",
            "C-00000291-1.sys",
        ];
        let cases: &[(&[&str], &[u8], &str, bool)] = &[
            (&bad, &MAGIC, "2024-07-19T04:09:00Z", true),
            (&bad, &MAGIC, "2024-07-19T05:26:59Z", true),
            (&bad, &MAGIC, "2024-07-19T05:27:00Z", false),
            (&mixed, &MAGIC, "2024-07-19T04:09:00Z", true),
            (&other, &MAGIC, "2024-07-19T04:09:00Z", false),
            (&deeper, &MAGIC, "2024-07-19T04:09:00Z", false),
            (&bad, &[0u8; 8], "2024-07-19T04:09:00Z", false),
            (&bad, &MAGIC[..4], "2024-07-19T04:09:00Z", false),
        ];
        for (i, (c, h, t, want)) in cases.iter().enumerate() {
            let got = r.judge(&facts(c, h, t));
            assert_eq!(got.is_some(), *want, "case {i}");
            if let Some(v) = got {
                assert_eq!(v.action, Action::Quarantine);
            }
        }
        assert_eq!(r.header_len(), 8);
        assert_eq!(
            r.rules[0].fixed_prefix(),
            ["Windows", "System32", "drivers", "CrowdStrike"]
        );
    }

    #[test]
    fn inspect_rules_match_recent_files_and_write_nothing() {
        let mut r = RuleSet::default_crowdstrike(2_000_000_000);
        r.rules = vec![Rule {
            id: "drivers-changed".into(),
            description: "drivers changed in the last 7 days".into(),
            path: r"Windows\System32\drivers\*".into(),
            magic: None,
            last_write_before: None,
            last_write_after: None,
            changed_within_days: Some(7),
            action: Action::Inspect,
        }];
        r.validate().unwrap();
        assert!(!r.writes(), "a scan");
        let sys = ["Windows", "System32", "drivers", "csagent.sys"];
        // The run is at 2024-07-20T00:00Z: 7 days back is 2024-07-13T00:00Z.
        for (t, want) in [
            ("2024-07-19T04:09:00Z", true),
            ("2024-07-13T00:00:00Z", true),
            ("2024-07-12T23:59:59Z", false),
        ] {
            assert_eq!(r.inspects(&facts(&sys, b"MZ", t)).is_some(), want, "{t}");
        }
        // An inspect rule is never a verdict to act on in the remediation pass's sense of
        // "first match decides" for other actions: judge still names it, with its action.
        let v = r
            .judge(&facts(&sys, b"MZ", "2024-07-19T04:09:00Z"))
            .unwrap();
        assert_eq!(v.action, Action::Inspect);
        // A clock at the edge of time (a dead RTC, a hostile server time) does not overflow.
        let mut f = facts(&sys, b"MZ", "2024-07-19T04:09:00Z");
        f.now_unix = i64::MIN;
        assert!(r.inspects(&f).is_some());
        // Mixed with a quarantine rule, the set writes.
        r.rules
            .push(RuleSet::default_crowdstrike(0).rules[0].clone());
        assert!(r.writes());
        // Bounds of the window.
        for d in [0, 3651] {
            r.rules[0].changed_within_days = Some(d);
            let e = r.validate().unwrap_err().to_string();
            assert!(e.contains("changed_within_days"), "{e}");
        }
        // The document's spelling.
        let doc = br#"{"format":1,"id":"scan","version":1,"expires":"2030-01-01T00:00:00Z","description":"d","rules":[{"id":"a","description":"d","path":"Windows\\System32\\drivers\\*","changed_within_days":3,"action":"inspect"}]}"#;
        let p = RuleSet::parse(doc).unwrap();
        assert_eq!(p.rules[0].action, Action::Inspect);
        assert_eq!(p.rules[0].changed_within_days, Some(3));
    }

    #[test]
    fn glob() {
        let p = |s: &str| s.chars().map(fold).collect::<Vec<_>>();
        assert!(glob_match(&p("c-00000291*.sys"), "C-00000291-abc.SYS"));
        assert!(glob_match(&p("*"), ""));
        assert!(glob_match(&p("a?c"), "ABC"));
        assert!(!glob_match(&p("a?c"), "ac"));
        assert!(glob_match(&p("*.sys"), "x.sys"));
        assert!(!glob_match(&p("*.sys"), "x.sys.bak"));
    }

    #[test]
    fn signed_rules_expire_and_refuse_tampering() {
        let kp = KeyPair::generate().unwrap();
        let r = RuleSet::default_crowdstrike(1_800_000_000);
        let doc = r.to_json();
        let sig = RuleSet::sign_document(&kp, &doc).unwrap().to_text();
        let got =
            RuleSet::verify_signed(&kp.public_key(), &doc, sig.as_bytes(), 1_700_000_000).unwrap();
        assert_eq!(got, r);
        assert!(matches!(
            RuleSet::verify_signed(&kp.public_key(), &doc, sig.as_bytes(), 1_800_000_001),
            Err(Error::Expired { .. })
        ));
        let mut evil = doc.clone();
        let pos = evil.windows(5).position(|w| w == b"05:27").unwrap();
        evil[pos + 1] = b'9';
        assert!(matches!(
            RuleSet::verify_signed(&kp.public_key(), &evil, sig.as_bytes(), 1_700_000_000),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn invalid_rules_are_refused_at_signing() {
        let kp = KeyPair::generate().unwrap();
        let mut r = RuleSet::default_crowdstrike(1_800_000_000);
        r.rules[0].path = r"..\boot.ini".into();
        assert!(RuleSet::sign_document(&kp, &r.to_json()).is_err());
        r.rules[0].path = r"C:\Windows\x".into();
        assert!(RuleSet::sign_document(&kp, &r.to_json()).is_err());
        let mut r = RuleSet::default_crowdstrike(1_800_000_000);
        r.rules[0].magic = Some("zz".into());
        assert!(RuleSet::sign_document(&kp, &r.to_json()).is_err());
        assert!(RuleSet::sign_document(&kp, b"{\"format\":1}").is_err());
    }
}
