//! A snapshot's manifest: what it holds, signed by the appliance key.
//!
//! The file `snapshots/<id>.note` is a signed note (the C2SP format of our
//! checkpoints, same key and key name): the text is the line
//! `strongroom/backup/v1`, then the manifest as one line of JSON. The JSON
//! names the snapshot's own id, so a manifest renamed or copied over
//! another snapshot's is caught.

use serde::{Deserialize, Serialize};

use super::BackupError;
use super::repo::FORMAT;
use crate::audit::note;

const HEADER: &str = "strongroom/backup/v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub id: String,
    pub appliance_id: String,
    /// The strongroomd version that took it.
    pub version: String,
    pub started_at: String,
    pub finished_at: String,
    pub files: Vec<FileEntry>,
    pub firms: Vec<FirmEntry>,
    /// The system log (in the registry) at the snapshot.
    pub system_log: TreeHead,
}

/// One file of the state directory: the concatenation of its chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the state directory: `registry.db`, `firms/<id>.db`,
    /// `firms/<id>.db-wal`.
    pub path: String,
    pub size: u64,
    /// The chunk list's id (hex).
    pub list: String,
    pub chunks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmEntry {
    pub id: String,
    pub state: String,
    pub audit: TreeHead,
    /// How long the firm's writer waited for the image (microseconds).
    pub writer_pause_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeHead {
    pub size: u64,
    /// Hex SHA-256 Merkle root (RFC 9162).
    pub root: String,
}

/// `YYYYMMDDTHHMMSS.mmmZ-<8 hex>`: sorts by time.
pub fn valid_snapshot_id(id: &str) -> bool {
    let b = id.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 29
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'.'
        && digits(16..19)
        && b[19..21] == *b"Z-"
        && b[21..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Whether `path` is a file a snapshot may hold (nothing outside the state
/// directory, nothing but the registry and firm databases).
pub fn valid_path(path: &str) -> bool {
    if path == "registry.db" {
        return true;
    }
    let Some(name) = path.strip_prefix("firms/") else {
        return false;
    };
    let stem = name
        .strip_suffix(".db-wal")
        .or_else(|| name.strip_suffix(".db"));
    stem.and_then(crate::ids::FirmId::parse).is_some()
}

impl Manifest {
    /// The note text to sign.
    pub fn text(&self) -> String {
        format!(
            "{HEADER}\n{}\n",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// Parses a manifest note's text (already verified, or to be).
    pub fn parse_text(id: &str, text: &str) -> Result<Self, BackupError> {
        let bad = |why: &str| BackupError::Damaged(format!("snapshot {id}'s manifest {why}"));
        let body = text
            .strip_prefix(HEADER)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or_else(|| bad("is not a strongroom backup manifest"))?;
        let m: Manifest =
            serde_json::from_str(body.trim_end_matches('\n')).map_err(|_| bad("is malformed"))?;
        if m.format != FORMAT {
            return Err(bad("has an unknown format"));
        }
        if m.id != id {
            return Err(bad(&format!(
                "names snapshot {}: it was moved or swapped",
                m.id
            )));
        }
        if let Some(f) = m.files.iter().find(|f| !valid_path(&f.path)) {
            return Err(bad(&format!(
                "names a file outside the state: {:?}",
                f.path
            )));
        }
        Ok(m)
    }

    /// Opens a signed manifest note with `verifier_key`.
    pub fn open(id: &str, signed: &str, verifier_key: &str) -> Result<Self, BackupError> {
        let v = note::parse_verifier_key(verifier_key)
            .map_err(|_| BackupError::Invalid("the verifier key is malformed".to_owned()))?;
        let text = note::open(signed, &v).map_err(|_| {
            BackupError::Damaged(format!(
                "snapshot {id}'s manifest signature does not verify with this appliance's key"
            ))
        })?;
        Self::parse_text(id, text)
    }

    /// Reads the manifest without checking its signature (to find what to
    /// restore before the key that checks it is available).
    pub fn peek(id: &str, signed: &str) -> Result<Self, BackupError> {
        let split = signed
            .rfind("\n\n")
            .ok_or_else(|| BackupError::Damaged(format!("snapshot {id}'s manifest is unsigned")))?;
        Self::parse_text(id, &signed[..split + 1])
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths_are_strict() {
        assert!(valid_snapshot_id("20261201T061500.000Z-0a1b2c3d"));
        assert!(!valid_snapshot_id("20261201T061500.000Z-0A1B2C3D"));
        assert!(!valid_snapshot_id("../../etc/passwd"));
        assert!(valid_path("registry.db"));
        assert!(valid_path("firms/frm_0123456789abcdef01234567.db"));
        assert!(valid_path("firms/frm_0123456789abcdef01234567.db-wal"));
        assert!(!valid_path("firms/../registry.db"));
        assert!(!valid_path("tls/key.pem"));
        assert!(!valid_path("/etc/shadow"));
    }

    #[test]
    fn a_manifest_under_another_id_is_refused() {
        let m = Manifest {
            format: FORMAT.to_owned(),
            id: "20261201T061500.000Z-0a1b2c3d".to_owned(),
            appliance_id: "a".to_owned(),
            version: "0".to_owned(),
            started_at: String::new(),
            finished_at: String::new(),
            files: vec![],
            firms: vec![],
            system_log: TreeHead {
                size: 0,
                root: String::new(),
            },
        };
        let text = m.text();
        assert!(Manifest::parse_text("20261201T061500.000Z-0a1b2c3d", &text).is_ok());
        let e = Manifest::parse_text("20261201T070000.000Z-0a1b2c3d", &text).unwrap_err();
        assert!(e.to_string().contains("swapped"), "{e}");
    }
}
