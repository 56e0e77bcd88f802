//! The rules document (JSON, signed offline, read by every agent): parse and validate; a
//! document that validates survives its own serialisation and judges any file without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signing::{FileFacts, RuleSet};

fuzz_target!(|data: &[u8]| {
    let Ok(rules) = RuleSet::parse(data) else {
        return;
    };
    let again = RuleSet::parse(&rules.to_json()).expect("a valid document re-parses");
    assert_eq!(again.to_json(), rules.to_json());
    let header = &data[..data.len().min(rules.header_len().max(1))];
    for path in [
        &[
            "Windows",
            "System32",
            "drivers",
            "CrowdStrike",
            "C-00000291-0.sys",
        ][..],
        &["windows", "system32", "DRIVERS"][..],
        &[""][..],
    ] {
        let times = [i64::MIN, -1, 0, 1_721_000_000, i64::MAX];
        for t in times {
            for now in times {
                let file = FileFacts {
                    components: path,
                    header,
                    last_write_unix: t,
                    now_unix: now,
                };
                let _ = (rules.judge(&file), rules.inspects(&file));
            }
        }
    }
    let _ = (rules.expires_unix(), rules.writes());
});
