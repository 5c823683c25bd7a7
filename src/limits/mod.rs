//! Rate limits: GCRA token buckets (the `governor` crate) so one firm or
//! one host cannot starve the others.
//!
//! - per firm x class (`read`, `write`, `auth`, `admin`: what the route's
//!   permission does), after the credential checked out;
//! - per source address (an IPv4 address or an IPv6 /64) on the routes
//!   anyone may call (status, health, sign-in, enrolment);
//! - per source address on failed authentications: a host that keeps
//!   sending bad credentials is refused (429) before its credentials are
//!   even checked, so it cannot flood the audit log.
//!
//! Time is the injected clock's monotonic time, so tests move it. Memory is
//! bounded: buckets back at full capacity are dropped every few seconds
//! ([`Limits::sweep`]), and past `max_tracked_sources` new sources share
//! one bucket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::clock::Clock as GovClock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Serialize;

use crate::audit::trail::{AdminActor, AuditTrail, Outcome};
use crate::auth::policy::Permission;
use crate::clock::Clock;
use crate::config::LimitsSection;
use crate::firms::pool::Pool;
use crate::firms::{FirmError, lock};
use crate::ids::FirmId;

/// What a route does, for its firm's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Read,
    Write,
    Auth,
    Admin,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Read, Class::Write, Class::Auth, Class::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Auth => "auth",
            Class::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The class of a route guarded by `p`.
    pub fn of(p: Permission) -> Self {
        use Permission::*;
        match p {
            Account => Class::Auth,
            FirmUpdate | KeysCreate | KeysRotate | KeysRevoke | UsersInvite | UsersUpdate
            | UsersDelete | CollectionsWrite | SubjectsErase | WebhooksWrite => Class::Admin,
            FirmRead | KeysRead | AuditRead | SecretsRead | RecordsRead | UsersRead
            | RecordsReadSensitive | WebhooksRead => Class::Read,
            SecretsWrite | SecretsDelete | SecretsVerify | RecordsWrite | RecordsDelete => {
                Class::Write
            }
        }
    }
}

/// The limiters' time: the injected clock's monotonic time since start.
#[derive(Clone)]
struct Mono {
    clock: Arc<dyn Clock>,
    origin: Instant,
}

impl GovClock for Mono {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.clock
            .monotonic()
            .saturating_duration_since(self.origin)
    }
}

type Keyed<K> = RateLimiter<K, HashMapStateStore<K>, Mono, StateInformationMiddleware>;
type Direct = RateLimiter<NotKeyed, InMemoryState, Mono, StateInformationMiddleware>;
/// Per-firm overrides: firm → class → (per second, its own bucket).
type Overrides = HashMap<FirmId, HashMap<Class, (u32, Arc<Direct>)>>;

/// A request let through: what the `RateLimit` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub class: &'static str,
    /// The bucket's size (requests in a burst).
    pub quota: u32,
    /// The window in seconds over which `quota` refills.
    pub window: u64,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

/// A request refused: its class and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub class: &'static str,
    pub quota: u32,
    pub window: u64,
    pub retry_after: u64,
}

fn keyed<K: Clone + std::hash::Hash + Eq>(q: Quota, clock: &Mono) -> Keyed<K> {
    RateLimiter::<K, HashMapStateStore<K>, Mono, governor::middleware::NoOpMiddleware<Duration>>::new(
        q,
        HashMapStateStore::default(),
        clock.clone(),
    )
    .with_middleware::<StateInformationMiddleware>()
}

fn quota(per_second: u32) -> Quota {
    let n = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(n).allow_burst(n)
}

