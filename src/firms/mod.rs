//! Firm lifecycle and access to firm databases: create, list, show, freeze,
//! delete (crypto-shred), rekey, master-key rotation, lazy open and idle close,
//! and API key authentication.
//!
//! All methods here block (they touch SQLite and the disk); async callers run
//! them with `tokio::task::spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::auth::{self, Principal, Role};
use crate::clock::{Clock, rfc3339};
use crate::crypto::keyring::{self, KeyError, Keyring, MasterKey, Purpose, SqlcipherKey};
use crate::crypto::secret::SecretKey;
use crate::crypto::sign::SigningKey;
use crate::crypto::{CryptoError, hex, random_array};
use crate::ids::{ApiKeyId, FirmId};
use crate::store::StoreError;
use crate::store::firm::FirmDb;
use crate::store::registry::{FirmRow, Registry, WrappedKey};

mod audit;
mod cache;
mod datakeys;
mod keys;
mod records;
mod secrets;
mod system;

pub use audit::{
    AuditEntryView, AuditPage, AuditVerifyView, ConsistencyView, InclusionView, MAX_PAGE, Outcome,
};
pub use datakeys::{DataKeyStatus, DataKeys, Reencryption};
pub use keys::{KeyView, Minted, NewKey};
pub use records::{CollectionView, PendingCreate, RecordPage, RecordView, Written};
pub use secrets::{SecretValue, SecretView};
pub use system::{AdminActor, SYSTEM};

/// Longest firm name accepted.
pub const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum FirmError {
    #[error("no collection by that name in this firm")]
    CollectionNotFound,
    #[error("no record with that id in this collection")]
    RecordNotFound,
    #[error("the record changed since the version in If-Match")]
    StaleVersion,
    #[error("this write needs an If-Match header with the record's ETag")]
    PreconditionRequired,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("field {field:?} contains a {kind}, which this collection rejects")]
    PiiDetected { field: String, kind: &'static str },
    #[error("schema change refused: {0}")]
    SchemaConflict(String),
    #[error("no secret by that name in this firm")]
    SecretNotFound,
    #[error("too many attempts; retry in {0} s")]
    RateLimited(u64),
    #[error("no such firm")]
    NotFound,
    #[error("the firm is frozen; writes are refused")]
    Frozen,
    #[error("the firm is under maintenance (rekey); try again shortly")]
    Maintenance,
    #[error("invalid firm name: {0}")]
    InvalidName(String),
    #[error("confirmation {0:?} does not match the firm id")]
    ConfirmMismatch(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("no such API key")]
    KeyNotFound,
    #[error("the API key is revoked")]
    KeyRevoked,
    #[error("the firm's last owner key cannot be revoked; rotate it instead")]
    LastOwnerKey,
    #[error("a key cannot create or take over a key with more power than its own")]
    Escalation,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl FirmError {
    /// Stable code for API bodies and admin replies.
    pub fn code(&self) -> &'static str {
        match self {
            FirmError::NotFound => "firm_not_found",
            FirmError::SecretNotFound => "secret_not_found",
            FirmError::CollectionNotFound => "collection_not_found",
            FirmError::RecordNotFound => "record_not_found",
            FirmError::StaleVersion => "precondition_failed",
            FirmError::PreconditionRequired => "precondition_required",
            FirmError::IdempotencyConflict => "idempotency_conflict",
            FirmError::InvalidRecord(_) => "invalid_record",
            FirmError::PiiDetected { .. } => "pii_detected",
            FirmError::SchemaConflict(_) => "schema_conflict",
            FirmError::RateLimited(_) => "rate_limited",
            FirmError::Frozen => "firm_frozen",
            FirmError::Maintenance => "firm_maintenance",
            FirmError::InvalidName(_) => "invalid_name",
            FirmError::ConfirmMismatch(_) => "confirm_mismatch",
            FirmError::Invalid(_) => "invalid_field",
            FirmError::InvalidQuery(_) => "invalid_query",
            FirmError::KeyNotFound => "key_not_found",
            FirmError::KeyRevoked => "key_revoked",
            FirmError::LastOwnerKey => "last_owner_key",
            FirmError::Escalation => "forbidden_escalation",
            FirmError::Store(StoreError::Busy) => "busy",
            FirmError::Store(StoreError::Full) => "storage_full",
            FirmError::Store(_) => "storage_error",
            FirmError::Key(_) => "key_error",
            FirmError::Crypto(_) => "crypto_error",
        }
    }
}

/// A firm's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FirmState {
    Active,
    Frozen,
    Deleted,
}

