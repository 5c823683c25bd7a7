//! Evidence bundles for a firm's auditors: one tar file of plain artefacts
//! (JSON and signed notes), a `MANIFEST.sha256` in `sha256sum` format, and
//! `MANIFEST.note`, a checkpoint-format signed note by the appliance key over
//! the RFC 9162 Merkle root of the manifest's lines and the manifest's own
//! SHA-256. `verify.rs` checks one offline; so can `sha256sum -c` and any
//! C2SP signed-note verifier.

pub mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::audit::{AuditLog, AuditTrail, merkle, note};
use crate::auth::Role;
use crate::auth::policy::{policy_version, role_grants};
use crate::crypto::{hex, sha256};
use crate::firms::FirmError;
use crate::firms::pool::Pool;
use crate::ids::FirmId;
use crate::records::Records;

/// Facts about the appliance the daemon knows at start.
#[derive(Debug, Clone)]
pub struct ApplianceFacts {
    pub version: String,
    pub fips_module: String,
    pub sqlcipher: String,
    /// SHA-256 of the configuration file (or of the built-in defaults).
    pub config_sha256: String,
    pub tls: Value,
}

/// The artefacts, by file name, in the order they are written.
pub const ARTEFACTS: &[&str] = &[
    "appliance.json",
    "checkpoint.note",
    "consistency.json",
    "erasures.json",
    "keys.json",
    "policy.json",
    "privacy.json",
    "receipts.json",
    "retention.json",
    "schemas.json",
];

/// RFC 9162 Merkle tree hash over leaves.
pub fn merkle_root(leaves: &[Vec<u8>]) -> merkle::Hash {
    fn mth(hashes: &[merkle::Hash]) -> merkle::Hash {
        match hashes.len() {
            0 => merkle::empty_root(),
            1 => hashes[0],
            n => {
                let k = n.next_power_of_two() / 2;
                merkle::node_hash(&mth(&hashes[..k]), &mth(&hashes[k..]))
            }
        }
    }
    let hashes: Vec<merkle::Hash> = leaves.iter().map(|l| merkle::leaf_hash(l)).collect();
    mth(&hashes)
}

/// The manifest: one `sha256sum` line per artefact, sorted by name.
pub fn manifest(files: &BTreeMap<String, Vec<u8>>) -> String {
    files
        .iter()
        .map(|(name, bytes)| format!("{}  {name}\n", hex(&sha256(bytes))))
        .collect()
}

/// The signed note's text (a checkpoint with extension lines).
pub fn note_text(
    appliance: &str,
    firm: &str,
    manifest: &str,
    checkpoint: (u64, &merkle::Hash),
    created: &str,
) -> String {
    let lines: Vec<Vec<u8>> = manifest.lines().map(|l| l.as_bytes().to_vec()).collect();
    let root = merkle_root(&lines);
    format!(
        "strongroom/{appliance}/evidence/{firm}\n{}\n{}\nmanifest-sha256 {}\nlog {} {}\ncreated {created}\n",
        lines.len(),
        crate::crypto::sign::base64(&root),
        hex(&sha256(manifest.as_bytes())),
        checkpoint.0,
        crate::crypto::sign::base64(checkpoint.1),
    )
}

/// The evidence service.
pub struct Evidence {
    pool: Arc<Pool>,
    trail: Arc<AuditTrail>,
    audit: Arc<AuditLog>,
    records: Arc<Records>,
    facts: ApplianceFacts,
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Evidence")
    }
}

/// PII findings per collection, then per kind.
type PiiCounts = BTreeMap<String, BTreeMap<String, u64>>;

/// Entries this many at a time while a bundle reads the period.
const PAGE: u64 = 1000;

impl Evidence {
    pub fn new(
        pool: Arc<Pool>,
        trail: Arc<AuditTrail>,
        audit: Arc<AuditLog>,
        records: Arc<Records>,
        facts: ApplianceFacts,
    ) -> Self {
        Self {
            pool,
            trail,
            audit,
            records,
            facts,
        }
    }

