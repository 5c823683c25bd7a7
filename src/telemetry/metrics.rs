//! Prometheus metrics: one registry for the process, exposed in the text
//! format on the metrics listener (see `http::metrics`).
//!
//! Labels are bounded by construction: route templates (never raw paths),
//! methods, status classes, the three firm states, the four rate-limit
//! classes. No metric carries a firm id: a firm count in the thousands would
//! multiply every series by it, and the audit log and `strongroomctl firm
//! show` already answer per-firm questions.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Static strings, so recording a request allocates nothing: route
/// templates come from the route table, methods and classes are fixed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status_class: &'static str,
}

/// A method as a static label (`other` for any but the usual ones).
pub fn method_label(m: &str) -> &'static str {
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        .into_iter()
        .find(|x| *x == m)
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
    pub crypto_module: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    pub request_duration: Family<RequestLabels, Histogram>,
    pub in_flight: Gauge,
    pub tls_handshake_failures: Counter,
    pub batch_size: Histogram,
    pub commit_duration: Histogram,
    pub queue_depth: Gauge,
    pub audit_appended: Counter,
    pub checkpoint_age: Gauge<f64, AtomicU64>,
    pub firms_open: Gauge,
    pub firms: Family<StateLabel, Gauge>,
    pub rate_limited: Family<ClassLabel, Counter>,
    pub rate_limit_keys: Gauge,
    pub signin_failures: Counter,
    pub lockouts: Counter,
    pub reencrypted: Counter,
    pub webhook_attempts: Family<OutcomeLabel, Counter>,
    pub reencryption_jobs: Gauge,
    pub fips: Gauge,
    pub build: Family<BuildLabels, Gauge>,
    pub storage_free: Gauge,
    pub storage_size: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Counts one webhook delivery attempt (`delivered`, `retry`, `failed`).