impl FirmState {
    fn parse(s: &str) -> Self {
        match s {
            "active" => FirmState::Active,
            "frozen" => FirmState::Frozen,
            _ => FirmState::Deleted,
        }
    }
}

/// An API key as returned once at minting.
#[derive(Debug)]
pub struct MintedKey {
    pub id: ApiKeyId,
    pub role: Role,
    pub token: ApiKeySecretToken,
}

/// The full bearer token, redacted in `Debug`.
pub struct ApiKeySecretToken(String);

impl ApiKeySecretToken {
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKeySecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeySecretToken(<redacted>)")
    }
}

impl Drop for ApiKeySecretToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// An open firm: its database and the keys the daemon needs while it is open.
#[derive(Debug)]
pub struct FirmHandle {
    pub id: FirmId,
    pub db: FirmDb,
    auth_key: SecretKey,
    /// Seals audit payloads, and its version (the envelope header's).
    audit_key: SecretKey,
    audit_key_version: u32,
    /// Seal secrets and sensitive record fields: the active version and the
    /// retired ones a rotation has not finished with. Swapped whole, so a
    /// reader's snapshot never changes under it.
    data: RwLock<Arc<DataKeys>>,
    /// API key rows by id, for authentication without a database read.
    key_cache: cache::GenCache<crate::store::firm::ApiKeyRow>,
    /// Collection schemas by name.
    schemas: cache::GenCache<Arc<crate::records::schema::Schema>>,
}

impl FirmHandle {
    /// A snapshot of the data keys. Take it *before* reading sealed rows.
    pub fn data_keys(&self) -> Arc<DataKeys> {
        match self.data.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_data_keys(&self, keys: DataKeys) {
        match self.data.write() {
            Ok(mut g) => *g = Arc::new(keys),
            Err(p) => *p.into_inner() = Arc::new(keys),
        }
    }
}

/// What `firm show` reports.
#[derive(Debug, Serialize)]
pub struct FirmInfo {
    #[serde(flatten)]
    pub row: FirmRow,
    pub key_versions: HashMap<String, u32>,
    pub data_key: DataKeyStatus,
    pub db_bytes: Option<u64>,
    pub open: bool,
}

/// Why an API key was not accepted (all are 401 to the client).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("malformed credential")]
    Malformed,
    #[error("unknown or deleted firm")]
    UnknownFirm,
    #[error("unknown key")]
    UnknownKey,
    #[error("wrong secret")]
    BadSecret,
    #[error("revoked key")]
    Revoked,
    #[error("expired key")]
    Expired,
    #[error(transparent)]
    Firm(#[from] FirmError),
}

#[derive(Debug)]
pub struct Firms {
    registry: Registry,
    keyring: RwLock<Arc<Keyring>>,
    dir: PathBuf,
    open: Mutex<HashMap<FirmId, Arc<FirmHandle>>>,
    states: RwLock<HashMap<FirmId, FirmState>>,
    maintenance: Mutex<HashSet<FirmId>>,
    /// Serializes operations that change the registry's keys (create, delete,
    /// rekey, master rotation), so a rotation never misses a key.
    admin_ops: Mutex<()>,
    clock: Arc<dyn Clock>,
    idle: Duration,
    generation: AtomicU64,
    appliance_id: String,
    /// Recently audited reads, for coalescing.
    reads: audit::ReadLog,
    /// Failed authentications being counted, per firm and source.
    auth_failures: std::sync::Mutex<crate::auth::failures::FailureCounter>,
    /// The appliance's checkpoint signing key and its note key name.
    signer: Arc<SigningKey>,
    signer_name: String,
    /// Seals the system log's details (an appliance key).
    system_key: SecretKey,
    /// The default audit retention, in seconds.
    retention_secs: AtomicU64,
    /// Recent secret-verification attempts, for rate limiting.
    verify_attempts: secrets::Attempts,
    /// Data-key re-encryption jobs.
    data_jobs: datakeys::Jobs,
    /// Bumped (under the `open` lock) whenever a firm's in-memory keys
    /// change, so a handle opened meanwhile from older registry rows is
    /// discarded instead of cached.
    key_epoch: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Firms {
    /// Opens the registry under `state_dir` with keys derived from `master`.
    /// A wrong master key fails here, before anything is written.
    pub fn open(
        state_dir: &Path,
        master: &MasterKey,
        clock: Arc<dyn Clock>,
        idle: Duration,
    ) -> Result<Self, FirmError> {
        let ring = master.derive()?;
        let dir = state_dir.join("firms");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        let registry = Registry::open(&state_dir.join("registry.db"), &ring.registry_db_key())?;
        let appliance_hex: [u8; 8] = random_array()?;
        let appliance_id = registry.meta_init("appliance_id", &hex(&appliance_hex))?;
        let generation = registry
            .meta_init("master_generation", "1")?
            .parse()
            .unwrap_or(1);
        let signer = Arc::new(SigningKey::from_seed(&load_or_create_appliance_key(
            &registry,
            &ring,
            Purpose::Signing,
        )?)?);
        let system_key = system::system_audit_key(&registry, &ring)?;
        let mut states = HashMap::new();
        for row in registry.firms()? {
            if let Some(id) = FirmId::parse(&row.id) {
                states.insert(id, FirmState::parse(&row.state));
            }
        }
        let firms = Self {
            registry,
            keyring: RwLock::new(Arc::new(ring)),
            dir,
            open: Mutex::new(HashMap::new()),
            states: RwLock::new(states),
            maintenance: Mutex::new(HashSet::new()),
            admin_ops: Mutex::new(()),
            clock,
            idle,
            generation: AtomicU64::new(generation),
            signer_name: format!("strongroom/{appliance_id}"),
            appliance_id,
            reads: audit::ReadLog::default(),
            auth_failures: Default::default(),
            signer,
            system_key,
            retention_secs: AtomicU64::new(2557 * 86_400),
            verify_attempts: secrets::Attempts::default(),
            data_jobs: datakeys::Jobs::default(),
            key_epoch: AtomicU64::new(0),
        };
        firms.sweep_files();
        Ok(firms)
    }

    pub fn appliance_id(&self) -> &str {
        &self.appliance_id
    }

    fn ring(&self) -> Arc<Keyring> {
        match self.keyring.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn now(&self) -> String {
        rfc3339(self.clock.now())
    }

    fn path(&self, id: &FirmId) -> PathBuf {
        self.dir.join(format!("{id}.db"))
    }

    /// Removes database files whose firm is deleted or unknown (left by a
    /// crash between the registry commit and the file removal, or between
    /// file creation and the registry commit).
    fn sweep_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or_default();
            let keep = FirmId::parse(stem)
                .and_then(|id| self.state(&id))
                .is_some_and(|s| s != FirmState::Deleted);
            if !keep {
                tracing::warn!(file = %name, "removing database file of a deleted or unknown firm");
                let _ = fs::remove_file(e.path());
            }
        }
    }

