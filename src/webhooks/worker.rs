//! The delivery worker: finds due messages, sends them in order per
//! endpoint over a [`Transport`] the daemon supplies, records every
//! attempt with its audit entry, and schedules retries.
//!
//! Retry schedule (bounded, documented in README): after the n-th failed
//! attempt the next one waits [`SCHEDULE`]`[n-1]` seconds, scaled by a
//! random factor in [0.8, 1.2] (jitter); after the last wait's attempt
//! fails too, the message is `failed` (dead letter) and the endpoint's
//! next message goes. Times come from the daemon's clock, so a test build
//! moves through the schedule without sleeping.
//!
//! Finding work after a restart: firms open lazily, so the worker scans
//! the firms marked as having endpoints (`<state_dir>/webhooks/`) until
//! each reports no pending message, and every open firm with endpoints on
//! each tick.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::egress::Destination;
use super::{SigningSecret, Webhooks, secret_name};
use crate::audit::trail::Outcome;
use crate::auth::Origin;
use crate::clock::rfc3339;
use crate::firms::pool::FirmHandle;
use crate::firms::{FirmError, FirmState, lane, lock};
use crate::ids::FirmId;
use crate::store::firm::{AttemptRow, EndpointRow, MessageRow};

/// Waits after each failed attempt, in seconds: 5 s, 30 s, 2 min, 10 min,
/// 30 min, 1 h, 2 h, 4 h. Nine attempts over about 7.7 hours, then the
/// message is failed (dead letter).
pub const SCHEDULE: &[u64] = &[5, 30, 120, 600, 1800, 3600, 7200, 14400];
/// How often the worker looks for due messages.
const TICK: Duration = Duration::from_millis(200);
/// Every this many ticks (30 s), open firms not known to have endpoints
/// are checked for some (a firm restored without its marker).
const DISCOVER_EVERY: u32 = 150;
/// How long a delivered message stays in the outbox (for redelivery and
/// the attempts API).
pub const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 86_400);
/// How long a dead letter stays (for `redeliver since`).
pub const KEEP_FAILED: Duration = Duration::from_secs(30 * 86_400);
/// Messages read (and sent in order) per batch: their attempts are
/// committed together, so a busy endpoint costs one commit a batch.
const BATCH: u32 = 64;
/// Batches one endpoint's task sends before it yields to the next tick.
const MAX_BATCHES: usize = 16;

/// One HTTP request to send, already checked against the allow list.
#[derive(Debug)]
pub struct Outbound {
    /// The resolved, checked address to connect to (never resolved again).
    pub addr: SocketAddr,
    pub tls: bool,
    /// The URL's host: TLS server name (SNI, certificate check).
    pub server_name: String,
    /// `Host` header.
    pub authority: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The HTTP status, or why there is none.
pub type Sent<'a> = Pin<Box<dyn Future<Output = Result<u16, String>> + Send + 'a>>;

/// Sends one request; never follows a redirect. The daemon supplies the
/// HTTPS implementation (in `http/`, the only user of hyper).
pub trait Transport: Send + Sync + 'static {
    fn send(&self, request: Outbound) -> Sent<'_>;
}

/// The wait after the `tries`-th failed attempt, with jitter; None once
/// the schedule is spent.
pub fn backoff(tries: u32) -> Option<Duration> {
    let base = *SCHEDULE.get(tries.checked_sub(1)? as usize)?;
    let r: [u8; 2] = crate::crypto::random_array().unwrap_or([128, 0]);
    let factor = 0.8 + 0.4 * f64::from(u16::from_le_bytes(r)) / 65535.0;
    Some(Duration::from_millis(
        (base as f64 * 1000.0 * factor) as u64,
    ))
}

/// An endpoint's due messages, oldest first, with what signs them.
struct Batch {
    h: Arc<FirmHandle>,
    endpoint: EndpointRow,
    messages: Vec<MessageRow>,
    secrets: Vec<SigningSecret>,
}

/// How one attempt went.
struct Tried {
    status_code: Option<u16>,
    latency_ms: Option<u64>,
    error: Option<String>,
}

impl Tried {
    fn delivered(&self) -> bool {
        self.error.is_none()
    }
}

/// Removes an endpoint from the in-flight set however its task ends.
struct InFlight(Arc<Webhooks>, (FirmId, String));

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0.inflight).remove(&self.1);
    }
}

