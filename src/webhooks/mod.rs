//! Signed webhooks with a durable outbox.
//!
//! A firm's admins register endpoints (URL, event patterns); each change
//! that emits an event writes one outbox row per subscribed endpoint in its
//! own write transaction ([`events::emit`]), so an acknowledged change
//! always has its events. The delivery worker ([`worker`]) sends them in
//! order per endpoint, signed in the Standard Webhooks format, retries on a
//! bounded schedule and then dead-letters; every attempt is recorded and
//! audited in the firm's log. Signing secrets live in the firm's
//! write-only vault under reserved names and are shown once, at creation
//! or rotation. Destinations are limited by the operator's allow list
//! ([`egress`]).

pub mod egress;
pub mod events;
pub mod settings;
pub mod worker;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::audit::trail::AuditTrail;
use crate::auth::policy::{Authorized, perm};
use crate::clock::rfc3339;
use crate::crypto::{hex, keyring};
use crate::firms::pool::{FirmHandle, Pool};
use crate::firms::{FirmError, lock};
use crate::ids::FirmId;
use crate::store::StoreError;
use crate::store::firm::{EndpointRow, NewMessage, WriteTx};
use egress::{Destination, Egress};

/// Longest description accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Longest overlap of a rotated secret: a week.
pub const MAX_OVERLAP_SECS: u64 = 7 * 24 * 3600;
/// Overlap when a rotation names none: a day.
pub const DEFAULT_OVERLAP_SECS: u64 = 24 * 3600;
/// Most attempts one listing returns.
pub const MAX_ATTEMPTS_PAGE: u32 = 500;

/// Operator settings (`[webhooks]`).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub egress: Egress,
    /// Per-delivery deadline: connect, TLS, request and response head.
    pub timeout: Duration,
}

/// A signing secret: 24 random bytes, shown once as `whsec_<base64>`.
/// No `Clone`, no content in `Debug`, wiped on drop.
pub struct SigningSecret(Zeroizing<Vec<u8>>);

impl SigningSecret {
    fn generate() -> Result<Self, FirmError> {
        let b: [u8; 24] = crate::crypto::random_array()?;
        Ok(Self(Zeroizing::new(b.to_vec())))
    }

    /// The secret as receivers configure it.
    fn reveal(&self) -> String {
        format!("whsec_{}", crate::crypto::sign::base64(&self.0))
    }

    /// `v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mac =
            crate::crypto::hmac_sha256(&self.0, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
        format!("v1,{}", crate::crypto::sign::base64(&mac))
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// The vault name of an endpoint's secret of generation `generation`
/// (names starting with `.` are reserved: the secrets API never shows them).
fn secret_name(endpoint: &str, generation: u32) -> String {
    format!(".webhook.{endpoint}.{generation}")
}

/// What the API shows of an endpoint: never a secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    pub id: String,
    pub url: String,
    /// Event types or prefix patterns (`record.*`, `*`).
    pub events: Vec<String>,
    pub enabled: bool,
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
    /// While a rotated-out secret still signs too (both signatures sent).
    pub previous_secret_until: Option<String>,
}

impl From<&EndpointRow> for EndpointView {
    fn from(r: &EndpointRow) -> Self {
        Self {
            id: r.id.clone(),
            url: r.url.clone(),
            events: serde_json::from_str(&r.events).unwrap_or_default(),
            enabled: r.enabled,
            description: r.description.clone(),
            created_at: r.created_at.clone(),
            updated_at: r.updated_at.clone(),
            previous_secret_until: r.prev_until.clone(),
        }
    }
}

/// One delivery attempt, with its message's state now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub message_id: String,
    pub event_type: String,
    /// 1 for the first attempt of the message.
    pub attempt: u32,
    pub at: String,
    /// `delivered`, `retry` (another attempt is scheduled) or `failed`.
    pub outcome: String,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    pub latency_ms: Option<u64>,
    /// Why the attempt failed (`egress_refused: …`, `redirect_not_followed`, …).
    pub error: Option<String>,
    /// The message now: `pending`, `delivered` or `failed`.
    pub message_status: String,
    pub next_attempt_at: Option<String>,
}

