//! Time as a parameter: domain code asks a `Clock`, so tests control it.
//! This is the only module that reads the system's clocks (`clippy.toml`
//! bans them elsewhere; the few I/O deadlines that must be real time say
//! so with `// clock:`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time (timestamps, expiry, retention).
    fn now(&self) -> OffsetDateTime;
    /// Monotonic time (windows, rate limits, idle tracking).
    fn monotonic(&self) -> Instant;
}

/// The real clock, shifted forward by an amount that only a test build can
/// change (see [`SystemClock::advance`]): in a production build the shift
/// is always zero.
#[derive(Debug, Default)]
pub struct SystemClock {
    shift_secs: AtomicU64,
}

impl SystemClock {
    pub fn new() -> Self {
        Self::default()
    }

    fn shift(&self) -> Duration {
        Duration::from_secs(self.shift_secs.load(Ordering::Relaxed))
    }

    /// Moves this clock forward (a dev-mode daemon built for the tests
    /// exposes this over the admin socket, so tests never sleep to let
    /// time pass). Time never goes back.
    #[cfg(feature = "test-clock")]
    pub fn advance(&self, by: Duration) {
        self.shift_secs.fetch_add(by.as_secs(), Ordering::Relaxed);
    }
}

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + self.shift()
    }

    #[allow(clippy::disallowed_methods)]
    fn monotonic(&self) -> Instant {
        Instant::now() + self.shift()
    }
}

/// Unix milliseconds of `t`.
pub fn unix_ms(t: OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// RFC 3339 with seconds precision, UTC (`2026-11-22T15:04:05Z`).
/// Always UTC, so stored timestamps compare correctly as text.
pub fn rfc3339(t: OffsetDateTime) -> String {
    // Not `to_offset`, which panics where UTC is past year 9999 (parsed
    // times are refused there; this keeps any other caller safe too).
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `None` also for a time whose UTC equivalent is out of range
/// (`9999-12-31T23:59:59-01:00`).
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .filter(|t| t.checked_to_offset(time::UtcOffset::UTC).is_some())
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

    #[test]
    fn times_past_the_last_utc_second_are_refused() {
        // Found by the `api_query` fuzz target: `?since=` with this time
        // panicked converting it to UTC (year 10000).
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59-01:00"), None);
        let last = parse_rfc3339("9999-12-31T23:59:59Z").unwrap();
        assert_eq!(rfc3339(last), "9999-12-31T23:59:59Z");
    }
}
