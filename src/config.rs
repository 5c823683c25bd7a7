//! Strict TOML configuration.
//!
//! Every table rejects unknown keys (`deny_unknown_fields`), so a typo is a
//! startup error naming the key instead of a silently ignored setting. The file
//! carries `version = 1`; a later format bumps it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The only configuration format this build understands.
pub const CONFIG_VERSION: u32 = 1;
/// Where packages install the configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/strongroom/strongroom.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; must be 1.
    pub version: u32,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub keys: KeysSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub security: SecuritySection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub people: PeopleSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub backup: BackupSection,
    #[serde(default)]
    pub retention: RetentionSection,
    #[serde(default)]
    pub webhooks: crate::webhooks::settings::WebhooksSection,
    /// SHA-256 (hex) of the configuration text this was read from (empty:
    /// the built-in defaults), for evidence bundles.
    #[serde(skip)]
    pub source_sha256: String,
}

/// Record retention: the classes a collection's schema may name, and the
/// job that deletes what outlived its class.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Class name -> how long a record of that class is kept (`2557d`).
    /// None by default: nothing is deleted until an operator says so.
    pub classes: std::collections::BTreeMap<String, String>,
    /// How often the job runs.
    pub interval: String,
    /// Records deleted per transaction (1-10000).
    pub batch: u32,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self {
            classes: std::collections::BTreeMap::new(),
            interval: "1h".to_owned(),
            batch: 500,
        }
    }
}

impl RetentionSection {
    /// The classes with their durations (validated at load).
    pub fn durations(&self) -> std::collections::BTreeMap<String, Duration> {
        self.classes
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), parse_duration(v)?)))
            .collect()
    }

    pub fn interval(&self) -> Duration {
        parse_duration(&self.interval).unwrap_or(Duration::from_secs(3600))
    }
}

/// Backups (`strongroomctl backup ...`; the packages' timer runs create
/// and prune every 15 minutes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// The repository `backup create` writes to when not given `--to`.
    /// Unset: every backup command must name one.
    pub repository: Option<PathBuf>,
    /// `backup prune` keeps the newest `keep_last` snapshots ...
    pub keep_last: u32,
    /// ... and the newest of each of the last `keep_daily` days.
    pub keep_daily: u32,
}