/// A new endpoint, or the changes to one.
#[derive(Debug, Clone, Default)]
pub struct EndpointInput {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
}

/// An endpoint and its new secret (`whsec_…`), returned once.
pub struct WithSecret {
    pub endpoint: EndpointView,
    secret: Zeroizing<String>,
}

impl WithSecret {
    /// The secret; only the create and rotate responses show it.
    pub fn reveal(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for WithSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithSecret")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Webhook endpoints, the outbox and the delivery worker's state.
#[derive(Debug)]
pub struct Webhooks {
    pool: Arc<Pool>,
    trail: Arc<AuditTrail>,
    settings: Settings,
    /// `<state_dir>/webhooks/<firm_id>`: firms that have (or had) an
    /// endpoint, so the worker finds their outbox after a restart
    /// although firms open lazily.
    markers: PathBuf,
    /// Firms with an endpoint.
    firms: Mutex<HashSet<FirmId>>,
    /// Firms whose outbox may hold pending messages (all marked firms at
    /// start, until a scan finds none).
    pending: Mutex<HashSet<FirmId>>,
    /// Endpoints a delivery task is working on.
    inflight: Mutex<HashSet<(FirmId, String)>>,
    /// Wakes the worker early (a test event, a redelivery).
    wake: tokio::sync::Notify,
}

fn invalid(m: impl Into<String>) -> FirmError {
    FirmError::Invalid(m.into())
}

fn check_events(events: &[String]) -> Result<String, FirmError> {
    if events.is_empty() || events.len() > events::MAX_PATTERNS {
        return Err(invalid(format!(
            "events lists 1 to {} event types or patterns",
            events::MAX_PATTERNS
        )));
    }
    if let Some(bad) = events.iter().find(|e| !events::valid_pattern(e)) {
        return Err(invalid(format!(
            "unknown event type or pattern {bad:?} (see the catalogue; prefixes end in .*)"
        )));
    }
    Ok(serde_json::to_string(events).unwrap_or_else(|_| "[]".into()))
}

fn check_description(d: &str) -> Result<(), FirmError> {
    if d.chars().count() > MAX_DESCRIPTION_CHARS || d.chars().any(char::is_control) {
        return Err(invalid(format!(
            "description is at most {MAX_DESCRIPTION_CHARS} characters, no control characters"
        )));
    }
    Ok(())
}

/// Seals `secret` into the vault as `name`, inside the caller's write.
fn store_secret(
    tx: &WriteTx<'_>,
    h: &FirmHandle,
    name: &str,
    secret: &SigningSecret,
    now: &str,
) -> Result<(), FirmError> {
    let fp = format!(
        "hmac-sha256:{}",
        hex(&keyring::secret_fingerprint(&h.auth_key, name, &secret.0))
    );
    let seal = |version: u32| -> Result<Vec<u8>, StoreError> {
        h.data_keys()
            .seal(
                &crate::vault::secret_aad(h.id.as_str(), name, version),
                &secret.0,
            )
            .map_err(|_| StoreError::SealFailed)
    };
    tx.put_secret(name, &fp, now, &seal)?;
    Ok(())
}

impl Webhooks {
    pub fn new(
        pool: Arc<Pool>,
        trail: Arc<AuditTrail>,
        settings: Settings,
        state_dir: &std::path::Path,
    ) -> Self {
        let markers = state_dir.join("webhooks");
        let firms: HashSet<FirmId> = fs::read_dir(&markers)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| FirmId::parse(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            pool,
            trail,
            settings,
            markers,
            pending: Mutex::new(firms.clone()),
            firms: Mutex::new(firms),
            inflight: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Marks the firm as one with endpoints, durably, before the endpoint
    /// commits (a marker without an endpoint costs one empty scan).
    fn mark(&self, firm: &FirmId) -> Result<(), FirmError> {
        let io = |e: std::io::Error| {
            FirmError::Store(StoreError::Io {
                path: self.markers.display().to_string(),
                source: e,
            })
        };
        if !lock(&self.firms).contains(firm) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.markers)
                .map_err(io)?;
            let f = fs::File::create(self.markers.join(firm.as_str())).map_err(io)?;
            f.sync_all().map_err(io)?;
            fs::File::open(&self.markers)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
            lock(&self.firms).insert(firm.clone());
        }
        lock(&self.pending).insert(firm.clone());
        Ok(())
    }

    fn destination(&self, url: &str) -> Result<(), FirmError> {
        let d = Destination::parse(url).map_err(|e| invalid(format!("url: {e}")))?;
        self.settings
            .egress
            .admits(&d)
            .map_err(FirmError::DestinationNotAllowed)
    }

    fn row(&self, h: &FirmHandle, id: &str) -> Result<EndpointRow, FirmError> {
        let id = id.to_owned();
        h.db.read_blocking(|r| r.webhook_endpoint(&id))?
            .ok_or(FirmError::WebhookNotFound)
    }

    /// Registers an endpoint; the answer carries its signing secret, which
    /// is never shown again.
    pub fn create(
        &self,
        auth: &Authorized<perm::WebhooksWrite>,
        input: EndpointInput,
    ) -> Result<WithSecret, FirmError> {
        let details = json!({
            "url": input.url, "events": input.events,
            "enabled": input.enabled, "description": input.description,
        });
        self.trail
            .change(auth, "webhooks.create", "", details.clone(), |c| {
                let url = input
                    .url
                    .clone()
                    .ok_or_else(|| invalid("url is required"))?;
                self.destination(&url)?;
                let events = check_events(input.events.as_deref().unwrap_or(&[]))?;
                let description = input.description.clone().unwrap_or_default();
                check_description(&description)?;
                let b: [u8; 8] = crate::crypto::random_array()?;
                let now = self.pool.now();
                let row = EndpointRow {
                    id: format!("whk_{}", hex(&b)),
                    url,
                    events,
                    enabled: input.enabled.unwrap_or(true),
                    description,
                    secret_gen: 1,
                    prev_gen: None,
                    prev_until: None,
                    created_at: now.clone(),
                    updated_at: now.clone(),
                };
                let secret = Arc::new(SigningSecret::generate()?);
                self.mark(auth.firm())?;
                let (h, r, s) = (c.h.clone(), row.clone(), secret.clone());
                c.commit(&row.id, details.clone(), move |tx| {
                    tx.insert_webhook_endpoint(&r)?;
                    store_secret(tx, &h, &secret_name(&r.id, 1), &s, &now)
                })?;
                Ok(WithSecret {
                    endpoint: EndpointView::from(&row),
                    secret: Zeroizing::new(secret.reveal()),
                })
            })
    }

    pub fn list(
        &self,
        auth: &Authorized<perm::WebhooksRead>,
    ) -> Result<Vec<EndpointView>, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        let rows = h.db.read_blocking(|r| r.webhook_endpoints())?;
        Ok(rows.iter().map(EndpointView::from).collect())
    }

    pub fn get(
        &self,
        auth: &Authorized<perm::WebhooksRead>,
        id: &str,
    ) -> Result<EndpointView, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        Ok(EndpointView::from(&self.row(&h, id)?))
    }

