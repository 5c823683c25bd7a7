//! Counting failed authentications, so a flood of them cannot flood a
//! firm's audit log.
//!
//! Anyone who knows a firm id can fail to sign in to it, with any key id
//! they like. So failures are grouped by what the caller cannot choose: the
//! firm and the source (an IPv4 address or an IPv6 /64). The first failure
//! of a group in a window is written at once (the log shows an attack when
//! it starts); the rest are counted, and one summary entry per group
//! records how many there were, when, with how many distinct key ids and
//! for which reasons. A firm tracks at most [`MAX_SOURCES_PER_FIRM`] sources
//! per window; failures from further sources share one group, `*`. So an
//! unauthenticated source adds at most two entries per firm per window, and
//! all sources together at most `2 × (MAX_SOURCES_PER_FIRM + 1)`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// How long one group collects failures before its summary is due.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked one by one per firm and window.
pub const MAX_SOURCES_PER_FIRM: usize = 32;
/// Distinct key ids remembered per group (beyond this, only counted).
const MAX_KEY_IDS: usize = 1000;
/// Groups held at once, across all firms: a memory bound.
const MAX_GROUPS: usize = 100_000;

/// A group's key: the firm and the source (`*` for overflow sources).
pub type GroupKey = (String, String);

/// What counts as one source: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so single addresses would not bound it).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = a.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug)]
struct Group {
    opened: Instant,
    first_at: String,
    last_at: String,
    count: u64,
    key_ids: HashSet<String>,
    reasons: BTreeMap<String, u64>,
}

/// What to do with one failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first of its group in this window: write an entry now.
    Record { source: String },
    /// Counted; the group's summary will record it.
    Counted,
}

/// One group's summary, due when its window closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub firm: String,
    pub source: String,
    pub first_at: String,
    pub last_at: String,
    /// Failures after the first (the first has its own entry).
    pub more: u64,
    pub distinct_key_ids: usize,
    pub reasons: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
pub struct FailureCounter {
    groups: HashMap<GroupKey, Group>,
}

impl FailureCounter {
    /// Notes a failure on `firm` from `ip` with `key_id`, at `now` (`at` is
    /// its wall-clock time, as entries carry it).
    pub fn note(
        &mut self,
        firm: &str,
        ip: IpAddr,
        key_id: &str,
        reason: &str,
        now: Instant,
        at: &str,
    ) -> Verdict {
        let source = source_of(ip).to_string();
        let mut key = (firm.to_owned(), source);
        if !self.groups.contains_key(&key) {
            let tracked = self.groups.keys().filter(|(f, _)| f == firm).count();
            if tracked >= MAX_SOURCES_PER_FIRM {
                key.1 = "*".to_owned();
            }
        }
        if let Some(g) = self.groups.get_mut(&key) {
            g.count += 1;
            g.last_at = at.to_owned();
            if g.key_ids.len() < MAX_KEY_IDS {
                g.key_ids.insert(key_id.to_owned());
            }
            *g.reasons.entry(reason.to_owned()).or_insert(0) += 1;
            return Verdict::Counted;
        }
        if self.groups.len() >= MAX_GROUPS {
            // Over the memory bound: still on the request's log line, not
            // in the audit log until groups close.
            return Verdict::Counted;
        }
        let source = key.1.clone();
        self.groups.insert(
            key,
            Group {
                opened: now,
                first_at: at.to_owned(),
                last_at: at.to_owned(),
                count: 1,
                key_ids: HashSet::from([key_id.to_owned()]),
                reasons: BTreeMap::from([(reason.to_owned(), 1)]),
            },
        );
        Verdict::Record { source }
    }

    /// Closes the groups whose window has passed (all of them with `all`),
    /// returning a summary for each that counted more than its first failure.
    pub fn close(&mut self, now: Instant, all: bool) -> Vec<Summary> {
        let due: Vec<GroupKey> = self
            .groups
            .iter()
            .filter(|(_, g)| all || now.duration_since(g.opened) >= WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in due {
            let Some(g) = self.groups.remove(&k) else {
                continue;
            };
            if g.count > 1 {
                out.push(Summary {
                    firm: k.0,
                    source: k.1,
                    first_at: g.first_at,
                    last_at: g.last_at,
                    more: g.count - 1,
                    distinct_key_ids: g.key_ids.len(),
                    reasons: g.reasons,
                });
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_sources_are_counted_by_slash_64() {
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa::1")),
            source_of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn one_entry_then_one_summary_per_source_whatever_the_key_ids() {
        let mut c = FailureCounter::default();
        let t0 = Instant::now(); // clock: a test's fixed origin
        let v = c.note("f1", ip("10.0.0.9"), "k0", "unknown key", t0, "T0");
        assert_eq!(
            v,
            Verdict::Record {
                source: "10.0.0.9".into()
            }
        );
        for i in 1..3000 {
            let v = c.note(
                "f1",
                ip("10.0.0.9"),
                &format!("k{i}"),
                "unknown key",
                t0,
                "T1",
            );
            assert_eq!(v, Verdict::Counted);
        }
        assert!(c.close(t0 + Duration::from_secs(59), false).is_empty());
        let s = c.close(t0 + WINDOW, false);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].more, 2999);
        assert_eq!(s[0].distinct_key_ids, 1000);
        assert_eq!(s[0].last_at, "T1");
        // A new window starts afresh.
        let v = c.note("f1", ip("10.0.0.9"), "k", "bad secret", t0 + WINDOW, "T2");
        assert!(matches!(v, Verdict::Record { .. }));
    }

    #[test]
    fn sources_beyond_the_per_firm_bound_share_one_group() {
        let mut c = FailureCounter::default();
        let t0 = Instant::now(); // clock: a test's fixed origin
        let mut recorded = 0;
        for i in 0..200u32 {
            let a = ip(&format!("127.0.{}.{}", i / 250, i % 250 + 1));
            if matches!(c.note("f1", a, "k", "r", t0, "T"), Verdict::Record { .. }) {
                recorded += 1;
            }
        }
        assert_eq!(recorded, MAX_SOURCES_PER_FIRM + 1);
        // Another firm has its own bound.
        assert!(matches!(
            c.note("f2", ip("127.0.0.1"), "k", "r", t0, "T"),
            Verdict::Record { .. }
        ));
        let s = c.close(t0, true);
        let star = s.iter().find(|s| s.source == "*").unwrap();
        assert_eq!(star.more, 200 - MAX_SOURCES_PER_FIRM as u64 - 1);
    }
}
