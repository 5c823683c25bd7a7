//! Export as CloudEvents 1.0 (structured JSON), and its offline check.
//!
//! One event per entry (`type` `dev.strongroom.audit.entry`, `id`
//! `<firm>/<seq>`, `data` = every stored field, the payload ciphertext in
//! base64, `leaf_hash` and `chain` in hex), then one event of type
//! `dev.strongroom.audit.checkpoint` whose `data.note` is a signed
//! checkpoint covering exactly the exported entries.

use serde_json::{Value, json};

use super::entry::{CHAIN_START, Entry, chain_next};
use super::merkle::{MemoryTree, root};
use super::note;
use crate::crypto::hex;
use crate::crypto::sign::{base64, unbase64};

pub const ENTRY_TYPE: &str = "dev.strongroom.audit.entry";
pub const CHECKPOINT_TYPE: &str = "dev.strongroom.audit.checkpoint";

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
    pub entries: u64,
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
    for ev in events {
        match ev["type"].as_str() {
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
    Ok(ExportCheck {
        entries: size,
        root: hex(&computed),
    })
}
