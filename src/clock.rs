//! Time as a parameter: domain code asks a `Clock`, so tests control it.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// RFC 3339 with seconds precision, UTC (`2026-11-22T15:04:05Z`).
/// Always UTC, so stored timestamps compare correctly as text.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_in_utc_whatever_the_input_offset() {
        let t = parse_rfc3339("2026-11-22T23:00:00+05:00").unwrap();
        assert_eq!(rfc3339(t), "2026-11-22T18:00:00Z");
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
    }
}