    /// Changes an endpoint's URL, events, enabled flag or description.
    pub fn update(
        &self,
        auth: &Authorized<perm::WebhooksWrite>,
        id: &str,
        input: EndpointInput,
    ) -> Result<EndpointView, FirmError> {
        let details = json!({
            "url": input.url, "events": input.events,
            "enabled": input.enabled, "description": input.description,
        });
        self.trail
            .change(auth, "webhooks.update", id, details.clone(), |c| {
                self.row(&c.h, id)?;
                if let Some(url) = &input.url {
                    self.destination(url)?;
                }
                let events = input.events.as_deref().map(check_events).transpose()?;
                if let Some(d) = &input.description {
                    check_description(d)?;
                }
                let (url, description, enabled) =
                    (input.url.clone(), input.description.clone(), input.enabled);
                let (eid, now) = (id.to_owned(), self.pool.now());
                // Read, changed and written in one transaction: a rotation
                // committed meanwhile is never overwritten.
                let row = c.commit(id, details.clone(), move |tx| {
                    let mut row = tx
                        .read()
                        .webhook_endpoint(&eid)?
                        .ok_or(FirmError::WebhookNotFound)?;
                    if let Some(u) = &url {
                        row.url = u.clone();
                    }
                    if let Some(e) = &events {
                        row.events = e.clone();
                    }
                    if let Some(d) = &description {
                        row.description = d.clone();
                    }
                    if let Some(e) = enabled {
                        row.enabled = e;
                    }
                    row.updated_at = now.clone();
                    if tx.update_webhook_endpoint(&row)? {
                        Ok(row)
                    } else {
                        Err(FirmError::WebhookNotFound)
                    }
                })?;
                // Re-enabled: its waiting messages are due.
                self.mark(auth.firm())?;
                self.wake.notify_one();
                Ok(EndpointView::from(&row))
            })
    }