fn open_secret(h: &FirmHandle, name: &str) -> Result<Option<SigningSecret>, FirmError> {
    let keys = h.data_keys();
    let row = h.db.read_blocking(|r| r.secret(name))?;
    row.map(|row| {
        keys.open(
            &crate::vault::secret_aad(h.id.as_str(), name, row.version),
            &row.ciphertext,
        )
        .map(|b| SigningSecret(zeroize::Zeroizing::new(b)))
        .map_err(|_| FirmError::Seal)
    })
    .transpose()
}

impl Webhooks {
    /// The worker: runs until `stop`. In-flight attempts are dropped at
    /// shutdown; their messages stay pending and go again after the
    /// restart (at least once).
    pub async fn run(
        self: Arc<Self>,
        transport: Arc<dyn Transport>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = tokio::task::JoinSet::new();
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
            }
            while tasks.try_join_next().is_some() {}
            ticks = ticks.wrapping_add(1);
            if ticks % DISCOVER_EVERY == 1 {
                let me = self.clone();
                let _ = lane(move || {
                    me.discover();
                    me.prune();
                })
                .await;
            }
            let me = self.clone();
            let due = match lane(move || me.due_endpoints()).await {
                Ok(d) => d,
                Err(_) => continue,
            };
            for key in due {
                let guard = InFlight(self.clone(), key);
                tasks.spawn(drain(guard, transport.clone()));
            }
        }
        tasks.abort_all();
    }

    /// Marks open firms that have endpoints but no marker.
    fn discover(&self) {
        let open: Vec<Arc<FirmHandle>> = lock(&self.pool.open).values().cloned().collect();
        let unknown: Vec<Arc<FirmHandle>> = {
            let known = lock(&self.firms);
            open.into_iter()
                .filter(|h| !known.contains(&h.id))
                .collect()
        };
        for h in unknown {
            // No change since the last look found no endpoint.
            let audited = h.db.audit_appends();
            if h.seen.webhooks.load(Ordering::SeqCst) == audited {
                continue;
            }
            match h.db.read_blocking(|r| r.webhook_endpoints()) {
                Ok(e) if !e.is_empty() => {
                    if let Err(e) = self.mark(&h.id) {
                        tracing::warn!(firm = %h.id, error = %e, "cannot mark a firm with webhooks");
                    }
                }
                Ok(_) => h.seen.webhooks.store(audited, Ordering::SeqCst),
                Err(_) => {}
            }
        }
    }

    /// Drops old delivered messages and dead letters from the open firms'
    /// outboxes (a batch per firm each round), so an outbox holds what is
    /// pending plus [`KEEP_DELIVERED`] and [`KEEP_FAILED`] of history.
    fn prune(&self) {
        let now = self.pool.clock.now();
        let cut =
            |d: Duration| crate::clock::rfc3339(now - time::Duration::seconds(d.as_secs() as i64));
        let (delivered, failed) = (cut(KEEP_DELIVERED), cut(KEEP_FAILED));
        let known: Vec<FirmId> = lock(&self.firms).iter().cloned().collect();
        for firm in known {
            // A frozen firm changes nothing, housekeeping included.
            if self.pool.state(&firm) != Some(FirmState::Active) {
                continue;
            }
            let Some(h) = self.pool.cached_handle(&firm) else {
                continue;
            };
            let (d, f) = (delivered.clone(), failed.clone());
            match h
                .db
                .write_blocking(move |tx| tx.prune_webhook_messages(&d, &f, 1000))
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(firm = %firm, messages = n, "webhook outbox: old messages pruned")
                }
                Err(e) => tracing::warn!(firm = %firm, error = %e, "webhook outbox prune failed"),
            }
        }
    }

    /// Endpoints whose oldest pending message is due, now marked in flight.
    fn due_endpoints(&self) -> Vec<(FirmId, String)> {
        let now = self.pool.now();
        let mut firms: Vec<FirmId> = lock(&self.pending).iter().cloned().collect();
        {
            let open = lock(&self.pool.open);
            firms.extend(
                lock(&self.firms)
                    .iter()
                    .filter(|f| open.contains_key(*f))
                    .cloned(),
            );
        }
        firms.sort();
        firms.dedup();
        let mut due = Vec::new();
        for firm in firms {
            match self.pool.state(&firm) {
                Some(FirmState::Active) => {}
                // Frozen: deliveries wait, as every other write does.
                Some(FirmState::Frozen) => continue,
                Some(FirmState::Deleted) | None => {
                    lock(&self.pending).remove(&firm);
                    lock(&self.firms).remove(&firm);
                    let _ = std::fs::remove_file(self.markers.join(firm.as_str()));
                    continue;
                }
            }
            let heads = self
                .pool
                .handle(&firm)
                .and_then(|h| Ok(h.db.read_blocking(|r| r.webhook_pending_heads())?));
            let heads = match heads {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(firm = %firm, error = %e, "webhook outbox scan failed");
                    continue;
                }
            };
            if heads.is_empty() {
                lock(&self.pending).remove(&firm);
                continue;
            }
            lock(&self.pending).insert(firm.clone());
            let mut inflight = lock(&self.inflight);
            for m in heads {
                let key = (firm.clone(), m.endpoint_id);
                if m.next_attempt_at
                    .as_deref()
                    .is_none_or(|t| t <= now.as_str())
                    && inflight.insert(key.clone())
                {
                    due.push(key);
                }
            }
        }
        due
    }

    /// The endpoint's due messages (up to [`BATCH`], stopping at the first
    /// not yet due) with its secrets; None if there is none.
    fn next_batch(&self, firm: &FirmId, endpoint: &str) -> Result<Option<Batch>, FirmError> {
        let h = self.pool.handle(firm)?;
        let Some(ep) = h.db.read_blocking(|r| r.webhook_endpoint(endpoint))? else {
            return Ok(None);
        };
        if !ep.enabled {
            return Ok(None);
        }
        let now = self.pool.now();
        let messages: Vec<MessageRow> =
            h.db.read_blocking(|r| r.webhook_pending(endpoint, BATCH))?
                .into_iter()
                .take_while(|m| {
                    m.next_attempt_at
                        .as_deref()
                        .is_none_or(|t| t <= now.as_str())
                })
                .collect();
        if messages.is_empty() {
            return Ok(None);
        }
        let mut secrets = Vec::new();
        if let Some(s) = open_secret(&h, &secret_name(&ep.id, ep.secret_gen))? {
            secrets.push(s);
        }
        if let (Some(g), Some(until)) = (ep.prev_gen, ep.prev_until.as_deref()) {
            if until > now.as_str() {
                if let Some(s) = open_secret(&h, &secret_name(&ep.id, g))? {
                    secrets.push(s);
                }
            }
        }
        Ok(Some(Batch {
            h,
            endpoint: ep,
            messages,
            secrets,
        }))
    }

    /// One attempt: resolve and check the destination, sign, send.
    async fn attempt(&self, t: &dyn Transport, job: &Batch, message: &MessageRow) -> Tried {
        let fail = |e: String| Tried {
            status_code: None,
            latency_ms: None,
            error: Some(e),
        };
        let dest = match Destination::parse(&job.endpoint.url) {
            Ok(d) => d,
            Err(e) => return fail(format!("bad_url: {e}")),
        };
        // Security invariant: the address is checked after resolution and
        // the connection goes to that very address.
        let addr = match self.settings.egress.resolve(&dest).await {
            Ok(a) => a,
            Err(e) => return fail(format!("egress_refused: {e}")),
        };
        if job.secrets.is_empty() {
            return fail("no_secret: the endpoint's signing secret is missing".into());
        }
        let ts = self.pool.clock.now().unix_timestamp();
        let body = message.payload.as_bytes();
        let signature = job
            .secrets
            .iter()
            .map(|s| s.signature(&message.id, ts, body))
            .collect::<Vec<_>>()
            .join(" ");
        let request = Outbound {
            addr,
            tls: dest.scheme == super::egress::Scheme::Https,
            server_name: dest.host.clone(),
            authority: dest.authority(),
            path: dest.path.clone(),
            headers: vec![
                ("content-type", "application/json".into()),
                (
                    "user-agent",
                    format!("Strongroom-Webhooks/{}", crate::VERSION),
                ),
                ("webhook-id", message.id.clone()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", signature),
            ],
            body: body.to_vec(),
        };
        let started = self.pool.clock.monotonic();
        let sent = tokio::time::timeout(self.settings.timeout, t.send(request)).await;
        let latency_ms = Some(
            self.pool
                .clock
                .monotonic()
                .duration_since(started)
                .as_millis() as u64,
        );
        match sent {
            Err(_) => Tried {
                latency_ms,
                ..fail(format!(
                    "timeout after {} s",
                    self.settings.timeout.as_secs()
                ))
            },
            Ok(Err(e)) => Tried {
                latency_ms,
                ..fail(e)
            },
            Ok(Ok(code)) => Tried {
                status_code: Some(code),
                latency_ms,
                error: match code {
                    200..=299 => None,
                    300..=399 => Some("redirect_not_followed".into()),
                    _ => Some(format!("http_status {code}")),
                },
            },
        }
    }

    /// Queues the write of an attempt, the message's next state and its
    /// audit entry (one transaction); the caller awaits it with the rest
    /// of its batch.
    fn record(
        &self,
        job: &Batch,
        message: &MessageRow,
        tried: &Tried,
    ) -> Result<tokio::task::JoinHandle<Result<(), FirmError>>, FirmError> {
        let tries = message.tries + 1;
        let now_t = self.pool.clock.now();
        let (status, outcome, next) = if tried.delivered() {
            ("delivered", "delivered", None)
        } else if let Some(wait) = backoff(tries) {
            ("pending", "retry", Some(rfc3339(now_t + wait)))
        } else {
            ("failed", "failed", None)
        };
        let (action, audit_outcome) = match outcome {
            "delivered" => ("webhooks.delivered", Outcome::Success),
            "retry" => ("webhooks.attempt_failed", Outcome::Failure),
            _ => ("webhooks.dead_lettered", Outcome::Failure),
        };
        let attempt = AttemptRow {
            message_id: message.id.clone(),
            n: message.attempts + 1,
            at: rfc3339(now_t),
            status_code: tried.status_code,
            latency_ms: tried.latency_ms,
            error: tried.error.clone(),
            outcome: outcome.to_owned(),
        };
        let entry = self.trail.sealed_entry(
            &job.h,
            "system:webhooks",
            &Origin {
                request_id: message.id.clone(),
                source_ip: "-".to_owned(),
            },
            "allow",
            "webhook_delivery".to_owned(),
            action,
            &job.endpoint.id,
            audit_outcome,
            json!({
                "message_id": message.id,
                "event_type": message.event_type,
                "attempt": attempt.n,
                "status_code": tried.status_code,
                "latency_ms": tried.latency_ms,
                "error": tried.error,
                "next_attempt_at": next,
            }),
        )?;
        if let Some(e) = &tried.error {
            tracing::warn!(
                firm = %job.h.id, endpoint = %job.endpoint.id, message = %message.id,
                attempt = attempt.n, error = %e, outcome, "webhook delivery attempt failed"
            );
        }
        crate::telemetry::metrics::webhook_attempt(outcome);
        let h = job.h.clone();
        Ok(tokio::spawn(async move {
            h.db.write(move |tx| {
                if tx.record_webhook_attempt(&attempt, status, next.as_deref())? {
                    tx.append_audit(entry.clone())?;
                }
                Ok::<(), FirmError>(())
            })
            .await
        }))
    }
}

