//! The metrics listener's wiring: where it binds, its token and TLS off
//! loopback, and the scrape-time refresh of the gauges that are read rather
//! than counted (firms, checkpoint age, storage, rate-limit buckets).

use std::fs;
use std::sync::Arc;

use tokio::sync::watch;

use super::{NamedTask, Services, StartupError};
use crate::config::Config;
use crate::runtime::Runtime;

/// Binds the metrics listener (loopback 9464 by default; a free loopback
/// port in dev mode), or `None` when metrics are off.
pub(super) async fn bind(
    config: &Config,
    dev: bool,
) -> Result<Option<tokio::net::TcpListener>, StartupError> {
    if !config.metrics.enabled {
        return Ok(None);
    }
    let addr = config.metrics.listen.unwrap_or_else(|| {
        if dev {
            std::net::SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            std::net::SocketAddr::from(([127, 0, 0, 1], 9464))
        }
    });
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| StartupError::Bind { addr, source })
}

/// The metrics task: its token (off loopback), TLS (off loopback), and the
/// scrape-time refresh of the gauges that are read, not counted.
pub(super) fn task(
    config: &Config,
    runtime: &Arc<Runtime>,
    svc: &Services,
    acceptor: &tokio_rustls::TlsAcceptor,
    listener: tokio::net::TcpListener,
    stop: &watch::Receiver<bool>,
) -> Result<NamedTask, StartupError> {
    let token = match &config.metrics.token_file {
        Some(path) => {
            let text = fs::read_to_string(path).map_err(|source| StartupError::Io {
                path: path.clone(),
                source,
            })?;
            let t = zeroize::Zeroizing::new(text.trim().to_owned());
            if t.len() < 16 {
                return Err(StartupError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(
                        "the metrics token must be at least 16 characters",
                    ),
                });
            }
            Some(t)
        }
        None => None,
    };
    let loopback = runtime.metrics_listen.is_some_and(|a| a.ip().is_loopback());
    let m = crate::telemetry::metrics::metrics();
    m.fips.set(i64::from(runtime.module.fips));
    m.build
        .get_or_create(&crate::telemetry::metrics::BuildLabels {
            version: crate::VERSION.to_owned(),
            commit: crate::BUILD_COMMIT.to_owned(),
            crypto_module: runtime.module.module.clone(),
        })
        .set(1);
    let (life, audit, limits) = (svc.lifecycle.clone(), svc.audit.clone(), svc.limits.clone());
    let state_dir = runtime.state_dir.clone();
    let refresh = Arc::new(move || {
        m.rate_limit_keys.set(limits.tracked() as i64);
        if let Ok(fs) = nix::sys::statvfs::statvfs(&state_dir) {
            let frag = fs.fragment_size() as i64;
            m.storage_free.set(fs.blocks_available() as i64 * frag);
            m.storage_size.set(fs.blocks() as i64 * frag);
        }
        m.firms_open.set(life.open_count() as i64);
        let mut by_state: std::collections::HashMap<String, i64> = ["active", "frozen", "deleted"]
            .into_iter()
            .map(|s| (s.to_owned(), 0))
            .collect();
        if let Ok(rows) = life.list() {
            for r in rows {
                *by_state.entry(r.state.to_string()).or_insert(0) += 1;
            }
        }
        for (state, n) in by_state {
            m.firms
                .get_or_create(&crate::telemetry::metrics::StateLabel { state })
                .set(n);
        }
        m.checkpoint_age.set(audit.checkpoint_age_secs());
        m.reencryption_jobs.set(life.reencryptions_running() as i64);
    });
    let server = crate::http::metrics::MetricsServer {
        tls: (!loopback).then(|| acceptor.clone()),
        token,
        refresh,
    };
    Ok(NamedTask {
        name: "metrics",
        handle: tokio::spawn(crate::http::metrics::serve(listener, server, stop.clone())),
    })
}
