//! Deletion certificates: a signed note (C2SP, the appliance key, like the
//! checkpoints) stating what an erasure removed, when, by whom, and the
//! firm's audit tree size and root right after it, so the certificate is
//! provable against every later checkpoint by a consistency proof.
//!
//! ```text
//! strongroom/erasure/v1
//! {"format":"strongroom-erasure/1","id":…,"appliance_id":…,"firm_id":…,
//!  "erased_at":…,"by":…,"subjects":[{"salt":…,"sha256":…}],
//!  "deleted":{"<collection>":n},"records_deleted":n,"subject_keys_destroyed":n,
//!  "audit":{"origin":…,"size":n,"root":"<hex>"}}
//!
//! — <key name> <signature>
//! ```
//!
//! A subject appears only as a salted hash: `sha256` is the hex SHA-256 of
//! the ASCII of `salt` (32 hex digits, fresh per certificate) followed by
//! the identifier's UTF-8, so the person can check a certificate concerns
//! them (`printf '%s%s' SALT VALUE | sha256sum`) while nobody can link two
//! certificates or test guesses without a certificate's salt.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::{hex, random_array, sha256};

/// The first line of a certificate's note text.
pub const HEADER: &str = "strongroom/erasure/v1";
pub const FORMAT: &str = "strongroom-erasure/1";

/// An identifier as a certificate carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SaltedHash {
    /// 16 random bytes, hex.
    pub salt: String,
    /// hex SHA-256(salt as ASCII || identifier as UTF-8).
    pub sha256: String,
}

impl SaltedHash {
    pub fn of(identifier: &str) -> Result<Self, crate::crypto::CryptoError> {
        let salt = hex(&random_array::<16>()?);
        let sha256 = hex(&sha256(
            [salt.as_bytes(), identifier.as_bytes()].concat().as_slice(),
        ));
        Ok(Self { salt, sha256 })
    }

    /// Whether this is a hash of `identifier`.
    pub fn names(&self, identifier: &str) -> bool {
        hex(&sha256(
            [self.salt.as_bytes(), identifier.as_bytes()]
                .concat()
                .as_slice(),
        )) == self.sha256
    }
}

/// The audit tree right after the erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TreeHead {
    /// The checkpoint origin of the firm's log.
    pub origin: String,
    pub size: u64,
    /// hex SHA-256 RFC 9162 root.
    pub root: String,
}

/// What a certificate states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Statement {
    pub format: String,
    pub id: String,
    pub appliance_id: String,
    pub firm_id: String,
    pub erased_at: String,
    /// The actor that asked (an API key, a user, or the restore that
    /// re-applied it).
    pub by: String,
    pub subjects: Vec<SaltedHash>,
    /// Records deleted, by collection.
    pub deleted: BTreeMap<String, u64>,
    pub records_deleted: u64,
    pub subject_keys_destroyed: u64,
    pub audit: TreeHead,
    /// Carried out again from the ledger (a restore of an older snapshot,
    /// or a start after a crash): `subjects` is then empty, since the
    /// ledger never holds an identifier or its hash.
    #[serde(default)]
    pub reapplied: bool,
}

impl Statement {
    /// The note text (to sign): the header line, then one line of JSON.
    pub fn text(&self) -> String {
        format!(
            "{HEADER}\n{}\n",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// Parses a note text made by `text` (after its signature checked out).
    pub fn parse(text: &str) -> Option<Self> {
        let body = text.strip_prefix(HEADER)?.strip_prefix('\n')?;
        let line = body.strip_suffix('\n')?;
        if line.contains('\n') {
            return None;
        }
        let s: Self = serde_json::from_str(line).ok()?;
        (s.format == FORMAT).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salted_hashes_name_only_their_identifier() {
        let a = SaltedHash::of("alice@example.com").unwrap();
        let b = SaltedHash::of("alice@example.com").unwrap();
        assert_ne!(a, b, "a fresh salt each time: certificates do not link");
        assert!(a.names("alice@example.com") && b.names("alice@example.com"));
        assert!(!a.names("bob@example.com"));
        assert_eq!(a.salt.len(), 32);
        // The documented recipe: sha256 over the salt's hex text, then the value.
        assert_eq!(
            a.sha256,
            hex(&sha256(format!("{}alice@example.com", a.salt).as_bytes()))
        );
    }

    #[test]
    fn text_round_trips_and_refuses_other_notes() {
        let s = Statement {
            format: FORMAT.to_owned(),
            id: "era_1".to_owned(),
            appliance_id: "app".to_owned(),
            firm_id: "frm".to_owned(),
            erased_at: "2026-01-01T00:00:00Z".to_owned(),
            by: "key:k".to_owned(),
            subjects: vec![SaltedHash::of("x").unwrap()],
            deleted: BTreeMap::from([("clients".to_owned(), 2)]),
            records_deleted: 2,
            subject_keys_destroyed: 1,
            reapplied: false,
            audit: TreeHead {
                origin: "strongroom/app/frm".to_owned(),
                size: 9,
                root: "00".repeat(32),
            },
        };
        assert_eq!(Statement::parse(&s.text()), Some(s.clone()));
        assert!(Statement::parse("strongroom/backup/v1\n{}\n").is_none());
        assert!(Statement::parse(&s.text().replace(FORMAT, "other/1")).is_none());
    }
}
