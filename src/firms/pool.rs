//! The firm pool: every firm's state, and its database and keys while it
//! is open. Firms open lazily on first use and close when idle; a firm under
//! maintenance (a rekey) or deleted is refused here. Every capability
//! service reaches a firm's database through [`Pool::handle`].
//!
//! All methods here block (they touch SQLite and the disk); async callers run
//! them on a blocking lane.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::datakeys::DataKeys;
use super::{FirmError, FirmState, cache, lock};
use crate::audit::trail::{Outcome, SystemSeal};
use crate::clock::{Clock, rfc3339};
use crate::crypto::keyring::{Keyring, MasterKey, Purpose, SqlcipherKey};
use crate::crypto::secret::SecretKey;
use crate::crypto::sign::SigningKey;
use crate::crypto::{hex, random_array};
use crate::ids::FirmId;
use crate::store::StoreError;
use crate::store::firm::FirmDb;
use crate::store::registry::{FirmRow, Registry, WrappedKey};

/// An open firm: its database and the keys the daemon needs while it is open.
#[derive(Debug)]
pub struct FirmHandle {
    pub id: FirmId,
    pub(crate) db: FirmDb,
    pub(crate) auth_key: SecretKey,
    /// Half of each data subject's key, outside the database (erasure).
    pub(crate) peppers: crate::store::peppers::Peppers,
    /// Seals audit payloads, and its version (the envelope header's).
    pub(crate) audit_key: SecretKey,
    pub(crate) audit_key_version: u32,
    /// Seal secrets and sensitive record fields: the active version and the
    /// retired ones a rotation has not finished with. Swapped whole, so a
    /// reader's snapshot never changes under it.
    pub(crate) data: RwLock<Arc<DataKeys>>,
    /// API key rows by id, for authentication without a database read.
    pub(crate) key_cache: cache::GenCache<crate::store::firm::ApiKeyRow>,
    /// Sessions (with their users) by session id, for the same reason.
    pub(crate) sessions: cache::GenCache<Arc<crate::store::firm::SessionAuth>>,
    /// Collection schemas by name.
    pub(crate) schemas: cache::GenCache<Arc<crate::records::schema::Schema>>,
    /// When the pool last handed this firm out (ms on the pool's clock).
    pub(crate) last_used_ms: AtomicU64,
    /// What periodic jobs last found, as of a count of audit entries.
    pub(crate) seen: Seen,
    /// How many times the pool handed this firm out (see [`Pool::visit`]).
    pub(crate) taken: AtomicU64,
}

/// Where periodic jobs last looked at a firm and found nothing to do: until
/// the count moves, looking again (a read, which reopens a parked firm's
/// connection) would find the same.
#[derive(Debug)]
pub(crate) struct Seen {
    /// The checkpoint signer, at a count of audit entries (`FirmDb::audit_appends`).
    pub(crate) checkpoint: AtomicU64,
    /// Webhook discovery, at the same count (an endpoint is made by an
    /// audited change).
    pub(crate) webhooks: AtomicU64,
}

impl Default for Seen {
    fn default() -> Self {
        // Never looked at yet.
        Self {
            checkpoint: AtomicU64::new(u64::MAX),
            webhooks: AtomicU64::new(u64::MAX),
        }
    }
}

impl FirmHandle {
    /// A snapshot of the data keys. Take it *before* reading sealed rows.
    pub fn data_keys(&self) -> Arc<DataKeys> {
        match self.data.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn set_data_keys(&self, keys: DataKeys) {
        match self.data.write() {
            Ok(mut g) => *g = Arc::new(keys),
            Err(p) => *p.into_inner() = Arc::new(keys),
        }
    }
}

/// The appliance's own keys, unwrapped at start: the checkpoint signing
/// key and the system log's seal.
pub struct ApplianceKeys {
    pub signer: Arc<SigningKey>,
    pub signer_name: String,
    pub seal: Arc<SystemSeal>,
}

#[derive(Debug)]
pub struct Pool {
    pub(crate) registry: Registry,
    pub(crate) keyring: RwLock<Arc<Keyring>>,
    dir: PathBuf,
    pub(crate) open: Mutex<HashMap<FirmId, Arc<FirmHandle>>>,
    states: RwLock<HashMap<FirmId, FirmState>>,
    pub(crate) maintenance: Mutex<HashSet<FirmId>>,
    /// Serializes operations that change the registry's keys (create, delete,
    /// rekey, master rotation), so a rotation never misses a key.
    pub(crate) admin_ops: Mutex<()>,
    pub(crate) clock: Arc<dyn Clock>,
    idle: Duration,
    pub(crate) generation: AtomicU64,
    appliance_id: String,
    /// Records recoveries (an interrupted rekey completed at open) in the
    /// system log.
    seal: Arc<SystemSeal>,
    /// The monotonic origin of `FirmHandle::last_used_ms`.
    epoch: Instant,
    /// Bumped (under the `open` lock) whenever a firm's in-memory keys
    /// change, so a handle opened meanwhile from older registry rows is
    /// discarded instead of cached.
    pub(crate) key_epoch: AtomicU64,
}

impl Pool {
    /// Opens the registry under `state_dir` with keys derived from `master`.
    /// A wrong master key fails here, before anything is written.
    pub fn open(
        state_dir: &Path,
        master: &MasterKey,
        clock: Arc<dyn Clock>,
        idle: Duration,
    ) -> Result<(Self, ApplianceKeys), FirmError> {
        Self::open_with_ring(state_dir, Arc::new(master.derive()?), clock, idle)
    }

