//! Duration options: the `500ms` / `10s` / `2m` / `1h` / plain-seconds
//! syntax of URL options such as `session_ttl`.

use std::time::Duration;

use crate::types::MAX_DURATION;

/// Parses `500ms`, `10s`, `2m`, `1h` or plain seconds (`10`, `0.5`).
/// `None` if it is none of these or longer than
/// [`MAX_DURATION`](crate::types::MAX_DURATION).
pub fn parse_duration(raw: &str) -> Option<Duration> {
    parse_any_duration(raw).filter(|d| *d <= MAX_DURATION)
}

/// [`parse_duration`] without the upper bound.
pub(super) fn parse_any_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&raw[..i], &raw[i..]),
        None => (raw, "s"),
    };
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