    /// Deletes an endpoint, its secrets, its outbox and its attempts.
    pub fn delete(
        &self,
        auth: &Authorized<perm::WebhooksWrite>,
        id: &str,
    ) -> Result<(), FirmError> {
        self.trail
            .change(auth, "webhooks.delete", id, json!({}), |c| {
                let row = self.row(&c.h, id)?;
                let r = row.clone();
                c.commit(id, json!({}), move |tx| {
                    if !tx.delete_webhook_endpoint(&r.id)? {
                        return Err(FirmError::WebhookNotFound);
                    }
                    for g in [Some(r.secret_gen), r.prev_gen].into_iter().flatten() {
                        tx.delete_secret(&secret_name(&r.id, g))?;
                    }
                    Ok(())
                })
            })
    }

    /// A new signing secret. The old one keeps signing too (every delivery
    /// carries both signatures) for `overlap` (0: not at all), so
    /// receivers can switch without losing a delivery.
    pub fn rotate(
        &self,
        auth: &Authorized<perm::WebhooksWrite>,
        id: &str,
        overlap: Duration,
    ) -> Result<WithSecret, FirmError> {
        let details = json!({ "overlap_secs": overlap.as_secs() });
        self.trail
            .change(auth, "webhooks.rotate", id, details.clone(), |c| {
                if overlap.as_secs() > MAX_OVERLAP_SECS {
                    return Err(invalid(format!("overlap_secs is 0 to {MAX_OVERLAP_SECS}")));
                }
                self.row(&c.h, id)?;
                let now_t = self.pool.clock.now();
                let now = rfc3339(now_t);
                let until = rfc3339(now_t + overlap);
                let secret = Arc::new(SigningSecret::generate()?);
                let (h, s, eid) = (c.h.clone(), secret.clone(), id.to_owned());
                // The generations are read and advanced in the transaction:
                // two rotations, or a rotation and an update, never leave
                // the endpoint naming a deleted secret.
                let row = c.commit(id, details.clone(), move |tx| {
                    let old = tx
                        .read()
                        .webhook_endpoint(&eid)?
                        .ok_or(FirmError::WebhookNotFound)?;
                    let mut r = old.clone();
                    r.secret_gen = old.secret_gen + 1;
                    (r.prev_gen, r.prev_until) = if overlap.is_zero() {
                        (None, None)
                    } else {
                        (Some(old.secret_gen), Some(until.clone()))
                    };
                    r.updated_at = now.clone();
                    if !tx.update_webhook_endpoint(&r)? {
                        return Err(FirmError::WebhookNotFound);
                    }
                    store_secret(tx, &h, &secret_name(&r.id, r.secret_gen), &s, &now)?;
                    // Only the current and (during the overlap) the previous
                    // secret are kept.
                    for g in [old.prev_gen, Some(old.secret_gen)].into_iter().flatten() {
                        if Some(g) != r.prev_gen {
                            tx.delete_secret(&secret_name(&r.id, g))?;
                        }
                    }
                    Ok(r)
                })?;
                Ok(WithSecret {
                    endpoint: EndpointView::from(&row),
                    secret: Zeroizing::new(secret.reveal()),
                })
            })
    }