    /// [`Pool::open`] with the keys already derived from the master key
    /// (a backup drill opens its scratch copy with the daemon's own).
    pub fn open_with_ring(
        state_dir: &Path,
        ring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
        idle: Duration,
    ) -> Result<(Self, ApplianceKeys), FirmError> {
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
        let made_at = rfc3339(clock.now());
        let signer = Arc::new(SigningKey::from_seed(
            &super::load_or_create_appliance_key(&registry, &ring, Purpose::Signing, &made_at)?,
        )?);
        let seal = Arc::new(SystemSeal::new(
            super::load_or_create_appliance_key(&registry, &ring, Purpose::Audit, &made_at)?,
            clock.clone(),
        ));
        let mut states = HashMap::new();
        for row in registry.firms()? {
            if let Some(id) = FirmId::parse(&row.id) {
                states.insert(id, FirmState::parse(&row.state));
            }
        }
        let keys = ApplianceKeys {
            signer,
            signer_name: format!("strongroom/{appliance_id}"),
            seal: seal.clone(),
        };
        let pool = Self {
            registry,
            keyring: RwLock::new(ring),
            dir,
            open: Mutex::new(HashMap::new()),
            states: RwLock::new(states),
            maintenance: Mutex::new(HashSet::new()),
            admin_ops: Mutex::new(()),
            clock: clock.clone(),
            idle,
            generation: AtomicU64::new(generation),
            appliance_id,
            seal,
            epoch: clock.monotonic(),
            key_epoch: AtomicU64::new(0),
        };
        pool.sweep_files();
        Ok((pool, keys))
    }

    /// Now, in the units of `FirmHandle::last_used_ms`.
    pub(crate) fn ms(&self) -> u64 {
        self.clock
            .monotonic()
            .duration_since(self.epoch)
            .as_millis() as u64
    }

    /// Marks a firm used now (idle close counts from here).
    fn touch(&self, h: &FirmHandle) {
        h.last_used_ms.store(self.ms(), Ordering::Relaxed);
        h.taken.fetch_add(1, Ordering::SeqCst);
    }

    fn idle_ms(&self, h: &FirmHandle) -> u64 {
        self.ms()
            .saturating_sub(h.last_used_ms.load(Ordering::Relaxed))
    }

    /// Takes the lock that serializes changes to the registry's keys.
    pub(crate) fn admin_ops(&self) -> MutexGuard<'_, ()> {
        lock(&self.admin_ops)
    }

    pub fn appliance_id(&self) -> &str {
        &self.appliance_id
    }

