//! The event catalogue, subscription patterns, and [`emit`]: how a change
//! puts its events in the outbox, inside its own write transaction.

use serde_json::{Value, json};

use crate::store::StoreError;
use crate::store::firm::{NewMessage, WriteTx};

/// Every event type the appliance emits, with what its `data` holds.
/// README's Webhooks section lists the same.
pub const CATALOGUE: &[(&str, &str)] = &[
    (
        "record.created",
        "a record was created: `collection`, `record_id`, `version`",
    ),
    (
        "record.updated",
        "a record was replaced or patched: `collection`, `record_id`, `version`",
    ),
    (
        "record.deleted",
        "a record was deleted: `collection`, `record_id`",
    ),
    (
        "subject.erased",
        "a data subject was erased (never an identifier): `erasure_id`, `records` (the deleted record ids by collection, so receivers can erase their copies), `records_deleted`, `reapplied`",
    ),
    (
        "key.created",
        "an API key was minted (or made by a rotation): `key_id`, `name`, `role`",
    ),
    (
        "key.revoked",
        "an API key was revoked (or replaced by a rotation): `key_id`",
    ),
    (
        "auth.failed",
        "an authentication with a key id of the firm failed (the first from a source in a minute, as in the audit log): `key_id`, `source`, `reason`",
    ),
    (
        "webhook.test",
        "sent by `POST …/test` to one endpoint only: `endpoint_id`",
    ),
];

/// Most patterns one endpoint subscribes with.
pub const MAX_PATTERNS: usize = 32;

/// Checks one subscription pattern: `*`, a catalogue type, or a prefix
/// ending in `.*` that some catalogue type starts with.
pub fn valid_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    if let Some(prefix) = p.strip_suffix(".*") {
        return !prefix.is_empty()
            && CATALOGUE
                .iter()
                .any(|(t, _)| t.starts_with(prefix) && t[prefix.len()..].starts_with('.'));
    }
    CATALOGUE.iter().any(|(t, _)| *t == p)
}

/// Whether `event_type` matches one of `patterns`.
pub fn matches(patterns: &[String], event_type: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == event_type
            || p.strip_suffix(".*").is_some_and(|prefix| {
                event_type.starts_with(prefix) && event_type[prefix.len()..].starts_with('.')
            })
    })
}

/// A new message id (`msg_` + 96 random bits): the `webhook-id`, the same
/// on every attempt so receivers can deduplicate.
pub fn new_message_id() -> Result<String, StoreError> {
    let b: [u8; 12] = crate::crypto::random_array().map_err(|_| StoreError::SealFailed)?;
    Ok(format!("msg_{}", crate::crypto::hex(&b)))
}

/// The body every delivery of an event carries.
pub fn payload(event_type: &str, now: &str, data: Value) -> String {
    json!({ "type": event_type, "timestamp": now, "data": data }).to_string()
}

/// Queues `event_type` for every enabled endpoint of the firm that
/// subscribes to it. Called inside the write command of the change, so
/// the outbox rows commit with the change and its audit entry, or not at
/// all: an acknowledged change always has its events.
pub fn emit(tx: &WriteTx<'_>, event_type: &str, now: &str, data: Value) -> Result<(), StoreError> {
    let endpoints = tx.read().webhook_endpoints()?;
    if endpoints.is_empty() {
        return Ok(());
    }
    let mut body: Option<String> = None;
    for e in endpoints.iter().filter(|e| e.enabled) {
        let patterns: Vec<String> = serde_json::from_str(&e.events).unwrap_or_default();
        if !matches(&patterns, event_type) {
            continue;
        }
        let body = body.get_or_insert_with(|| payload(event_type, now, data.clone()));
        tx.insert_webhook_message(&NewMessage {
            id: &new_message_id()?,
            endpoint_id: &e.id,
            event_type,
            payload: body,
            now,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_by_type_and_prefix() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches(&p(&["record.*"]), "record.created"));
        assert!(!matches(&p(&["record.*"]), "key.revoked"));
        assert!(!matches(&p(&["rec.*"]), "record.created"));
        assert!(matches(&p(&["*"]), "auth.failed"));
        assert!(matches(&p(&["key.revoked"]), "key.revoked"));
        assert!(!matches(&p(&["key.revoked"]), "key.created"));
        for ok in [
            "*",
            "record.*",
            "key.revoked",
            "auth.failed",
            "webhook.test",
        ] {
            assert!(valid_pattern(ok), "{ok}");
        }
        for bad in [
            "",
            "record",
            "rec.*",
            ".*",
            "record.created.*",
            "nope.*",
            "x",
        ] {
            assert!(!valid_pattern(bad), "{bad}");
        }
    }
}
