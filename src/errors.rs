//! The one table of error codes. Every refusal or failure the daemon
//! answers with, over the HTTP API (problem+json `code`, with the status
//! here) and over the admin socket (`error.code`), carries one of these
//! codes; README's error table is checked against this one by a test.

/// One stable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    /// The HTTP status; 0 for codes only the admin socket answers.
    pub status: u16,
    pub meaning: &'static str,
}

const fn c(code: &'static str, status: u16, meaning: &'static str) -> Code {
    Code {
        code,
        status,
        meaning,
    }
}

pub const CODES: &[Code] = &[
    c("bad_request", 400, "the request could not be parsed"),
    c(
        "invalid_body",
        400,
        "the JSON body is malformed, has unknown fields or wrong types",
    ),
    c("invalid_header", 400, "a malformed or ambiguous header"),
    c("invalid_query", 400, "a query-string problem"),
    c(
        "body_unreadable",
        400,
        "the request body ended early or broke off",
    ),
    c("unauthenticated", 401, "no valid credential"),
    c(
        "invalid_credentials",
        401,
        "a sign-in failed (wrong name, password or code, or the account cannot sign in): all alike",
    ),
    c(
        "invalid_enrolment_token",
        401,
        "an enrolment token that is wrong, used or expired",
    ),
    c(
        "forbidden_credential",
        403,
        "a person's own route (`account:self`) called with an API key",
    ),
    c(
        "mfa_enrolment_required",
        403,
        "the session must enrol a second factor first",
    ),
    c(
        "csrf_failed",
        403,
        "a state-changing request with the console's session cookie lacks its session's CSRF token",
    ),
    c(
        "forbidden_firm",
        403,
        "the credential belongs to another firm (or the firm does not exist)",
    ),
    c(
        "forbidden_role",
        403,
        "the role does not grant this permission",
    ),
    c(
        "forbidden_override",
        403,
        "the deny list names this permission",
    ),
    c(
        "forbidden_escalation",
        403,
        "the new (or targeted) key would be more powerful than the caller",
    ),
    c("not_found", 404, "no route at this path"),
    c("firm_not_found", 404, "no such firm"),
    c("key_not_found", 404, "no such key in the caller's own firm"),
    c(
        "user_not_found",
        404,
        "no such user in the caller's own firm",
    ),
    c("session_not_found", 404, "no such session of that user"),
    c(
        "webhook_not_found",
        404,
        "no such webhook endpoint in the caller's own firm",
    ),
    c(
        "webhook_message_not_found",
        404,
        "no such message of that endpoint, or it is still pending",
    ),
    c(
        "collection_not_found",
        404,
        "no collection by that name in the caller's own firm",
    ),
    c(
        "record_not_found",
        404,
        "no record with that id in the collection",
    ),
    c(
        "secret_not_found",
        404,
        "no secret by that name in the caller's own firm",
    ),
    c(
        "method_not_allowed",
        405,
        "the route exists; `Allow` lists its methods",
    ),
    c(
        "request_timeout",
        408,
        "the request body arrived too slowly",
    ),
    c(
        "idempotency_conflict",
        409,
        "an `Idempotency-Key` reused with a different body",
    ),
    c(
        "schema_conflict",
        409,
        "a schema change that would not fit the stored data",
    ),
    c("key_revoked", 409, "rotating a key that is already revoked"),
    c(
        "login_taken",
        409,
        "another user of the firm has that login name",
    ),
    c(
        "invalid_user_state",
        409,
        "the user's state does not allow this (e.g. enabling an invited user)",
    ),
    c(
        "last_owner_key",
        409,
        "revoking the firm's last live owner key",
    ),
    c("conflict", 409, "the row already exists"),
    c(
        "precondition_failed",
        412,
        "`If-Match` names a version that is no longer current",
    ),
    c(
        "body_too_large",
        413,
        "the body is over `server.max_body_bytes`",
    ),
    c(
        "unsupported_media_type",
        415,
        "a body that is not `application/json`",
    ),
    c(
        "invalid_record",
        422,
        "the record does not fit the collection's schema",
    ),
    c("pii_detected", 422, "the collection rejects PII"),
    c(
        "weak_password",
        422,
        "a password the policy refuses (length, common, contains the login name)",
    ),
    c(
        "invalid_code",
        422,
        "a TOTP code that confirms nothing (wrong, expired or used)",
    ),
    c(
        "invalid_number",
        422,
        "a JSON number that cannot be stored exactly",
    ),
    c("invalid_field", 422, "a field's value is invalid"),
    c(
        "destination_not_allowed",
        422,
        "a webhook URL that `webhooks.allow` does not admit",
    ),
    c(
        "invalid_name",
        422,
        "a name that is empty, too long or has control or formatting characters",
    ),
    c(
        "confirm_mismatch",
        422,
        "the confirmation does not repeat the firm id",
    ),
    c(
        "firm_frozen",
        423,
        "the firm is frozen: writes refused, reads still work",
    ),
    c(
        "precondition_required",
        428,
        "replace or patch without `If-Match`",
    ),
    c(
        "rate_limited",
        429,
        "too many attempts; `Retry-After` says when to retry",
    ),
    c(
        "internal",
        500,
        "details only in the log, under the same request id",
    ),
    c(
        "crypto_error",
        500,
        "a sealing or crypto failure (details only in the log)",
    ),
    c(
        "key_error",
        500,
        "a key did not unwrap or load (details only in the log)",
    ),
    c(
        "storage_error",
        500,
        "a database failure (details only in the log)",
    ),
    c(
        "storage_io",
        500,
        "a file could not be read or written (details only in the log)",
    ),
    c(
        "storage_corrupt",
        500,
        "stored data is inconsistent (details only in the log)",
    ),
    c("wrong_key", 500, "a database does not open with its key"),
    c(
        "not_fips",
        500,
        "a database is not on the FIPS crypto provider",
    ),
    c(
        "busy",
        503,
        "the firm's write queue is full; retry (`Retry-After`)",
    ),
    c("firm_maintenance", 503, "the firm is being rekeyed; retry"),
    c(
        "erasure_ledger_unavailable",
        503,
        "the erasure ledger (state directory or backup repository) could not be written; nothing was erased; retry",
    ),
    c(
        "storage_full",
        507,
        "the disk holding the databases is full; retry (`Retry-After`)",
    ),
    c(
        "permission_denied",
        0,
        "this user may not use the admin socket, or this command is root only",
    ),
    c("unknown_command", 0, "no such admin command"),
    c(
        "unsupported_version",
        0,
        "the request's protocol version is not spoken here",
    ),
    c("request_too_large", 0, "an admin request line over 64 KiB"),
    c(
        "timeout",
        0,
        "no complete admin request within the idle timeout",
    ),
];