    pub(crate) fn ring(&self) -> Arc<Keyring> {
        match self.keyring.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn now(&self) -> String {
        rfc3339(self.clock.now())
    }

    pub(crate) fn path(&self, id: &FirmId) -> PathBuf {
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

    pub(crate) fn set_state_cache(&self, id: &FirmId, state: FirmState) {
        match self.states.write() {
            Ok(mut g) => g.insert(id.clone(), state),
            Err(p) => p.into_inner().insert(id.clone(), state),
        };
    }

    pub(crate) fn unwrap_key(&self, id: &FirmId, k: &WrappedKey) -> Result<SecretKey, FirmError> {
        let purpose = Purpose::parse(&k.purpose)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown key purpose {}", k.purpose)))?;
        Ok(self
            .ring()
            .unwrap(id.as_str(), purpose, k.version, &k.wrapped)?)
    }

    pub(crate) fn active_key(
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

    /// The open handle for a firm, opening its database on first use.
    pub fn handle(&self, id: &FirmId) -> Result<Arc<FirmHandle>, FirmError> {
        self.take(id).map(|(h, _)| h)
    }

    /// [`Pool::handle`], and whether this call opened the firm.
    fn take(&self, id: &FirmId) -> Result<(Arc<FirmHandle>, bool), FirmError> {
        match self.state(id) {
            None | Some(FirmState::Deleted) => return Err(FirmError::NotFound),
            Some(_) => {}
        }
        if lock(&self.maintenance).contains(id) {
            return Err(FirmError::Maintenance);
        }
        loop {
            if let Some(h) = lock(&self.open).get(id) {
                self.touch(h);
                return Ok((h.clone(), false));
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
                    self.touch(&h);
                    return Ok((h, false));
                }
                continue;
            }
            open.insert(id.clone(), handle.clone());
            return Ok((handle, true));
        }
    }

    /// Opens a firm's database with its keys from the registry.
    pub(crate) fn open_handle(&self, id: &FirmId) -> Result<FirmHandle, FirmError> {
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
        let seen = Seen::default();
        // What the periodic jobs would otherwise read once per open firm,
        // read now while its connections are open (a parked firm's would
        // have to open again just for that).
        let audited = db.audit_appends();
        if let Ok((unsigned, endpoints)) =
            db.read_short(|r| Ok((r.audit_needs_checkpoint()?, r.webhook_endpoints()?)))
        {
            if !unsigned {
                seen.checkpoint.store(audited, Ordering::SeqCst);
            }
            if endpoints.is_empty() {
                seen.webhooks.store(audited, Ordering::SeqCst);
            }
        }
        Ok(FirmHandle {
            id: id.clone(),
            db,
            peppers: crate::store::peppers::Peppers::beside(&self.path(id)),
            auth_key,
            audit_key,
            audit_key_version,
            data: RwLock::new(Arc::new(DataKeys::new(data_active, data))),
            key_cache: Default::default(),
            sessions: Default::default(),
            schemas: Default::default(),
            last_used_ms: AtomicU64::new(self.ms()),
            seen,
            taken: AtomicU64::new(0),
        })
    }

    /// The active database key, finishing an interrupted rekey if one left a
    /// pending version behind.
    pub(crate) fn resolve_db_key(
        &self,
        id: &FirmId,
        keys: &[WrappedKey],
    ) -> Result<SqlcipherKey, FirmError> {
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
            let e = self.seal.entry_for(
                "system:recovery",
                "",
                "firm.rekey",
                id.as_str(),
                Outcome::Success,
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
    pub(crate) fn evict(&self, id: &FirmId) {
        let Some(mut h) = lock(&self.open).remove(id) else {
            return;
        };
        // clock: a real-time bound on waiting for other threads.
        #[allow(clippy::disallowed_methods)]
        let deadline = Instant::now() + Duration::from_secs(30); // clock: sub-second real-time wait
        loop {
            match Arc::try_unwrap(h) {
                Ok(handle) => {
                    handle.db.close();
                    return;
                }
                #[allow(clippy::disallowed_methods)]
                Err(again) if Instant::now() < deadline => {
                    // clock: sub-second real-time wait
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

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The firm's handle if it is open and usable, without blocking.
    pub(crate) fn cached_handle(&self, id: &FirmId) -> Option<Arc<FirmHandle>> {
        if !matches!(self.state(id), Some(FirmState::Active | FirmState::Frozen))
            || lock(&self.maintenance).contains(id)
        {
            return None;
        }
        let handle = lock(&self.open).get(id).cloned()?;
        self.touch(&handle);
        Some(handle)
    }

    /// Runs `f` on the firm's handle for a periodic job that visits every
    /// firm: a firm this visit opened closes again after, unless a request
    /// took it meanwhile, so such a job never leaves every firm open.
    pub(crate) fn visit<R>(
        &self,
        id: &FirmId,
        f: impl FnOnce(&Arc<FirmHandle>) -> Result<R, FirmError>,
    ) -> Result<R, FirmError> {
        let (h, opened) = self.take(id)?;
        let taken = h.taken.load(Ordering::SeqCst);
        let out = f(&h);
        let used_meanwhile = h.taken.load(Ordering::SeqCst) != taken;
        drop(h);
        if opened && !used_meanwhile {
            self.close_if_unused(id);
        }
        out
    }

    /// Closes a firm now if nothing else holds it (a backup opened it only
    /// to copy it); otherwise leaves it to the idle reaper. Never leaves two
    /// handles on one file: a held handle stays in the map.
    pub(crate) fn close_if_unused(&self, id: &FirmId) {
        let h = {
            let mut open = lock(&self.open);
            match open.get(id) {
                Some(h) if Arc::strong_count(h) == 1 => open.remove(id),
                _ => None,
            }
        };
        if let Some(h) = h {
            match Arc::try_unwrap(h) {
                Ok(handle) => handle.db.close(),
                Err(h) => {
                    lock(&self.open).insert(h.id.clone(), h);
                }
            }
        }
    }

    /// Closes firms unused for longer than the idle period.
    pub fn reap_idle(&self) -> usize {
        let idle_ms = self.idle.as_millis() as u64;
        let victims: Vec<Arc<FirmHandle>> = {
            let mut open = lock(&self.open);
            let ids: Vec<FirmId> = open
                .iter()
                .filter(|(_, h)| Arc::strong_count(h) == 1 && self.idle_ms(h) >= idle_ms)
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
