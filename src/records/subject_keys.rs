//! Per-subject keys. A record that names data subjects (values of its
//! collection's `subject` fields) has its sensitive fields sealed under
//! each named subject's own key, one layer per subject, and each subject
//! key is sealed under the firm's data key. Erasing a subject destroys its
//! key: every copy of what it sealed (older pages of the file, WAL frames)
//! stops opening at once, whichever record it was in.
//!
//! A subject is known everywhere by its id: the first 16 bytes of
//! HMAC-SHA256 under the firm's auth key over the identifier, in hex. The
//! identifier itself is stored only where the records hold it.
//!
//! Layers: with subjects `[a, b]` the envelope is
//! `seal(K_a, aad|subject|a, seal(K_b, aad|subject|b, fields))`, each an
//! envelope of version 0 (a subject key has one version); the record row
//! lists `a,b`. Opening needs every listed key, so destroying any one
//! makes the fields unreadable.

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::schema::Schema;
use crate::crypto::envelope::{self, EnvelopeError};
use crate::crypto::secret::SecretKey;
use crate::firms::pool::FirmHandle;
use crate::firms::{DataKeys, FirmError};
use crate::store::StoreError;
use crate::store::firm::{RecordRow, WriteTx};

/// The envelope version written for a subject-key layer.
const LAYER_VERSION: u32 = 0;

/// AAD of a subject key's wrapping under the data key.
pub(crate) fn subject_key_aad(firm: &str, subject: &str) -> Vec<u8> {
    format!("strongroom/subject-key/v1|{firm}|{subject}").into_bytes()
}

fn layer_aad(record_aad: &[u8], subject: &str) -> Vec<u8> {
    [record_aad, b"|subject|", subject.as_bytes()].concat()
}

/// The id a subject is known by in this firm (never the identifier).
pub(crate) fn subject_id(h: &FirmHandle, identifier: &str) -> String {
    crate::crypto::hex(
        &crate::crypto::keyring::credential_mac(
            &h.auth_key,
            "subject",
            h.id.as_str(),
            identifier.as_bytes(),
        )[..16],
    )
}

/// The identifier a subject field's value names: a string as it is, a
/// number in its JSON spelling; anything else names no one.
pub(crate) fn identifier(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The ids of the subjects a record names, in the schema's field order,
/// each once. `parts` hold the record's fields (clear, and sensitive).
pub(crate) fn subjects_named(
    h: &FirmHandle,
    schema: &Schema,
    parts: &[&Map<String, Value>],
) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for (name, f) in &schema.fields {
        if !f.subject {
            continue;
        }
        if let Some(v) = parts.iter().find_map(|m| m.get(name)).and_then(identifier) {
            let id = subject_id(h, &Zeroizing::new(v));
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// A subject's key: HMAC-SHA256 keyed by its pepper (slot `slot` of the
/// firm's pepper file) over the label and its half sealed in the database.
/// Either half alone is useless; an erased pepper leaves no key.
fn subject_key(
    h: &FirmHandle,
    keys: &DataKeys,
    subject: &str,
    slot: u64,
    wrapped: &[u8],
) -> Option<SecretKey> {
    let firm = h.id.as_str();
    let half = Zeroizing::new(keys.open(&subject_key_aad(firm, subject), wrapped).ok()?);
    let pepper = h.peppers.read(slot).ok()??;
    let bytes = Zeroizing::new(crate::crypto::hmac_sha256(
        &pepper[..],
        &[&subject_key_aad(firm, subject), &half],
    ));
    Some(SecretKey::from_bytes(*bytes))
}

/// Seals a record's sensitive fields under its subjects' keys (`subjects`
/// not empty), making a key for a subject that has none yet. Runs inside
/// the write transaction, so the key and the record commit together.
pub(crate) fn seal_for_subjects(
    h: &FirmHandle,
    tx: &WriteTx<'_>,
    record_aad: &[u8],
    plain: &[u8],
    subjects: &[String],
    now: &str,
) -> Result<Vec<u8>, FirmError> {
    let keys = h.data_keys();
    let firm = h.id.as_str();
    let mut sealed = Zeroizing::new(plain.to_vec());
    for s in subjects.iter().rev() {
        let (slot, wrapped) = match tx.read().subject_key(s)? {
            Some(k) => k,
            None => {
                // The pepper is durable before the database names its slot.
                let slot = tx.next_subject_slot()?;
                h.peppers.ensure(slot).map_err(|source| StoreError::Io {
                    path: h.peppers.path().display().to_string(),
                    source,
                })?;
                let half = SecretKey::random().map_err(|_| FirmError::Seal)?;
                let w = keys
                    .seal(&subject_key_aad(firm, s), half.expose())
                    .map_err(|_| FirmError::Seal)?;
                tx.put_subject_key(s, slot, &w, now)?;
                (slot, w)
            }
        };
        let key = subject_key(h, &keys, s, slot, &wrapped).ok_or(FirmError::Seal)?;
        let next = envelope::seal(&key, LAYER_VERSION, &layer_aad(record_aad, s), &sealed)
            .map_err(|_| FirmError::Seal)?;
        sealed = Zeroizing::new(next);
    }
    Ok(sealed.to_vec())
}

/// Opens a record's sealed fields: under the data key, or through the keys
/// of the subjects the row lists (read with the row). A destroyed subject
/// key fails like a wrong key.
pub(crate) fn open_sealed(
    h: &FirmHandle,
    keys: &DataKeys,
    row: &RecordRow,
    record_aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let Some(list) = &row.subjects else {
        return keys.open(record_aad, sealed).map(Zeroizing::new);
    };
    let mut inner = Zeroizing::new(sealed.to_vec());
    for s in list.split(',') {
        let (slot, wrapped) = row
            .subject_keys
            .iter()
            .find(|(id, _, _)| id == s)
            .map(|(_, slot, w)| (*slot, w))
            .ok_or(EnvelopeError::Auth)?;
        let key = subject_key(h, keys, s, slot, wrapped).ok_or(EnvelopeError::Auth)?;
        inner = Zeroizing::new(envelope::open(&key, &layer_aad(record_aad, s), &inner)?);
    }
    Ok(inner)
}
