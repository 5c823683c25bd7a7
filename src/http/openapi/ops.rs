//! What each route takes and gives: one entry per row of the route table.

use axum::http::Method;
use serde_json::{Value, json};

use super::{Components, HeaderParam, OpDoc, Payload, schema_of};
use crate::http::{audit, evidence, keys, routes, secrets, sessions, subjects, users, webhooks};

fn op(id: &'static str, summary: &'static str) -> OpDoc {
    OpDoc {
        id,
        summary,
        body: Payload::None,
        body_optional: false,
        body_also: &[],
        query: None,
        headers: &[],
        ok: &[200],
        out: Payload::None,
        errors: &[],
    }
}

impl OpDoc {
    fn takes(mut self, body: fn(&mut Components) -> Value) -> Self {
        self.body = Payload::Json(body);
        self
    }
    fn optional(mut self) -> Self {
        self.body_optional = true;
        self
    }
    fn gives(mut self, ok: &'static [u16], out: fn(&mut Components) -> Value) -> Self {
        self.ok = ok;
        self.out = Payload::Json(out);
        self
    }
    fn text(mut self, mime: &'static str) -> Self {
        self.out = Payload::Text(mime);
        self
    }
    fn empty(mut self, ok: &'static [u16]) -> Self {
        self.ok = ok;
        self.out = Payload::None;
        self
    }
    fn query(mut self, q: fn() -> Vec<Value>) -> Self {
        self.query = Some(q);
        self
    }
    fn headers(mut self, h: &'static [HeaderParam]) -> Self {
        self.headers = h;
        self
    }
    fn errors(mut self, e: &'static [u16]) -> Self {
        self.errors = e;
        self
    }
}

fn params<T: utoipa::IntoParams>() -> Vec<Value> {
    T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
        .into_iter()
        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
        .collect()
}

/// A record's fields: any JSON object the collection's schema accepts.
fn record_body(_: &mut Components) -> Value {
    json!({ "type": "object", "description": "the record's fields, as the collection's schema declares them" })
}

/// This document: an OpenAPI 3.1 object.
fn document_schema(_: &mut Components) -> Value {
    json!({ "type": "object", "required": ["openapi", "info", "paths"] })
}

/// A written record: the record, and PII warnings when there are any.
fn written(c: &mut Components) -> Value {
    let record = schema_of::<crate::records::RecordView>(c);
    let warning = schema_of::<crate::records::PiiWarning>(c);
    json!({
        "allOf": [record, {
            "type": "object",
            "properties": { "warnings": { "type": "array", "items": warning } }
        }]
    })
}

fn record_list_query() -> Vec<Value> {
    vec![
        json!({ "name": "after", "in": "query", "required": false,
                "description": "the `next` cursor of the previous page",
                "schema": { "type": "string" } }),
        json!({ "name": "limit", "in": "query", "required": false,
                "description": "page size, 1 to 500 (larger values are lowered to 500)",
                "schema": { "type": "integer", "format": "int64", "minimum": 1 } }),
    ]
}

const IDEMPOTENCY_KEY: HeaderParam = HeaderParam {
    name: "Idempotency-Key",
    required: false,
    pattern: "^[!-~]{1,255}$",
    description: "repeating a create with the same key and body returns the first result",
};

const IF_MATCH: HeaderParam = HeaderParam {
    name: "If-Match",
    required: true,
    pattern: "^\"(0|[1-9][0-9]{0,8})\"$",
    description: "the record's ETag: the write applies only to that version",
};

const IF_MATCH_OPTIONAL: HeaderParam = HeaderParam {
    required: false,
    ..IF_MATCH
};