impl Default for BackupSection {
    fn default() -> Self {
        Self {
            repository: None,
            // A day of 15-minute snapshots, and five weeks of dailies.
            keep_last: 96,
            keep_daily: 35,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address of the HTTPS API listener.
    pub listen: SocketAddr,
    /// How long SIGTERM waits for in-flight requests before closing them.
    pub shutdown_timeout_secs: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most client connections open at once (lowered at startup to fit the
    /// open-file limit). At the cap, the longest-idle connection is closed to
    /// make room; if none is idle the new one is refused.
    pub max_connections: usize,
    /// Most connections open at once from one source address (IPv6: one /64).
    pub max_connections_per_source: usize,
    /// Seconds a client has to complete the TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Seconds a client has to send a request's headers.
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in progress.
    pub idle_timeout_secs: u64,
    /// Seconds allowed to receive a request body, plus one second for every
    /// `body_min_bytes_per_sec` bytes received.
    pub body_timeout_secs: u64,
    /// The slowest body upload accepted, in bytes per second.
    pub body_min_bytes_per_sec: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            shutdown_timeout_secs: 10,
            max_body_bytes: 1024 * 1024,
            max_connections: 1024,
            max_connections_per_source: 256,
            handshake_timeout_secs: 10,
            header_timeout_secs: 15,
            idle_timeout_secs: 60,
            body_timeout_secs: 15,
            body_min_bytes_per_sec: 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain (leaf first). Unset: a self-signed certificate is
    /// generated into `<state_dir>/tls/` on first start.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Where the registry, the firm databases and generated TLS material live.
    pub state_dir: PathBuf,
    /// Seconds an unused firm database stays open.
    pub firm_idle_secs: u64,
    /// The SQLCipher page format of new firm databases (and of a rekeyed
    /// one): `hmac-sha256` (the default) or `hmac-sha512` (SQLCipher 4's
    /// defaults). Existing files keep theirs until a rekey.
    pub page_format: String,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/strongroom"),
            firm_idle_secs: 300,
            page_format: crate::store::PageFormat::CURRENT.name().to_owned(),
        }
    }
}

impl StorageSection {
    /// The parsed `page_format` (checked by `Config::validate`).
    pub fn page_format(&self) -> crate::store::PageFormat {
        crate::store::PageFormat::parse(&self.page_format)
            .unwrap_or(crate::store::PageFormat::CURRENT)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The admin Unix socket `strongroomctl` talks to.
    pub socket: PathBuf,
    /// Members of this group may use the admin socket (besides root and the
    /// service user). Empty: nobody else.
    pub group: String,
    /// Seconds an admin connection may wait between two requests (or take to
    /// send one) before it is closed.
    pub idle_timeout_secs: u64,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/strongroom/admin.sock"),
            group: "strongroom-admin".to_owned(),
            idle_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysSection {
    /// A file holding the 32-byte master key (raw or 64 hex characters). Used
    /// only when the systemd credential `master-key` is absent.
    pub master_key_file: Option<PathBuf>,
    /// Items the data-key re-encryption job moves per transaction (1-10000).
    pub reencrypt_batch: u64,
    /// Pause between two re-encryption transactions, in milliseconds (at most 60000).
    pub reencrypt_pause_ms: u64,
}

impl Default for KeysSection {
    fn default() -> Self {
        Self {
            master_key_file: None,
            reencrypt_batch: 500,
            reencrypt_pause_ms: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// journald when its socket exists, else JSON lines on stderr.
    #[default]
    Auto,
    Journald,
    Stderr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub target: LogTarget,
    /// A tracing filter, e.g. `info` or `info,strongroom=debug`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            target: LogTarget::Auto,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// Allow the daemon to run as root outside dev mode. Off by default: the
    /// packaged unit runs it as the `strongroom` user.
    pub allow_root: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// How long audit entries are kept before the retention job purges them
    /// (with a signed receipt), unless a firm has its own: a number and a
    /// unit, `s`, `m`, `h` or `d`. Default 2557d (seven years).
    pub retention: String,
    /// How often the retention job runs.
    pub purge_interval: String,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            retention: "2557d".to_owned(),
            purge_interval: "1h".to_owned(),
        }
    }
}

impl AuditSection {
    pub fn retention(&self) -> Duration {
        parse_duration(&self.retention).unwrap_or(Duration::from_secs(2557 * 86_400))
    }

    pub fn purge_interval(&self) -> Duration {
        parse_duration(&self.purge_interval).unwrap_or(Duration::from_secs(3600))
    }
}

/// API rate limits (GCRA token buckets; see `limits`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub enabled: bool,
    /// Per firm, requests a second by class (the burst is the same number).
    pub read_per_second: u32,
    pub write_per_second: u32,
    pub auth_per_second: u32,
    pub admin_per_second: u32,
    /// Per source address, a minute, on routes anyone may call.
    pub unauthenticated_per_minute: u32,
    /// Per source address, failed authentications a minute before the
    /// source is refused outright for a while.
    pub failed_auth_per_minute: u32,
    /// Source addresses tracked one by one; beyond, they share one bucket.
    pub max_tracked_sources: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            read_per_second: 50_000,
            write_per_second: 20_000,
            auth_per_second: 1_000,
            admin_per_second: 1_000,
            unauthenticated_per_minute: 600,
            failed_auth_per_minute: 60,
            max_tracked_sources: 100_000,
        }
    }
}

/// The Prometheus metrics listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    /// Where `/metrics` is served. Default 127.0.0.1:9464 (dev mode: a free
    /// loopback port). Anywhere but loopback needs `token_file`, and is
    /// served over TLS with the API's certificate.
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token scrapers must send (mode 0400/0600).
    pub token_file: Option<PathBuf>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            token_file: None,
        }
    }
}

pub use crate::people::settings::PeopleSection;