    /// The bundle for an auditor's API call, recorded in the firm's log.
    pub fn bundle_for(
        &self,
        auth: &crate::auth::policy::Authorized<crate::auth::policy::perm::AuditRead>,
        since: u64,
    ) -> Result<Vec<u8>, FirmError> {
        let bundle = self.bundle(auth.firm(), since)?;
        let h = self.pool.handle(auth.firm())?;
        let e = self.trail.audit_entry(
            &h,
            auth.principal(),
            auth.decision(),
            "evidence.export",
            "bundle",
            crate::audit::Outcome::Success,
            json!({ "since": since, "bytes": bundle.len() }),
        )?;
        h.db.write_blocking(move |tx| tx.append_audit(e.clone()))?;
        Ok(bundle)
    }

    /// Builds the bundle for `firm` covering the log from entry `since`
    /// (the previous bundle's checkpoint size; 0: from the start).
    pub fn bundle(&self, firm: &FirmId, since: u64) -> Result<Vec<u8>, FirmError> {
        let signed = self.audit.checkpoint(firm)?;
        let text = note::open(
            &signed,
            &note::parse_verifier_key(&self.trail.verifier_key())
                .map_err(|_| FirmError::Invalid("verifier key".into()))?,
        )
        .map_err(|_| FirmError::Invalid("the checkpoint does not verify".into()))?;
        let (_, size, root) = note::parse_checkpoint(text)
            .map_err(|_| FirmError::Invalid("the checkpoint does not parse".into()))?;
        if since > size {
            return Err(FirmError::Invalid(format!(
                "since {since} is past the log's checkpoint ({size} entries)"
            )));
        }
        let h = self.pool.handle(firm)?;
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let put = |files: &mut BTreeMap<String, Vec<u8>>, name: &str, v: Value| {
            let mut b = serde_json::to_vec_pretty(&v).unwrap_or_default();
            b.push(b'\n');
            files.insert(name.to_owned(), b);
        };
        files.insert("checkpoint.note".into(), signed.clone().into_bytes());

        // The consistency proof from the previous bundle's checkpoint.
        let consistency = if since == 0 || since == size {
            json!({ "from_size": since, "to_size": size, "proof": [] })
        } else {
            let (old_root, proof) = h
                .db
                .read_blocking(|r| Ok((r.audit_root(since)?, r.audit_consistency(since, size)?)))?;
            json!({
                "from_size": since, "from_root": hex(&old_root),
                "to_size": size, "to_root": hex(&root),
                "proof": proof.iter().map(|p| hex(p)).collect::<Vec<_>>(),
            })
        };
        put(&mut files, "consistency.json", consistency);

        // Keys: metadata and fingerprints, never keys.
        let mut keys = Vec::new();
        for k in self.pool.registry.keys(firm.as_str())? {
            let fp = self
                .pool
                .unwrap_key(firm, &k)
                .map(|s| crate::crypto::keyring::key_fingerprint(&s))
                .unwrap_or_else(|_| "unavailable".to_owned());
            keys.push(json!({
                "purpose": k.purpose, "version": k.version, "state": k.state,
                "created_at": k.created_at, "fingerprint_sha256": fp,
            }));
        }
        put(
            &mut files,
            "keys.json",
            json!({ "firm_id": firm, "keys": keys }),
        );

        // Schemas and their versions.
        let schemas = h.db.read_blocking(|r| {
            let mut out = Vec::new();
            for name in r.collection_names()? {
                if let Some((schema, version)) = r.collection(&name)? {
                    let schema: Value = serde_json::from_str(&schema).unwrap_or(Value::Null);
                    out.push(json!({ "collection": name, "version": version, "schema": schema }));
                }
            }
            Ok(out)
        })?;
        put(
            &mut files,
            "schemas.json",
            json!({ "collections": schemas }),
        );

        // The role matrix and its version.
        let roles: BTreeMap<&str, Vec<&str>> =
            [Role::Owner, Role::Admin, Role::Operator, Role::Viewer]
                .into_iter()
                .map(|r| {
                    (
                        r.as_str(),
                        role_grants(r).iter().map(|p| p.as_str()).collect(),
                    )
                })
                .collect();
        put(
            &mut files,
            "policy.json",
            json!({ "policy_version": policy_version(), "roles": roles }),
        );

        put(
            &mut files,
            "appliance.json",
            json!({
                "appliance_id": self.pool.appliance_id(),
                "strongroomd": self.facts.version,
                "fips_module": self.facts.fips_module,
                "sqlcipher": self.facts.sqlcipher,
                "config_sha256": self.facts.config_sha256,
                "tls": self.facts.tls,
                "verifier_key": self.trail.verifier_key(),
            }),
        );

        let row = self.pool.row(firm)?;
        let classes: BTreeMap<String, u64> = self
            .records
            .retention_classes()
            .into_iter()
            .map(|(k, d)| (k, d.as_secs() / 86_400))
            .collect();
        put(
            &mut files,
            "retention.json",
            json!({
                "audit_retention": row.audit_retention.unwrap_or_else(|| {
                    format!("{}d", self.audit.default_retention().as_secs() / 86_400)
                }),
                "record_classes_days": classes,
            }),
        );

        // The period's entries: purge receipts and deletions, PII counts.
        let (receipts, privacy) = self.scan_period(&h, since, size)?;
        let mut receipts = receipts;
        if let Some(anchor) = h.db.read_blocking(|r| r.audit_anchor())? {
            receipts.insert(
                0,
                json!({ "kind": "audit_purge_receipt", "before": anchor.before, "receipt": anchor.receipt }),
            );
        }
        put(
            &mut files,
            "receipts.json",
            json!({ "from_seq": since, "to_seq": size, "items": receipts }),
        );
        // Deletion certificates of the period, each a signed note that
        // verifies on its own with the appliance key.
        let certificates = crate::erasure::Erasures::certificates(&h, since, size)?;
        put(
            &mut files,
            "erasures.json",
            json!({ "from_seq": since, "to_seq": size, "certificates": certificates }),
        );
        put(
            &mut files,
            "privacy.json",
            json!({ "from_seq": since, "to_seq": size, "pii_findings": privacy }),
        );

        let manifest = manifest(&files);
        let created = self.pool.now();
        let text = note_text(
            self.pool.appliance_id(),
            firm.as_str(),
            &manifest,
            (size, &root),
            &created,
        );
        let signed_manifest = self.trail.sign_note(&text);
        write_tar(&files, &manifest, &signed_manifest)
    }

