//! The firm database's migrations, oldest first.

use super::super::audit_log;

pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE profile (
    k           TEXT PRIMARY KEY,
    v           TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    mac           BLOB NOT NULL,
    allow         TEXT NOT NULL DEFAULT '[]',
    deny          TEXT NOT NULL DEFAULT '[]',
    created_at    TEXT NOT NULL,
    created_by    TEXT,
    expires_at    TEXT,
    revoked_at    TEXT
)
"#,
    r#"
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
ALTER TABLE api_keys ADD COLUMN replaced_by TEXT
"#,
    r#"
CREATE TABLE audit_entries (
    seq         INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    firm        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    source_ip   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    decision    TEXT NOT NULL,
    rule        TEXT NOT NULL,
    payload     BLOB NOT NULL,
    leaf        BLOB NOT NULL,
    chain       BLOB NOT NULL
);
CREATE TABLE audit_nodes (
    level  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID
"#,
    r#"
CREATE TABLE audit_checkpoints (
    size       INTEGER PRIMARY KEY,
    root       BLOB NOT NULL,
    note       TEXT NOT NULL,
    signed_at  TEXT NOT NULL
)
"#,
    audit_log::PURGES_SCHEMA,
    r#"
CREATE TABLE secrets (
    name         TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    ciphertext   BLOB NOT NULL,
    fingerprint  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    rotated_at   TEXT
)
"#,
    r#"
CREATE TABLE collections (
    name        TEXT PRIMARY KEY,
    schema      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE records (
    collection  TEXT NOT NULL,
    id          TEXT NOT NULL,
    version     INTEGER NOT NULL,
    clear       TEXT NOT NULL,
    sealed      BLOB,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE record_index (
    collection  TEXT NOT NULL,
    field       TEXT NOT NULL,
    value       TEXT NOT NULL,
    id          TEXT NOT NULL,
    PRIMARY KEY (collection, field, value, id)
) WITHOUT ROWID;
CREATE TABLE idempotency (
    collection    TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  BLOB NOT NULL,
    record_id     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID
"#,
    r#"
CREATE TABLE users (
    id               TEXT PRIMARY KEY,
    login            TEXT NOT NULL UNIQUE,
    display_name     TEXT NOT NULL,
    role             TEXT NOT NULL,
    allow            TEXT NOT NULL DEFAULT '[]',
    deny             TEXT NOT NULL DEFAULT '[]',
    state            TEXT NOT NULL,
    password         TEXT,
    totp             BLOB,
    totp_pending     BLOB,
    totp_last_step   INTEGER NOT NULL DEFAULT 0,
    recovery         TEXT NOT NULL DEFAULT '[]',
    invite_mac       BLOB,
    invite_expires_at TEXT,
    failed_signins   INTEGER NOT NULL DEFAULT 0,
    lockouts         INTEGER NOT NULL DEFAULT 0,
    locked_until     TEXT,
    created_at       TEXT NOT NULL,
    created_by       TEXT,
    updated_at       TEXT NOT NULL,
    last_signin_at   TEXT
);
CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    mac             BLOB NOT NULL,
    created_at      TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    last_seen_at    TEXT NOT NULL,
    revoked_at      TEXT,
    source_ip       TEXT NOT NULL,
    enrolment_only  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_user ON sessions (user_id)
"#,
    // Subject erasure: each data subject's sealed key half and the slot of
    // its pepper (the other half, outside the database), which subjects'
    // keys seal a record (comma-separated ids, outermost first), and the
    // erasures done.
    r#"
ALTER TABLE records ADD COLUMN subjects TEXT;
CREATE TABLE subject_keys (
    subject     TEXT PRIMARY KEY,
    slot        INTEGER NOT NULL,
    wrapped     BLOB NOT NULL,
    created_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE erasures (
    id            TEXT PRIMARY KEY,
    subject       TEXT NOT NULL,
    erased_at     TEXT NOT NULL,
    audit_size    INTEGER NOT NULL,
    certificate   TEXT NOT NULL,
    reapplied_at  TEXT,
    slots         TEXT NOT NULL DEFAULT ''
)
"#,
    // Webhooks: endpoints (signing secrets live in the vault's `secrets`
    // table under reserved names), the outbox (one row per endpoint and
    // event, written in the transaction of the change), and every attempt.
    r#"
CREATE TABLE webhook_endpoints (
    id           TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    events       TEXT NOT NULL,
    enabled      INTEGER NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    secret_gen   INTEGER NOT NULL,
    prev_gen     INTEGER,
    prev_until   TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE TABLE webhook_messages (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    endpoint_id      TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    tries            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    last_attempt_at  TEXT,
    delivered_at     TEXT
);
CREATE INDEX webhook_messages_by_endpoint ON webhook_messages (endpoint_id, status, seq);
CREATE TABLE webhook_attempts (
    message_id   TEXT NOT NULL,
    n            INTEGER NOT NULL,
    at           TEXT NOT NULL,
    status_code  INTEGER,
    latency_ms   INTEGER,
    error        TEXT,
    outcome      TEXT NOT NULL,
    PRIMARY KEY (message_id, n)
) WITHOUT ROWID
"#,
];
