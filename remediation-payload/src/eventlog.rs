//! The System event log (`Windows\System32\winevt\Logs\System.evtx`): its newest bugcheck and
//! unexpected-shutdown events, for the read-only scan. The EVTX format (chunks of binary XML
//! with templates) is parsed by the `evtx` crate; this module picks the events that bear on a
//! crash out of the records it renders:
//!
//! - `Microsoft-Windows-WER-SystemErrorReporting` 1001 (its source name is `BugCheck`): "The
//!   computer has rebooted from a bugcheck"; `param1` is `0x00000050 (p1, p2, p3, p4)`, `param2`
//!   the dump it saved;
//! - `Microsoft-Windows-Kernel-Power` 41: rebooted without cleanly shutting down first; its
//!   `BugcheckCode` (decimal) and `BugcheckParameter1..4` are 0 when no bugcheck was seen;
//! - `EventLog` 6008: "The previous system shutdown ... was unexpected".
//!
//! Bounded: at most [`MAX_LOG_BYTES`] of the file are read and at most
//! [`fleet::agent::MAX_EVENTS`] events of each kind kept (the newest).
use fleet::agent::{EventLogScan, LogEvent, MAX_EVENTS};
use serde_json::Value;

/// How much of the log is read: Windows caps the System log at 20 MiB by default; an admin
/// may have raised it, and the rest of a bigger file is not read.
pub const MAX_LOG_BYTES: usize = 64 << 20;

/// What one event is, if it is one of those looked for.
fn kind_of(provider: &str, id: u32) -> Option<&'static str> {
    match (provider, id) {
        ("Microsoft-Windows-WER-SystemErrorReporting" | "BugCheck", 1001) => Some("bugcheck"),
        ("Microsoft-Windows-Kernel-Power", 41) => Some("kernel-power"),
        ("EventLog", 6008) => Some("unexpected-shutdown"),
        _ => None,
    }
}

/// A JSON value as text: strings as they are, numbers in decimal, `{"#text": ..}` unwrapped.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => o.get("#text").and_then(text),
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().filter_map(text).collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
        _ => None,
    }
}

