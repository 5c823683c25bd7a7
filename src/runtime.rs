//! Facts about the running daemon that its layers report (status pages,
//! the admin `status` command, the dev banner): a leaf, built once by the
//! daemon and handed down, importing nothing above it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::crypto::fips::ModuleInfo;
use crate::tls::CertStore;

#[derive(Debug)]
pub struct Runtime {
    pub started: Instant,
    /// The FIPS module in use (checked at startup).
    pub module: ModuleInfo,
    /// The bound HTTPS address.
    pub listen: SocketAddr,
    /// The bound metrics address (`None`: metrics off).
    pub metrics_listen: Option<SocketAddr>,
    pub state_dir: PathBuf,
    /// The serving certificate, reloadable.
    pub certs: Arc<CertStore>,
    pub dev: bool,
    /// Where the master key came from (never the key).
    pub key_source: String,
}

impl Runtime {
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}