/// Every route's description, keyed by method and path template.
pub(crate) fn all() -> Vec<(&'static str, &'static str, OpDoc)> {
    use schema_of as s;
    vec![
        (
            "GET",
            "/status",
            op("status", "Version, uptime and FIPS mode").gives(&[200], s::<routes::StatusBody>),
        ),
        (
            "GET",
            "/healthz",
            op("healthz", "Liveness").gives(&[200], s::<routes::Health>),
        ),
        (
            "GET",
            "/api/v1/openapi.json",
            op("openapi", "This document").gives(&[200], document_schema),
        ),
        (
            "GET",
            "/api/v1/firms/{firm_id}",
            op("getFirm", "The firm").gives(&[200], s::<crate::firms::FirmView>),
        ),
        (
            "PATCH",
            "/api/v1/firms/{firm_id}",
            op("patchFirm", "Change the firm's profile")
                .takes(s::<crate::http::api::ProfilePatch>)
                .gives(&[200], s::<crate::firms::FirmView>),
        ),
        (
            "POST",
            "/api/v1/keys/{firm_id}",
            op("mintKey", "Mint an API key (secret shown once)")
                .takes(s::<keys::MintBody>)
                .gives(&[201], s::<keys::MintedView>),
        ),
        (
            "GET",
            "/api/v1/keys/{firm_id}",
            op("listKeys", "The firm's keys").gives(&[200], s::<keys::KeyList>),
        ),
        (
            "GET",
            "/api/v1/keys/{firm_id}/{key_id}",
            op("getKey", "One key").gives(&[200], s::<crate::auth::KeyView>),
        ),
        (
            "DELETE",
            "/api/v1/keys/{firm_id}/{key_id}",
            op("revokeKey", "Revoke a key").gives(&[200], s::<crate::auth::KeyView>),
        ),
        (
            "POST",
            "/api/v1/keys/{firm_id}/{key_id}/rotate",
            op(
                "rotateKey",
                "Replace a key by a new one (secret shown once)",
            )
            .gives(&[201], s::<keys::MintedView>)
            .errors(&[409, 422]),
        ),
        (
            "GET",
            "/api/v1/audit/{firm_id}",
            op("listAudit", "Audit entries, filtered and paged")
                .query(params::<audit::PageQuery>)
                .gives(&[200], s::<crate::audit::AuditPage>),
        ),
        (
            "GET",
            "/api/v1/audit/{firm_id}/verify",
            op("verifyAudit", "Verify the whole log")
                .gives(&[200], s::<crate::audit::AuditVerifyView>),
        ),
        (
            "GET",
            "/api/v1/audit/{firm_id}/checkpoint",
            op(
                "checkpoint",
                "The latest signed checkpoint (C2SP signed note)",
            )
            .text("text/plain"),
        ),
        (
            "GET",
            "/api/v1/audit/{firm_id}/export",
            op("exportAudit", "The log as CloudEvents (NDJSON)").text("application/x-ndjson"),
        ),
        (
            "GET",
            "/api/v1/subjects/{firm_id}",
            op(
                "subjectAccess",
                "Everything held about one data subject (Art. 15/20), sensitive fields in clear",
            )
            .query(params::<subjects::SubjectQuery>)
            .gives(&[200], s::<crate::records::subjects::SubjectDocument>),
        ),
        (
            "POST",
            "/api/v1/erasure/{firm_id}",
            op(
                "eraseSubject",
                "Erase a data subject (Art. 17): delete their records, destroy their key; returns the signed deletion certificate",
            )
            .takes(s::<crate::erasure::ErasureRequest>)
            .gives(&[200], s::<crate::erasure::ErasureCertificate>)
            .errors(&[422]),
        ),
        (
            "GET",
            "/api/v1/evidence/{firm_id}",
            op(
                "evidenceBundle",
                "The firm's evidence bundle (tar: artefacts, sha256sum manifest, signed note)",
            )
            .query(params::<evidence::EvidenceQuery>)
            .text("application/x-tar")
            .errors(&[422]),
        ),
        (
            "GET",
            "/api/v1/audit/{firm_id}/verifier-key",
            op("verifierKey", "The checkpoint verifier key").text("text/plain"),
        ),
        (
            "GET",
            "/api/v1/audit/{firm_id}/proof/inclusion",
            op("inclusionProof", "RFC 9162 inclusion proof of an entry")
                .query(params::<audit::InclusionQuery>)
                .gives(&[200], s::<crate::audit::InclusionView>)
                .errors(&[422]),
        ),
        (
            "GET",
            "/api/v1/audit/{firm_id}/proof/consistency",
            op(
                "consistencyProof",
                "RFC 9162 consistency proof between two sizes",
            )
            .query(params::<audit::ConsistencyQuery>)
            .gives(&[200], s::<crate::audit::ConsistencyView>)
            .errors(&[422]),
        ),
        (
            "PUT",
            "/api/v1/collections/{firm_id}/{collection}",
            op("putCollection", "Declare or change a collection's schema")
                .takes(s::<crate::records::schema::Schema>)
                .gives(&[200, 201], s::<crate::records::CollectionView>)
                .errors(&[409]),
        ),
        (
            "GET",
            "/api/v1/collections/{firm_id}/{collection}",
            op("getCollection", "A collection").gives(&[200], s::<crate::records::CollectionView>),
        ),
        (
            "POST",
            "/api/v1/records/{firm_id}/{collection}",
            op("createRecord", "Create a record")
                .takes(record_body)
                .headers(&[IDEMPOTENCY_KEY])
                .gives(&[201], written)
                .errors(&[409]),
        ),
        (
            "GET",
            "/api/v1/records/{firm_id}/{collection}",
            op("listRecords", "Records, paged; filter on one indexed field")
                .query(record_list_query)
                .gives(&[200], s::<crate::records::RecordPage>),
        ),
        (
            "GET",
            "/api/v1/records/{firm_id}/{collection}/{record_id}",
            op("getRecord", "A record").gives(&[200], s::<crate::records::RecordView>),
        ),
        (
            "PUT",
            "/api/v1/records/{firm_id}/{collection}/{record_id}",
            op("replaceRecord", "Replace a record")
                .takes(record_body)
                .headers(&[IF_MATCH])
                .gives(&[200], written)
                .errors(&[409, 412, 428]),
        ),
        (
            "PATCH",
            "/api/v1/records/{firm_id}/{collection}/{record_id}",
            {
                let mut o = op("patchRecord", "Change a record (JSON merge patch)")
                    .takes(record_body)
                    .headers(&[IF_MATCH])
                    .gives(&[200], written)
                    .errors(&[409, 412, 428]);
                o.body_also = &["application/merge-patch+json"];
                o
            },
        ),
        (
            "DELETE",
            "/api/v1/records/{firm_id}/{collection}/{record_id}",
            op("deleteRecord", "Delete a record")
                .headers(&[IF_MATCH_OPTIONAL])
                .empty(&[204])
                .errors(&[412]),
        ),
        (
            "GET",
            "/api/v1/secrets/{firm_id}",
            op("listSecrets", "Secrets' metadata").gives(&[200], s::<secrets::SecretList>),
        ),
        (
            "PUT",
            "/api/v1/secrets/{firm_id}/{name}",
            op("putSecret", "Store a secret (write-only)")
                .takes(s::<secrets::ValueBody>)
                .gives(&[200, 201], s::<crate::vault::SecretView>),
        ),
        (
            "GET",
            "/api/v1/secrets/{firm_id}/{name}",
            op("getSecret", "A secret's metadata").gives(&[200], s::<crate::vault::SecretView>),
        ),
        (
            "DELETE",
            "/api/v1/secrets/{firm_id}/{name}",
            op("deleteSecret", "Delete a secret").empty(&[204]),
        ),
        (
            "POST",
            "/api/v1/secrets/{firm_id}/{name}/verify",
            op("verifySecret", "Does this value match the secret?")
                .takes(s::<secrets::ValueBody>)
                .gives(&[200], s::<secrets::VerifyAnswer>),
        ),
        (
            "POST",
            "/api/v1/webhooks/{firm_id}",
            op(
                "createWebhook",
                "Register a webhook endpoint (its secret shown once)",
            )
            .takes(s::<webhooks::CreateBody>)
            .gives(&[201], s::<webhooks::EndpointWithSecret>),
        ),
        (
            "GET",
            "/api/v1/webhooks/{firm_id}",
            op("listWebhooks", "The firm's webhook endpoints")
                .gives(&[200], s::<webhooks::EndpointList>),
        ),
        (
            "GET",
            "/api/v1/webhooks/{firm_id}/{endpoint_id}",
            op("getWebhook", "One webhook endpoint")
                .gives(&[200], s::<crate::webhooks::EndpointView>),
        ),
        (
            "PATCH",
            "/api/v1/webhooks/{firm_id}/{endpoint_id}",
            op("updateWebhook", "Change a webhook endpoint")
                .takes(s::<webhooks::UpdateEndpointBody>)
                .gives(&[200], s::<crate::webhooks::EndpointView>),
        ),
        (
            "DELETE",
            "/api/v1/webhooks/{firm_id}/{endpoint_id}",
            op("deleteWebhook", "Delete a webhook endpoint and its outbox").empty(&[204]),
        ),
        (
            "POST",
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/rotate",
            op(
                "rotateWebhookSecret",
                "A new signing secret, the old one overlapping",
            )
            .takes(s::<webhooks::RotateBody>)
            .optional()
            .gives(&[201], s::<webhooks::EndpointWithSecret>),
        ),
        (
            "GET",
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/attempts",
            op("webhookAttempts", "Delivery attempts, newest first")
                .query(params::<webhooks::AttemptsQuery>)
                .gives(&[200], s::<webhooks::AttemptList>),
        ),
        (
            "POST",
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/messages/{message_id}/redeliver",
            op("redeliverWebhookMessage", "Send one message again")
                .gives(&[202], s::<webhooks::Queued>),
        ),
        (
            "POST",
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/redeliver",
            op(
                "redeliverFailedWebhooks",
                "Send every failed message since a time again",
            )
            .takes(s::<webhooks::RedeliverBody>)
            .gives(&[200], s::<webhooks::Requeued>),
        ),
        (
            "POST",
            "/api/v1/webhooks/{firm_id}/{endpoint_id}/test",
            op("testWebhook", "Queue a webhook.test event").gives(&[202], s::<webhooks::Queued>),
        ),
        (
            "POST",
            "/api/v1/users/{firm_id}",
            op("inviteUser", "Invite a person")
                .takes(s::<users::InviteBody>)
                .gives(&[201], s::<users::InvitationView>)
                .errors(&[409]),
        ),
        (
            "GET",
            "/api/v1/users/{firm_id}",
            op("listUsers", "The firm's people").gives(&[200], s::<users::UserList>),
        ),
        (
            "GET",
            "/api/v1/users/{firm_id}/{user_id}",
            op("getUser", "A person").gives(&[200], s::<crate::people::UserView>),
        ),
        (
            "PATCH",
            "/api/v1/users/{firm_id}/{user_id}",
            op("updateUser", "Change a person")
                .takes(s::<users::UpdateBody>)
                .gives(&[200], s::<crate::people::UserView>)
                .errors(&[409]),
        ),
        (
            "DELETE",
            "/api/v1/users/{firm_id}/{user_id}",
            op("deleteUser", "Delete a person")
                .empty(&[204])
                .errors(&[409]),
        ),
        (
            "POST",
            "/api/v1/users/{firm_id}/{user_id}/invitation",
            op("reinviteUser", "New invitation (wipes credentials)")
                .gives(&[201], s::<users::InvitationView>)
                .errors(&[409]),
        ),
        (
            "POST",
            "/api/v1/users/{firm_id}/{user_id}/disable",
            user_state("disableUser", "Disable a person"),
        ),
        (
            "POST",
            "/api/v1/users/{firm_id}/{user_id}/enable",
            user_state("enableUser", "Enable a person"),
        ),
        (
            "POST",
            "/api/v1/users/{firm_id}/{user_id}/unlock",
            user_state("unlockUser", "End a lockout"),
        ),
        (
            "POST",
            "/api/v1/users/{firm_id}/{user_id}/reset-mfa",
            user_state("resetMfa", "Remove a person's TOTP"),
        ),
        (
            "GET",
            "/api/v1/users/{firm_id}/{user_id}/sessions",
            op("userSessions", "A person's sessions").gives(&[200], s::<users::SessionList>),
        ),
        (
            "DELETE",
            "/api/v1/users/{firm_id}/{user_id}/sessions",
            op("revokeUserSessions", "End all of a person's sessions")
                .gives(&[200], s::<users::Revoked>),
        ),
        (
            "POST",
            "/api/v1/sessions/{firm_id}",
            op("signIn", "Sign in")
                .takes(s::<sessions::SignInBody>)
                .gives(&[201], s::<sessions::SessionIssued>),
        ),
        (
            "GET",
            "/api/v1/sessions/{firm_id}",
            op("mySessions", "My sessions").gives(&[200], s::<users::SessionList>),
        ),
        (
            "DELETE",
            "/api/v1/sessions/{firm_id}",
            op("signOutEverywhere", "End all my sessions").gives(&[200], s::<users::Revoked>),
        ),
        (
            "DELETE",
            "/api/v1/sessions/{firm_id}/{session_id}",
            op("signOut", "End one of my sessions").empty(&[204]),
        ),
        (
            "POST",
            "/api/v1/sessions/{firm_id}/refresh",
            op("refreshSession", "A new token for this session")
                .gives(&[201], s::<sessions::SessionIssued>),
        ),
        (
            "GET",
            "/api/v1/me/{firm_id}",
            op("me", "Who I am").gives(&[200], s::<crate::people::UserView>),
        ),
        (
            "POST",
            "/api/v1/me/{firm_id}/password",
            op("changePassword", "Change my password")
                .takes(s::<sessions::PasswordBody>)
                .empty(&[204]),
        ),
        (
            "POST",
            "/api/v1/me/{firm_id}/totp",
            op("totpBegin", "Start TOTP enrolment")
                .takes(s::<sessions::CurrentPasswordBody>)
                .optional()
                .gives(&[200], s::<sessions::TotpView>),
        ),
        (
            "POST",
            "/api/v1/me/{firm_id}/totp/confirm",
            op("totpConfirm", "Confirm TOTP with a code")
                .takes(s::<sessions::CodeBody>)
                .gives(&[200], s::<sessions::RecoveryCodes>),
        ),
        (
            "POST",
            "/api/v1/me/{firm_id}/recovery-codes",
            op("recoveryCodes", "New recovery codes")
                .takes(s::<sessions::ReauthBody>)
                .gives(&[200], s::<sessions::RecoveryCodes>),
        ),
        (
            "POST",
            "/api/v1/enrolment/{firm_id}",
            op("enrolStart", "Accept an invitation: set a password")
                .takes(s::<sessions::EnrolStartBody>)
                .gives(&[200], s::<sessions::TotpView>),
        ),
        (
            "POST",
            "/api/v1/enrolment/{firm_id}/confirm",
            op("enrolConfirm", "Finish enrolment")
                .takes(s::<sessions::EnrolConfirmBody>)
                .gives(&[200], s::<sessions::EnrolledView>),
        ),
    ]
}

/// The description of one route; `None` for a route with none (a test
/// fails on that).
pub(crate) fn describe(method: &Method, path: &str) -> Option<OpDoc> {
    all()
        .into_iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == path)
        .map(|(_, _, d)| d)
}

fn user_state(id: &'static str, summary: &'static str) -> OpDoc {
    op(id, summary)
        .gives(&[200], schema_of::<crate::people::UserView>)
        .errors(&[409])
}
