//! Webhook endpoints, the outbox and delivery attempts in a firm's
//! database. The outbox rows of a change are written by the change's own
//! command, so they commit (or roll back) with it and its audit entry.

use rusqlite::{OptionalExtension, Row, params};

use super::super::StoreError;
use super::{ReadTx, WriteTx};

/// An endpoint as stored. Its signing secrets are in `secrets`, never here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub id: String,
    pub url: String,
    /// JSON array of event type patterns.
    pub events: String,
    pub enabled: bool,
    pub description: String,
    /// Generation of the current signing secret.
    pub secret_gen: u32,
    /// The previous secret's generation, while its overlap lasts.
    pub prev_gen: Option<u32>,
    pub prev_until: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One message of the outbox: an event for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub seq: i64,
    pub id: String,
    pub endpoint_id: String,
    pub event_type: String,
    pub payload: String,
    pub created_at: String,
    /// `pending`, `delivered` or `failed` (dead letter).
    pub status: String,
    /// Attempts in all.
    pub attempts: u32,
    /// Attempts since the message was (re)queued: the retry schedule's index.
    pub tries: u32,
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
}

/// A message to queue.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub id: &'a str,
    pub endpoint_id: &'a str,
    pub event_type: &'a str,
    pub payload: &'a str,
    pub now: &'a str,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub message_id: String,
    pub n: u32,
    pub at: String,
    pub status_code: Option<u16>,
    pub latency_ms: Option<u64>,
    pub error: Option<String>,
    /// `delivered`, `retry` or `failed`.
    pub outcome: String,
}

const ENDPOINT_COLUMNS: &str = "id, url, events, enabled, description, secret_gen, prev_gen, prev_until, created_at, updated_at";
const MESSAGE_COLUMNS: &str = "seq, id, endpoint_id, event_type, payload, created_at, status, attempts, tries, next_attempt_at, last_attempt_at, delivered_at";