    pub fn state(&self, id: &FirmId) -> Option<FirmState> {
        match self.states.read() {
            Ok(g) => g.get(id).copied(),
            Err(p) => p.into_inner().get(id).copied(),
        }
    }

    fn set_state_cache(&self, id: &FirmId, state: FirmState) {
        match self.states.write() {
            Ok(mut g) => g.insert(id.clone(), state),
            Err(p) => p.into_inner().insert(id.clone(), state),
        };
    }

    fn unwrap_key(&self, id: &FirmId, k: &WrappedKey) -> Result<SecretKey, FirmError> {
        let purpose = Purpose::parse(&k.purpose)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown key purpose {}", k.purpose)))?;
        Ok(self
            .ring()
            .unwrap(id.as_str(), purpose, k.version, &k.wrapped)?)
    }

    fn active_key(
        &self,
        id: &FirmId,
        keys: &[WrappedKey],
        purpose: Purpose,
    ) -> Result<SecretKey, FirmError> {
        let k = keys
            .iter()
            .find(|k| k.purpose == purpose.as_str() && k.state == "active")
            .ok_or_else(|| {
                StoreError::Corrupt(format!("firm {id} has no active {} key", purpose.as_str()))
            })?;
        self.unwrap_key(id, k)
    }

    /// Creates a firm: random keys wrapped in the registry, its database, and
    /// a first owner API key (returned once).
    pub fn create(&self, name: &str, by: &AdminActor) -> Result<(FirmRow, MintedKey), FirmError> {
        let name = validate_name(name)?;
        let _ops = lock(&self.admin_ops);
        let id = FirmId::generate()?;
        let now = self.now();
        let ring = self.ring();
        let mut wrapped = Vec::new();
        let mut plain = HashMap::new();
        for purpose in Purpose::ALL {
            let k = SecretKey::random()?;
            wrapped.push(WrappedKey {
                firm_id: id.to_string(),
                purpose: purpose.as_str().to_owned(),
                version: 1,
                state: "active".to_owned(),
                wrapped: ring.wrap(id.as_str(), purpose, 1, &k)?,
                created_at: now.clone(),
            });
            plain.insert(purpose, k);
        }
        let db_key = plain
            .remove(&Purpose::Db)
            .ok_or_else(|| StoreError::Corrupt("no db key".into()))?;
        let auth_key = plain
            .remove(&Purpose::Auth)
            .ok_or_else(|| StoreError::Corrupt("no auth key".into()))?;
        let audit_key = plain
            .remove(&Purpose::Audit)
            .ok_or_else(|| StoreError::Corrupt("no audit key".into()))?;
        let data_key = plain
            .remove(&Purpose::Data)
            .ok_or_else(|| StoreError::Corrupt("no data key".into()))?;
        let path = self.path(&id);
        let db = FirmDb::open(id.as_str(), &path, SqlcipherKey::from_secret(&db_key), true)?;
        let handle = FirmHandle {
            id: id.clone(),
            db,
            auth_key,
            audit_key,
            audit_key_version: 1,
            data: RwLock::new(Arc::new(DataKeys::new(
                1,
                [(1, Arc::new(data_key))].into_iter().collect(),
            ))),
            key_cache: Default::default(),
            schemas: Default::default(),
        };
        let minted = match self.mint_key_blocking(&handle, "initial owner key", Role::Owner) {
            Ok(m) => m,
            Err(e) => {
                handle.db.close();
                let _ = remove_db_files(&path);
                return Err(e);
            }
        };
        let row = FirmRow {
            id: id.to_string(),
            name: name.to_owned(),
            state: "active".to_owned(),
            created_at: now.clone(),
            updated_at: now,
            deleted_at: None,
            audit_retention: None,
        };
        let entry = self.system_entry(
            by,
            "firm.create",
            id.as_str(),
            audit::Outcome::Success,
            "admin_socket",
            serde_json::json!({ "name": name, "initial_key": minted.id.as_str() }),
        )?;
        // The registry commit is the point where the firm exists.
        if let Err(e) = self.registry.insert_firm(&row, &wrapped, Some(entry)) {
            handle.db.close();
            let _ = remove_db_files(&path);
            return Err(e.into());
        }
        self.set_state_cache(&id, FirmState::Active);
        lock(&self.open).insert(id, Arc::new(handle));
        Ok((row, minted))
    }

