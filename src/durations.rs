//! Durations as operators write them (`500ms`, `30s`, `1h 30m`, or a bare number of
//! seconds), for the agent's config, the deploy settings and the CLI's `--timeout`.
//!
//! A leaf module (no crate imports), so the agent and the deploy pipeline share one
//! syntax without depending on each other. Parsing is [`humantime`]'s: an overflow is an
//! error, never a wrapped value.

use std::time::Duration;

/// Parses a duration like `500ms`, `30s`, `5m`, `1h 30m` ([`humantime`] syntax; a bare
/// number is seconds). Overflow is an error, never a wrapped value.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let parsed = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        humantime::parse_duration(&format!("{t}s"))
    } else {
        humantime::parse_duration(t)
    };
    parsed.map_err(|e| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        // Regression (issue 10): the hand-written parser overflowed (a panic in debug
        // builds, a wrapped value in release).
        assert!(parse_duration("9999999999999999h").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
    }
}
