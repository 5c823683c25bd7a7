//! Export as CloudEvents 1.0 (structured JSON), and its offline check.
//!
//! One event per entry (`type` `dev.strongroom.audit.entry`, `id`
//! `<firm>/<seq>`, `data` = every stored field, the payload ciphertext in
//! base64, `leaf_hash` and `chain` in hex), then one event of type
//! `dev.strongroom.audit.checkpoint` whose `data.note` is a signed
//! checkpoint covering exactly the exported entries. A log whose oldest
//! entries were purged by retention starts with one event of type
//! `dev.strongroom.audit.purge`: the signed purge receipt, the chain value
//! the retained entries continue from, and the tree nodes covering the
//! purged prefix, so the checkpoint's root can still be rebuilt.

use serde_json::{Value, json};

use super::entry::{CHAIN_START, Entry, chain_next};
use super::merkle::{Hash, MemoryTree, root};
use super::note;
use crate::crypto::hex;
use crate::crypto::sign::{base64, unbase64};

pub const ENTRY_TYPE: &str = "dev.strongroom.audit.entry";
pub const CHECKPOINT_TYPE: &str = "dev.strongroom.audit.checkpoint";
pub const PURGE_TYPE: &str = "dev.strongroom.audit.purge";

/// The retained log's starting point after a purge, as exported.
pub struct Anchor<'a> {
    pub before: u64,
    pub chain: &'a [u8; 32],
    /// The nodes covering `[0, before)`, in `merkle::prefix_ranges` order.
    pub prefix: &'a [[u8; 32]],
    /// The signed purge receipt.
    pub receipt: &'a str,
}

pub fn purge_event(source: &str, a: &Anchor<'_>) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{source}/purge/{}", a.before),
        "source": source,
        "type": PURGE_TYPE,
        "datacontenttype": "application/json",
        "data": {
            "before": a.before,
            "chain": hex(a.chain),
            "prefix": a.prefix.iter().map(|h| hex(h)).collect::<Vec<_>>(),
            "receipt": a.receipt,
        },
    })
}

fn unhex32(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let b: Option<Vec<u8>> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    b?.try_into().ok()
}

pub fn entry_event(source: &str, e: &Entry, leaf: &[u8], chain: &[u8]) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{}/{}", e.firm, e.seq),
        "source": source,
        "type": ENTRY_TYPE,
        "time": e.at,
        "subject": e.resource,
        "datacontenttype": "application/json",
        "data": {
            "seq": e.seq, "at": e.at, "firm": e.firm, "actor": e.actor,
            "source_ip": e.source_ip, "request_id": e.request_id, "action": e.action,
            "resource": e.resource, "outcome": e.outcome, "decision": e.decision,
            "rule": e.rule, "payload": base64(&e.payload),
            "leaf_hash": hex(leaf), "chain": hex(chain),
        },
    })
}

pub fn checkpoint_event(source: &str, size: u64, note: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{source}/checkpoint/{size}"),
        "source": source,
        "type": CHECKPOINT_TYPE,
        "datacontenttype": "application/json",
        "data": { "tree_size": size, "note": note },
    })
}

/// What checking an export found.
#[derive(Debug, PartialEq, Eq)]
pub struct ExportCheck {
    /// The tree size the checkpoint covers.
    pub entries: u64,
    /// The first entry in the export (after a retention purge, > 0).
    pub first: u64,
    pub root: String,
}

/// Checks an export (its events, in order) against a verifier key: every
/// leaf recomputed from the entry's fields, the chain, the sequence, and the
/// tree root against the signed checkpoint. `Err` names the first problem.
pub fn verify_export(events: &[Value], verifier_key: &str) -> Result<ExportCheck, String> {
    let verifier = note::parse_verifier_key(verifier_key).map_err(|e| e.to_string())?;
    let mut tree = MemoryTree::new();
    let mut chain = CHAIN_START;
    let mut checkpoint = None;
    let mut receipt: Option<note::PurgeReceipt> = None;
    for (i, ev) in events.iter().enumerate() {
        match ev["type"].as_str() {
            Some(PURGE_TYPE) if i == 0 => {
                let d = &ev["data"];
                let text = d["receipt"].as_str().ok_or("purge event without receipt")?;
                let body =
                    note::open(text, &verifier).map_err(|e| format!("purge receipt: {e}"))?;
                let r = note::parse_purge_receipt(body).map_err(|e| e.to_string())?;
                let prefix: Vec<Hash> = d["prefix"]
                    .as_array()
                    .ok_or("purge event without prefix")?
                    .iter()
                    .map(|h| h.as_str().and_then(unhex32))
                    .collect::<Option<_>>()
                    .ok_or("purge event: bad prefix hash")?;
                if d["before"].as_u64() != Some(r.before)
                    || d["chain"].as_str().and_then(unhex32) != Some(r.chain)
                {
                    return Err("the purge event differs from its signed receipt".to_owned());
                }
                tree = MemoryTree::with_prefix(r.before, &prefix).map_err(|e| e.to_string())?;
                chain = r.chain;
                receipt = Some(r);
            }
            Some(ENTRY_TYPE) => {
                let d = &ev["data"];
                let text = |k: &str| {
                    d[k].as_str()
                        .map(str::to_owned)
                        .ok_or(format!("entry field {k} missing"))
                };
                let seq = d["seq"].as_u64().ok_or("entry without seq")?;
                if seq != tree.size() {
                    return Err(format!("entry {} is missing (found {seq})", tree.size()));
                }
                let e = Entry {
                    seq,
                    at: text("at")?,
                    firm: text("firm")?,
                    actor: text("actor")?,
                    source_ip: text("source_ip")?,
                    request_id: text("request_id")?,
                    action: text("action")?,
                    resource: text("resource")?,
                    outcome: text("outcome")?,
                    decision: text("decision")?,
                    rule: text("rule")?,
                    payload: unbase64(&text("payload")?)
                        .ok_or(format!("entry {seq}: bad payload"))?,
                };
                let leaf = e.leaf();
                chain = chain_next(&chain, &leaf);
                if text("leaf_hash")? != hex(&leaf) {
                    return Err(format!("entry {seq}: fields do not match its leaf hash"));
                }
                if text("chain")? != hex(&chain) {
                    return Err(format!("entry {seq}: the hash chain breaks here"));
                }
                tree.push(leaf).map_err(|e| e.to_string())?;
            }
            Some(CHECKPOINT_TYPE) => {
                checkpoint = ev["data"]["note"].as_str().map(str::to_owned);
            }
            other => return Err(format!("unknown event type {other:?}")),
        }
    }
    let note_text = checkpoint.ok_or("the export has no checkpoint")?;
    let body = note::open(&note_text, &verifier).map_err(|e| format!("checkpoint: {e}"))?;
    let (_, size, signed_root) = note::parse_checkpoint(body).map_err(|e| e.to_string())?;
    if size != tree.size() {
        return Err(format!(
            "the checkpoint covers {size} entries, the export has {}",
            tree.size()
        ));
    }
    let computed = root(&tree, size).map_err(|e| e.to_string())?;
    if computed != signed_root {
        return Err("the entries' tree root differs from the signed checkpoint".to_owned());
    }
    if let Some(r) = &receipt
        && (r.tree_size > size || root(&tree, r.tree_size).ok() != Some(r.root))
    {
        return Err(
            "the retained entries do not rebuild the tree the purge receipt signed".to_owned(),
        );
    }
    Ok(ExportCheck {
        first: receipt.as_ref().map_or(0, |r| r.before),
        entries: size,
        root: hex(&computed),
    })
}