    /// Mints the first owner key in a new firm's database (through its writer).
    fn mint_key_blocking(
        &self,
        handle: &FirmHandle,
        name: &str,
        role: Role,
    ) -> Result<MintedKey, FirmError> {
        let new = keys::NewKey {
            name: name.to_owned(),
            role,
            overrides: Default::default(),
            expires_at: None,
        };
        let (row, token) = self.new_key_row(&handle.auth_key, &handle.id, &new, None)?;
        let id = ApiKeyId::parse(&row.id)
            .ok_or_else(|| StoreError::Corrupt("generated key id".into()))?;
        handle
            .db
            .write_blocking(move |tx| tx.insert_api_key(&row))?;
        Ok(MintedKey { id, role, token })
    }

    /// The open handle for a firm, opening its database on first use.
    pub fn handle(&self, id: &FirmId) -> Result<Arc<FirmHandle>, FirmError> {
        match self.state(id) {
            None | Some(FirmState::Deleted) => return Err(FirmError::NotFound),
            Some(_) => {}
        }
        if lock(&self.maintenance).contains(id) {
            return Err(FirmError::Maintenance);
        }
        loop {
            if let Some(h) = lock(&self.open).get(id) {
                h.db.touch();
                return Ok(h.clone());
            }
            let epoch = self.key_epoch.load(Ordering::SeqCst);
            let handle = Arc::new(self.open_handle(id)?);
            let mut open = lock(&self.open);
            // Another thread may have opened it meanwhile; keep one. If keys
            // changed while this one was opening, it may hold old ones: retry.
            let keep = open.get(id).cloned();
            if keep.is_some() || self.key_epoch.load(Ordering::SeqCst) != epoch {
                drop(open);
                if let Ok(mine) = Arc::try_unwrap(handle) {
                    mine.db.close();
                }
                if let Some(h) = keep {
                    return Ok(h);
                }
                continue;
            }
            open.insert(id.clone(), handle.clone());
            return Ok(handle);
        }
    }

