//! Sign-in attempts per source address: a token bucket per source (an IPv4
//! address or an IPv6 /64), `per_minute` attempts a minute with a burst of
//! the same size. Memory is bounded: full buckets carry no information and
//! are dropped first; past [`MAX_SOURCES`] the new sources share one bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const MAX_SOURCES: usize = 50_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct Limiter {
    per_minute: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            buckets: HashMap::new(),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.per_minute / 60.0).min(self.per_minute);
        b.at = now;
    }

    /// Takes one attempt for `ip` at `now`; `Err(wait)` if none is left.
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut source = crate::auth::failures::source_of(ip);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            let cap = self.per_minute;
            let per = self.per_minute;
            self.buckets.retain(|_, b| {
                let dt = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + dt * per / 60.0 < cap
            });
            if self.buckets.len() >= MAX_SOURCES {
                source = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
            }
        }
        let full = self.per_minute;
        let mut b = self.buckets.remove(&source).unwrap_or(Bucket {
            tokens: full,
            at: now,
        });
        self.refill(&mut b, now);
        let out = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let secs = (1.0 - b.tokens) * 60.0 / self.per_minute;
            Err(Duration::from_secs_f64(secs.max(1.0)).max(Duration::from_secs(1)))
        };
        self.buckets.insert(source, b);
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn ten_a_minute_then_wait_then_more() {
        let mut l = Limiter::new(10);
        let t0 = Instant::now(); // clock: a test's fixed origin
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert!(l.take(ip, t0).is_ok());
        }
        let wait = l.take(ip, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(6) && wait >= Duration::from_secs(1));
        // Another source is not slowed.
        assert!(l.take("10.0.0.2".parse().unwrap(), t0).is_ok());
        // Six seconds give one more attempt.
        assert!(l.take(ip, t0 + Duration::from_secs(6)).is_ok());
        assert!(l.take(ip, t0 + Duration::from_secs(6)).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_address_spraying() {
        let mut l = Limiter::new(10);
        let t0 = Instant::now(); // clock: a test's fixed origin
        for i in 0..(MAX_SOURCES as u32 + 5000) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.take(ip, t0);
        }
        assert!(l.len() <= MAX_SOURCES + 1);
    }
}