/// `<n><unit>` with unit `s`, `m`, `h` or `d`, n ≥ 1 (e.g. `90d`, `12h`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok().filter(|n| *n >= 1)?;
    let unit = match &s[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
        .filter(|secs| *secs <= 100 * 366 * 86_400)
        .map(Duration::from_secs)
}

impl Config {
    /// A configuration with every default, used by dev mode without `--config`.
    pub fn defaults() -> Self {
        Self {
            version: CONFIG_VERSION,
            server: ServerSection::default(),
            tls: TlsSection::default(),
            storage: StorageSection::default(),
            admin: AdminSection::default(),
            keys: KeysSection::default(),
            log: LogSection::default(),
            security: SecuritySection::default(),
            audit: AuditSection::default(),
            people: PeopleSection::default(),
            metrics: MetricsSection::default(),
            limits: LimitsSection::default(),
            backup: BackupSection::default(),
            retention: RetentionSection::default(),
            webhooks: Default::default(),
            source_sha256: String::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.validate()?;
        cfg.source_sha256 = crate::crypto::hex(&crate::crypto::sha256(text.as_bytes()));
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.webhooks.validate()?;
        if crate::store::PageFormat::parse(&self.storage.page_format).is_none() {
            return Err(ConfigError::Invalid(format!(
                "[storage] page_format = {:?}: hmac-sha256 or hmac-sha512",
                self.storage.page_format
            )));
        }
        for (name, d) in &self.retention.classes {
            let ok_name = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_'
                });
            if !ok_name || parse_duration(d).is_none_or(|d| d.is_zero()) {
                return Err(ConfigError::Invalid(format!(
                    "[retention] classes: {name:?} = {d:?}: a name of a-z 0-9 - _ and a duration such as 2557d"
                )));
            }
        }
        if parse_duration(&self.retention.interval).is_none_or(|d| d.is_zero())
            || !(1..=10_000).contains(&self.retention.batch)
        {
            return Err(ConfigError::Invalid(
                "[retention] interval must be a duration (e.g. 1h) and batch 1-10000".into(),
            ));
        }
        if self.backup.keep_last == 0 && self.backup.keep_daily == 0 {
            return Err(ConfigError::Invalid(
                "[backup] keep_last and keep_daily are both 0: prune would keep no snapshot".into(),
            ));
        }
        if self
            .backup
            .repository
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return Err(ConfigError::Invalid(
                "[backup] repository must be an absolute path".into(),
            ));
        }
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::Invalid(format!(
                "version = {} is not supported (this build reads version {CONFIG_VERSION})",
                self.version
            )));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert_file and tls.key_file must be set together".to_owned(),
            ));
        }
        if !(1..=300).contains(&self.server.shutdown_timeout_secs) {
            return Err(ConfigError::Invalid(
                "server.shutdown_timeout_secs must be between 1 and 300".to_owned(),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "server.max_body_bytes must be at least 1024".to_owned(),
            ));
        }
        if self.server.max_connections < 1 || self.server.max_connections_per_source < 1 {
            return Err(ConfigError::Invalid(
                "server.max_connections and server.max_connections_per_source must be at least 1"
                    .to_owned(),
            ));
        }
        for (name, v) in [
            (
                "server.handshake_timeout_secs",
                self.server.handshake_timeout_secs,
            ),
            (
                "server.header_timeout_secs",
                self.server.header_timeout_secs,
            ),
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            ("server.body_timeout_secs", self.server.body_timeout_secs),
            ("admin.idle_timeout_secs", self.admin.idle_timeout_secs),
        ] {
            if !(1..=3600).contains(&v) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be between 1 and 3600"
                )));
            }
        }
        if self.server.body_min_bytes_per_sec < 1 {
            return Err(ConfigError::Invalid(
                "server.body_min_bytes_per_sec must be at least 1".to_owned(),
            ));
        }
        if !self.storage.state_dir.is_absolute() {
            return Err(ConfigError::Invalid(
                "storage.state_dir must be an absolute path".to_owned(),
            ));
        }
        for (name, v) in [
            ("audit.retention", &self.audit.retention),
            ("audit.purge_interval", &self.audit.purge_interval),
        ] {
            if parse_duration(v).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "{name} {v:?} is not a duration like 90d, 12h, 30m or 10s (at most 100 years)"
                )));
            }
        }
        if !(1..=10_000).contains(&self.keys.reencrypt_batch) {
            return Err(ConfigError::Invalid(
                "keys.reencrypt_batch must be between 1 and 10000".to_owned(),
            ));
        }
        if self.keys.reencrypt_pause_ms > 60_000 {
            return Err(ConfigError::Invalid(
                "keys.reencrypt_pause_ms must be at most 60000".to_owned(),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::Invalid(format!(
                "log.level {:?} is not a valid filter",
                self.log.level
            )));
        }
        self.people.validate()?;
        let l = &self.limits;
        if [
            l.read_per_second,
            l.write_per_second,
            l.auth_per_second,
            l.admin_per_second,
            l.unauthenticated_per_minute,
            l.failed_auth_per_minute,
        ]
        .contains(&0)
            || l.max_tracked_sources < 16
        {
            return Err(ConfigError::Invalid(
                "[limits]: every rate must be at least 1, and max_tracked_sources at least 16"
                    .into(),
            ));
        }
        if let Some(addr) = self.metrics.listen {
            // Security invariant: metrics leave loopback only over TLS with a bearer token.
            if self.metrics.enabled && !addr.ip().is_loopback() && self.metrics.token_file.is_none()
            {
                return Err(ConfigError::Invalid(format!(
                    "[metrics] listen = {addr} is not loopback: set token_file (scrapers must send the token; the listener then serves TLS)"
                )));
            }
        }
        Ok(())
    }

    /// Certificate and key paths: configured, or the generated pair in the state dir.
    pub fn tls_paths(&self) -> (PathBuf, PathBuf) {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let dir = self.storage.state_dir.join("tls");
                (dir.join("cert.pem"), dir.join("key.pem"))
            }
        }
    }

    pub fn tls_is_generated(&self) -> bool {
        self.tls.cert_file.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_config_parses() {
        let text = include_str!("../config/strongroom.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.version, 1);
        assert_eq!(cfg.server.listen.port(), 8443);
        assert_eq!(cfg.audit.retention(), Duration::from_secs(2557 * 86_400));
    }

    #[test]
    fn durations_parse_with_units_and_bad_ones_are_refused() {
        assert_eq!(
            parse_duration("90d"),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(parse_duration("12h"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        for bad in ["", "0d", "7y", "d", "-1d", "1.5d", "99999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let err = Config::parse("version = 1\n[audit]\nretention = \"7 years\"\n").unwrap_err();
        assert!(err.to_string().contains("audit.retention"), "{err}");
    }

    #[test]
    fn retention_classes_and_backup_policy_are_checked() {
        let cfg = Config::parse(
            "version = 1\n[retention]\nclasses = { \"7y-legal\" = \"2557d\" }\n[backup]\nrepository = \"/srv/b\"\n",
        )
        .unwrap();
        assert_eq!(
            cfg.retention.durations().get("7y-legal"),
            Some(&Duration::from_secs(2557 * 86_400))
        );
        for bad in [
            "[retention]\nclasses = { \"Seven Years\" = \"2557d\" }",
            "[retention]\nclasses = { \"short\" = \"0d\" }",
            "[retention]\nbatch = 0",
            "[backup]\nkeep_last = 0\nkeep_daily = 0",
            "[backup]\nrepository = \"relative/dir\"",
        ] {
            assert!(
                Config::parse(&format!("version = 1\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("version = 1\n[server]\nlisten_adress = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_adress"), "{err}");
        let err = Config::parse("version = 1\nbogus = 2\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn version_is_required_and_checked() {
        assert!(
            Config::parse("")
                .unwrap_err()
                .to_string()
                .contains("version")
        );
        assert!(Config::parse("version = 2").is_err());
    }

    #[test]
    fn tls_pair_must_be_complete() {
        let err = Config::parse("version = 1\n[tls]\ncert_file = \"/a\"\n").unwrap_err();
        assert!(err.to_string().contains("together"));
    }
}