/// Sends an endpoint's due messages in order until one fails or none is
/// due. A batch's attempts are written while the next ones go out, and all
/// of them are committed before the next batch is read.
async fn drain(guard: InFlight, transport: Arc<dyn Transport>) {
    let svc = guard.0.clone();
    let (firm, endpoint) = guard.1.clone();
    for _ in 0..MAX_BATCHES {
        let (s, f, e) = (svc.clone(), firm.clone(), endpoint.clone());
        let batch = match lane(move || s.next_batch(&f, &e)).await {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => break,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(firm = %firm, endpoint = %endpoint, error = %e, "webhook delivery not started");
                break;
            }
        };
        let mut writes = Vec::with_capacity(batch.messages.len());
        let mut go_on = batch.messages.len() == BATCH as usize;
        for m in &batch.messages {
            let tried = svc.attempt(transport.as_ref(), &batch, m).await;
            match svc.record(&batch, m, &tried) {
                Ok(w) => writes.push(w),
                Err(e) => {
                    tracing::error!(firm = %firm, endpoint = %endpoint, error = %e, "could not record a webhook attempt");
                    go_on = false;
                    break;
                }
            }
            if !tried.delivered() {
                go_on = false;
                break;
            }
        }
        for w in writes {
            if let Ok(Err(e)) = w.await {
                tracing::error!(firm = %firm, endpoint = %endpoint, error = %e, "could not record a webhook attempt");
                go_on = false;
            }
        }
        if !go_on {
            break;
        }
    }
    drop(guard);
}
