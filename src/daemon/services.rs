//! The capability services, built from the configuration on the shared
//! firm pool and audit trail.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{AuditLog, AuditTrail};
use crate::auth::Keys;
use crate::backup::{BackupSettings, Backups, Policy};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::erasure::Erasures;
use crate::evidence::{ApplianceFacts, Evidence};
use crate::firms::{Lifecycle, Pool};
use crate::people::People;
use crate::records::Records;
use crate::records::retention::RetentionClasses;
use crate::vault::Vault;
use crate::webhooks::Webhooks;

/// The capability services, wired on the shared firm pool and audit trail.
#[derive(Debug, Clone)]
pub(super) struct Services {
    pub(super) clock: Arc<SystemClock>,
    pub(super) trail: Arc<AuditTrail>,
    pub(super) lifecycle: Arc<Lifecycle>,
    pub(super) keys: Arc<Keys>,
    pub(super) people: Arc<People>,
    pub(super) limits: Arc<crate::limits::Limits>,
    pub(super) records: Arc<Records>,
    pub(super) vault: Arc<Vault>,
    pub(super) audit: Arc<AuditLog>,
    pub(super) backups: Arc<Backups>,
    pub(super) evidence: Arc<Evidence>,
    pub(super) erasures: Arc<Erasures>,
    pub(super) webhooks: Arc<Webhooks>,
}

impl Services {
    pub(super) fn new(
        clock: Arc<SystemClock>,
        pool: Pool,
        appliance: crate::firms::pool::ApplianceKeys,
        config: &Config,
    ) -> Self {
        let pool = Arc::new(pool);
        let trail = Arc::new(AuditTrail::new(pool.clone(), appliance));
        let records = Arc::new(Records::new(pool.clone(), trail.clone()));
        records.set_retention(RetentionClasses {
            classes: config.retention.durations(),
            batch: config.retention.batch,
        });
        let audit = Arc::new(AuditLog::new(pool.clone(), trail.clone()));
        audit.set_default_retention(config.audit.retention());
        let lifecycle = Arc::new(Lifecycle::new(
            pool.clone(),
            trail.clone(),
            config.storage.page_format(),
        ));
        lifecycle.set_reencrypt_pacing(
            config.keys.reencrypt_batch,
            Duration::from_millis(config.keys.reencrypt_pause_ms),
        );
        let state_dir = &config.storage.state_dir;
        let backups = BackupSettings {
            repository: config.backup.repository.clone(),
            policy: Policy {
                keep_last: config.backup.keep_last,
                keep_daily: config.backup.keep_daily,
            },
            state_dir: state_dir.clone(),
            scratch: state_dir.join("scratch"),
        };
        let facts = ApplianceFacts {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            fips_module: crate::crypto::fips::module_info().module,
            sqlcipher: crate::store::sqlcipher_version(),
            config_sha256: if config.source_sha256.is_empty() {
                "built-in defaults".to_owned()
            } else {
                config.source_sha256.clone()
            },
            tls: crate::tls::policy(),
        };
        let webhooks = Arc::new(Webhooks::new(
            pool.clone(),
            trail.clone(),
            crate::webhooks::Settings {
                egress: config.webhooks.egress(),
                timeout: Duration::from_secs(config.webhooks.timeout_secs),
            },
            state_dir,
        ));
        Self {
            erasures: Arc::new(Erasures::new(
                pool.clone(),
                trail.clone(),
                state_dir.clone(),
                config.backup.repository.clone(),
            )),
            webhooks,
            evidence: Arc::new(Evidence::new(
                pool.clone(),
                trail.clone(),
                audit.clone(),
                records.clone(),
                facts,
            )),
            backups: Arc::new(Backups::new(
                pool.clone(),
                trail.clone(),
                clock.clone(),
                backups,
            )),
            clock,
            lifecycle,
            keys: Arc::new(Keys::new(pool.clone(), trail.clone())),
            people: Arc::new(People::new(
                pool.clone(),
                trail.clone(),
                (&config.people).into(),
            )),
            limits: Arc::new(crate::limits::Limits::new(
                &config.limits,
                pool.clone(),
                trail.clone(),
            )),
            records,
            vault: Arc::new(Vault::new(pool.clone(), trail.clone())),
            audit,
            trail,
        }
    }
}