    /// Opens a firm's database with its keys from the registry.
    fn open_handle(&self, id: &FirmId) -> Result<FirmHandle, FirmError> {
        let keys = self.registry.keys(id.as_str())?;
        let db_key = self.resolve_db_key(id, &keys)?;
        let auth_key = self.active_key(id, &keys, Purpose::Auth)?;
        let audit_key = self.active_key(id, &keys, Purpose::Audit)?;
        let audit_key_version = keys
            .iter()
            .find(|k| k.purpose == Purpose::Audit.as_str() && k.state == "active")
            .map_or(1, |k| k.version);
        let mut data = std::collections::BTreeMap::new();
        let mut data_active = None;
        for k in keys.iter().filter(|k| k.purpose == Purpose::Data.as_str()) {
            match k.state.as_str() {
                "active" => data_active = Some(k.version),
                "retired" => {}
                _ => continue,
            }
            data.insert(k.version, Arc::new(self.unwrap_key(id, k)?));
        }
        let data_active = data_active
            .ok_or_else(|| StoreError::Corrupt(format!("firm {id} has no active data key")))?;
        let db = FirmDb::open(id.as_str(), &self.path(id), db_key, false)?;
        Ok(FirmHandle {
            id: id.clone(),
            db,
            auth_key,
            audit_key,
            audit_key_version,
            data: RwLock::new(Arc::new(DataKeys::new(data_active, data))),
            key_cache: Default::default(),
            schemas: Default::default(),
        })
    }

    /// The active database key, finishing an interrupted rekey if one left a
    /// pending version behind.
    fn resolve_db_key(&self, id: &FirmId, keys: &[WrappedKey]) -> Result<SqlcipherKey, FirmError> {
        let active = SqlcipherKey::from_secret(&self.active_key(id, keys, Purpose::Db)?);
        let pending = keys
            .iter()
            .find(|k| k.purpose == "db" && k.state == "pending");
        let Some(pending) = pending else {
            return Ok(active);
        };
        let path = self.path(id);
        if FirmDb::key_opens(&path, &active) {
            self.registry.drop_pending(id.as_str(), "db")?;
            return Ok(active);
        }
        let new_key = SqlcipherKey::from_secret(&self.unwrap_key(id, pending)?);
        if FirmDb::key_opens(&path, &new_key) {
            tracing::warn!(firm = %id, "completing an interrupted rekey");
            let e = self.system_entry_for(
                "system:recovery",
                "",
                "firm.rekey",
                id.as_str(),
                audit::Outcome::Success,
                "interrupted_rekey",
                serde_json::json!({ "db_key_version": pending.version }),
            )?;
            self.registry
                .activate_key(id.as_str(), "db", pending.version, Some(e))?;
            return Ok(new_key);
        }
        Err(StoreError::WrongKey {
            path: path.display().to_string(),
        }
        .into())
    }

    pub fn list(&self) -> Result<Vec<FirmRow>, FirmError> {
        Ok(self.registry.firms()?)
    }

    pub fn row(&self, id: &FirmId) -> Result<FirmRow, FirmError> {
        self.registry.firm(id.as_str())?.ok_or(FirmError::NotFound)
    }

    pub fn show(&self, id: &FirmId) -> Result<FirmInfo, FirmError> {
        let row = self.row(id)?;
        let key_versions = self
            .registry
            .keys(id.as_str())?
            .into_iter()
            .filter(|k| k.state == "active")
            .map(|k| (k.purpose, k.version))
            .collect();
        Ok(FirmInfo {
            row,
            key_versions,
            data_key: self.data_key_status(id)?,
            db_bytes: fs::metadata(self.path(id)).ok().map(|m| m.len()),
            open: lock(&self.open).contains_key(id),
        })
    }

    pub fn set_frozen(
        &self,
        id: &FirmId,
        frozen: bool,
        by: &AdminActor,
    ) -> Result<FirmRow, FirmError> {
        let state = if frozen { "frozen" } else { "active" };
        let action = if frozen {
            "firm.freeze"
        } else {
            "firm.unfreeze"
        };
        let e = self.system_entry(
            by,
            action,
            id.as_str(),
            audit::Outcome::Success,
            "admin_socket",
            serde_json::Value::Null,
        )?;
        match self
            .registry
            .set_state(id.as_str(), state, &self.now(), Some(e))
        {
            Err(StoreError::NotFound) => return Err(FirmError::NotFound),
            other => other?,
        }
        self.set_state_cache(
            id,
            if frozen {
                FirmState::Frozen
            } else {
                FirmState::Active
            },
        );
        self.row(id)
    }