/// The table's entry for `code`.
pub fn lookup(code: &str) -> Option<&'static Code> {
    CODES.iter().find(|c| c.code == code)
}

/// The HTTP status of `code` (500 for a code the table lacks).
pub fn status(code: &str) -> u16 {
    lookup(code)
        .map(|c| c.status)
        .filter(|s| *s != 0)
        .unwrap_or(500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_valid() {
        let mut seen = std::collections::HashSet::new();
        for c in CODES {
            assert!(seen.insert(c.code), "{} twice", c.code);
            assert!(
                c.status == 0 || (400..600).contains(&c.status),
                "{}",
                c.code
            );
        }
    }

    /// Every code the HTTP layer and the admin socket write literally is in
    /// the table (service errors are checked in `firms`).
    #[test]
    fn every_literal_code_is_in_the_table() {
        let sources = [
            include_str!("http/problem.rs"),
            include_str!("http/middleware.rs"),
            include_str!("http/api.rs"),
            include_str!("http/authz.rs"),
            include_str!("http/records.rs"),
            include_str!("http/webhooks.rs"),
            include_str!("http/routes.rs"),
            include_str!("http/numbers.rs"),
            include_str!("admin/server.rs"),
            include_str!("admin/commands.rs"),
        ];
        let mut found = 0;
        for src in sources {
            for marker in ["Problem::new(", "Response::err(", "code: \""] {
                for (i, _) in src.match_indices(marker) {
                    let rest = &src[i + marker.len()..];
                    // For Problem::new the code is the second argument.
                    let rest = if marker == "Problem::new(" {
                        match rest.find(',') {
                            Some(c) => &rest[c + 1..],
                            None => continue,
                        }
                    } else {
                        rest
                    };
                    let rest = rest.trim_start();
                    let rest = if marker == "code: \"" {
                        rest
                    } else {
                        match rest.strip_prefix('"') {
                            Some(r) => r,
                            None => continue,
                        }
                    };
                    let Some(end) = rest.find('"') else { continue };
                    let code = &rest[..end];
                    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    {
                        continue;
                    }
                    found += 1;
                    assert!(lookup(code).is_some(), "code {code:?} is not in the table");
                }
            }
        }
        assert!(found > 20, "the scan found only {found} codes");
    }

    /// README's error table is this table: the same codes, with the same
    /// statuses (`–` for admin-only codes).
    #[test]
    fn readme_documents_every_code() {
        let readme = include_str!("../README.md");
        for c in CODES {
            let status = if c.status == 0 {
                "–".to_owned()
            } else {
                c.status.to_string()
            };
            let row = format!("| `{}` | {status} |", c.code);
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }
}