    /// Deletions and purges recorded in entries `from..to`, and the PII
    /// findings of record writes per collection and kind.
    fn scan_period(
        &self,
        h: &crate::firms::pool::FirmHandle,
        from: u64,
        to: u64,
    ) -> Result<(Vec<Value>, PiiCounts), FirmError> {
        let mut receipts = Vec::new();
        let mut privacy = PiiCounts::new();
        let mut at = from;
        while at < to {
            let rows =
                h.db.read_blocking(|r| r.audit_entries(at, PAGE.min(to - at)))?;
            let Some(last) = rows.last().map(|r| r.entry.seq) else {
                break;
            };
            for row in &rows {
                if row.entry.seq >= to {
                    break;
                }
                let v = self.trail.view_entry_with(&h.audit_key, row);
                match v.action.as_str() {
                    "records.retention_purge" | "audit.purge" | "records.delete" => {
                        receipts.push(json!({
                            "kind": v.action, "seq": v.seq, "at": v.at, "actor": v.actor,
                            "resource": v.resource, "details": v.details,
                        }));
                    }
                    "records.create" | "records.replace" | "records.patch" => {
                        let collection = v.resource.split('/').next().unwrap_or_default();
                        for w in v.details["pii"].as_array().into_iter().flatten() {
                            let kind = w["kind"].as_str().unwrap_or("unknown");
                            *privacy
                                .entry(collection.to_owned())
                                .or_default()
                                .entry(kind.to_owned())
                                .or_default() += 1;
                        }
                    }
                    _ => {}
                }
            }
            at = last + 1;
        }
        Ok((receipts, privacy))
    }
}

fn write_tar(
    files: &BTreeMap<String, Vec<u8>>,
    manifest: &str,
    signed: &str,
) -> Result<Vec<u8>, FirmError> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, bytes)
    };
    let io = |e: std::io::Error| FirmError::Invalid(format!("building the bundle: {e}"));
    for (name, bytes) in files {
        add(name, bytes).map_err(io)?;
    }
    add("MANIFEST.sha256", manifest.as_bytes()).map_err(io)?;
    add("MANIFEST.note", signed.as_bytes()).map_err(io)?;
    b.into_inner().map_err(io)
}
