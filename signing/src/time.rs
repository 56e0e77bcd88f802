//! RFC 3339 UTC timestamps as used in manifests and rules (whole seconds, `Z` suffix).
use std::time::{Duration, UNIX_EPOCH};

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

/// Parses an RFC 3339 UTC timestamp (`2024-07-19T05:27:00Z`) into seconds since the epoch.
pub fn parse_utc(s: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 UTC time: {e}"))?;
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| format!("{s:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip() {
        assert_eq!(format_utc(1_721_366_820), "2024-07-19T05:27:00Z");
        assert_eq!(parse_utc("2024-07-19T05:27:00Z").unwrap(), 1_721_366_820);
        assert!(parse_utc("2024-07-19 05:27").is_err());
    }
}