pub fn webhook_attempt(outcome: &str) {
    let outcome = match outcome {
        "delivered" => "delivered",
        "retry" => "retry",
        _ => "failed",
    };
    metrics()
        .webhook_attempts
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

/// The process's metrics (made at first use).
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("strongroom");
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 100 us to ~6.5 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        r.register_with_unit(
            "http_request_duration",
            "HTTPS API requests by route template, method and status class",
            Unit::Seconds,
            request_duration.clone(),
        );
        let in_flight = Gauge::default();
        r.register(
            "http_requests_in_flight",
            "API requests being served",
            in_flight.clone(),
        );
        let tls_handshake_failures = Counter::default();
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        r.register(
            "writer_batch_commands",
            "commands per group commit (all firms)",
            batch_size.clone(),
        );
        let commit_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        r.register_with_unit(
            "writer_commit_duration",
            "time from BEGIN to the durable COMMIT of a group commit",
            Unit::Seconds,
            commit_duration.clone(),
        );
        let queue_depth = Gauge::default();
        r.register(
            "writer_queue_depth",
            "commands queued for the firms' writers, all firms together",
            queue_depth.clone(),
        );
        let audit_appended = Counter::default();
        r.register(
            "audit_entries_appended",
            "audit entries committed to firm logs",
            audit_appended.clone(),
        );
        let checkpoint_age = Gauge::<f64, AtomicU64>::default();
        r.register_with_unit(
            "audit_checkpoint_age",
            "among open firms, the age of the oldest latest checkpoint of a log that grew past it",
            Unit::Seconds,
            checkpoint_age.clone(),
        );
        let firms_open = Gauge::default();
        r.register("firms_open", "firm databases open now", firms_open.clone());
        let firms = Family::<StateLabel, Gauge>::default();
        r.register("firms", "firms by state", firms.clone());
        let rate_limited = Family::<ClassLabel, Counter>::default();
        r.register(
            "rate_limited",
            "requests refused with 429, by limit class",
            rate_limited.clone(),
        );
        let rate_limit_keys = Gauge::default();
        r.register(
            "rate_limit_tracked_keys",
            "rate-limit buckets held (firm x class, and source addresses)",
            rate_limit_keys.clone(),
        );
        let signin_failures = Counter::default();
        r.register(
            "signin_failures",
            "failed sign-ins",
            signin_failures.clone(),
        );
        let lockouts = Counter::default();
        r.register(
            "lockouts",
            "accounts locked after failed sign-ins",
            lockouts.clone(),
        );
        let webhook_attempts = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "webhook_attempts",
            "webhook delivery attempts by outcome (delivered, retry, failed)",
            webhook_attempts.clone(),
        );
        let reencrypted = Counter::default();
        r.register(
            "datakey_reencrypted_items",
            "records and secrets re-sealed under a new data key",
            reencrypted.clone(),
        );
        let reencryption_jobs = Gauge::default();
        r.register(
            "datakey_reencryption_jobs_running",
            "data-key re-encryption jobs running",
            reencryption_jobs.clone(),
        );
        let fips = Gauge::default();
        r.register(
            "fips_mode",
            "1 when the crypto module runs in FIPS mode",
            fips.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        r.register("build_info", "the build: always 1", build.clone());
        let storage_free = Gauge::default();
        r.register_with_unit(
            "storage_free",
            "bytes available to the daemon on the state directory's file system",
            Unit::Bytes,
            storage_free.clone(),
        );
        let storage_size = Gauge::default();
        r.register_with_unit(
            "storage_size",
            "size of the state directory's file system",
            Unit::Bytes,
            storage_size.clone(),
        );
        Self {
            registry: r,
            request_duration,
            in_flight,
            tls_handshake_failures,
            batch_size,
            commit_duration,
            queue_depth,
            audit_appended,
            checkpoint_age,
            firms_open,
            firms,
            rate_limited,
            rate_limit_keys,
            signin_failures,
            lockouts,
            reencrypted,
            webhook_attempts,
            reencryption_jobs,
            fips,
            build,
            storage_free,
            storage_size,
        }
    }

    /// The exposition in OpenMetrics 1.0 text.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The exposition in the Prometheus text format (0.0.4), which every
    /// scraper and `promtool check metrics` read: the OpenMetrics text with
    /// counter families named as their samples (`_total`), and without the
    /// `# UNIT` and `# EOF` lines that format lacks.
    pub fn encode(&self) -> String {
        let om = self.encode_openmetrics();
        let counters: std::collections::HashSet<&str> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(om.len());
        for line in om.lines() {
            if line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
                let rest = line.strip_prefix(p)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{p}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

/// `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family() {
        let m = metrics();
        m.in_flight.inc();
        m.rate_limited
            .get_or_create(&ClassLabel {
                class: "read".into(),
            })
            .inc();
        let text = m.encode();
        for name in [
            "strongroom_http_request_duration_seconds",
            "strongroom_http_requests_in_flight",
            "strongroom_rate_limited_total",
            "strongroom_fips_mode",
            "strongroom_writer_commit_duration_seconds",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        assert!(text.contains("# TYPE strongroom_rate_limited_total counter"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(m.encode_openmetrics().ends_with("# EOF\n"));
    }

    /// The shipped alert rules and dashboard use only metrics we export.
    #[test]
    fn alerts_and_dashboard_name_exported_metrics() {
        let text = metrics().encode();
        let families: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for (file, body) in [
            (
                "alerts",
                include_str!("../../packaging/observability/strongroom-alerts.yml"),
            ),
            (
                "dashboard",
                include_str!("../../packaging/observability/strongroom-dashboard.json"),
            ),
        ] {
            let mut seen = 0;
            for (i, _) in body.match_indices("strongroom_") {
                let name: String = body[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                if family == "strongroom_" || name.starts_with("strongroom_dashboard") {
                    continue;
                }
                seen += 1;
                assert!(
                    families.contains(family),
                    "{file} names {name}, which is not exported"
                );
            }
            assert!(seen > 5, "{file}: {seen}");
        }
        let dash: serde_json::Value = serde_json::from_str(include_str!(
            "../../packaging/observability/strongroom-dashboard.json"
        ))
        .unwrap();
        assert!(dash["panels"].as_array().unwrap().len() >= 10);
    }
}