fn endpoint_row(r: &Row<'_>) -> rusqlite::Result<EndpointRow> {
    Ok(EndpointRow {
        id: r.get(0)?,
        url: r.get(1)?,
        events: r.get(2)?,
        enabled: r.get::<_, i64>(3)? != 0,
        description: r.get(4)?,
        secret_gen: r.get(5)?,
        prev_gen: r.get(6)?,
        prev_until: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

fn message_row(r: &Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        endpoint_id: r.get(2)?,
        event_type: r.get(3)?,
        payload: r.get(4)?,
        created_at: r.get(5)?,
        status: r.get(6)?,
        attempts: r.get(7)?,
        tries: r.get(8)?,
        next_attempt_at: r.get(9)?,
        last_attempt_at: r.get(10)?,
        delivered_at: r.get(11)?,
    })
}

impl ReadTx<'_> {
    pub fn webhook_endpoints(&self) -> Result<Vec<EndpointRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id"
        ))?;
        let rows = st.query_map([], endpoint_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn webhook_endpoint(&self, id: &str) -> Result<Option<EndpointRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?1"
            ))?
            .query_row([id], endpoint_row)
            .optional()?)
    }

    pub fn webhook_message(&self, id: &str) -> Result<Option<MessageRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM webhook_messages WHERE id = ?1"
            ))?
            .query_row([id], message_row)
            .optional()?)
    }

    /// The oldest pending message of each enabled endpoint (deliveries
    /// are in order per endpoint: only a head is ever sent; a disabled
    /// endpoint's messages wait).
    pub fn webhook_pending_heads(&self) -> Result<Vec<MessageRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM webhook_messages WHERE seq IN
               (SELECT MIN(seq) FROM webhook_messages WHERE status = 'pending'
                  AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE enabled = 1)
                GROUP BY endpoint_id)
             ORDER BY seq"
        ))?;
        let rows = st.query_map([], message_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// An endpoint's pending messages, oldest first (at most `limit`).
    pub fn webhook_pending(
        &self,
        endpoint: &str,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM webhook_messages
             WHERE endpoint_id = ?1 AND status = 'pending' ORDER BY seq LIMIT ?2"
        ))?;
        let rows = st
            .query_map(params![endpoint, limit], message_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// An endpoint's attempts, newest first, with their message.
    pub fn webhook_attempts(
        &self,
        endpoint: &str,
        limit: u32,
    ) -> Result<Vec<(AttemptRow, MessageRow)>, StoreError> {
        let cols: String = MESSAGE_COLUMNS
            .split(", ")
            .map(|c| format!("m.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT a.message_id, a.n, a.at, a.status_code, a.latency_ms, a.error, a.outcome, {cols}
             FROM webhook_attempts a JOIN webhook_messages m ON m.id = a.message_id
             WHERE m.endpoint_id = ?1 ORDER BY m.seq DESC, a.n DESC LIMIT ?2"
        ))?;
        let rows = st
            .query_map(params![endpoint, limit], |r| {
                let attempt = AttemptRow {
                    message_id: r.get(0)?,
                    n: r.get(1)?,
                    at: r.get(2)?,
                    status_code: r.get(3)?,
                    latency_ms: r.get::<_, Option<i64>>(4)?.map(|v| v.max(0) as u64),
                    error: r.get(5)?,
                    outcome: r.get(6)?,
                };
                let m = MessageRow {
                    seq: r.get(7)?,
                    id: r.get(8)?,
                    endpoint_id: r.get(9)?,
                    event_type: r.get(10)?,
                    payload: r.get(11)?,
                    created_at: r.get(12)?,
                    status: r.get(13)?,
                    attempts: r.get(14)?,
                    tries: r.get(15)?,
                    next_attempt_at: r.get(16)?,
                    last_attempt_at: r.get(17)?,
                    delivered_at: r.get(18)?,
                };
                Ok((attempt, m))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

impl WriteTx<'_> {
    pub fn insert_webhook_endpoint(&self, e: &EndpointRow) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?
            .execute(params![
                e.id,
                e.url,
                e.events,
                e.enabled as i64,
                e.description,
                e.secret_gen,
                e.prev_gen,
                e.prev_until,
                e.created_at,
                e.updated_at
            ])
            .map_err(super::write::exists_on_conflict)?;
        Ok(())
    }

    /// Replaces an endpoint's row; false if there is none.
    pub fn update_webhook_endpoint(&self, e: &EndpointRow) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE webhook_endpoints SET url = ?2, events = ?3, enabled = ?4, description = ?5,
                   secret_gen = ?6, prev_gen = ?7, prev_until = ?8, updated_at = ?9
                 WHERE id = ?1",
            )?
            .execute(params![
                e.id,
                e.url,
                e.events,
                e.enabled as i64,
                e.description,
                e.secret_gen,
                e.prev_gen,
                e.prev_until,
                e.updated_at
            ])?;
        Ok(n == 1)
    }

    /// Deletes an endpoint with its messages and attempts; false if there
    /// was none.
    pub fn delete_webhook_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "DELETE FROM webhook_attempts WHERE message_id IN
                   (SELECT id FROM webhook_messages WHERE endpoint_id = ?1)",
            )?
            .execute([id])?;
        self.conn
            .prepare_cached("DELETE FROM webhook_messages WHERE endpoint_id = ?1")?
            .execute([id])?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM webhook_endpoints WHERE id = ?1")?
            .execute([id])?;
        Ok(n == 1)
    }

    /// Queues a message, due now.
    pub fn insert_webhook_message(&self, m: &NewMessage<'_>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO webhook_messages (id, endpoint_id, event_type, payload, created_at, status, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?5)",
            )?
            .execute(params![m.id, m.endpoint_id, m.event_type, m.payload, m.now])?;
        Ok(())
    }

    /// Records an attempt and the message's new state (`pending` with the
    /// next attempt's time, `delivered` or `failed`). False if the message
    /// is gone or no longer pending (its endpoint was deleted meanwhile).
    pub fn record_webhook_attempt(
        &self,
        a: &AttemptRow,
        status: &str,
        next_attempt_at: Option<&str>,
    ) -> Result<bool, StoreError> {
        let delivered_at = (status == "delivered").then_some(a.at.as_str());
        let n = self
            .conn
            .prepare_cached(
                "UPDATE webhook_messages SET status = ?2, attempts = attempts + 1, tries = tries + 1,
                   next_attempt_at = ?3, last_attempt_at = ?4, delivered_at = COALESCE(?5, delivered_at)
                 WHERE id = ?1 AND status = 'pending'",
            )?
            .execute(params![a.message_id, status, next_attempt_at, a.at, delivered_at])?;
        if n != 1 {
            return Ok(false);
        }
        let total: u32 = self
            .conn
            .prepare_cached("SELECT attempts FROM webhook_messages WHERE id = ?1")?
            .query_row([&a.message_id], |r| r.get(0))?;
        self.conn
            .prepare_cached(
                "INSERT INTO webhook_attempts (message_id, n, at, status_code, latency_ms, error, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                a.message_id,
                total,
                a.at,
                a.status_code,
                a.latency_ms.map(|v| v.min(i64::MAX as u64) as i64),
                a.error,
                a.outcome
            ])?;
        Ok(true)
    }

    /// Queues a delivered or failed message again, due now (its id stays,
    /// so receivers can tell it is the same message). False if there is no
    /// such message of that endpoint, or it is still pending.
    pub fn requeue_webhook_message(
        &self,
        endpoint: &str,
        id: &str,
        now: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE webhook_messages SET status = 'pending', tries = 0, next_attempt_at = ?3
                 WHERE endpoint_id = ?1 AND id = ?2 AND status != 'pending'",
            )?
            .execute(params![endpoint, id, now])?;
        Ok(n == 1)
    }

    /// Queues again every failed message of an endpoint created at or
    /// after `since`; how many.
    pub fn requeue_failed_webhook_messages(
        &self,
        endpoint: &str,
        since: &str,
        now: &str,
    ) -> Result<u64, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE webhook_messages SET status = 'pending', tries = 0, next_attempt_at = ?3
                 WHERE endpoint_id = ?1 AND status = 'failed' AND created_at >= ?2",
            )?
            .execute(params![endpoint, since, now])?;
        Ok(n as u64)
    }

    /// Deletes up to `limit` messages (with their attempts) delivered
    /// before `delivered_before` or dead-lettered before `failed_before`
    /// (RFC 3339); how many. The outbox keeps what is pending, always.
    pub fn prune_webhook_messages(
        &self,
        delivered_before: &str,
        failed_before: &str,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let ids: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT id FROM webhook_messages
                 WHERE (status = 'delivered' AND delivered_at < ?1)
                    OR (status = 'failed' AND last_attempt_at < ?2)
                 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![delivered_before, failed_before, limit], |r| {
                r.get(0)
            })?
            .collect::<Result<_, _>>()?;
        for id in &ids {
            for sql in [
                "DELETE FROM webhook_attempts WHERE message_id = ?1",
                "DELETE FROM webhook_messages WHERE id = ?1",
            ] {
                self.conn.prepare_cached(sql)?.execute([id])?;
            }
        }
        Ok(ids.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::SqlcipherKey;
    use crate::crypto::secret::SecretKey;
    use crate::store::firm::FirmDb;

    #[test]
    fn pruning_keeps_pending_and_recent_messages() {
        let dir = tempfile::tempdir().unwrap();
        let key = SqlcipherKey::from_secret(&SecretKey::from_bytes([3; 32]));
        let db = FirmDb::open("frm_x", &dir.path().join("f.db"), key, true).unwrap();
        // (id, created, outcome of one attempt at the same time, if any)
        let rows = [
            ("m_old_ok", "2026-01-01T00:00:00Z", Some("delivered")),
            ("m_new_ok", "2026-03-01T00:00:00Z", Some("delivered")),
            ("m_old_dead", "2026-01-01T00:00:00Z", Some("failed")),
            ("m_pending", "2025-01-01T00:00:00Z", None),
        ];
        db.write_blocking(move |tx| {
            for (id, at, outcome) in rows {
                tx.insert_webhook_message(&NewMessage {
                    id,
                    endpoint_id: "whe_1",
                    event_type: "record.created",
                    payload: "{}",
                    now: at,
                })?;
                if let Some(o) = outcome {
                    let a = AttemptRow {
                        message_id: id.to_owned(),
                        n: 1,
                        at: at.to_owned(),
                        status_code: Some(200),
                        latency_ms: Some(1),
                        error: None,
                        outcome: o.to_owned(),
                    };
                    tx.record_webhook_attempt(&a, o, None)?;
                }
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let cut = "2026-02-01T00:00:00Z";
        let n = db
            .write_blocking(move |tx| tx.prune_webhook_messages(cut, cut, 10))
            .unwrap();
        assert_eq!(n, 2);
        let left: Vec<bool> = db
            .read_blocking(|r| {
                ["m_old_ok", "m_new_ok", "m_old_dead", "m_pending"]
                    .iter()
                    .map(|id| r.webhook_message(id).map(|m| m.is_some()))
                    .collect::<Result<_, _>>()
            })
            .unwrap();
        assert_eq!(left, [false, true, false, true]);
        let attempts = db
            .read_blocking(|r| r.webhook_attempts("whe_1", 10))
            .unwrap();
        assert_eq!(attempts.len(), 1, "the pruned messages' attempts went too");
    }
}
