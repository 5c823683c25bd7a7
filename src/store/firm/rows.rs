//! The rows a firm database stores, as the services see them.

/// An API key's stored form (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub mac: Vec<u8>,
    pub allow: String,
    pub deny: String,
    pub created_at: String,
    pub created_by: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// To the minute: refreshed at most once a minute per key.
    pub last_used_at: Option<String>,
    /// The key that replaced this one by rotation.
    pub replaced_by: Option<String>,
}

/// A secret as stored: its value only as ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub version: u32,
    pub ciphertext: Vec<u8>,
    pub fingerprint: String,
    pub created_at: String,
    pub rotated_at: Option<String>,
}

impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

pub(super) fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretRow> {
    Ok(SecretRow {
        name: r.get(0)?,
        version: r.get(1)?,
        ciphertext: r.get(2)?,
        fingerprint: r.get(3)?,
        created_at: r.get(4)?,
        rotated_at: r.get(5)?,
    })
}

pub(super) const SECRET_COLUMNS: &str =
    "name, version, ciphertext, fingerprint, created_at, rotated_at";

/// A record as stored: non-sensitive fields as JSON text, sensitive ones
/// sealed (an envelope over their JSON).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordRow {
    pub collection: String,
    pub id: String,
    pub version: u32,
    pub clear: String,
    pub sealed: Option<Vec<u8>>,
    pub created_at: String,
    pub updated_at: String,
    /// The data subjects whose keys seal `sealed` (ids, outermost layer
    /// first, comma-separated); None when the firm's data key seals it.
    pub subjects: Option<String>,
    /// Read with the row, not stored in it: each of `subjects`' keys
    /// (id, pepper slot, sealed half under the data key).
    pub subject_keys: Vec<(String, u64, Vec<u8>)>,
}

impl std::fmt::Debug for RecordRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordRow")
            .field("collection", &self.collection)
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

pub(super) const RECORD_COLUMNS: &str =
    "collection, id, version, clear, sealed, created_at, updated_at, subjects";

pub(super) fn record_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    Ok(RecordRow {
        collection: r.get(0)?,
        id: r.get(1)?,
        version: r.get(2)?,
        clear: r.get(3)?,
        sealed: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        subjects: r.get(7)?,
        subject_keys: Vec::new(),
    })
}

pub(super) const API_KEY_COLUMNS: &str = "id, name, role, mac, allow, deny, created_at, created_by, \
     expires_at, revoked_at, last_used_at, replaced_by";

pub(super) fn api_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        mac: r.get(3)?,
        allow: r.get(4)?,
        deny: r.get(5)?,
        created_at: r.get(6)?,
        created_by: r.get(7)?,
        expires_at: r.get(8)?,
        revoked_at: r.get(9)?,
        last_used_at: r.get(10)?,
        replaced_by: r.get(11)?,
    })
}

/// A record's sealed fields as re-encryption sees them: collection, id,
/// record version, envelope.
pub type SealedRecord = (String, String, u32, Vec<u8>);