    /// Fails with `Frozen` unless the firm accepts writes.
    pub fn require_writable(&self, id: &FirmId) -> Result<(), FirmError> {
        match self.state(id) {
            Some(FirmState::Active) => Ok(()),
            Some(FirmState::Frozen) => Err(FirmError::Frozen),
            _ => Err(FirmError::NotFound),
        }
    }

    /// Removes the firm from the open set and waits (bounded) until nobody
    /// holds it, then closes it.
    fn evict(&self, id: &FirmId) {
        let Some(mut h) = lock(&self.open).remove(id) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Arc::try_unwrap(h) {
                Ok(handle) => {
                    handle.db.close();
                    return;
                }
                Err(again) if Instant::now() < deadline => {
                    h = again;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    tracing::warn!(firm = %id, "firm still in use after 30 s; closing when released");
                    return;
                }
            }
        }
    }

    /// Crypto-shred: destroys the firm's wrapped keys (the point of no return),
    /// then closes and removes its database. The id is never reused.
    pub fn delete(
        &self,
        id: &FirmId,
        confirm: &str,
        by: &AdminActor,
    ) -> Result<FirmRow, FirmError> {
        if confirm != id.as_str() {
            return Err(FirmError::ConfirmMismatch(confirm.to_owned()));
        }
        let _ops = lock(&self.admin_ops);
        let e = self.system_entry(
            by,
            "firm.delete",
            id.as_str(),
            audit::Outcome::Success,
            "admin_socket",
            serde_json::json!({ "crypto_shred": true }),
        )?;
        match self.registry.shred_firm(id.as_str(), &self.now(), Some(e)) {
            Err(StoreError::NotFound) => return Err(FirmError::NotFound),
            other => other?,
        }
        self.set_state_cache(id, FirmState::Deleted);
        self.forget_jobs(id);
        self.evict(id);
        if let Err(e) = remove_db_files(&self.path(id)) {
            tracing::warn!(firm = %id, error = %e, "database file not removed; it is unreadable without its key and is swept at next start");
        }
        self.row(id)
    }

    /// Crypto-shreds the firm's audit payloads: a new audit key version
    /// replaces every old one, which is destroyed. Old entries keep their
    /// hashes (the chain, tree and checkpoints still verify) but their
    /// details can never be read again. Returns the new key version.
    pub fn shred_audit_payloads(
        &self,
        id: &FirmId,
        confirm: &str,
        by: &AdminActor,
    ) -> Result<u32, FirmError> {
        if confirm != id.as_str() {
            return Err(FirmError::ConfirmMismatch(confirm.to_owned()));
        }
        let _ops = lock(&self.admin_ops);
        match self.state(id) {
            None | Some(FirmState::Deleted) => return Err(FirmError::NotFound),
            _ => {}
        }
        let keys = self.registry.keys(id.as_str())?;
        let version = keys
            .iter()
            .filter(|k| k.purpose == Purpose::Audit.as_str())
            .map(|k| k.version)
            .max()
            .unwrap_or(0)
            + 1;
        let key = SecretKey::random()?;
        self.registry.add_key(&WrappedKey {
            firm_id: id.to_string(),
            purpose: Purpose::Audit.as_str().to_owned(),
            version,
            state: "pending".to_owned(),
            wrapped: self
                .ring()
                .wrap(id.as_str(), Purpose::Audit, version, &key)?,
            created_at: self.now(),
        })?;
        let e = self.system_entry(
            by,
            "audit.shred_payloads",
            id.as_str(),
            audit::Outcome::Success,
            "admin_socket",
            serde_json::json!({ "new_audit_key_version": version }),
        )?;
        // One transaction: the new version becomes active, every older one is deleted.
        self.registry
            .activate_key(id.as_str(), Purpose::Audit.as_str(), version, Some(e))?;
        // The open handle still holds the old key in memory: drop it, and
        // make a handle being opened from the old rows reload.
        self.key_epoch.fetch_add(1, Ordering::SeqCst);
        self.evict(id);
        Ok(version)
    }

    /// Break-glass: the firm's raw SQLCipher key for disaster recovery.
    pub fn export_key(&self, id: &FirmId) -> Result<SqlcipherKey, FirmError> {
        match self.state(id) {
            None | Some(FirmState::Deleted) => return Err(FirmError::NotFound),
            _ => {}
        }
        let keys = self.registry.keys(id.as_str())?;
        self.resolve_db_key(id, &keys)
    }

