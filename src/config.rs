//! Strict TOML configuration.
//!
//! Every table rejects unknown keys (`deny_unknown_fields`), so a typo is a
//! startup error naming the key instead of a silently ignored setting. The file
//! carries `version = 1`; a later format bumps it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            shutdown_timeout_secs: 10,
            max_body_bytes: 1024 * 1024,
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
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/strongroom"),
            firm_idle_secs: 300,
        }
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
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/strongroom/admin.sock"),
            group: "strongroom-admin".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysSection {
    /// A file holding the 32-byte master key (raw or 64 hex characters). Used
    /// only when the systemd credential `master-key` is absent.
    pub master_key_file: Option<PathBuf>,
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
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
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
        if !self.storage.state_dir.is_absolute() {
            return Err(ConfigError::Invalid(
                "storage.state_dir must be an absolute path".to_owned(),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::Invalid(format!(
                "log.level {:?} is not a valid filter",
                self.log.level
            )));
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