    /// An endpoint's delivery attempts, newest first.
    pub fn attempts(
        &self,
        auth: &Authorized<perm::WebhooksRead>,
        id: &str,
        limit: u32,
    ) -> Result<Vec<AttemptView>, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        self.row(&h, id)?;
        let limit = limit.clamp(1, MAX_ATTEMPTS_PAGE);
        let id = id.to_owned();
        let rows =
            h.db.read_blocking(move |r| r.webhook_attempts(&id, limit))?;
        Ok(rows
            .into_iter()
            .map(|(a, m)| AttemptView {
                message_id: a.message_id,
                event_type: m.event_type,
                attempt: a.n,
                at: a.at,
                outcome: a.outcome,
                status_code: a.status_code,
                latency_ms: a.latency_ms,
                error: a.error,
                next_attempt_at: if m.status == "pending" {
                    m.next_attempt_at
                } else {
                    None
                },
                message_status: m.status,
            })
            .collect())
    }

    /// Queues one delivered or failed message again (same id).
    pub fn redeliver(
        &self,
        auth: &Authorized<perm::WebhooksWrite>,
        id: &str,
        message: &str,
    ) -> Result<(), FirmError> {
        let details = json!({ "message_id": message });
        self.trail
            .change(auth, "webhooks.redeliver", id, details.clone(), |c| {
                self.row(&c.h, id)?;
                let (e, m, now) = (id.to_owned(), message.to_owned(), self.pool.now());
                c.commit(id, details.clone(), move |tx| {
                    if tx.requeue_webhook_message(&e, &m, &now)? {
                        Ok(())
                    } else {
                        Err(FirmError::WebhookMessageNotFound)
                    }
                })?;
                self.mark(auth.firm())?;
                self.wake.notify_one();
                Ok(())
            })
    }

    /// Queues again every message of the endpoint that failed (dead
    /// letter) and was created at or after `since`; how many.
    pub fn redeliver_failed(
        &self,
        auth: &Authorized<perm::WebhooksWrite>,
        id: &str,
        since: OffsetDateTime,
    ) -> Result<u64, FirmError> {
        let since = rfc3339(since);
        let details = json!({ "since": since });
        self.trail.change(
            auth,
            "webhooks.redeliver_failed",
            id,
            details.clone(),
            |c| {
                self.row(&c.h, id)?;
                let (e, now) = (id.to_owned(), self.pool.now());
                let n = c.commit(id, details.clone(), move |tx| {
                    Ok(tx.requeue_failed_webhook_messages(&e, &since, &now)?)
                })?;
                self.mark(auth.firm())?;
                self.wake.notify_one();
                Ok(n)
            },
        )
    }

    /// Queues a `webhook.test` event for this endpoint only; its message id.
    pub fn send_test(
        &self,
        auth: &Authorized<perm::WebhooksWrite>,
        id: &str,
    ) -> Result<String, FirmError> {
        self.trail
            .change(auth, "webhooks.test", id, json!({}), |c| {
                self.row(&c.h, id)?;
                let msg = events::new_message_id()?;
                let now = self.pool.now();
                let body = events::payload("webhook.test", &now, json!({ "endpoint_id": id }));
                let (e, m) = (id.to_owned(), msg.clone());
                c.commit(id, json!({ "message_id": msg }), move |tx| {
                    tx.insert_webhook_message(&NewMessage {
                        id: &m,
                        endpoint_id: &e,
                        event_type: "webhook.test",
                        payload: &body,
                        now: &now,
                    })?;
                    Ok(())
                })?;
                self.mark(auth.firm())?;
                self.wake.notify_one();
                Ok(msg)
            })
    }
}