    /// New SQLCipher key for a firm's database (`PRAGMA rekey`). Crash-safe:
    /// the new key is recorded as pending before the rekey and activated after,
    /// and opening a firm resolves a leftover pending key either way.
    pub fn rekey(&self, id: &FirmId, by: &AdminActor) -> Result<u32, FirmError> {
        match self.state(id) {
            None | Some(FirmState::Deleted) => return Err(FirmError::NotFound),
            _ => {}
        }
        let _ops = lock(&self.admin_ops);
        if !lock(&self.maintenance).insert(id.clone()) {
            return Err(FirmError::Maintenance);
        }
        let result = (|| {
            self.evict(id);
            let keys = self.registry.keys(id.as_str())?;
            let old = self.resolve_db_key(id, &self.registry.keys(id.as_str())?)?;
            let version = keys
                .iter()
                .filter(|k| k.purpose == "db")
                .map(|k| k.version)
                .max()
                .unwrap_or(0)
                + 1;
            let new_secret = SecretKey::random()?;
            self.registry.add_key(&WrappedKey {
                firm_id: id.to_string(),
                purpose: "db".to_owned(),
                version,
                state: "pending".to_owned(),
                wrapped: self
                    .ring()
                    .wrap(id.as_str(), Purpose::Db, version, &new_secret)?,
                created_at: self.now(),
            })?;
            FirmDb::rekey(
                &self.path(id),
                &old,
                &SqlcipherKey::from_secret(&new_secret),
            )?;
            let e = self.system_entry(
                by,
                "firm.rekey",
                id.as_str(),
                audit::Outcome::Success,
                "admin_socket",
                serde_json::json!({ "db_key_version": version }),
            )?;
            self.registry
                .activate_key(id.as_str(), "db", version, Some(e))?;
            Ok(version)
        })();
        lock(&self.maintenance).remove(id);
        result
    }

    /// Re-wraps every firm key under a new master key and re-keys the
    /// registry, atomically (see `Registry::rotate`). Returns the new generation.
    pub fn rotate_master(&self, new_master: &MasterKey, by: &AdminActor) -> Result<u64, FirmError> {
        let _ops = lock(&self.admin_ops);
        let new_ring = new_master.derive()?;
        let old_ring = self.ring();
        let mut rewrapped = Vec::new();
        for mut k in self.registry.all_keys()? {
            let purpose = Purpose::parse(&k.purpose)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown purpose {}", k.purpose)))?;
            let plain = old_ring.unwrap(&k.firm_id, purpose, k.version, &k.wrapped)?;
            k.wrapped = new_ring.wrap(&k.firm_id, purpose, k.version, &plain)?;
            rewrapped.push(k);
        }
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let e = self.system_entry(
            by,
            "keys.rotate_master",
            "master-key",
            audit::Outcome::Success,
            "admin_socket",
            serde_json::json!({ "generation": generation }),
        )?;
        self.registry
            .rotate(&new_ring.registry_db_key(), &rewrapped, generation, Some(e))?;
        match self.keyring.write() {
            Ok(mut g) => *g = Arc::new(new_ring),
            Err(p) => *p.into_inner() = Arc::new(new_ring),
        }
        self.generation.store(generation, Ordering::SeqCst);
        Ok(generation)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Checks a bearer token; the result names the key's own firm.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let parsed = auth::parse_token(token).ok_or(AuthError::Malformed)?;
        let handle = match self.handle(&parsed.firm) {
            Ok(h) => h,
            Err(FirmError::NotFound) => return Err(AuthError::UnknownFirm),
            Err(e) => return Err(e.into()),
        };
        let key_id = parsed.key.as_str().to_owned();
        let row = match handle.key_cache.get(&key_id) {
            Some(row) => row,
            None => {
                let generation = handle.key_cache.generation();
                let row = handle
                    .db
                    .read_blocking(|r| r.api_key(&key_id))
                    .map_err(FirmError::from)?
                    .ok_or(AuthError::UnknownKey)?;
                handle.key_cache.fill(generation, &key_id, row.clone());
                row
            }
        };
        self.check_key(&handle, parsed, &row)
    }

    /// `authenticate` without blocking, for the async request path: None
    /// when it would need the disk (firm not open, key not cached).
    pub fn authenticate_cached(&self, token: &str) -> Option<Result<Principal, AuthError>> {
        let Some(parsed) = auth::parse_token(token) else {
            return Some(Err(AuthError::Malformed));
        };
        let handle = self.cached_handle(&parsed.firm)?;
        let row = handle.key_cache.get(parsed.key.as_str())?;
        Some(self.check_key(&handle, parsed, &row))
    }

