//! Checks an evidence bundle offline, given the appliance's verifier key:
//! the signed manifest note, the manifest's SHA-256 and Merkle root, every
//! artefact's SHA-256 (a changed byte names its file), no file missing or
//! added, the firm's checkpoint signed by the same key and named by the
//! note, and the consistency proof from the previous bundle's checkpoint.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;
use serde_json::Value;

use super::{ARTEFACTS, merkle_root};
use crate::audit::{merkle, note};
use crate::crypto::{hex, sha256};

/// What a bundle that verifies says.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub firm: String,
    pub log_size: u64,
    pub log_root: String,
    pub created: String,
    pub artefacts: usize,
    /// The previous bundle's log size this one is proved consistent with
    /// (0: none), and that log's root (hex; empty: none).
    pub consistent_from: u64,
    pub consistent_from_root: String,
}

/// The largest bundle member read (a bundle is small JSON and notes).
const MAX_MEMBER: u64 = 64 * 1024 * 1024;

fn unhex32(s: &str) -> Option<[u8; 32]> {
    crate::backup::repo::parse_id(s)
}

/// Reads the tar's regular files; refuses anything else.
fn members(bundle: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(bundle);
    for e in a.entries().map_err(|e| format!("not a tar file: {e}"))? {
        let mut e = e.map_err(|e| format!("not a tar file: {e}"))?;
        if e.header().entry_type() != tar::EntryType::Regular {
            return Err("the bundle holds something other than plain files".into());
        }
        let name = e
            .path()
            .map_err(|_| "a member name is not a path".to_owned())?
            .to_string_lossy()
            .into_owned();
        if e.size() > MAX_MEMBER {
            return Err(format!("{name} is too large"));
        }
        let mut b = Vec::new();
        e.read_to_end(&mut b)
            .map_err(|e| format!("{name}: truncated ({e})"))?;
        if out.insert(name.clone(), b).is_some() {
            return Err(format!("{name} appears twice"));
        }
    }
    Ok(out)
}

/// Verifies `bundle` against `verifier_key` (`name+hash+base64`).
pub fn verify(bundle: &[u8], verifier_key: &str) -> Result<Verified, String> {
    let key = note::parse_verifier_key(verifier_key)
        .map_err(|_| "the verifier key is malformed".to_owned())?;
    let mut files = members(bundle)?;
    let signed = files
        .remove("MANIFEST.note")
        .ok_or("MANIFEST.note is missing")?;
    let signed = String::from_utf8(signed).map_err(|_| "MANIFEST.note is not text")?;
    let text = note::open(&signed, &key)
        .map_err(|_| "MANIFEST.note: the signature does not verify with this key".to_owned())?;
    let lines: Vec<&str> = text.lines().collect();
    let bad_note = || "MANIFEST.note: not an evidence note".to_owned();
    if lines.len() != 6 {
        return Err(bad_note());
    }
    let firm = lines[0]
        .split_once("/evidence/")
        .map(|(_, f)| f.to_owned())
        .filter(|_| lines[0].starts_with("strongroom/"))
        .ok_or_else(bad_note)?;
    let count: usize = lines[1].parse().map_err(|_| bad_note())?;
    let root = crate::crypto::sign::unbase64(lines[2]).ok_or_else(bad_note)?;
    let manifest_sha = lines[3]
        .strip_prefix("manifest-sha256 ")
        .ok_or_else(bad_note)?;
    let (log_size, log_root) = lines[4]
        .strip_prefix("log ")
        .and_then(|l| l.split_once(' '))
        .ok_or_else(bad_note)?;
    let log_size: u64 = log_size.parse().map_err(|_| bad_note())?;
    let log_root = crate::crypto::sign::unbase64(log_root).ok_or_else(bad_note)?;
    let created = lines[5].strip_prefix("created ").ok_or_else(bad_note)?;

    let manifest = files
        .remove("MANIFEST.sha256")
        .ok_or("MANIFEST.sha256 is missing")?;
    if hex(&sha256(&manifest)) != manifest_sha {
        return Err("MANIFEST.sha256 does not match its hash in the signed note".into());
    }
    let manifest = String::from_utf8(manifest).map_err(|_| "MANIFEST.sha256 is not text")?;
    let leaves: Vec<Vec<u8>> = manifest.lines().map(|l| l.as_bytes().to_vec()).collect();
    if leaves.len() != count || merkle_root(&leaves)[..] != root[..] {
        return Err("MANIFEST.sha256 does not match the Merkle root in the signed note".into());
    }
    let mut listed = BTreeMap::new();
    for line in manifest.lines() {
        let (digest, name) = line
            .split_once("  ")
            .ok_or("MANIFEST.sha256 has a malformed line")?;
        listed.insert(name.to_owned(), digest.to_owned());
    }
    // Every artefact is listed, present and unchanged; nothing else is there.
    for name in ARTEFACTS {
        let digest = listed
            .get(*name)
            .ok_or_else(|| format!("{name} is not in the manifest"))?;
        let bytes = files
            .get(*name)
            .ok_or_else(|| format!("{name} is missing from the bundle"))?;
        if hex(&sha256(bytes)) != *digest {
            return Err(format!(
                "{name}: its SHA-256 does not match the manifest (changed)"
            ));
        }
    }
    if let Some(extra) = files.keys().find(|n| !ARTEFACTS.contains(&n.as_str())) {
        return Err(format!("{extra} is in the bundle but not an artefact"));
    }
    if listed.len() != ARTEFACTS.len() {
        return Err("the manifest lists files that are not artefacts".into());
    }

    // The firm's checkpoint: same key, the tree the note names.
    let cp = String::from_utf8(files["checkpoint.note"].clone())
        .map_err(|_| "checkpoint.note is not text")?;
    let cp_text = note::open(&cp, &key)
        .map_err(|_| "checkpoint.note: the signature does not verify with this key".to_owned())?;
    let (origin, size, cp_root) =
        note::parse_checkpoint(cp_text).map_err(|_| "checkpoint.note does not parse")?;
    if !origin.ends_with(&format!("/{firm}")) || size != log_size || cp_root[..] != log_root[..] {
        return Err("checkpoint.note is not the log state the signed note names".into());
    }

    // Consistency with the previous bundle's checkpoint.
    let c: Value = serde_json::from_slice(&files["consistency.json"])
        .map_err(|_| "consistency.json is not JSON")?;
    let from = c["from_size"]
        .as_u64()
        .ok_or("consistency.json: no from_size")?;
    if c["to_size"].as_u64() != Some(size) {
        return Err("consistency.json does not end at the checkpoint".into());
    }
    let mut from_root = String::new();
    if from == size && from > 0 {
        from_root = hex(&cp_root);
    }
    if from > 0 && from < size {
        let old = c["from_root"]
            .as_str()
            .and_then(unhex32)
            .ok_or("consistency.json: malformed from_root")?;
        let proof: Option<Vec<merkle::Hash>> = c["proof"].as_array().map(|a| {
            a.iter()
                .filter_map(|h| h.as_str().and_then(unhex32))
                .collect()
        });
        let proof = proof.ok_or("consistency.json: malformed proof")?;
        if !merkle::verify_consistency(from, size, &old, &cp_root, &proof) {
            return Err(format!(
                "consistency.json: the log of {from} entries is not a prefix of this one"
            ));
        }
        from_root = hex(&old);
    }
    Ok(Verified {
        firm,
        log_size: size,
        log_root: hex(&cp_root),
        created: created.to_owned(),
        artefacts: ARTEFACTS.len(),
        consistent_from: from,
        consistent_from_root: from_root,
    })
}