fn per_minute(n: u32) -> Quota {
    let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

/// The rate limits of the API.
pub struct Limits {
    clock: Mono,
    enabled: bool,
    per_second: HashMap<Class, u32>,
    firm: HashMap<Class, Keyed<FirmId>>,
    /// Per-firm overrides (per second), from the registry.
    overrides: RwLock<Overrides>,
    sources: Keyed<IpAddr>,
    source_per_minute: u32,
    failures: Keyed<IpAddr>,
    failures_per_minute: u32,
    /// Sources refused for failed authentications, until when (limiter time).
    blocked: Mutex<HashMap<IpAddr, Duration>>,
    max_sources: usize,
    pool: Arc<Pool>,
    trail: Arc<AuditTrail>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("enabled", &self.enabled)
            .field("per_second", &self.per_second)
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(cfg: &LimitsSection, pool: Arc<Pool>, trail: Arc<AuditTrail>) -> Self {
        let clock = Mono {
            clock: pool.clock.clone(),
            origin: pool.clock.monotonic(),
        };
        let per_second: HashMap<Class, u32> = [
            (Class::Read, cfg.read_per_second),
            (Class::Write, cfg.write_per_second),
            (Class::Auth, cfg.auth_per_second),
            (Class::Admin, cfg.admin_per_second),
        ]
        .into_iter()
        .collect();
        let firm = per_second
            .iter()
            .map(|(c, n)| (*c, keyed(quota(*n), &clock)))
            .collect();
        let limits = Self {
            sources: keyed(per_minute(cfg.unauthenticated_per_minute), &clock),
            failures: keyed(per_minute(cfg.failed_auth_per_minute), &clock),
            source_per_minute: cfg.unauthenticated_per_minute,
            failures_per_minute: cfg.failed_auth_per_minute,
            clock,
            enabled: cfg.enabled,
            per_second,
            firm,
            overrides: RwLock::new(HashMap::new()),
            blocked: Mutex::new(HashMap::new()),
            max_sources: cfg.max_tracked_sources,
            pool,
            trail,
        };
        limits.load_overrides();
        limits
    }

    fn direct(&self, per_second: u32) -> Arc<Direct> {
        Arc::new(
            RateLimiter::direct_with_clock(quota(per_second), self.clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
        )
    }

    /// Reads every firm's overrides from the registry (at start).
    fn load_overrides(&self) {
        let Ok(rows) = self.pool.list() else {
            return;
        };
        let mut map: Overrides = HashMap::new();
        for r in rows {
            let (Some(json), Some(id)) = (r.rate_limits.as_deref(), FirmId::parse(&r.id)) else {
                continue;
            };
            let parsed: HashMap<String, u32> = serde_json::from_str(json).unwrap_or_default();
            for (c, n) in parsed {
                if let Some(class) = Class::parse(&c) {
                    map.entry(id.clone())
                        .or_default()
                        .insert(class, (n, self.direct(n)));
                }
            }
        }
        *self.overrides.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    fn window(q: u32, per_second: u32) -> u64 {
        u64::from(q).div_ceil(u64::from(per_second.max(1))).max(1)
    }

    /// Takes one request of `class` for `firm`.
    pub fn check_firm(&self, firm: &FirmId, class: Class) -> Result<Option<Allowance>, Refusal> {
        if !self.enabled {
            return Ok(None);
        }
        let over = self
            .overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(firm)
            .and_then(|m| m.get(&class))
            .cloned();
        let (rate, outcome) = match &over {
            Some((n, l)) => (*n, l.check()),
            None => {
                let n = self.per_second.get(&class).copied().unwrap_or(1);
                match self.firm.get(&class) {
                    Some(l) => (n, l.check_key(firm)),
                    None => return Ok(None),
                }
            }
        };
        self.verdict(class.as_str(), rate, 1, outcome)
    }

    /// Converts a limiter's answer (`rate` per `per` seconds) into ours.
    fn verdict(
        &self,
        class: &'static str,
        rate: u32,
        per: u64,
        outcome: Result<governor::middleware::StateSnapshot, governor::NotUntil<Duration>>,
    ) -> Result<Option<Allowance>, Refusal> {
        let window = Self::window(rate, rate) * per;
        match outcome {
            Ok(s) => {
                let q = s.quota().burst_size().get();
                let r = s.remaining_burst_capacity();
                let reset = (u64::from(q - r.min(q)) * per).div_ceil(u64::from(rate.max(1)));
                Ok(Some(Allowance {
                    class,
                    quota: q,
                    window,
                    remaining: r,
                    reset,
                }))
            }
            Err(not) => {
                crate::telemetry::metrics::metrics()
                    .rate_limited
                    .get_or_create(&crate::telemetry::metrics::ClassLabel {
                        class: class.to_owned(),
                    })
                    .inc();
                let wait = not.wait_time_from(self.clock.now());
                Err(Refusal {
                    class,
                    quota: not.quota().burst_size().get(),
                    window,
                    retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
        }
    }

    /// The bucket key for a source: itself, or the shared overflow bucket
    /// once `max_tracked_sources` are held.
    fn source_key(&self, limiter: &Keyed<IpAddr>, ip: IpAddr) -> IpAddr {
        let src = crate::auth::failures::source_of(ip);
        if limiter.len() >= self.max_sources {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            src
        }
    }

    /// Takes one unauthenticated request from `ip`.
    pub fn check_source(&self, ip: IpAddr) -> Result<Option<Allowance>, Refusal> {
        if !self.enabled {
            return Ok(None);
        }
        let key = self.source_key(&self.sources, ip);
        let outcome = self.sources.check_key(&key);
        self.verdict("unauthenticated", self.source_per_minute, 60, outcome)
    }

    /// Whether `ip` is refused for failed authentications now.
    pub fn auth_blocked(&self, ip: IpAddr) -> Option<Refusal> {
        if !self.enabled {
            return None;
        }
        let src = crate::auth::failures::source_of(ip);
        let now = self.clock.now();
        let until = *lock(&self.blocked).get(&src)?;
        (until > now).then(|| Refusal {
            class: "failed_auth",
            quota: self.failures_per_minute,
            window: 60,
            retry_after: (until - now).as_secs_f64().ceil().max(1.0) as u64,
        })
    }

    /// Counts a failed authentication from `ip`; past the allowance the
    /// source is refused until its bucket has room again.
    pub fn note_auth_failure(&self, ip: IpAddr) {
        if !self.enabled {
            return;
        }
        let key = self.source_key(&self.failures, ip);
        if let Err(not) = self.failures.check_key(&key) {
            let until = not.earliest_possible();
            // Blocks are kept by the real source (only the counting may
            // share the overflow bucket), and a full table makes room.
            let src = crate::auth::failures::source_of(ip);
            let mut b = lock(&self.blocked);
            if b.len() >= self.max_sources && !b.contains_key(&src) {
                let now = self.clock.now();
                b.retain(|_, t| *t > now);
                if b.len() >= self.max_sources {
                    let soonest = b.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
                    if let Some(k) = soonest {
                        b.remove(&k);
                    }
                }
            }
            b.insert(src, until);
            crate::telemetry::metrics::metrics()
                .rate_limited
                .get_or_create(&crate::telemetry::metrics::ClassLabel {
                    class: "failed_auth".to_owned(),
                })
                .inc();
        }
    }

    /// Drops buckets that are full again (they hold no information) and
    /// expired blocks: memory stays bounded by the sources active lately.
    pub fn sweep(&self) {
        for l in self.firm.values() {
            l.retain_recent();
        }
        self.sources.retain_recent();
        self.failures.retain_recent();
        let now = self.clock.now();
        lock(&self.blocked).retain(|_, until| *until > now);
        crate::telemetry::metrics::metrics()
            .rate_limit_keys
            .set(self.tracked() as i64);
    }

    /// Buckets held now.
    pub fn tracked(&self) -> usize {
        self.firm.values().map(|l| l.len()).sum::<usize>()
            + self.sources.len()
            + self.failures.len()
            + lock(&self.blocked).len()
    }

    /// Sets (or with `None` clears) a firm's limit for `class`, recorded in
    /// the system log in the same registry transaction.
    pub fn set_override(
        &self,
        firm: &FirmId,
        class: Class,
        per_second: Option<u32>,
        by: &AdminActor,
    ) -> Result<HashMap<&'static str, u32>, FirmError> {
        if per_second == Some(0) {
            return Err(FirmError::Invalid("per_second must be at least 1".into()));
        }
        let mut map = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        let mut mine: HashMap<&'static str, u32> = map
            .get(firm)
            .map(|m| m.iter().map(|(c, (n, _))| (c.as_str(), *n)).collect())
            .unwrap_or_default();
        match per_second {
            Some(n) => mine.insert(class.as_str(), n),
            None => mine.remove(class.as_str()),
        };
        let json = (!mine.is_empty()).then(|| serde_json::to_string(&mine).unwrap_or_default());
        let e = self.trail.system_entry(
            by,
            "firm.set_rate_limit",
            firm.as_str(),
            Outcome::Success,
            "admin_socket",
            serde_json::json!({ "class": class.as_str(), "per_second": per_second }),
        )?;
        self.pool
            .registry
            .set_rate_limits(firm.as_str(), json.as_deref(), &self.pool.now(), Some(e))
            .map_err(|e| match e {
                crate::store::StoreError::NotFound => FirmError::NotFound,
                other => other.into(),
            })?;
        let firm_map = map.entry(firm.clone()).or_default();
        match per_second {
            Some(n) => {
                firm_map.insert(class, (n, self.direct(n)));
            }
            None => {
                firm_map.remove(&class);
            }
        }
        if firm_map.is_empty() {
            map.remove(firm);
        }
        Ok(mine)
    }

    /// The limits in force for a firm (per second, by class).
    pub fn firm_limits(&self, firm: &FirmId) -> HashMap<&'static str, u32> {
        let map = self.overrides.read().unwrap_or_else(|p| p.into_inner());
        Class::ALL
            .into_iter()
            .map(|c| {
                let n = map
                    .get(firm)
                    .and_then(|m| m.get(&c))
                    .map(|(n, _)| *n)
                    .unwrap_or_else(|| self.per_second.get(&c).copied().unwrap_or(0));
                (c.as_str(), n)
            })
            .collect()
    }
}