    /// The firm's handle if it is open and usable, without blocking.
    fn cached_handle(&self, id: &FirmId) -> Option<Arc<FirmHandle>> {
        if !matches!(self.state(id), Some(FirmState::Active | FirmState::Frozen))
            || lock(&self.maintenance).contains(id)
        {
            return None;
        }
        let handle = lock(&self.open).get(id).cloned()?;
        handle.db.touch();
        Some(handle)
    }

    /// Checks a presented secret and the key's state.
    fn check_key(
        &self,
        handle: &FirmHandle,
        parsed: auth::ParsedToken,
        row: &crate::store::firm::ApiKeyRow,
    ) -> Result<Principal, AuthError> {
        let mac = keyring::api_key_mac(&handle.auth_key, &row.id, parsed.secret.as_bytes());
        // Security invariant: secrets are compared as HMACs, in constant time.
        if !keyring::ct_eq(&mac, &row.mac) {
            return Err(AuthError::BadSecret);
        }
        if row.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        let mut expires_at = None;
        if let Some(exp) = row.expires_at.as_deref() {
            // An expiry that does not parse fails closed.
            match crate::clock::parse_rfc3339(exp) {
                Some(t) if t > self.clock.now() => expires_at = Some(t),
                _ => return Err(AuthError::Expired),
            }
        }
        let (role, overrides) = keys::grants_of(row)?;
        self.note_key_use(handle, row);
        Ok(Principal {
            firm: parsed.firm,
            key_id: parsed.key,
            role,
            overrides,
            expires_at,
            origin: Default::default(),
        })
    }

    /// The firm's profile (public info kept in its own database).
    pub fn profile(&self, id: &FirmId) -> Result<Vec<(String, String)>, FirmError> {
        let h = self.handle(id)?;
        Ok(h.db.read_blocking(|r| r.profile())?)
    }

    /// Closes firms unused for longer than the idle period.
    pub fn reap_idle(&self) -> usize {
        let idle_ms = self.idle.as_millis() as u64;
        let victims: Vec<Arc<FirmHandle>> = {
            let mut open = lock(&self.open);
            let ids: Vec<FirmId> = open
                .iter()
                .filter(|(_, h)| Arc::strong_count(h) == 1 && h.db.idle_ms() >= idle_ms)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| open.remove(id)).collect()
        };
        let n = victims.len();
        for h in victims {
            match Arc::try_unwrap(h) {
                Ok(handle) => handle.db.close(),
                Err(h) => {
                    lock(&self.open).insert(h.id.clone(), h);
                }
            }
        }
        n
    }

    pub fn open_count(&self) -> usize {
        lock(&self.open).len()
    }

    /// Closes every open firm (shutdown): queued writes finish first.
    pub fn close_all(&self) {
        let ids: Vec<FirmId> = lock(&self.open).keys().cloned().collect();
        for id in ids {
            self.evict(&id);
        }
    }
}

/// The appliance's Ed25519 checkpoint key: unwrapped from the registry, or
/// made on first start (random seed from the FIPS DRBG, wrapped under the
/// master key like every firm key).
/// The appliance's key for `purpose` (the checkpoint signing seed, the
/// system log's audit key), created and wrapped under the master key on
/// first start.
fn load_or_create_appliance_key(
    registry: &Registry,
    ring: &Keyring,
    purpose: Purpose,
) -> Result<SecretKey, FirmError> {
    use crate::store::registry::APPLIANCE;
    Ok(match registry.appliance_key(purpose.as_str())? {
        Some(w) => ring.unwrap(APPLIANCE, purpose, w.version, &w.wrapped)?,
        None => {
            let key = SecretKey::random()?;
            registry.insert_appliance_key(&WrappedKey {
                firm_id: APPLIANCE.to_owned(),
                purpose: purpose.as_str().to_owned(),
                version: 1,
                state: "active".to_owned(),
                wrapped: ring.wrap(APPLIANCE, purpose, 1, &key)?,
                created_at: crate::clock::rfc3339(time::OffsetDateTime::now_utc()),
            })?;
            key
        }
    })
}

fn validate_name(name: &str) -> Result<&str, FirmError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(FirmError::InvalidName("empty".to_owned()));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(FirmError::InvalidName(format!(
            "longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(FirmError::InvalidName(
            "contains control characters".to_owned(),
        ));
    }
    if name.chars().any(crate::ids::is_invisible_format) {
        return Err(FirmError::InvalidName(
            "contains bidirectional or invisible formatting characters".to_owned(),
        ));
    }
    Ok(name)
}

fn remove_db_files(path: &Path) -> std::io::Result<()> {
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
