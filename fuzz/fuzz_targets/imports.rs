//! The admin's imports, which arrive as files from other systems: the host inventory (CSV and
//! JSON), the escrowed BitLocker keys (Active Directory / Entra ID / MBAM exports) and the
//! management-controller list. The first byte picks the parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(body);
    match which % 4 {
        0 => {
            let _ = fleet::inventory::parse_csv(&text);
        }
        1 => {
            let _ = fleet::inventory::parse_json(&text);
        }
        2 => {
            let _ = fleet::escrow::parse_export(body);
        }
        _ => {
            let _ = fleet::bmc::parse_csv(&text);
        }
    }
});