/// A number the log wrote as decimal or as `0x` hex.
fn number(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = text(v)?;
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// At most `2 * MAX_SHORT` characters, without control characters and without the
/// left-to-right and right-to-left marks (U+200E, U+200F) Windows puts around the parts of a
/// localized date ("\u{200e}8/\u{200e}25/\u{200e}2015" in a real 6008 event).
fn short(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{200e}' | '\u{200f}'))
        .take(fleet::agent::MAX_SHORT * 2)
        .collect()
}

/// `0x00000050 (0xffff..., 0x0, 0x..., 0x2)`: the code and its parameters.
fn wer_bugcheck(param1: &str) -> Option<(String, Vec<String>)> {
    let (code, rest) = param1.trim().split_once(' ').unwrap_or((param1.trim(), ""));
    let code = u32::from_str_radix(code.strip_prefix("0x")?, 16).ok()?;
    let params = rest
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .filter_map(|p| u64::from_str_radix(p.trim().strip_prefix("0x")?, 16).ok())
        .take(4)
        .map(|p| format!("0x{p:X}"))
        .collect();
    Some((format!("0x{code:08X}"), params))
}

/// The provider's name and the event ID of one rendered record.
fn provider_and_id(record: &Value) -> Option<(&str, u32)> {
    let sys = record.get("Event")?.get("System")?;
    let provider = sys
        .get("Provider")
        .and_then(|p| p.get("#attributes"))
        .and_then(|a| a.get("Name"))
        .and_then(Value::as_str)?;
    let id = u32::try_from(number(sys.get("EventID")?)?).ok()?;
    Some((provider, id))
}

/// The event one rendered record is, if it is one looked for.
fn event_of(record: &Value, time_unix: i64) -> Option<LogEvent> {
    let (provider, id) = provider_and_id(record)?;
    let kind = kind_of(provider, id)?;
    let ev = record.get("Event")?;
    let data = ev.get("EventData").cloned().unwrap_or(Value::Null);
    let field = |name: &str| data.get(name);
    let mut e = LogEvent {
        kind: kind.into(),
        provider: short(provider),
        event_id: id,
        time_unix,
        bugcheck: None,
        parameters: Vec::new(),
        detail: String::new(),
    };
    match kind {
        "bugcheck" => {
            if let Some((code, params)) = field("param1").and_then(text).and_then(|p| {
                wer_bugcheck(&p) // the stop code and its parameters
            }) {
                e.bugcheck = Some(code);
                e.parameters = params;
            }
            if let Some(dump) = field("param2").and_then(text) {
                e.detail = short(&format!("dump saved in {dump}"));
            }
        }
        "kernel-power" => {
            let code = field("BugcheckCode").and_then(number).unwrap_or(0);
            if code != 0 {
                e.bugcheck = Some(format!("0x{code:08X}"));
                e.parameters = (1..=4)
                    .map(|i| {
                        field(&format!("BugcheckParameter{i}"))
                            .and_then(number)
                            .map_or("0x0".into(), |p| format!("0x{p:X}"))
                    })
                    .collect();
            } else {
                e.detail = "no bugcheck was recorded (power lost, hung, or reset)".into();
            }
        }
        _ => {
            // "The previous system shutdown at %1 on %2 was unexpected": the time and the
            // date (local, as the machine wrote them) are the first two Data items; the rest
            // are internal.
            let items: Vec<String> = match data.get("Data").map(|d| d.get("#text").unwrap_or(d)) {
                Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
                Some(v) => text(v).into_iter().collect(),
                None => Vec::new(),
            };
            let item = |i: usize| items.get(i).map(|s| short(s.trim())).unwrap_or_default();
            e.detail = match (item(0), item(1)) {
                (t, d) if !t.is_empty() && !d.is_empty() => {
                    short(&format!("previous shutdown at {t} on {d} (local time)"))
                }
                (t, _) if !t.is_empty() => short(&format!("previous shutdown at {t}")),
                _ => String::new(),
            };
        }
    }
    Some(e)
}

/// Scans the bytes of a System.evtx (`path` as the report names it).
pub fn scan(path: String, bytes: Vec<u8>) -> EventLogScan {
    let mut out = EventLogScan {
        path,
        records: 0,
        unreadable: 0,
        events: Vec::new(),
        error: None,
    };
    let settings = evtx::ParserSettings::new().num_threads(1);
    let mut parser = match evtx::EvtxParser::from_buffer(bytes) {
        Ok(p) => p.with_configuration(settings),
        Err(e) => {
            out.error = Some(format!("not an event log: {e}"));
            return out;
        }
    };
    let mut found: Vec<LogEvent> = Vec::new();
    for r in parser.records_json_value() {
        match r {
            Ok(r) => {
                out.records += 1;
                if let Some(e) = event_of(&r.data, r.timestamp.as_second()) {
                    found.push(e);
                }
            }
            Err(_) => out.unreadable += 1,
        }
    }
    // Newest first, at most MAX_EVENTS of each kind.
    found.sort_by_key(|e| std::cmp::Reverse(e.time_unix));
    for kind in ["bugcheck", "kernel-power", "unexpected-shutdown"] {
        out.events.extend(
            found
                .iter()
                .filter(|e| e.kind == kind)
                .take(MAX_EVENTS)
                .cloned(),
        );
    }
    out.events.sort_by_key(|e| std::cmp::Reverse(e.time_unix));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_three_kinds_of_event_and_what_each_says() {
        let wer = json!({"Event": {"System": {
            "Provider": {"#attributes": {"Name": "Microsoft-Windows-WER-SystemErrorReporting",
                                          "EventSourceName": "BugCheck"}},
            "EventID": {"#attributes": {"Qualifiers": 16384}, "#text": 1001}},
            "EventData": {"param1": "0x00000050 (0xffff840e12340000, 0x0000000000000000, 0xfffff8076a2b1c3d, 0x0000000000000002)",
                          "param2": "C:\\Windows\\Minidump\\071924-8765-01.dmp", "param3": "1a2b"}}});
        let e = event_of(&wer, 1_721_362_300).unwrap();
        assert_eq!(e.kind, "bugcheck");
        assert_eq!(e.bugcheck.as_deref(), Some("0x00000050"));
        assert_eq!(
            e.parameters,
            ["0xFFFF840E12340000", "0x0", "0xFFFFF8076A2B1C3D", "0x2"]
        );
        assert!(e.detail.contains("071924-8765-01.dmp"), "{}", e.detail);

        let kp = json!({"Event": {"System": {
            "Provider": {"#attributes": {"Name": "Microsoft-Windows-Kernel-Power"}},
            "EventID": 41},
            "EventData": {"BugcheckCode": 80, "BugcheckParameter1": "0xffff840e12340000",
                          "BugcheckParameter2": "0x0", "BugcheckParameter3": "0xfffff8076a2b1c3d",
                          "BugcheckParameter4": "0x2", "SleepInProgress": 0}}});
        let e = event_of(&kp, 1).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.bugcheck.as_deref()),
            ("kernel-power", Some("0x00000050"))
        );
        assert_eq!(e.parameters[2], "0xFFFFF8076A2B1C3D");
        let mut cold = kp.clone();
        cold["Event"]["EventData"]["BugcheckCode"] = json!(0);
        let e = event_of(&cold, 1).unwrap();
        assert_eq!(e.bugcheck, None);
        assert!(e.detail.contains("no bugcheck"));

        let ul = json!({"Event": {"System": {
            "Provider": {"#attributes": {"Name": "EventLog"}},
            "EventID": {"#attributes": {"Qualifiers": 32768}, "#text": 6008}},
            "EventData": {"Data": {"#text": ["04:09:12", "19/07/2024", "", "", "1234", "", ""]}}}});
        let e = event_of(&ul, 1).unwrap();
        assert_eq!(e.kind, "unexpected-shutdown");
        assert_eq!(
            e.detail,
            "previous shutdown at 04:09:12 on 19/07/2024 (local time)"
        );
        // One Data item (a log that kept only the time), none, and Data as a plain array.
        let mut one = ul.clone();
        one["Event"]["EventData"]["Data"] = json!({"#text": "04:09:12"});
        assert_eq!(
            event_of(&one, 1).unwrap().detail,
            "previous shutdown at 04:09:12"
        );
        one["Event"]["EventData"] = json!({});
        assert_eq!(event_of(&one, 1).unwrap().detail, "");
        one["Event"]["EventData"]["Data"] =
            json!(["1:00:00 AM", "\u{200e}7/\u{200e}19/\u{200e}2024"]);
        assert_eq!(
            event_of(&one, 1).unwrap().detail,
            "previous shutdown at 1:00:00 AM on 7/19/2024 (local time)"
        );

        // Others, and records without the fields, are not events of interest.
        let other = json!({"Event": {"System": {
            "Provider": {"#attributes": {"Name": "EventLog"}}, "EventID": 6005}}});
        assert_eq!(event_of(&other, 1), None);
        assert_eq!(event_of(&json!({"Event": {}}), 1), None);
        assert_eq!(event_of(&json!(7), 1), None);
    }

    #[test]
    fn what_is_not_an_event_log_says_so() {
        let s = scan("x".into(), b"MZ not a log".to_vec());
        assert!(s.error.unwrap().contains("not an event log"));
        let s = scan("x".into(), Vec::new());
        assert!(s.error.is_some());
    }

    /// A real System log, from the evtx crate's repository (github.com/omerbenamram/evtx,
    /// samples/system.evtx, MIT or Apache-2.0; testdata/evtx/README.md): a Windows machine of
    /// July 2017 that started (EventLog 6005) and shut down cleanly (6006, User32 1074) and never
    /// crashed. Its header is marked dirty and counts 3 chunks; 15 hold records, 1,881 in all
    /// (python-evtx, reading each chunk, counts the same). Every record is read and none of them
    /// is taken for a crash.
    #[test]
    fn a_real_system_log_of_a_machine_that_never_crashed() {
        let b = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/evtx/system.evtx"
        ))
        .unwrap();
        let s = scan(
            r"Windows\System32\winevt\Logs\System.evtx".into(),
            b.clone(),
        );
        assert_eq!(s.error, None);
        assert_eq!((s.records, s.unreadable), (1881, 0), "{s:?}");
        assert!(s.events.is_empty(), "{:?}", s.events);
        // The fields this module reads are where it looks for them in real records: the
        // provider and the event ID (plain, and with Qualifiers) of the log's own start and stop
        // events, and the Data of an EventLog event, as Windows wrote them.
        let b = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/evtx/system.evtx"
        ))
        .unwrap();
        let mut parser = evtx::EvtxParser::from_buffer(b.clone())
            .unwrap()
            .with_configuration(evtx::ParserSettings::new().num_threads(1));
        let mut seen = std::collections::BTreeMap::new();
        let mut data_of_6005 = None;
        for r in parser.records_json_value() {
            let r = r.unwrap();
            if let Some((p, id)) = provider_and_id(&r.data) {
                *seen.entry((p.to_string(), id)).or_insert(0) += 1;
                if (p, id) == ("EventLog", 6005) && data_of_6005.is_none() {
                    data_of_6005 = Some(r.data["Event"]["EventData"].clone());
                }
            }
        }
        assert_eq!(
            seen.get(&("EventLog".to_string(), 6005)),
            Some(&3),
            "{seen:?}"
        );
        assert_eq!(seen.get(&("EventLog".to_string(), 6006)), Some(&2));
        assert_eq!(seen.get(&("User32".to_string(), 1074)), Some(&2));
        assert_eq!(seen.values().sum::<u32>(), 1881, "every record has both");
        let d = data_of_6005.unwrap();
        assert!(d.get("Data").is_some() || d.is_null(), "{d}");
        // The same records, cut at a chunk boundary and in the middle of one: what can be read
        // is, the rest is counted, nothing panics.
        for cut in [0x1000 + 0x10000, 0x1000 + 0x10000 + 0x7777, 0x1800] {
            let s = scan("cut".into(), b[..cut].to_vec());
            assert!(s.records < 1881, "{cut:#x}: {s:?}");
        }
    }

    /// A real System log of a machine that lost power twice (github.com/log2timeline/plaso,
    /// `test_data/evtx/System.evtx`, Apache-2.0; testdata/evtx/README.md): 5,009 records of
    /// August 2015 among which two Kernel-Power 41 events without a bugcheck (18:08:30 on the
    /// 8th and 15:40:40 on the 25th, UTC) and one EventLog 6008 (13:41:19 on the 25th) whose
    /// Data carries the time and the date of the lost shutdown as Windows wrote them, the date
    /// with left-to-right marks. All three are found, newest first, and read as Windows would
    /// show them.
    #[test]
    fn a_real_system_log_of_a_machine_that_lost_power() {
        let b = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/evtx/plaso-System.evtx"
        ))
        .unwrap();
        let s = scan(r"Windows\System32\winevt\Logs\System.evtx".into(), b);
        assert_eq!(s.error, None);
        assert_eq!((s.records, s.unreadable), (5009, 0), "{s:?}");
        let seen: Vec<(&str, u32, i64, Option<&str>, &str)> = s
            .events
            .iter()
            .map(|e| {
                (
                    e.kind.as_str(),
                    e.event_id,
                    e.time_unix,
                    e.bugcheck.as_deref(),
                    e.detail.as_str(),
                )
            })
            .collect();
        let cold = "no bugcheck was recorded (power lost, hung, or reset)";
        assert_eq!(
            seen,
            [
                // 2015-08-25T15:40:40Z
                ("kernel-power", 41, 1_440_517_240, None, cold),
                // 2015-08-25T13:41:19Z
                (
                    "unexpected-shutdown",
                    6008,
                    1_440_510_079,
                    None,
                    "previous shutdown at 1:34:44 PM on 8/25/2015 (local time)"
                ),
                // 2015-08-08T18:08:30Z
                ("kernel-power", 41, 1_439_057_310, None, cold),
            ]
        );
        assert!(s.events.iter().all(|e| e.parameters.is_empty()));
        assert_eq!(s.events[0].provider, "Microsoft-Windows-Kernel-Power");
    }
}
